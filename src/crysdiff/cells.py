"""One canonical cell per crystal: the primitive cell, Niggli-reduced (the route CDVAE and DiffCSP use).

A crystal property belongs to the infinite crystal, not to the cell it is written in, yet the
denoiser links the atoms of *the given cell* with Fourier features of fractional offsets: a
supercell, a conventional cell or another basis of the same lattice is a different input. So
structures are reduced where they enter the library (the dataset cache, and in-memory structures
in :mod:`crysdiff.predict`), for training and prediction alike:

1. the primitive cell: the pure translations (shorter than a lattice vector, mapping the crystal onto
   itself within ``symprec``) are found here, the primitive lattice is spanned by the lattice vectors
   and those translations, and each atom is the mean of its translation images (the same crystal as
   spglib's ``standardize_cell(to_primitive=True, no_idealize=True)``, without its full symmetry
   search, ~4 ms a cell); spglib still makes the primitive cell of cells over 256 atoms and of those
   whose translations move an atom by more than half of ``symprec``;
2. spglib Niggli-reduces its lattice, and the fractional coordinates are rewritten in the
   reduced basis and wrapped into ``[0, 1)``;
3. a Niggli-reduced lattice has several bases with the same metric (``L`` and ``-L`` always, up
   to 48 for a cubic lattice); when the crystal has less symmetry than its lattice they are
   different inputs for the network, so the basis whose structure-factor fingerprint (invariant to
   translations and atom order, not to the basis) is largest is kept (:mod:`crysdiff.cell_basis`).

What is left is a rotation, a translation and an atom order, which the network does not see.
A cell that is already primitive (most of a database) is recognised cheaply: no common divisor of
the element counts, or no translation mapping the rarest element onto itself and then every atom.
:func:`canonical_cells` makes the choice among
same-metric bases (step 3) for many structures at once (:mod:`crysdiff.cell_basis`), with the same result.

Reduction never merges distinct structures: the primitive cell must hold a whole fraction of the
given atoms with the same composition, the volume per atom must be kept, and every given atom must
lie within ``symprec`` of an atom of its element in the reduced cell. A structure that fails any of
these (or that spglib cannot handle) keeps its own cell and is marked as a *fallback*, with the
reason; it is never dropped.

:class:`CellConfig` is ``data.cell`` of the training configs and travels in every checkpoint, so
a model sees cells made the way its training cells were made. Checkpoints written before it
existed are read with ``canonical=False`` (cells as given), see :func:`stored_data_config`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from crysdiff.cell_basis import choose_bases
from crysdiff.crystal import Crystal, wrap_frac

__all__ = ["CellConfig", "Reduced", "canonical_cell", "canonical_cells", "stored_data_config", "AS_GIVEN"]

_NIGGLI_EPS = 1e-5  # spglib's relative tolerance for the Niggli conditions
_QUICK_ATOMS = 256  # cells up to this size are checked for translations here before spglib is asked
_CLEAR = 0.5  # translations that move an atom by more than this share of symprec are left to spglib
_CHECK_CHUNK = 512  # given atoms compared at once with the reduced cell's atoms (bounds memory)


@dataclass(frozen=True)
class CellConfig:
    """How structures are turned into the cells a model sees.

    Attributes:
        canonical: reduce every structure to its Niggli-reduced primitive cell (``False``: cells as given).
        symprec: spglib's distance tolerance in Å (atoms this close after a symmetry operation are
            the same site); also the largest distance a given atom may lie from its reduced image.
        angle_tolerance: spglib's angle tolerance in degrees (``-1``: spglib's own choice).
    """

    canonical: bool = True
    symprec: float = 0.01
    angle_tolerance: float = 5.0


AS_GIVEN = CellConfig(canonical=False)


class Reduced(NamedTuple):
    """A crystal in the cell a model uses, and what it was given: ``given_atoms`` atoms in the
    user's cell; ``fallback`` the reason it kept its own cell (``""``: reduced)."""

    crystal: Crystal
    given_atoms: int
    fallback: str


def stored_data_config(stored: dict) -> dict:
    """A checkpoint's ``config`` dict with ``data.cell`` filled in: a checkpoint written before cells
    were canonicalised saw cells as given and keeps doing so (``canonical=False``)."""
    stored = dict(stored)
    data = dict(stored.get("data") or {})
    data.setdefault("cell", {"canonical": False})
    stored["data"] = data
    return stored


