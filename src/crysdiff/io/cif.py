"""CIF reading: a fast path for ordered P1 cells, pymatgen for everything else.

Most crystals exchanged for machine learning are P1 CIFs written by pymatgen (one data block,
the single symmetry operation ``x, y, z``, occupancy 1 everywhere). :func:`parse_cif_fast`
reads exactly that layout with plain string splitting, about 20x faster than
``pymatgen.io.cif.CifParser``, and returns ``None`` as soon as anything falls outside it, so
that :func:`parse_cif_block` can hand the text to pymatgen (symmetry expansion, oxidation
states, disorder detection). Both paths give the same lattice (``Lattice.from_parameters``
orientation), species and fractional coordinates (pymatgen's rounding of 0.3333/0.6667 to
1/3 and 2/3 included); only the order of the atoms may differ.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np

from crysdiff.crystal import RecordError

__all__ = ["parse_cif_fast", "parse_cif_block", "split_cif_blocks", "lattice_from_parameters", "SYMBOL_TO_Z"]

_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb "
    "Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr "
    "Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()
SYMBOL_TO_Z: dict[str, int] = {symbol: z for z, symbol in enumerate(_SYMBOLS, start=1)}

# Symbols pymatgen's CifParser treats specially (water, hydroxide...): leave them to pymatgen.
_SPECIAL_PREFIXES = ("Hw", "Ow", "Wat", "wat", "OH", "NO3")
_IDENTITY_OPS = {"x,y,z", "+x,+y,+z"}
_P1_NAMES = {"p1", "p 1"}
_FRAC_TOLERANCE = 1e-4  # pymatgen CifParser(frac_tolerance=1e-4)
_IDEAL_FRACS = (1 / 3, 2 / 3)


def lattice_from_parameters(a: float, b: float, c: float, alpha: float, beta: float, gamma: float) -> np.ndarray:
    """``[3, 3]`` lattice (rows = vectors, Å) oriented exactly as pymatgen ``Lattice.from_parameters``.

    pymatgen puts ``c`` along z and ``a`` in the xz plane, using the reciprocal angle gamma*.
    """
    alpha_r, beta_r, gamma_r = math.radians(alpha), math.radians(beta), math.radians(gamma)
    cos_alpha, cos_beta, cos_gamma = math.cos(alpha_r), math.cos(beta_r), math.cos(gamma_r)
    sin_alpha, sin_beta = math.sin(alpha_r), math.sin(beta_r)
    val = (cos_alpha * cos_beta - cos_gamma) / (sin_alpha * sin_beta)
    gamma_star = math.acos(min(1.0, max(-1.0, val)))
    return np.array(
        [
            [a * sin_beta, 0.0, a * cos_beta],
            [-b * sin_alpha * math.cos(gamma_star), b * sin_alpha * math.sin(gamma_star), b * cos_alpha],
            [0.0, 0.0, float(c)],
        ],
        dtype=np.float64,
    )


def _number(text: str) -> float:
    """A CIF number, uncertainty in brackets dropped ("1.234(5)" -> 1.234). Raises ValueError."""
    try:
        return float(text)
    except ValueError:
        bracket = text.find("(")
        if bracket > 0:
            return float(text[:bracket])
        raise


def _element_z(symbol: str) -> int | None:
    """Atomic number for a CIF type symbol or label the way pymatgen reads it ("Fe2+" -> 26), or None."""
    if not symbol or symbol.startswith(_SPECIAL_PREFIXES):
        return None
    z = SYMBOL_TO_Z.get(symbol[:2].title())
    if z is None:
        z = SYMBOL_TO_Z.get(symbol[0].upper())
    return z


def _tokens(line: str) -> list[str]:
    """Whitespace-separated CIF values; quoted values ('x, y, z') keep their spaces."""
    if "'" not in line and '"' not in line:
        return line.split()
    out: list[str] = []
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if ch.isspace():
            i += 1
            continue
        if ch in "'\"":
            # a quote closes only when followed by whitespace or end of line (CIF 1.1 rule)
            j = i + 1
            while j < n and not (line[j] == ch and (j + 1 == n or line[j + 1].isspace())):
                j += 1
            out.append(line[i + 1 : j])
            i = j + 1
        else:
            j = i
            while j < n and not line[j].isspace():
                j += 1
            out.append(line[i:j])
            i = j
    return out


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def parse_cif_fast(
    text: str, occupancy_tolerance: float = 1e-3
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Read an ordered P1 CIF: ``(atomic_numbers [N], frac_coords [N, 3], lattice [3, 3])`` or None.

    None means "not the simple layout" (several data blocks, symmetry operations other than
    ``x, y, z``, partial occupancy, unusual symbols, text fields, missing items...): the caller
    must then read the text with pymatgen. Never raises.
    """
    try:
        return _parse_cif_fast(text, occupancy_tolerance)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, ZeroDivisionError):
        return None


