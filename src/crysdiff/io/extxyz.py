"""Extended XYZ: frame splitting (main process) and a fast reader for the common layout.

``ase.io`` reads extended XYZ at several milliseconds per frame; almost every crystal file
uses one layout (``Lattice="..." Properties=species:S:1:pos:R:3 key=value ... pbc="T T T"``),
which :func:`parse_frame_fast` reads with plain splitting. Any other layout goes to ASE.
Labels are the numeric scalar ``key=value`` pairs of the comment line (ASE's ``atoms.info``).
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np

from crysdiff.crystal import Crystal, RecordError, from_ase
from crysdiff.io.cif import SYMBOL_TO_Z
from crysdiff.io.payload import BadItem, Item, short_reason

__all__ = ["split_frames", "parse_frame", "parse_frame_fast", "ID_KEYS"]

ID_KEYS = ("material_id", "id", "mpid", "jid", "name")
_PAIR = re.compile(r'\s*([A-Za-z_][\w\-:.]*)(?:=("[^"]*"|\{[^}]*\}|\[[^\]]*\]|\S+))?')
_SKIP_KEYS = {"Lattice", "Properties", "pbc"}
_BOOLS = {"T", "F", "True", "False", "true", "false"}


def split_frames(text: str, source: str) -> list[Item | BadItem]:
    """Cut an extxyz file into one raw text payload per frame (the parse happens in workers).

    A frame whose atom-count line is not an integer cannot be delimited: it becomes a BadItem
    and reading resumes at the next line that looks like the start of a frame.
    """
    lines = text.splitlines()
    items: list[Item | BadItem] = []
    pos, n, frame = 0, len(lines), 0
    while pos < n:
        if not lines[pos].strip():
            pos += 1
            continue
        record = f"frame {frame}"
        try:
            count = int(lines[pos].strip())
            if count < 0:
                raise ValueError
        except ValueError:
            items.append(
                BadItem(record, f"expected the atom count (an integer) on line {pos + 1}, found {lines[pos].strip()[:60]!r}")
            )
            pos = _next_frame_start(lines, pos + 1)
            frame += 1
            continue
        stop = pos + 2 + count
        if stop > n:
            found = max(0, n - pos - 2)
            items.append(
                BadItem(record, f"truncated frame: expected {count} atom lines after line {pos + 2}, found {found}")
            )
            break
        items.append(Item(record, str(frame), "\n".join(lines[pos:stop]), {}))
        pos = stop
        frame += 1
    return items


def _next_frame_start(lines: list[str], pos: int) -> int:
    while pos + 1 < len(lines):
        if lines[pos].strip().isdigit() and ("Lattice=" in lines[pos + 1] or "Properties=" in lines[pos + 1]):
            return pos
        pos += 1
    return len(lines)


def parse_frame(text: str, source: str, record: str, frame_id: str) -> Crystal:
    """One frame's text as a Crystal (fast path, else ASE)."""
    fast = parse_frame_fast(text, source, record, frame_id)
    if fast is not None:
        return fast
    return _parse_frame_ase(text, source, record, frame_id)


def parse_frame_fast(text: str, source: str, record: str, frame_id: str) -> Crystal | None:
    """The common ``species:S:1:pos:R:3`` layout, or None for anything else."""
    lines = text.split("\n")
    count = int(lines[0])
    comment = lines[1]
    info: dict[str, str] = {}
    for match in _PAIR.finditer(comment):
        key, value = match.group(1), match.group(2)
        info[key] = value if value is not None else "T"
    if _PAIR.sub("", comment).strip():
        return None  # something the simple grammar did not consume
    if info.get("Properties") != "species:S:1:pos:R:3" or info.get("pbc", '"T T T"') != '"T T T"':
        return None
    lattice_text = info.get("Lattice", "")
    if not lattice_text.startswith('"'):
        return None
    try:
        lattice = np.array(lattice_text.strip('"').split(), dtype=np.float64).reshape(3, 3)
        body = " ".join(lines[2 : 2 + count]).split()
        if len(body) != 4 * count:
            return None
        table = np.array(body, dtype=object).reshape(count, 4)
        cart = table[:, 1:].astype(np.float64)
    except ValueError:
        return None
    numbers = np.empty(count, dtype=np.int64)
    for k, symbol in enumerate(table[:, 0]):
        z = SYMBOL_TO_Z.get(symbol)
        if z is None:
            return None  # ASE knows more spellings (numbers, "X"); let it decide
        numbers[k] = z
    if not np.all(np.isfinite(lattice)) or abs(np.linalg.det(lattice)) < 1e-8:
        raise RecordError(
            source, record,
            f"the lattice is singular or not finite (determinant {np.linalg.det(lattice):.3g} Å^3); "
            "expected three independent lattice vectors",
        )
    frac = np.linalg.solve(lattice.T, cart.T).T  # [N, 3], as ase Cell.scaled_positions
    labels: dict[str, float] = {}
    identifier = next((info[key].strip('"') for key in ID_KEYS if key in info), frame_id)
    for key, value in info.items():
        if key in _SKIP_KEYS or key in ID_KEYS:
            continue
        if value in _BOOLS or value.startswith(('"', "{", "[")):
            continue
        try:
            labels[key] = float(value)
        except ValueError:
            continue
    return Crystal(numbers, frac, lattice, id=identifier, labels=labels, source=source, record=record)


def _parse_frame_ase(text: str, source: str, record: str, frame_id: str) -> Crystal:
    from ase.io import read

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atoms = read(io.StringIO(text), format="extxyz", index=0)
    except Exception as exc:
        raise RecordError(source, record, f"expected an extended XYZ frame, ASE failed: {short_reason(exc)}") from None
    info = dict(atoms.info)
    if atoms.calc is not None:  # ASE moves energy/stress keys into a calculator
        info.update({k: v for k, v in atoms.calc.results.items() if np.ndim(v) == 0})
    identifier = frame_id
    for key in ID_KEYS:
        if key in info:
            identifier = str(info[key])
            break
    labels = {}
    for key, value in info.items():
        if key in ID_KEYS or isinstance(value, (bool, np.bool_, str)) or np.ndim(value) != 0:
            continue
        try:
            labels[key] = float(value)
        except (TypeError, ValueError):
            continue
    return from_ase(atoms, id=identifier, labels=labels, source=source, record=record)
