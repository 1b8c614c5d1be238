"""Tables and the label-fraction figure of the small-data benchmark, from its results files.

    python -m benchmarks.smalldata --report [--quick]    # docs/smalldata.md, docs/figures/smalldata_fractions*.png

Per task (all the labels): each column's test MAE as mean ± std over the folds that ran (learnt
units, and GPa for the moduli learnt as log10), crysdiff's 95% interval coverage, the folds and the
mean seconds per fold. Per curve task: MAE against the label fraction, one line per column.
Every number is read from ``benchmarks/results/smalldata[-quick]/*.json``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_results(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]


def _mean_std(values) -> tuple[float, float, int]:
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if not values.size:
        return float("nan"), float("nan"), 0
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0, int(values.size)


def summarise(results: list[dict]) -> dict[tuple[str, float, str], dict]:
    """``(task, label_fraction, column) -> {"mae", "mae_unit", "coverage95", "seconds": (mean, std, n)}``."""
    groups = defaultdict(list)
    for r in results:
        groups[(r["task"], float(r["label_fraction"]), r["column"])].append(r)
    out = {}
    for key, rows in groups.items():
        out[key] = {name: _mean_std([r["test"].get(name) for r in rows]) for name in ("mae", "mae_unit", "coverage95")}
        out[key]["seconds"] = _mean_std([r["seconds"].get("total") for r in rows])
        out[key]["steps"] = _mean_std([(r.get("training") or {}).get("steps") for r in rows])
        out[key]["capped"] = sum(bool((r.get("training") or {}).get("stopped_by_cap")) for r in rows)
        out[key]["rows"] = rows
    return out


def _cell(stat: tuple[float, float, int], digits: int = 4) -> str:
    mean, std, n = stat
    if not n:
        return "–"
    return f"{mean:.{digits}g} ± {std:.2g}" if n > 1 else f"{mean:.{digits}g}"


def task_tables(summary: dict) -> list[str]:
    """One markdown table per task at all the labels, columns in the benchmark's order."""
    from benchmarks.smalldata import COLUMNS, TASKS

    lines = []
    for task_name, task in TASKS.items():
        present = [c for c in COLUMNS if (task_name, 1.0, c) in summary]
        if not present:
            continue
        unit = f"log10 {task.unit}" if task.log10 else task.unit or "unitless"
        head = ["column", f"test MAE ({unit})"] + ([f"MAE ({task.unit})"] if task.log10 else []) + \
               ["95% coverage", "folds", "steps per fold", "s per fold"]
        lines += [f"### {task.label}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        best = min(summary[(task_name, 1.0, c)]["mae"][0] for c in present)
        for c in present:
            s = summary[(task_name, 1.0, c)]
            mae = _cell(s["mae"])
            cells = [COLUMNS[c].label, f"**{mae}**" if s["mae"][0] == best else mae]
            cells += [_cell(s["mae_unit"])] if task.log10 else []
            steps = f"{s['steps'][0]:.0f}" if s["steps"][2] else "–"
            steps += f" ({s['capped']} stopped by the cap)" if s["capped"] else ""
            cells += [_cell(s["coverage95"], 3), str(s["mae"][2]), steps, f"{s['seconds'][0]:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def fraction_figure(summary: dict, path: Path) -> Path | None:
    """MAE against label fraction on the curve tasks (one panel each); ``None`` if nothing to draw."""
    from benchmarks.smalldata import COLUMNS, CURVE_TASKS, TASKS

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {t: {c: sorted((f, s["mae"]) for (tt, f, c2), s in summary.items() if tt == t and c2 == c)
                  for c in COLUMNS} for t in CURVE_TASKS}
    if not any(len(points) for t in curves.values() for points in t.values()):
        return None
    figure, axes = plt.subplots(1, len(CURVE_TASKS), figsize=(5 * len(CURVE_TASKS), 3.8), squeeze=False)
    for axis, task in zip(axes[0], CURVE_TASKS):
        for column, points in curves[task].items():
            if points:
                f = [100 * p[0] for p in points]
                axis.errorbar(f, [p[1][0] for p in points], yerr=[p[1][1] for p in points], marker="o",
                              capsize=3, label=COLUMNS[column].label, color=f"C{list(COLUMNS).index(column)}")
        unit = f"log10 {TASKS[task].unit}" if TASKS[task].log10 else TASKS[task].unit or "unitless"
        axis.set(xscale="log", xlabel="labels of the training fold (%)", ylabel=f"test MAE ({unit})",
                 title=TASKS[task].label)
        axis.set_xticks([10, 25, 50, 100], ["10", "25", "50", "100"])
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def protocol_lines(quick: bool) -> list[str]:
    """The columns, budgets and hyper-parameter policy, from the constants the run uses."""
    from benchmarks import smalldata as sd

    cap = sd.QUICK_CAP_MINUTES if quick else sd.CAP_MINUTES
    epochs, least = (sd.QUICK_EPOCHS, sd.QUICK_MIN_STEPS) if quick else (sd.EPOCHS, sd.MIN_STEPS)
    return [
        "## Columns and budgets", "",
        f"* **Budget of every neural column** (crysdiff, the scratch network, CGCNN, ALIGNN): the same number "
        f"of optimiser steps at batch {sd.BATCH}, {epochs} passes over the fold's training crystals and at "
        f"least {least} steps (the small label fractions), so the budget does not depend on the machine's "
        f"speed (issue 27); a linear warm-up over the first tenth of the steps (at most {sd.WARMUP_STEPS}), a "
        f"cosine decay over the steps, {sd.VALIDATIONS} evenly spaced validations on the inner validation "
        "split plus one at the end, and the weights with the best validation MAE kept (early stopping by "
        f"selection). A wall-clock **safety cap of {cap:g} min per fold** stops a run that is far slower "
        "than planned; the results file records the steps made (`training.steps`, `training.stopped_by_cap`).",
        f"* crysdiff: `crysdiff finetune --init {sd.COLUMNS['crysdiff'].init}` with the default head and "
        "learning rate; the test is predicted with the calibrated 95% interval a user gets (`crysdiff "
        "predict`, 100 samples). The same network from scratch: the same command without `--init`.",
        "* CGCNN-style and ALIGNN (`benchmarks/peers/`): their own settings (AdamW 1e-3, L1 on the "
        "standardised target), the step budget above (`train.max_steps`).",
        "* Random forest (`benchmarks/peers/rf_runner.py`): matminer Magpie ElementProperty + DensityFeatures + "
        "GlobalSymmetryFeatures, scikit-learn `RandomForestRegressor` with fixed hyper-parameters (500 trees, "
        "otherwise defaults; not tuned), fitted on the training + inner-validation crystals; no time cap.",
        "* CHGNet 0.4.2 crystal features (`benchmarks/peers/chgnet_runner.py`): `RidgeCV` (alpha by "
        "leave-one-out inside the training crystals) and a (128, 64) `MLPRegressor` (L2 strength chosen on "
        "the inner validation split); no time cap. Each crystal is featurised once per source (the moduli "
        "share `mp_elastic`'s features, refractive index and band gap those of `dielectric_constant`).",
        "* The pre-training pool of the crysdiff checkpoints holds the structures (not the labels) of every "
        "set in `../shared/data`, test folds included, as unsupervised pre-training allows.", ""]


def render(results: list[dict], figure: str | None, quick: bool) -> str:
    summary = summarise(results)
    commits = sorted({r.get("git_commit", "unknown")[:7] for r in results})
    lines = ["# Small-data benchmark (issue 24)", "",
             "Generated by `python -m benchmarks.smalldata --report" + (" --quick`" if quick else "`") +
             f" from {len(results)} results files in `benchmarks/results/smalldata{'-quick' if quick else ''}/`"
             f" (commits {', '.join(commits)}). Protocol: `benchmarks/smalldata.py` (5-fold "
             "`KFold(shuffle=True, random_state=18012019)`, inner validation split for early stopping and "
             "selection, moduli learnt as log10 GPa).", ""]
    machines = sorted({f"{(r.get('machine') or {}).get('cpu', '?')}, {(r.get('machine') or {}).get('cores', '?')} cores"
                       for r in results})
    lines += [f"Machine{'s' if len(machines) > 1 else ''} of these results (from the results files): "
              + "; ".join(machines) + (" (**mixed: compare the seconds only within one machine type**; "
                                        "the step budgets do not depend on it)" if len(machines) > 1 else "")
              + ".", ""]
    if quick:
        lines += ["> **This is a `--quick` smoke run, not the benchmark**: 200 crystals per task, fold 0 only, "
                  "budgets of seconds. It shows that the pipeline runs end to end; its MAEs say nothing "
                  "about the models.", ""]
    lines += ["## Per task, all the labels (mean ± std over folds; best MAE in bold)", "", *task_tables(summary),
              *protocol_lines(quick)]
    if figure:
        lines += ["## MAE against label fraction", "", f"![MAE against label fraction]({figure})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(layout, docs: Path = ROOT / "docs") -> list[str]:
    results = load_results(layout.results)
    name = "smalldata_fractions_quick.png" if layout.quick else "smalldata_fractions.png"
    figure = fraction_figure(summarise(results), docs / "figures" / name)
    text = render(results, f"figures/{name}" if figure else None, layout.quick)
    (docs / "smalldata.md").write_text(text)
    return [f"wrote {docs / 'smalldata.md'} ({len(results)} results)"] + ([f"wrote {figure}"] if figure else [])
