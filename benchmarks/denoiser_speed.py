"""Training throughput of the denoiser's fast path against the straightforward reference, and memory
on the largest COD cell.

Throughput: crystals per second of a full pre-training step (joint-diffusion loss, forward, backward,
Adam step) for mp2018-like cells (``../shared/data/mp2018/val.csv.gz``) and Perov-5 cells, the two
paths side by side with the same weights. Memory: peak resident memory of a fresh process that runs
forward + backward on the 4,640-atom COD structure with kNN edges.

Example:
    python benchmarks/denoiser_speed.py --seconds 5 --crystals 512

Writes ``benchmarks/results/denoiser_speed.json``.

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


def throughput(model, diffusion, batches, reference: bool, seconds: float, warmup: int = 4) -> dict:
    """Crystals per second of full training steps, cycling over ``batches`` for about ``seconds``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def net(b, f, lat, t):
        return model(b, f, lat, t, reference=reference)

    generator = torch.Generator().manual_seed(0)

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        diffusion.loss(net, batch, generator=generator)["loss"].backward()
        optimizer.step()

    for batch in batches[:warmup]:  # first calls at each size pay for fresh allocations
        step(batch)
    return timed_steps(step, batches, seconds)


def timed_steps(step, batches, seconds: float, min_steps: int = 2, sync=lambda: None) -> dict:
    """Crystals per second of ``step(batch)`` cycling over ``batches`` for about ``seconds`` (at least
    ``min_steps`` steps); ``sync`` waits for queued device work (each step is timed to its end)."""
    sync()
    crystals, steps, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps < min_steps:
        batch = batches[steps % len(batches)]
        step(batch)
        crystals += int(batch.num_atoms.shape[0])
        steps += 1
        sync()
    elapsed = time.perf_counter() - start
    return {"crystals_per_s": crystals / elapsed, "steps": steps, "seconds": elapsed}


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
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    config, diffusion = DenoiserConfig(), JointDiffusion(DiffusionConfig())
    results = {
        "config": {**config.__dict__},
        "batch_size": args.batch_size,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "machine": platform.processor() or platform.machine(),
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
            row[label] = throughput(CrysDiffDenoiser(config), diffusion, batches, reference, args.seconds)
        row["speedup"] = row["fast"]["crystals_per_s"] / row["reference"]["crystals_per_s"]
        results["datasets"][name] = row
        print(f"{name}: fast {row['fast']['crystals_per_s']:.1f} crystals/s, reference "
              f"{row['reference']['crystals_per_s']:.1f} crystals/s, speed-up {row['speedup']:.2f}x", flush=True)
    if not args.skip_memory:
        results["cod_4640_atoms"] = {"fast": memory(False), "reference": memory(True)}
        for label, m in results["cod_4640_atoms"].items():
            print(f"COD {m['atoms']} atoms, {m['edges']} kNN edges, {label}: peak RSS {m['peak_rss_mb']:.0f} MB "
                  f"(forward+backward alone: {m['peak_rss_during_forward_backward_mb']:.0f} MB, "
                  f"before it: {m['rss_before_forward_mb']:.0f} MB), "
                  f"forward+backward {m['forward_backward_s']:.2f} s", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
