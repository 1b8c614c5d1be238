"""Inspect datasets and build their cache: counts, elements, cell sizes, labels, skipped records.

  crysdiff data inspect PATH...   report on structures (files, folders, CSV/JSON/extxyz datasets)
  crysdiff data cache PATH...     parse into the memory-mapped cache and say where it lives
                                  (--verify: re-hash the sources, check every checksum, rebuild what differs)

Every record that cannot be used is listed with its file, record and reason; the command fails
(exit code 2) only if no crystal could be read, or on the first bad record with --strict.

Example:
  crysdiff data inspect examples/structures
  crysdiff data inspect ../shared/data/mp2018/train.csv.gz --json > report.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from crysdiff.commands._common import fail, run_guarded


def add_arguments(parser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    examples = {
        "inspect": ("report on a dataset: counts, elements, atoms per cell, label statistics, skipped records",
                    "crysdiff data inspect ../shared/data/perov_5 --json > report.json"),
        "cache": ("build or refresh the cache of a dataset and print where it lives",
                  "crysdiff data cache ../shared/data --workers 8"),
    }
    for name, (help_text, example) in examples.items():
        sub = actions.add_parser(name, help=help_text, description=f"{help_text}.\n\nExample:\n  {example}",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("paths", nargs="+", help="structure files, folders or datasets")
        sub.add_argument("--format", help="force the format (cif, poscar, csv, folder, extxyz, jarvis, pymatgen, ase)")
        sub.add_argument("--strict", action="store_true", help="fail on the first bad record")
        sub.add_argument("--max-atoms", type=int, default=5000, help="largest cell accepted (atoms; default 5000)")
        sub.add_argument("--min-distance", type=float, default=0.5, help="smallest interatomic distance in Å (default 0.5)")
        sub.add_argument("--cell", choices=("canonical", "given"), default="canonical",
                         help="canonical: each structure's Niggli-reduced primitive cell, as new models see it "
                              "(default); given: cells as the files hold them, as models trained before it see them")
        sub.add_argument("--workers", type=int, help="parser processes (default: all cores)")
        sub.add_argument("--cache-dir", type=Path, help="cache folder (default $CRYSDIFF_CACHE or ~/.cache/crysdiff)")
        if name == "inspect":
            sub.add_argument("--no-cache", action="store_true", help="parse into a temporary cache that is deleted afterwards")
            sub.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
        else:
            sub.add_argument("--verify", action="store_true",
                             help="re-hash every source file (an edit that kept size and modification time is otherwise "
                                  "not seen) and check every cached file's checksum; rebuild what differs")


def run(args) -> int:
    from crysdiff.cache import DatasetError, load_dataset
    from crysdiff.cells import AS_GIVEN, CellConfig
    from crysdiff.crystal import ValidationSettings
    from crysdiff.inspection import dataset_report, print_report

    def go():
        if getattr(args, "no_cache", False):
            with tempfile.TemporaryDirectory(prefix="crysdiff-") as scratch:
                return inspect(Path(scratch))
        return inspect(args.cache_dir)

    def inspect(cache_dir):
        settings = ValidationSettings(min_distance=args.min_distance, max_atoms=args.max_atoms)
        as_json = getattr(args, "json", False)
        try:
            cache = load_dataset(args.paths, cache_dir=cache_dir, settings=settings, format=args.format,
                                 strict=args.strict, workers=args.workers, progress=sys.stderr.isatty(),
                                 verify=getattr(args, "verify", False),
                                 cell=CellConfig() if args.cell == "canonical" else AS_GIVEN)
        except DatasetError as error:
            return fail(str(error))
        if args.action == "cache":
            folders = sorted({str(folder.parent) for folder in cache.folders})
            print(f"{len(cache):,} crystals cached in {', '.join(folders)} ({len(cache.folders)} part(s), "
                  f"{len(cache.skipped):,} records skipped)"
                  + ("; sources re-hashed and every checksum verified" if args.verify else ""))
            return 0
        report = dataset_report(cache)
        if as_json:
            json.dump(report, sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            print_report(report)
        return 0

    return run_guarded(go)
