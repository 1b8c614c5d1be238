"""What the feature-based peers of ``benchmarks/smalldata.py`` share (random forest on matminer
features, CHGNet crystal features with a small head): reading the fold files, a per-task feature
cache, and the outputs. Runs in the peers' own environments (ASE, numpy, pandas, scikit-learn);
never imports crysdiff.

A runner is ``python RUNNER --train T --val V --test S --target NAME --out DIR --features CACHE
[--seed K] [--threads N]``. The fold files are extended XYZ as written by the benchmark (one
crystal per frame, ``material_id`` and the labels in the info line). ``CACHE`` is a JSON file
``{"names": [...], "rows": {id: [values]}}`` holding the features of every crystal computed so far
for the task, so the five folds featurise each crystal once; JSON, so loading it runs no code.
Outputs: ``DIR/test_predictions.csv`` (``id, y, pred, mean``) and ``DIR/metrics.json``, the
format of :mod:`benchmarks.peers.protocol`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.peers.protocol import write_outputs  # noqa: E402

Featurise = Callable[[list], tuple[list[str], np.ndarray]]  # structures -> (names, [n, f] values)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    for part in ("train", "val", "test"):
        p.add_argument(f"--{part}", required=True, help=f"{part} crystals (extxyz written by benchmarks/smalldata.py)")
    p.add_argument("--target", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--features", required=True, help="per-task feature cache (JSON)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    return p


def read_part(path: str, target: str) -> tuple[list[str], np.ndarray, list]:
    """Ids, target values and ASE atoms of one fold file (every frame must carry the target)."""
    from ase.io import read

    frames = read(path, index=":", format="extxyz")
    ids, y = [], []
    for k, atoms in enumerate(frames):
        if target not in atoms.info:
            raise SystemExit(f"{path}: frame {k} has no {target!r}")
        ids.append(str(atoms.info.get("material_id", k)))
        y.append(float(atoms.info[target]))
    return ids, np.asarray(y, dtype=np.float64), frames


def cached_features(cache: Path, ids: list[str], frames: list, featurise: Featurise) -> tuple[list[str], np.ndarray]:
    """Features of ``ids`` (from ``cache``, computing and adding the missing ones)."""
    stored = json.loads(cache.read_text()) if cache.is_file() else {"names": [], "rows": {}}
    missing = [k for k, i in enumerate(ids) if i not in stored["rows"]]
    if missing:
        names, values = featurise([frames[k] for k in missing])
        if stored["names"] and stored["names"] != names:
            raise SystemExit(f"{cache}: cached feature names differ from this run's; delete the cache")
        stored["names"] = names
        for k, row in zip(missing, values):
            stored["rows"][ids[k]] = [None if not math.isfinite(v) else float(v) for v in row]
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(stored))
        tmp.replace(cache)
    rows = [[np.nan if v is None else v for v in stored["rows"][i]] for i in ids]
    return stored["names"], np.asarray(rows, dtype=np.float64)


def run(args, featurise: Featurise, fit_predict, settings: dict) -> dict:
    """Read the parts, featurise (cached), ``fit_predict(x_train, y_train, x_val, y_val, x_test) ->
    (pred, details)`` and write the outputs; returns the metrics."""
    seconds, started = {}, time.perf_counter()
    parts = {p: read_part(getattr(args, p), args.target) for p in ("train", "val", "test")}
    seconds["read"] = time.perf_counter() - started
    started = time.perf_counter()
    x = {}
    for part, (ids, _, frames) in parts.items():
        names, x[part] = cached_features(Path(args.features), ids, frames, featurise)
    seconds["features"] = time.perf_counter() - started
    started = time.perf_counter()
    pred, details = fit_predict(x["train"], parts["train"][1], x["val"], parts["val"][1], x["test"])
    seconds["fit_predict"] = time.perf_counter() - started
    counts = {p: len(v[0]) for p, v in parts.items()}
    return write_outputs(args.out, parts["test"][0], parts["test"][1], pred, seconds=seconds,
                         settings={**settings, **details, "features": len(names), "counts": counts,
                                   "seed": args.seed, "threads": args.threads, "target": args.target})
