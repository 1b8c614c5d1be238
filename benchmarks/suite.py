"""The paper-reproduction suite (issue 5; the variant table of issue 4), unattended, in parts.

    python benchmarks/suite.py --list                         # every job, its budget, and what is done
    python benchmarks/suite.py --part pretrain-ablation       # once: the ablation's pre-trained models
    python benchmarks/suite.py --part table1 [--seeds 0 1] [--budget-minutes M | --budget-steps N]
    python benchmarks/suite.py --all                          # every part, in order
    python benchmarks/suite.py --quick --part variants        # reduced form: small subsets, tiny budgets
    python benchmarks/suite.py --part sparse --dry-run        # print the command lines only
    python benchmarks/suite.py --part table1 --models crysdiff --rerun   # after a code change: run again
    python benchmarks/suite.py --part table1 --seeds 1 --tasks perov5_heat   # one task's row only
    python benchmarks/report.py                               # docs/results.md and docs/figures/

A *job* is (experiment, task, model, label fraction, seed, budget). Every crysdiff job runs the
real CLI, ``crysdiff finetune ... --out RUN`` with ``train.max_time_minutes`` as its wall-clock
budget and the task's split files passed explicitly (``suite_splits.py`` writes them once), then
predicts the task's test file with the fine-tuned model (``crysdiff.load(...).predict``, the code
behind ``crysdiff predict``) and writes ``benchmarks/results/suite/<experiment>/<job-id>.json``:
settings, commands, git commit, machine, seconds and test metrics (MAE, RMSE, R², 95% interval
coverage, reliability bins). A job whose results file exists is skipped; a job whose run folder
holds a checkpoint continues with ``--resume``; a job identical to one of another experiment (same
task, model, fraction, seed and budget) reuses its results. Pre-trained checkpoints for the
ablation are made once (``--part pretrain-ablation``) into ``models/ablation/`` and never redone.
Because reused results are copies, a job made stale by a code change must be invalidated in every
part: ``--rerun`` moves all of a selected job's results files, its run folder (and an ablation
checkpoint) under ``runs/suite[-quick]/superseded/<time>/`` and runs it again; jobs that started
from its model (the refine part) are not invalidated with it: select them too.

Peer models (ALIGNN, CGCNN) plug in through :data:`suite_jobs.PEERS` (see :class:`PeerJob`); the report shows
their columns when their results exist.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

# suite_jobs.PEERS is read through the module, so tests can replace it
if __package__:  # imported as benchmarks.suite (tests, other benchmarks)
    from . import suite_jobs, suite_splits
    from .suite_jobs import (  # the job table
        MODELS, PART_LIMIT_MINUTES, PARTS, ROOT, TASKS, CommandPeer, Job, Layout, Model, PeerJob, PretrainJob,
        estimate_minutes, find_reusable, make_jobs, missing_model, removed_option, required_models, status)
else:  # run as `python benchmarks/suite.py`: this folder is sys.path[0]
    import suite_jobs
    import suite_splits
    from suite_jobs import (  # the job table
        MODELS, PART_LIMIT_MINUTES, PARTS, ROOT, TASKS, CommandPeer, Job, Layout, Model, PeerJob, PretrainJob,
        estimate_minutes, find_reusable, make_jobs, missing_model, removed_option, required_models, status)

SCHEMA = 1


# --- commands --------------------------------------------------------------------------------------


def _crysdiff(*args) -> list[str]:
    return [sys.executable, "-m", "crysdiff", *map(str, args)]


def shown(command: list[str]) -> str:
    """The command line as a user types it (``crysdiff ...``, paths relative to the repository)."""
    words = ["crysdiff", *command[3:]] if command[:3] == [sys.executable, "-m", "crysdiff"] else command
    return shlex.join(_relative(w) for w in words)


def _relative(word: str) -> str:
    for prefix, short in ((str(ROOT) + "/", ""), (str(ROOT.parent / "shared") + "/", "../shared/")):
        word = word.replace(prefix, short)
    return word


def finetune_command(layout: Layout, job: Job, split, resume: bool = False) -> list[str]:
    task, model = TASKS[job.task], MODELS[job.model]
    command = _crysdiff("finetune")
    if model.init == "job":
        command += ["--init", layout.runs / "jobs" / job.init_job / "model.ckpt"]
    elif model.init:
        command += ["--init", layout.pretrained(model.init)]
    command += ["--data", split.train, "--val", split.val, "--target", task.target, "--label-fraction", f"{job.label_fraction:g}",
                "--seed", job.seed, "--out", layout.run_dir(job), "--no-progress"]
    if resume:
        command.append("--resume")
    if job.budget_steps:  # machine-independent budget; the wall clock is only a safety cap
        command.append(f"train.max_steps={job.budget_steps}")
    command += [f"train.max_time_minutes={job.budget_minutes:g}", "train.max_epochs=1000"]
    if layout.quick:  # a few dozen steps in all: a short warm-up so they do train
        command += ["train.val_every_steps=10", "train.warmup_steps=5", "train.log_every_steps=5"]
    else:
        command += [f"train.val_every_steps={task.val_every_steps}", "train.log_every_steps=20"]
    command += ["train.checkpoint_every_steps=100", *model.overrides]
    if model.extra_init:
        command.append(f"extra_init={layout.pretrained(model.extra_init)}")
    return [str(c) for c in command]


def pretrain_command(layout: Layout, job: PretrainJob, data: list[Path], resume: bool = False) -> list[str]:
    command = _crysdiff("pretrain", "--data", *data, "--out", layout.runs / "pretrain" / job.name, "--no-progress")
    if resume:
        command.append("--resume")
    # the pool model's settings (benchmarks/train_default_models.sh), one field or encoder changed
    command += ["train.max_epochs=6", f"train.max_time_minutes={job.budget_minutes:g}", "train.batch_size=64",
                "train.lr=1e-3", "train.log_every_steps=20", *job.overrides]
    return [str(c) for c in command]


def predict_command(model_path: Path, test: Path, out: Path, seed: int, samples: int) -> list[str]:
    """The CLI equivalent of the in-process test prediction (recorded in the results file). The
    suite records the chain's own intervals (``--raw-interval``), as it did before intervals were
    calibrated; ``benchmarks/calibration.py`` scores the calibrated ones of every run."""
    return _crysdiff("predict", "--model", model_path, test, "--samples", samples, "--seed", seed, "--out", out,
                     "--raw-interval")


# --- provenance ------------------------------------------------------------------------------------


def git_commit(root: Path = ROOT) -> str:
    """The checked-out commit, read from ``.git`` (no git process). In a worktree ``.git`` is a file
    naming the worktree's own folder, whose ``commondir`` holds the shared refs."""
    git = root / ".git"
    try:
        if git.is_file():  # "gitdir: <path>"
            git = (root / git.read_text().strip().removeprefix("gitdir:").strip()).resolve()
        common = (git / (git / "commondir").read_text().strip()).resolve() if (git / "commondir").is_file() else git
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (common / ref).is_file():
            return (common / ref).read_text().strip()
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return "unknown"


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "python": platform.python_version()}


