"""Prediction cost (issue 4): S samples of the T-step reverse chain per crystal, against one
deterministic forward pass of the encoder, side by side on the mp2018/val structures.

    python benchmarks/predict_cost.py [--model CKPT] [--samples 100] [--limit 1024] [--repeats 5]

Without --model a freshly initialised default model is timed (the cost does not depend on the
weights). Each repeat times the encoder alone, then prediction (interleaved, so both see the same
machine state); inside prediction, timers around the encoder forward (``model.encode``), the head's
per-step coefficients (``chain_coefficients``, affine heads) and the y-chain (``sample_affine`` or
``sample``, or for models with ``exact_mean`` the draws from its end point's law,
``sample_affine_endpoint``) break the cost down, the rest being everything else (summaries, quantiles, batch
handling). Medians over the repeats are recorded beside the best. Writes
benchmarks/results/predict_cost.json (``--out`` elsewhere; a smoke run: ``--limit 8 --repeats 2``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


PARTS = ("encoder_forward", "head_coefficients", "y_chain")


@contextmanager
def part_timers(model, diffusion, totals: dict):
    """Within the block, calls of the encoder, the head's chain coefficients and the y-chain add their
    seconds to ``totals[part]`` (instance attributes shadow the methods; removed on exit)."""
    targets = [(model, "encode", "encoder_forward"), (model.head, "chain_coefficients", "head_coefficients"),
               (diffusion, "sample_affine", "y_chain"), (diffusion, "sample", "y_chain"),
               (diffusion, "sample_affine_endpoint", "y_chain")]
    wrapped = []
    for owner, name, part in targets:
        method = getattr(owner, name, None)
        if method is None:
            continue

        def timed(*args, _method=method, _part=part, **kwargs):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                totals[_part] += time.perf_counter() - start

        object.__setattr__(owner, name, timed)
        wrapped.append((owner, name))
    try:
        yield totals
    finally:
        for owner, name in wrapped:
            object.__delattr__(owner, name)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--limit", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--exact-mean", action="store_true",
                        help="predict as models fine-tuned with exact_mean do (their default since 2026-12-02), "
                             "for a --model written without it")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict_cost.json")
    args = parser.parse_args(argv)

    from crysdiff.cache import load_dataset
    from crysdiff.card import PropertyDiffusion
    from crysdiff.finetune import FinetuneConfig, build_property_model
    from crysdiff.loader import make_loader

    if args.model:
        from crysdiff.predict import load

        predictor = load(args.model, device="cpu")
        model, diffusion, timesteps = predictor.model, predictor.diffusion, predictor.config.property.timesteps
    else:
        config = FinetuneConfig(target="formation_energy_per_atom")
        model, diffusion, timesteps = build_property_model(config).eval(), PropertyDiffusion(config.property), config.property.timesteps
    if args.exact_mean:
        model.exact_mean = True
    cache = load_dataset([DATA / "mp2018" / "val.csv.gz"], progress=False)
    indices = np.arange(min(args.limit, len(cache)))
    batches = list(make_loader(cache, indices, batch_size=args.batch_size))
    crystals = sum(b.num_atoms.shape[0] for b in batches)

    def encode_only():
        with torch.no_grad():
            for batch in batches:
                model.encode(batch)

    def predict():
        generator = torch.Generator().manual_seed(0)
        for batch in batches:
            model.predict(batch, diffusion, num_samples=args.samples, generator=generator)

    timings = {"encoder_forward": [], "predict": []}
    breakdown = {part: [] for part in (*PARTS, "rest")}
    encode_only()  # warm-up
    for _ in range(args.repeats):  # interleaved, so both see the same machine state
        start = time.perf_counter()
        encode_only()
        timings["encoder_forward"].append(time.perf_counter() - start)
        totals = dict.fromkeys(PARTS, 0.0)
        with part_timers(model, diffusion, totals):
            start = time.perf_counter()
            predict()
            timings["predict"].append(time.perf_counter() - start)
        for part in PARTS:
            breakdown[part].append(totals[part])
        breakdown["rest"].append(timings["predict"][-1] - sum(totals.values()))
    best = {name: min(values) for name, values in timings.items()}
    median = {name: float(np.median(values)) for name, values in timings.items()}
    result = {
        "crystals": crystals, "samples": args.samples, "timesteps": timesteps, "batch_size": args.batch_size,
        "model": args.model or "default config, random weights", "exact_mean": bool(model.exact_mean),
        "threads": torch.get_num_threads(),
        "seconds": timings,
        "encoder_forward_crystals_per_s": crystals / best["encoder_forward"],
        "predict_crystals_per_s": crystals / best["predict"],
        "cost_ratio_predict_over_forward": best["predict"] / best["encoder_forward"],
        "median_seconds": median,
        "cost_ratio_median": median["predict"] / median["encoder_forward"],
        "predict_breakdown_seconds": breakdown,
        # each part of prediction (median over repeats) in units of the encoder-alone forward (median)
        "predict_breakdown_over_forward": {part: float(np.median(v)) / median["encoder_forward"] for part, v in breakdown.items()},
        "command": "python benchmarks/predict_cost.py" + (f" --model {args.model}" if args.model else "")
                   + "".join(f" --{name.replace('_', '-')} {value}" for name, value in vars(args).items()
                             if name not in ("model", "exact_mean") and value != parser.get_default(name))
                   + (" --exact-mean" if args.exact_mean else ""),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{crystals} mp2018/val crystals: encoder forward {result['encoder_forward_crystals_per_s']:.0f} crystals/s, "
          f"prediction with S={args.samples}, T={timesteps}: {result['predict_crystals_per_s']:.0f} crystals/s, "
          f"cost ratio {result['cost_ratio_predict_over_forward']:.2f}x best, {result['cost_ratio_median']:.2f}x median "
          f"of {args.repeats} (target <= 1.3x)")
    print("  prediction's parts (median, in encoder forwards): "
          + ", ".join(f"{part} {value:.2f}" for part, value in result["predict_breakdown_over_forward"].items()))


if __name__ == "__main__":
    main()
