"""Table 2's protocol: a model fine-tuned on mp2018 refined on a second computed source."""

from __future__ import annotations

from ..suite_jobs import EXPERIMENTS
from .aggregate import footing, runs_of, tasks_of
from .format import budget_check, fmt, fmt_cell, pct, signed, unit_of


def section_refine(cells) -> list[str]:
    out = ["## Table 2 protocol: computed data refined with a second source", ""]
    tasks = tasks_of(cells, "refine")
    tasks = [t for t in tasks if t.startswith("flla")]
    if not tasks:
        return out + ["*No refine results yet* (`python benchmarks/suite.py --part refine`).", ""]
    def columns(task):
        return [cells.get(("refine", task, m, 1.0)) for m in EXPERIMENTS["refine"].models]

    shares = " or ".join(dict.fromkeys(_refine_shares(runs_of(*columns(t)))[0] for t in tasks))
    out += ["No experimental formation energies with structures can be had offline, so the protocol is reproduced "
            "with a second computed source: a model fine-tuned on mp2018 formation energies is refined on "
            f"{shares} of the `matminer/flla_2015` materials absent from mp2018 (MP 2015 energies, a different "
            "correction scheme) and tested on the rest.", "",
            "| second source used | test on | mp2018 model, before | after refinement | pre-trained, second source only |",
            "|---|---|---|---|---|"]
    analysis, footings = [], []
    for task in tasks:
        before, after, direct = columns(task)
        share, rest = _refine_shares(runs_of(before, after, direct))
        footings.append(footing(runs_of(after, direct)))  # the two trained columns (before: the same mp2018 model, evaluated)
        if not footings[-1]:
            direct = None
        out.append(f"| {share} | the other {rest} | {fmt_cell(before)} | {fmt_cell(after)} | {fmt_cell(direct)} |")
        if before and after:
            analysis.append(f"* With {share} of the second source, refinement changes the test MAE by "
                            f"{signed(pct(after.mae, before.mae))} ({fmt(before.mae)} → {fmt(after.mae)} {unit_of(cells, task)})"
                            + (f"; the mp2018 stage changes it by {signed(pct(after.mae, direct.mae))} against fine-tuning "
                               f"the pre-trained model on the second source alone." if direct else "."))
    return out + ["", budget_check(footings, "rows (their two trained columns)"), "", "**Analysis** (computed):", "",
                  *analysis, ""]


def _refine_shares(runs) -> tuple[str, str]:
    """The second source's share used for training and the share tested on, read from the split's
    crystal counts in the results files (train + val against test)."""
    parts = runs[0]["split"]["parts"] if runs else {}
    if not parts:
        return "–", "–"
    used = parts["train"]["count"] + parts["val"]["count"]
    share = used / (used + parts["test"]["count"])
    return f"{100 * share:.0f}%", f"{100 * (1 - share):.0f}%"
