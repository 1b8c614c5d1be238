"""What is in a dataset: counts, elements, cell sizes, label statistics and every skipped record.

:func:`dataset_report` returns a plain dict (the ``--json`` output of ``crysdiff data inspect``);
:func:`print_report` renders it for a person with rich tables.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

__all__ = ["dataset_report", "print_report"]

_ATOM_BINS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10**9)


def _element_counts(cache) -> dict[str, int]:
    """Number of crystals containing each element (symbols, most common first)."""
    from pymatgen.core.periodic_table import Element

    counts: Counter = Counter()
    for part in cache.parts:
        z = np.asarray(part.arrays["atomic_numbers"], dtype=np.int64)
        if z.size == 0:
            continue
        owner = np.repeat(np.arange(part.size), part.num_atoms)
        pairs = np.unique(owner * 256 + z)  # one entry per (crystal, element)
        for element, n in zip(*np.unique(pairs % 256, return_counts=True)):
            counts[int(element)] += int(n)
    return {Element.from_Z(z).symbol: n for z, n in counts.most_common()}


def _duplicates(cache, examples: int = 5) -> dict:
    """Exact duplicates: crystals with the same composition and structure (the same atoms in the same
    order, coordinates and lattice equal to 1e-8) as an earlier one. Counted, never dropped."""
    import hashlib

    first: dict[bytes, int] = {}
    groups: dict[int, list[int]] = {}
    for part, start in zip(cache.parts, cache.part_start[:-1]):
        z = np.asarray(part.arrays["atomic_numbers"], dtype=np.uint8)
        frac = np.round(np.mod(np.asarray(part.arrays["frac_coords"]), 1.0), 8) % 1.0 + 0.0  # -0.0 and 1.0 as 0.0
        lattices = np.round(np.asarray(part.arrays["lattices"]), 8) + 0.0
        offsets = part.atom_offset
        for local in range(part.size):
            lo, hi = offsets[local], offsets[local + 1]
            key = hashlib.blake2b(z[lo:hi].tobytes() + frac[lo:hi].tobytes() + lattices[local].tobytes(),
                                  digest_size=16).digest()
            i = int(start) + local
            if key in first:
                groups.setdefault(first[key], []).append(i)
            else:
                first[key] = i
    copies = sum(len(v) for v in groups.values())
    shown = [[cache.id(i) for i in [k, *v][:4]] for k, v in list(groups.items())[:examples]]
    return {"crystals": copies, "groups": len(groups), "examples": shown}


def _distribution(values: np.ndarray) -> dict:
    if values.size == 0:
        return {}
    q = np.percentile(values, [5, 25, 50, 75, 95])
    hist = {}
    for lo, hi in zip(_ATOM_BINS[:-1], _ATOM_BINS[1:]):
        n = int(((values >= lo) & (values < hi)).sum())
        if n:
            hist[f"{lo}-{hi - 1}" if hi < 10**9 else f">={lo}"] = n
    return {"min": int(values.min()), "p5": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]),
            "p95": float(q[4]), "max": int(values.max()), "mean": float(values.mean()), "histogram": hist}


def _owner(path: str, sources: list[str]) -> str:
    """The source a skipped record belongs to (a file inside a labelled folder belongs to the folder)."""
    if path in sources:
        return path
    resolved = str(Path(path).resolve())
    return next((s for s in sources if resolved == s or resolved.startswith(s.rstrip("/") + "/")), path)


def dataset_report(cache) -> dict:
    """Everything ``crysdiff data inspect`` shows, as JSON-ready Python values."""
    labels = cache.labels
    label_stats = {}
    for k, name in enumerate(cache.label_names):
        column = labels[:, k]
        present = column[np.isfinite(column)]
        stats = {"unit": cache.units.get(name, ""), "present": int(present.size), "missing": int(column.size - present.size)}
        if present.size:
            stats.update(mean=float(present.mean()), std=float(present.std()), min=float(present.min()), max=float(present.max()))
        label_stats[name] = stats
    crystals_per_source = np.bincount(cache.source_index, minlength=len(cache.sources))
    skipped_per_source = Counter(_owner(entry["source"], cache.sources) for entry in cache.skipped)
    per_source = [{"source": path, "format": fmt, "crystals": int(n), "skipped": skipped_per_source.get(path, 0)}
                  for path, fmt, n in zip(cache.sources, cache.formats, crystals_per_source)]
    return {
        "crystals": int(cache.num_crystals),
        "atoms": int(cache.num_atoms.sum()),
        "skipped": len(cache.skipped),
        "sources": per_source,
        "elements": _element_counts(cache),
        "atoms_per_cell": _distribution(cache.num_atoms),
        "labels": label_stats,
        "skipped_records": cache.skipped,
        "duplicates": _duplicates(cache),
        "cells": {"atoms_given": int(cache.given_atoms.sum()), "reduced": int((cache.given_atoms > cache.num_atoms).sum()),
                  "fallbacks": cache.fallbacks},
        "cache": [str(folder) for folder in cache.folders],
    }


def _short(path: str) -> str:
    """A path relative to the working folder when it lies inside it."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def print_report(report: dict, console=None, max_skipped: int = 50, max_sources: int = 30) -> None:
    """Render :func:`dataset_report` output for a person (rich tables; long lists are capped)."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # a log or a pipe: wide enough that no number is cut
            console = Console(width=160)
    console.print(f"[bold]{report['crystals']:,} crystals[/bold] ({report['atoms']:,} atoms) from "
                  f"{len(report['sources'])} source(s); {report['skipped']:,} records skipped")
    table = Table(title="sources", title_justify="left")
    for column in ("source", "format", "crystals", "skipped"):
        table.add_column(column, justify="right" if column in ("crystals", "skipped") else "left")
    for row in report["sources"][:max_sources]:
        table.add_row(_short(row["source"]), row["format"], f"{row['crystals']:,}", f"{row['skipped']:,}")
    console.print(table)
    if len(report["sources"]) > max_sources:
        console.print(f"  ... and {len(report['sources']) - max_sources:,} more sources (see --json)")

    cells = report.get("cells") or {}
    if cells.get("reduced") or cells.get("fallbacks"):
        console.print(f"cells: {cells['reduced']:,} structures reduced to a smaller primitive cell "
                      f"({cells['atoms_given']:,} atoms as given); {len(cells['fallbacks']):,} kept their own cell "
                      "(reduction fell back)", markup=False, highlight=False)
        for entry in cells["fallbacks"][:max_skipped]:
            console.print(f"  {_short(entry['source'])} [{entry['record']}]: {entry['reason']}", markup=False, highlight=False)
    atoms = report["atoms_per_cell"]
    if atoms:
        console.print(f"atoms per cell: min {atoms['min']}, median {atoms['median']:g}, mean {atoms['mean']:.1f}, "
                      f"p95 {atoms['p95']:g}, max {atoms['max']}")
        peak = max(atoms["histogram"].values())
        for bucket, n in atoms["histogram"].items():
            console.print(f"  {bucket:>9} | {'#' * max(1, round(30 * n / peak)):<30} {n:,}")
    elements = report["elements"]
    if elements:
        shown = ", ".join(f"{symbol} {n:,}" for symbol, n in list(elements.items())[:20])
        more = f" ... ({len(elements)} elements in all)" if len(elements) > 20 else f" ({len(elements)} elements)"
        console.print(f"crystals containing each element: {shown}{more}")

    if report["labels"]:
        table = Table(title="labels", title_justify="left")
        for column in ("label", "unit", "present", "missing", "mean", "std", "min", "max"):
            table.add_column(column, justify="left" if column in ("label", "unit") else "right", no_wrap=column == "label")
        for name, s in report["labels"].items():
            numbers = [f"{s[k]:.4g}" if k in s else "-" for k in ("mean", "std", "min", "max")]
            table.add_row(name, s["unit"], f"{s['present']:,}", f"{s['missing']:,}", *numbers)
        console.print(table)
    else:
        console.print("no labels")
    duplicates = report.get("duplicates") or {}
    if duplicates.get("crystals"):
        ids = "; ".join(", ".join(group) for group in duplicates["examples"][:3])
        console.print(f"exact duplicates: {duplicates['crystals']:,} crystals repeat an earlier one (same composition and "
                      f"structure), in {duplicates['groups']:,} group(s); all kept. e.g. {ids}", markup=False, highlight=False)

    skipped = report["skipped_records"]
    if skipped:
        console.print(f"[bold]skipped records ({len(skipped):,})[/bold]")
        for entry in skipped[:max_skipped]:
            console.print(f"  {_short(entry['source'])} [{entry['record']}]: {entry['reason']}", markup=False, highlight=False)
        if len(skipped) > max_skipped:
            console.print(f"  ... and {len(skipped) - max_skipped:,} more (see --json)")
        files = len({entry["source"] for entry in skipped})
        console.print(f"summary: {report['crystals']:,} crystals usable; {len(skipped):,} records skipped in "
                      f"{files:,} file(s) (each listed above with its reason)")
