"""Where a pre-training step's time goes: ``torch.profiler`` over a few full steps (joint-diffusion
loss, forward, backward, Adam) of the fast path on one batch of real cells, default ``DenoiserConfig``.

    python benchmarks/profile_step.py [--dataset mp2018] [--batch-size 16] [--steps 3] [--top 15] [--threads N] [--fused-adam]

Prints the matrix-product FLOPs of a step (``FlopCounterMode``), the operator calls per step (each a kernel launch on the CPU) and the top operators by self
time. Writes nothing: on a shared machine its times are a smoke-run picture, not a result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from denoiser_speed import DATA, count_flops, read_csv, training_step  # noqa: E402

from crysdiff.batching import collate_crystals  # noqa: E402
from crysdiff.denoiser import CrysDiffDenoiser, DenoiserConfig  # noqa: E402
from crysdiff.diffusion import DiffusionConfig, JointDiffusion  # noqa: E402


def profile_steps(step, batch, steps: int):
    """The profiler's averages over ``steps`` calls of ``step(batch)`` (after one warm-up call)."""
    step(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(batch)
    return prof.key_averages()


def leaf_calls(averages) -> int:
    """Operator calls that launch work themselves: ``aten::`` ops with self time, not wrappers."""
    return sum(e.count for e in averages if e.key.startswith("aten::") and e.self_cpu_time_total > 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mp2018", choices=["mp2018", "perov_5"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--fused-adam", action="store_true", help="Adam's fused kernel (train.fused_optimizer)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = collate_crystals(read_csv(DATA / args.dataset / "val.csv.gz", args.batch_size))
    torch.manual_seed(0)
    step = training_step(CrysDiffDenoiser(DenoiserConfig()), JointDiffusion(DiffusionConfig()), reference=False, fused=args.fused_adam)
    flops = count_flops(step, batch)
    averages = profile_steps(step, batch, args.steps)
    total = sum(e.self_cpu_time_total for e in averages)
    print(f"{args.dataset}, {args.batch_size} cells, {batch.num_nodes} atoms, {batch.edge_index.shape[1]} edges; "
          f"{args.steps} steps, torch threads {torch.get_num_threads()}; {flops / 1e9:.2f} GFLOP of matrix products per step")
    print(f"operator calls with self time per step: {leaf_calls(averages) / args.steps:.0f}; "
          f"self time per step {total / args.steps / 1e3:.1f} ms")
    for e in sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]:
        print(f"  {e.key:40s} {100 * e.self_cpu_time_total / total:5.1f}%  calls/step {e.count / args.steps:6.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
