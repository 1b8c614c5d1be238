"""Turn the suite's results files into ``docs/results.md`` and its figures (issue 5).

    python benchmarks/report.py                 # benchmarks/results/suite/ -> docs/results.md, docs/figures/
    python benchmarks/report.py --quick         # benchmarks/results/suite-quick/ -> runs/suite-quick/results.md
    python benchmarks/report.py --results DIR --out FILE.md --figures DIR

Every number in the report is read from a results JSON written by ``benchmarks/suite.py``; the
analysis sentences are computed from those numbers (counts, medians, correlations), never typed in.
Missing experiments are reported as missing. Peer columns (ALIGNN, CGCNN...) appear when their
results exist.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if __package__:  # imported as benchmarks.report (tests, other benchmarks)
    from .suite_jobs import (BASE_REFINE, EXPERIMENTS, FRACTIONS_SPARSE, LONGPRE_MODELS, MODELS, TABLE1_TASKS, TASKS,
                             Layout)
else:  # run as `python benchmarks/report.py`: this folder is sys.path[0]
    from suite_jobs import (BASE_REFINE, EXPERIMENTS, FRACTIONS_SPARSE, LONGPRE_MODELS, MODELS, TABLE1_TASKS, TASKS,
                            Layout)

OWN_COLUMNS = ("crysdiff", "scratch", "gaussian_learned", "scratch_gaussian_learned", "regression")
# crysdiff's diffusion heads in Table 1, each with its from-scratch twin: the paper's (CARD head,
# constant prior) and the Gaussian head around CARD's learned prior
CRYSDIFF_HEADS = (("crysdiff", "scratch", "the paper's CARD head, constant prior"),
                  ("gaussian_learned", "scratch_gaussian_learned", "Gaussian head, learned prior"))


# --- loading and aggregation ------------------------------------------------------------------------


@dataclass
class Cell:
    """One (experiment, task, model, fraction) over its seeds."""

    maes: list[float] = field(default_factory=list)
    coverages: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)

    @property
    def mae(self) -> float:
        return float(np.mean(self.maes)) if self.maes else math.nan

    @property
    def spread(self) -> float:
        return float(np.std(self.maes, ddof=1)) if len(self.maes) > 1 else math.nan

    @property
    def coverage(self) -> float:
        return float(np.mean(self.coverages)) if self.coverages else math.nan


def load_results(results: Path) -> tuple[list[dict], list[dict]]:
    """(fine-tuning/evaluation results, pre-training results) under ``results/<experiment>/*.json``."""
    jobs, pretrain = [], []
    for path in sorted(results.glob("*/*.json")):
        if path.parent.name in ("ensemble", "calibration"):  # their own scripts' files: see section_ensemble, section_calibration
            continue
        payload = json.loads(path.read_text())
        (pretrain if payload.get("experiment") == "pretrain-ablation" else jobs).append(payload)
    return jobs, pretrain


# parts whose cells the report shows as columns of another part's table
SHOWN_WITH = {"table1-heads": "table1", "variants-extra": "variants", "variants-layers": "variants", "sparse-heads": "sparse",
              "table1-long-gap": "table1-long", "longpre-table1": "longpre-sparse"}


def load_calibration(results: Path) -> dict[tuple, list[dict]]:
    """``benchmarks/calibration.py``'s rows by (experiment as shown, task, model, fraction)."""
    path = results / "calibration" / "runs.json"
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    if path.is_file():
        for row in json.loads(path.read_text())["rows"]:
            key = (SHOWN_WITH.get(row["experiment"], row["experiment"]), row["task"], row["model"], float(row["label_fraction"]))
            grouped[key].append(row)
    return grouped


CARRIED = "‡"  # a calibration row carried over from a pass that recorded no commit (its run folder is gone)


def carried_over(row: dict) -> bool:
    """A row of ``calibration/runs.json`` that cannot be regenerated: scored by a pass that recorded no
    commit, and kept since, its run folder gone. Shown, marked, and left out of the headline counts."""
    return not row.get("git_commit")


def calibrated_cell(calibration: dict, key: tuple, seeds=None) -> str:
    """``raw → calibrated`` mean 95% coverage of a cell (over ``seeds`` when given), or ``''``."""
    rows = [r for r in calibration.get(key, []) if seeds is None or r["seed"] in seeds]
    if not rows:
        return ""
    return (f"{fmt(float(np.mean([r['test_coverage_raw'] for r in rows])))} → "
            f"{fmt(float(np.mean([r['test_coverage_calibrated'] for r in rows])))}"
            + (f" {CARRIED}" if any(carried_over(r) for r in rows) else ""))


def aggregate(jobs: list[dict]) -> dict[tuple, Cell]:
    cells: dict[tuple, Cell] = defaultdict(Cell)
    for r in jobs:
        experiment = SHOWN_WITH.get(r["experiment"], r["experiment"])
        if r.get("budget_steps"):  # a step budget is another job: never averaged with wall-clock runs
            experiment += f"@{r['budget_steps']}st"
        cell = cells[(experiment, r["task"], r["model"], float(r["label_fraction"]))]
        cell.maes.append(r["test"]["mae"])
        if "coverage95" in r["test"]:
            cell.coverages.append(r["test"]["coverage95"])
        cell.seeds.append(r["seed"])
        cell.results.append(r)
    return cells


def matched_seeds(cells: dict, experiment: str) -> dict[tuple, Cell]:
    """``cells`` with each (task, fraction) of ``experiment`` cut to the seeds every model there has,
    so that a model with extra seeds (e.g. the ensemble runs) is not averaged against single seeds."""
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for key in cells:
        if key[0] == experiment:
            groups[(key[1], key[3])].append(key)
    matched = dict(cells)
    for keys in groups.values():
        common = set.intersection(*(set(cells[k].seeds) for k in keys))
        for key in keys:
            cell = cells[key]
            keep = [i for i, seed in enumerate(cell.seeds) if seed in common]
            if len(keep) < len(cell.seeds):
                matched[key] = Cell(maes=[cell.maes[i] for i in keep], seeds=[cell.seeds[i] for i in keep],
                                    results=[cell.results[i] for i in keep],
                                    coverages=[r["test"]["coverage95"] for r in (cell.results[i] for i in keep)
                                               if "coverage95" in r["test"]])
    return matched


# --- budgets that mean the same in every row (issue 27) -------------------------------------------------

MIXED = "†"  # marks a comparison of runs whose budgets do not mean the same (wall clock on two machine types)


def footing(runs) -> str | None:
    """What makes these runs' budgets comparable, read from their results files: ``"N steps"`` where
    every run had the same optimiser-step budget and reached it (the same on any machine), else the
    machine type when all ran on one (a wall-clock budget then means the same for each), else ``None``."""
    runs = [r for r in runs if r]
    steps = {r.get("budget_steps") or 0 for r in runs}
    if runs and len(steps) == 1 and 0 not in steps and all(r.get("fit", {}).get("steps", 0) >= min(steps) for r in runs):
        return f"{steps.pop()} steps"
    machines = {r.get("machine", {}).get("cpu", "unknown machine") for r in runs}
    return machines.pop() if len(machines) == 1 else None


def runs_of(*cells: Cell | None, seeds=None) -> list[dict]:
    """The results of ``cells`` (those with ``seeds`` when given)."""
    return [r for c in cells if c for r in c.results if seeds is None or r["seed"] in seeds]


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


def model_label(name: str) -> str:
    return MODELS[name].label if name in MODELS else f"{name} (peer)"


