"""Formatting shared by every section: numbers, cells, relative changes, the budget-check sentence
and the marks (``†`` mixed machines, ``‡`` carried-over calibration rows)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .aggregate import Cell, carried_over
from .columns import model_label  # noqa: F401  (re-exported: every section labels its columns)

CARRIED = "‡"  # a calibration row carried over from a pass that recorded no commit (its run folder is gone)


def calibrated_cell(calibration: dict, key: tuple, seeds=None) -> str:
    """``raw → calibrated`` mean 95% coverage of a cell (over ``seeds`` when given), or ``''``."""
    rows = [r for r in calibration.get(key, []) if seeds is None or r["seed"] in seeds]
    if not rows:
        return ""
    return (f"{fmt(float(np.mean([r['test_coverage_raw'] for r in rows])))} → "
            f"{fmt(float(np.mean([r['test_coverage_calibrated'] for r in rows])))}"
            + (f" {CARRIED}" if any(carried_over(r) for r in rows) else ""))


MIXED = "†"  # marks a comparison of runs whose budgets do not mean the same (wall clock on two machine types)


def budget_check(footings: list[str | None], what: str = "rows") -> str:
    """The sentence a table states about what it compares: computed, from the footings of its comparisons."""
    mixed = sum(f is None for f in footings)
    kinds = sorted({f for f in footings if f})
    text = (f"*Budget check* (computed from the results files): {len(footings) - mixed} of {len(footings)} {what} "
            f"compare runs on one machine type or with one step budget ({'; '.join(kinds) or '–'})")
    if mixed:
        text += (f"; {mixed} compare wall-clock runs from different machine types (marked {MIXED}) and are left out of "
                 "the counts below")
    return text + "."


def fmt(x: float, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.{digits}g}" if abs(x) >= 1e-3 else f"{x:.2e}"


def fmt_cell(cell: Cell | None, bold: bool = False) -> str:
    if cell is None or not cell.maes:
        return "–"
    text = fmt(cell.mae) + (f" ± {fmt(cell.spread, 2)}" if len(cell.maes) > 1 else "")
    text = f"**{text}**" if bold else text
    return text + (f" ({len(cell.maes)})" if len(cell.maes) > 1 else "")


def pct(new: float, old: float) -> float:
    return 100.0 * (new - old) / old if old else math.nan


def signed(x: float) -> str:
    """A relative change as ``+12%`` / ``-3.4%``."""
    return f"{x:+.2g}%" if math.isfinite(x) else "–"


def median(values) -> float:
    values = [v for v in values if math.isfinite(v)]
    return float(np.median(values)) if values else math.nan


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3:
        return math.nan
    return float(spearmanr(a, b).statistic)


def unit_of(cells: dict, task: str) -> str:
    """The task's unit: the first non-empty one among its results (older peer results have none)."""
    for (_, t, _, _), cell in cells.items():
        for result in cell.results if t == task else ():
            if result.get("unit"):
                return result["unit"]
    return ""


def rel(path: Path, out_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(out_dir.resolve()))
    except ValueError:
        return str(path)


