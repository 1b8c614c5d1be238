"""Training throughput of the denoiser's fast path against the straightforward reference and against
the code of a given git revision, all in one process; its FLOP rate against the machine's
matrix-product rate; and memory on the largest COD cell.

Throughput: crystals per second of a full pre-training step (joint-diffusion loss, forward, backward,
AdamW step) for mp2018-like cells (``../shared/data/mp2018/val.csv.gz``) and Perov-5 cells, and of
the fast path's inference forward (no gradients). The steps timed, all from the same weights:

* ``fast`` — today's fast path with the training defaults (``TrainConfig.fused_optimizer``);
  ``fast_fused`` with ``--levers fused`` — the same with AdamW's fused kernel switched on;
* ``reference`` — :meth:`CrysDiffEncoder.reference_forward`, the per-edge specification;
* ``against`` / ``inference_against`` with ``--against REV`` — the denoiser of git revision ``REV``
  (``git archive`` of its ``src/crysdiff`` into a temporary package ``crysdiff_<rev>`` with its
  imports renamed, so both versions run side by side), with today's loss and plain AdamW.

Timing is interleaved, for a loaded machine where absolute times mean nothing: every repeat runs
each step once over all the batches (a pass), the steps in turn and in reverse order every other
repeat; rates come from the median pass, ratios between steps of the same run (``speedup``,
``<step>_over_against``, ``fast_<lever>_over_fast``). The matrix-product FLOPs of every step and
batch are counted with ``torch.utils.flop_counter.FlopCounterMode`` (eagerly, not estimated), giving
the achieved GFLOP/s; right after, the float32 ``torch.mm`` rate of this machine at the shapes the
network uses (the edge MLP's ``[E, H] @ [H, H]``, the fast path's per-pair Fourier product
``[U, 3K] @ [3K, L H]`` with ``U = E / 2``, and a square reference product), and the achieved
rate as a fraction of each. Memory: peak resident memory of a fresh process that runs forward +
backward on the 4,640-atom COD structure with kNN edges.

The committed results file (about 4 minutes on an idle 2-core machine)::

    python benchmarks/denoiser_speed.py --against a2c511c --levers fused --skip-memory

Writes ``benchmarks/results/denoiser_speed.json`` (``--out`` elsewhere; a smoke run:
``--repeats 2 --crystals 8 --batch-size 4 --skip-memory --matmul-size 256 --out /tmp/s.json``).

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
from crysdiff.config import TrainConfig
from crysdiff.crystal import Crystal, from_pymatgen, validate
from crysdiff.denoiser import CrysDiffDenoiser, DenoiserConfig
from crysdiff.diffusion import DiffusionConfig, JointDiffusion

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results" / "denoiser_speed.json"
DATASETS = ("mp2018", "perov_5")  # folders of DATA with a val.csv.gz


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
    """``step(batch)``: one full pre-training step (joint-diffusion loss, forward, backward, AdamW as
    :mod:`crysdiff.engine` builds it; ``fused``: AdamW's fused kernel, ``train.fused_optimizer``)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, **({"fused": True} if fused else {}))
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


def load_revision(revision: str, repo: Path = REPO):
    """``crysdiff.denoiser`` as of git ``revision``, imported beside today's code: ``src/crysdiff`` of that
    revision is unpacked into a temporary folder as the package ``crysdiff_<revision>`` (its own
    ``crysdiff`` imports renamed to match), so both versions run in one process."""
    import atexit
    import importlib
    import io
    import re
    import shutil
    import tarfile
    import tempfile

    commit = subprocess.run(["git", "rev-parse", "--short", revision], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    alias = f"crysdiff_{commit}"
    if alias not in sys.modules:
        archive = subprocess.run(["git", "archive", "--format=tar", commit, "src/crysdiff"], cwd=repo, capture_output=True, check=True).stdout
        root = Path(tempfile.mkdtemp(prefix="crysdiff_rev_"))
        atexit.register(shutil.rmtree, root, True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(root, filter="data")
        package = root / alias
        (root / "src" / "crysdiff").rename(package)
        for path in package.rglob("*.py"):
            text = path.read_text()
            path.write_text(re.sub(r"\b(from|import)(\s+)crysdiff\b", rf"\1\2{alias}", text))
        sys.path.insert(0, str(root))
    return importlib.import_module(f"{alias}.denoiser")


def denoiser_of(module, config: DenoiserConfig, weights: dict | None = None):
    """``module.CrysDiffDenoiser`` built from today's ``config`` (the fields that revision knows), with
    ``weights`` (a ``state_dict``) loaded when given."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(module.DenoiserConfig)}
    model = module.CrysDiffDenoiser(module.DenoiserConfig(**{k: v for k, v in config.__dict__.items() if k in known}))
    if weights is not None:
        model.load_state_dict(weights)
    return model


def count_flops(step, batch) -> int:
    """Matrix-product FLOPs of ``step(batch)``, counted by ``FlopCounterMode`` (runs the step once)."""
    with FlopCounterMode(display=False) as counter:
        step(batch)
    return int(counter.get_total_flops())


def interleaved(steps: dict, batches, repeats: int, flops: dict | None = None) -> dict:
    """Crystals per second of each ``steps[label](batch)``, timed in turns: every repeat runs each step
    once over all of ``batches`` (a pass), the labels in turn and their order reversed every other
    repeat, so that all of them see the same machine state; rates come from the median pass. One
    untimed pass first (its seconds are kept as ``first_pass_seconds``: allocator warm-up). Given ``flops[label]`` (per batch), also the achieved
    ``gflop_per_s`` and the mean ``flops_per_step``."""
    crystals = sum(int(b.num_atoms.shape[0]) for b in batches)

    def one_pass(step) -> float:
        start = time.perf_counter()
        for batch in batches:
            step(batch)
        return time.perf_counter() - start

    first = {label: one_pass(step) for label, step in steps.items()}
    seconds = {label: [] for label in steps}
    for repeat in range(repeats):
        for label in (list(steps) if repeat % 2 == 0 else list(reversed(steps))):
            seconds[label].append(one_pass(steps[label]))
    rows = {}
    for label, passes in seconds.items():
        median = float(np.median(passes))
        rows[label] = {"crystals_per_s": crystals / median, "steps_per_s": len(batches) / median,
                       "pass_seconds": passes, "first_pass_seconds": first[label], "steps_per_pass": len(batches)}
        if flops and label in flops:
            rows[label]["flops_per_step"] = float(np.mean(flops[label]))
            rows[label]["gflop_per_s"] = sum(flops[label]) / median / 1e9
    return rows


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


LEVERS = ("fused",)  # each a variant of today's fast training step: train.fused_optimizer


def dataset_paths(config: DenoiserConfig, diffusion, batches, args, against) -> tuple[dict, dict]:
    """The steps timed on one dataset, and their matrix-product FLOPs per batch (counted eagerly).

    ``fast`` is today's fast path with the training defaults (``TrainConfig``'s ``fused_optimizer``);
    ``fast_<lever>`` the same with one lever switched on; ``against`` the fast path
    of ``--against``'s revision. All start from the same weights."""
    train = TrainConfig()
    torch.manual_seed(0)
    weights = {k: v.clone() for k, v in CrysDiffDenoiser(config).state_dict().items()}
    variants = {"fast": train.fused_optimizer, **{f"fast_{lever}": True for lever in args.levers}}
    models, steps = {}, {}
    for label, fused in variants.items():
        models[label] = CrysDiffDenoiser(config)
        steps[label] = training_step(models[label], diffusion, False, fused=fused)
    models["inference_fast"] = CrysDiffDenoiser(config).eval()
    steps["inference_fast"] = inference_step(models["inference_fast"])
    if not args.skip_reference:
        models["reference"] = CrysDiffDenoiser(config)
        steps["reference"] = training_step(models["reference"], diffusion, True)
    if against is not None:
        models["against"], models["inference_against"] = denoiser_of(against, config), denoiser_of(against, config).eval()
        steps["against"] = training_step(models["against"], diffusion, False)
        steps["inference_against"] = inference_step(models["inference_against"])
    for model in models.values():
        model.load_state_dict(weights)
    flops = {label: [count_flops(step, batch) for batch in batches] for label, step in steps.items()}
    return steps, flops


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed passes over the batches per step")
    parser.add_argument("--crystals", type=int, default=256, help="crystals read per dataset")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--against", metavar="REV", help="also time the denoiser of this git revision, interleaved")
    parser.add_argument("--levers", nargs="*", default=[], choices=LEVERS,
                        help="also time today's fast step with each of these switched on (fused: "
                             "train.fused_optimizer), interleaved with the rest")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--matmul-seconds", type=float, default=1.0, help="seconds per product rate")
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the square reference product")
    parser.add_argument("--config", nargs="*", default=[], metavar="FIELD=INT",
                        help="DenoiserConfig integer fields to change (small sizes for a smoke test)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--skip-reference", action="store_true", help="leave out the per-edge reference path")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    against = load_revision(args.against) if args.against else None

    config = DenoiserConfig(**{k: int(v) for k, v in (item.split("=", 1) for item in args.config)})
    diffusion = JointDiffusion(DiffusionConfig())
    results = {
        "command": "python benchmarks/denoiser_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": {**config.__dict__},
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "train_defaults": {"fused_optimizer": TrainConfig().fused_optimizer},
        "levers": args.levers,
        "against": args.against and {"revision": args.against, "module": against.__name__,
                                     "step": "that revision's denoiser, today's loss, AdamW without the fused kernel"},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        "machine": platform.processor() or platform.machine(),
        "load_average_at_start": os.getloadavg(),
        "flops": "matrix-product FLOPs per step counted by torch.utils.flop_counter.FlopCounterMode (eager), mean over the batches",
        "timing": "each step runs once over all batches per repeat, the steps in turn (order reversed every other "
                  "repeat); crystals/s and GFLOP/s from the median pass",
        "datasets": {},
    }
    for name in args.datasets:
        crystals = read_csv(DATA / name / "val.csv.gz", args.crystals)
        batches = [collate_crystals(crystals[i : i + args.batch_size]) for i in range(0, len(crystals), args.batch_size)]
        row = {"crystals": len(crystals), "mean_atoms": float(np.mean([c.num_atoms for c in crystals])),
               "mean_edges_per_batch": float(np.mean([b.edge_index.shape[1] for b in batches]))}
        steps, flops = dataset_paths(config, diffusion, batches, args, against)
        row.update(interleaved(steps, batches, args.repeats, flops))
        if "reference" in row:
            row["speedup"] = row["fast"]["crystals_per_s"] / row["reference"]["crystals_per_s"]
        for label in (label for label in steps if label.startswith(("fast", "inference_fast"))):
            base = "inference_against" if label.startswith("inference") else "against"
            if base in row:
                row[f"{label}_over_against"] = row[label]["crystals_per_s"] / row[base]["crystals_per_s"]
        for lever in args.levers:
            row[f"fast_{lever}_over_fast"] = row[f"fast_{lever}"]["crystals_per_s"] / row["fast"]["crystals_per_s"]
        row["matmul"] = matmul_rates(config, round(row["mean_edges_per_batch"]), args.matmul_seconds, args.matmul_size)
        row["fraction_of_matmul_rate"] = {
            label: {shape: row[label]["gflop_per_s"] / rate["gflop_per_s"] for shape, rate in row["matmul"].items()}
            for label in steps
        }
        results["datasets"][name] = row
        print(f"{name}: " + ", ".join(f"{label} {row[label]['crystals_per_s']:.1f} crystals/s" for label in steps)
              + "".join(f"; {key} {value:.2f}x" for key, value in row.items() if key == "speedup" or key.endswith(
                  ("_over_against", "_over_fast"))), flush=True)
        for label in steps:
            r, share = row[label], row["fraction_of_matmul_rate"][label]
            print(f"  {label}: {r['flops_per_step'] / 1e9:.3f} GFLOP/step, {r['gflop_per_s']:.1f} GFLOP/s achieved = "
                  + ", ".join(f"{100 * v:.0f}% of {k} ({row['matmul'][k]['gflop_per_s']:.0f} GFLOP/s)" for k, v in share.items())
                  + f"; first pass {r['first_pass_seconds']:.2f} s", flush=True)
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
