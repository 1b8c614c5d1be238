"""The default head started from the longer pre-trainings, beside the pool model and from scratch."""

from __future__ import annotations

import math

from ..suite_jobs import FRACTIONS_SPARSE, LONGPRE_MODELS, MODELS, ROOT, TABLE1_TASKS, TASKS, Layout
from .aggregate import footing, mean_over, runs_of, seed0
from .columns import LONGPRE_BASE
from .format import MIXED, budget_check, calibrated_cell, fmt, fmt_cell, median, model_label, pct, signed, unit_of


# the longer pre-trainings' models (by length: their checkpoints, their short names)
LONGPRE = tuple((model, Layout.default().pretrained(MODELS[model].init).relative_to(ROOT).as_posix(), name)
                for model, name in zip(LONGPRE_MODELS, ("longer", "longer still")))
POOL, SCRATCH = "pool model", "scratch"  # the two columns each longer pre-training is set beside (LONGPRE_BASE)


def _mae(run) -> float:
    return run["test"]["mae"] if run else math.nan


def _change(a, b) -> str:
    return signed(pct(_mae(a), _mae(b))) + ("" if footing([a, b]) else f" {MIXED}") if a and b else "–"


def _step_parts(cells, task: str, fraction: float) -> list[str]:
    """The step-budget parts (``longpre-sparse@Nst``) with a seed-0 run of the longest pre-training here."""
    return sorted({k[0] for k in cells if k[0].startswith("longpre-sparse@") and k[1:] == (task, LONGPRE_MODELS[-1], fraction)})


def _row_runs(cells, present, task: str, fraction: float, part: str = "longpre-sparse") -> dict:
    """Seed-0 runs of one row, by column: the longer pre-trainings from ``part``, the pool model and
    scratch from Fig. 4's runs at the same budget where they have the fraction, else from Table 1's."""
    budget = part[len("longpre-sparse"):]  # "" or "@Nst"
    source = "sparse" if (f"sparse{budget}", task, LONGPRE_BASE[0], fraction) in cells or budget else "table1"
    row = {POOL: seed0(cells.get((source + budget, task, LONGPRE_BASE[0], fraction))),
           SCRATCH: seed0(cells.get((source + budget, task, LONGPRE_BASE[1], fraction)))}
    return row | {name: seed0(cells.get((part, task, model, fraction))) for model, _, name in present}


def _rows(cells, present) -> list[tuple[str, float, list[tuple[str, dict]]]]:
    """(task, fraction, [(budget shown, runs by column)]): the wall-clock row, then any step-budget row."""
    names = {m[0] for m in present}
    keys = sorted({(k[1], k[3]) for k in cells if k[0] == "longpre-sparse" and k[2] in names},
                  key=lambda k: (TABLE1_TASKS.index(k[0]) if k[0] in TABLE1_TASKS else len(TABLE1_TASKS), k))
    return [(task, fraction, [("", _row_runs(cells, present, task, fraction))]
             + [(f", {part.split('@')[1].replace('st', ' steps')}", _row_runs(cells, present, task, fraction, part))
                for part in _step_parts(cells, task, fraction)]) for task, fraction in keys]


def pair(shown: list[tuple[str, dict]], a: str, b: str) -> tuple[dict | None, dict | None]:
    """Columns ``a`` and ``b`` of one task and fraction: from a step-budget row where it has both (the
    same optimiser steps, comparable on any machine), else from the wall-clock row."""
    for _, runs in reversed(shown):
        if runs.get(a) and runs.get(b):
            return runs[a], runs[b]
    return None, None


def _table(cells, present, rows, calibration) -> tuple[list[str], list]:
    names = [name for _, _, name in present]
    out = ["| task (unit) | labels | from scratch | pre-trained (pool model) | "
           + " | ".join(f"pre-trained {name}" for name in names) + " | "
           + " | ".join(f"{name} vs. pool model | {name} vs. scratch" for name in names)
           + " | coverage, " + " / ".join(names) + " (raw → calibrated) |",
           "|---|---|---|---|" + "---|" * (3 * len(present) + 1)]
    checked = []
    for task, fraction, shown in rows:
        for budget, runs in shown:
            checked += [footing([runs[n], runs[o]]) for n in names for o in (POOL, SCRATCH) if runs[n] and runs[o]]
            coverage = " / ".join(calibrated_cell(calibration or {}, ("longpre-sparse", task, m, fraction), {0}) or "–"
                                  for m, _, _ in present) if not budget else "–"
            out.append(f"| {TASKS[task].label} ({unit_of(cells, task)}) | {100 * fraction:g}%{budget} | "
                       f"{fmt(_mae(runs[SCRATCH]))} | {fmt(_mae(runs[POOL]))} | "
                       + " | ".join(fmt(_mae(runs[n])) for n in names) + " | "
                       + " | ".join(f"{_change(runs[n], runs[POOL])} | {_change(runs[n], runs[SCRATCH])}" for n in names)
                       + f" | {coverage} |")
    return out, checked


