"""Tabular sources: CSV files with a CIF column, and folders of structure files with a label table.

* CSV (CDVAE / DiffCSP convention): one row per crystal, CIF text in the ``cif`` column, the id
  in ``material_id`` (else the row number); every other numeric column is a label (empty -> NaN).
  A leading unnamed index column (pandas ``to_csv`` default) is ignored.
* Labelled folder (CGCNN / ALIGNN convention): structure files anywhere under the folder plus
  ``id_prop.csv`` (no header: ``id,target``; ids with or without the file extension) or a headed
  ``labels.csv`` (``material_id,K_VRH,...``) keyed by file stem. Files without a label row load
  with NaN labels; label rows without a file are reported as record errors.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

from crysdiff.crystal import MISSING_MARKERS, Crystal, RecordError, ValidationSettings
from crysdiff.io.detect import STRUCTURE_SUFFIXES, _is_poscar_name, structure_stem
from crysdiff.io.payload import BadItem, Item, read_text

__all__ = ["plan_csv", "plan_folder", "parse_folder_item", "ID_COLUMNS", "NON_LABEL_COLUMNS"]

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # CIF cells are far longer than csv's 128 kB default

ID_COLUMNS = ("material_id", "id", "mpid", "jid", "name")
NON_LABEL_COLUMNS = {"cif", "formula", "pretty_formula", "reduced_formula", "full_formula", "composition", "structure"}
_MISSING = MISSING_MARKERS


def _read_rows(path: str) -> list[list[str]]:
    text = read_text(path)
    try:
        return list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise RecordError(path, "*", f"expected a well-formed CSV file, the csv parser failed: {exc}") from None


def _stream_rows(path: str) -> Iterator[list[str]]:
    """Rows of a (gzipped) CSV read as a stream, so an 800k-row file never sits in memory whole.

    Raises:
        RecordError: ``(path, "*", reason)`` for an empty file, corrupt gzip, undecodable bytes or
            malformed CSV (rows before the problem have already been yielded).
    """
    file = Path(path)
    try:
        if file.stat().st_size == 0:
            raise RecordError(path, "*", "the file is empty (0 bytes); expected crystal data")
        with open(file, "rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
        raw = gzip.open(file, "rb") if gzipped else open(file, "rb")
    except OSError as exc:
        raise RecordError(path, "*", f"cannot read the file: {exc.strerror or exc}") from None
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    try:
        yield from csv.reader(text)
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start : exc.start + 1].hex()
        raise RecordError(path, "*", f"expected UTF-8 text, found the undecodable byte 0x{bad} (re-save the file as UTF-8)") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise RecordError(
            path, "*", f"corrupt or truncated gzip data ({type(exc).__name__}: {exc}); expected a valid .gz file"
        ) from None
    except csv.Error as exc:
        raise RecordError(path, "*", f"expected a well-formed CSV file, the csv parser failed: {exc}") from None
    finally:
        text.close()


def _float_or_nan(text: str) -> float:
    text = text.strip()
    if text.lower() in _MISSING:
        return math.nan
    return float(text)


def _numeric_columns(header: list[str], rows: list[list[str]], skip: set[int]) -> list[int]:
    """Columns (not in ``skip``) whose every non-missing cell is a number."""
    out = []
    for j in range(len(header)):
        if j in skip:
            continue
        try:
            for row in rows:
                if j < len(row):
                    _float_or_nan(row[j])
        except ValueError:
            continue
        out.append(j)
    return out


def _is_index_column(name: str) -> bool:
    name = name.strip()
    return name == "" or name.startswith("Unnamed:")


def plan_csv(source) -> Iterator[Item | BadItem]:
    """Items of a CDVAE-style CSV, streamed in two passes: the first finds the numeric label
    columns (and any whole-file problem, before anything is yielded), the second yields rows."""
    rows = _stream_rows(source.path)
    header = next(rows, None)
    if header is None:
        raise RecordError(source.path, "*", "the CSV file has no header row; expected a header with a 'cif' column")
    header = [h.strip() for h in header]
    lower = [h.lower() for h in header]
    if "cif" not in lower:
        raise RecordError(
            source.path, "*", f"expected a column named 'cif' holding CIF text, found columns {header[:20]}"
        )
    cif_col = lower.index("cif")
    id_col = next((lower.index(key) for key in ID_COLUMNS if key in lower), None)
    skip = {cif_col} | {j for j, name in enumerate(header) if _is_index_column(name) or name.lower() in NON_LABEL_COLUMNS}
    if id_col is not None:
        skip.add(id_col)
    candidates = [j for j in range(len(header)) if j not in skip]
    numeric = set(candidates)
    for row in rows:  # pass 1: which columns hold only numbers (or missing markers)
        for j in list(numeric):
            if j < len(row):
                try:
                    _float_or_nan(row[j])
                except ValueError:
                    numeric.discard(j)
    label_cols = [j for j in candidates if j in numeric]
    rows = _stream_rows(source.path)
    next(rows)
    for k, row in enumerate(rows):  # pass 2
        if not row:
            continue
        identifier = row[id_col].strip() if id_col is not None and id_col < len(row) and row[id_col].strip() else str(k)
        record = f"row {k} ({identifier})" if id_col is not None else f"row {k}"
        if len(row) != len(header):
            yield BadItem(record, f"expected {len(header)} fields as in the header, found {len(row)}")
            continue
        labels = {header[j]: _float_or_nan(row[j]) for j in label_cols}
        yield Item(record, identifier, row[cif_col], labels)


def _structure_files(folder: Path, table: Path) -> dict[str, Path]:
    """file stem -> path for every structure file under ``folder`` (sorted; first stem wins)."""
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path == table or path.name.startswith("."):
            continue
        name = path.name.lower()
        bare = name[:-3] if name.endswith(".gz") else name
        if bare.endswith(STRUCTURE_SUFFIXES) or _is_poscar_name(path.name):
            files.setdefault(structure_stem(path.name), path)
    return files


def _read_label_table(table: Path) -> tuple[list[str], list[tuple[str, dict[str, float]]]]:
    """``(label names, [(id stem, labels)])`` from ``id_prop.csv`` (headerless) or a headed table."""
    rows = [row for row in _read_rows(str(table)) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise RecordError(str(table), "*", "the label table has no rows")
    headerless = table.name == "id_prop.csv"
    if headerless and len(rows[0]) > 1:
        try:
            _float_or_nan(rows[0][1])
        except ValueError:
            headerless = False  # an id_prop.csv written with a header row
    if headerless:
        width = max(len(row) for row in rows) - 1
        names = ["target"] if width == 1 else [f"target_{j}" for j in range(width)]
        id_col, label_cols, body = 0, list(range(1, width + 1)), rows
    else:
        header, body = [h.strip() for h in rows[0]], rows[1:]
        lower = [h.lower() for h in header]
        id_col = next((lower.index(key) for key in ID_COLUMNS if key in lower), 0)
        skip = {id_col} | {j for j, name in enumerate(header) if _is_index_column(name) or name.lower() in NON_LABEL_COLUMNS}
        label_cols = _numeric_columns(header, body, skip)
        names = [header[j] for j in label_cols]
    out = []
    for row in body:
        labels = {}
        for name, j in zip(names, label_cols):
            try:
                labels[name] = _float_or_nan(row[j]) if j < len(row) else math.nan
            except ValueError:
                labels[name] = math.nan
        out.append((structure_stem(row[id_col].strip()), labels))
    return names, out


def plan_folder(source) -> list[Item | BadItem]:
    folder = Path(source.path)
    table = Path(source.labels_path) if source.labels_path else None
    if table is None or not table.is_file():
        raise RecordError(source.path, "*", "expected a label table (id_prop.csv or labels.csv) in the folder")
    files = _structure_files(folder, table)
    names, rows = _read_label_table(table)
    items: list[Item | BadItem] = []
    used: set[str] = set()
    for k, (identifier, labels) in enumerate(rows):
        path = files.get(identifier)
        if path is None:
            items.append(
                BadItem(
                    f"{table.name} row {k} ({identifier})",
                    f"the label row has no structure file: expected {identifier}.cif (or .vasp/.json/POSCAR) under {folder}",
                )
            )
            continue
        used.add(identifier)
        items.append(Item(f"file {path.relative_to(folder)}", identifier, str(path), labels))
    for identifier, path in files.items():
        if identifier not in used:
            items.append(Item(f"file {path.relative_to(folder)}", identifier, str(path), {n: math.nan for n in names}))
    return items


def parse_folder_item(source: str, item: Item, settings: ValidationSettings) -> Crystal:
    from crysdiff.io.formats import read_structure_file

    numbers, frac, lattice = read_structure_file(item.payload, source, item.record, settings.occupancy_tolerance)
    return Crystal(numbers, frac, lattice, id=item.id, labels=item.labels, source=source, record=item.record)
