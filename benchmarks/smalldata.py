"""The small-data benchmark (issue 24): crysdiff against what a user with a few thousand labelled
crystals would try first, Matbench-style 5-fold cross-validation, in resumable parts.

    python -m benchmarks.smalldata --list                      # parts, jobs, budgets, status, time estimate
    python -m benchmarks.smalldata --part rf-1                 # one part (each estimated at most 2 h)
    python -m benchmarks.smalldata --all                       # every part, in order
    python -m benchmarks.smalldata --quick --models rf crysdiff --tasks bulk_modulus
    python -m benchmarks.smalldata --models rf --folds 0 1 --fractions 1 --rerun   # run again
    python -m benchmarks.smalldata --report                    # docs/smalldata.md + docs/figures/

(``python benchmarks/smalldata.py ...`` works the same.) Protocol:

* Six tasks (:data:`TASKS`), each over its labelled crystals read in place from ``../shared/data``
  with crysdiff's reader; moduli are learnt as log10 GPa (the Matbench convention) and reported in
  GPa too. The crystals are written once to ``runs/smalldata[-quick]/tasks/<task>.extxyz``.
* Folds: ``sklearn.model_selection.KFold(5, shuffle=True, random_state=18012019)`` over the task's
  crystals in that order. Every column reads the same fold files
  (``runs/.../folds/<task>/lf<F>.f<K>/{train,val,test}.extxyz``).
* Label fraction F (10/25/50/100% on the two curve tasks, 100% elsewhere): the nested, seeded
  subset :func:`crysdiff.splits.label_fraction` (seed 0) of the training fold. An inner validation
  split (10% of that subset, seeded) is for early stopping and model selection only; the test fold
  is never seen before the test.
* A job is (task, column, fraction, fold); its results file ``benchmarks/results/smalldata[-quick]/
  <job-id>.json`` holds the test metrics, seconds, machine, git commit and commands. A job whose
  results file exists is skipped; ``--rerun`` moves the selected jobs' results and run folders to
  ``runs/smalldata[-quick]/superseded/<UTC time>/`` first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run as `python benchmarks/smalldata.py`
    sys.path.insert(0, str(ROOT))

from benchmarks.suite import git_commit, machine, shown, test_metrics  # noqa: E402
from benchmarks.suite_splits import ExtxyzFrames  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
KFOLD_SPLITS, KFOLD_SEED = 5, 18012019
SUBSET_SEED = 0  # label-fraction subsets and the inner validation split
INNER_VAL_FRACTION = 0.1
FRACTIONS = (0.1, 0.25, 1.0)  # 50% dropped to fit 12 h (docs/smalldata.md, "Columns and budgets")
CURVE_TASKS = ("bulk_modulus", "refractive_index")
PART_LIMIT_MINUTES = 120.0
QUICK_SIZE = 200  # crystals per task in --quick (a seeded subset)
QUICK_FRACTIONS = (0.25, 1.0)
QUICK_FOLDS = (0,)
SCHEMA = 1


@dataclass(frozen=True)
class Task:
    label: str
    sources: tuple[str, ...]  # relative to ../shared/data
    column: str  # the label as the source names it
    unit: str
    log10: bool = False  # learn log10(value); positive values only

    @property
    def target(self) -> str:
        return f"log10_{self.column}" if self.log10 else self.column


TASKS: dict[str, Task] = {
    "bulk_modulus": Task("bulk modulus K_VRH, mp_elastic", ("mp_elastic",), "K_VRH", "GPa", log10=True),
    "shear_modulus": Task("shear modulus G_VRH, mp_elastic", ("mp_elastic",), "G_VRH", "GPa", log10=True),
    "refractive_index": Task("refractive index n, matminer dielectric_constant",
                             ("matminer/dielectric_constant.extxyz",), "n", ""),
    "band_gap": Task("band gap, matminer dielectric_constant", ("matminer/dielectric_constant.extxyz",),
                     "band_gap", "eV"),
    "perov5_heat": Task("heat_ref, Perov-5 val + test", ("perov_5/val.csv.gz", "perov_5/test.csv.gz"),
                        "heat_ref", "eV/atom"),
    "formation_energy": Task("formation energy, matminer flla_2015", ("matminer/flla_2015.extxyz",),
                             "formation_energy_per_atom", "eV/atom"),
}


@dataclass(frozen=True)
class Column:
    label: str
    kind: str  # "crysdiff" (the CLI), "protocol" (benchmarks/peers protocol runner), "features" (rf/chgnet runner)
    neural: bool  # trained for a step budget under the shared wall-clock safety cap
    command: str = ""  # for peers: the interpreter and runner
    init: str = ""  # crysdiff: the pre-trained checkpoint (relative to the repository)
    venv: str = ""  # the peer's environment (made by its setup script); missing -> the column is skipped
    per_crystal_seconds: float = 0.0  # features: measured featurisation cost (once per source, see COSTS)
    family: str = ""  # features: columns of one family share a feature cache


_PEER = "benchmarks/peers"
COLUMNS: dict[str, Column] = {
    "crysdiff": Column("crysdiff, pre-trained + fine-tuned", "crysdiff", True, init="models/pretrained_pool_long2.ckpt"),
    "scratch": Column("same network from scratch", "crysdiff", True),
    "rf": Column("random forest, Magpie + density + symmetry (matminer)", "features", False,
                 f"{_PEER}/.venv-matminer/bin/python {_PEER}/rf_runner.py", venv=f"{_PEER}/.venv-matminer",
                 per_crystal_seconds=0.06, family="rf"),
    "chgnet_ridge": Column("CHGNet 0.4.2 crystal features + ridge", "features", False,
                           f"{_PEER}/.venv-chgnet/bin/python {_PEER}/chgnet_runner.py --head ridge",
                           venv=f"{_PEER}/.venv-chgnet", per_crystal_seconds=0.15, family="chgnet"),
    "chgnet_mlp": Column("CHGNet 0.4.2 crystal features + MLP", "features", False,
                         f"{_PEER}/.venv-chgnet/bin/python {_PEER}/chgnet_runner.py --head mlp",
                         venv=f"{_PEER}/.venv-chgnet", per_crystal_seconds=0.15, family="chgnet"),
    "cgcnn": Column("CGCNN-style", "protocol", True, f"{sys.executable} -m benchmarks.peers.train_cgcnn"),
    "alignn": Column("ALIGNN (2+2 layers, width 64)", "protocol", True,
                     ".venv-alignn/bin/python benchmarks/peers/alignn_runner.py", venv=".venv-alignn"),
}

# Budgets (issue 27: budgets that mean the same on every machine). Every neural column (crysdiff, the
# scratch network, CGCNN, ALIGNN) trains for the same number of optimiser steps at batch 64:
# EPOCHS passes over the fold's training crystals, at least MIN_STEPS (the small label fractions),
# with a linear warm-up over the first tenth of the steps (at most WARMUP_STEPS), a cosine decay over
# the steps, VALIDATIONS evenly spaced validations on the inner validation split plus one at the
# end, and the weights of the best validation MAE kept (early stopping by selection). CAP_MINUTES is
# only a wall-clock safety limit per fold; a fold it stops is marked (`training.stopped_by_cap`).
BATCH = 64
EPOCHS = 8
MIN_STEPS = 100
WARMUP_STEPS = 100
VALIDATIONS = 10
CAP_MINUTES = 15.0
QUICK_EPOCHS, QUICK_MIN_STEPS, QUICK_CAP_MINUTES = 2, 6, 2.0

# Measured cost on this 2-core machine, LOADED (core 1, one thread, nice 15, sharing core 1 with other
# jobs at load average 7-9; 2026-12-02, fold 0 at all the labels; see docs/smalldata.md): seconds per
# training step at batch 64 (validation once per epoch included) and seconds per job outside the
# training loop (reading, graphs or caches, final validation and calibration, test prediction,
# the runner's imports where it is a subprocess). Shear modulus and band gap share the crystals of
# bulk modulus and refractive index. An idle machine is faster; --list scales nothing.
STEP_SECONDS = {
    "crysdiff": {"bulk_modulus": 0.76, "refractive_index": 0.46, "perov5_heat": 0.21, "formation_energy": 0.57},
    "cgcnn": {"bulk_modulus": 0.58, "refractive_index": 0.22, "perov5_heat": 0.10, "formation_energy": 0.43},
    "alignn": {"bulk_modulus": 1.53, "refractive_index": 0.94, "perov5_heat": 1.01, "formation_energy": 1.26},
}
JOB_SECONDS = {  # per job outside training; features: per job, featurisation counted apart
    "crysdiff": {"bulk_modulus": 45, "refractive_index": 25, "perov5_heat": 60, "formation_energy": 40},
    "cgcnn": {"bulk_modulus": 15, "refractive_index": 5, "perov5_heat": 20, "formation_energy": 12},
    "alignn": {"bulk_modulus": 56, "refractive_index": 10, "perov5_heat": 45, "formation_energy": 36},
    "features": {"bulk_modulus": 30, "refractive_index": 25, "perov5_heat": 40, "formation_energy": 30},
}
QUICK_JOB_SECONDS = {"crysdiff": 20, "cgcnn": 8, "alignn": 25, "features": 25}
_SAME_CRYSTALS = {"shear_modulus": "bulk_modulus", "band_gap": "refractive_index"}


def _cost(table: dict, column: str, task: str) -> float:
    """The measured cost of ``column`` on ``task`` in ``table`` (the row of the column, else of its kind;
    a task without a measurement costs the row's largest)."""
    kind = COLUMNS[column].kind
    row = table["crysdiff" if kind == "crysdiff" else column if column in table else kind]
    return row.get(_SAME_CRYSTALS.get(task, task), max(row.values()))


# --- where things go -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    quick: bool
    results: Path
    runs: Path

    @classmethod
    def default(cls, quick: bool = False, root: Path = ROOT) -> "Layout":
        name = "smalldata-quick" if quick else "smalldata"
        return cls(quick, root / "benchmarks" / "results" / name, root / "runs" / name)

    def task_file(self, task: str) -> Path:
        return self.runs / "tasks" / f"{task}.extxyz"

    def fold_dir(self, task: str, fraction: float, fold: int) -> Path:
        return self.runs / "folds" / task / f"lf{fraction:g}.f{fold}"

    def result_path(self, job: "Job") -> Path:
        return self.results / f"{job.job_id}.json"

    def run_dir(self, job: "Job") -> Path:
        return self.runs / "jobs" / job.job_id


# --- task files and folds --------------------------------------------------------------------------


def _frame_text(crystal, labels: dict[str, float], identifier: str) -> str:
    from ase.data import chemical_symbols

    lattice = " ".join(f"{v:.10g}" for v in np.asarray(crystal.lattice).ravel())
    values = " ".join(f"{k}={v:.10g}" for k, v in labels.items())
    rows = [f"{chemical_symbols[int(z)]} {x:.10f} {y:.10f} {w:.10f}" for z, (x, y, w) in
            zip(crystal.atomic_numbers, crystal.cart_coords)]
    header = f'Lattice="{lattice}" Properties=species:S:1:pos:R:3 material_id="{identifier}" {values} pbc="T T T"'
    return "\n".join([str(len(rows)), header, *rows]) + "\n"


def build_task_file(layout: Layout, name: str, data: Path = DATA) -> Path:
    """Write ``<task>.extxyz`` (the task's labelled crystals in source order, ids made unique) and
    ``<task>.json`` (counts, sources) once; later calls return the existing file."""
    from crysdiff.cache import load_dataset

    path = layout.task_file(name)
    if path.is_file():
        return path
    task = TASKS[name]
    sources = [str(data / s) for s in task.sources]
    cache = load_dataset(sources, progress=False)
    if task.column not in cache.label_names:
        raise ValueError(f"{', '.join(sources)}: no label {task.column!r} (labels: {', '.join(cache.label_names)})")
    values = np.asarray(cache.labels[:, cache.label_names.index(task.column)], dtype=np.float64)
    keep = np.isfinite(values) & ((values > 0) if task.log10 else True)
    positions = np.flatnonzero(keep)
    if layout.quick and positions.size > QUICK_SIZE:
        positions = np.sort(np.random.default_rng(SUBSET_SEED).permutation(positions)[:QUICK_SIZE])
    frames, seen, ids = [], {}, []
    for i in positions:
        crystal = cache.crystal(int(i))
        key = crystal.id or str(i)
        seen[key] = seen.get(key, 0) + 1
        identifier = key if seen[key] == 1 else f"{key}#{seen[key]}"
        ids.append(identifier)
        labels = {task.column: float(values[i])} | ({task.target: math.log10(values[i])} if task.log10 else {})
        frames.append(_frame_text(crystal, labels, identifier))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(frames))
    tmp.replace(path)
    info = {"task": name, "sources": list(task.sources), "records": len(cache), "crystals": len(frames),
            "dropped_unlabelled": int((~np.isfinite(values)).sum()),
            "dropped_non_positive": int((np.isfinite(values) & ~keep).sum()), "quick": layout.quick,
            "ids": ids, "values": [float(values[i]) for i in positions]}
    path.with_suffix(".json").write_text(json.dumps(info, indent=1))
    return path