def _tally(pairs, what) -> list[str]:
    pairs = [(a, b) for a, b in pairs if a and b]
    fair = [(_mae(a), _mae(b)) for a, b in pairs if footing([a, b])]
    left = f" ({len(pairs) - len(fair)} rows mixing machine types left out)" if len(fair) < len(pairs) else ""
    if fair:
        return [f"* {what}: lower test MAE in {sum(a < b for a, b in fair)} of {len(fair)} rows, median change "
                f"{signed(median(pct(a, b) for a, b in fair))}{left}."]
    return [f"* {what}: no row on one machine type ({len(pairs)} rows mix machine types)."] if pairs else []


def _tallies(rows, names) -> list[str]:
    out = []
    for name in names:
        out += _tally([pair(shown, name, POOL) for _, _, shown in rows], f"Pre-trained {name} vs. the pool model")
        out += _tally([pair(shown, name, SCRATCH) for _, _, shown in rows], f"Pre-trained {name} vs. from scratch")
    for shorter, longest in zip(names, names[1:]):
        out += _tally([pair(shown, longest, shorter) for _, _, shown in rows], f"Pre-trained {longest} vs. {shorter}")
    out += _tally([pair(shown, POOL, SCRATCH) for _, _, shown in rows],
                  "The pool model vs. from scratch (the same rows, for reference)")
    for name in names:
        for task in dict.fromkeys(t for t, _, _ in rows):
            low = [pair(shown, name, SCRATCH) for t, f, shown in rows if t == task and f <= 0.4]
            fair = [(_mae(a), _mae(z)) for a, z in low if a and z and footing([a, z])]
            if len(fair) > 1:
                out.append(f"* {TASKS[task].label}: pre-trained {name} beats scratch at {sum(a < z for a, z in fair)} of "
                           f"{len(fair)} fractions up to 40% (issue 5 target: all).")
            elif any(a and z for a, z in low):
                out.append(f"* {TASKS[task].label}: pre-trained {name} against scratch up to 40%: not counted, the seed-0 "
                           f"runs ran on different machine types ({MIXED}).")
    return out


def _against_table1(cells, present) -> list[str]:
    out = []
    for all_seeds, what in ((False, " (seed 0)"), (True, ", mean over seeds")):
        for model, _, name in present:
            best, counted, lines, used = _table1_best(cells, model, all_seeds=all_seeds)
            if not counted and lines:
                out.append(f"* Against every Table 1 column{what}: pre-trained {name} not counted: its runs and "
                           f"Table 1's ran on different machine types ({MIXED}).")
            elif counted and not all_seeds:
                out.append(f"* Against every Table 1 column (seed 0): pre-trained {name} would be the best column on "
                           f"{len(best)} of {counted} tasks" + (f" ({', '.join(best)})" if best else "") + ".")
            elif counted:
                out += [f"* Against every Table 1 column, mean over the same seeds ({', '.join(map(str, sorted(used)))}): "
                        f"pre-trained {name} would be the best column on {len(best)} of {counted} tasks"
                        + (f" ({', '.join(best)})" if best else "") + " (issue 5 target: at least 5 of 7):", *lines]
    return out


def section_longpre(cells, calibration: dict | None = None) -> list[str]:
    """The default head started from the longer pre-trainings (parts ``longpre-sparse`` and
    ``longpre-table1``), beside the same head started from the pool model and from scratch: the same
    task, labels and seed 0, from Fig. 4's runs where it has the fraction, else from Table 1's; and,
    where the suite reran them at a step budget, those rows too, which the counts then use."""
    present = [m for m in LONGPRE if any(k[0] == "longpre-sparse" and k[2] == m[0] for k in cells)]
    rows = _rows(cells, present)
    if not rows:
        return []
    checkpoints = " and ".join(f"`{path}` ({name})" for _, path, name in present)
    out = ["## Pre-training for longer", "",
           f"Does a longer pre-training help? {checkpoints} continue the pool model (`models/pretrained_pool.ckpt`) "
           "on the same pool, each from the one before; their budgets and validation losses are in `models/README.md`. "
           "The default head is fine-tuned from each (`python benchmarks/suite.py --part longpre-sparse`, then "
           "`--part longpre-table1`) and set beside the same head started from the pool model and from scratch: "
           "same task, labels, budget and seed (0), from Fig. 4's runs where they have the fraction, else from Table 1's."
           + (" A row whose labels name a step budget is the same seed-0 comparison rerun with that many optimizer "
              "steps for every column (the same on any machine; see the step-budget section); the counts below use it "
              "in place of the wall-clock row where it has both columns." if any(len(r[2]) > 1 for r in rows) else ""), ""]
    table, checked = _table(cells, present, rows, calibration)
    names = [name for _, _, name in present]
    out += [*table, "", budget_check(checked, "comparisons in the change columns"), "", "**Analysis** (computed):", "",
            *_tallies(rows, names)]
    for model, _, name in present:
        out += _sparse_over_seeds(cells, model, name)
    return out + _against_table1(cells, present) + [""]