def unit_of(cells: dict, task: str) -> str:
    """The task's unit: the first non-empty one among its results (older peer results have none)."""
    for (_, t, _, _), cell in cells.items():
        for result in cell.results if t == task else ():
            if result.get("unit"):
                return result["unit"]
    return ""


# --- figures ---------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_sparse(cells, tasks, models, path: Path) -> bool:
    plt = _plt()
    present = [t for t in tasks if any(k[0] == "sparse" and k[1] == t for k in cells)]
    if not present:
        return False
    fig, axes = plt.subplots(1, len(present), figsize=(4.8 * len(present), 3.8), squeeze=False)
    for ax, task in zip(axes[0], present):
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def fig_ablation(cells, tasks, variants, path: Path) -> bool:
    plt = _plt()
    present = [t for t in tasks if any(k[0] == "ablation" and k[1] == t for k in cells)]
    if not present:
        return False
    fig, axes = plt.subplots(1, len(present), figsize=(4.8 * len(present), 3.8), squeeze=False)
    for ax, task in zip(axes[0], present):
        names = [v for v in variants if ("ablation", task, v, 1.0) in cells]
        values = [cells[("ablation", task, v, 1.0)] for v in names]
        ax.bar(range(len(names)), [c.mae for c in values],
               yerr=[0 if math.isnan(c.spread) else c.spread for c in values], capsize=3,
               color=["tab:blue" if v == "crysdiff" else "tab:gray" for v in names])
        ax.set_xticks(range(len(names)), ["CrysDiff" if v == "crysdiff" else model_label(v).removeprefix("w/o ").join(["w/o ", ""])
                                          for v in names], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"test MAE ({unit_of(cells, task)})")
        ax.set_title(TASKS[task].label, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def fig_reliability(cells, tasks, path: Path) -> bool:
    plt = _plt()
    present = [t for t in tasks if ("table1", t, "crysdiff", 1.0) in cells
               and "std_bins" in cells[("table1", t, "crysdiff", 1.0)].results[0]["test"]]
    if not present:
        return False
    cols = min(4, len(present))
    rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(present):]:
        ax.axis("off")
    for ax, task in zip(axes.flat, present):
        cell = cells[("table1", task, "crysdiff", 1.0)]
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --- sections --------------------------------------------------------------------------------------


def _tasks_of(cells, experiment: str) -> list[str]:
    order = list(EXPERIMENTS[experiment].tasks) if experiment in EXPERIMENTS else []
    seen = {k[1] for k in cells if k[0] == experiment}
    return [t for t in order if t in seen] + sorted(seen - set(order))


def _models_of(cells, experiment: str, preferred) -> list[str]:
    seen = {k[2] for k in cells if k[0] == experiment}
    return [m for m in preferred if m in seen] + sorted(seen - set(preferred))


def section_setup(jobs, pretrain, cells) -> list[str]:
    out = ["## Setup", ""]
    machines = sorted({f"{r['machine']['cpu']}, {r['machine']['cores']} cores, torch {r['machine']['torch']} "
                       f"({r['machine']['torch_threads']} threads), GPU: {r['machine']['gpu']}" for r in jobs + pretrain})
    commits = sorted({r["git_commit"] for r in jobs + pretrain})
    out += [f"* **Machine**: {'; '.join(machines) or '–'}.", f"* **Git commit(s)** of the runs: {', '.join(f'`{c}`' for c in commits)}."]
    seconds = sum(r.get("seconds", {}).get("total", 0) or sum(v for k, v in r.get("seconds", {}).items() if k != "total")
                  for r in jobs + pretrain if not r.get("reused_from"))
    out.append(f"* **Results files**: {len(jobs)} evaluations and {len(pretrain)} pre-trainings; "
               f"{seconds / 60:.0f} min of measured wall clock (reused jobs counted once).")
    seeds = {e: sorted({r["seed"] for r in jobs if r["experiment"] == e}) for e in EXPERIMENTS}
    out.append("* **Seeds**: " + "; ".join(f"{e} {', '.join(map(str, s))}" for e, s in seeds.items() if s) + ".")
    out += ["", "Budgets are wall-clock caps on fine-tuning (`train.max_time_minutes`), equal for every model on a task. "
            "Splits are written once by `benchmarks/suite_splits.py` (split seed fixed; model seeds vary initialisation, "
            "data order and the label subset).", "",
            "| task | target (unit) | split | train / val / test crystals | budget (min) |", "|---|---|---|---|---|"]
    for task in TASKS:
        rows = [r for r in jobs if r["task"] == task]
        if not rows:
            continue
        r = rows[0]
        parts = r["split"]["parts"]
        budgets = sorted({x["budget_minutes"] for x in rows if x["budget_minutes"] > 0})
        unit = next((x["unit"] for x in rows if x.get("unit")), "")
        out.append(f"| {TASKS[task].label} | `{r['target']}` ({unit}) | `{r['split']['name']}` | "
                   f"{parts['train']['count']} / {parts['val']['count']} / {parts['test']['count']} | "
                   f"{', '.join(f'{b:g}' for b in budgets)} |")
    dedupe = next((r["split"]["dedupe"] for r in jobs if "dedupe" in r["split"]), None)
    if dedupe:
        out += ["", f"Second source for Table 2: `matminer/flla_2015` ({dedupe['flla_records']} materials) minus those in "
                f"mp2018 by id ({dedupe['in_mp2018_by_id']}) or by structure ({dedupe['in_mp2018_by_structure']}; "
                f"{dedupe['dedupe']}): {dedupe['novel']} materials."]
    if pretrain:
        out += ["", "Pre-trained models for the ablation (same data, model and cap as `models/pretrained_pool.ckpt`):", ""]
        for r in pretrain:
            fit = r.get("fit", {})
            out.append(f"* `{r['checkpoint']}` ({', '.join(r['overrides'])}): {fit.get('steps', '–')} steps, "
                       f"{fit.get('seconds', 0) / 60:.1f} min, validation loss {fmt(r.get('val_loss', {}).get('val/loss', math.nan))}.")
    out += ["", "Commands (each part, then the report):", "", "```bash"]
    quick = " --quick" if any(r.get("quick") for r in jobs + pretrain) else ""
    out += [f"python benchmarks/suite.py{quick} --part pretrain-ablation"]
    out += [f"python benchmarks/suite.py{quick} --part {p}{flags}" for p in EXPERIMENTS for flags in _part_flags(jobs, p)]
    out += [f"python benchmarks/report.py{quick}", "```", "", "One command line per model column, as the suite ran it:", "", "```bash"]
    shown = {}
    for r in jobs:
        shown.setdefault(r["model"], r["commands"][0])
    out += [shown[m] for m in sorted(shown)] + ["```", ""]
    return out


