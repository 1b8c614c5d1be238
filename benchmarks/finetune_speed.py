"""Fine-tuning at a fixed wall-clock budget (issue 26): optimiser steps per minute of today's code
against an earlier revision's, the same command on the same machine, interleaved.

    python benchmarks/finetune_speed.py [--against a2c511c] [--steps 20 120] [--repeats 1]

Each run is ``crysdiff finetune`` from ``--init`` on ``mp2018/train`` (formation energy, batch 64,
the default head and settings of each revision), validated only at the end on 64 ``mp2018/val``
crystals; the revision ``--against`` runs from a temporary git worktree with the same Python
environment. Each checkpoint records its optimiser steps and training seconds (Lightning's
``Timer``, which also counts the fit loop's fixed start and end); runs of two lengths (``--steps
SHORT LONG``) cancel that fixed part: steps per minute = ``(LONG - SHORT) / (t_LONG - t_SHORT)``.
The revisions alternate (A B, then B A in the next repeat), and the median per revision is
reported with every run. Writes ``benchmarks/results/finetune_speed.json``. Run it on an idle machine: every other job
on the two cores moves the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def revision_tree(revision: str, where: Path) -> Path:
    """A detached git worktree of ``revision`` under ``where`` (removed by the caller)."""
    tree = where / f"crysdiff_{revision}"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), revision], cwd=ROOT, check=True,
                   capture_output=True)
    return tree


def finetune_once(source: Path, out: Path, val_csv: Path, steps: int, args) -> dict:
    """One ``crysdiff finetune`` run of the code under ``source``; its recorded steps and seconds."""
    env = {**os.environ, "PYTHONPATH": f"{source / 'src'}{os.pathsep}{source}"}
    command = [sys.executable, "-m", "crysdiff", "finetune", "--init", str(args.init),
               "--data", str(DATA / "mp2018" / "train.csv.gz"), "--val", str(val_csv), "--target", args.target,
               "--out", str(out), "--no-progress", f"train.max_steps={steps}", "train.max_epochs=100",
               "train.batch_size=64", "train.log_every_steps=50", "train.checkpoint_every_steps=0",
               "eval_samples=5", "report_samples=5"]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=source, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{source}: crysdiff finetune failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    wall = time.perf_counter() - start
    import torch

    training = torch.load(out / "model.ckpt", weights_only=True)["training"]
    return {"steps": int(training["steps"]), "train_seconds": float(training["seconds"]),
            "wall_seconds_with_startup": wall}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--against", default="a2c511c", help="the earlier revision (git)")
    parser.add_argument("--steps", type=int, nargs=2, default=[20, 120], metavar=("SHORT", "LONG"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--init", type=Path, default=ROOT / "models" / "pretrained_pool.ckpt")
    parser.add_argument("--target", default="formation_energy_per_atom")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "finetune_speed.json")
    args = parser.parse_args(argv)
    import pandas as pd

    revision = subprocess.run(["git", "rev-parse", "--short", args.against], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    scratch = Path(tempfile.mkdtemp(prefix="finetune_speed_"))
    runs: dict[str, list[dict]] = {"today": [], "against": []}
    try:
        val_csv = scratch / "val64.csv"
        pd.read_csv(DATA / "mp2018" / "val.csv.gz", index_col=0).iloc[:64].to_csv(val_csv)
        trees = {"today": ROOT, "against": revision_tree(revision, scratch)}
        for repeat in range(args.repeats):
            order = ["today", "against"] if repeat % 2 == 0 else ["against", "today"]
            for name in order:
                short, long = (finetune_once(trees[name], scratch / f"{name}_{repeat}_{n}", val_csv, n, args)
                               for n in args.steps)
                rate = 60.0 * (long["steps"] - short["steps"]) / (long["train_seconds"] - short["train_seconds"])
                runs[name].append({"short": short, "long": long, "steps_per_minute": rate})
                print(f"{name:8s} repeat {repeat}: {rate:.1f} steps/min ({short['steps']} steps in "
                      f"{short['train_seconds']:.1f} s, {long['steps']} in {long['train_seconds']:.1f} s)", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(scratch / f"crysdiff_{revision}")], cwd=ROOT,
                       capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    median = {name: float(np.median([r["steps_per_minute"] for r in values])) for name, values in runs.items()}
    result = {
        "command": "python benchmarks/finetune_speed.py" + "".join(
            f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v != parser.get_default(k)),
        "today": head + (" (with uncommitted changes under src/)" if dirty else ""), "against": revision,
        "steps": args.steps, "repeats": args.repeats, "init": str(Path(args.init).resolve().relative_to(ROOT))
        if Path(args.init).resolve().is_relative_to(ROOT) else str(args.init), "target": args.target,
        "load_average_at_start": list(os.getloadavg()), "runs": runs,
        "median_steps_per_minute": median, "speedup": median["today"] / median["against"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"fine-tuning steps per minute (median of {args.repeats}): {median['today']:.1f} today ({head}) against "
          f"{median['against']:.1f} at {revision}: {result['speedup']:.2f}x")


if __name__ == "__main__":
    main()