def _sparse_over_seeds(cells, model: str, name: str) -> list[str]:
    """Fig. 4's check (beats scratch at every fraction up to 40%) for a longer pre-training on the mean
    over the seeds that it and the scratch column both have, where they share two or more; one line per
    task, listing each fraction's means and seeds."""
    out = []
    for task in dict.fromkeys(k[1] for k in cells if k[0] == "longpre-sparse" and k[2] == model):
        rows, mixed = [], 0
        for fraction in FRACTIONS_SPARSE:
            mine, theirs = cells.get(("longpre-sparse", task, model, fraction)), cells.get(("sparse", task, LONGPRE_BASE[1], fraction))
            seeds = sorted(set(mine.seeds) & set(theirs.seeds)) if mine and theirs and fraction <= 0.4 else []
            fair = [seed for seed in seeds if footing(runs_of(mine, theirs, seeds={seed}))]  # pairs on one machine type
            mixed += len(seeds) - len(fair)
            if len(seeds) >= 2 and fair:
                rows.append((fraction, mean_over(mine, fair), mean_over(theirs, fair), fair))
        if mixed:
            out.append(f"* {TASKS[task].label}, pre-trained {name} against scratch: {mixed} seed pairs up to 40% ran on two "
                       "machine types and are left out of the mean below" + ("" if rows else " (no fraction keeps a seed)")
                       + ".")
        if rows:
            out.append(f"* {TASKS[task].label}, mean over the seeds both have on one machine type: pre-trained {name} beats scratch at "
                       f"{sum(a < z for _, a, z, _ in rows)} of {len(rows)} fractions up to 40% (issue 5 target: all): "
                       + "; ".join(f"{100 * f:g}% {fmt(a)} vs. {fmt(z)} ({signed(pct(a, z))}, seed{'s' * (len(s) > 1)} "
                                   f"{', '.join(map(str, s))})" for f, a, z, s in rows) + ".")
    return out


def _table1_best(cells, model: str, all_seeds: bool) -> tuple[list[str], int, list[str], set]:
    """The tasks where ``model``'s Table 1 row (in ``longpre-sparse``) beats every Table 1 column: on
    seed 0 alone, or (``all_seeds``) where the row has two or more seeds, its mean beside each column's
    mean over the same seeds (a column lacking one of them left out). Returns the tasks it is best on,
    the tasks counted, a line per counted task and the seeds used."""
    best, counted, lines, used = [], 0, [], set()
    for task in TABLE1_TASKS:
        mine = cells.get(("longpre-sparse", task, model, 1.0))
        seeds = set(mine.seeds) if mine else set()
        if not all_seeds:
            seeds &= {0}
        columns = [c for k, c in cells.items() if k[0] == "table1" and k[1] == task and k[3] == 1.0]
        fair = {seed for seed in seeds if footing(runs_of(mine, *columns, seeds={seed}))}
        if fair != seeds:
            lines.append(f"  * {TASKS[task].label}: seed(s) {', '.join(map(str, sorted(seeds - fair)))} left out "
                         f"({MIXED}: the row and the Table 1 columns ran on different machine types).")
        seeds = fair
        if not seeds or (all_seeds and len(seeds) < 2):
            continue

        others = {k[2]: mean_over(c, seeds) for k, c in cells.items() if k[0] == "table1" and k[1] == task and k[3] == 1.0}
        others = {m: v for m, v in others.items() if math.isfinite(v)}
        if not others:
            continue
        counted += 1
        used |= seeds
        own, rival = mean_over(mine, seeds), min(others, key=others.get)
        if own < others[rival]:
            best.append(TASKS[task].label)
        lines.append(f"  * {TASKS[task].label}: {fmt_cell(mine)} vs. the best other "
                     f"column, {model_label(rival)}, {fmt(others[rival])} ({signed(pct(own, others[rival]))}).")
    return best, counted, lines, used
