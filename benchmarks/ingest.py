"""Ingestion and loading speed: cold cache build of a whole data pool, warm open, batch iteration.

1. cold: ``load_dataset`` of every structure source under ROOT (default ../shared/data) into an
   empty cache folder, with all cores (structures/s, wall time, peak memory of the main process
   and of the parser workers);
2. warm: the same call again (content digests reused, nothing parsed);
3. iterate: ``mp2018/train`` (31,884 crystals) into batches of 64 with edges, sequential and
   shuffled, single process (crystals/s), run in a fresh process so its peak RSS is its own.

Writes ``benchmarks/results/ingest.json`` and prints a summary.

Example:
    python benchmarks/ingest.py                # from the repository root
    python benchmarks/ingest.py ../shared/data --workers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def _peak_rss_mb(who=resource.RUSAGE_SELF) -> float:
    """Peak resident memory. For this process, VmHWM (reset by exec, unlike ru_maxrss, which a
    spawned child would inherit from its parent); for children, the largest ru_maxrss."""
    if who == resource.RUSAGE_SELF:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def _iterate(cache_dir: str, source: str, batch_size: int, canonical: bool, queue) -> None:
    """Child process: warm-open ``source`` and time full passes of the loader."""
    from crysdiff.cache import load_dataset
    from crysdiff.cells import AS_GIVEN, CellConfig
    from crysdiff.loader import make_loader

    start = time.perf_counter()
    cache = load_dataset([source], cache_dir=cache_dir, progress=False, cell=CellConfig() if canonical else AS_GIVEN)
    open_s = time.perf_counter() - start
    out = {"source": source, "crystals": len(cache), "batch_size": batch_size, "warm_open_s": open_s}
    for name, shuffle in (("sequential", False), ("shuffled", True)):
        loader = make_loader(cache, batch_size=batch_size, shuffle=shuffle, seed=0)
        start = time.perf_counter()
        crystals = edges = batches = 0
        for batch in loader:
            crystals += batch.num_atoms.shape[0]
            edges += batch.edge_index.shape[1]
            batches += 1
        seconds = time.perf_counter() - start
        out[name] = {"seconds": seconds, "crystals_per_s": crystals / seconds, "batches": batches,
                     "mean_edges_per_batch": edges / max(batches, 1)}
    out["peak_rss_mb"] = _peak_rss_mb()
    queue.put(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(DEFAULT_DATA), help="folder (or file) holding the pool")
    parser.add_argument("--workers", type=int, default=None, help="parser processes (default: all cores)")
    parser.add_argument("--cache-dir", help="cache folder to build into (default: a temporary one, removed after)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cell", choices=("given", "canonical"), default="given",
                        help="cells as the sources hold them, or canonical cells (crysdiff.cells, what new models see)")
    parser.add_argument("--output", help="results file (default: benchmarks/results/ingest.json, "
                                         "ingest_canonical.json with --cell canonical)")
    args = parser.parse_args()

    from crysdiff.cache import load_dataset
    from crysdiff.cells import AS_GIVEN, CellConfig
    from crysdiff.io import resolve

    cell = CellConfig() if args.cell == "canonical" else AS_GIVEN
    output = args.output or str(REPO / "benchmarks" / "results" / ("ingest_canonical.json" if args.cell == "canonical" else "ingest.json"))
    root = Path(args.root).resolve()
    scratch = None
    if args.cache_dir:
        cache_dir = Path(args.cache_dir)
        shutil.rmtree(cache_dir, ignore_errors=True)
    else:
        scratch = tempfile.mkdtemp(prefix="crysdiff-ingest-")
        cache_dir = Path(scratch)
    workers = args.workers or os.cpu_count() or 1
    sources = resolve([root])
    try:
        start = time.perf_counter()
        cache = load_dataset([root], cache_dir=cache_dir, workers=workers, progress=False, cell=cell)
        cold_s = time.perf_counter() - start
        records = len(cache) + len(cache.skipped)
        cold = {"seconds": cold_s, "crystals": len(cache), "skipped": len(cache.skipped), "records": records,
                "structures_per_s": records / cold_s, "atoms": int(cache.num_atoms.sum()),
                "sources": len(sources), "parts": len(cache.folders),
                "cache_mb": sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file()) / 2**20,
                "peak_rss_main_mb": _peak_rss_mb(), "peak_rss_worker_mb": _peak_rss_mb(resource.RUSAGE_CHILDREN)}
        del cache
        warm_times = []
        for _ in range(3):
            start = time.perf_counter()
            warm_cache = load_dataset([root], cache_dir=cache_dir, workers=workers, progress=False, cell=cell)
            warm_times.append(time.perf_counter() - start)
        warm = {"seconds_min": min(warm_times), "seconds_all": warm_times, "crystals": len(warm_cache)}
        del warm_cache

        train = root / "mp2018" / "train.csv.gz"
        iterate = None
        if train.is_file():
            context = multiprocessing.get_context("spawn")
            queue = context.Queue()
            child = context.Process(target=_iterate, args=(str(cache_dir), str(train), args.batch_size, cell.canonical, queue))
            child.start()
            iterate = queue.get()
            child.join()
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)

    import numpy
    import torch

    result = {"root": str(root), "cell": dataclasses.asdict(cell), "workers": workers, "cpu_count": os.cpu_count(),
              "machine": platform.machine(), "cpu": platform.processor() or None,
              "python": platform.python_version(), "numpy": numpy.__version__, "torch": torch.__version__,
              "cold": cold, "warm": warm, "iterate": iterate}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1) + "\n")

    print(f"cold build: {cold['records']:,} records ({cold['crystals']:,} crystals, {cold['skipped']:,} skipped) "
          f"from {cold['sources']} sources in {cold['seconds']:.1f} s = {cold['structures_per_s']:,.0f} structures/s "
          f"with {workers} workers; cache {cold['cache_mb']:.0f} MB in {cold['parts']} parts; peak RSS main "
          f"{cold['peak_rss_main_mb']:.0f} MB, worker {cold['peak_rss_worker_mb']:.0f} MB")
    print(f"warm open: {warm['seconds_min'] * 1000:.0f} ms (best of 3)")
    if iterate:
        for name in ("sequential", "shuffled"):
            r = iterate[name]
            print(f"iterate {Path(iterate['source']).parent.name}/{Path(iterate['source']).name} ({iterate['crystals']:,} "
                  f"crystals) {name}, batches of {iterate['batch_size']} with edges: {r['crystals_per_s']:,.0f} crystals/s "
                  f"({r['seconds']:.2f} s)")
        print(f"iterate peak RSS: {iterate['peak_rss_mb']:.0f} MB")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