def kfold_tests(n: int) -> list[np.ndarray]:
    """The test positions of each fold: ``KFold(5, shuffle=True, random_state=18012019)``."""
    from sklearn.model_selection import KFold

    splitter = KFold(KFOLD_SPLITS, shuffle=True, random_state=KFOLD_SEED)
    return [np.sort(test) for _, test in splitter.split(np.arange(n))]


def fold_positions(n: int, fold: int, fraction: float) -> dict[str, np.ndarray]:
    """``train``, ``val`` (inner, from the training fold's label-fraction subset) and ``test``
    positions of one fold among ``n`` crystals."""
    from crysdiff.splits import label_fraction

    test = kfold_tests(n)[fold]
    labelled = label_fraction(np.setdiff1d(np.arange(n), test), fraction, seed=SUBSET_SEED)
    val = label_fraction(labelled, INNER_VAL_FRACTION, seed=SUBSET_SEED)
    return {"train": np.setdiff1d(labelled, val), "val": val, "test": test}


def build_fold(layout: Layout, task: str, fraction: float, fold: int) -> Path:
    """Write the fold's ``train/val/test.extxyz`` and ``split.json`` (ids of each part) once."""
    folder = layout.fold_dir(task, fraction, fold)
    if (folder / "split.json").is_file():
        return folder
    path = build_task_file(layout, task)
    frames, info = ExtxyzFrames(path), json.loads(path.with_suffix(".json").read_text())
    ids, values = info["ids"], np.asarray(info["values"])
    if TASKS[task].log10:
        values = np.log10(values)
    parts = fold_positions(len(ids), fold, fraction)
    folder.mkdir(parents=True, exist_ok=True)
    for part, positions in parts.items():
        frames.write(positions, folder / f"{part}.extxyz")
    record = {"task": task, "fold": fold, "label_fraction": fraction, "kfold": [KFOLD_SPLITS, True, KFOLD_SEED],
              "subset_seed": SUBSET_SEED, "inner_val_fraction": INNER_VAL_FRACTION,
              "target": TASKS[task].target,
              "parts": {p: {"count": int(v.size), "ids": [ids[int(k)] for k in v], "y": values[v].tolist()}
                        for p, v in parts.items()}}
    (folder / "split.json").write_text(json.dumps(record))
    return folder


