"""Readers for the crystal formats materials researchers exchange.

Reading is split in two so that the expensive part runs in worker processes:

* :func:`resolve` turns paths into :class:`Source` s (format detected from name and content);
* :func:`plan` (main process, cheap) reads a source and cuts it into picklable :class:`Task` s
  of raw payloads (CIF text, JSON dicts, file paths...);
* :func:`run_task` (worker) parses and validates each payload into one :class:`Crystal` or one
  :class:`RecordError` — a bad record never stops the good ones.

:func:`read` strings the three together serially. Formats: ``cif`` (CIF files, one record per
data block), ``poscar`` (VASP POSCAR/CONTCAR), ``csv`` (CDVAE/DiffCSP tables with a ``cif``
column), ``folder`` (structure files + an ``id_prop.csv`` / ``labels.csv`` table), ``extxyz``,
``jarvis`` (JARVIS ``atoms`` JSON), ``pymatgen`` (``Structure.as_dict()`` JSON, lists of them or
pandas split tables) and ``ase`` (ASE databases).

Example::

    crystals, errors = crysdiff.io.read(["../shared/data/mp_elastic"])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from crysdiff.crystal import Crystal, RecordError, ValidationSettings, from_ase, validate, validated_many
from crysdiff.io import formats, tables
from crysdiff.io.cif import parse_cif_fast, structure_arrays
from crysdiff.io.detect import FORMATS, LABEL_TABLES, detect_format
from crysdiff.io.payload import BadItem, Notice, short_reason, take_notes

__all__ = [
    "FORMATS",
    "KNOWN_UNITS",
    "Source",
    "Task",
    "resolve",
    "plan",
    "run_task",
    "read",
    "from_structures",
    "parse_cif_fast",
]

KNOWN_UNITS: dict[str, str] = {
    # Materials Project / MEGNet / ALIGNN benchmarks
    "formation_energy_per_atom": "eV/atom",
    "e_above_hull": "eV/atom",
    "energy_per_atom": "eV/atom",
    "band_gap": "eV",
    "fermi_energy": "eV",
    "total_magnetization": "μB/cell",
    "K_VRH": "GPa",
    "G_VRH": "GPa",
    "poisson_ratio": "dimensionless",
    "elastic_anisotropy": "dimensionless",
    # CDVAE perov_5
    "heat_ref": "eV/atom",
    "heat_all": "eV/atom",
    "dir_gap": "eV",
    "ind_gap": "eV",
    # matminer dielectric / piezoelectric
    "n": "dimensionless",
    "poly_electronic": "dimensionless",
    "poly_total": "dimensionless",
    "eij_max": "C/m^2",
    # JARVIS-DFT
    "formation_energy_peratom": "eV/atom",
    "optb88vdw_bandgap": "eV",
    "mbj_bandgap": "eV",
    "optb88vdw_total_energy": "eV/atom",
    "ehull": "eV/atom",
    "bulk_modulus_kv": "GPa",
    "shear_modulus_gv": "GPa",
    "exfoliation_energy": "meV/atom",
    "magmom_oszicar": "μB/cell",
    "magmom_outcar": "μB/cell",
    "spillage": "dimensionless",
    "slme": "%",
    "epsx": "dimensionless",
    "epsy": "dimensionless",
    "epsz": "dimensionless",
    # ASE dcdft collection
    "wien2k_B": "GPa",
    "wien2k_Bp": "dimensionless",
    "wien2k_volume": "Å^3/atom",
    # generic
    "energy": "eV",
    "free_energy": "eV",
}


@dataclass(frozen=True)
class Source:
    """One readable input: a file (or a labelled folder) and its format."""

    path: str
    format: str
    labels_path: str | None = None


@dataclass
class Task:
    """A picklable chunk of raw payloads from one source, parsed by :func:`run_task` in a worker."""

    source: str
    format: str
    items: list


def resolve(paths: Iterable[str | Path] | str | Path, format: str | None = None) -> list[Source]:
    """Expand paths into sources.

    A folder holding a label table (``id_prop.csv`` / ``labels.csv``) is ONE ``folder`` source; a
    plain folder gives one source per structure file inside it (recursive, sorted); a file gives
    one source of its detected (or forced) format.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a format is unknown or cannot be detected (names the file).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    sources: list[Source] = []
    walk = _Walk()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        if path.is_dir():
            if format == "folder" and _label_table(path) is None:
                raise ValueError(f"{path}: format 'folder' needs a label table ({' or '.join(LABEL_TABLES)}) inside it")
            sources.extend(_expand_folder(path, format, walk))
            continue
        if format == "folder":
            raise ValueError(f"{path}: format 'folder' applies to folders, not files")
        fmt = format or detect_format(path)
        if fmt is None:
            raise ValueError(
                f"{path}: cannot tell the format from the name or content; pass format= one of {', '.join(FORMATS)}"
            )
        sources.append(Source(str(path), fmt))
    return sources


