"""The harness's command line: parse, then a dry run (the commands) or the run (data, steps,
rows, report). ``python -m experiments.benchmark`` and benchmarks/ood_benchmark.py call main."""
from __future__ import annotations

import argparse
import json
import os
import sys

import experiments.benchmark as package
from utils.flags import OneLineParser, at_least, positive

from .aggregate import aggregate, per_seed_rows
from .data import materialise
from .original import PAPER_ORDER
from .plan import Plan, build_plan
from .profiles import DEFAULT_WORKERS, PROFILES, SUBSETS, Setting, how_many, profile_deviations, released_notes
from .report import budget_header, timing_table, write_report
from .runner import Clock, read_json, run_plan, step_done, write_json

COUNT = at_least(0, int)  # image, epoch, batch and worker counts; 0: the profile's (or all)

# Budget flags that only trainings use: an evaluation of released checkpoints refuses them.
TRAINING_FLAGS = ("max_epochs", "ae_epochs", "limit_train_batches", "lr", "weights_dir")


def build_parser() -> argparse.ArgumentParser:
    # Python 3.11's argparse names a -m run __main__.py.
    prog = "python -m experiments.benchmark" if os.path.basename(sys.argv[0]) == "__main__.py" else None
    parser = OneLineParser(prog=prog, description=package.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=tuple(PROFILES), default="quick",
                        help="demo, tiny, quick: smoke checks; standard: every model trained; "
                             "paper: the original README's settings")
    parser.add_argument("--data_dir", default="./data", help="torchvision-style data folder")
    parser.add_argument("--output_dir", default=None,
                        help="default: outputs/ood_<profile> (outputs/ood_paper_released with --released)")
    parser.add_argument("--unknown", nargs="+", default=None, metavar="NAME",
                        help="unknown sets: registry names or idx:PATH / folder:PATH (default: the profile's)")
    parser.add_argument("--seeds", type=positive(int), default=1, help="seeds 0..N-1")
    parser.add_argument("--accelerator", choices=("cpu", "gpu", "auto"), default="auto")
    parser.add_argument("--num_workers", type=COUNT, default=None, help="default: 0 (quick, tiny), 4 (paper)")
    parser.add_argument("--dry_run", action="store_true", help="print the commands (and which are done); run none")
    budget = parser.add_argument_group("budget overrides (default: the profile's)")
    budget.add_argument("--train_images", type=COUNT, default=None,
                        help="the first N known training images written as IDX (0: all of them; with "
                             "--test_images 0 too, the known set is read as it is)")
    budget.add_argument("--test_images", type=COUNT, default=None,
                        help="the first N known test images written as IDX (0: all of them)")
    budget.add_argument("--unknown_images", type=COUNT, default=None,
                        help="images of each unknown set written as IDX (0: the sets as they are)")
    budget.add_argument("--max_epochs", type=COUNT, default=None, help="VMDLS and ce epochs (0: the profile's)")
    budget.add_argument("--ae_epochs", type=COUNT, default=None, help="autoencoder epochs (0: the profile's)")
    budget.add_argument("--limit_train_batches", type=COUNT, default=None,
                        help="batches per epoch, every training (0: the profile's)")
    budget.add_argument("--lr", type=at_least(0.0, float), default=None,
                        help="VMDLS and ce learning rate (default or 0: the profile's; the paper's command's, "
                             "1e-4 for MNIST)")
    paper = parser.add_argument_group("paper and standard profiles")
    paper.add_argument("--settings", nargs="+", default=None, metavar="NAME",
                       help=f"paper: some of {', '.join(PAPER_ORDER)} (default: all); standard: far and/or near "
                            "(default: far)")
    paper.add_argument("--weights_dir", default=None, help="where --weights files are (default: --data_dir)")
    paper.add_argument("--released", default=None, metavar="DIR",
                       help="paper: evaluate the authors' released checkpoints in DIR (cnn_mnist.ckpt, ..., "
                            "ae_mnist.ckpt, ae_cifar100.ckpt) with the README's test commands; nothing is trained")
    return parser