# --- jobs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    task: str
    column: str
    label_fraction: float
    fold: int
    budget_minutes: float  # the neural columns' wall-clock safety cap; 0 for the feature columns
    steps: int = 0  # the neural columns' step budget; 0 for the feature columns
    train_count: int = 0  # crystals in the fold's training part (the inner validation split excluded)

    @property
    def job_id(self) -> str:
        return f"{self.task}.{self.column}.lf{self.label_fraction:g}.f{self.fold}"

    @property
    def validate_every(self) -> int:
        return max(1, math.ceil(self.steps / VALIDATIONS))

    @property
    def warmup(self) -> int:
        return min(WARMUP_STEPS, max(1, math.ceil(0.1 * self.steps)))


def step_budget(train_count: int, quick: bool = False, epochs: int | None = None) -> int:
    """Optimiser steps of a neural fold: ``epochs`` passes over ``train_count`` crystals at batch 64,
    at least the minimum (``EPOCHS`` / ``MIN_STEPS``, or their quick values)."""
    epochs = epochs or (QUICK_EPOCHS if quick else EPOCHS)
    return max(QUICK_MIN_STEPS if quick else MIN_STEPS, epochs * math.ceil(train_count / BATCH))


def make_jobs(*, quick: bool = False, tasks=None, columns=None, folds=None, fractions=None,
              budget_minutes: float | None = None, epochs: int | None = None) -> list[Job]:
    """Every selected job, grouped by column then task (a column's jobs share its environment)."""
    jobs = []
    cap = budget_minutes or (QUICK_CAP_MINUTES if quick else CAP_MINUTES)
    for column in columns or COLUMNS:
        for task in tasks or TASKS:
            task_fractions = (QUICK_FRACTIONS if quick else FRACTIONS) if task in CURVE_TASKS else (1.0,)
            for fraction in task_fractions:
                if fractions and not any(math.isclose(fraction, f) for f in fractions):
                    continue
                for fold in folds if folds is not None else (QUICK_FOLDS if quick else range(KFOLD_SPLITS)):
                    count = len(fold_positions(task_size(task, quick), int(fold), fraction)["train"])
                    neural = COLUMNS[column].neural
                    jobs.append(Job(task, column, fraction, int(fold), cap if neural else 0.0,
                                    step_budget(count, quick, epochs) if neural else 0, count))
    return jobs