_NOT_STRUCTURES = {".md", ".txt", ".rst", ".py", ".yaml", ".yml", ".log", ".pdf", ".png"}


def _label_table(folder: Path) -> Path | None:
    return next((folder / name for name in LABEL_TABLES if (folder / name).is_file()), None)


class _Walk:
    """The real folders and files met so far in one :func:`resolve`: each is read once, whatever
    symbolic links lead to it, and a link back to a folder being walked (a loop) is reported, not followed."""

    def __init__(self):
        self.folders: dict[Path, Path] = {}  # real path -> the path it was first reached by
        self.files: dict[Path, Path] = {}

    def first_visit(self, entry: Path, table: dict) -> bool:
        from crysdiff.notices import warn

        try:
            real = entry.resolve(strict=True)
        except (OSError, RuntimeError):  # a link to itself, or a dangling one
            warn(f"{entry}: a symbolic link that leads nowhere (a loop or a missing target); skipped")
            return False
        if real in table:
            here = entry.parent.resolve()
            loop = table is self.folders and (real == here or real in here.parents)
            kind = "a symbolic link loop back to" if loop else "another path to"
            warn(f"{entry}: {kind} {table[real]}, which is read once; not followed")
            return False
        table[real] = entry
        return True


def _expand_folder(folder: Path, format: str | None, walk: _Walk) -> list[Source]:
    """Sources under a folder: a labelled (sub)folder is one source, other files one each (sorted);
    every real folder and file once (see :class:`_Walk`)."""
    if not walk.first_visit(folder, walk.folders):
        return []
    table = _label_table(folder)
    if table is not None and format in (None, "folder"):
        return [Source(str(folder), "folder", str(table))]
    sources = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            sources.extend(_expand_folder(entry, format, walk))
            continue
        if entry.is_symlink() and not entry.exists():
            walk.first_visit(entry, walk.files)  # reported
            continue
        if not walk.first_visit(entry, walk.files):
            continue
        by_name = detect_format(entry, sniff=False)
        if format is not None:
            # a forced format applies to every file except those named as another format or as notes
            if by_name in (None, format) and entry.suffix.lower() not in _NOT_STRUCTURES:
                sources.append(Source(str(entry), format))
        elif by_name is not None:
            sources.append(Source(str(entry), detect_format(entry)))
    return sources


_PLANNERS = {
    "cif": formats.plan_cif,
    "poscar": formats.plan_poscar,
    "csv": tables.plan_csv,
    "folder": tables.plan_folder,
    "extxyz": formats.plan_extxyz,
    "jarvis": formats.plan_jarvis,
    "pymatgen": formats.plan_pymatgen,
    "ase": formats.plan_ase,
}

_PARSERS = {
    "cif": formats.parse_cif_item,
    "poscar": formats.parse_poscar_item,
    "csv": formats.parse_cif_item,
    "folder": tables.parse_folder_item,
    "extxyz": formats.parse_extxyz_item,
    "jarvis": formats.parse_jarvis_item,
    "pymatgen": formats.parse_pymatgen_item,
    "ase": formats.parse_ase_item,
}


def plan(source: Source, chunk_size: int = 256) -> Iterator[Task]:
    """Read ``source`` (main process) and yield chunks of at most ``chunk_size`` raw records.

    Raises:
        RecordError: ``(source.path, "*", reason)`` when the source is unreadable as a whole
            (empty, corrupt gzip, undecodable bytes, a CSV without a CIF column...).
    """
    if source.format not in _PLANNERS:
        raise ValueError(f"{source.path}: unknown format {source.format!r}; expected one of {', '.join(FORMATS)}")
    chunk: list = []
    try:
        # planners may be generators (CSV is streamed): failures can come while iterating, after
        # earlier chunks were handed out; those records are kept and the rest is reported
        for item in _PLANNERS[source.format](source):
            chunk.append(item)
            if len(chunk) >= chunk_size:
                yield Task(source.path, source.format, chunk)
                chunk = []
    except RecordError:
        raise
    except Exception as exc:  # a whole-source failure inside a third-party reader
        raise RecordError(source.path, "*", f"cannot read the {source.format} source: {short_reason(exc)}") from None
    if chunk:
        yield Task(source.path, source.format, chunk)


