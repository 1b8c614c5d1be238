"""Reproducible splits: seeded random splits, the split files shipped with a dataset, and nested
label-fraction subsets for sparse-label experiments.

All functions return sorted ``int64`` index arrays into a dataset, so a split is a plain list of
numbers that can be saved (:func:`save_splits`) and reloaded byte for byte.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

__all__ = ["random_split", "split_by_source", "label_fraction", "save_splits", "load_splits"]

_SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


def random_split(n: int, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> tuple[np.ndarray, ...]:
    """Disjoint index arrays covering ``0..n-1`` with sizes proportional to ``fractions``.

    Sizes are rounded so that they add up to ``n`` (the last part takes the remainder).
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if np.any(fractions < 0) or not math.isclose(fractions.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must be non-negative and add up to 1, got {fractions.tolist()}")
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.round(np.cumsum(fractions)[:-1] * n).astype(np.int64)
    return tuple(np.sort(part) for part in np.split(order, cuts))


def split_by_source(cache) -> dict[str, np.ndarray]:
    """The dataset's own split files: crystals grouped by the name of the file they came from
    (``perov_5/train.csv.gz`` -> ``"train"``, ``val``/``valid``/``validation`` -> ``"val"``)."""
    out: dict[str, list[np.ndarray]] = {}
    for k, source in enumerate(cache.sources):
        stem = Path(source).name.split(".")[0].lower()
        name = next((s for s in _SPLIT_NAMES if re.fullmatch(rf"(.*[_-])?{s}([_-].*)?", stem)), stem)
        name = "val" if name in ("valid", "validation") else name
        out.setdefault(name, []).append(np.flatnonzero(cache.source_index == k))
    return {name: np.sort(np.concatenate(parts)).astype(np.int64) for name, parts in out.items()}


def label_fraction(indices, fraction: float, seed: int = 0) -> np.ndarray:
    """A seeded subset of ``indices`` holding ``ceil(fraction * len)`` of them (at least one).

    Subsets are nested: for the same ``indices`` and ``seed``, the 5% subset is inside the 10%
    subset, which is inside the 20% subset, and so on (one permutation, growing prefixes).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    indices = np.asarray(indices, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(indices.shape[0])
    keep = max(1, math.ceil(fraction * indices.shape[0] - 1e-9)) if indices.shape[0] else 0
    return np.sort(indices[order[:keep]])


def save_splits(path: str | Path, splits: dict[str, np.ndarray], **info) -> None:
    """Write named index arrays (and any provenance, e.g. the dataset sources and seed) as JSON."""
    payload = {"info": info, "splits": {name: np.asarray(v, dtype=np.int64).tolist() for name, v in splits.items()}}
    Path(path).write_text(json.dumps(payload))


def load_splits(path: str | Path) -> dict[str, np.ndarray]:
    payload = json.loads(Path(path).read_text())
    return {name: np.asarray(v, dtype=np.int64) for name, v in payload["splits"].items()}
