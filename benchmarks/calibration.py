"""Calibrated intervals (issue 4 and 5, uncertainty): the split-conformal scale that ``crysdiff
finetune`` fits on its validation crystals, scored on the test crystals of every suite run.

    python benchmarks/calibration.py [--quick]

For each crysdiff run of the suite with a diffusion head (results files under
``benchmarks/results/suite/<part>/``, run folders under ``runs/suite/jobs/``), this reads the run's
own validation predictions (``val_predictions.csv``, written by ``crysdiff finetune``) and test
predictions (``test_predictions.csv``, the chain's raw intervals: the suite predicts with
``--raw-interval``), fits the scale exactly as fine-tuning does
(:func:`crysdiff.uncertainty.conformal_interval_scale`), and moves the test intervals as
``crysdiff predict`` does by default: ``q' = clip(mean + scale (q − mean))``
(:func:`crysdiff.property_model.scale_spread`; the map is increasing, so moving the summary
quantiles equals moving the samples). Runs trained before calibration existed are scored the same
way, so every row of the suite gets its calibrated coverage. Writes
``benchmarks/results/suite[-quick]/calibration/runs.json``, which ``benchmarks/report.py`` reads.
A run whose folder is gone (run folders are not committed, so a fresh checkout has none) keeps the
row an earlier pass wrote; new rows record the commit that scored them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

if __package__:  # imported as benchmarks.calibration (tests, other benchmarks)
    from .suite import git_commit, machine, test_labels
    from .suite_jobs import MODELS, PARTS, Layout
else:  # run as `python benchmarks/calibration.py`: this folder is sys.path[0]
    from suite import git_commit, machine, test_labels
    from suite_jobs import MODELS, PARTS, Layout


def calibrate_run(run_dir: Path, test_file: Path, target: str, lower_bound: float | None) -> dict | None:
    """Raw and calibrated 95% coverage of one run on its test crystals; ``None`` if the run has no
    interval (a regression head) or its prediction files are gone."""
    import pandas as pd

    import torch

    from crysdiff.uncertainty import conformal_interval_scale, scale_spread

    val_file, test_preds = run_dir / "val_predictions.csv", run_dir / "test_predictions.csv"
    if not (val_file.is_file() and test_preds.is_file()):
        return None
    val = pd.read_csv(val_file)
    if val["p2.5"].isna().all():
        return None
    scale, fit = conformal_interval_scale(val["y"], val["mean"], val["p2.5"], val["p97.5"])
    frame = pd.read_csv(test_preds)
    labels = test_labels(test_file, target)
    frame = frame[frame["id"].astype(str).isin(labels)]
    y = np.array([labels[str(i)] for i in frame["id"]])
    mean, low, high = (frame[c].to_numpy(float) for c in ("mean", "p2.5", "p97.5"))
    # the quantiles move as the samples do (scale_spread is increasing), so move them directly
    moved = scale_spread(torch.tensor(np.stack([low, high], axis=1)), torch.tensor(mean), scale, lower_bound)
    new_low, new_high = moved[:, 0].numpy(), moved[:, 1].numpy()
    return {"interval_scale": scale, "val_count": fit["count"], "val_coverage_raw": fit["coverage_before"],
            "test_count": int(len(y)), "test_coverage_raw": float(np.mean((y >= low) & (y <= high))),
            "test_coverage_calibrated": float(np.mean((y >= new_low) & (y <= new_high))),
            "test_mean_width_raw": float(np.mean(high - low)), "test_mean_width_calibrated": float(np.mean(new_high - new_low))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the quick suite's runs and results")
    args = parser.parse_args(argv)

    from crysdiff.checkpoint import load_checkpoint

    layout = Layout.default(quick=args.quick)
    out = layout.results / "calibration" / "runs.json"
    # a run whose folder is gone (a fresh checkout: runs/ is not committed) keeps the row an earlier
    # pass scored from it, so that rerunning this script never loses what it measured
    earlier = {(r["experiment"], r["job_id"]): r for r in json.loads(out.read_text())["rows"]} if out.is_file() else {}
    rows, seen, missing, kept = [], set(), [], []
    for part in (p for p in PARTS if p != "pretrain-ablation"):
        for path in sorted((layout.results / part).glob("*.json")):
            record = json.loads(path.read_text())
            model = MODELS.get(record["model"])
            if model is None or model.peer or model.evaluate_only or record["job_id"] in seen:
                continue
            seen.add(record["job_id"])
            run_dir = layout.runs / "jobs" / record["job_id"]
            checkpoint = run_dir / "model.ckpt"
            if not checkpoint.is_file():
                if (part, record["job_id"]) in earlier:
                    rows.append(earlier[(part, record["job_id"])])
                    kept.append(record["job_id"])
                else:
                    missing.append(record["job_id"])
                continue
            normalizer = load_checkpoint(checkpoint, kind="finetune")["normalizer"]
            test_file = layout.splits / record["split"]["name"] / record["split"]["parts"]["test"]["file"]
            scored = calibrate_run(run_dir, test_file, record["target"], normalizer.get("lower_bound"))
            if scored is None:
                continue
            rows.append({"experiment": part, "job_id": record["job_id"], "task": record["task"], "model": record["model"],
                         "label_fraction": record["label_fraction"], "seed": record["seed"], "git_commit": git_commit(),
                         **scored})
            print(f"{part:>14} {record['job_id']:<62} scale {scored['interval_scale']:6.3f}  coverage "
                  f"{scored['test_coverage_raw']:.3f} -> {scored['test_coverage_calibrated']:.3f}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "missing_runs": missing, "kept_from_earlier": kept, "level": 0.95,
                               "command": "python benchmarks/calibration.py" + (" --quick" if args.quick else ""),
                               "git_commit": git_commit(), "machine": machine(), "quick": args.quick}, indent=1))
    print(f"written {out} ({len(rows)} runs: {len(rows) - len(kept)} scored now, {len(kept)} kept from the earlier file "
          f"(their run folders are gone); {len(missing)} without a run folder or an earlier row)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