def _scan(text: str):
    """``(scalars, loops, number of data blocks)`` of simple CIF text, or None for layouts it does not handle."""
    lines = text.splitlines()
    scalars: dict[str, str] = {}
    loops: list[tuple[list[str], list[str]]] = []  # (lower-case item names, flat values)
    n_blocks = 0
    i, n = 0, len(lines)
    while i < n:
        line = lines[i].strip()
        i += 1
        if not line or line[0] == "#":
            continue
        first = line[0]
        if first == "_":
            parts = line.split(None, 1)
            if len(parts) < 2:
                return None  # value on the next line or a ;text field: leave it to pymatgen
            scalars[parts[0].lower()] = parts[1]
        elif first == ";":
            return None
        elif line[:5].lower() == "loop_":
            names: list[str] = []
            while i < n:
                item = lines[i].strip()
                if item.startswith("_"):
                    names.append(item.split(None, 1)[0].lower())
                    if len(item.split(None, 1)) > 1:
                        return None
                    i += 1
                elif not item or item[0] == "#":
                    i += 1
                else:
                    break
            values: list[str] = []
            while i < n:
                row = lines[i].strip()
                if not row or row[0] == "#":
                    i += 1
                    continue
                if row[0] == "_" or row[:5].lower() in ("loop_", "data_"):
                    break
                if row[0] == ";":
                    return None
                values.extend(_tokens(row))
                i += 1
            if not names:
                return None
            loops.append((names, values))
        elif line[:5].lower() == "data_":
            n_blocks += 1
            if n_blocks > 1:
                return None
        else:
            return None  # global_, save_ frames, stray values
    return scalars, loops, n_blocks


def _parse_cif_fast(text: str, occupancy_tolerance: float):
    scanned = _scan(text)
    if scanned is None:
        return None
    scalars, loops, n_blocks = scanned
    if n_blocks != 1:
        return None

    lattice = lattice_from_parameters(
        *(_number(scalars[f"_cell_length_{axis}"]) for axis in "abc"),
        *(_number(scalars[f"_cell_angle_{angle}"]) for angle in ("alpha", "beta", "gamma")),
    )

    atom_loop = None
    symmetry_seen = False
    for names, values in loops:
        if len(values) % len(names):
            return None
        if "_atom_site_fract_x" in names:
            if atom_loop is not None:
                return None
            atom_loop = (names, values)
        for key in (
            "_symmetry_equiv_pos_as_xyz",
            "_space_group_symop_operation_xyz",
            "_symmetry_equiv_pos_as_xyz_",
            "_space_group_symop_operation_xyz_",
        ):
            if key in names:
                width = len(names)
                ops = values[names.index(key) :: width]
                if len(ops) != 1 or ops[0].replace(" ", "").lower() not in _IDENTITY_OPS:
                    return None
                symmetry_seen = True
    for key in (
        "_symmetry_equiv_pos_as_xyz",
        "_space_group_symop_operation_xyz",
        "_symmetry_equiv_pos_as_xyz_",
        "_space_group_symop_operation_xyz_",
    ):
        if key in scalars:  # a one-line symmetry item
            if _unquote(scalars[key]).replace(" ", "").lower() not in _IDENTITY_OPS:
                return None
            symmetry_seen = True
    if not symmetry_seen:
        name = None
        for key in ("_symmetry_space_group_name_h-m", "_space_group_name_h-m_alt"):
            if key in scalars:
                name = _unquote(scalars[key]).lower()
        numbers = [_unquote(scalars[k]) for k in ("_symmetry_int_tables_number", "_space_group_it_number") if k in scalars]
        halls = [k for k in ("_symmetry_space_group_name_hall", "_space_group_name_hall") if k in scalars]
        undeclared = name is None and not halls and all(n == "1" for n in numbers)
        # no symmetry information at all means P1, as in pymatgen (which warns and defaults to P1)
        if name not in _P1_NAMES and not undeclared:
            return None
    if atom_loop is None:
        return None
    if any(key.startswith(("_atom_site_moment", "_atom_site_attached_hydrogens")) for key in scalars):
        return None

    names, values = atom_loop
    width = len(names)
    count = len(values) // width
    if count == 0:
        return None
    if "_atom_site_type_symbol" in names:
        symbols = values[names.index("_atom_site_type_symbol") :: width]
    elif "_atom_site_label" in names:
        symbols = values[names.index("_atom_site_label") :: width]
    else:
        return None
    if "_atom_site_attached_hydrogens" in names:
        return None
    if "_atom_site_occupancy" in names:
        for occupancy in values[names.index("_atom_site_occupancy") :: width]:
            if occupancy in (".", "?"):
                continue
            if abs(_number(occupancy) - 1.0) > occupancy_tolerance:
                return None
    atomic_numbers = np.empty(count, dtype=np.int64)
    for k, symbol in enumerate(symbols):
        z = _element_z(symbol)
        if z is None:
            return None
        atomic_numbers[k] = z
    frac = np.empty((count, 3), dtype=np.float64)
    for axis, key in enumerate(("_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z")):
        column = values[names.index(key) :: width]
        for k, value in enumerate(column):
            x = _number(value)
            for ideal in _IDEAL_FRACS:  # pymatgen CifParser._sanitize_data rounds these
                if abs(x / ideal - 1.0) <= _FRAC_TOLERANCE:
                    x = ideal
            frac[k, axis] = x
    return atomic_numbers, frac, lattice


