"""The report of a run: results.md (the budget, the summary table, the table per method and
unknown set, the time per step) and the AUROC bar charts."""
from __future__ import annotations

import math
import os

from .plan import Plan, slug
from .profiles import Setting, how_many, profile_deviations, released_notes
from .runner import clock, recorded_seconds, step_done


def _pct(mean, std=None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _mean_over_sets(members: list[dict], key: str = "auroc") -> tuple[float, float]:
    """Mean of ``key`` over the sets, and its sample std over the seeds (from the per-seed
    values; nan when the sets have different seeds)."""
    import numpy as np

    per_seed = [m.get(f"{key}_per_seed") or [m[key]] for m in members]
    if len({len(p) for p in per_seed}) == 1:
        values = np.mean(np.array(per_seed, dtype=float), axis=0)
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return float(np.mean([m[key] for m in members])), float("nan")


def _several_seeds(rows: list[dict]) -> bool:
    return any(len(r.get("seeds", [])) > 1 for r in rows)


def _cell(row: dict, key: str, with_std: bool) -> str:
    return _pct(row[key], row.get(f"{key}_std") if with_std else None)


def _mean_cell(members: list[dict], key: str, with_std: bool) -> str:
    if not members:
        return "-"
    mean, std = _mean_over_sets(members, key)
    return _pct(mean, std if with_std and not math.isnan(std) else None)


def _seconds(members: list[dict], key: str) -> str:
    values = [r[key] for r in members if r.get(key) is not None and not math.isnan(r[key])]
    return f"{sum(values) / len(values):.0f}" if values else "-"


def _tables(rows: list[dict]) -> dict[tuple, list[str]]:
    """{unknown sets: the settings with those sets}, in the rows' order."""
    tables: dict[tuple, list[str]] = {}
    for setting in dict.fromkeys(r.get("setting", "") for r in rows):
        sets = tuple(dict.fromkeys(r["unknown"] for r in rows if r.get("setting", "") == setting))
        tables.setdefault(sets, []).append(setting)
    return tables


def markdown_table(rows: list[dict], open_set=()) -> str:
    """Rows = methods (setting / method with several settings), columns = AUROC per set and
    their mean, FPR at 95% TPR per set and their mean (with macro-F1 at 95% TPR per set for
    the settings in ``open_set``), closed-set accuracy, training and evaluation seconds;
    metrics in %, mean ± sample std over the seeds when there are several. Settings with
    different unknown sets get one table each."""
    several = len({r.get("setting", "") for r in rows}) > 1
    with_std = _several_seeds(rows)
    parts = []
    for sets, members in _tables(rows).items():
        f1 = any(m in open_set for m in members)
        head = (["setting"] if several else []) + ["method"] + [f"AUROC {s}" for s in sets] + ["AUROC mean"] + \
               [f"FPR95 {s}" for s in sets] + ["FPR95 mean"] + \
               ([f"F1@95TPR {s}" for s in sets] + (["F1@95TPR mean"] if len(sets) > 1 else []) if f1 else []) + \
               ["closed-set acc.", "train s", "eval s"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for setting in members:
            methods = list(dict.fromkeys(r["method"] for r in rows if r.get("setting", "") == setting))
            for method in methods:
                cells = {r["unknown"]: r for r in rows if r.get("setting", "") == setting and r["method"] == method}
                present = [cells[s] for s in sets if s in cells]
                line = ([setting] if several else []) + [method]
                for key, mean in (("auroc", True), ("fpr_at_95_tpr", True), ("f1_macro_at_95_tpr", len(sets) > 1)):
                    if key == "f1_macro_at_95_tpr" and not f1:
                        continue
                    line += [_cell(cells[s], key, with_std) if s in cells else "-" for s in sets]
                    line += [_mean_cell(present, key, with_std)] if mean else []
                line += [_mean_cell(present, "closed_set_accuracy", with_std), _seconds(present, "train_seconds"),
                         _seconds(present, "eval_seconds")]
                lines.append("| " + " | ".join(line) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


DETAIL_COLUMNS = (("AUROC", "auroc"), ("FPR95", "fpr_at_95_tpr"), ("AUPR-In", "aupr_in"), ("AUPR-Out", "aupr_out"),
                  ("macro-F1@95TPR", "f1_macro_at_95_tpr"), ("closed-set acc.", "closed_set_accuracy"))


def detail_table(rows: list[dict]) -> str:
    """One line per (setting, method, unknown set) with every metric, and per method a
    ``mean`` line over its sets (its std over the seeds of the per-seed means)."""
    several = len({r.get("setting", "") for r in rows}) > 1
    with_std = _several_seeds(rows)
    head = (["setting"] if several else []) + ["method", "unknown"] + [name for name, _ in DETAIL_COLUMNS] + \
        ["train s", "eval s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting in dict.fromkeys(r.get("setting", "") for r in rows):
        mine = [r for r in rows if r.get("setting", "") == setting]
        for method in dict.fromkeys(r["method"] for r in mine):
            members = [r for r in mine if r["method"] == method]
            for row in members:
                line = ([setting] if several else []) + [method, row["unknown"]]
                line += [_cell(row, key, with_std) for _, key in DETAIL_COLUMNS]
                line += [_seconds([row], "train_seconds"), _seconds([row], "eval_seconds")]
                lines.append("| " + " | ".join(line) + " |")
            if len(members) > 1:
                line = ([setting] if several else []) + [method, "mean"]
                line += [_mean_cell(members, key, with_std) for _, key in DETAIL_COLUMNS]
                line += [_seconds(members, "train_seconds"), _seconds(members, "eval_seconds")]
                lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines) + "\n"


def timing_table(plan: Plan) -> str:
    """Each seed's and setting's recorded seconds per step, with its share of their total."""
    labels = list(dict.fromkeys(step.label for step in plan.steps))
    head = ["seed", "setting", *labels, "total"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple, dict[str, float]] = {}
    for step in plan.steps:
        seconds = recorded_seconds(step) if step_done(step) else float("nan")
        groups.setdefault((step.seed, step.setting), {})[step.label] = seconds
    for (seed, setting), times in groups.items():
        known = [v for v in times.values() if not math.isnan(v)]
        total = sum(known)
        cells = []
        for label in labels:
            value = times.get(label)
            cells.append("-" if value is None or math.isnan(value) else
                         f"{value:.0f} ({100 * value / total:.0f} %)" if total > 0 else f"{value:.0f}")
        lines.append("| " + " | ".join([str(seed), setting, *cells, f"{total:.0f} ({clock(total)})"]) + " |")
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict], output_dir: str, header: str = "", open_set=(),
                 footer: str = "") -> dict[str, str]:
    """results.md (the summary table, the table per method and unknown set, then
    ``footer``) and auroc.png (plus auroc_<setting>.png with several settings). Settings
    in ``open_set`` get macro-F1 at 95% TPR columns in the summary table too."""
    os.makedirs(output_dir, exist_ok=True)
    seeds = sorted({s for r in rows for s in r.get("seeds", [])})
    files = {"md": os.path.join(output_dir, "results.md"), "png": os.path.join(output_dir, "auroc.png")}
    spread = f"mean ± sample std over seeds {seeds}" if len(seeds) > 1 else f"seed {seeds[0] if seeds else '-'}"
    text = (header.rstrip() + "\n\n" if header else "") + \
        f"Metrics in %, {spread}; closed-set accuracy of the model the method scores with; " \
        "train s: seconds of training the method's model(s) (untrained: 0); eval s: the test.py call that " \
        "scored it (every set at once). Mean columns: over the unknown sets.\n\n" + markdown_table(rows, open_set) + \
        "\n## Per method and unknown set\n\n" + detail_table(rows) + \
        ("\n" + footer.rstrip() + "\n" if footer else "")
    with open(files["md"], "w") as handle:
        handle.write(text)
    write_charts(rows, output_dir, files["png"])
    return files


def _chart(members: list[dict], path: str, title: str) -> str:
    """AUROC per unknown set (and their mean, with several) and method, with the seeds' std."""
    from utils.plots import plot_grouped_bars

    values: dict[str, dict[str, float]] = {}
    errors: dict[str, dict[str, float]] = {}
    for r in members:
        values.setdefault(r["unknown"], {})[r["method"]] = 100 * r["auroc"]
        errors.setdefault(r["unknown"], {})[r["method"]] = 100 * (r.get("auroc_std") or 0.0)
    methods = list(dict.fromkeys(r["method"] for r in members))
    if len(values) == 1:
        return plot_grouped_bars(values, path, ylabel="AUROC (%)", title=title, errors=errors)
    values["mean"], errors["mean"] = {}, {}
    for method in methods:
        mean, std = _mean_over_sets([r for r in members if r["method"] == method])
        values["mean"][method], errors["mean"][method] = 100 * mean, 0.0 if math.isnan(std) else 100 * std
    low = min(v for group in values.values() for v in group.values() if not math.isnan(v))
    return plot_grouped_bars(values, path, ylabel="AUROC (%)", title=title, errors=errors,
                             ylim=(max(0.0, math.floor(low / 5) * 5 - 5), 100.5))


def write_charts(rows: list[dict], output_dir: str, path: str) -> None:
    """``path``: AUROC by method and set; with several settings, the mean AUROC by setting and
    method there, and each setting's chart as auroc_<setting>.png beside it."""
    from utils.plots import plot_grouped_bars

    settings = list(dict.fromkeys(r.get("setting", "") for r in rows))
    if len(settings) == 1:
        _chart(rows, path, f"AUROC by method and unknown set ({settings[0]})")
        return
    values = {}
    for setting in settings:
        members = [r for r in rows if r.get("setting", "") == setting]
        _chart(members, os.path.join(output_dir, f"auroc_{slug(setting)}.png"), f"AUROC ({setting})")
        for method in dict.fromkeys(r["method"] for r in members):
            values.setdefault(setting, {})[method] = 100 * _mean_over_sets(
                [r for r in members if r["method"] == method])[0]
    plot_grouped_bars(values, path, ylabel="mean AUROC over the unknown sets (%)", title="AUROC by setting and method")


def budget_header(args, settings: list[Setting]) -> str:
    """results.md's opening: the profile, its budget, each setting's flags, and what the
    profile does otherwise than the paper's commands."""
    title = f"# OOD benchmark, profile {args.profile}"
    if args.released:
        title += f", the authors' released checkpoints in {args.released} (evaluated, nothing trained)"
    lines = [title, ""]
    if args.train_images or args.test_images:
        lines.append(f"Known set: {how_many(args.train_images)} training and {how_many(args.test_images)} test "
                     "images (IDX under data/).")
    if args.unknown_images:
        lines.append(f"Each unknown set: its first {args.unknown_images} test images (IDX under data/).")
    for s in settings:
        if s.unknown_images is not None and s.unknown_images != args.unknown_images:
            lines.append(f"{s.name}: its unknown sets " +
                         (f"{s.unknown_images} images each." if s.unknown_images else "whole."))
    for s in settings:
        runs = (f"released {os.path.basename(s.checkpoint)} (autoencoder: "
                f"{os.path.basename(s.ae_checkpoint) or 'none'})" if s.checkpoint else
                f"main.py {' '.join(s.train_flags)}; {s.ae_script} {' '.join(s.ae_flags)}")
        lines.append(f"- {s.name}: known {s.known} ({s.class_num} classes); {runs}; test.py {' '.join(s.test_flags)}")
    deviations = profile_deviations(args, settings)
    if deviations:
        lines += ["", "Deviations from the paper's MNIST command:"] + [f"- {d}" for d in deviations]
    notes = released_notes(args, settings)
    if notes:
        lines += ["", "Left out:"] + [f"- {note}" for note in notes]
    return "\n".join(lines)