def task_size(task: str, quick: bool) -> int:
    """Labelled crystals per task, as :func:`build_task_file` counted them on ../shared/data."""
    sizes = {"bulk_modulus": 2988, "shear_modulus": 2988, "refractive_index": 1012, "band_gap": 1012,
             "perov5_heat": 7572, "formation_energy": 3770}
    size = sizes.get(task, QUICK_SIZE)  # a task not listed here: a guess
    return min(QUICK_SIZE, size) if quick else size


def feature_source(task: str) -> str:
    """The name of the task's crystals (its sources): feature columns featurise each source once."""
    return "+".join(TASKS[task].sources).replace("/", "_")


def estimate_minutes(job: Job, quick: bool = False) -> float:
    """Estimated minutes of a job on this machine, loaded (:data:`STEP_SECONDS`, :data:`JOB_SECONDS`)."""
    column = COLUMNS[job.column]
    if quick:
        overhead = QUICK_JOB_SECONDS[column.kind if column.kind != "protocol" else job.column]
    else:
        overhead = _cost(JOB_SECONDS, job.column, job.task)
    if column.neural:
        train = job.steps * _cost(STEP_SECONDS, job.column, job.task)
        return min(60 * job.budget_minutes, train) / 60 + overhead / 60
    # featurisation once per source (the first job of the source: fold 0 at 100% of its first task)
    first = job.fold == min(QUICK_FOLDS if quick else range(KFOLD_SPLITS)) and job.label_fraction >= 1 and \
        next(t for t in TASKS if feature_source(t) == feature_source(job.task)) == job.task and \
        next(c for c in COLUMNS if COLUMNS[c].family == column.family) == job.column
    return (overhead + (column.per_crystal_seconds * task_size(job.task, quick) if first else 0.0)) / 60


