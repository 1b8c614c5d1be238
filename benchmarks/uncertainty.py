"""Uncertainty of a fine-tuned model on a labelled set (issue 4): interval coverage at every nominal
level, and predicted spread against the actual error, with a reliability plot.

    python benchmarks/uncertainty.py --model formation_energy_per_atom [--data ../shared/data/mp2018/val.csv.gz] [--samples 100]
    python benchmarks/uncertainty.py --model a.ckpt b.ckpt c.ckpt --data test.csv --out benchmarks/results/x.json

Writes benchmarks/results/uncertainty_<target>.json (or --out) and the reliability plot beside it
(reliability_<target>.png, or --out with .png). Several --model paths are scored as an ensemble
(S samples from each, pooled; see crysdiff.predict), and each member alone as well.
The central interval at level c is [q((1-c)/2), q((1+c)/2)] of the S samples of each crystal; a
calibrated model covers a fraction c of the targets. Crystals are also binned by predicted std
(equal-count bins): in each bin the RMSE of the mean should match the mean predicted std.

Three readings of the same draws are scored:
* ``raw``: the chain's own spread (``crysdiff predict --raw-interval``);
* ``calibrated_stored``: moved by each model's stored ``interval_scale`` (what ``crysdiff
  predict`` reports). When ``--data`` is the set that fine-tuning calibrated on (mp2018/val for the
  bundled models), this coverage is in-sample (near 95% by construction, up to the number of samples);
* ``calibrated_crossfit``: the honest check on such a set. The crystals are split into two seeded
  halves; each half is moved by the scale fitted (as fine-tuning fits it,
  :func:`crysdiff.uncertainty.conformal_interval_scale`) on the other half only
  (:func:`crysdiff.calibrate.crossfit_calibrate`, also what ``crysdiff calibrate`` reports).
The top-level ``coverage95``, ``mean_predicted_std`` and bins are the ``calibrated_crossfit`` ones
for a single calibrated model, else the raw ones (``reading`` says which).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from crysdiff.calibrate import crossfit_calibrate, draw_labelled
from crysdiff.uncertainty import scale_spread

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, nargs="+", help="a model, or several for an ensemble")
    parser.add_argument("--data", default=str(DATA / "mp2018" / "val.csv.gz"))
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--bins", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/uncertainty_<target>.json)")
    args = parser.parse_args()

    from crysdiff.predict import load

    predictor = load(args.model, device="cpu")
    predictor.calibrated = False  # draw the chain's own spread; the calibrated readings move it below
    y, samples, mean, seconds = draw(predictor, args.data, args.samples, args.seed)
    scales = [member.model.interval_scale for member in predictor.members]
    readings = {"raw": score(y, samples, args.bins, mean)}
    if len(scales) == 1 and scales[0] != 1.0:
        moved = scale_spread(torch.from_numpy(samples), torch.from_numpy(mean), scales[0], predictor.lower_bound).numpy()
        crossfit, fold_scales = crossfit_calibrate(y, samples, predictor.lower_bound, args.seed, mean=mean)
        readings["calibrated_stored"] = {"interval_scale": scales[0], **score(y, moved, args.bins, mean)}
        readings["calibrated_crossfit"] = {"fold_scales": fold_scales, **score(y, crossfit, args.bins, mean)}
    reading = "calibrated_crossfit" if "calibrated_crossfit" in readings else "raw"
    result = {"model": args.model if len(args.model) > 1 else args.model[0], "target": predictor.target,
              "unit": predictor.unit, "data": args.data, "count": int(len(y)), "samples": args.samples,
              "timesteps": predictor.config.property.timesteps, "seed": args.seed,
              "reading": reading, **{k: v for k, v in readings[reading].items() if k not in ("fold_scales",)},
              "readings": readings, "predict_seconds": seconds,
              "command": f"python benchmarks/uncertainty.py --model {' '.join(args.model)} --samples {args.samples}"
                         + (f" --data {args.data}" if args.data != parser.get_default("data") else "")
                         + (f" --out {args.out}" if args.out else "")}
    if len(args.model) > 1:
        per_member, result["std_models"] = split_members(samples, len(args.model))
        result["members"] = [{"model": m, **{k: v for k, v in score(y, s, args.bins).items() if k != "std_bins"}}
                             for m, s in zip(args.model, per_member)]
    out = args.out or ROOT / "benchmarks" / "results" / f"uncertainty_{predictor.target}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    _plot(result, out.with_suffix(".png") if args.out else out.parent / f"reliability_{predictor.target}.png")
    for name, r in readings.items():
        print(f"{predictor.target} [{name}]: MAE {r['mae']:.4f} {predictor.unit}, 95% coverage {r['coverage95']:.3f}, "
              f"mean std {r['mean_predicted_std']:.4f}, Spearman(std, |error|) {r['spearman_std_vs_abs_error']:.2f}")
    for member in result.get("members", []):
        print(f"  member {member['model']}: MAE {member['mae']:.4f}, 95% coverage {member['coverage95']:.3f}, "
              f"mean std {member['mean_predicted_std']:.4f}")


def draw(predictor, data: str | Path, samples: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Targets ``[B]``, samples ``[B, S * members]``, the reported predictions ``[B]`` (the samples'
    mean, or the exact mean of an ``exact_mean`` model) and seconds, for the labelled crystals of ``data``."""
    start = time.perf_counter()
    _, y, drawn, _, mean = draw_labelled(predictor, [data], predictor.target, samples, seed)
    return y, drawn, mean, time.perf_counter() - start