def run_task(task: Task, settings: ValidationSettings = ValidationSettings()) -> list[Crystal | RecordError | Notice]:
    """Parse and validate every item of ``task``: one Crystal or one RecordError each, never raises;
    a :class:`~crysdiff.io.payload.Notice` before a record read with a caveat (e.g. D read as H)."""
    parse = _PARSERS[task.format]
    out: list = []
    parsed: list[tuple[int, object, Crystal]] = []  # (place in out, item, crystal not yet validated)
    take_notes()
    for item in task.items:
        out.extend(take_notes())
        if isinstance(item, BadItem):
            out.append(RecordError(task.source, item.record, item.reason))
            continue
        try:
            parsed.append((len(out), item, parse(task.source, item, settings)))
            out.append(None)
        except RecordError as err:
            out.append(err)
        except Exception as exc:  # third-party readers raise anything; keep the good records going
            out.append(_unreadable(task, item, exc))
    out.extend(take_notes())
    # validation of the whole task at once; what it cannot certify is validated (or rejected) one at a time
    for (place, item, crystal), valid in zip(parsed, validated_many([c for _, _, c in parsed], settings)):
        if valid is None:
            try:
                valid = validate(crystal, settings)
            except RecordError as err:
                valid = err
            except Exception as exc:
                valid = _unreadable(task, item, exc)
        out[place] = valid
    return out


def _unreadable(task: Task, item, exc: Exception) -> RecordError:
    return RecordError(task.source, item.record, f"could not read the record: {short_reason(exc)}")


def read(
    paths: Iterable[str | Path] | str | Path,
    format: str | None = None,
    settings: ValidationSettings = ValidationSettings(),
    strict: bool = False,
) -> tuple[list[Crystal], list[RecordError]]:
    """Read every crystal under ``paths`` serially: ``(crystals, errors)``.

    With ``strict=True`` the first bad record (or unreadable source) raises its RecordError.
    """
    crystals: list[Crystal] = []
    errors: list[RecordError] = []
    for source in resolve(paths, format):
        try:
            for task in plan(source):
                for result in run_task(task, settings):
                    if isinstance(result, Notice):
                        from crysdiff.notices import warn_once

                        warn_once(f"{result.source}: {result.reason}")
                    elif isinstance(result, RecordError):
                        if strict:
                            raise result
                        errors.append(result)
                    else:
                        crystals.append(result)
        except RecordError as err:  # the whole source is unreadable
            if strict:
                raise
            errors.append(err)
    return crystals, errors


def from_structures(
    objs: Iterable, ids: Iterable[str] | None = None, settings: ValidationSettings = ValidationSettings()
) -> list[Crystal]:
    """Validated crystals from pymatgen ``Structure`` s, ``ase.Atoms`` or :class:`Crystal` s.

    Raises:
        RecordError: for the first object that is not a usable crystal (disordered, overlapping...).
        TypeError: for an object of another type.
    """
    objs = list(objs)
    ids = [str(i) for i in ids] if ids is not None else [str(k) for k in range(len(objs))]
    if len(ids) != len(objs):
        raise ValueError(f"expected one id per structure, got {len(ids)} ids for {len(objs)} structures")
    out = []
    for k, (obj, id_) in enumerate(zip(objs, ids)):
        record = f"item {k} ({id_})"
        if isinstance(obj, Crystal):
            crystal = obj
        elif hasattr(obj, "lattice") and hasattr(obj, "sites"):  # pymatgen Structure / IStructure
            numbers, frac, lattice = structure_arrays(obj, "<structures>", record, settings.occupancy_tolerance)
            crystal = Crystal(numbers, frac, lattice, id=id_, source="<structures>", record=record)
        elif hasattr(obj, "get_scaled_positions") and hasattr(obj, "cell"):  # ase.Atoms
            crystal = from_ase(obj, id=id_, source="<structures>", record=record)
        else:
            raise TypeError(f"item {k}: expected a pymatgen Structure, ase.Atoms or Crystal, found {type(obj).__name__}")
        out.append(validate(crystal, settings))
    return out