def parts(jobs: list[Job], quick: bool = False) -> dict[str, list[Job]]:
    """Jobs cut into named parts (``<column>-<k>``), each estimated within PART_LIMIT_MINUTES."""
    out: dict[str, list[Job]] = {}
    for column in dict.fromkeys(j.column for j in jobs):
        k, total = 1, 0.0
        for job in (j for j in jobs if j.column == column):
            minutes = estimate_minutes(job, quick)
            if total and total + minutes > PART_LIMIT_MINUTES:
                k, total = k + 1, 0.0
            out.setdefault(f"{column}-{k}", []).append(job)
            total += minutes
    return out


def status(layout: Layout, job: Job) -> str:
    if layout.result_path(job).is_file():
        return "done"
    venv = COLUMNS[job.column].venv
    if venv and not (ROOT / venv / "bin" / "python").is_file():
        return f"blocked: {venv} missing (run its setup script in benchmarks/peers/)"
    if (layout.run_dir(job) / "checkpoints" / "last.ckpt").is_file():
        return "resumable"
    return "pending"


def supersede(layout: Layout, jobs: list[Job], stamp: str | None = None) -> int:
    """Move the jobs' results files and run folders under ``runs/.../superseded/<stamp>/``."""
    dest = layout.runs / "superseded" / (stamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    moved = 0
    for job in jobs:
        for source, target in ((layout.result_path(job), dest / "results" / f"{job.job_id}.json"),
                               (layout.run_dir(job), dest / "jobs" / job.job_id)):
            if source.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(source), str(target))
                moved += 1
    return moved


