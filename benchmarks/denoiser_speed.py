"""Training throughput of the denoiser's fast path against the straightforward reference, its FLOP
rate against the machine's matrix-product rate, and memory on the largest COD cell.

Throughput: crystals per second of a full pre-training step (joint-diffusion loss, forward, backward,
Adam step) for mp2018-like cells (``../shared/data/mp2018/val.csv.gz``) and Perov-5 cells, the two
paths side by side with the same weights, and the fast path's inference forward (no gradients).
For each: the matrix-product FLOPs per step, counted with ``torch.utils.flop_counter.FlopCounterMode``
on every batch (not estimated), and the achieved GFLOP/s over the timed steps. In the same run and
right after, the float32 ``torch.mm`` rate of this machine at the shapes the network uses (the edge
MLP's ``[E, H] @ [H, H]``, the fast path's per-pair Fourier product ``[U, 3K] @ [3K, L H]`` with
``U = E / 2``, and a square reference product), and the achieved rate as a fraction of each.
Memory: peak resident memory of a fresh process that runs
forward + backward on the 4,640-atom COD structure with kNN edges.

Example:
    python benchmarks/denoiser_speed.py --seconds 5 --crystals 512

Writes ``benchmarks/results/denoiser_speed.json`` (``--out`` elsewhere; a smoke run:
``--seconds 0.1 --crystals 8 --batch-size 4 --skip-memory --matmul-size 256 --out /tmp/s.json``).

Allocations of large CPU tensors are backed by transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``,
read by PyTorch's CPU allocator) unless ``THP_MEM_ALLOC_ENABLE`` is already set: without it, every
fresh ``[E, H]`` buffer pays a page fault per 4 KiB, which on some VMs costs more than the maths.
"""

from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch is imported

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from torch.utils.flop_counter import FlopCounterMode

from crysdiff.batching import EdgeSettings, collate_crystals
from crysdiff.crystal import Crystal, from_pymatgen, validate
from crysdiff.denoiser import CrysDiffDenoiser, DenoiserConfig
from crysdiff.diffusion import DiffusionConfig, JointDiffusion

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results" / "denoiser_speed.json"


def read_csv(path: Path, count: int) -> list[Crystal]:
    import pandas as pd
    from pymatgen.core import Structure

    rows = pd.read_csv(path, nrows=count)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [validate(from_pymatgen(Structure.from_str(cif, fmt="cif"))) for cif in rows["cif"]]


def biggest_cod() -> Crystal:
    from pymatgen.core.periodic_table import Element

    records = json.loads((DATA / "prototypes" / "cod_spg229_jarvis.json").read_text())
    atoms = max((r["atoms"] for r in records), key=lambda a: len(a["elements"]))
    lattice = np.array(atoms["lattice_mat"], dtype=np.float64)
    coords = np.array(atoms["coords"], dtype=np.float64)
    if str(atoms.get("cartesian", False)).lower() == "true":
        coords = coords @ np.linalg.inv(lattice)
    z = np.array([Element(e).Z for e in atoms["elements"]], dtype=np.int64)
    return validate(Crystal(atomic_numbers=z, frac_coords=coords, lattice=lattice, id="cod-largest"))