# --- evaluation ------------------------------------------------------------------------------------


def test_labels(test: Path, target: str) -> dict[str, float]:
    """``id -> label`` for the readable, labelled crystals of the test file (crysdiff's own reader)."""
    from crysdiff.cache import load_dataset

    cache = load_dataset([str(test)], progress=False)
    column = cache.label_names.index(target)
    values = np.asarray(cache.labels[:, column], dtype=np.float64)
    labels = {}
    for i in np.flatnonzero(np.isfinite(values)):
        key = cache.id(int(i))
        if key in labels:
            raise ValueError(f"{test}: id {key!r} occurs twice; test ids must be unique")
        labels[key] = float(values[i])
    return labels


def training_ids(train: Path, target: str, fraction: float, seed: int) -> tuple[str, ...]:
    """The training ids ``crysdiff finetune --data TRAIN --label-fraction F --seed S`` uses
    (labelled crystals in dataset order, then :func:`crysdiff.splits.label_fraction`)."""
    from crysdiff.cache import load_dataset
    from crysdiff.splits import label_fraction

    cache = load_dataset([str(train)], progress=False)
    values = np.asarray(cache.labels[:, cache.label_names.index(target)])
    indices = np.flatnonzero(np.isfinite(values)).astype(np.int64)
    if fraction < 1:
        indices = label_fraction(indices, fraction, seed=seed)
    return tuple(cache.id(int(i)) for i in indices)


