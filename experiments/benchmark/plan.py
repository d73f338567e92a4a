"""The plan of a run: where the data subsets go, and each seed's steps (trainings and
evaluations), each with the command it stands for and the table rows it gives."""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field

from .original import drop_flags
from .profiles import DIGITS_IMAGES, EMBEDDED_DIGITS, Setting

# The rows of the table, in order, and the detectors of the evaluation each comes from.
METHODS = ("vmdls", "vmdls_ae", "vmdls_latent", "untrained", "msp", "energy", "maxlogit", "mahalanobis", "knn",
           "vim")
VMDLS_DETECTORS = ("vmdls", "vmdls_latent")
CE_DETECTORS = ("msp", "energy", "maxlogit", "mahalanobis", "knn", "vim")


@dataclass(frozen=True)
class Method:
    """A row of the table: its method, and the training steps (keys of Step.sources) whose
    seconds are its training time (none: 0 s; None: trained elsewhere, no time)."""

    name: str
    trained_by: tuple[str, ...] | None = ()


@dataclass
class Step:
    kind: str                     # "train", "ae" or "test"
    script: str                   # the script the step does the work of (its command is printed)
    argv: list[str]
    output_dir: str
    label: str
    seed: int
    setting: str = ""
    done_file: str = ""           # train/ae: done.json; test: summary.csv
    unknown: list[str] = field(default_factory=list)  # test: the names passed to the evaluation
    sources: dict = field(default_factory=dict)        # test: {"vmdls", "ce", "ae"}: the training steps
    methods: dict[str, Method] = field(default_factory=dict)  # test: summary method -> the row it gives

    def command(self) -> str:
        return f"python {self.script} {shlex.join(self.argv)}"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace(os.sep, "_")).strip("._") or "set"


def display_name(name: str) -> str:
    """A set's name in the table: registry names as they are, idx:/folder: by their folder."""
    for prefix in ("idx:", "folder:"):
        if name.startswith(prefix):
            return os.path.basename(os.path.normpath(name[len(prefix):])) or name
    return name


def display_names(names: list[str]) -> dict[str, str]:
    """A short name for each set that no other of ``names`` gets: registry names as they
    are; idx:/folder: sets by their folder's name, extended by parent folders while two sets
    read alike (same1/digits and same2/digits), and with the short hash of the whole name
    (utils.run_folder.folder_name) where even the whole path does not tell them apart."""
    import hashlib
    from collections import Counter

    def parts(name: str) -> list[str] | None:
        for prefix in ("idx:", "folder:"):
            if name.startswith(prefix):
                return [p for p in os.path.normpath(name[len(prefix):]).split(os.sep) if p] or [name]
        return None

    names = list(dict.fromkeys(names))
    split = {name: parts(name) for name in names}
    shown = {name: display_name(name) if split[name] is None else split[name][-1] for name in names}
    depth = 1
    while True:
        alike = {text for text, count in Counter(shown.values()).items() if count > 1}
        longer = [name for name in names if shown[name] in alike and split[name] and depth < len(split[name])]
        if not alike or not longer:
            break
        depth += 1
        for name in longer:
            shown[name] = "/".join(split[name][-depth:])
    alike = {text for text, count in Counter(shown.values()).items() if count > 1}
    for name in names:
        if shown[name] in alike and split[name] is not None:
            shown[name] += "~" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return shown


@dataclass
class Plan:
    """Everything a run does: where the data goes, and each seed's steps."""

    steps: list[Step]
    names: dict[str, str]          # name passed to test.py -> the name shown in the rows (unique)
    settings: list[Setting]
    data: dict                     # what to materialise: {"known": (...), "unknown": [...]}
    specs: dict[str, str] = field(default_factory=dict)  # name passed to test.py -> the set as given


def setting_unknown_images(args, setting: Setting) -> int:
    """Images per unknown set of ``setting`` (0: the sets whole)."""
    return args.unknown_images if setting.unknown_images is None else setting.unknown_images