# --- running ---------------------------------------------------------------------------------------


def job_commands(layout: Layout, job: Job, resume: bool = False) -> list[list[str]]:
    """The command lines of one job (the last writes ``RUN/test_predictions.csv`` with ``id, mean[,
    std, p2.5, p97.5]``). crysdiff's and CGCNN's training run in-process (:func:`_run`, the same
    ``main`` as the command line, without paying the imports per job); crysdiff's prediction is made
    in-process (:func:`crysdiff.load`) and recorded as the ``crysdiff predict`` line that does the
    same. ALIGNN's split is exported in-process (``benchmarks.peers.export_split``) and its runner
    reads it (``--exported``)."""
    task, column = TASKS[job.task], COLUMNS[job.column]
    fold = layout.fold_dir(job.task, job.label_fraction, job.fold)
    run = layout.run_dir(job)
    parts_ = {p: str(fold / f"{p}.extxyz") for p in ("train", "val", "test")}
    steps = [f"train.max_steps={job.steps}", f"train.warmup_steps={job.warmup}",
             f"train.val_every_steps={job.validate_every}"] if column.neural else []
    if column.kind == "crysdiff":
        command = [sys.executable, "-m", "crysdiff", "finetune"]
        if column.init:
            command += ["--init", str(ROOT / column.init)]
        command += ["--data", parts_["train"], "--val", parts_["val"], "--target", task.target, "--seed", str(job.fold),
                    "--out", str(run), "--no-progress", *(["--resume"] if resume else []),
                    "train.max_epochs=0", *steps, f"train.max_time_minutes={job.budget_minutes:g}",
                    "train.checkpoint_every_steps=100"]
        predict = [sys.executable, "-m", "crysdiff", "predict", "--model", str(run / "model.ckpt"), parts_["test"],
                   "--samples", "100", "--seed", str(job.fold), "--out", str(run / "test_predictions.csv")]
        return [command, predict]
    common = ["--train", parts_["train"], "--val", parts_["val"], "--test", parts_["test"], "--target", task.target,
              "--seed", str(job.fold), "--out", str(run)]
    if column.kind == "protocol":
        runner = [*shlex.split(column.command), *common, "--minutes", f"{job.budget_minutes:g}", "--threads", "1"]
        if job.column == "alignn":
            export = [sys.executable, "-m", "benchmarks.peers.export_split", *common[:8], "--out", str(run / "data"),
                      "--seed", str(job.fold)]
            return [export, [*runner, "--exported", str(run / "data"), *steps[:2]]]
        return [[*runner, *steps]]
    cache = layout.runs / "features" / column.family / f"{feature_source(job.task)}.json"
    return [[*shlex.split(column.command), *common, "--features", str(cache), "--threads", "1"]]


IN_PROCESS = {"crysdiff": "crysdiff.cli", "benchmarks.peers.train_cgcnn": "benchmarks.peers.train_cgcnn",
              "benchmarks.peers.export_split": "benchmarks.peers.export_split"}


@contextlib.contextmanager
def _output_to(log: Path):
    """Send this process's stdout and stderr (file descriptors 1 and 2) to ``log`` meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log, "a") as handle:
            os.dup2(handle.fileno(), 1)
            os.dup2(handle.fileno(), 2)
            try:  # and Python's own streams, wherever they point (pytest replaces them)
                with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                    yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


def _run(command: list[str], log: Path) -> float:
    """Run one command line (``python -m M`` of :data:`IN_PROCESS` as ``M.main(argv)`` in this process,
    anything else as a subprocess), its output appended to ``log``; raises if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "a") as handle:
        handle.write(f"$ {shown(command)}\n")
    if command[:2] == [sys.executable, "-m"] and command[2] in IN_PROCESS:
        import gc
        import importlib

        main_ = importlib.import_module(IN_PROCESS[command[2]]).main
        code: object = 0
        with _output_to(log):
            try:
                code = main_(command[3:])
            except SystemExit as stop:
                code = stop.code
            except Exception:  # noqa: BLE001 - reported below with the log's tail, like a failed subprocess
                traceback.print_exc()
                code = 1
        gc.collect()
        returncode = code if isinstance(code, int) else (0 if code is None else 1)
    else:
        with open(log, "a") as handle:
            returncode = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT).returncode
    if returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-12:])
        raise RuntimeError(f"{shown(command)} exited with {returncode}; end of {log}:\n{tail}")
    return time.perf_counter() - started