def _distinct_structures(crystal: Crystal, lattice: np.ndarray, frac: np.ndarray, z: np.ndarray, symprec: float) -> str:
    """Why the reduced cell ``(lattice, frac, z)`` is not ``crystal`` written again (``""``: it is)."""
    n, m = crystal.num_atoms, len(z)
    if m == 0 or n % m:
        return f"spglib's primitive cell has {m} atoms, not a divisor of the given {n}"
    ratio = n // m
    given, reduced = Counter(crystal.atomic_numbers.tolist()), Counter(z.tolist())
    if {k: v * ratio for k, v in reduced.items()} != dict(given):
        return "spglib's primitive cell changes the composition"
    volume = abs(np.linalg.det(lattice))
    if not np.isclose(crystal.volume, volume * ratio, rtol=1e-4):
        return f"the primitive cell's volume {volume:.4g} Å^3 is not 1/{ratio} of the given {crystal.volume:.4g} Å^3"
    if ratio == 1:
        return ""
    inverse = np.linalg.inv(lattice)
    given_frac = crystal.cart_coords @ inverse  # [n, 3] the given atoms in the reduced basis
    for start in range(0, n, _CHECK_CHUNK):
        part = slice(start, start + _CHECK_CHUNK)
        distance = _squared_distance(given_frac[part], frac, lattice)  # [n', m]
        distance[crystal.atomic_numbers[part, None] != z[None, :]] = np.inf
        worst = float(np.sqrt(distance.min(axis=1).max()))
        if worst > symprec:
            return f"a given atom lies {worst:.3g} Å from every atom of its element in the primitive cell (symprec {symprec})"
    return ""