def diagnose_cif(text: str) -> str | None:
    """A short description of what is missing or broken in simple CIF text (used in error reasons)."""
    if "data_" not in text:
        return "no 'data_' block"
    cell_keys = [f"_cell_length_{axis}" for axis in "abc"] + [f"_cell_angle_{angle}" for angle in ("alpha", "beta", "gamma")]
    missing = [key for key in cell_keys if key not in text]
    if missing:
        return f"missing cell parameter(s) {', '.join(missing)} (truncated file?)"
    if "_atom_site_fract_x" not in text:
        return "no atom_site loop with fractional coordinates (_atom_site_fract_x...; truncated file?)"
    try:
        scanned = _scan(text)
    except Exception:
        return None
    if scanned is None:
        return None
    scalars, loops, _ = scanned
    for key in cell_keys:
        try:
            _number(scalars[key])
        except (KeyError, ValueError):
            return f"{key} is {scalars.get(key)!r}, not a number"
    atom_loops = [(names, values) for names, values in loops if "_atom_site_fract_x" in names]
    if not atom_loops:
        return None
    names, values = atom_loops[0]
    if not values:
        return "the atom_site loop has no atoms (truncated file?)"
    if len(values) % len(names):
        return (
            f"the atom_site loop has {len(values)} values, not a multiple of its {len(names)} columns "
            "(truncated or malformed row)"
        )
    for key in ("_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z"):
        for value in values[names.index(key) :: len(names)]:
            try:
                _number(value)
            except ValueError:
                return f"{key} value {value!r} is not a number"
    if "_atom_site_type_symbol" in names:
        for value in values[names.index("_atom_site_type_symbol") :: len(names)]:
            if _element_z(_unquote(value)) is None:
                return f"unknown element symbol {_unquote(value)!r} in _atom_site_type_symbol"
    return None


_ISOTOPES = {"D": "deuterium", "T": "tritium"}  # pymatgen reads both as H


def isotope_of(symbol: str) -> str | None:
    """``"D"`` / ``"T"`` when a type symbol or label names a hydrogen isotope ("D", "D1", "T+"), else None."""
    letters = re.match(r"[A-Za-z]*", symbol or "").group(0)
    return letters if letters in _ISOTOPES else None


def isotope_notice(symbols) -> str | None:
    """The warning for hydrogen isotopes among ``symbols`` (None if there are none)."""
    found = sorted({iso for iso in map(isotope_of, symbols) if iso})
    if not found:
        return None
    names = " and ".join(f"{_ISOTOPES[iso]} ({iso})" for iso in found)
    return f"{names} read as hydrogen (H): the model sees elements, not isotopes"


def atom_site_rows(text: str) -> list[tuple[int, str, str, str | None]]:
    """``(row number from 1, label, type symbol or label, occupancy text)`` for each row of the
    block's atom_site loop, as the user sees them in the file ([] if there is no readable loop)."""
    try:
        scanned = _scan(text)
    except Exception:
        return []
    if scanned is None:
        return []
    for names, values in scanned[1]:
        if "_atom_site_fract_x" not in names:
            continue
        width = len(names)
        count = len(values) // width

        def column(key: str) -> list:
            return values[names.index(key)::width][:count] if key in names else [None] * count

        labels, types, occupancies = column("_atom_site_label"), column("_atom_site_type_symbol"), column("_atom_site_occupancy")
        return [(k + 1, _unquote(labels[k] or ""), _unquote(types[k] or labels[k] or ""), occupancies[k]) for k in range(count)]
    return []


def _row_name(row: int, label: str) -> str:
    return f"atom_site row {row}" + (f" (label {label})" if label else "")


