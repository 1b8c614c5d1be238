"""The peer-model protocol: one command-line interface, one data selection, one output format.

Every peer runner (the CGCNN-style model here, ALIGNN in ``benchmarks/peers/``) takes::

    --train SRC... --val SRC... --test SRC... --target NAME --minutes M --out DIR
    [--seed S] [--label-fraction F] [--train-ids FILE] [--val-ids FILE] [--test-ids FILE]

and selects crystals the same way (:func:`select_split`), so peers and crysdiff see identical
training, validation and test sets:

1. each part's sources are read through crysdiff's cache (:func:`crysdiff.cache.load_dataset`);
2. an ids file (one crysdiff record id per line, ``cache.id(i)``) keeps those records only; an id
   missing from the source is an error that names it;
3. crystals without a value for the target are dropped (counted);
4. ``--label-fraction F`` keeps the seeded, nested subset :func:`crysdiff.splits.label_fraction` of
   the labelled training crystals, exactly as ``crysdiff finetune --label-fraction F --seed S``
   does. With ``--train-ids`` the file *is* the training set (the suite writes ids that already
   reflect the label fraction), so the fraction is recorded but not applied a second time.

Outputs (:func:`write_outputs`): ``DIR/test_predictions.csv`` with columns ``id, y, pred, mean``
(``mean`` repeats ``pred`` under the name the suite reads) and ``DIR/metrics.json`` with the test
``mae, rmse, r2, count``, the wall-clock ``seconds`` of each phase and the run's ``settings``.
"""

from __future__ import annotations

import argparse
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crysdiff.metrics import regression_metrics  # the names and definitions crysdiff's own results use

__all__ = ["Selection", "add_peer_arguments", "select_split", "read_ids", "regression_metrics", "write_outputs"]


def add_peer_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every peer runner shares (see the module docstring)."""
    parser.add_argument("--train", "--data", dest="train", nargs="+", required=True, metavar="SRC",
                        help="training data: any source crysdiff reads (CSV, folder, extxyz...)")
    parser.add_argument("--val", nargs="+", required=True, metavar="SRC", help="validation data (model selection)")
    parser.add_argument("--test", nargs="+", required=True, metavar="SRC", help="test data (predicted at the end)")
    parser.add_argument("--target", required=True, help="label column to learn, e.g. formation_energy_per_atom")
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock training budget in minutes")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seeds initialisation, data order and the label fraction")
    parser.add_argument("--label-fraction", type=float, default=1.0,
                        help="fraction of the labelled training crystals to keep (nested per seed)")
    for part in ("train", "val", "test"):
        parser.add_argument(f"--{part}-ids", default=None, metavar="FILE",
                            help=f"keep only these {part} records (one crysdiff record id per line)")


@dataclass
class Selection:
    """The crystals of one part: ``cache`` and the ``indices`` used, in dataset order."""

    cache: object
    indices: np.ndarray
    dropped_missing: int
    sources: list[str]

    @property
    def ids(self) -> list[str]:
        return [self.cache.id(int(i)) for i in self.indices]

    def targets(self, target: str) -> np.ndarray:
        return np.asarray(self.cache.labels[self.indices, self.cache.label_names.index(target)], dtype=np.float64)


def read_ids(path: str | Path) -> list[str]:
    """Ids from a file with one id per line (blank lines ignored)."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def _select_ids(cache, wanted: list[str], path, sources) -> np.ndarray:
    position: dict[str, list[int]] = {}
    for i in range(len(cache)):
        position.setdefault(cache.id(i), []).append(i)
    missing = [w for w in wanted if w not in position]
    if missing:
        raise ValueError(f"{path}: {len(missing)} of {len(wanted)} ids are not records of {', '.join(sources)} "
                         f"(first: {', '.join(missing[:5])})")
    return np.unique(np.concatenate([position[w] for w in dict.fromkeys(wanted)])).astype(np.int64)


def select_split(train, val, test, target: str, *, train_ids=None, val_ids=None, test_ids=None,
                 label_fraction: float = 1.0, seed: int = 0, progress: bool = False,
                 workers: int | None = None) -> dict[str, Selection]:
    """``{"train", "val", "test"} -> Selection`` following the protocol of the module docstring."""
    from crysdiff.cache import load_dataset
    from crysdiff.splits import label_fraction as subsample

    out = {}
    for part, sources, ids_file in (("train", train, train_ids), ("val", val, val_ids), ("test", test, test_ids)):
        sources = [str(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources)]
        cache = load_dataset(sources, progress=progress, workers=workers)
        if target not in cache.label_names:
            raise ValueError(f"target {target!r} is not a label of the {part} data {', '.join(sources)} "
                             f"(labels found: {', '.join(cache.label_names) or 'none'})")
        indices = np.arange(len(cache), dtype=np.int64)
        if ids_file:
            indices = _select_ids(cache, read_ids(ids_file), ids_file, sources)
        values = np.asarray(cache.labels[indices, cache.label_names.index(target)])
        labelled = np.isfinite(values)
        indices = indices[labelled]
        if part == "train" and label_fraction < 1 and not ids_file:
            indices = subsample(indices, label_fraction, seed=seed)
        if indices.shape[0] == 0:
            raise ValueError(f"no {part} crystal of {', '.join(sources)} has a value for {target!r}")
        out[part] = Selection(cache, indices, int((~labelled).sum()), sources)
    return out


def write_outputs(out_dir: str | Path, ids, y, pred, *, seconds: dict[str, float], settings: dict,
                  extra: dict | None = None) -> dict:
    """Write ``test_predictions.csv`` and ``metrics.json`` (see the module docstring); returns the metrics."""
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pred = np.asarray(pred, dtype=np.float64)
    pd.DataFrame({"id": list(ids), "y": np.asarray(y, dtype=np.float64), "pred": pred, "mean": pred}).to_csv(
        out_dir / "test_predictions.csv", index=False)
    metrics = {**regression_metrics(y, pred), "seconds": seconds, "settings": settings,
               "machine": {"python": platform.python_version(), "platform": platform.platform()}, **(extra or {})}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