def _squared_distance(a: np.ndarray, b: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """``[n, m]`` squared distances (Å²) between fractional points ``a [n, 3]`` and ``b [m, 3]``, each
    offset taken to its nearest integer (the minimum image in a reduced basis, an upper bound otherwise)."""
    delta = a[:, None, :] - b[None, :, :]
    delta -= np.round(delta)
    cart = delta @ lattice
    return np.einsum("nmk,nmk->nm", cart, cart)


def _translations(crystal: Crystal, symprec: float):
    """The pure translations of ``crystal``: ``(shifts [T, 3], images [T, N], worst)``, the fractional
    translations shorter than a lattice vector that map the crystal onto itself (the zero shift
    first), for each the atom every atom lands on, and the largest distance (Å) an atom lands from
    its image (0 when there is no translation); ``None`` when the cell is too large to
    check here (spglib decides). Candidates are the shifts taking the first atom of the rarest
    element onto another, checked on that element first, then on every atom."""
    z, frac, lattice = crystal.atomic_numbers, crystal.frac_coords, crystal.lattice
    n = len(z)
    if n > _QUICK_ATOMS:  # large cells: spglib decides (the checks below are O(N²) in memory)
        return None
    counts = np.bincount(z)
    rare = frac[z == np.argmin(np.where(counts > 0, counts, n + 1))]  # [c, 3]
    limit = symprec * symprec
    shifts = rare[1:] - rare[0]  # [c-1, 3] the candidates: the first atom of the rarest element onto another
    delta = rare[None, :, None, :] + shifts[:, None, None, :] - rare[None, None, :, :]  # [c-1, c, c, 3]
    delta -= np.round(delta)
    cart = delta @ lattice
    on_rare = np.einsum("tijk,tijk->tij", cart, cart).min(axis=2).max(axis=1) <= limit  # [c-1]
    found, images, worst = [np.zeros(3)], [np.arange(n)], 0.0
    if on_rare.any():
        other = z[:, None] != z[None, :]  # [N, N]
        for shift in shifts[on_rare]:
            distance = _squared_distance(frac + shift, frac, lattice)  # [N, N]
            distance[other] = np.inf
            image = distance.argmin(axis=1)
            largest = distance[np.arange(n), image].max()
            if largest <= limit:
                found.append(shift - np.round(shift)), images.append(image)
                worst = max(worst, float(np.sqrt(largest)))
    return np.array(found), np.array(images), worst


def _integer_basis(rows: np.ndarray):
    """A basis ``[3, 3]`` (triangular) of the integer lattice spanned by ``rows [R, 3]`` (full rank),
    by Euclid's algorithm on each column in turn; exact, Python integers."""
    rows = [[int(v) for v in row] for row in rows]
    rows = [row for row in rows if any(row)]
    basis = []
    for col in range(3):
        while True:
            live = [row for row in rows if row[col]]
            if len(live) <= 1:
                break
            pivot = min(live, key=lambda row: abs(row[col]))
            for row in live:
                if row is not pivot:
                    q = row[col] // pivot[col]
                    for k in range(3):
                        row[k] -= q * pivot[k]
        live = [row for row in rows if row[col]]
        if not live:
            return None
        basis.append(live[0])
        rows = [row for row in rows if row is not live[0] and any(row)]
    return np.array(basis, dtype=np.int64)


def _primitive_from_translations(crystal: Crystal, shifts: np.ndarray, images: np.ndarray, symprec: float):
    """``(lattice, frac, z)`` of the primitive cell from the crystal's pure translations (see
    :func:`_translations`), or ``None`` when they do not form a group of the expected order (then
    spglib decides). The primitive lattice is spanned by the lattice vectors and the translations
    rounded to multiples of ``1/T``; each atom of the primitive cell is the mean of its ``T``
    translation images, so the cell does not depend on which image the file listed first."""
    n, order = crystal.num_atoms, len(shifts)
    if n % order:
        return None
    exact = np.rint(shifts * order)  # [T, 3] integers: every shift is a multiple of 1/T of the lattice
    if np.abs((shifts - exact / order) @ crystal.lattice).max() > symprec:
        return None
    basis = _integer_basis(np.vstack([order * np.eye(3, dtype=np.int64), exact.astype(np.int64)]))
    if basis is None or abs(round(np.linalg.det(basis))) != order * order:
        return None
    first = images.min(axis=0)  # [N] the smallest atom index of each atom's orbit
    keep = np.flatnonzero(first == np.arange(n))  # one atom of each orbit, in the file's order
    members = images[:, keep]  # [T, M]
    if len(keep) * order != n or not np.array_equal(np.sort(members.ravel()), np.arange(n)):
        return None
    frac = crystal.frac_coords
    offset = frac[members] - (exact / order)[:, None, :] - frac[keep][None]  # [T, M, 3]
    offset -= np.round(offset)
    mean = frac[keep] + offset.mean(axis=0)  # [M, 3] in the given basis
    to_primitive = order * np.linalg.inv(basis.astype(np.float64))  # P⁻¹ for the primitive basis P = basis / T
    lattice = basis.astype(np.float64) @ crystal.lattice / order
    return lattice, wrap_frac(mean @ to_primitive), crystal.atomic_numbers[keep]


def canonical_cell(crystal: Crystal, config: CellConfig = CellConfig()) -> Reduced:
    """``crystal`` in its Niggli-reduced primitive cell (ids, labels, source kept), or in its own cell
    with the reason when it cannot be reduced safely. ``config.canonical=False`` returns it unchanged."""
    return canonical_cells([crystal], config)[0]


def canonical_cells(crystals: list[Crystal], config: CellConfig = CellConfig()) -> list[Reduced]:
    """:func:`canonical_cell` of each of ``crystals``: the same cells, with the choice among same-metric
    bases made for all of them at once (:func:`crysdiff.cell_basis.choose_bases`)."""
    if not config.canonical:
        return [Reduced(crystal, crystal.num_atoms, "") for crystal in crystals]
    import spglib

    out: list[Reduced | None] = []
    todo = []  # (place in out, the crystal, primitive lattice, its frac, z, Niggli-reduced lattice)
    for crystal in crystals:
        found = _primitive(crystal, config)
        if isinstance(found, Reduced):
            out.append(found)
            continue
        lattice, frac, z = found
        reduced = spglib.niggli_reduce(lattice, eps=_NIGGLI_EPS)
        if reduced is None:
            out.append(Reduced(crystal, crystal.num_atoms, "spglib could not Niggli-reduce the primitive lattice"))
            continue
        todo.append((len(out), crystal, lattice, frac, z, np.asarray(reduced, dtype=np.float64)))
        out.append(None)
    if not todo:
        return out
    reduced = np.stack([item[5] for item in todo])  # [B, 3, 3]
    bases = np.round(np.stack([item[2] for item in todo]) @ np.linalg.inv(reduced))  # integer, det ±1: old basis in the new one
    unchanged = np.all(bases == np.eye(3), axis=(1, 2))  # frac @ I is frac, to the bit
    cells = [(lattice, wrap_frac(frac if keep else frac @ basis), z)
             for (_, _, _, frac, z, lattice), basis, keep in zip(todo, bases, unchanged)]
    for (place, crystal, *_), (lattice, frac), (_, _, z) in zip(todo, choose_bases(cells), cells):
        out[place] = Reduced(replace(crystal, atomic_numbers=z, frac_coords=frac, lattice=lattice), crystal.num_atoms, "")
    return out


def _primitive(crystal: Crystal, config: CellConfig):
    """``(lattice, frac, z)`` of the primitive cell of ``crystal``, or the :class:`Reduced` fallback
    saying why it keeps its own cell."""
    n = crystal.num_atoms
    counts = np.bincount(crystal.atomic_numbers)
    if np.gcd.reduce(counts[counts > 0]) == 1:  # no whole divisor of the element counts: already primitive
        return crystal.lattice, crystal.frac_coords, crystal.atomic_numbers
    found = _translations(crystal, config.symprec)
    if found is not None:
        if len(found[0]) == 1:  # no pure translation: already primitive
            return crystal.lattice, crystal.frac_coords, crystal.atomic_numbers
        shifts, images, worst = found
        if worst <= _CLEAR * config.symprec:  # a clear translation: the primitive cell is built here
            cell = _primitive_from_translations(crystal, shifts, images, config.symprec)
            if cell is not None and not _distinct_structures(crystal, *cell, config.symprec):
                return cell
    import spglib

    cell = (crystal.lattice, crystal.frac_coords, crystal.atomic_numbers)
    try:
        found = spglib.standardize_cell(cell, to_primitive=True, no_idealize=True, symprec=config.symprec,
                                        angle_tolerance=config.angle_tolerance)
    except Exception as error:  # spglib raises on inputs it cannot handle
        return Reduced(crystal, n, f"spglib failed: {error}")
    if found is None:
        return Reduced(crystal, n, "spglib found no symmetry at this tolerance")
    lattice, frac, z = (np.asarray(a) for a in found)
    z = z.astype(np.int64)
    problem = _distinct_structures(crystal, lattice, frac, z, config.symprec)
    if problem:
        return Reduced(crystal, n, problem)
    return lattice, frac, z