def test_metrics(frame, labels: dict[str, float], bins: int = 10) -> dict:
    """MAE, RMSE, R², 95% coverage and reliability bins of predictions ``frame`` against ``labels``."""
    from crysdiff.metrics import regression_metrics

    frame = frame[frame["id"].astype(str).isin(labels)]
    y = np.array([labels[str(i)] for i in frame["id"]])
    mean = frame["mean"].to_numpy(float)
    has_spread = "std" in frame and np.nanmax(frame["std"].to_numpy(float), initial=0) > 0
    if has_spread:
        std = frame["std"].to_numpy(float)
        out = regression_metrics(y, mean, frame["p2.5"].to_numpy(float), frame["p97.5"].to_numpy(float), std)
        order = np.argsort(std)
        out["std_bins"] = [{"count": int(len(p)), "mean_predicted_std": float(std[p].mean()),
                            "rmse": float(np.sqrt(np.mean((mean[p] - y[p]) ** 2)))} for p in np.array_split(order, bins) if len(p)]
    else:
        out = regression_metrics(y, mean)
    out["missing_predictions"] = int(len(labels) - len(frame))
    return out


# --- running ---------------------------------------------------------------------------------------


def known_unit(target: str) -> str:
    """The unit crysdiff's readers attach to ``target`` (peers write predictions without units)."""
    from crysdiff.io import KNOWN_UNITS

    return KNOWN_UNITS.get(target, "")


def _run_logged(command: list[str], log: Path, env: dict) -> float:
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "a") as handle:
        handle.write(f"$ {shown(command)}\n")
        handle.flush()
        result = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{shown(command)} failed with exit code {result.returncode}; end of {log}:\n{tail}")
    return time.perf_counter() - started


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)  # never a half-written results file


def supersede(layout: Layout, jobs: list, stamp: str | None = None) -> tuple[Path, int]:
    """Move the outputs of ``jobs`` aside so they run again: every results file of the job (its own
    and the copies other parts reused), its run folder and, for an ablation pre-training, its
    checkpoint go under ``runs/<mode>/superseded/<UTC stamp>/``. Nothing is deleted. Returns that
    folder and the number of paths moved."""
    stamp = stamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = layout.runs / "superseded" / stamp
    moves = []
    for job_id, job in {j.job_id: j for j in jobs}.items():
        moves += [(path, dest / "results" / path.parent.name / path.name)
                  for path in sorted(layout.results.glob(f"*/{job_id}.json"))]
        moves.append((layout.run_dir(job), dest / "jobs" / job_id))
        if isinstance(job, PretrainJob) and job.name != "pool":
            checkpoint = layout.pretrained(job.name)
            moves.append((checkpoint, dest / "models" / checkpoint.name))
    moved = 0
    for source, target in moves:
        if source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(source), str(target))
            moved += 1
    return dest, moved