def _part_flags(jobs: list[dict], part: str) -> list[str]:
    """The ``--seeds`` (and, where a seed ran less than the whole part, ``--models``, ``--fractions``,
    ``--tasks``, ``--budget-steps``) the part's results files were made with: one command per group of
    seeds that ran the same jobs."""
    experiment, done = EXPERIMENTS[part], [r for r in jobs if r["experiment"] == part]
    if not done:
        return []
    full = {"--models": set(experiment.models) | set(experiment.peers), "--fractions": set(experiment.fractions),
            "--tasks": set(experiment.tasks) | ({BASE_REFINE} if part == "refine" else set())}  # refine's own base model
    ran: dict[int, dict] = defaultdict(lambda: defaultdict(set))
    for r in done:
        for flag, value in (("--models", r["model"]), ("--fractions", float(r["label_fraction"])), ("--tasks", r["task"]),
                            ("--budget-steps", r.get("budget_steps") or 0)):
            ran[r["seed"]][flag].add(value)
    groups: dict[str, list[int]] = defaultdict(list)
    for seed, sets in sorted(ran.items()):
        words = []
        for flag, values in sets.items():
            if flag == "--budget-steps":
                words += [f"--budget-steps {v}" for v in sorted(values) if v]
            elif values != full[flag] and not (flag == "--models" and values >= set(experiment.models)):
                words.append(f"{flag} " + " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in sorted(values)))
        groups[" ".join(words)].append(seed)
    return [f" --seeds {' '.join(map(str, seeds))}" + (f" {words}" if words else "") for words, seeds in groups.items()]


def section_table1(cells, calibration: dict | None = None) -> list[str]:
    out = ["## Table 1: test MAE per property", ""]
    tasks = _tasks_of(cells, "table1")
    if not tasks:
        return out + ["*No table1 results yet* (`python benchmarks/suite.py --part table1`).", ""]
    models = _models_of(cells, "table1", OWN_COLUMNS)
    heads = [(own, twin, what) for own, twin, what in CRYSDIFF_HEADS if own in models]
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
    own_heads = {own for own, _, _ in heads}
    best_of = {t: best for t, best in best_of.items() if fair[t]}
    for own, twin, what in heads:
        count = sum(best == own for best in best_of.values())
        out.append(f"* crysdiff ({what}) is the best column on {count} of {len(best_of)} tasks (issue 5 target: at least 5 of 7).")
    if len(heads) > 1:
        count = sum(best in own_heads for best in best_of.values())
        out.append(f"* One of crysdiff's diffusion heads is the best column on {count} of {len(best_of)} tasks.")
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
    for own, _, what in heads:
        head_gains = {t: pct(cells[("table1", t, own, 1.0)].mae, cells[("table1", t, "regression", 1.0)].mae)
                      for t in tasks if ("table1", t, own, 1.0) in cells and ("table1", t, "regression", 1.0) in cells
                      and footing(runs_of(cells[("table1", t, own, 1.0)], cells[("table1", t, "regression", 1.0)]))}
        if head_gains:
            better = sum(g < 0 for g in head_gains.values())
            out.append(f"* The diffusion head ({what}) beats a regression head on the same pre-trained encoder on {better} "
                       f"of {len(head_gains)} tasks (median change {signed(median(head_gains.values()))}).")
    done = [(t, r["fit"]["steps"], r["fit"].get("epochs"), r.get("train_count"))
            for t in tasks if ("table1", t, "crysdiff", 1.0) in cells
            for r in cells[("table1", t, "crysdiff", 1.0)].results[:1] if r.get("fit", {}).get("steps")]
    if done:
        out.append("* Training done within the budget by crysdiff (optimizer steps, epochs started, training crystals; "
                   "from the runs' own logs): " + "; ".join(f"{TASKS[t].label} {n} steps, {e} epochs, {c} crystals"
                                                             for t, n, e, c in done)
                   + ". The budgets compare how fast the models learn, not where they end up; the bundled models "
                     "(default head, fine-tuned for longer, in two stages; their budgets on their cards) are in "
                     "`models/README.md`.")
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
    peers = sorted({m for m in models if m not in MODELS or MODELS[m].peer})
    with_interval = [m for m in peers if any(c.coverages for k, c in cells.items() if k[0] == "table1" and k[2] == m)]
    if peers:
        out.append(f"* Peer columns reporting an interval (a 95% coverage in their results files): "
                   f"{', '.join(with_interval) or 'none'} of {', '.join(peers)}.")
    out.append(domain_overlap())
    return out + [""]


def domain_overlap(pool: Path = ROOT / "models" / "pretrained_pool.ckpt", data: Path = ROOT.parent / "shared" / "data") -> str:
    """What the pre-training pool held, read from the pool model's record and checked against the
    structure files under ``data``: the test sets' structures were seen, unlabelled, in pre-training."""
    import torch

    if not pool.is_file():
        return f"* Domain overlap: `{_rel(pool, ROOT)}` is missing, so the pre-training pool is not known here."
    sources = torch.load(pool, map_location="cpu", weights_only=True)["data"]["train"]["sources"]
    names = {s.split("shared/data/", 1)[-1] for s in sources}
    files = ([p.relative_to(data).as_posix() for p in sorted(data.rglob("*")) if p.is_file()
              and p.name.endswith((".csv.gz", ".extxyz", ".json", ".json.gz")) and p.parent.name != "structures"]
             if data.is_dir() else [])
    missing = [f for f in files if f not in names]
    checked = (f"every structure file under `../shared/data` ({len(files)}; `mp_elastic` as its folder) is among them"
               if files and not missing else f"not among them: {', '.join(missing)}" if missing else
               "`../shared/data` is not here to check against")
    return (f"* Domain overlap (read from `{_rel(pool, ROOT)}`'s record): the pre-training pool has {len(sources)} sources, "
            f"labels ignored; {checked}." + (" So the structures of every task, test sets included, were seen "
                                              "unlabelled during pre-training." if files and not missing else ""))


def _seed0(cell: Cell | None) -> dict | None:
    return next((r for r in cell.results if r["seed"] == 0), None) if cell else None


def section_long(cells) -> list[str]:
    """Table 1's rows again at the longer budget of the ``table1-long`` part, beside the same seeds at
    Table 1's own budget: does the ranking hold when every model trains longer?"""
    tasks = _tasks_of(cells, "table1-long")
    if not tasks:
        return []
    out = ["### The same rows at a longer budget", "",
           "Test MAE of seed 0 at Table 1's budget and at the longer budget of "
           "`python benchmarks/suite.py --part table1-long` and `--part table1-long-gap` (same splits, models and seed; "
           "only the wall-clock cap differs). Optimizer steps in brackets where the run logs them.", ""]
    analysis = []
    for task in tasks:
        models = [m for m in dict.fromkeys(m for part in ("table1-long", "table1-long-gap")
                                           for m in (*EXPERIMENTS[part].models, *EXPERIMENTS[part].peers))
                  if ("table1-long", task, m, 1.0) in cells]
        long_budget = cells[("table1-long", task, models[0], 1.0)].results[0]["budget_minutes"]

        short = {m: _seed0(cells.get(("table1", task, m, 1.0))) for m in models}
        long = {m: _seed0(cells.get(("table1-long", task, m, 1.0))) for m in models}
        short_budget = next((r["budget_minutes"] for r in short.values() if r), TASKS[task].budget_minutes)
        out += [f"**{TASKS[task].label}** ({unit_of(cells, task)})", "",
                f"| model | {short_budget:g} min | {long_budget:g} min | change |", "|---|---|---|---|"]

        def shown(r):
            if not r:
                return "–"
            steps = r.get("fit", {}).get("steps")
            return fmt(r["test"]["mae"], 4) + (f" ({steps} steps)" if steps else "")

        for m in models:
            change = signed(pct(long[m]["test"]["mae"], short[m]["test"]["mae"])) if short[m] and long[m] else "–"
            out.append(f"| {model_label(m)} | {shown(short[m])} | {shown(long[m])} | {change} |")
        same = footing([*short.values(), *long.values()])
        out += ["", budget_check([same], "table (every run of it)"), ""]
        for runs, budget in ((short, short_budget), (long, long_budget)):
            done = {m: r["test"]["mae"] for m, r in runs.items() if r}
            if done and same:
                order = sorted(done, key=done.get)
                analysis.append(f"* {TASKS[task].label}, {budget:g} min: ranking "
                                + " < ".join(f"{model_label(m)} {fmt(done[m], 4)}" for m in order)
                                + (f"; the last is {signed(pct(done[order[-1]], done[order[0]]))} behind the first"
                                   if len(order) > 1 else "") + ".")
        for own, twin, what in CRYSDIFF_HEADS:
            pairs = [(b, runs[own]["test"]["mae"], runs[twin]["test"]["mae"])
                     for b, runs in ((short_budget, short), (long_budget, long))
                     if runs.get(own) and runs.get(twin) and footing([runs[own], runs[twin]])]
            if pairs:
                analysis.append(f"* {TASKS[task].label}, pre-trained vs. from scratch ({what}): "
                                + "; ".join(f"{b:g} min {signed(pct(a, z))}" for b, a, z in pairs) + ".")
    return out + ["**Analysis** (computed):", "", *analysis, ""]


# the longer pre-trainings' models (by length: their checkpoints, their short names), and the columns
# they are set beside (the same head from the pool model, from scratch)
LONGPRE = tuple((model, Layout.default().pretrained(MODELS[model].init).relative_to(ROOT).as_posix(), name)
                for model, name in zip(LONGPRE_MODELS, ("longer", "longer still")))
LONGPRE_BASE = ("gaussian_learned", "scratch_gaussian_learned")


def section_longpre(cells, calibration: dict | None = None) -> list[str]:
    """The default head started from the longer pre-trainings (parts ``longpre-sparse`` and
    ``longpre-table1``), beside the same head started from the pool model and from scratch: the same
    task, labels and seed 0, from Fig. 4's runs where it has the fraction, else from Table 1's."""
    present = [m for m in LONGPRE if any(k[0] == "longpre-sparse" and k[2] == m[0] for k in cells)]
    rows = sorted({(k[1], k[3]) for k in cells if k[0] == "longpre-sparse" and k[2] in {m[0] for m in present}},
                  key=lambda k: (TABLE1_TASKS.index(k[0]) if k[0] in TABLE1_TASKS else len(TABLE1_TASKS), k))
    if not rows:
        return []
    checkpoints = " and ".join(f"`{path}` ({name})" for _, path, name in present)
    out = ["## Pre-training for longer", "",
           f"Does a longer pre-training help? {checkpoints} continue the pool model (`models/pretrained_pool.ckpt`) "
           "on the same pool, each from the one before; their budgets and validation losses are in `models/README.md`. "
           "The default head is fine-tuned from each (`python benchmarks/suite.py --part longpre-sparse`, then "
           "`--part longpre-table1`) and set beside the same head started from the pool model and from scratch: "
           "same task, labels, budget and seed (0), from Fig. 4's runs where they have the fraction, else from Table 1's.", "",
           "| task (unit) | labels | from scratch | pre-trained (pool model) | "
           + " | ".join(f"pre-trained {name}" for _, _, name in present) + " | "
           + " | ".join(f"{name} vs. pool model | {name} vs. scratch" for _, _, name in present)
           + " | coverage, " + " / ".join(name for _, _, name in present) + " (raw → calibrated) |",
           "|---|---|---|---|" + "---|" * (3 * len(present) + 1)]
    compared = []  # (task, fraction, {name: seed-0 run}, pool run, scratch run)

    def mae(run) -> float:
        return run["test"]["mae"] if run else math.nan

    def change(a, b):
        mark = "" if footing([a, b]) else f" {MIXED}"
        return signed(pct(mae(a), mae(b))) + mark if a and b else "–"
    pairs_checked = []
    for task, fraction in rows:
        source = "sparse" if (("sparse", task, LONGPRE_BASE[0], fraction) in cells) else "table1"
        pool, scratch = (_seed0(cells.get((source, task, m, fraction))) for m in LONGPRE_BASE)
        longer = {name: _seed0(cells.get(("longpre-sparse", task, model, fraction))) for model, _, name in present}
        compared.append((task, fraction, longer, pool, scratch))
        pairs_checked += [footing([run, other]) for run in longer.values() for other in (pool, scratch) if run and other]
        coverage = " / ".join(calibrated_cell(calibration or {}, ("longpre-sparse", task, m, fraction), {0}) or "–"
                              for m, _, _ in present)
        out.append(f"| {TASKS[task].label} ({unit_of(cells, task)}) | {100 * fraction:g}% | {fmt(mae(scratch))} | "
                   f"{fmt(mae(pool))} | " + " | ".join(fmt(mae(longer[name])) for _, _, name in present) + " | "
                   + " | ".join(f"{change(longer[name], pool)} | {change(longer[name], scratch)}" for _, _, name in present)
                   + f" | {coverage} |")
    out += ["", budget_check(pairs_checked, "comparisons in the change columns"), "", "**Analysis** (computed):", ""]

    def tally(pairs, what):
        pairs = [(a, b) for a, b in pairs if a and b]
        fair = [(mae(a), mae(b)) for a, b in pairs if footing([a, b])]
        left = f" ({len(pairs) - len(fair)} rows mixing machine types left out)" if len(fair) < len(pairs) else ""
        if fair:
            out.append(f"* {what}: lower test MAE in {sum(a < b for a, b in fair)} of {len(fair)} rows, median change "
                       f"{signed(median(pct(a, b) for a, b in fair))}{left}.")
        elif pairs:
            out.append(f"* {what}: no row on one machine type ({len(pairs)} rows mix machine types).")

    names = [name for _, _, name in present]
    for name in names:
        tally([(c[2][name], c[3]) for c in compared], f"Pre-trained {name} vs. the pool model")
        tally([(c[2][name], c[4]) for c in compared], f"Pre-trained {name} vs. from scratch")
    for shorter, longest in zip(names, names[1:]):
        tally([(c[2][longest], c[2][shorter]) for c in compared], f"Pre-trained {longest} vs. {shorter}")
    tally([(c[3], c[4]) for c in compared], "The pool model vs. from scratch (the same rows, for reference)")
    for name in names:
        for task in dict.fromkeys(c[0] for c in compared):
            low = [(mae(c[2][name]), mae(c[4])) for c in compared if c[0] == task and c[1] <= 0.4
                   and c[2][name] and c[4] and footing([c[2][name], c[4]])]
            if len(low) > 1:
                out.append(f"* {TASKS[task].label}: pre-trained {name} beats scratch at {sum(a < z for a, z in low)} of "
                           f"{len(low)} fractions up to 40% (issue 5 target: all).")
            elif any(c[0] == task and c[1] <= 0.4 and c[2][name] and c[4] for c in compared):
                out.append(f"* {TASKS[task].label}: pre-trained {name} against scratch up to 40%: not counted, the seed-0 "
                           f"runs ran on different machine types ({MIXED}).")
    for model, _, name in present:
        out += _sparse_over_seeds(cells, model, name)
    for model, _, name in present:
        best, counted, lines, _ = _table1_best(cells, model, all_seeds=False)
        if not counted and lines:
            out.append(f"* Against every Table 1 column (seed 0): pre-trained {name} not counted: its runs and Table 1's "
                       f"ran on different machine types ({MIXED}).")
        if counted:
            out.append(f"* Against every Table 1 column (seed 0): pre-trained {name} would be the best column on "
                       f"{len(best)} of {counted} tasks" + (f" ({', '.join(best)})" if best else "") + ".")
    for model, _, name in present:
        best, counted, lines, used = _table1_best(cells, model, all_seeds=True)
        if not counted and lines:
            out.append(f"* Against every Table 1 column, mean over seeds: pre-trained {name} not counted: its runs and "
                       f"Table 1's ran on different machine types ({MIXED}).")
        if counted:
            out += [f"* Against every Table 1 column, mean over the same seeds ({', '.join(map(str, sorted(used)))}): "
                    f"pre-trained {name} would be the best column on {len(best)} of {counted} tasks"
                    + (f" ({', '.join(best)})" if best else "") + " (issue 5 target: at least 5 of 7):", *lines]
    return out + [""]


def _mean_over(cell: Cell, seeds) -> float:
    """The mean test MAE of ``cell``'s runs with these seeds (``nan`` if it lacks one of them)."""
    if not {r["seed"] for r in cell.results} >= set(seeds):
        return math.nan
    return float(np.mean([r["test"]["mae"] for r in cell.results if r["seed"] in seeds]))


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
                rows.append((fraction, _mean_over(mine, fair), _mean_over(theirs, fair), fair))
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

        others = {k[2]: _mean_over(c, seeds) for k, c in cells.items() if k[0] == "table1" and k[1] == task and k[3] == 1.0}
        others = {m: v for m, v in others.items() if math.isfinite(v)}
        if not others:
            continue
        counted += 1
        used |= seeds
        own, rival = _mean_over(mine, seeds), min(others, key=others.get)
        if own < others[rival]:
            best.append(TASKS[task].label)
        lines.append(f"  * {TASKS[task].label}: {fmt_cell(mine)} vs. the best other "
                     f"column, {model_label(rival)}, {fmt(others[rival])} ({signed(pct(own, others[rival]))}).")
    return best, counted, lines, used


def section_step_budgets(cells) -> list[str]:
    """Runs made with a step budget (``suite.py --budget-steps N``): the same optimiser steps for every
    column, so the comparison means the same on any machine. One table per part and budget."""
    parts = sorted({k[0] for k in cells if "@" in k[0]})
    if not parts:
        return []
    out = ["## At a step budget", "",
           "Runs made with `python benchmarks/suite.py ... --budget-steps N`: every column trains the same number of "
           "optimizer steps, whatever the machine (the wall clock is only a safety cap). Test MAE (seeds); the "
           "steps each run made and its machine type are read from its results file.", ""]
    for part in parts:
        rows = sorted({(k[1], k[3]) for k in cells if k[0] == part})
        out += [f"**{part.replace('@', ', ').replace('st', ' steps')}**", "",
                "| task | labels | model | test MAE | steps made | machine |", "|---|---|---|---|---|---|"]
        for task, fraction in rows:
            for key in sorted(k for k in cells if k[0] == part and k[1] == task and k[3] == fraction):
                cell = cells[key]
                out.append(f"| {TASKS[task].label} | {100 * fraction:g}% | {model_label(key[2])} | {fmt_cell(cell)} | "
                           f"{', '.join(str(r.get('fit', {}).get('steps', '–')) for r in cell.results)} | "
                           f"{', '.join(sorted({r['machine']['cpu'] for r in cell.results}))} |")
        out.append("")
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


def section_sparse(cells, figures: Path, out_dir: Path) -> list[str]:
    out = ["## Fig. 4: sparse labels", ""]
    tasks = _tasks_of(cells, "sparse")
    if not tasks:
        return out + ["*No sparse results yet* (`python benchmarks/suite.py --part sparse`).", ""]
    models = _models_of(cells, "sparse", ("crysdiff", "scratch", "gaussian_learned", "scratch_gaussian_learned"))
    matched = matched_seeds(cells, "sparse")
    extra = sorted({seed for key, cell in cells.items() if key[0] == "sparse" for seed in cell.seeds}
                   - {seed for key, cell in matched.items() if key[0] == "sparse" for seed in cell.seeds})
    cells = matched
    if fig_sparse(cells, tasks, models, figures / "fig4_sparse.png"):
        out += [f"![test MAE against label fraction]({_rel(figures / 'fig4_sparse.png', out_dir)})", ""]
    out += ["| task | model | " + " | ".join(f"{100 * f:g}%" for f in FRACTIONS_SPARSE) + " |",
            "|---|---|" + "---|" * len(FRACTIONS_SPARSE)]
    fair = {(t, f): footing(runs_of(*(cells.get(("sparse", t, m, f)) for m in models)))
            for t in tasks for f in FRACTIONS_SPARSE if any(("sparse", t, m, f) in cells for m in models)}
    for task in tasks:
        for model in models:
            if not any(("sparse", task, model, f) in cells for f in FRACTIONS_SPARSE):
                continue  # a column not run on this task (e.g. `--tasks` left it out)
            out.append(f"| {TASKS[task].label} | {model_label(model)} | "
                       + " | ".join(fmt_cell(cells.get(("sparse", task, model, f)))
                                    + ("" if fair.get((task, f), True) else f" {MIXED}") for f in FRACTIONS_SPARSE) + " |")
    if extra:
        out += ["", f"Each cell averages the seeds that every model at that fraction has; seeds that only some models have "
                    f"({', '.join(map(str, extra))}) are left out here and used by the ensemble analysis below."]
    out += ["", budget_check(list(fair.values()), "task-and-fraction columns (every model in them)"), "",
            "**Analysis** (computed):", ""]
    heads = [(own, twin, what) for own, twin, what in CRYSDIFF_HEADS if own in models]
    peers = [m for m in models if m not in {name for pair in CRYSDIFF_HEADS for name in pair[:2]}]
    for task in tasks:
        by_model = {m: {f: cells[("sparse", task, m, f)] for f in FRACTIONS_SPARSE
                        if ("sparse", task, m, f) in cells and fair[(task, f)]} for m in models}
        for own, twin, what in heads:
            ours = by_model.get(own, {})
            pairs = [(f, ours[f].mae, cell.mae) for f, cell in by_model.get(twin, {}).items() if f in ours]
            if not pairs:
                continue
            low = [(f, a, b) for f, a, b in pairs if f <= 0.4]
            high = [(f, a, b) for f, a, b in pairs if f > 0.4]
            label = "" if own == "crysdiff" else f" ({what})"
            out.append(f"* {TASKS[task].label}{label}: pre-trained beats scratch at {sum(a < b for _, a, b in low)} of "
                       f"{len(low)} fractions up to 40% (issue 5 target: all) and at {sum(a < b for _, a, b in pairs)} of "
                       f"{len(pairs)} in all; median change {fmt(median(pct(a, b) for _, a, b in low), 2)}% up to 40%, "
                       f"{fmt(median(pct(a, b) for _, a, b in high), 2) if high else '–'}% above.")
            for peer in peers:
                versus = [(f, ours[f].mae, cell.mae) for f, cell in by_model[peer].items() if f in ours]
                if versus:
                    out.append(f"  * against {model_label(peer)}: crysdiff{label} is better at "
                               f"{sum(a < b for _, a, b in versus)} of {len(versus)} fractions (changes: "
                               f"{', '.join(f'{100 * f:g}% {signed(pct(a, b))}' for f, a, b in versus)}).")
            coverage = [(f, cell.coverage) for f, cell in ours.items()]
            if coverage:
                out.append(f"  * crysdiff{label}'s 95% interval coverage (the chain's own), by fraction: "
                           + ", ".join(f"{100 * f:g}% {fmt(c)}" for f, c in coverage) + "."
                           + (" Where it is below 0.90: the interval is the spread of p(y | structure) "
                              "as fitted to the training labels and has no term for the model's own uncertainty, so a "
                              "small label set seen for many epochs gives intervals too narrow for new crystals; the "
                              "calibrated intervals that `crysdiff predict` reports are in the calibration section."
                              if any(c < 0.90 for _, c in coverage) else ""))
            steps = [(f, r["fit"]["steps"], r["fit"].get("epochs")) for f, cell in ours.items()
                     for r in cell.results[:1] if r.get("fit", {}).get("steps")]
            if steps:
                out.append(f"  * crysdiff{label}'s optimizer steps (epochs started) within the budget, by fraction: "
                           + ", ".join(f"{100 * f:g}% {n} ({e})" for f, n, e in steps)
                           + ": at a fixed wall-clock budget a smaller label set is seen more often, not trained for longer.")
    return out + [""]


def section_ensemble(results: Path) -> list[str]:
    """The seed ensembles of ``benchmarks/ensemble.py``: one model's interval against the pooled one."""
    files = sorted((results / "ensemble").glob("*.json"))
    if not files:
        return []
    out = ["### Few labels: one model's interval against a seed ensemble", "",
           "The same sparse-label crysdiff runs, differing only in `--seed`, predicted alone and pooled as one ensemble "
           "(`crysdiff predict --model A --model B ...`: S samples from each). *Single* is the mean over the seeds of "
           "each model alone; *std between models* is the spread of the members' means, the epistemic part that a single "
           "model's interval lacks. *Ensemble* pools the members' samples with the small-ensemble correction that "
           "`crysdiff predict` applies (`pool_members`: the members' means moved apart so that the variance is "
           "`W + (1 + 1/M) B`); *as drawn* pools them unchanged.", "",
           "| task | labels | test | single: MAE | single: 95% coverage | single: mean std | ensemble: MAE | "
           "ensemble: 95% coverage | ensemble: mean std | as drawn: 95% coverage | std between models |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for path in files:
        report = json.loads(path.read_text())
        label = TASKS[report["task"]].label if report["task"] in TASKS else report["task"]
        for row in report["rows"]:
            members, ensemble = row["members"], row["ensemble"]
            as_drawn = row.get("ensemble_as_drawn")
            single = {key: float(np.mean([m[key] for m in members])) for key in ("mae", "coverage95", "mean_predicted_std")}
            out.append(f"| {label} | {100 * row['label_fraction']:g}% ({row['train_count']}) | {row['test_count']} | "
                       f"{fmt(single['mae'])} | {fmt(single['coverage95'])} | {fmt(single['mean_predicted_std'])} | "
                       f"{fmt(ensemble['mae'])} | {fmt(ensemble['coverage95'])} | {fmt(ensemble['mean_predicted_std'])} | "
                       f"{fmt(as_drawn['coverage95']) if as_drawn else '–'} | {fmt(ensemble['std_models'])} |")
            notes.append((label, row["label_fraction"], single, ensemble, as_drawn, len(members)))
        out += ["", f"Seeds {', '.join(map(str, report['seeds']))}, {report['samples_per_model']} samples per crystal "
                    f"and model; `{report['command']}` at commit `{report['git_commit'][:10]}`.", ""]
    if notes:
        out += ["**Analysis** (computed):", ""]
        for label, fraction, single, ensemble, as_drawn, count in notes:
            drawn = f" ({fmt(as_drawn['coverage95'])} pooled as drawn)" if as_drawn else ""
            out.append(f"* {label}, {100 * fraction:g}%: coverage {fmt(single['coverage95'])} alone, "
                       f"{fmt(ensemble['coverage95'])} with {count} models{drawn} "
                       f"({'inside' if 0.90 <= ensemble['coverage95'] <= 0.98 else 'outside'} [0.90, 0.98]); MAE "
                       f"{signed(pct(ensemble['mae'], single['mae']))} against the mean single model.")
        out.append("")
    return out


def section_ablation(cells, figures: Path, out_dir: Path) -> list[str]:
    out = ["## Fig. 5: ablations", ""]
    tasks = _tasks_of(cells, "ablation")
    if not tasks:
        return out + ["*No ablation results yet* (`python benchmarks/suite.py --part pretrain-ablation` then `--part ablation`).", ""]
    variants = _models_of(cells, "ablation", EXPERIMENTS["ablation"].models)
    if fig_ablation(cells, tasks, variants, figures / "fig5_ablation.png"):
        out += [f"![ablation bar chart]({_rel(figures / 'fig5_ablation.png', out_dir)})", ""]
    out += ["| variant | " + " | ".join(f"{TASKS[t].label} ({unit_of(cells, t)})" for t in tasks) + " |",
            "|---|" + "---|" * len(tasks)]
    for v in variants:
        out.append(f"| {model_label(v)} | " + " | ".join(fmt_cell(cells.get(("ablation", t, v, 1.0))) for t in tasks) + " |")
    fair = {t: footing(runs_of(*(cells.get(("ablation", t, v, 1.0)) for v in variants))) for t in tasks}
    out += ["", budget_check(list(fair.values()), "task columns (every variant in them)"), "",
            "**Analysis** (computed; change of test MAE relative to the full model):", ""]
    for v in variants:
        if v == "crysdiff":
            continue
        changes = [pct(cells[("ablation", t, v, 1.0)].mae, cells[("ablation", t, "crysdiff", 1.0)].mae)
                   for t in tasks if ("ablation", t, v, 1.0) in cells and ("ablation", t, "crysdiff", 1.0) in cells and fair[t]]
        if changes:
            out.append(f"* {model_label(v)}: worse than the full model on {sum(c > 0 for c in changes)} of {len(changes)} "
                       f"tasks (changes: {', '.join(signed(c) for c in changes)}).")
    return out + [""]


def section_refine(cells) -> list[str]:
    out = ["## Table 2 protocol: computed data refined with a second source", ""]
    tasks = _tasks_of(cells, "refine")
    tasks = [t for t in tasks if t.startswith("flla")]
    if not tasks:
        return out + ["*No refine results yet* (`python benchmarks/suite.py --part refine`).", ""]
    def columns(task):
        return [cells.get(("refine", task, m, 1.0)) for m in ("dft_only", "refined", "crysdiff")]

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


def section_variants(cells) -> list[str]:
    out = ["## Variant table (issue 4): heads, priors, pre-training", ""]
    tasks = _tasks_of(cells, "variants")
    if not tasks:
        return out + ["*No variant results yet* (`python benchmarks/suite.py --part variants`).", ""]
    task = tasks[0]
    fractions = sorted({k[3] for k in cells if k[0] == "variants"})
    variants = _models_of(cells, "variants", EXPERIMENTS["variants"].models + EXPERIMENTS["variants-extra"].models
                        + EXPERIMENTS["variants-layers"].models)
    out += [f"{TASKS[task].label}, test MAE ({unit_of(cells, task)}) and 95% coverage, at each share of the training labels.", "",
            "| variant | " + " | ".join(f"{100 * f:g}% MAE | {100 * f:g}% coverage" for f in fractions) + " |",
            "|---|" + "---|---|" * len(fractions)]
    # the table's footing: that of most of its runs; a variant run elsewhere is marked and left out of "best"
    kinds = [footing([r]) for key, cell in cells.items() if key[0] == "variants" and key[1] == task for r in cell.results]
    main = max(set(kinds), key=kinds.count)
    fair = {v: footing([*runs_of(*(cells.get(("variants", task, v, f)) for f in fractions)), {"machine": {"cpu": main}}])
            is not None for v in variants}
    best = {f: min((v for v in variants if ("variants", task, v, f) in cells and fair[v]),
                   key=lambda v: cells[("variants", task, v, f)].mae, default=None) for f in fractions}
    for v in variants:
        row = []
        for f in fractions:
            cell = cells.get(("variants", task, v, f))
            row += [fmt_cell(cell, best[f] == v), fmt(cell.coverage) if cell else "–"]
        out.append(f"| {model_label(v)}{'' if fair[v] else ' ' + MIXED} | " + " | ".join(row) + " |")
    out += ["", budget_check([main if fair[v] else None for v in variants], "variant rows (against the table's main "
                             "machine type; a marked row is left out of *best*)"), "", "**Analysis** (computed):", ""]
    for f in fractions:
        def mae(v):
            cell = cells.get(("variants", task, v, f))
            return cell.mae if cell and fair[v] else math.nan

        lines = [f"best: {model_label(best[f])}"] if best[f] else []
        for a, b, what in (("crysdiff", "scratch", "pre-trained vs. scratch (diffusion head)"),
                           ("crysdiff", "eq4", "CARD head vs. literal Eq. 4"),
                           ("crysdiff", "learned_prior", "mean prior vs. learned prior"),
                           ("gaussian", "crysdiff", "Gaussian-parameterised vs. CARD head"),
                           ("regression", "regression_scratch", "regression head: pre-trained vs. random encoder"),
                           ("crysdiff", "regression", "diffusion vs. regression head (pre-trained)"),
                           ("composition", "crysdiff", "composition skip vs. none (diffusion head)"),
                           ("regression_composition", "regression", "composition skip vs. none (regression head)"),
                           ("gaussian_learned", "crysdiff", "Gaussian head around a learned prior vs. CARD head"),
                           ("gaussian_learned", "scratch_gaussian_learned",
                            "Gaussian head around a learned prior: pre-trained vs. scratch")):
            if math.isfinite(mae(a)) and math.isfinite(mae(b)):
                lines.append(f"{what}: MAE {signed(pct(mae(a), mae(b)))}")
        out.append(f"* {100 * f:g}% of the labels: " + "; ".join(lines) + ".")
    return out + [""]


ARCHIVES = {
    "card-baseline-zero": (
        "Card head: where it starts",
        "Rows of the earlier runs whose `card` head started at `ε̂ = 0` (`head.baseline=zero`, before 2026-11-29), "
        "kept under `archive/card-baseline-zero/`, against the same job (task, model, labels, seed, budget) rerun with "
        "the current default, the head starting at the prior's noise predictor (`head.baseline=prior`, "
        "see `docs/method.md`). One seed each, so differences of a few percent are noise."),
}


def section_archives(results: Path, cells) -> list[str]:
    """Earlier measurements kept under ``results/archive/<name>/`` next to the current rows of the same jobs."""
    out = []
    for name, (title, text) in ARCHIVES.items():
        old = [json.loads(p.read_text()) for p in sorted((results / "archive" / name).glob("*.json"))]
        rows, better, footings = [], 0, []
        for r in old:
            cell = cells.get((r["experiment"], r["task"], r["model"], float(r["label_fraction"])))
            now = [x for x in (cell.results if cell else []) if x["seed"] == r["seed"]]
            if not now:
                continue
            footings.append(footing([r, now[0]]) if r["budget_minutes"] == now[0]["budget_minutes"] else None)
            new = now[0]["test"]
            better += new["mae"] < r["test"]["mae"] and footings[-1] is not None
            rows.append(f"| {TASKS[r['task']].label} | {model_label(r['model'])} | {100 * float(r['label_fraction']):g}% | "
                        f"{r['seed']} | {fmt(r['test']['mae'])} | {fmt(new['mae'])} | {signed(pct(new['mae'], r['test']['mae']))}"
                        f"{'' if footings[-1] else ' ' + MIXED} | "
                        f"{fmt(r['test'].get('coverage95', math.nan))} | {fmt(new.get('coverage95', math.nan))} |")
        if not rows:
            continue
        out += [f"## {title}", "", text, "",
                "| task | model | labels | seed | MAE before | MAE now | change | coverage before | coverage now |",
                "|---|---|---|---|---|---|---|---|---|", *rows, "",
                budget_check(footings, "rows (the same budget in minutes, before and now)"), "",
                f"Lower MAE now on {better} of {sum(f is not None for f in footings)} rows.", ""]
    return out


PROBE_FEATURES = (("layer0", "input states"), ("layer1", "after layer 1"), ("layer2", "after layer 2"),
                  ("layer3", "after layer 3"), ("pooled", "output (what the head reads)"),
                  ("all_layers", "all layers concatenated"))


# the probe features the analysis sets against a random encoder
PROBE_SUMMARIES = (("pooled", "pooled output"), ("all_layers", "all layers side by side"))


def section_probe(path: Path) -> list[str]:
    """Linear probes of frozen encoders (``benchmarks/probe.py``): where pre-training keeps or loses
    what a property needs."""
    out = ["## What the pre-trained encoder holds: linear probes (issue 4)", ""]
    if not path.is_file():
        return out + [f"*No probe results yet* (`python benchmarks/probe.py`, writes `{_rel(path, ROOT)}`).", ""]
    probe = json.loads(path.read_text())
    encoders = probe["encoders"]
    targets = list(next(iter(encoders.values()))["probes"])
    out += [f"Ridge regression (penalty chosen on a held-out fifth) on mean-pooled atom states of a *frozen* encoder at "
            f"`t = 0`, fitted on the first {probe['train_count']} `mp2018/train` crystals and scored on the "
            f"{probe['val_count']} of `mp2018/val`: validation MAE. Command: `{probe['command']}`.", ""]
    for target in targets:
        names = [n for n in encoders if target in encoders[n]["probes"]]
        features = [(key, label) for key, label in PROBE_FEATURES
                    if any(key in encoders[n]["probes"][target] for n in names)]
        out += [f"**{target}**", "", "| features | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for key, label in features:
            row = [encoders[n]["probes"][target].get(key, {}).get("mae", math.nan) for n in names]
            best = min(v for v in row if math.isfinite(v))
            out.append(f"| {label} | " + " | ".join("–" if not math.isfinite(v) else f"**{fmt(v)}**" if v == best else fmt(v)
                                                    for v in row) + " |")
        if any(len(encoders[n]["probes"][target]) < len(encoders[names[0]]["probes"][target]) for n in names):
            out += ["", "Per-layer states are read from the equivariant encoder only (`CrysDiffEncoder(..., "
                        "all_layers=True)`); the cartesian encoder has its output row alone."]
        out.append("")
    pools = [n for n in encoders if n == "pool" or n.startswith("pool_")]  # the pool model and its continuations
    if pools and "random" in encoders:
        lines = []
        for target in targets:
            rand = encoders["random"]["probes"][target]
            for name in pools:
                pool = encoders[name]["probes"][target]
                which = "pre-trained" if name == "pool" else f"pre-trained ({name})"
                for key, what in PROBE_SUMMARIES:
                    if key in pool and key in rand:
                        mine, floor = pool[key]["mae"], rand[key]["mae"]
                        lines.append(f"{target}: {what}, {which} {fmt(mine)} vs. random {fmt(floor)} "
                                     f"({signed(pct(mine, floor))})")
                depth = [pool[k]["mae"] for k in ("layer0", "layer1", "layer2", "layer3", "pooled") if k in pool]
                if len(depth) > 2:
                    trend = "rises" if all(b >= a for a, b in zip(depth, depth[1:])) else "does not rise steadily"
                    lines.append(f"{target}: through the {which} layers the probe error {trend} "
                                 f"({' → '.join(fmt(v) for v in depth)})")
            randoms = [n for n in encoders if n == "random" or n.startswith("random_")]
            if len(randoms) > 1:  # how far one random initialisation is from another
                for key, what in PROBE_SUMMARIES:
                    values = [encoders[n]["probes"][target][key]["mae"] for n in randoms
                              if key in encoders[n]["probes"][target]]
                    if len(values) > 1:
                        lines.append(f"{target}: {what} of {len(values)} random initialisations "
                                     f"{fmt(min(values))} to {fmt(max(values))} (the lines above compare with `random`)")
        out += ["**Analysis** (computed):", ""] + [f"* {line}." for line in lines] + [""]
    return out


def section_calibration(results: Path, calibration: dict) -> list[str]:
    """Raw against calibrated coverage for every crysdiff row of the suite (``benchmarks/calibration.py``)."""
    out = ["## Calibrated intervals", ""]
    path = results / "calibration" / "runs.json"
    if not calibration:
        return out + ["*No calibration results yet* (`python benchmarks/calibration.py`).", ""]
    meta = json.loads(path.read_text())
    out += ["`crysdiff finetune` fits one scale for the spread on its validation crystals (split-conformal: the "
            "smallest scale under which the 95% intervals cover 95% of them) and `crysdiff predict` applies it; "
            "see `docs/method.md`. Mean over seeds of the test coverage, the chain's own interval against the "
            "calibrated one, and the mean scale fitted.", "",
            "| part | task | model | labels | seeds | scale | coverage raw | coverage calibrated |",
            "|---|---|---|---|---|---|---|---|"]
    inside = {"all": [0, 0, 0], "regenerable": [0, 0, 0]}  # cells, raw inside, calibrated inside
    for key in sorted(calibration, key=lambda k: (k[0], k[1], k[2], k[3])):
        rows = calibration[key]
        raw = float(np.mean([r["test_coverage_raw"] for r in rows]))
        cal = float(np.mean([r["test_coverage_calibrated"] for r in rows]))
        carried = sum(carried_over(r) for r in rows)
        for which in ("all", "regenerable") if not carried else ("all",):
            inside[which] = [inside[which][0] + 1, inside[which][1] + (0.90 <= raw <= 0.98),
                             inside[which][2] + (0.90 <= cal <= 0.98)]
        out.append(f"| {key[0]} | {TASKS[key[1]].label if key[1] in TASKS else key[1]} | {model_label(key[2])} | "
                   f"{100 * key[3]:g}% | {len(rows)}{f' ({carried} {CARRIED})' if carried else ''} | "
                   f"{fmt(float(np.mean([r['interval_scale'] for r in rows])))} | {fmt(raw)} | {fmt(cal)} |")
    rows = [r for cell in calibration.values() for r in cell]
    old = sum(carried_over(r) for r in rows)
    (n, raw_in, cal_in), (m, raw_ok, cal_ok) = inside["all"], inside["regenerable"]
    out += ["", f"`{meta['command']}` at commit `{meta['git_commit'][:10]}`"
            + (f"; runs without their folder (not scored): {len(meta['missing_runs'])}" if meta.get("missing_runs") else "")
            + f". {CARRIED}: {old} of {len(rows)} rows are carried over from a pass that recorded no commit, their run "
            "folders gone, so they cannot be regenerated; the other rows record the commit that scored them.",
            "", "**Analysis** (computed):", "",
            f"* Cells with 95% coverage inside [0.90, 0.98], counting only cells whose every row records its commit: "
            f"{raw_ok} of {m} with the chain's own interval, {cal_ok} of {m} calibrated.",
            f"* With the carried-over rows too: {raw_in} of {n} raw, {cal_in} of {n} calibrated.", ""]
    return out


def section_uncertainty(cells, figures: Path, out_dir: Path) -> list[str]:
    out = ["## Uncertainty of the crysdiff rows", ""]
    tasks = _tasks_of(cells, "table1")
    if fig_reliability(cells, tasks, figures / "reliability.png"):
        out += ["Test crystals binned by predicted standard deviation (equal-count bins): a calibrated model lies on the "
                "diagonal.", "", f"![reliability]({_rel(figures / 'reliability.png', out_dir)})", ""]
    else:
        out += ["*No table1 crysdiff results with intervals yet.*", ""]
    return out


def _rel(path: Path, out_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(out_dir.resolve()))
    except ValueError:
        return str(path)


def render(results: Path, out: Path, figures: Path) -> str:
    """Write the report ``out`` (and figures into ``figures``) from the JSONs under ``results``."""
    jobs, pretrain = load_results(results)
    cells = aggregate(jobs)
    figures.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    quick = any(r.get("quick") for r in jobs + pretrain)
    lines = ["# Results: CrysDiff's experiments at our scale", "",
             f"<!-- generated by `python benchmarks/report.py` from {_rel(results, ROOT)}; do not edit by hand -->", "",
             f"*Generated by `python benchmarks/report.py` from the results files under `{_rel(results, ROOT)}/` "
             "(written by `python benchmarks/suite.py`). Edits by hand are lost at the next run.*", ""]
    if quick:
        lines += ["**Quick mode**: subsets of a few hundred crystals and budgets of seconds; these numbers check the "
                  "machinery and say nothing about the method.", ""]
    calibration = load_calibration(results)
    lines += section_setup(jobs, pretrain, cells)
    lines += section_table1(cells, calibration)
    lines += section_long(cells)
    lines += section_sparse(cells, figures, out.parent)
    lines += section_longpre(cells, calibration)
    lines += section_step_budgets(cells)
    lines += section_ensemble(results)
    lines += section_ablation(cells, figures, out.parent)
    lines += section_refine(cells)
    lines += section_variants(cells)
    if not quick:  # the probe is one full-scale run with no quick form
        lines += section_probe(results.parent / "probe" / "mp2018.json")
    lines += section_archives(results, cells)
    lines += section_calibration(results, calibration)
    lines += section_uncertainty(cells, figures, out.parent)
    text = "\n".join(lines).rstrip() + "\n"
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="report the quick-mode results (into runs/suite-quick/)")
    parser.add_argument("--results", type=Path, help="results folder (default benchmarks/results/suite)")
    parser.add_argument("--out", type=Path, help="markdown file (default docs/results.md)")
    parser.add_argument("--figures", type=Path, help="figure folder (default docs/figures)")
    args = parser.parse_args(argv)
    name = "suite-quick" if args.quick else "suite"
    results = args.results or ROOT / "benchmarks" / "results" / name
    out = args.out or (ROOT / "runs" / "suite-quick" / "results.md" if args.quick else ROOT / "docs" / "results.md")
    figures = args.figures or (out.parent / "figures" if args.quick or args.out else ROOT / "docs" / "figures")
    render(results, out, figures)
    print(f"wrote {out} and figures in {figures}")
    if not args.quick and not args.results and not args.out:
        readme = ROOT / "README.md"
        if update_readme(readme, section_table1(aggregate(load_results(results)[0]), load_calibration(results))):
            print(f"updated the headline table in {readme}")
    return 0


README_BEGIN, README_END = "<!-- results:table1 -->", "<!-- /results:table1 -->"


def update_readme(readme: Path, table1: list[str]) -> bool:
    """Replace the text between the README's Table 1 markers with the report's Table 1 (without its
    heading): the README's headline numbers come from the same results files. False if no markers."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    body = "\n".join(line for line in table1[1:]).strip()
    readme.write_text(f"{head}{README_BEGIN}\n{body}\n\nFull report, commands and figures: "
                      f"[`docs/results.md`](docs/results.md).\n{README_END}{tail}")
    return True


if __name__ == "__main__":
    sys.exit(main())