def scores(frame, labels: dict[str, float], task: Task) -> dict:
    """Test metrics in the trained units, plus MAE in the task's unit for log10 targets."""
    out = test_metrics(frame, labels)
    if task.log10:
        frame = frame[frame["id"].astype(str).isin(labels)]
        y = np.array([labels[str(i)] for i in frame["id"]])
        out["mae_log10"] = out["mae"]
        out["mae_unit"] = float(np.mean(np.abs(10 ** frame["mean"].to_numpy(float) - 10 ** y)))
    return out


def _crysdiff_training(checkpoint: Path) -> dict:
    """Steps, epochs and seconds of the fine-tuning that wrote ``checkpoint``."""
    from crysdiff.checkpoint import load_checkpoint

    return dict(load_checkpoint(checkpoint).get("training", {}))


def run_job(layout: Layout, job: Job, invocation: str = "") -> str:
    path = layout.result_path(job)
    if path.is_file():
        return "skipped (results exist)"
    task, column = TASKS[job.task], COLUMNS[job.column]
    fold = build_fold(layout, job.task, job.label_fraction, job.fold)
    run = layout.run_dir(job)
    done = (run / "model.ckpt").is_file() and (run / "val_metrics.json").is_file()
    commands = job_commands(layout, job, resume=not done and (run / "checkpoints" / "last.ckpt").is_file())
    seconds = {}
    if column.kind == "crysdiff":
        if not done:
            seconds["finetune"] = _run(commands[0], run / "job.log")
        import crysdiff

        started = time.perf_counter()
        frame = crysdiff.load(run / "model.ckpt", device="cpu").predict([commands[1][6]], samples=100, seed=job.fold)
        seconds["predict"] = time.perf_counter() - started
        frame.to_csv(run / "test_predictions.csv", index=False)
        training = _crysdiff_training(run / "model.ckpt")
    else:
        import pandas as pd

        seconds["peer"] = sum(_run(command, run / "job.log") for command in commands)
        frame = pd.read_csv(run / "test_predictions.csv", dtype={"id": str})
        training = {}
    split = json.loads((fold / "split.json").read_text())
    metrics = scores(frame, dict(zip(split["parts"]["test"]["ids"], split["parts"]["test"]["y"])), task)
    peer = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    if column.neural:
        made = training.get("steps", peer.get("settings", {}).get("steps"))
        training = {"planned_steps": job.steps, "steps": made, "cap_minutes": job.budget_minutes,
                    "stopped_by_cap": made is not None and made < job.steps,
                    "epochs": training.get("epochs", peer.get("settings", {}).get("epochs",
                                                                                 peer.get("settings", {}).get("epochs_completed"))),
                    "seconds": training.get("seconds", peer.get("seconds", {}).get("train"))}
    payload = {"schema": SCHEMA, **asdict(job), "job_id": job.job_id, "quick": layout.quick, "target": task.target,
               "unit": "log10 " + task.unit if task.log10 else task.unit, "task_unit": task.unit,
               "task_label": task.label, "column_label": column.label,
               "counts": {p: v["count"] for p, v in split["parts"].items()},
               "protocol": {k: split[k] for k in ("kfold", "subset_seed", "inner_val_fraction")},
               "test": metrics, "training": training, "seconds": {**seconds, "total": sum(seconds.values())},
               "peer_seconds": peer.get("seconds", {}), "settings": peer.get("settings", {}),
               "commands": [shown(c) for c in commands], "git_commit": git_commit(), "machine": machine(),
               "invocation": invocation,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)
    extra = f", MAE {metrics['mae_unit']:.4g} {task.unit}" if task.log10 else ""
    coverage = f", coverage {metrics['coverage95']:.3f}" if "coverage95" in metrics else ""
    unit = f" {payload['unit']}" if payload["unit"] else ""
    return f"test MAE {metrics['mae']:.4g}{unit}{extra}{coverage} ({metrics['count']} crystals)"


