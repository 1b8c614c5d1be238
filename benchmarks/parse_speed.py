"""Ingest speed of crysdiff.io: resolve + plan + run_task, serial on one core.

Reads every source under a folder (default ../shared/data), times planning (main process) and
parsing + validation (what workers do) together, and prints structures/s per source and overall
with the number of skipped records. The target is >= 1000 structures/s per core.

Example:
    python benchmarks/parse_speed.py ../shared/data
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from crysdiff.crystal import RecordError, ValidationSettings
from crysdiff.io import plan, resolve, run_task

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(DEFAULT_DATA), help="folder or file to read")
    args = parser.parse_args()
    settings = ValidationSettings()
    start = time.perf_counter()
    sources = resolve([args.root])
    resolve_s = time.perf_counter() - start
    root = str(Path(args.root).resolve())
    total_ok = total_bad = 0
    grouped: dict[str, list[float]] = {}  # group -> [ok, bad, seconds]
    reasons: Counter = Counter()
    print(f"resolve: {len(sources)} sources in {resolve_s:.2f} s")
    print(f"{'source':48s} {'format':9s} {'ok':>7s} {'skipped':>7s} {'s':>7s} {'structures/s':>13s}")
    for source in sources:
        t0 = time.perf_counter()
        ok = bad = 0
        try:
            for task in plan(source):
                for result in run_task(task, settings):
                    if isinstance(result, RecordError):
                        bad += 1
                        reasons[result.reason.split(":")[0][:60]] += 1
                    else:
                        ok += 1
        except RecordError as err:
            bad += 1
            reasons[err.reason[:60]] += 1
        seconds = time.perf_counter() - t0
        name = str(Path(source.path).resolve()).replace(root, "").lstrip("/") or source.path
        group = name if "pymatgen_structures" not in name else "prototypes/pymatgen_structures/*.json"
        entry = grouped.setdefault(group, [0, 0, 0.0, source.format])
        entry[0] += ok
        entry[1] += bad
        entry[2] += seconds
        total_ok += ok
        total_bad += bad
    for group, (ok, bad, seconds, fmt) in grouped.items():
        print(f"{group:48s} {fmt:9s} {ok:7d} {bad:7d} {seconds:7.2f} {ok / max(seconds, 1e-9):13.0f}")
    elapsed = time.perf_counter() - start
    print(f"{'overall':48s} {'':9s} {total_ok:7d} {total_bad:7d} {elapsed:7.2f} {total_ok / elapsed:13.0f}")
    for reason, count in reasons.most_common(5):
        print(f"  skipped {count:4d} x {reason}")


if __name__ == "__main__":
    main()
