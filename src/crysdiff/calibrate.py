"""Refit a fine-tuned model's 95% interval on labelled crystals it has not seen (``crysdiff calibrate``).

Fine-tuning fits one split-conformal factor for the spread of the chain's samples on its validation
crystals (:func:`crysdiff.uncertainty.conformal_interval_scale`) and stores it in the checkpoint;
``crysdiff predict`` moves every sample that many times further from the crystal's mean. The
factor holds for new crystals drawn like the validation ones. A model taken to another domain
(another functional, another family of compounds, measured values) can be over- or under-confident
there, and a few dozen to a few hundred labelled crystals of that domain are enough to refit the
factor. Only the interval changes: the weights, hence the mean prediction, stay as they were.

The report states the coverage of the 95% interval on the given crystals with the chain's own
spread (``raw``), with the model's stored factor (``before``) and with the new one (``after``,
in-sample, at least 95% by construction) and, as the honest estimate of what new crystals will
see, a two-fold cross-fit: each half moved by the factor fitted on the other half only.
"""

from __future__ import annotations

import datetime
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crysdiff.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from crysdiff.uncertainty import LEVEL, conformal_interval_scale, interval95, scale_spread

__all__ = ["Calibration", "calibrate", "crossfit_calibrate", "draw_labelled", "interval95", "MIN_CRYSTALS"]

# ceil((N + 1) 0.95) <= N needs N >= 19: with fewer crystals no factor guarantees 95% coverage
MIN_CRYSTALS = 20


@dataclass
class Calibration:
    """A refitted interval: the new ``scale`` and a ``report`` (JSON-ready) of what it was fitted on
    and how it covers. :meth:`write` stores it in a copy of the model's checkpoint."""

    model_path: Path
    scale: float
    report: dict

    def write(self, out: str | Path, overwrite: bool = False) -> Path:
        """A copy of the model's checkpoint with the new scale (the model's ``y_interval_scale``, and
        ``normalizer.interval_scale`` for the record) and
        this report appended to its ``calibrations``. Never writes over the model itself, nor over
        an existing file unless ``overwrite``."""
        out = Path(out)
        if out.exists() and out.resolve() == self.model_path.resolve():
            raise ValueError(f"{out}: is the model being calibrated; write the calibrated copy to another path")
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out}: exists; choose another --out or pass --force to replace it")
        payload = load_checkpoint(self.model_path, kind="finetune")
        from crysdiff.restore import stored_state

        normalizer = dict(payload["normalizer"], interval_scale=self.scale)
        state = stored_state(payload)
        state["y_interval_scale"] = torch.tensor(float(self.scale), dtype=torch.float64)  # what the model reads
        kept = {k: v for k, v in payload.items()
                if k not in ("format", "format_version", "crysdiff_version", "kind", "config", "state_dict", "normalizer")}
        kept["calibrations"] = list(payload.get("calibrations", [])) + [self.report]
        return save_checkpoint(out, kind="finetune", config=payload["config"], state_dict=state,
                               normalizer=normalizer, **kept)


def draw_labelled(predictor, sources, column: str, samples: int, seed: int = 0, batch_size: int = 64,
                  progress: bool = False) -> tuple[list[str], np.ndarray, np.ndarray, list[dict], np.ndarray]:
    """The ids, targets ``[B]`` and samples ``[B, S * members]`` (in the model's unit, with the
    predictor's own ``calibrated`` setting) of the crystals of ``sources`` that have a value in the
    label ``column``, the records that could not be read (``dict(source, record, reason)``), and the
    predictions ``[B]`` the predictor reports (the samples' mean, or the chain's exact mean for a
    model fine-tuned with ``exact_mean``: the centre its interval is scaled about)."""
    from crysdiff.cache import load_dataset
    from crysdiff.loader import make_loader

    cache = load_dataset(list(sources), settings=predictor.validation_settings, cell=predictor.cell, progress=progress)
    if column not in cache.label_names:
        raise ValueError(f"{', '.join(map(str, sources))}: no label column {column!r} (labels: "
                         f"{', '.join(cache.label_names) or 'none'}); name the column holding "
                         f"{predictor.target} with --target")
    labels = np.asarray(cache.labels[:, cache.label_names.index(column)], dtype=np.float64)
    indices = np.flatnonzero(np.isfinite(labels))
    generator = torch.Generator(device=predictor.device).manual_seed(seed)
    ids, ys, draws, means = [], [], [], []
    for batch in make_loader(cache, indices, batch_size=batch_size, edges=predictor.edge_settings, targets=[column]):
        ids += [cache.id(int(i)) for i in batch.index]
        ys.append(batch.y[:, 0].double().numpy())
        out = predictor.sample(batch.to(predictor.device), samples, generator)
        draws.append(out["samples"].double().cpu().numpy())
        means.append(out["mean"].double().cpu().numpy())
    if not ids:
        return [], np.zeros(0), np.zeros((0, samples)), cache.skipped, np.zeros(0)
    return ids, np.concatenate(ys), np.concatenate(draws), cache.skipped, np.concatenate(means)