@dataclass
class Runner:
    """Runs jobs of one layout. ``dry_run`` prints the commands; ``env`` is passed to subprocesses."""

    layout: Layout
    dry_run: bool = False
    samples: int = 100
    env: dict = field(default_factory=lambda: dict(os.environ))
    log: Callable[[str], None] = print

    def run(self, jobs: list) -> list[str]:
        """Run ``jobs`` in order; returns the ids of the jobs that failed (the others are done)."""
        failed = []
        self.models_needed = {j.init_job for j in jobs if getattr(j, "init_job", "")}
        for k, job in enumerate(jobs, 1):
            prefix = f"[{k}/{len(jobs)}] {job.experiment}/{job.job_id}"
            try:
                outcome = self.run_job(job)
                self.log(f"{prefix}: {outcome}")
            except Exception as error:  # one failed job never stops the suite
                failed.append(job.job_id)
                self.log(f"{prefix}: FAILED: {error}")
        return failed

    def run_job(self, job) -> str:
        path = self.layout.result_path(job)
        missing = missing_model(self.layout, job, getattr(self, "models_needed", frozenset()))
        if path.is_file() and missing is None:
            return "skipped (results exist)"
        if missing is not None and (path.is_file() or find_reusable(self.layout, job)):
            self.log(f"{job.job_id}: results exist but {missing} is gone and later jobs need it: training it again "
                     "(its results file is rewritten for the new model)")
        reusable = None if missing is not None else find_reusable(self.layout, job)
        if reusable is not None and not self.dry_run:
            payload = json.loads(reusable.read_text())
            payload.update(experiment=job.experiment, reused_from=str(reusable.relative_to(self.layout.results)))
            _write_json(path, payload)
            return f"reused {reusable.relative_to(self.layout.results)}"
        dropped = removed_option(getattr(job, "model", ""))
        if dropped:
            return (f"not run: {dropped} was measured and removed from crysdiff (docs/results.md, "
                    "'Tried and dropped')")
        if isinstance(job, PretrainJob):
            return self._pretrain(job)
        if job.model in suite_jobs.PEERS:
            return self._peer(job)
        return self._crysdiff(job)

    # crysdiff columns
    def _split(self, task: str):
        return suite_splits.build_split(TASKS[task].split, self.layout.splits, quick=self.layout.quick)

    def _crysdiff(self, job: Job) -> str:
        model = MODELS[job.model]
        split = self._split(job.task)
        run_dir = self.layout.run_dir(job)
        commands, seconds = [], {}
        if model.init == "job":  # the refined model's start (and the model tested before refinement)
            base = self.layout.runs / "jobs" / job.init_job / "model.ckpt"
            if not base.is_file() and not self.dry_run:
                raise FileNotFoundError(f"{base} is missing: run the job {job.init_job} first (it comes first in --part refine)")
        for needed in required_models(self.layout, job):
            if not needed.is_file() and not self.dry_run and model.init != "job":
                raise FileNotFoundError(f"{needed} is missing: run `python benchmarks/suite.py --part pretrain-ablation"
                                        f"{' --quick' if self.layout.quick else ''}` first")
        model_path = base if model.evaluate_only else run_dir / "model.ckpt"
        if not model.evaluate_only:
            done = (run_dir / "model.ckpt").is_file() and (run_dir / "val_metrics.json").is_file()
            resume = not done and (run_dir / "checkpoints" / "last.ckpt").is_file()
            command = finetune_command(self.layout, job, split, resume=resume)
            commands.append(shown(command))
            if self.dry_run:
                self.log(commands[-1])
            elif not done:
                seconds["finetune"] = _run_logged(command, run_dir / "suite.log", self.env)
        out_csv = run_dir / "test_predictions.csv"
        commands.append(shown(predict_command(model_path, split.test, out_csv, job.seed, self.samples)))
        if self.dry_run:
            self.log(commands[-1])
            return "dry run"
        started = time.perf_counter()
        frame = self._predict(model_path, split.test, job.seed)
        seconds["predict"] = time.perf_counter() - started
        run_dir.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out_csv, index=False)
        return self._finish(job, split, frame, commands, seconds, model_path)

    def _predict(self, model_path: Path, test: Path, seed: int):
        import crysdiff

        predictor = crysdiff.load(model_path, device="cpu")
        predictor.calibrated = False  # as predict_command's --raw-interval
        return predictor.predict([str(test)], samples=self.samples, seed=seed)

    def _finish(self, job: Job, split, frame, commands, seconds, model_path: Path) -> str:
        task = TASKS[job.task]
        metrics = test_metrics(frame, test_labels(split.test, task.target))
        info = split.info()
        run_dir = self.layout.run_dir(job)
        val = json.loads((run_dir / "val_metrics.json").read_text()) if (run_dir / "val_metrics.json").is_file() else {}
        training = {}
        if model_path.is_file() and not MODELS.get(job.model, Model("")).peer:
            from crysdiff.checkpoint import load_checkpoint

            payload = load_checkpoint(model_path, kind="finetune")
            training = {"training": payload.get("training", {}), "data": payload.get("data", {}),
                        "unit": payload["normalizer"].get("unit", "")}
        payload = {
            "schema": SCHEMA,
            **job.settings(),
            "quick": self.layout.quick,
            "target": task.target,
            "task_label": task.label,
            "unit": training.get("unit") or (str(frame["unit"].iloc[0]) if "unit" in frame.columns and len(frame) else "")
            or known_unit(task.target),
            "model_label": MODELS[job.model].label if job.model in MODELS else job.model,
            "model_settings": asdict(MODELS[job.model]) if job.model in MODELS else {"peer": True},
            "split": {"name": info["name"], "seed": info["seed"],
                      "parts": {k: {"count": v["count"], "file": v["file"], "sha256": v["sha256"]} for k, v in info["parts"].items()},
                      **({"dedupe": info["dedupe"]} if "dedupe" in info else {})},
            "git_commit": git_commit(),
            "machine": machine(),
            "commands": commands,
            "seconds": {**seconds, "total": sum(seconds.values())},
            "fit": training.get("training", {}),
            "train_count": training.get("data", {}).get("train_count"),
            "val": val.get("val", {}),
            "test": metrics,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        _write_json(self.layout.result_path(job), payload)
        coverage = metrics.get("coverage95")
        return (f"test MAE {metrics['mae']:.4g} {payload['unit']}" + (f", coverage {coverage:.3f}" if coverage is not None else "")
                + f" ({metrics['count']} crystals)")

    # peers
    def _peer(self, job: Job) -> str:
        split = self._split(job.task)
        run_dir = self.layout.run_dir(job)
        peer_job = PeerJob(split.train, split.val, split.test, TASKS[job.task].target, job.label_fraction,
                           training_ids(split.train, TASKS[job.task].target, job.label_fraction, job.seed), job.seed,
                           job.budget_minutes, run_dir)
        runner = suite_jobs.PEERS[job.model]
        commands = [runner.command(peer_job)] if isinstance(runner, CommandPeer) else [f"{job.model} runner (python callable)"]
        if self.dry_run:
            self.log(commands[0])
            return "dry run"
        started = time.perf_counter()
        frame = runner(peer_job)
        seconds = {"peer": time.perf_counter() - started}
        frame = frame.assign(id=frame["id"].astype(str))
        run_dir.mkdir(parents=True, exist_ok=True)
        frame.to_csv(run_dir / "test_predictions.csv", index=False)
        return self._finish(job, split, frame, commands, seconds, run_dir / "none")

    # pre-training for the ablation
    def _pretrain(self, job: PretrainJob) -> str:
        target = self.layout.pretrained(job.name)
        run_dir = self.layout.runs / "pretrain" / job.name
        if self.layout.quick:
            data = [self._split("mp2018_formation").train]  # a few hundred crystals
        else:
            data = [ROOT.parent / "shared" / "data"]  # the whole pool, as for models/pretrained_pool.ckpt
        resume = (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "model.ckpt").is_file()
        command = pretrain_command(self.layout, job, data, resume=resume)
        if self.dry_run:
            self.log(shown(command))
            return "dry run"
        seconds = {}
        if target.is_file():
            note = f"{target.name} exists: not pre-trained again"
        else:
            if not (run_dir / "model.ckpt").is_file():
                seconds["pretrain"] = _run_logged(command, run_dir / "suite.log", self.env)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run_dir / "model.ckpt", target)
            note = f"wrote {target}"
        from crysdiff.checkpoint import load_checkpoint

        payload = load_checkpoint(target, kind="pretrain")
        _write_json(self.layout.result_path(job), {
            "schema": SCHEMA, "experiment": job.experiment, "job_id": job.job_id, "name": job.name,
            "overrides": list(job.overrides), "budget_minutes": job.budget_minutes, "quick": self.layout.quick,
            "checkpoint": str(target.relative_to(ROOT)) if target.is_relative_to(ROOT) else str(target),
            "checkpoint_bytes": target.stat().st_size, "git_commit": git_commit(), "machine": machine(),
            "commands": [shown(command)], "seconds": seconds, "fit": payload.get("training", {}),
            "val_loss": payload.get("metrics", {}), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })
        return note