# --- command line ----------------------------------------------------------------------------------


def _print_list(layout: Layout, table: dict[str, list[Job]], quick: bool) -> None:
    total = 0.0
    for name, jobs in table.items():
        minutes = sum(estimate_minutes(j, quick) for j in jobs)
        total += minutes
        states = [status(layout, j) for j in jobs]
        done = sum(s == "done" for s in states)
        print(f"{name}: {len(jobs)} jobs, ~{minutes:.0f} min, {done} done")
        for job, state in zip(jobs, states):
            budget_ = f"{job.steps} steps, cap {job.budget_minutes:g} min" if job.steps else "no cap"
            print(f"  {job.job_id:45s} {budget_:24s} ~{estimate_minutes(job, quick):5.1f} min  {state}")
    epochs, least = (QUICK_EPOCHS, QUICK_MIN_STEPS) if quick else (EPOCHS, MIN_STEPS)
    print(f"total: {sum(map(len, table.values()))} jobs in {len(table)} parts, estimated {total:.0f} min "
          f"({total / 60:.1f} h) on this 2-core CPU, loaded (measured costs: STEP_SECONDS, JOB_SECONDS); "
          f"neural budget {epochs} epochs at batch {BATCH}, at least {least} steps, safety cap "
          f"{QUICK_CAP_MINUTES if quick else CAP_MINUTES:g} min per fold")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="parts, jobs, budgets, status and the time estimate")
    parser.add_argument("--part", nargs="+", default=None, help="run these parts (names from --list)")
    parser.add_argument("--all", action="store_true", help="run every selected job")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SIZE} crystals per task, fold 0, tiny budgets")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=None)
    parser.add_argument("--models", nargs="+", choices=list(COLUMNS), default=None)
    parser.add_argument("--folds", nargs="+", type=int, choices=range(KFOLD_SPLITS), default=None)
    parser.add_argument("--fractions", nargs="+", type=float, default=None)
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="neural columns' wall-clock safety cap per fold (default: CAP_MINUTES)")
    parser.add_argument("--epochs", type=int, default=None, help="neural columns' step budget in epochs (default: EPOCHS)")
    parser.add_argument("--rerun", action="store_true", help="move the selected jobs' results aside and run again")
    parser.add_argument("--report", action="store_true", help="write docs/smalldata.md and its figure")
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    layout = Layout.default(args.quick)
    if args.report:
        from benchmarks.smalldata_report import write_report

        for line in write_report(layout):
            print(line)
        return 0
    jobs = make_jobs(quick=args.quick, tasks=args.tasks, columns=args.models, folds=args.folds,
                     fractions=args.fractions, budget_minutes=args.budget_minutes, epochs=args.epochs)
    table = parts(jobs, args.quick)
    if args.part:
        unknown = [p for p in args.part if p not in table]
        if unknown:
            parser.error(f"unknown part {unknown[0]!r}; parts: {', '.join(table)}")
        jobs = [j for p in args.part for j in table[p]]
    if args.list or not (args.part or args.all or args.quick or args.models or args.tasks):
        _print_list(layout, table, args.quick)
        return 0
    if args.rerun:
        print(f"moved {supersede(layout, jobs)} old results/run folders aside")
    failed = []
    for k, job in enumerate(jobs, 1):
        state = status(layout, job)
        if state.startswith("blocked"):
            print(f"[{k}/{len(jobs)}] {job.job_id}: {state}")
            continue
        try:
            outcome = run_job(layout, job, "python -m benchmarks.smalldata " + shlex.join(raw))
            print(f"[{k}/{len(jobs)}] {job.job_id}: {outcome}", flush=True)
        except Exception as error:  # one failed job never stops the others
            failed.append(job.job_id)
            print(f"[{k}/{len(jobs)}] {job.job_id}: FAILED: {error}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