def parse(argv=None) -> argparse.Namespace:
    """The flags, checked (a bad value: one line, exit status 2), with the profile's defaults filled in."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.released is not None:
        if args.profile != "paper":
            parser.error(f"--released evaluates the paper's settings: give it with --profile paper, not {args.profile}")
        for name in TRAINING_FLAGS:
            if getattr(args, name):
                parser.error(f"--{name} sets a training and --released trains nothing: leave it out")
    suffix = "_released" if args.released else ""
    args.output_dir = args.output_dir or os.path.join("outputs", f"ood_{args.profile}{suffix}")
    if args.num_workers is None:
        args.num_workers = DEFAULT_WORKERS[args.profile]
    defaults = SUBSETS[args.profile]
    for name, default in zip(("train_images", "test_images", "unknown_images"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def budget_of(args, settings: list[Setting]) -> dict:
    """What config.json records: a rerun into the same folder must match it."""
    budget = {"profile": args.profile, "train_images": args.train_images, "test_images": args.test_images,
              "unknown_images": args.unknown_images,
              "settings": {s.name: {"known": s.known, "train": s.train_flags, "ae": [s.ae_script, *s.ae_flags],
                                    "test": s.test_flags} for s in settings}}
    if args.released:
        budget["released"] = os.path.abspath(args.released)
        for s in settings:
            budget["settings"][s.name].update(checkpoint=s.checkpoint, ae_checkpoint=s.ae_checkpoint)
    return json.loads(json.dumps(budget))


def record_budget(out: str, budget: dict) -> None:
    """Write OUT/config.json; stop if the folder holds runs of another budget. Another setting
    at the same budget (standard: near after far) joins the folder."""
    config_path = os.path.join(out, "config.json")
    if os.path.isfile(config_path):
        recorded = read_json(config_path)
        same = {k: v for k, v in recorded.items() if k != "settings"} == \
            {k: v for k, v in budget.items() if k != "settings"}
        shared = set(recorded.get("settings", {})) & set(budget["settings"])
        if not same or any(recorded["settings"][name] != budget["settings"][name] for name in shared):
            raise SystemExit(f"{out} holds runs of another budget (its config.json differs); give another "
                             "--output_dir or the same flags")
        budget = {**budget, "settings": {**recorded.get("settings", {}), **budget["settings"]}}
    write_json(config_path, budget)


def print_dry_run(args, settings: list[Setting], plan: Plan) -> None:
    """The steps' commands, each marked done or todo, and the data each writes first."""
    print(f"# profile {args.profile}: settings {', '.join(s.name for s in settings)}; seeds 0..{args.seeds - 1}; "
          f"{len(plan.steps)} steps")
    deviations = profile_deviations(args, settings)
    if deviations:
        print("# deviations from the paper's MNIST command:")
        for line in deviations:
            print(f"#   - {line}")
    for line in released_notes(args, settings):
        print(f"# left out: {line}")
    for folder in plan.data["embedded"]:
        print(f"# write all 1,797 scikit-learn digits to idx:{folder}")
    for name, class_num, folder, train_n, test_n in plan.data["known"]:
        print(f"# write {how_many(train_n)} training / {how_many(test_n)} test images of {name} to idx:{folder}")
    for name, _, _, folder, count in plan.data["unknown"]:
        print(f"# write the first {count} images of {name} to idx:{folder}")
    for index, step in enumerate(plan.steps, 1):
        status = "done" if step_done(step) else "todo"
        print(f"# step {index}/{len(plan.steps)} · seed {step.seed} · {step.setting} · {step.label} [{status}]")
        print(step.command())


def main(argv=None) -> list[dict]:
    """Run the benchmark (or with --dry_run print its commands); returns the rows of results.json."""
    args = parse(argv)
    settings = PROFILES[args.profile](args)
    plan = build_plan(args, settings)
    if args.dry_run:
        print_dry_run(args, settings, plan)
        return []

    from utils.run_folder import check_writable

    log = Clock()
    out = os.path.abspath(args.output_dir)
    check_writable(out)  # created, or one sentence naming the folder
    record_budget(out, budget_of(args, settings))
    log(f"profile {args.profile}: {len(settings)} setting(s) ({', '.join(s.name for s in settings)}), "
        f"seeds 0..{args.seeds - 1}, {len(plan.steps)} steps, output {out}")
    for line in profile_deviations(args, settings):
        log(f"deviation: {line}")
    for line in released_notes(args, settings):
        log(f"left out: {line}")
    materialise(plan, args.data_dir, log)
    results = os.path.join(out, "results.json")
    # Partial results as the run goes.
    tables = run_plan(plan, log, lambda tables: write_json(results, aggregate(per_seed_rows(plan, tables))))
    rows = aggregate(per_seed_rows(plan, tables))
    write_json(results, rows)
    files = write_report(rows, out, budget_header(args, settings), open_set=[s.name for s in settings if s.open_set],
                         footer="## Time per step (seconds, share of the seed's setting)\n\n" + timing_table(plan))
    with open(files["md"]) as handle:
        print(handle.read())
    log(f"results: {results}, {files['md']}, {files['png']}")
    return rows
