"""Planners and record parsers for the single-file formats: CIF, POSCAR, extxyz, JARVIS, pymatgen, ASE.

Each format has a ``plan_<format>(source) -> list[Item | BadItem]`` that runs in the main
process (read the file, cut it into raw payloads) and a ``parse_<format>_item(source, item,
settings) -> Crystal`` that runs in a worker and returns an *unvalidated* Crystal or raises
RecordError. The tabular formats (CSV, labelled folders) live in :mod:`crysdiff.io.tables`.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np

from crysdiff.crystal import Crystal, RecordError, ValidationSettings
from crysdiff.io.cif import SYMBOL_TO_Z, isotope_notice, isotope_of, parse_cif_block, split_cif_blocks, structure_arrays
from crysdiff.io.extxyz import parse_frame, split_frames
from crysdiff.io.payload import BadItem, Item, as_label, decode, note, read_bytes, read_text, short_reason

__all__ = [
    "plan_cif",
    "parse_cif_item",
    "plan_poscar",
    "parse_poscar_item",
    "plan_extxyz",
    "parse_extxyz_item",
    "plan_jarvis",
    "parse_jarvis_item",
    "plan_pymatgen",
    "parse_pymatgen_item",
    "plan_ase",
    "parse_ase_item",
    "cif_items",
    "read_structure_file",
]

_ID_KEYS = ("material_id", "jid", "id", "mpid", "uid", "name")


def _stem(path: str) -> str:
    from crysdiff.io.detect import structure_stem

    return structure_stem(Path(path).name)


# --- CIF -----------------------------------------------------------------------------------------


def cif_items(text: str, source: str, stem: str) -> list[Item]:
    """One Item per ``data_`` block; the id is the file stem for a single block, else the block name."""
    blocks = split_cif_blocks(text)
    if not blocks:
        raise RecordError(source, "*", "expected CIF text with at least one 'data_' block, found none")
    if len(blocks) == 1:
        name, block = blocks[0]
        return [Item(f"block {name}", stem, block, {})]
    return [Item(f"block {name}", name[5:] or f"{stem}[{k}]", block, {}) for k, (name, block) in enumerate(blocks)]


def plan_cif(source) -> list[Item]:
    return cif_items(read_text(source.path), source.path, _stem(source.path))


def parse_cif_item(source: str, item: Item, settings: ValidationSettings) -> Crystal:
    """A CIF text payload (one block, from a CIF file or a CSV cell)."""
    if not isinstance(item.payload, str) or not item.payload.strip():
        raise RecordError(source, item.record, "expected CIF text, found an empty cell")
    numbers, frac, lattice = parse_cif_block(item.payload, source, item.record, settings.occupancy_tolerance)
    return Crystal(numbers, frac, lattice, id=item.id, labels=item.labels, source=source, record=item.record)


# --- POSCAR --------------------------------------------------------------------------------------


def plan_poscar(source) -> list[Item]:
    return [Item("structure", _stem(source.path), read_text(source.path), {})]


def _is_count(token: str) -> bool:
    return token.lstrip("+").isdigit()


def _species_symbol(token: str) -> str:
    """The element of a VASP 5 species token ("Fe_pv" -> "Fe", "O/1a2b" -> "O")."""
    return re.split(r"[_/]", token, maxsplit=1)[0]


def poscar_with_species(text: str, source: str, record: str) -> str:
    """The POSCAR text with its species named on line 6. A VASP 4 file (no species line) is refused
    unless line 1 holds exactly one element symbol per count (then that line is copied above the
    counts); an unknown symbol is refused; hydrogen isotopes are noted (read as H). Lines are
    numbered as in the file."""
    lines = text.splitlines()
    if len(lines) < 7 or not lines[5].split():
        return text  # too short: pymatgen's error and _diagnose_poscar say what is missing
    row6 = lines[5].split()
    if _is_count(row6[0]):
        counts = [t for t in row6 if _is_count(t)]
        title = lines[0].split()
        if len(title) == len(counts) and all(_species_symbol(t) in SYMBOL_TO_Z or isotope_of(t) for t in title):
            symbols, where = title, "line 1"
            text = "\n".join([*lines[:5], " ".join(title), *lines[5:]]) + "\n"
        else:
            raise RecordError(source, record, (
                f"line 6 holds the atom counts ({' '.join(row6)}) and no line names the species (a VASP 4 POSCAR): "
                f"add a line with the {len(counts)} element symbol(s) above the counts, as VASP 5 writes it "
                f"(or put exactly those symbols, in order, on line 1); crysdiff does not guess them"))
    else:
        symbols, where = row6, "line 6"
    for token in symbols:
        if _species_symbol(token) not in SYMBOL_TO_Z and not isotope_of(token):
            raise RecordError(source, record, f"{where} names the species {token!r}: unknown element symbol, expected one of H..Og")
    notice = isotope_notice(symbols)
    if notice:
        note(source, record, f"{notice} ({where})")
    return text


def parse_poscar_text(text: str, source: str, record: str, occupancy_tolerance: float = 1e-3):
    """``(atomic_numbers, frac_coords, lattice)`` of a VASP POSCAR/CONTCAR via pymatgen."""
    from pymatgen.io.vasp import Poscar

    text = poscar_with_species(text, source, record)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Poscar.from_str(text, read_velocities=False).structure
    except Exception as exc:
        problem = _diagnose_poscar(text)
        reason = f"pymatgen failed: {short_reason(exc)}"
        raise RecordError(
            source, record, f"expected a VASP POSCAR: {problem + '; ' if problem else ''}{reason}"
        ) from None
    return structure_arrays(structure, source, record, occupancy_tolerance)


def _diagnose_poscar(text: str) -> str | None:
    """What is wrong with POSCAR text, in words (for error reasons)."""
    lines = [line.strip() for line in text.splitlines()]
    if len(lines) < 8:
        return f"only {len(lines)} lines, a POSCAR needs at least 8 (title, scale, 3 lattice vectors, counts, mode, coordinates)"
    try:
        float(lines[1].split()[0])
        for k in (2, 3, 4):
            if len([float(v) for v in lines[k].split()[:3]]) != 3:
                raise ValueError
    except (ValueError, IndexError):
        return "lines 2-5 must hold the scale factor and three lattice vectors of 3 numbers"
    row = 5
    if lines[row].split() and not lines[row].split()[0].lstrip("-").isdigit():
        row += 1  # VASP 5 species line
    try:
        count = sum(int(v) for v in lines[row].split())
    except ValueError:
        return f"line {row + 1} should hold the atom counts per species, found {lines[row][:60]!r}"
    row += 1
    if lines[row][:1].lower() == "s":  # selective dynamics
        row += 1
    coordinates = [line for line in lines[row + 1 :] if line][:count]
    if len(coordinates) < count:
        return f"truncated: the counts give {count} atoms but only {len(coordinates)} coordinate lines follow"
    return None


def parse_poscar_item(source: str, item: Item, settings: ValidationSettings) -> Crystal:
    numbers, frac, lattice = parse_poscar_text(item.payload, source, item.record, settings.occupancy_tolerance)
    return Crystal(numbers, frac, lattice, id=item.id, labels=item.labels, source=source, record=item.record)


# --- extended XYZ --------------------------------------------------------------------------------


def plan_extxyz(source) -> list[Item | BadItem]:
    return split_frames(read_text(source.path), source.path)


def parse_extxyz_item(source: str, item: Item, settings: ValidationSettings) -> Crystal:
    return parse_frame(item.payload, source, item.record, item.id)


# --- JARVIS --------------------------------------------------------------------------------------


def _load_json(path: str):
    text = decode(read_bytes(path), path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(path, "*", f"expected JSON, found a syntax error at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def plan_jarvis(source) -> list[Item | BadItem]:
    data = _load_json(source.path)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise RecordError(source.path, "*", f"expected a JSON list of JARVIS records, found {type(data).__name__}")
    items: list[Item | BadItem] = []
    for k, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("atoms"), dict):
            items.append(BadItem(f"entry {k}", "expected a JARVIS record with an 'atoms' dict"))
            continue
        identifier = next((str(entry[key]) for key in ("jid", "id", "material_id") if entry.get(key) is not None), str(k))
        labels = {}
        for key, value in entry.items():
            if key in ("atoms", "jid", "id", "material_id"):
                continue
            label = as_label(value)
            if label is not None:
                labels[key] = label
        record = f"entry {k}" + (f" ({identifier})" if identifier != str(k) else "")
        items.append(Item(record, identifier, entry["atoms"], labels))
    return items


def _symbols_to_z(symbols, source: str, record: str) -> np.ndarray:
    numbers = np.empty(len(symbols), dtype=np.int64)
    for k, symbol in enumerate(symbols):
        z = SYMBOL_TO_Z.get(str(symbol).strip())
        if z is None:
            raise RecordError(source, record, f"atom {k} has the unknown element symbol {symbol!r}; expected one of H..Og")
        numbers[k] = z
    return numbers


def parse_jarvis_item(source: str, item: Item, settings: ValidationSettings) -> Crystal:
    atoms = item.payload
    try:
        lattice = np.asarray(atoms["lattice_mat"], dtype=np.float64)
        coords = np.asarray(atoms["coords"], dtype=np.float64)
        elements = atoms["elements"]
    except KeyError as exc:
        raise RecordError(source, item.record, f"expected 'lattice_mat', 'coords' and 'elements' in 'atoms', missing {exc}") from None
    numbers = _symbols_to_z(elements, source, item.record)
    coords = coords.reshape(-1, 3) if coords.size else coords.reshape(0, 3)
    if lattice.shape == (3, 3) and atoms.get("cartesian", False):
        coords = np.linalg.solve(lattice.T, coords.T).T if abs(np.linalg.det(lattice)) > 1e-12 else coords * np.nan
    return Crystal(numbers, coords, lattice, id=item.id, labels=item.labels, source=source, record=item.record)


# --- pymatgen Structure.as_dict() JSON ------------------------------------------------------------


def _is_structure_dict(value) -> bool:
    return isinstance(value, dict) and "lattice" in value and "sites" in value


def plan_pymatgen(source) -> list[Item | BadItem]:
    data = _load_json(source.path)
    stem = _stem(source.path)
    if _is_structure_dict(data):
        return [Item("structure", stem, data, {})]
    if isinstance(data, list):
        return [
            Item(f"entry {k}", f"{stem}[{k}]", entry, {}) if _is_structure_dict(entry)
            else BadItem(f"entry {k}", "expected a pymatgen Structure dict with 'lattice' and 'sites'")
            for k, entry in enumerate(data)
        ]
    if isinstance(data, dict) and {"columns", "data"} <= set(data):
        return _plan_split_table(data, source.path)
    raise RecordError(
        source.path, "*",
        "expected a pymatgen Structure dict, a list of them, or a pandas split table with a structure column",
    )


def _plan_split_table(table: dict, path: str) -> list[Item | BadItem]:
    columns = [str(c) for c in table["columns"]]
    rows = table["data"]
    index = table.get("index") or list(range(len(rows)))
    first = rows[0] if rows else []
    structure_col = next((j for j, value in enumerate(first) if _is_structure_dict(value)), None)
    if structure_col is None:
        raise RecordError(path, "*", f"expected a column of pymatgen Structure dicts in the table, columns are {columns}")
    id_col = next((columns.index(key) for key in _ID_KEYS if key in columns), None)
    # a label column holds numbers (or missing markers) only, and at least one number: text columns
    # such as a Strukturbericht symbol are descriptions, not targets
    label_cols = []
    for j in range(len(columns)):
        if j in (structure_col, id_col):
            continue
        values = [as_label(row[j]) for row in rows if j < len(row)]
        if values and all(v is not None for v in values) and any(v == v for v in values):
            label_cols.append(j)
    items: list[Item | BadItem] = []
    for k, row in enumerate(rows):
        identifier = str(row[id_col]) if id_col is not None else str(index[k])
        record = f"row {k} ({identifier})"
        if len(row) != len(columns) or not _is_structure_dict(row[structure_col]):
            items.append(BadItem(record, f"expected a pymatgen Structure dict in column {columns[structure_col]!r}"))
            continue
        labels = {columns[j]: as_label(row[j]) for j in label_cols}
        items.append(Item(record, identifier, row[structure_col], labels))
    return items


def structure_dict_arrays(data: dict, source: str, record: str, occupancy_tolerance: float = 1e-3):
    """``(atomic_numbers, frac_coords, lattice)`` of a ``Structure.as_dict()``; pymatgen only for odd dicts."""
    try:
        lattice = np.asarray(data["lattice"]["matrix"], dtype=np.float64)
        sites = data["sites"]
        numbers = np.empty(len(sites), dtype=np.int64)
        frac = np.empty((len(sites), 3), dtype=np.float64)
        for k, site in enumerate(sites):
            species = site["species"]
            if len(species) != 1 or abs(float(species[0].get("occu", 1.0)) - 1.0) > occupancy_tolerance:
                occupancy = ", ".join(f"{sp.get('element')}:{float(sp.get('occu', 1)):.3g}" for sp in species)
                raise RecordError(
                    source, record,
                    f"sites[{k}] has partial occupancy / disorder ({occupancy}); expected one element with occupancy 1",
                )
            z = SYMBOL_TO_Z.get(species[0]["element"])
            if z is None:
                raise KeyError(species[0]["element"])
            numbers[k] = z
            frac[k] = site["abc"]
        return numbers, frac, lattice
    except RecordError:
        raise
    except (KeyError, TypeError, ValueError, IndexError):
        pass
    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_dict(data)
    except Exception as exc:
        raise RecordError(source, record, f"expected a pymatgen Structure dict, pymatgen failed: {short_reason(exc)}") from None
    return structure_arrays(structure, source, record, occupancy_tolerance)


def parse_pymatgen_item(source: str, item: Item, settings: ValidationSettings) -> Crystal:
    numbers, frac, lattice = structure_dict_arrays(item.payload, source, item.record, settings.occupancy_tolerance)
    return Crystal(numbers, frac, lattice, id=item.id, labels=item.labels, source=source, record=item.record)


# --- ASE database --------------------------------------------------------------------------------


def plan_ase(source) -> list[Item]:
    import ase.db

    path = source.path
    read_bytes(path)  # empty / unreadable file -> RecordError
    db_type = "db" if path.endswith(".db") else "json"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = list(ase.db.connect(path, type=db_type, create_indices=False).select())
    except Exception as exc:
        raise RecordError(path, "*", f"expected an ASE database ({db_type}), ase.db failed: {short_reason(exc)}") from None
    items = []
    for row in rows:
        kvp = dict(row.key_value_pairs)
        name = next((str(kvp[key]) for key in _ID_KEYS if key in kvp), None)
        identifier = name if name is not None else str(row.id)
        labels = {}
        for key, value in kvp.items():
            if key in _ID_KEYS:
                continue
            label = as_label(value)
            if label is not None:
                labels[key] = label
        payload = (
            np.asarray(row.numbers, dtype=np.int64),
            np.asarray(row.cell, dtype=np.float64),
            np.asarray(row.positions, dtype=np.float64),
        )
        items.append(Item(f"row {row.id}" + (f" ({name})" if name else ""), identifier, payload, labels))
    return items


def parse_ase_item(source: str, item: Item, settings: ValidationSettings) -> Crystal:
    numbers, cell, positions = item.payload
    if cell.shape != (3, 3) or abs(np.linalg.det(cell)) < 1e-8:
        raise RecordError(source, item.record, "expected a periodic structure with a 3-D cell, found no cell (a molecule?)")
    frac = np.linalg.solve(cell.T, positions.T).T  # [N, 3]
    return Crystal(numbers, frac, cell, id=item.id, labels=item.labels, source=source, record=item.record)


# --- any single structure file (used by labelled folders) ------------------------------------------


def read_structure_file(path: str, source: str, record: str, occupancy_tolerance: float = 1e-3):
    """``(atomic_numbers, frac_coords, lattice)`` of a one-structure file: CIF, POSCAR or pymatgen JSON."""
    from crysdiff.io.detect import detect_format

    fmt = detect_format(path)
    text = read_text(path, source, record)
    if fmt == "cif":
        blocks = split_cif_blocks(text)
        if len(blocks) != 1:
            raise RecordError(source, record, f"expected one CIF data block in {Path(path).name}, found {len(blocks)}")
        return parse_cif_block(blocks[0][1], source, record, occupancy_tolerance)
    if fmt == "poscar":
        return parse_poscar_text(text, source, record, occupancy_tolerance)
    if fmt == "pymatgen":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(source, record, f"expected JSON, found a syntax error: {exc.msg} at line {exc.lineno}") from None
        return structure_dict_arrays(data, source, record, occupancy_tolerance)
    raise RecordError(source, record, f"expected a CIF, POSCAR or pymatgen JSON structure file, found {Path(path).name}")
