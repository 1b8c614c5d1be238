"""Recalibrating a bundled model's 95% interval on a new domain from a few labels (``crysdiff
calibrate``, issue 4): how many labelled crystals of the new domain it takes.

    python benchmarks/recalibrate.py [--case flla_novel perov5_gllbsc] [--samples 100] [--repeats 50]

Cases (data the bundled models were not trained on):
* ``flla_novel``: the formation-energy model on the ``matminer/flla_2015`` materials absent from
  mp2018 (MP 2015 energies: another correction scheme; the Table 2 second source, 1,116 crystals,
  deduplicated as the suite does it, ``benchmarks/suite_splits.py``);
* ``perov5_gllbsc``: the band-gap model (trained on PBE gaps) on the Perov-5 test crystals'
  indirect gap ``ind_gap``, computed with another functional (GLLB-SC), so the mean is biased
  there and the interval has to absorb the bias.

Each case draws S samples per crystal once, with the chain's own spread. Then, ``--repeats``
times for each calibration size n, n crystals picked at random fit the split-conformal scale
(:func:`crysdiff.uncertainty.conformal_interval_scale`, what ``crysdiff calibrate`` fits) and
the other crystals are scored: 95% coverage and mean interval width with the raw spread, with the
shipped scale (fitted on mp2018/val) and with the refitted one. Writes
benchmarks/results/recalibrate.json and recalibrate.png.
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
if __package__:  # imported as benchmarks.recalibrate (tests, other benchmarks)
    from .suite import git_commit, machine
    from .suite_splits import build_split
else:  # run as `python benchmarks/recalibrate.py`: this folder is sys.path[0]
    from suite import git_commit, machine
    from suite_splits import build_split

SIZES = [20, 50, 100, 200, 500]
CASES = {
    "flla_novel": ("formation_energy_per_atom", "formation_energy_per_atom",
                   "flla_2015 materials absent from mp2018 (MP 2015 energies)"),
    "perov5_gllbsc": ("band_gap", "ind_gap", "Perov-5 test, indirect gap from GLLB-SC (not PBE)"),
}


def case_sources(case: str, splits: Path) -> list[str]:
    if case == "flla_novel":
        files = build_split("flla_refine20", splits)  # its three parts are the 1,116 novel materials
        return [str(files.train), str(files.val), str(files.test)]
    if case == "perov5_gllbsc":
        return [str(DATA / "perov_5" / "test.csv.gz")]
    raise KeyError(case)


def scored(y, mean, low, high, scale: float, lower_bound: float | None) -> tuple[float, float]:
    """Coverage and mean width of the 95% intervals moved ``scale`` times about the mean (each
    quantile moves as the samples do, :func:`crysdiff.property_model.scale_spread`)."""
    lo, hi = mean + scale * (low - mean), mean + scale * (high - mean)
    if lower_bound is not None:
        lo, hi = np.maximum(lo, lower_bound), np.maximum(hi, lower_bound)
    return float(np.mean((y >= lo) & (y <= hi))), float(np.mean(hi - lo))


def run_case(case: str, samples: int, repeats: int, seed: int, splits: Path) -> dict:
    from crysdiff.calibrate import draw_labelled, interval95
    from crysdiff.predict import load
    from crysdiff.uncertainty import conformal_interval_scale

    model_name, column, description = CASES[case]
    predictor = load(model_name, device="cpu")
    predictor.calibrated = False
    shipped = float(predictor.model.interval_scale)
    start = time.perf_counter()
    _, y, drawn, skipped, mean = draw_labelled(predictor, case_sources(case, splits), column, samples, seed)
    seconds = time.perf_counter() - start
    _, low, high = interval95(drawn)  # scaled about the reported mean, as crysdiff predict does
    bound = predictor.lower_bound
    rng = np.random.default_rng(seed)
    sizes = []
    for n in [s for s in SIZES if s <= len(y) // 2]:
        rows = []
        for _ in range(repeats):
            order = rng.permutation(len(y))
            fit, test = order[:n], order[n:]
            scale, _ = conformal_interval_scale(y[fit], mean[fit], low[fit], high[fit])
            cov, width = scored(y[test], mean[test], low[test], high[test], scale, bound)
            rows.append((scale, cov, width))
        scales, covs, widths = map(np.asarray, zip(*rows))
        sizes.append({"n": n, "scale_median": float(np.median(scales)),
                      "coverage_mean": float(covs.mean()), "coverage_p5": float(np.quantile(covs, 0.05)),
                      "coverage_p95": float(np.quantile(covs, 0.95)),
                      "share_of_repeats_in_90_98": float(np.mean((covs >= 0.90) & (covs <= 0.98))),
                      "width_mean": float(widths.mean())})
    raw_cov, raw_width = scored(y, mean, low, high, 1.0, bound)
    shipped_cov, shipped_width = scored(y, mean, low, high, shipped, bound)
    full_scale, _ = conformal_interval_scale(y, mean, low, high)
    return {"case": case, "description": description, "model": model_name, "label_column": column,
            "unit": predictor.unit, "count": int(len(y)), "skipped": len(skipped), "samples": samples,
            "draw_seconds": seconds, "mae": float(np.mean(np.abs(mean - y))),
            "bias": float(np.mean(mean - y)),
            "raw": {"coverage": raw_cov, "width_mean": raw_width},
            "shipped": {"scale": shipped, "coverage": shipped_cov, "width_mean": shipped_width},
            "scale_fitted_on_all": full_scale, "recalibrated": sizes}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, r in enumerate(results):
        colour = f"C{k}"
        n = [s["n"] for s in r["recalibrated"]]
        ax.plot(n, [s["coverage_mean"] for s in r["recalibrated"]], "o-", color=colour,
                label=f"{r['model']} on {r['case']}: recalibrated")
        ax.fill_between(n, [s["coverage_p5"] for s in r["recalibrated"]], [s["coverage_p95"] for s in r["recalibrated"]],
                        color=colour, alpha=0.15)
        ax.axhline(r["shipped"]["coverage"], color=colour, ls="--", lw=1, label=f"{r['case']}: shipped scale")
    ax.axhspan(0.90, 0.98, color="grey", alpha=0.1)
    ax.axhline(0.95, color="k", lw=0.8)
    ax.set_xscale("log")
    ticks = sorted({s["n"] for r in results for s in r["recalibrated"]})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled crystals used to recalibrate")
    ax.set_ylabel("95% interval coverage on the rest")
    ax.set_title("Recalibrating on a new domain (band: 5-95% over repeats)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", type=Path, default=ROOT / "runs" / "suite" / "splits",
                        help="where the suite's splits are (written there when missing)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recalibrate.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    results = [run_case(case, args.samples, args.repeats, args.seed, args.splits) for case in args.case]
    defaults = {"samples": 100, "repeats": 50, "seed": 0}
    options = "".join(f" --{k} {getattr(args, k)}" for k, v in defaults.items() if getattr(args, k) != v)
    command = "python benchmarks/recalibrate.py" + (f" --case {' '.join(args.case)}" if args.case != list(CASES) else "") + options
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "repeats": args.repeats, "command": command,
                                    "git_commit": git_commit(), "machine": machine()}, indent=1))
    plot(results, args.out.with_suffix(".png"))
    for r in results:
        print(f"{r['model']} on {r['case']} ({r['count']} crystals): MAE {r['mae']:.4f} {r['unit']}, bias {r['bias']:+.4f}; "
              f"95% coverage raw {r['raw']['coverage']:.3f}, shipped scale {r['shipped']['scale']:.3f} "
              f"{r['shipped']['coverage']:.3f}")
        for s in r["recalibrated"]:
            print(f"  n={s['n']:4d}: scale {s['scale_median']:.3f}, coverage {s['coverage_mean']:.3f} "
                  f"[{s['coverage_p5']:.3f}, {s['coverage_p95']:.3f}], in [0.90, 0.98] in "
                  f"{100 * s['share_of_repeats_in_90_98']:.0f}% of repeats, width {s['width_mean']:.3f}")


if __name__ == "__main__":
    main()