def _coverage(y: np.ndarray, samples: np.ndarray) -> float:
    _, low, high = interval95(samples)
    return float(np.mean((y >= low) & (y <= high)))


def _moved(samples: np.ndarray, scale: float, lower_bound: float | None, mean: np.ndarray | None = None) -> np.ndarray:
    """``samples`` ``[B, S]`` moved ``scale`` times further from ``mean`` (default: their own mean)."""
    mean = samples.mean(axis=1) if mean is None else mean
    return scale_spread(torch.from_numpy(samples), torch.from_numpy(mean), scale, lower_bound).numpy()


def crossfit_calibrate(y: np.ndarray, samples: np.ndarray, lower_bound: float | None, seed: int,
                       folds: int = 2, mean: np.ndarray | None = None) -> tuple[np.ndarray, list[float]]:
    """Samples ``[B, S]`` with each fold's spread moved by the split-conformal scale fitted on the
    other folds' crystals only (seeded folds), and the scale each fold got: an out-of-sample check
    of calibrating on crystals like these. ``mean`` ``[B]``: the predictions the spread is scaled
    about, as the model reports them (default: the samples' mean)."""
    own, low, high = interval95(samples)
    mean = own if mean is None else mean
    parts = np.array_split(np.random.default_rng(seed).permutation(len(y)), folds)
    moved, fold_scales = samples.copy(), []
    for k, part in enumerate(parts):
        rest = np.concatenate([p for j, p in enumerate(parts) if j != k])
        scale, _ = conformal_interval_scale(y[rest], mean[rest], low[rest], high[rest], LEVEL)
        moved[part] = _moved(samples[part], scale, lower_bound, mean[part])
        fold_scales.append(scale)
    return moved, fold_scales


def calibrate(model: str | Path, sources, *, target: str | None = None, samples: int = 100, seed: int = 0,
              batch_size: int = 64, device: str | None = None, progress: bool = False) -> Calibration:
    """Fit the interval scale of ``model`` (a fine-tuned checkpoint or bundled model name) on the
    labelled crystals of ``sources``; ``target`` names their label column (default: the model's
    target). ``samples`` per crystal as ``crysdiff predict`` will draw them (the scale depends a
    little on it: percentiles of fewer samples are noisier and wider)."""
    from crysdiff import __version__
    from crysdiff.bundled import resolve_model
    from crysdiff.predict import load

    path = resolve_model(model)
    predictor = load(path, device=device)
    if not predictor.model.is_diffusion:
        raise CheckpointError(f"{path}: has a {predictor.config.head.kind!r} head, which predicts a value without "
                              f"an interval; only diffusion heads can be calibrated")
    sources = [str(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources)]
    column = target or predictor.target
    seen = {str(Path(s).resolve()) for s in predictor.info.get("data", {}).get("train_sources", [])}
    overlap = [s for s in sources if str(Path(s).resolve()) in seen]
    if overlap:
        print(f"crysdiff calibrate: warning: {', '.join(overlap)} was part of the model's training data; "
              f"an interval calibrated on crystals the model was fitted to comes out too narrow", file=sys.stderr)
    predictor.calibrated = False  # draw the chain's own spread; the scales are applied below
    ids, y, drawn, skipped, mean = draw_labelled(predictor, sources, column, samples, seed, batch_size, progress)
    if len(y) < MIN_CRYSTALS:
        raise ValueError(f"{', '.join(sources)}: {len(y)} crystals with a {column!r} value; calibrating a 95% "
                         f"interval needs at least {MIN_CRYSTALS}")
    bound = predictor.lower_bound
    _, low, high = interval95(drawn)
    scale, fit = conformal_interval_scale(y, mean, low, high, LEVEL)  # about the reported mean, as fine-tuning fits it
    previous = float(predictor.model.interval_scale)
    crossfit, fold_scales = crossfit_calibrate(y, drawn, bound, seed, mean=mean)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "crysdiff_version": __version__, "model": str(path), "sources": sources, "label_column": column,
        "target": predictor.target, "unit": predictor.unit, "count": int(len(y)),
        "skipped": len(skipped), "samples": samples, "seed": seed,
        "mae": float(np.mean(np.abs(mean - y))),
        "previous_scale": previous, "scale": scale,
        "coverage95_raw": _coverage(y, drawn),
        "coverage95_before": _coverage(y, _moved(drawn, previous, bound, mean)),
        "coverage95_after": _coverage(y, _moved(drawn, scale, bound, mean)),
        "coverage95_crossfit": _coverage(y, crossfit), "crossfit_fold_scales": fold_scales,
        "uncoverable": fit.get("uncoverable", 0),
    }
    report["skipped_records"] = skipped[:20]
    return Calibration(model_path=path, scale=scale, report=report)