def training_step(model, diffusion, reference: bool, fused: bool = False):
    """``step(batch)``: one full pre-training step (joint-diffusion loss, forward, backward, Adam;
    ``fused``: Adam's fused kernel)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, **({"fused": True} if fused else {}))
    generator = torch.Generator().manual_seed(0)

    def net(b, f, lat, t):
        return model(b, f, lat, t, reference=reference)

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        diffusion.loss(net, batch, generator=generator)["loss"].backward()
        optimizer.step()

    return step


def inference_step(model, reference: bool = False):
    """``step(batch)``: one forward pass without gradients at time step 500."""

    def step(batch):
        with torch.no_grad():
            t = torch.full((batch.num_atoms.shape[0],), 500, dtype=torch.long)
            model(batch, batch.frac_coords, batch.lattice, t, reference=reference)

    return step


def count_flops(step, batch) -> int:
    """Matrix-product FLOPs of ``step(batch)``, counted by ``FlopCounterMode`` (runs the step once)."""
    with FlopCounterMode(display=False) as counter:
        step(batch)
    return int(counter.get_total_flops())


def throughput(step, batches, seconds: float) -> dict:
    """Crystals per second and achieved GFLOP/s of ``step`` cycling over ``batches`` for about
    ``seconds``. The FLOP count of every batch is taken first; that pass and one more step per
    batch size warm up the allocator (the first calls at each size pay for fresh allocations)."""
    flops = [count_flops(step, batch) for batch in batches]
    step(batches[0])
    row = timed_steps(step, batches, seconds, flops=flops)
    row["flops_per_step"] = float(np.mean(flops))
    return row


def timed_steps(step, batches, seconds: float, min_steps: int = 2, sync=lambda: None, flops=None) -> dict:
    """Crystals per second of ``step(batch)`` cycling over ``batches`` for about ``seconds`` (at least
    ``min_steps`` steps); ``sync`` waits for queued device work (each step is timed to its end).
    Given ``flops`` (per batch), also the achieved ``gflop_per_s`` of the steps run."""
    sync()
    crystals, steps, done, start = 0, 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps < min_steps:
        index = steps % len(batches)
        step(batches[index])
        crystals += int(batches[index].num_atoms.shape[0])
        done += flops[index] if flops is not None else 0
        steps += 1
        sync()
    elapsed = time.perf_counter() - start
    row = {"crystals_per_s": crystals / elapsed, "steps": steps, "seconds": elapsed}
    if flops is not None:
        row["gflop_per_s"] = done / elapsed / 1e9
    return row


def matmul_rate(m: int, k: int, n: int, seconds: float, min_reps: int = 3) -> dict:
    """This machine's float32 ``[m, k] @ [k, n]`` rate (GFLOP/s) over about ``seconds``."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)
    out = torch.empty(m, n)
    torch.mm(a, b, out=out)  # warm-up
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or reps < min_reps:
        torch.mm(a, b, out=out)
        reps += 1
    elapsed = time.perf_counter() - start
    return {"shape": [m, k, n], "gflop_per_s": 2 * m * k * n * reps / elapsed / 1e9, "reps": reps, "seconds": elapsed}


def matmul_rates(config: DenoiserConfig, edges: int, seconds: float, square: int) -> dict:
    """The float32 product rates at the network's shapes for ``edges`` edges per batch, and a
    ``square``³ reference."""
    hidden, fourier = config.hidden_dim, 3 * config.num_frequencies
    return {
        "edge_mlp": matmul_rate(edges, hidden, hidden, seconds),
        "pair_fourier": matmul_rate(max(edges // 2, 1), fourier, config.num_layers * hidden, seconds),
        f"square_{square}": matmul_rate(square, square, square, seconds),
    }


def memory_child(reference: bool) -> None:
    """Runs in a fresh process: forward + backward on the biggest COD cell; prints peak RSS (MB)."""
    crystal = biggest_cod()
    batch = collate_crystals([crystal], edges=EdgeSettings())
    torch.manual_seed(0)
    model = CrysDiffDenoiser(DenoiserConfig())
    setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB
    before = _status_mb("VmRSS")
    try:  # reset the high-water mark so that it measures forward + backward alone
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    start = time.perf_counter()
    out = model(batch, batch.frac_coords, batch.lattice, torch.tensor([500]), reference=reference)
    (out["eps_lattice"].square().mean() + out["score_frac"].square().mean()).backward()
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"atoms": crystal.num_atoms, "edges": int(batch.edge_index.shape[1]),
                      "peak_rss_mb": peak, "peak_rss_during_forward_backward_mb": _status_mb("VmHWM"),
                      "rss_before_forward_mb": before, "peak_rss_while_loading_mb": setup_peak,
                      "forward_backward_s": elapsed}))


