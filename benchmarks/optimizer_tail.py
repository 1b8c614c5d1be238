"""The part of a training step after the backward pass, alone: gradient-norm clip, AdamW step and
weight-EMA update of the default denoiser's 53 parameter tensors, as the engine runs them, for the
per-tensor path and ``train.flat_parameters`` (:mod:`crysdiff.flat_adamw`), each with and without
AdamW's fused kernel (``train.fused_optimizer``).

    python benchmarks/optimizer_tail.py [--repeats 30] [--steps 20] [--threads 1] [--out FILE.json]

The gradients are fixed random tensors (the tail's cost does not depend on their values); the variants
run in turns, their order reversed every other repeat, each repeat ``--steps`` tails; milliseconds per
tail from the median repeat. This is the cost ``--levers flat`` changes in
``benchmarks/denoiser_speed.py``, without the forward and backward passes whose noise hides it there on
a loaded machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as the CLI and denoiser_speed.py run

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from crysdiff.config import TrainConfig
from crysdiff.denoiser import CrysDiffDenoiser, DenoiserConfig
from crysdiff.engine import _adamw, averaged_model

VARIANTS = {"per_tensor": (False, False), "flat": (True, False), "per_tensor_fused": (False, True),
            "flat_fused": (True, True)}


def tail_step(flat: bool, fused: bool):
    """``tail()``: clip, AdamW step and EMA update of a default denoiser with fixed gradients."""
    torch.manual_seed(0)
    model = CrysDiffDenoiser(DenoiserConfig())
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    defaults = TrainConfig()
    config = TrainConfig(lr=1e-4, flat_parameters=flat, fused_optimizer=fused)
    optimizer = _adamw(model.parameters(), config)
    averaged = averaged_model(model, defaults.ema_decay, flat=flat)

    def tail():
        if not flat:  # Lightning's gradient_clip_val; FlatAdamW clips inside its step
            torch.nn.utils.clip_grad_norm_(model.parameters(), defaults.grad_clip)
        optimizer.step()
        averaged.update_parameters(model)

    return tail, model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20, help="tails per timed repeat")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tails = {label: tail_step(*options) for label, options in VARIANTS.items()}
    model = tails["per_tensor"][1]
    seconds = {label: [] for label in tails}
    for repeat in range(args.repeats):
        for label in (list(tails) if repeat % 2 == 0 else list(reversed(tails))):
            start = time.perf_counter()
            for _ in range(args.steps):
                tails[label][0]()
            seconds[label].append((time.perf_counter() - start) / args.steps)
    results = {"command": "python benchmarks/optimizer_tail.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "parameter_tensors": len(list(model.parameters())),
               "parameters": sum(p.numel() for p in model.parameters()),
               "threads": torch.get_num_threads(), "load_average_at_start": os.getloadavg(),
               "ms_per_tail": {label: 1e3 * float(np.median(s)) for label, s in seconds.items()},
               "ms_per_tail_min": {label: 1e3 * min(s) for label, s in seconds.items()}}
    base = results["ms_per_tail"]["per_tensor"]
    for label, ms in results["ms_per_tail"].items():
        print(f"{label}: {ms:.2f} ms per tail (median; min {results['ms_per_tail_min'][label]:.2f}), "
              f"{base / ms:.2f}x the per-tensor tail")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