def build_plan(args, settings: list[Setting]) -> Plan:
    out = os.path.abspath(args.output_dir)
    data = {"known": [], "unknown": [], "embedded": []}
    names, specs = place_sets(args, settings, out, data)
    steps: list[Step] = []
    devices = ["--accelerator", args.accelerator, "--num_workers", str(args.num_workers)]
    logging = ["--logger", "csv", "--offline"]
    for seed in range(args.seeds):
        seed_dir = os.path.join(out, f"seed{seed}")
        common = ["--data_dir", args.data_dir, "--seed", str(seed), *devices, *logging]
        made_ae: dict[str, Step] = {}
        for setting in settings:
            data_flags = ["--known_dataset", setting.passed_known, "--class_num", str(setting.class_num)]
            test = data_flags + ["--unknown_dataset", *setting.passed_unknown, *setting.test_flags, *common]
            base = os.path.join(seed_dir, setting.name)
            if setting.checkpoint:
                steps += released_evaluations(setting, test, base, seed)
                continue
            sources = training_steps(args, setting, data_flags, common, seed_dir, made_ae, seed)
            steps += [step for step in sources.values() if step not in steps]
            steps += evaluations(setting, test, base, seed, sources)
    return Plan(steps, names, settings, data, specs)


def place_sets(args, settings: list[Setting], out: str, data: dict) -> tuple[dict[str, str], dict[str, str]]:
    """Fill ``data`` with the IDX subsets to write and each setting's passed_known and
    passed_unknown with what the runs read; returns {passed name: shown name} and {passed
    name: the set as given}."""
    from utils.run_folder import folder_name

    train_n, test_n = args.train_images, args.test_images
    names: dict[str, str] = {}
    specs: dict[str, str] = {}
    shown = display_names([name for setting in settings for name in setting.unknown])
    for setting in settings:
        known = setting.known
        if train_n or test_n:  # one of the two may be 0: that split whole
            folder = os.path.join(out, "data", "known",
                                  f"{slug(setting.known)}-train{train_n or 'all'}-test{test_n or 'all'}")
            data["known"].append((setting.known, setting.class_num, folder, train_n, test_n))
            known = f"idx:{folder}"
        passed = []
        count = setting_unknown_images(args, setting)
        for name in setting.unknown:
            source, subset = name, count
            if name == EMBEDDED_DIGITS:  # all scikit-learn digits, written once under data/sets/
                embedded = os.path.join(out, "data", "sets", "digits")
                if embedded not in data["embedded"]:
                    data["embedded"].append(embedded)
                source, subset = f"idx:{embedded}", count if count < DIGITS_IMAGES else 0
            if subset:
                folder = os.path.join(out, "data", "unknown", f"{folder_name(name)}-{count}")  # one per set
                data["unknown"].append((source, setting.known, setting.class_num, folder, count))
                target = f"idx:{folder}"
            else:
                target = source
            names[target], specs[target] = shown[name], name
            passed.append(target)
        setting.passed_known, setting.passed_unknown = known, passed
    return names, specs


def training_steps(args, setting: Setting, data_flags: list[str], common: list[str], seed_dir: str,
                   made_ae: dict[str, Step], seed: int) -> dict[str, Step]:
    """The VMDLS, autoencoder and cross-entropy trainings of one setting and seed; settings
    with the same ae_key share the autoencoder (``made_ae``: those of this seed so far)."""
    base = os.path.join(seed_dir, setting.name)
    train_unknown = setting.train_unknown if setting.train_unknown in setting.unknown and \
        not setting_unknown_images(args, setting) else setting.passed_unknown[0]
    train = data_flags + ["--unknown_dataset", train_unknown, *setting.train_flags, *common]
    vmdls_dir, ce_dir = os.path.join(base, "vmdls"), os.path.join(base, "ce")
    ae_dir = os.path.join(seed_dir, f"ae_{slug(setting.ae_key or setting.name)}")
    if ae_dir not in made_ae:
        made_ae[ae_dir] = Step("ae", setting.ae_script, data_flags + setting.ae_flags + common +
                               ["--output_dir", ae_dir], ae_dir, "train autoencoder", seed, setting.name,
                               os.path.join(ae_dir, "done.json"))
    ce_train = drop_flags(train, names_alone=setting.ce_drop)
    return {"vmdls": Step("train", "main.py", train + ["--objective", "vmdls", "--output_dir", vmdls_dir],
                          vmdls_dir, "train VMDLS", seed, setting.name, os.path.join(vmdls_dir, "done.json")),
            "ae": made_ae[ae_dir],
            "ce": Step("train", "main.py", ce_train + ["--objective", "ce", "--output_dir", ce_dir],
                       ce_dir, "train cross-entropy", seed, setting.name, os.path.join(ce_dir, "done.json"))}