# --- command line ----------------------------------------------------------------------------------


def select_jobs(parts, args) -> list:
    jobs = []
    for part in parts:
        jobs += make_jobs(part, quick=args.quick, seeds=tuple(args.seeds) if args.seeds else None,
                          budget_minutes=args.budget_minutes, models=tuple(args.models) if args.models else None,
                          budget_steps=getattr(args, "budget_steps", None))
    if getattr(args, "fractions", None):  # pre-trainings have no label fraction and always stay
        jobs = [j for j in jobs if not hasattr(j, "label_fraction") or j.label_fraction in args.fractions]
    if getattr(args, "tasks", None):  # likewise, pre-trainings have no task
        unknown = sorted(set(args.tasks) - set(TASKS))
        if unknown:
            raise SystemExit(f"unknown task(s) {', '.join(unknown)}: expected some of {', '.join(TASKS)}")
        jobs = [j for j in jobs if not hasattr(j, "task") or j.task in args.tasks]
    if args.limit:
        jobs = jobs[: args.limit]
    return jobs


def print_list(layout: Layout, parts, args) -> None:
    grand, counted = 0.0, set()  # a job listed by several parts runs once (the later parts reuse its results)
    for part in parts:
        jobs = select_jobs([part], args)
        total = sum(estimate_minutes(j, args.quick) for j in jobs)
        grand += sum(estimate_minutes(j, args.quick) for j in jobs if j.job_id not in counted)
        counted.update(j.job_id for j in jobs)
        per_seed = {}
        for job in jobs:
            seed = getattr(job, "seed", "-")
            per_seed[seed] = per_seed.get(seed, 0.0) + estimate_minutes(job, args.quick)
        seeds = ", ".join(f"seed {s}: {m:.0f} min" for s, m in sorted(per_seed.items(), key=str))
        print(f"\n## {part}: {len(jobs)} jobs, estimated {total:.0f} min if none is done or reused ({seeds})"
              + ("" if args.quick else f"; run one seed at a time (--seeds S) to stay within "
                                       f"{PART_LIMIT_MINUTES} min per run"))
        needed = {j.init_job for j in jobs if getattr(j, "init_job", "")}
        for job in jobs:
            budget = job.budget_minutes
            state = status(layout, job)
            if state in ("done", "reusable") and missing_model(layout, job, needed):
                state += ", but its model (needed by later jobs) is gone: trains again"
            print(f"  {job.job_id:<70} budget {budget:>5g} min  est {estimate_minutes(job, args.quick):>5.2f} min  {state}")
        by_budget: dict[tuple, int] = {}
        for job in jobs:
            key = (job.budget_minutes, round(estimate_minutes(job, args.quick) - job.budget_minutes, 2))
            by_budget[key] = by_budget.get(key, 0) + 1
        arithmetic = " + ".join(f"{n} x ({b:g} + {o:g})" for (b, o), n in sorted(by_budget.items()))
        print(f"  arithmetic: {arithmetic} = {total:.0f} min (jobs x (budget + overhead))")
    print(f"\nall listed parts: {grand:.0f} min ({grand / 60:.1f} h), each job counted once "
          "(a job shared by several parts runs in the first and is reused by the others)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Example:\n  python benchmarks/suite.py --part table1 --seeds 0 1\n"
                                            "  python benchmarks/suite.py --quick --all")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--part", choices=PARTS, action="append", help="part(s) to run (repeatable)")
    which.add_argument("--all", action="store_true", help="every part, pretrain-ablation first")
    parser.add_argument("--quick", action="store_true", help="reduced form: small subsets, tiny budgets, one seed; "
                                                              "results in benchmarks/results/suite-quick/")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: per experiment, see --list)")
    parser.add_argument("--budget-minutes", type=float, help="override every job's budget (minutes of training)")
    parser.add_argument("--budget-steps", type=int,
                        help="train every crysdiff job for this many optimiser steps (a budget that means the same on "
                             "any machine; the wall clock becomes a safety cap: --budget-minutes if given, else STEP_CAP_FACTOR x the "
                             "task's budget)")
    parser.add_argument("--models", nargs="+", help="only these model columns (e.g. crysdiff scratch alignn)")
    parser.add_argument("--fractions", type=float, nargs="+", help="only these label fractions (e.g. 1 or 0.1 0.4)")
    parser.add_argument("--tasks", nargs="+", help="only these tasks (e.g. mp_elastic_bulk perov5_heat; see --list)")
    parser.add_argument("--limit", type=int, help="only the first N jobs (for checks)")
    parser.add_argument("--list", action="store_true", help="print the jobs, their budgets and status; run nothing")
    parser.add_argument("--dry-run", action="store_true", help="print the command lines; run nothing")
    parser.add_argument("--samples", type=int, default=100, help="samples per test crystal (default 100)")
    parser.add_argument("--threads", type=int, help="torch/OpenMP threads for every run (default: torch's choice)")
    parser.add_argument("--rerun", action="store_true",
                        help="run the selected jobs again although they are done (e.g. after a code change): their "
                             "results files, in every part holding a copy, and run folders move to "
                             "runs/suite[-quick]/superseded/<time>/ first; nothing is deleted")
    args = parser.parse_args(argv)
    parts = list(PARTS) if args.all or (args.list and not args.part) else (args.part or [])
    if not parts:
        parser.error("choose --part NAME, --all or --list")
    env = dict(os.environ)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    layout = Layout.default(quick=args.quick)
    if args.list:
        print_list(layout, parts, args)
        return 0
    if not args.dry_run and importlib.util.find_spec("crysdiff") is None:  # else every job fails the same way
        parser.error(f"crysdiff is not importable with {sys.executable}; run the suite with the project's "
                     f"environment: .venv/bin/python benchmarks/suite.py ...")
    runner = Runner(layout, dry_run=args.dry_run, samples=args.samples, env=env)
    jobs = select_jobs(parts, args)
    if args.rerun and not args.dry_run:  # a dropped column cannot run again: its results stay where they are
        folder, moved = supersede(layout, [j for j in jobs if not removed_option(getattr(j, "model", ""))])
        print(f"--rerun: moved {moved} earlier result(s) and run folder(s) of {len(jobs)} job(s) to {folder}")
    failed = runner.run(jobs)
    if failed:
        print(f"{len(failed)} job(s) failed: {', '.join(failed)} (rerun the same command to retry them)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