def bad_atom_row(rows, occupancy_tolerance: float = 1e-3) -> str | None:
    """The first atom_site row with partial occupancy or an unknown element, in words (None if none)."""
    for row, label, symbol, occupancy in rows:
        if symbol and _element_z(symbol) is None and not isotope_of(symbol) and not symbol.startswith(_SPECIAL_PREFIXES):
            return f"{_row_name(row, label)} has the unknown element symbol {symbol!r}; expected one of H..Og"
        try:
            value = _number(occupancy) if occupancy not in (None, ".", "?") else 1.0
        except ValueError:
            continue
        if abs(value - 1.0) > occupancy_tolerance:
            return (f"{_row_name(row, label)} has occupancy {occupancy}: partial occupancy / disorder, expected one "
                    "element with occupancy 1 on every site (disordered structures are not supported)")
    return None


def split_cif_blocks(text: str) -> list[tuple[str, str]]:
    """``[(block name, block text)]`` for each ``data_`` block; a header before the first block is kept with it."""
    blocks: list[tuple[str, str]] = []
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line[:5].lower() == "data_"]
    if not starts:
        return []
    bounds = starts[1:] + [len(lines)]
    for k, (start, stop) in enumerate(zip(starts, bounds)):
        name = lines[start].strip()
        begin = 0 if k == 0 else start
        blocks.append((name, "".join(lines[begin:stop])))
    return blocks


def parse_cif_block(
    text: str, source: str, record: str, occupancy_tolerance: float = 1e-3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One CIF data block as ``(atomic_numbers, frac_coords, lattice)``: fast path, else pymatgen.

    Raises:
        RecordError: when pymatgen cannot read the block or the structure is disordered.
    """
    fast = parse_cif_fast(text, occupancy_tolerance)
    if fast is not None:
        return fast
    from pymatgen.io.cif import CifParser

    from crysdiff.io.payload import note

    rows = atom_site_rows(text)
    notice = isotope_notice(symbol for _, _, symbol, _ in rows)
    if notice:
        note(source, record, notice)

    with warnings.catch_warnings():  # pymatgen warns about every odd CIF; failures are reported below
        warnings.simplefilter("ignore")
        try:
            parser = CifParser.from_str(text, occupancy_tolerance=1.0 + occupancy_tolerance)
            structures = parser.parse_structures(primitive=False, on_error="raise")
        except Exception as exc:  # pymatgen raises many kinds; each becomes one record error
            cause = exc.__cause__ if exc.__cause__ is not None else exc  # "No structure parsed" wraps the cause
            hint = f"{type(cause).__name__}: {_first_line(str(cause))}"
            if "occupancy" in hint.lower():
                hint = f"{hint} (site occupancies sum to more than 1)"
            problem = bad_atom_row(rows, occupancy_tolerance) or diagnose_cif(text)
            reason = f"pymatgen failed: {hint}"
            if problem:
                reason = f"{problem}; {reason}"
            raise RecordError(source, record, f"expected a readable CIF block: {reason}") from None
    if len(structures) != 1:
        raise RecordError(source, record, f"expected one structure in the CIF block, found {len(structures)}")
    try:
        return structure_arrays(structures[0], source, record, occupancy_tolerance)
    except RecordError:  # pymatgen's sites are the symmetry-expanded ones: name the row of the file instead
        row = bad_atom_row(rows, occupancy_tolerance)
        if row is None:
            raise
        raise RecordError(source, record, row) from None


def structure_arrays(structure, source: str, record: str, occupancy_tolerance: float = 1e-3):
    """``(atomic_numbers, frac_coords, lattice)`` of an ordered pymatgen Structure.

    Sites whose occupancy is within ``occupancy_tolerance`` of 1 count as ordered; anything
    else (vacancies, mixed sites) is a RecordError naming the site, never rounded.
    """
    numbers = np.empty(len(structure), dtype=np.int64)
    for k, site in enumerate(structure):
        items = list(site.species.items())
        if len(items) != 1 or abs(float(items[0][1]) - 1.0) > occupancy_tolerance:
            occupancy = ", ".join(f"{sp}:{float(occ):.3g}" for sp, occ in items)
            raise RecordError(
                source,
                record,
                f"site {k} has partial occupancy / disorder ({occupancy}); expected one element with "
                f"occupancy 1 on every site (disordered structures are not supported)",
            )
        specie = items[0][0]
        z = getattr(specie, "Z", None)
        symbol = getattr(specie, "symbol", str(specie))
        if z is None or symbol not in SYMBOL_TO_Z:
            raise RecordError(source, record, f"site {k} holds '{specie}': unknown element symbol, expected one of H..Og")
        numbers[k] = SYMBOL_TO_Z[symbol]
    return numbers, np.array(structure.frac_coords, dtype=np.float64), np.array(structure.lattice.matrix, dtype=np.float64)


def _first_line(text: str) -> str:
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""