def evaluations(setting: Setting, test: list[str], base: str, seed: int, sources: dict[str, Step]) -> list[Step]:
    """The three evaluations of a trained setting: VMDLS with its latent score and the
    untrained reference, VMDLS reconstruction-weighted, the cross-entropy baselines."""
    vmdls_ckpt = os.path.join(sources["vmdls"].output_dir, "checkpoints", "last.ckpt")
    ce_ckpt = os.path.join(sources["ce"].output_dir, "checkpoints", "last.ckpt")
    calls = (
        ("evaluate VMDLS (+ untrained)", "eval_vmdls",
         ["--checkpoint_path", vmdls_ckpt, "--detector", *VMDLS_DETECTORS, "--compare_untrained"],
         {"vmdls": Method("vmdls", ("vmdls",)), "vmdls_latent": Method("vmdls_latent", ("vmdls",)),
          "untrained": Method("untrained")}),
        ("evaluate VMDLS, reconstruction-weighted", "eval_vmdls_ae",
         ["--checkpoint_path", vmdls_ckpt, "--detector", "vmdls", "--ae_features", "--ae_checkpoint",
          os.path.join(sources["ae"].output_dir, "last.ckpt"), *setting.ae_eval_flags],
         {"vmdls": Method("vmdls_ae", ("vmdls", "ae"))}),
        ("evaluate cross-entropy baselines", "eval_ce", ["--checkpoint_path", ce_ckpt, "--detector", *CE_DETECTORS],
         {detector: Method(detector, ("ce",)) for detector in CE_DETECTORS}))
    return [evaluation(setting, test, base, seed, call, sources) for call in calls]


def released_evaluations(setting: Setting, test: list[str], base: str, seed: int) -> list[Step]:
    """The evaluations of a released checkpoint, as the trained VMDLS model's (no cross-entropy
    model was released); the reconstruction-weighted one where its autoencoder is there."""
    calls = [("evaluate VMDLS (+ untrained)", "eval_vmdls",
              ["--checkpoint_path", setting.checkpoint, "--detector", *VMDLS_DETECTORS, "--compare_untrained"],
              {"vmdls": Method("vmdls", None), "vmdls_latent": Method("vmdls_latent", None),
               "untrained": Method("untrained")})]
    if setting.ae_checkpoint:
        calls.append(("evaluate VMDLS, reconstruction-weighted", "eval_vmdls_ae",
                      ["--checkpoint_path", setting.checkpoint, "--detector", "vmdls", "--ae_features",
                       "--ae_checkpoint", setting.ae_checkpoint], {"vmdls": Method("vmdls_ae", None)}))
    return [evaluation(setting, test, base, seed, call, {}) for call in calls]


def evaluation(setting: Setting, test: list[str], base: str, seed: int, call: tuple, sources: dict) -> Step:
    label, folder, extra, methods = call
    eval_dir = os.path.join(base, folder)
    return Step("test", "test.py", test + extra + ["--output_dir", eval_dir], eval_dir, label, seed, setting.name,
                os.path.join(eval_dir, "summary.csv"), list(setting.passed_unknown), sources, methods)
