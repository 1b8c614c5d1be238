"""Loading and aggregating the suite's results files: one :class:`Cell` per (experiment as shown,
task, model, label fraction) over its seeds, the calibration rows, and the *footing* of a
comparison (what makes its budgets mean the same: one step budget, or one machine type).
Runs of options measured and removed (:mod:`.dropped`) are kept apart from every table."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..suite_jobs import EXPERIMENTS, SHOWN_WITH
from .dropped import dropped_models, dropped_option

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


# the commit that made canonical cells (Niggli-reduced primitive cells, issue 20) the default of new
# fine-tunings; crysdiff runs of earlier commits saw the cells as the data files give them
CANONICAL_CELLS_COMMIT = "e373dd2"
CANONICAL_CELLS_DATE = "2026-12-01T22:41"
_ROOT = Path(__file__).resolve().parents[2]


def _contains(commit: str, ancestor: str) -> bool | None:
    """Whether git ``commit`` has ``ancestor`` in its history (``None``: not a commit of this repository)."""
    import subprocess

    done = subprocess.run(["git", "merge-base", "--is-ancestor", ancestor, commit], cwd=_ROOT, capture_output=True)
    return {0: True, 1: False}.get(done.returncode)


_CELLS: dict[str, str] = {}


def cells_seen(result: dict) -> str:
    """``"canonical"`` or ``"as given"``: the cells a results file's crysdiff run fine-tuned and was
    tested on, from its commit (or, for a commit this checkout lacks, its date). Peer columns
    (:data:`benchmarks.suite_jobs.PEERS`) read the files' own cells either way."""
    from ..suite_jobs import PEERS

    if result.get("model") in PEERS:
        return "as given"
    commit = result.get("git_commit") or ""
    if commit not in _CELLS:
        contained = _contains(commit, CANONICAL_CELLS_COMMIT) if commit and commit != "unknown" else None
        if contained is None:
            contained = result.get("created", "") >= CANONICAL_CELLS_DATE
        _CELLS[commit] = "canonical" if contained else "as given"
    return _CELLS[commit]


def read_results(results: Path) -> list[dict]:
    """Every results file under ``results/<experiment>/*.json`` (the ensemble's and calibration's own
    files left out: see :mod:`.fig4` and :mod:`.calibration`)."""
    return [json.loads(path.read_text()) for path in sorted(results.glob("*/*.json"))
            if path.parent.name not in ("ensemble", "calibration")]


def load_results(results: Path) -> tuple[list[dict], list[dict]]:
    """(fine-tuning/evaluation results, pre-training results) of the options still in the code."""
    jobs, pretrain = [], []
    for payload in read_results(results):
        if dropped_option(payload) is None:
            (pretrain if payload.get("experiment") == "pretrain-ablation" else jobs).append(payload)
    return jobs, pretrain


def load_calibration(results: Path) -> dict[tuple, list[dict]]:
    """``benchmarks/calibration.py``'s rows by (experiment as shown, task, model, fraction)."""
    path = results / "calibration" / "runs.json"
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    if path.is_file():
        rows = json.loads(path.read_text())["rows"]
        gone = dropped_models(read_results(results))
        for row in (r for r in rows if r["model"] not in gone):
            key = (SHOWN_WITH.get(row["experiment"], row["experiment"]), row["task"], row["model"], float(row["label_fraction"]))
            grouped[key].append(row)
    return grouped


def carried_over(row: dict) -> bool:
    """A row of ``calibration/runs.json`` that cannot be regenerated: scored by a pass that recorded no
    commit, and kept since, its run folder gone. Shown, marked, and left out of the headline counts."""
    return not row.get("git_commit")


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


def tasks_of(cells, experiment: str) -> list[str]:
    order = list(EXPERIMENTS[experiment].tasks) if experiment in EXPERIMENTS else []
    seen = {k[1] for k in cells if k[0] == experiment}
    return [t for t in order if t in seen] + sorted(seen - set(order))


def models_of(cells, experiment: str, preferred) -> list[str]:
    seen = {k[2] for k in cells if k[0] == experiment}
    return [m for m in preferred if m in seen] + sorted(seen - set(preferred))


def seed0(cell: Cell | None) -> dict | None:
    return next((r for r in cell.results if r["seed"] == 0), None) if cell else None


def mean_over(cell: Cell, seeds) -> float:
    """The mean test MAE of ``cell``'s runs with these seeds (``nan`` if it lacks one of them)."""
    if not {r["seed"] for r in cell.results} >= set(seeds):
        return math.nan
    return float(np.mean([r["test"]["mae"] for r in cell.results if r["seed"] in seeds]))


