"""Fig. 5: the ablations, each variant against the full model."""

from __future__ import annotations

from pathlib import Path

from ..suite_jobs import EXPERIMENTS, TASKS
from .aggregate import footing, models_of, runs_of, tasks_of
from .figures import fig_ablation
from .columns import PAPER_COLUMN
from .format import budget_check, fmt_cell, model_label, pct, rel, signed, unit_of


def section_ablation(cells, figures: Path, out_dir: Path) -> list[str]:
    out = ["## Fig. 5: ablations", ""]
    tasks = tasks_of(cells, "ablation")
    if not tasks:
        return out + ["*No ablation results yet* (`python benchmarks/suite.py --part pretrain-ablation` then `--part ablation`).", ""]
    variants = models_of(cells, "ablation", EXPERIMENTS["ablation"].models)
    if fig_ablation(cells, tasks, variants, figures / "fig5_ablation.png"):
        out += [f"![ablation bar chart]({rel(figures / 'fig5_ablation.png', out_dir)})", ""]
    out += ["| variant | " + " | ".join(f"{TASKS[t].label} ({unit_of(cells, t)})" for t in tasks) + " |",
            "|---|" + "---|" * len(tasks)]
    for v in variants:
        out.append(f"| {model_label(v)} | " + " | ".join(fmt_cell(cells.get(("ablation", t, v, 1.0))) for t in tasks) + " |")
    fair = {t: footing(runs_of(*(cells.get(("ablation", t, v, 1.0)) for v in variants))) for t in tasks}
    out += ["", budget_check(list(fair.values()), "task columns (every variant in them)"), "",
            "**Analysis** (computed; change of test MAE relative to the full model):", ""]
    for v in variants:
        if v == PAPER_COLUMN:
            continue
        changes = [pct(cells[("ablation", t, v, 1.0)].mae, cells[("ablation", t, PAPER_COLUMN, 1.0)].mae)
                   for t in tasks if ("ablation", t, v, 1.0) in cells and ("ablation", t, PAPER_COLUMN, 1.0) in cells and fair[t]]
        if changes:
            out.append(f"* {model_label(v)}: worse than the full model on {sum(c > 0 for c in changes)} of {len(changes)} "
                       f"tasks (changes: {', '.join(signed(c) for c in changes)}).")
    return out + [""]
