"""Seed ensembles as the missing epistemic term of the interval (issue 4 and 5, uncertainty).

    python benchmarks/ensemble.py [--task mp_elastic_bulk] [--fractions 0.05 0.1] [--seeds 0 1 2]

One crysdiff model's 95% interval is the fitted spread of p(y | structure) and has no term for the
model's own uncertainty; with a few hundred labels it covers far less than 95% of new crystals
(Fig. 4). This takes the suite's sparse-label crysdiff runs that differ only in ``--seed`` (run
them first: ``python benchmarks/suite.py --part sparse --tasks T --models crysdiff --seeds 0 1 2
--fractions F...``), predicts the task's test split with each alone and with all of them as one
ensemble (``crysdiff predict --model A --model B ...``: S samples from each, pooled), and scores
accuracy and coverage, for both ways of pooling: the members' draws as drawn, and widened by the
small-ensemble correction that ``crysdiff predict`` applies (``crysdiff.uncertainty.pool_members``). Writes ``benchmarks/results/suite[-quick]/ensemble/<task>.json``, which
``benchmarks/report.py`` reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__:  # imported as benchmarks.ensemble (tests, other benchmarks)
    from .suite import git_commit, machine
    from .suite_jobs import TASKS, Layout
    from .uncertainty import draw, score, split_members
else:  # run as `python benchmarks/ensemble.py`: this folder is sys.path[0]
    from suite import git_commit, machine
    from suite_jobs import TASKS, Layout
    from uncertainty import draw, score, split_members


def _job(layout: Layout, task: str, fraction: float, seed: int) -> tuple[Path, dict]:
    """The checkpoint and committed results file of the suite's sparse crysdiff job (one budget)."""
    pattern = f"{task}.crysdiff.lf{fraction:g}.s{seed}.b*m"
    results = sorted((layout.results / "sparse").glob(pattern + ".json"))
    if len(results) != 1:
        raise SystemExit(f"{layout.results / 'sparse'}/{pattern}.json: expected one results file, found {len(results)}; "
                         f"run `python benchmarks/suite.py --part sparse --tasks {task} --models crysdiff "
                         f"--fractions {fraction:g} --seeds {seed}` first")
    record = json.loads(results[0].read_text())
    checkpoint = layout.runs / "jobs" / record["job_id"] / "model.ckpt"
    if not checkpoint.is_file():
        raise SystemExit(f"{checkpoint}: missing (the run folder of {results[0].name} is gone); rerun that job with --rerun")
    return checkpoint, record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="mp_elastic_bulk", choices=sorted(TASKS))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=100, help="samples per crystal and model (default 100)")
    parser.add_argument("--quick", action="store_true", help="use the quick suite's runs and results")
    args = parser.parse_args(argv)
    if len(args.seeds) < 2:
        parser.error("an ensemble needs at least two --seeds")

    from crysdiff.predict import load
    from crysdiff.uncertainty import pool_members

    layout = Layout.default(quick=args.quick)
    rows = []
    for fraction in args.fractions:
        jobs = [_job(layout, args.task, fraction, seed) for seed in args.seeds]
        tests = {record["split"]["parts"]["test"]["sha256"] for _, record in jobs}
        if len(tests) != 1:
            raise SystemExit(f"{args.task} at {fraction:g}: the seeds' runs were tested on different test files")
        test_file = layout.splits / jobs[0][1]["split"]["name"] / jobs[0][1]["split"]["parts"]["test"]["file"]
        start = time.perf_counter()
        predictor = load([str(path) for path, _ in jobs], device="cpu")
        predictor.widen = False  # the members' own draws; both poolings are scored below
        y, samples, _ = draw(predictor, test_file, args.samples, seed=0)
        per_member, std_models = split_members(samples, len(jobs))
        widened = pool_members([torch.from_numpy(own) for own in per_member], lower_bound=predictor.lower_bound).numpy()
        members = []
        for seed, (path, record), own in zip(args.seeds, jobs, per_member):
            members.append({"seed": seed, "job_id": record["job_id"], "train_count": record["train_count"],
                            "suite_test_mae": record["test"]["mae"], "suite_coverage95": record["test"].get("coverage95"),
                            **_summary(score(y, own, bins=5))})
        ensemble = {**_summary(score(y, widened, bins=5)), "std_models": std_models, "pooling": "widened"}
        pooled = {**_summary(score(y, samples, bins=5)), "std_models": std_models, "pooling": "as drawn"}
        rows.append({"label_fraction": fraction, "train_count": jobs[0][1]["train_count"], "test_count": int(len(y)),
                     "members": members, "ensemble": ensemble, "ensemble_as_drawn": pooled,
                     "seconds": time.perf_counter() - start})
        single = np.mean([m["coverage95"] for m in members])
        print(f"{args.task} {100 * fraction:g}%: members' 95% coverage {single:.3f} (mean), MAE "
              f"{np.mean([m['mae'] for m in members]):.3f}; ensemble of {len(jobs)}: coverage {ensemble['coverage95']:.3f}, "
              f"MAE {ensemble['mae']:.3f} (pooled as drawn: coverage {pooled['coverage95']:.3f})")
    out = layout.results / "ensemble" / f"{args.task}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = (f"python benchmarks/ensemble.py --task {args.task} --fractions {' '.join(f'{f:g}' for f in args.fractions)} "
               f"--seeds {' '.join(map(str, args.seeds))} --samples {args.samples}" + (" --quick" if args.quick else ""))
    out.write_text(json.dumps({"task": args.task, "target": TASKS[args.task].target, "unit": predictor.unit,
                               "samples_per_model": args.samples, "seeds": args.seeds, "rows": rows, "command": command,
                               "git_commit": git_commit(), "machine": machine(), "quick": args.quick}, indent=2))
    print(f"written {out}")
    return 0


def _summary(scored: dict) -> dict:
    keep = ("mae", "rmse", "coverage95", "mean_predicted_std", "spearman_std_vs_abs_error")
    return {key: scored[key] for key in keep} | {"coverage_by_level": scored["coverage_by_level"]}


if __name__ == "__main__":
    sys.exit(main())
