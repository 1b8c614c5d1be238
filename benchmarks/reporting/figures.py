"""Fig. 4, Fig. 5 and the reliability diagram, drawn with matplotlib from the aggregated cells."""

from __future__ import annotations

import math
from pathlib import Path

from ..suite_jobs import FRACTIONS_SPARSE, TASKS
from .columns import PAPER_COLUMN
from .format import fmt, model_label, unit_of


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _row_of_panels(cells, tasks, experiment: str):
    """(figure, [(axes, task)]) with one panel per task that ``experiment`` has, or ``(None, [])``."""
    present = [t for t in tasks if any(k[0] == experiment and k[1] == t for k in cells)]
    if not present:
        return None, []
    fig, axes = _plt().subplots(1, len(present), figsize=(4.8 * len(present), 3.8), squeeze=False)
    return fig, list(zip(axes[0], present))


def _save(fig, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return True


def fig_sparse(cells, tasks, models, path: Path) -> bool:
    fig, panels = _row_of_panels(cells, tasks, "sparse")
    for ax, task in panels:
        for model in models:
            points = [(f, cells[("sparse", task, model, f)]) for f in FRACTIONS_SPARSE if ("sparse", task, model, f) in cells]
            if not points:
                continue
            x = [100 * f for f, _ in points]
            y = [c.mae for _, c in points]
            err = [0 if math.isnan(c.spread) else c.spread for _, c in points]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=model_label(model))
        ax.set_xscale("log")
        ax.set_xticks([5, 10, 20, 40, 80, 100], ["5", "10", "20", "40", "80", "100"])
        ax.set_xlabel("training labels used (%)")
        ax.set_ylabel(f"test MAE ({unit_of(cells, task)})")
        ax.set_title(TASKS[task].label, fontsize=10)
        ax.legend(fontsize=7)
    return bool(panels) and _save(fig, path)


def fig_ablation(cells, tasks, variants, path: Path) -> bool:
    fig, panels = _row_of_panels(cells, tasks, "ablation")
    for ax, task in panels:
        names = [v for v in variants if ("ablation", task, v, 1.0) in cells]
        values = [cells[("ablation", task, v, 1.0)] for v in names]
        ax.bar(range(len(names)), [c.mae for c in values],
               yerr=[0 if math.isnan(c.spread) else c.spread for c in values], capsize=3,
               color=["tab:blue" if v == PAPER_COLUMN else "tab:gray" for v in names])
        ax.set_xticks(range(len(names)), ["CrysDiff" if v == PAPER_COLUMN else model_label(v).removeprefix("w/o ").join(["w/o ", ""])
                                          for v in names], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"test MAE ({unit_of(cells, task)})")
        ax.set_title(TASKS[task].label, fontsize=10)
    return bool(panels) and _save(fig, path)


def fig_reliability(cells, tasks, path: Path) -> bool:
    plt = _plt()
    present = [t for t in tasks if ("table1", t, PAPER_COLUMN, 1.0) in cells
               and "std_bins" in cells[("table1", t, PAPER_COLUMN, 1.0)].results[0]["test"]]
    if not present:
        return False
    cols = min(4, len(present))
    rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(present):]:
        ax.axis("off")
    for ax, task in zip(axes.flat, present):
        cell = cells[("table1", task, PAPER_COLUMN, 1.0)]
        top = 0.0
        for r in cell.results:
            bins = r["test"]["std_bins"]
            x, y = [b["mean_predicted_std"] for b in bins], [b["rmse"] for b in bins]
            ax.plot(x, y, "o-", ms=3, label=f"seed {r['seed']}")
            top = max(top, *x, *y)
        ax.plot([0, top], [0, top], "k--", lw=0.8)
        ax.set_title(f"{TASKS[task].label}\ncoverage {fmt(cell.coverage)}", fontsize=8)
        ax.set_xlabel(f"mean predicted std ({unit_of(cells, task)})", fontsize=8)
        ax.set_ylabel("RMSE in the bin", fontsize=8)
    return _save(fig, path)
