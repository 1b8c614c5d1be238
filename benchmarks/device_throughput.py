"""Pre-training and prediction throughput on one device (the timing half of ``scripts/device_check.sh``).

Pre-training: crystals per second of full steps (joint-diffusion loss, forward, backward, Adam) of
the default denoiser on mp2018 cells, in float32 and under bf16 autocast: at batch 64 on the first
256 cells of mp2018/val (the cells and batch of the CPU figure in
``benchmarks/results/denoiser_speed.json``), then at batches doubling from 128 up to the largest
that fits (the cells of mp2018/val, repeated where a batch needs more). The doubling stops when a
step's peak memory passes 45% of the device's (the next would not fit), at ``--max-batch``, or at
the first out-of-memory error. Batches are moved to the device before the clock starts.

Prediction: crystals per second of ``crysdiff``'s bundled ``formation_energy_per_atom`` model with
``S`` samples of its full reverse chain, on the first ``--predict-crystals`` cells of mp2018/val, at
batch 64 (the CPU figure's batch, ``benchmarks/results/predict_cost.json``) and at ``--predict-batch``.

    python benchmarks/device_throughput.py --device cuda --data DIR/mp2018/val.csv.gz --out OUT.json

Writes the figures, the device's name, the torch version and the ratios to the CPU figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CPU_RESULTS = ROOT / "benchmarks" / "results"
if __package__:  # imported as benchmarks.device_throughput (tests, other benchmarks)
    from .denoiser_speed import timed_steps  # the CPU figure's timing loop
else:  # run as `python benchmarks/device_throughput.py`: this folder is sys.path[0]
    from denoiser_speed import timed_steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(cache, indices, batch_size: int, device: torch.device) -> list:
    from crysdiff.loader import make_loader

    return [batch.to(device) for batch in make_loader(cache, indices, batch_size=batch_size)]


def train_throughput(batches: list, device: torch.device, precision: str, seconds: float, config, diffusion) -> dict:
    """Crystals/s of full pre-training steps of a fresh denoiser (``config``) with ``diffusion``
    (a ``JointDiffusion`` on the device) cycling over ``batches``, and the peak memory of a step."""
    from crysdiff.denoiser import CrysDiffDenoiser

    torch.manual_seed(0)
    model = CrysDiffDenoiser(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = diffusion.loss(model, batch, generator=generator)["loss"]
        loss.backward()
        optimizer.step()
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for batch in batches[:2]:  # warm-up: kernels chosen, allocator filled
        if not torch.isfinite(step(batch)):
            raise RuntimeError(f"non-finite loss at batch {int(batch.num_atoms.shape[0])} in {precision}")
    row = timed_steps(step, batches, seconds, min_steps=3, sync=lambda: _sync(device))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return {**row, "peak_memory_gb": peak / 1e9}


def largest_batch(cache, device: torch.device, precision: str, seconds: float, max_batch: int, config, diffusion) -> dict:
    """Throughput at batches 128, 256, ... up to the largest that fits (see the module docstring)."""
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    rows, size = [], min(128, max_batch)
    while size <= max_batch:
        indices = np.arange(2 * size) % len(cache)  # two different batches of this size
        try:
            batches = _batches(cache, indices, size, device)
            row = {"batch_size": size, **train_throughput(batches, device, precision, seconds, config, diffusion)}
        except torch.cuda.OutOfMemoryError as error:
            rows.append({"batch_size": size, "out_of_memory": str(error).splitlines()[0]})
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print(f"  {precision} batch {size}: {row['crystals_per_s']:.0f} crystals/s, peak {row['peak_memory_gb']:.1f} GB",
              flush=True)
        if total is not None and row["peak_memory_gb"] * 1e9 > 0.45 * total:
            break
        size *= 2
    fitted = [row for row in rows if "crystals_per_s" in row]
    best = max(fitted, key=lambda row: row["batch_size"]) if fitted else None
    return {"largest_batch": best["batch_size"] if best else None, "at_largest": best, "sizes": rows}


def predict_throughput(cache, device: torch.device, samples: int, count: int, batch_size: int) -> dict:
    from crysdiff.predict import load

    predictor = load("formation_energy_per_atom", device=str(device))
    batches = _batches(cache, np.arange(min(count, len(cache))), batch_size, device)
    generator = torch.Generator(device=device).manual_seed(0)
    predictor.sample(batches[0], samples, generator)  # warm-up
    _sync(device)
    start = time.perf_counter()
    means = [predictor.sample(batch, samples, generator)["mean"] for batch in batches]
    _sync(device)
    elapsed = time.perf_counter() - start
    if not all(torch.isfinite(m).all() for m in means):
        raise RuntimeError("non-finite predictions")
    crystals = sum(int(b.num_atoms.shape[0]) for b in batches)
    return {"crystals": crystals, "batch_size": batch_size, "samples": samples,
            "timesteps": predictor.config.property.timesteps, "seconds": elapsed, "crystals_per_s": crystals / elapsed}


def _cpu_reference() -> dict:
    """The 2-core CPU figures committed in ``benchmarks/results`` (same cells, batch 64)."""
    out = {}
    try:
        speed = json.loads((CPU_RESULTS / "denoiser_speed.json").read_text())
        out["pretrain_fp32_batch64_crystals_per_s"] = speed["datasets"]["mp2018"]["fast"]["crystals_per_s"]
        out["pretrain_source"] = "benchmarks/results/denoiser_speed.json (mp2018, fast path, threads %s)" % speed.get("threads")
        cost = json.loads((CPU_RESULTS / "predict_cost.json").read_text())
        out["predict_crystals_per_s"] = cost["predict_crystals_per_s"]
        out["predict_source"] = f"benchmarks/results/predict_cost.json ({cost.get('command', '')})"
    except (OSError, KeyError, ValueError) as error:
        out["missing"] = str(error)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data", type=Path, required=True, help="mp2018/val.csv.gz (or an excerpt of it)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    parser.add_argument("--cells", type=int, default=256, help="cells of the batch-64 figure (the CPU figure's: 256)")
    parser.add_argument("--max-batch", type=int, default=16384)
    parser.add_argument("--small-model", action="store_true",
                        help="time a small denoiser instead of the default one (the CPU check's toy size)")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--predict-crystals", type=int, default=1024)
    parser.add_argument("--predict-batch", type=int, default=1024)
    args = parser.parse_args(argv)

    import crysdiff
    from crysdiff.cache import load_dataset

    device = torch.device(args.device)
    cache = load_dataset([args.data], progress=False)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "numpy": np.__version__,
        "python": platform.python_version(), "crysdiff": crysdiff.__version__, "threads": torch.get_num_threads(),
        "data": str(args.data), "cells": len(cache), "pretrain": {}, "predict": {},
    }
    from crysdiff.denoiser import DenoiserConfig
    from crysdiff.diffusion import DiffusionConfig, JointDiffusion

    diffusion = JointDiffusion(DiffusionConfig()).to(device)  # its constants take a second or two: once
    config = DenoiserConfig(hidden_dim=16, num_layers=1, num_frequencies=4, time_dim=8) if args.small_model else DenoiserConfig()
    result["model"] = config.__dict__
    first = np.arange(min(args.cells, len(cache)))

    def save():  # after every measurement: a run stopped at its time limit keeps what it measured
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    for precision in ("32-true", "bf16-mixed"):
        row = train_throughput(_batches(cache, first, 64, device), device, precision, args.seconds, config, diffusion)
        print(f"pre-training {precision}, batch 64 on {len(first)} cells: {row['crystals_per_s']:.0f} crystals/s", flush=True)
        result["pretrain"][precision] = {"batch64": row,
                                         **largest_batch(cache, device, precision, args.seconds, args.max_batch, config, diffusion)}
        save()
    for batch_size in sorted({64, args.predict_batch}):
        row = predict_throughput(cache, device, args.samples, args.predict_crystals, batch_size)
        print(f"prediction S={args.samples}, batch {batch_size}: {row['crystals_per_s']:.0f} crystals/s", flush=True)
        result["predict"][f"batch{batch_size}"] = row
        save()
    reference = result["cpu_reference"] = _cpu_reference()
    if "missing" not in reference and device.type == "cuda":
        best = max(result["predict"].values(), key=lambda row: row["crystals_per_s"])
        result["speedup_over_cpu"] = {
            "pretrain_bf16_batch64": result["pretrain"]["bf16-mixed"]["batch64"]["crystals_per_s"]
            / reference["pretrain_fp32_batch64_crystals_per_s"],
            "pretrain_bf16_largest": (result["pretrain"]["bf16-mixed"]["at_largest"] or {}).get("crystals_per_s", 0.0)
            / reference["pretrain_fp32_batch64_crystals_per_s"],
            "predict_best": best["crystals_per_s"] / reference["predict_crystals_per_s"],
        }
        print("speed-up over the 2-core CPU: " + ", ".join(f"{k} {v:.1f}x" for k, v in result["speedup_over_cpu"].items()))
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
