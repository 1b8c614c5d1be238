"""Table 1: test MAE per property, every model column, coverage and the computed analysis."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..suite_jobs import MODELS, ROOT, TASKS
from .aggregate import carried_over, footing, models_of, runs_of, tasks_of
from .columns import PAPER_COLUMN, REGRESSION_COLUMN, crysdiff_heads, own_columns
from .format import CARRIED, MIXED, budget_check, calibrated_cell, fmt, fmt_cell, median, model_label, pct, rel, signed, spearman, unit_of


def section_table1(cells, calibration: dict | None = None) -> list[str]:
    out = ["## Table 1: test MAE per property", ""]
    tasks = tasks_of(cells, "table1")
    if not tasks:
        return out + ["*No table1 results yet* (`python benchmarks/suite.py --part table1`).", ""]
    models = models_of(cells, "table1", own_columns())
    heads = [(own, twin, what) for own, twin, what in crysdiff_heads() if own in models]
    calibration = calibration or {}
    out += ["Mean test MAE ± standard deviation over seeds (number of seeds); best per row in bold. "
            "*coverage*: fraction of test targets inside the 95% interval of each crysdiff head"
            + (", the chain's own interval → the calibrated one that `crysdiff predict` reports "
               "(fitted on the validation set; `benchmarks/calibration.py`)" if calibration else "") + "."
            + (f" {CARRIED}: from calibration rows carried over from a pass that recorded no commit (see the calibration "
               "section)." if any(carried_over(r) for rows in calibration.values() for r in rows) else ""), "",
            "| task (unit) | budget | " + " | ".join(model_label(m) for m in models) + " | "
            + " | ".join(f"coverage, {what}" for _, _, what in heads) + " |",
            "|---|---|" + "---|" * (len(models) + len(heads))]
    best_of, fair = {}, {}
    for task in tasks:
        row = {m: cells.get(("table1", task, m, 1.0)) for m in models}
        finite = {m: c.mae for m, c in row.items() if c and c.maes}
        fair[task] = footing(runs_of(*row.values()))
        best_of[task] = min(finite, key=finite.get) if finite else None
        budget = next(iter(row.values())).results[0]["budget_minutes"] if any(row.values()) else math.nan
        coverage = [(calibrated_cell(calibration, ("table1", task, own, 1.0), set(row[own].seeds))
                     or fmt(row[own].coverage)) if row.get(own) else "–" for own, _, _ in heads]
        out.append(f"| {TASKS[task].label} ({unit_of(cells, task)}){'' if fair[task] else ' ' + MIXED} | {budget:g} min | "
                   + " | ".join(fmt_cell(row[m], m == best_of[task]) for m in models) + " | " + " | ".join(coverage) + " |")
    out += ["", budget_check([fair[t] for t in tasks]), "", "**Analysis** (computed from the table):", ""]
    out += _best_lines(best_of, fair, heads) + _pretraining_lines(cells, tasks, heads)
    out += _regression_lines(cells, tasks, heads) + _steps_line(cells, tasks)
    out += _coverage_lines(cells, tasks, heads, calibration) + _peer_line(cells, models)
    out.append(domain_overlap())
    return out + [""]


def _best_lines(best_of: dict, fair: dict, heads) -> list[str]:
    """How often each head is the best column, over the rows on one footing."""
    out = []
    best_of = {t: best for t, best in best_of.items() if fair[t]}
    for own, twin, what in heads:
        count = sum(best == own for best in best_of.values())
        out.append(f"* crysdiff ({what}) is the best column on {count} of {len(best_of)} tasks (issue 5 target: at least 5 of 7).")
    if len(heads) > 1:
        count = sum(best in {own for own, _, _ in heads} for best in best_of.values())
        out.append(f"* One of crysdiff's diffusion heads is the best column on {count} of {len(best_of)} tasks.")
    return out


def _pretraining_lines(cells, tasks, heads) -> list[str]:
    """Each head pre-trained against its from-scratch twin, and how that change follows the training-set size."""
    out = []
    for own, twin, what in heads:
        gains, sizes = {}, {}
        for task in tasks:
            crys, scratch = cells.get(("table1", task, own, 1.0)), cells.get(("table1", task, twin, 1.0))
            if crys and scratch and footing(runs_of(crys, scratch)):
                gains[task] = pct(crys.mae, scratch.mae)
                sizes[task] = crys.results[0].get("train_count") or 0
        if not gains:
            continue
        helped = [t for t, g in gains.items() if g < 0]
        out.append(f"* Pre-training ({what}: pre-trained vs. the same network from scratch) lowers the test MAE on "
                   f"{len(helped)} of {len(gains)} tasks, median change {signed(median(gains.values()))} "
                   f"(most favourable: {TASKS[min(gains, key=gains.get)].label}, {signed(min(gains.values()))}; "
                   f"least: {TASKS[max(gains, key=gains.get)].label}, {signed(max(gains.values()))}).")
        not_helped = [TASKS[t].label for t in gains if gains[t] >= 0]
        if not_helped:
            out.append(f"* Pre-training ({what}) does not help on: {', '.join(not_helped)}.")
        rho = spearman([sizes[t] for t in gains], [gains[t] for t in gains])
        if math.isfinite(rho):
            out.append(f"* Spearman correlation between training-set size and the relative change from pre-training "
                       f"({what}): {fmt(rho, 2)} over {len(gains)} tasks (positive: pre-training helps more where labels "
                       f"are few).")
    return out


def _regression_lines(cells, tasks, heads) -> list[str]:
    """Each diffusion head against the regression head on the same pre-trained encoder."""
    out = []
    for own, _, what in heads:
        head_gains = {t: pct(cells[("table1", t, own, 1.0)].mae, cells[("table1", t, REGRESSION_COLUMN, 1.0)].mae)
                      for t in tasks if ("table1", t, own, 1.0) in cells and ("table1", t, REGRESSION_COLUMN, 1.0) in cells
                      and footing(runs_of(cells[("table1", t, own, 1.0)], cells[("table1", t, REGRESSION_COLUMN, 1.0)]))}
        if head_gains:
            better = sum(g < 0 for g in head_gains.values())
            out.append(f"* The diffusion head ({what}) beats a regression head on the same pre-trained encoder on {better} "
                       f"of {len(head_gains)} tasks (median change {signed(median(head_gains.values()))}).")
    return out


def _steps_line(cells, tasks) -> list[str]:
    """The training the paper's column did within the budget, from its runs' logs."""
    out = []
    done = [(t, r["fit"]["steps"], r["fit"].get("epochs"), r.get("train_count"))
            for t in tasks if ("table1", t, PAPER_COLUMN, 1.0) in cells
            for r in cells[("table1", t, PAPER_COLUMN, 1.0)].results[:1] if r.get("fit", {}).get("steps")]
    if done:
        out.append("* Training done within the budget by crysdiff (optimizer steps, epochs started, training crystals; "
                   "from the runs' own logs): " + "; ".join(f"{TASKS[t].label} {n} steps, {e} epochs, {c} crystals"
                                                             for t, n, e, c in done)
                   + ". The budgets compare how fast the models learn, not where they end up; the bundled models "
                     "(default head, fine-tuned for longer, in two stages; their budgets on their cards) are in "
                     "`models/README.md`.")
    return out


def _coverage_lines(cells, tasks, heads, calibration: dict) -> list[str]:
    """Raw and calibrated 95% coverage of each head, the carried-over calibration rows left out."""
    out = []
    for own, _, what in heads:
        coverages = [cells[("table1", t, own, 1.0)].coverage for t in tasks if ("table1", t, own, 1.0) in cells]
        inside = sum(0.90 <= c <= 0.98 for c in coverages if math.isfinite(c))
        if coverages:
            out.append(f"* 95% interval coverage of crysdiff ({what}), the chain's own interval, is within [0.90, 0.98] "
                       f"on {inside} of {len(coverages)} tasks (range {fmt(min(coverages))}–{fmt(max(coverages))}).")
        scored = {t: [r for r in calibration.get(("table1", t, own, 1.0), []) if r["seed"] in cells[("table1", t, own, 1.0)].seeds]
                  for t in tasks if ("table1", t, own, 1.0) in cells}
        calibrated = [float(np.mean([r["test_coverage_calibrated"] for r in rows])) for rows in scored.values()
                      if rows and not any(carried_over(r) for r in rows)]
        carried = sum(bool(rows) and any(carried_over(r) for r in rows) for rows in scored.values())
        left = (f" ({carried} tasks whose calibration rows are carried over, {CARRIED}, left out)" if carried else "")
        if calibrated:
            inside = sum(0.90 <= c <= 0.98 for c in calibrated)
            out.append(f"* Calibrated on the validation set, as `crysdiff predict` reports it: within [0.90, 0.98] on "
                       f"{inside} of {len(calibrated)} tasks (range {fmt(min(calibrated))}–{fmt(max(calibrated))}){left}.")
        elif carried:
            out.append(f"* Calibrated on the validation set, as `crysdiff predict` reports it: not counted, every task's "
                       f"calibration rows ({carried}) are carried over from a pass that recorded no commit ({CARRIED}; "
                       "their run folders are gone); see the calibration section.")
    return out


def _peer_line(cells, models) -> list[str]:
    """Which peer columns report an interval."""
    out = []
    peers = sorted({m for m in models if m not in MODELS or MODELS[m].peer})
    with_interval = [m for m in peers if any(c.coverages for k, c in cells.items() if k[0] == "table1" and k[2] == m)]
    if peers:
        out.append(f"* Peer columns reporting an interval (a 95% coverage in their results files): "
                   f"{', '.join(with_interval) or 'none'} of {', '.join(peers)}.")
    return out




def domain_overlap(pool: Path = ROOT / "models" / "pretrained_pool.ckpt", data: Path = ROOT.parent / "shared" / "data") -> str:
    """What the pre-training pool held, read from the pool model's record and checked against the
    structure files under ``data``: the test sets' structures were seen, unlabelled, in pre-training."""
    import torch

    if not pool.is_file():
        return f"* Domain overlap: `{rel(pool, ROOT)}` is missing, so the pre-training pool is not known here."
    sources = torch.load(pool, map_location="cpu", weights_only=True)["data"]["train"]["sources"]
    names = {s.split("shared/data/", 1)[-1] for s in sources}
    files = ([p.relative_to(data).as_posix() for p in sorted(data.rglob("*")) if p.is_file()
              and p.name.endswith((".csv.gz", ".extxyz", ".json", ".json.gz")) and p.parent.name != "structures"]
             if data.is_dir() else [])
    missing = [f for f in files if f not in names]
    checked = (f"every structure file under `../shared/data` ({len(files)}; `mp_elastic` as its folder) is among them"
               if files and not missing else f"not among them: {', '.join(missing)}" if missing else
               "`../shared/data` is not here to check against")
    return (f"* Domain overlap (read from `{rel(pool, ROOT)}`'s record): the pre-training pool has {len(sources)} sources, "
            f"labels ignored; {checked}." + (" So the structures of every task, test sets included, were seen "
                                              "unlabelled during pre-training." if files and not missing else ""))