def _status_mb(key: str) -> float | None:
    """A memory figure (MiB) from ``/proc/self/status`` (Linux), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def memory(reference: bool) -> dict:
    code = f"from benchmarks import denoiser_speed as d; d.memory_child({reference})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per path and dataset")
    parser.add_argument("--crystals", type=int, default=512, help="crystals read per dataset")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--matmul-seconds", type=float, default=None, help="seconds per product rate (default: --seconds / 5)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the square reference product")
    parser.add_argument("--config", nargs="*", default=[], metavar="FIELD=INT",
                        help="DenoiserConfig integer fields to change (small sizes for a smoke test)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    matmul_seconds = args.seconds / 5 if args.matmul_seconds is None else args.matmul_seconds

    config = DenoiserConfig(**{k: int(v) for k, v in (item.split("=", 1) for item in args.config)})
    diffusion = JointDiffusion(DiffusionConfig())
    results = {
        "config": {**config.__dict__},
        "batch_size": args.batch_size,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "machine": platform.processor() or platform.machine(),
        "flops": "matrix-product FLOPs per step counted by torch.utils.flop_counter.FlopCounterMode, mean over the batches",
        "datasets": {},
    }
    datasets = {"mp2018": DATA / "mp2018" / "val.csv.gz", "perov_5": DATA / "perov_5" / "val.csv.gz"}
    for name, path in datasets.items():
        crystals = read_csv(path, args.crystals)
        batches = [collate_crystals(crystals[i : i + args.batch_size]) for i in range(0, len(crystals), args.batch_size)]
        row = {"crystals": len(crystals), "mean_atoms": float(np.mean([c.num_atoms for c in crystals])),
               "mean_edges_per_batch": float(np.mean([b.edge_index.shape[1] for b in batches]))}
        for label, reference in (("fast", False), ("reference", True)):
            torch.manual_seed(0)
            row[label] = throughput(training_step(CrysDiffDenoiser(config), diffusion, reference), batches, args.seconds)
        torch.manual_seed(0)
        row["inference_fast"] = throughput(inference_step(CrysDiffDenoiser(config).eval()), batches, args.seconds)
        row["speedup"] = row["fast"]["crystals_per_s"] / row["reference"]["crystals_per_s"]
        row["matmul"] = matmul_rates(config, round(row["mean_edges_per_batch"]), matmul_seconds, args.matmul_size)
        row["fraction_of_matmul_rate"] = {
            label: {shape: row[label]["gflop_per_s"] / rate["gflop_per_s"] for shape, rate in row["matmul"].items()}
            for label in ("fast", "reference", "inference_fast")
        }
        results["datasets"][name] = row
        print(f"{name}: fast {row['fast']['crystals_per_s']:.1f} crystals/s, reference "
              f"{row['reference']['crystals_per_s']:.1f} crystals/s, speed-up {row['speedup']:.2f}x", flush=True)
        for label in ("fast", "reference", "inference_fast"):
            r, share = row[label], row["fraction_of_matmul_rate"][label]
            print(f"  {label}: {r['flops_per_step'] / 1e9:.3f} GFLOP/step, {r['gflop_per_s']:.1f} GFLOP/s achieved = "
                  + ", ".join(f"{100 * v:.0f}% of {k} ({row['matmul'][k]['gflop_per_s']:.0f} GFLOP/s)" for k, v in share.items()),
                  flush=True)
    if not args.skip_memory:
        results["cod_4640_atoms"] = {"fast": memory(False), "reference": memory(True)}
        for label, m in results["cod_4640_atoms"].items():
            print(f"COD {m['atoms']} atoms, {m['edges']} kNN edges, {label}: peak RSS {m['peak_rss_mb']:.0f} MB "
                  f"(forward+backward alone: {m['peak_rss_during_forward_backward_mb']:.0f} MB, "
                  f"before it: {m['rss_before_forward_mb']:.0f} MB), "
                  f"forward+backward {m['forward_backward_s']:.2f} s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
