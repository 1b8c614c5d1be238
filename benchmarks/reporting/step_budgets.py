"""Runs made at a step budget (``suite.py --budget-steps N``), comparable on any machine."""

from __future__ import annotations

import math

from ..suite_jobs import LONGPRE_MODELS, TASKS
from .aggregate import cells_seen, footing, runs_of
from .columns import LONGPRE_BASE
from .setup import part_flags
from .format import budget_check, fmt, fmt_cell, model_label, pct, signed


def _table(cells, part: str) -> tuple[list[str], list]:
    """One part's step-budget runs: a row per column with the steps made, the wall clock they took and
    the machine, and the footing of each task and fraction (all its columns)."""
    rows = sorted({(k[1], k[3]) for k in cells if k[0] == part})
    out = [f"**{part.replace('@', ', ').replace('st', ' steps')}**", "",
           "| task | labels | model | test MAE | steps made | wall clock (min) | machine | cells |",
           "|---|---|---|---|---|---|---|---|"]
    footings = []
    for task, fraction in rows:
        keys = sorted(k for k in cells if k[0] == part and k[1] == task and k[3] == fraction)
        footings.append(footing(runs_of(*(cells[k] for k in keys))))
        for key in keys:
            cell = cells[key]
            out.append(f"| {TASKS[task].label} | {100 * fraction:g}% | {model_label(key[2])} | {fmt_cell(cell)} | "
                       f"{', '.join(str(r.get('fit', {}).get('steps', '–')) for r in cell.results)} | "
                       f"{', '.join(fmt(r.get('fit', {}).get('seconds', math.nan) / 60, 2) for r in cell.results)} | "
                       f"{', '.join(sorted({r['machine']['cpu'] for r in cell.results}))} | "
                       f"{', '.join(sorted({cells_seen(r) for r in cell.results}))} |")
    return out + ["", budget_check(footings, "task-and-fraction rows (every column in them)"), ""], footings


def _commands(cells, parts) -> list[str]:
    """The suite commands that made the step-budget runs (each names its seeds, models, tasks and steps)."""
    jobs = runs_of(*(cells[k] for k in cells if k[0] in parts))
    return [f"python benchmarks/suite.py --part {raw}{flags}" for raw in dict.fromkeys(r["experiment"] for r in jobs)
            for flags in part_flags(jobs, raw) if "--budget-steps" in flags]


def section_step_budgets(cells) -> list[str]:
    """Runs made with a step budget (``suite.py --budget-steps N``): the same optimiser steps for every
    column, so the comparison means the same on any machine. One table per part and budget."""
    parts = sorted({k[0] for k in cells if "@" in k[0]})
    if not parts:
        return []
    out = ["## At a step budget", "",
           "Runs made with `python benchmarks/suite.py ... --budget-steps N`: every column trains the same number of "
           "optimizer steps, whatever the machine (the wall clock is only a safety cap, shown beside). Test MAE "
           "(seeds); the steps each run made, its wall clock and its machine type are read from its results file.", ""]
    for part in parts:
        out += _table(cells, part)[0]
    out += ["Commands:", "", "```bash", *_commands(cells, parts), "```", ""]
    pairs = [((p, t, LONGPRE_MODELS[-1], f), (q, t, m, f)) for p, t, _, f in cells if "@" in p
             for q in (p, p.replace("longpre-sparse", "sparse")) for m in LONGPRE_BASE
             if (p, t, LONGPRE_MODELS[-1], f) in cells and (q, t, m, f) in cells and p.split("@")[1] == q.split("@")[1]]
    lines = []
    for mine, theirs in dict.fromkeys(pairs):
        a, b = cells[mine], cells[theirs]
        if footing(runs_of(a, b)):
            lines.append(f"* {TASKS[mine[1]].label}, {100 * mine[3]:g}%, {mine[0].split('@')[1].replace('st', ' steps')}: "
                         f"pre-trained longer still {fmt(a.mae)} vs. {model_label(theirs[2])} {fmt(b.mae)} "
                         f"({signed(pct(a.mae, b.mae))}).")
    if lines:
        out += ["**Analysis** (computed; only pairs where every run reached its step budget):", "", *lines, ""]
    return out
