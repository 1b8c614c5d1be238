"""Format detection from a file's name, then from the first bytes of its content."""

from __future__ import annotations

import gzip
from pathlib import Path

__all__ = ["FORMATS", "LABEL_TABLES", "STRUCTURE_SUFFIXES", "detect_format", "structure_stem"]

FORMATS = ("cif", "poscar", "csv", "folder", "extxyz", "jarvis", "pymatgen", "ase")

# label tables that make a folder ONE labelled source (CGCNN/ALIGNN id_prop.csv, or a headed table)
LABEL_TABLES = ("id_prop.csv", "labels.csv")

_BY_SUFFIX = {
    ".cif": "cif",
    ".mcif": "cif",
    ".vasp": "poscar",
    ".poscar": "poscar",
    ".csv": "csv",
    ".extxyz": "extxyz",
    ".xyz": "extxyz",
    ".db": "ase",
}
# structure files a labelled folder may hold (one crystal per file)
STRUCTURE_SUFFIXES = (".cif", ".mcif", ".vasp", ".poscar", ".json")


def structure_stem(name: str) -> str:
    """File name without structure/compression suffixes: "mp-1.cif.gz" -> "mp-1"."""
    lower = name.lower()
    if lower.endswith(".gz"):
        name, lower = name[:-3], lower[:-3]
    for suffix in STRUCTURE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_poscar_name(name: str) -> bool:
    upper = name.upper()
    return upper.startswith(("POSCAR", "CONTCAR")) or upper.endswith(("_POSCAR", ".POSCAR"))


def detect_format(path: str | Path, sniff: bool = True) -> str | None:
    """The format of a file, or None when neither its name nor (with ``sniff``) its content tells."""
    path = Path(path)
    name = path.name
    lower = name.lower()
    if lower.endswith(".gz"):
        lower = lower[:-3]
    if _is_poscar_name(name):
        return "poscar"
    suffix = Path(lower).suffix
    if suffix in _BY_SUFFIX:
        return _BY_SUFFIX[suffix]
    if suffix != ".json" and not sniff:
        return None
    head = _head(path) if (sniff or suffix == ".json") else ""
    if suffix == ".json" or head.lstrip().startswith(("{", "[")):
        return _sniff_json(head)
    if not sniff:
        return None
    return _sniff_text(head)


def _head(path: Path, size: int = 65536) -> str:
    try:
        with open(path, "rb") as handle:
            start = handle.read(2)
        opener = gzip.open if start == b"\x1f\x8b" else open
        with opener(path, "rb") as handle:
            return handle.read(size).decode("utf-8", errors="replace")
    except (OSError, EOFError):
        return ""


def _sniff_json(head: str) -> str | None:
    if '"lattice_mat"' in head:
        return "jarvis"
    if ('"numbers"' in head and '"positions"' in head) or '"nextid"' in head or '"ctime"' in head:
        return "ase"
    if '"sites"' in head or '"@class"' in head or head.lstrip().startswith('{"columns"'):
        return "pymatgen"
    if not head:
        return "pymatgen"  # an empty .json: let the reader report it
    return None


def _sniff_text(head: str) -> str | None:
    lines = [line.strip() for line in head.splitlines() if line.strip()]
    if not lines:
        return None
    if any(line.lower().startswith("data_") for line in lines[:50]):
        return "cif"
    if lines[0].isdigit() and len(lines) > 1 and ("Lattice=" in lines[1] or "Properties=" in lines[1]):
        return "extxyz"
    first = lines[0].split(",")
    if len(first) > 1 and any(col.strip().lower() == "cif" for col in first):
        return "csv"
    if len(lines) >= 8 and _looks_like_poscar(lines):
        return "poscar"
    return None


def _looks_like_poscar(lines: list[str]) -> bool:
    try:
        float(lines[1])
        for row in lines[2:5]:
            values = [float(v) for v in row.split()[:3]]
            if len(values) != 3:
                return False
    except ValueError:
        return False
    return True