def split_members(samples: np.ndarray, members: int) -> tuple[list[np.ndarray], float]:
    """An ensemble's pooled samples ``[B, S * members]`` per member, and the mean over crystals of
    the spread of the members' means (``std_models``)."""
    per_member = np.split(samples, members, axis=1)
    return per_member, float(np.mean(np.std([own.mean(axis=1) for own in per_member], axis=0, ddof=1)))


def score(y: np.ndarray, samples: np.ndarray, bins: int, mean: np.ndarray | None = None) -> dict:
    """Accuracy and calibration of samples ``[B, S]`` against targets ``[B]``. ``mean``: the
    prediction, when it is not the samples' mean (calibrated samples clipped at a lower bound keep
    the chain's mean, as ``crysdiff predict`` reports it)."""
    std = samples.std(axis=1, ddof=1)
    mean = samples.mean(axis=1) if mean is None else mean
    error = np.abs(mean - y)
    coverage = {}
    for level in LEVELS:
        lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=1)
        coverage[f"{level:g}"] = float(np.mean((y >= lo) & (y <= hi)))
    order = np.argsort(std)
    std_bins = [{"count": int(len(part)), "mean_predicted_std": float(std[part].mean()),
                 "rmse": float(np.sqrt(np.mean((mean[part] - y[part]) ** 2))), "mae": float(error[part].mean())}
                for part in np.array_split(order, bins)]
    return {"mae": float(error.mean()), "rmse": float(np.sqrt(np.mean((mean - y) ** 2))),
            "coverage95": coverage["0.95"], "coverage_by_level": coverage, "mean_predicted_std": float(std.mean()),
            "spearman_std_vs_abs_error": _spearman(std, error), "std_bins": std_bins}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    readings = result.get("readings") or {"raw": result}
    shown = {"raw": "chain's own spread", "calibrated_crossfit": "calibrated (scale from the other half)"}
    left.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="ideal")
    top = 0.0
    for name, label in shown.items():
        if name not in readings:
            continue
        r = readings[name]
        levels = [float(k) for k in r["coverage_by_level"]]
        left.plot(levels, list(r["coverage_by_level"].values()), marker="o", label=f"{label}: 95% → {r['coverage95']:.3f}")
        stds = [b["mean_predicted_std"] for b in r["std_bins"]]
        rmses = [b["rmse"] for b in r["std_bins"]]
        right.plot(stds, rmses, marker="o", label=label)
        top = max([top, *stds, *rmses])
    left.set_xlabel("nominal interval level")
    left.set_ylabel("fraction of targets inside")
    left.set_title("interval coverage")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    top *= 1.1
    right.plot([0, top], [0, top], color="grey", lw=1, ls="--", label="RMSE = predicted std")
    right.set_xlabel(f"mean predicted std ({result['unit']})")
    right.set_ylabel(f"RMSE of the mean ({result['unit']})")
    right.set_title("error against predicted spread (equal-count bins)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(f"{result['target']} on {Path(result['data']).parent.name}/{Path(result['data']).name} "
                 f"({result['count']} crystals, S={result['samples']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
