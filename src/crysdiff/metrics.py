"""Test metrics of a regression, shared by fine-tuning, the benchmark suite and the peer models."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["regression_metrics"]


def regression_metrics(y, mean, lo=None, hi=None, std=None) -> dict[str, float]:
    """``count``, MAE, RMSE, R² of predictions ``mean`` for targets ``y`` and, when given, the
    coverage of the intervals ``[lo, hi]`` and the mean predicted ``std`` with its correlation to the
    absolute error. Metrics that need crystals (or, for R², targets that vary) are NaN without them."""
    y, mean = np.asarray(y, dtype=np.float64), np.asarray(mean, dtype=np.float64)
    error = mean - y
    total = float(np.sum((y - y.mean()) ** 2)) if y.size else 0.0
    out = {
        "count": int(y.size),
        "mae": float(np.mean(np.abs(error))) if y.size else math.nan,
        "rmse": float(np.sqrt(np.mean(error**2))) if y.size else math.nan,
        "r2": float(1 - np.sum(error**2) / total) if total > 0 else math.nan,
    }
    if lo is not None and hi is not None and np.all(np.isfinite(lo)):
        out["coverage95"] = float(np.mean((y >= lo) & (y <= hi)))
    if std is not None and np.all(np.isfinite(std)):
        out["mean_std"] = float(np.mean(std))
        out["std_abs_error_corr"] = float(np.corrcoef(std, np.abs(error))[0, 1]) if y.size > 2 else math.nan
    return out
