"""Uncertainty of a fine-tuned model on a labelled set (issue 4): interval coverage at every nominal
level, and predicted spread against the actual error, with a reliability plot.

    python benchmarks/uncertainty.py --model formation_energy_per_atom [--data ../shared/data/mp2018/val.csv.gz] [--samples 100]

Writes benchmarks/results/uncertainty_<target>.json and benchmarks/results/reliability_<target>.png.
The central interval at level c is [q((1-c)/2), q((1+c)/2)] of the S samples of each crystal; a
calibrated model covers a fraction c of the targets. Crystals are also binned by predicted std
(equal-count bins): in each bin the RMSE of the mean should match the mean predicted std.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default=str(DATA / "mp2018" / "val.csv.gz"))
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--bins", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from crysdiff.cache import load_dataset
    from crysdiff.loader import make_loader
    from crysdiff.predict import load

    predictor = load(args.model, device="cpu")
    cache = load_dataset([args.data], progress=False)
    column = cache.label_names.index(predictor.target)
    labels = np.asarray(cache.labels[:, column], dtype=np.float64)
    indices = np.flatnonzero(np.isfinite(labels))
    generator = torch.Generator().manual_seed(args.seed)
    ys, samples = [], []
    start = time.perf_counter()
    for batch in make_loader(cache, indices, batch_size=64, targets=[predictor.target]):
        out = predictor.model.predict(batch, predictor.diffusion, num_samples=args.samples, generator=generator, keep_samples=True)
        ys.append(batch.y[:, 0].double().numpy())
        samples.append(out["samples"].numpy())
    seconds = time.perf_counter() - start
    y, samples = np.concatenate(ys), np.concatenate(samples)  # [B], [B, S]
    mean, std = samples.mean(axis=1), samples.std(axis=1, ddof=1)
    error = np.abs(mean - y)
    coverage = {}
    for level in LEVELS:
        lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=1)
        coverage[f"{level:g}"] = float(np.mean((y >= lo) & (y <= hi)))
    order = np.argsort(std)
    bins = []
    for part in np.array_split(order, args.bins):
        bins.append({"count": int(len(part)), "mean_predicted_std": float(std[part].mean()),
                     "rmse": float(np.sqrt(np.mean((mean[part] - y[part]) ** 2))), "mae": float(error[part].mean())})
    result = {
        "model": args.model, "target": predictor.target, "unit": predictor.unit, "data": args.data, "count": int(len(y)),
        "samples": args.samples, "timesteps": predictor.config.property.timesteps, "seed": args.seed,
        "mae": float(error.mean()), "rmse": float(np.sqrt(np.mean((mean - y) ** 2))),
        "coverage95": coverage["0.95"], "coverage_by_level": coverage,
        "mean_predicted_std": float(std.mean()), "spearman_std_vs_abs_error": _spearman(std, error),
        "std_bins": bins, "predict_seconds": seconds,
        "command": f"python benchmarks/uncertainty.py --model {args.model} --samples {args.samples}",
    }
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"uncertainty_{predictor.target}.json").write_text(json.dumps(result, indent=2))
    _plot(result, results / f"reliability_{predictor.target}.png")
    print(f"{predictor.target}: MAE {result['mae']:.4f} {predictor.unit}, 95% coverage {result['coverage95']:.3f}, "
          f"mean std {result['mean_predicted_std']:.4f}, Spearman(std, |error|) {result['spearman_std_vs_abs_error']:.2f}")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    levels = [float(k) for k in result["coverage_by_level"]]
    left.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated")
    left.plot(levels, list(result["coverage_by_level"].values()), marker="o", label="crysdiff")
    left.set_xlabel("nominal interval level")
    left.set_ylabel("fraction of targets inside")
    left.set_title(f"interval coverage (95%: {result['coverage95']:.3f})")
    left.legend()
    left.grid(alpha=0.3)
    stds = [b["mean_predicted_std"] for b in result["std_bins"]]
    rmses = [b["rmse"] for b in result["std_bins"]]
    top = max(stds + rmses) * 1.1
    right.plot([0, top], [0, top], color="grey", lw=1, ls="--", label="RMSE = predicted std")
    right.plot(stds, rmses, marker="o", label="bins of equal count")
    right.set_xlabel(f"mean predicted std ({result['unit']})")
    right.set_ylabel(f"RMSE of the mean ({result['unit']})")
    right.set_title("error against predicted spread")
    right.legend()
    right.grid(alpha=0.3)
    fig.suptitle(f"{result['target']} on {Path(result['data']).parent.name}/{Path(result['data']).name} "
                 f"({result['count']} crystals, S={result['samples']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
