"""Prediction cost (issue 4): S samples of the T-step reverse chain per crystal, against one
deterministic forward pass of the encoder, side by side on the mp2018/val structures.

    python benchmarks/predict_cost.py [--model CKPT] [--samples 100] [--limit 1024]

Without --model a freshly initialised default model is timed (the cost does not depend on the
weights). Writes benchmarks/results/predict_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--limit", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

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
    encode_only()  # warm-up
    for _ in range(args.repeats):  # interleaved, so both see the same machine state
        for name, fn in (("encoder_forward", encode_only), ("predict", predict)):
            start = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - start)
    best = {name: min(values) for name, values in timings.items()}
    result = {
        "crystals": crystals, "samples": args.samples, "timesteps": timesteps, "batch_size": args.batch_size,
        "model": args.model or "default config, random weights", "threads": torch.get_num_threads(),
        "seconds": timings,
        "encoder_forward_crystals_per_s": crystals / best["encoder_forward"],
        "predict_crystals_per_s": crystals / best["predict"],
        "cost_ratio_predict_over_forward": best["predict"] / best["encoder_forward"],
        "command": "python benchmarks/predict_cost.py" + (f" --model {args.model}" if args.model else "")
                   + "".join(f" --{name.replace('_', '-')} {value}" for name, value in vars(args).items()
                             if name != "model" and value != parser.get_default(name)),
    }
    out = ROOT / "benchmarks" / "results" / "predict_cost.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"{crystals} mp2018/val crystals: encoder forward {result['encoder_forward_crystals_per_s']:.0f} crystals/s, "
          f"prediction with S={args.samples}, T={timesteps}: {result['predict_crystals_per_s']:.0f} crystals/s, "
          f"cost ratio {result['cost_ratio_predict_over_forward']:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
