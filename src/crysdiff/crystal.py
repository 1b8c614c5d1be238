"""The crystal record and its conventions, stated once.

A crystal is ``(A, F, L)``:

* ``atomic_numbers`` — ``[N]`` int, atomic numbers Z (1 = H ... 118), never an embedding index.
* ``frac_coords`` — ``[N, 3]`` float64, fractional coordinates wrapped into ``[0, 1)``.
* ``lattice`` — ``[3, 3]`` float64, **rows are the lattice vectors** in Å, so
  ``cartesian = frac_coords @ lattice``. (The paper writes ``L = [l1, l2, l3]`` with columns;
  its Gram matrix ``LᵀL`` is our ``lattice @ lattice.T``.)

Every record also carries an ``id`` (material id, file stem, row number...), the ``source`` it
came from (a file path) and a ``record`` locator inside that source (row, frame, key) so that
any problem can be reported as "file, record, reason".

Validation happens once, here, when data enters the library (:func:`validate`). Everything
downstream may assume a valid crystal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "Crystal",
    "RecordError",
    "Notice",
    "ValidationSettings",
    "validate",
    "label_from_text",
    "wrap_frac",
    "from_pymatgen",
    "to_pymatgen",
    "from_ase",
    "to_ase",
]

MAX_ATOMIC_NUMBER = 118
# how missing label values are written in the wild (CSV cells, JARVIS "na", JSON null)
MISSING_MARKERS = frozenset({"", "na", "nan", "none", "null", "n/a"})


class RecordError(Exception):
    """A record that cannot be used, with where it came from and why.

    ``source`` is the file (or other origin), ``record`` the row / frame / key inside it,
    ``reason`` a sentence saying what was expected and what was found.
    """

    def __init__(self, source: str, record: str, reason: str):
        super().__init__(f"{source} [{record}]: {reason}")
        self.source = str(source)
        self.record = str(record)
        self.reason = reason

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "record": self.record, "reason": self.reason}

    def __reduce__(self):  # picklable across worker processes
        return (RecordError, (self.source, self.record, self.reason))


class Notice(NamedTuple):
    """A record that was read, with a caveat the user should hear about once per file (for example
    deuterium read as hydrogen); see :func:`crysdiff.io.payload.note`."""

    source: str
    record: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "record": self.record, "reason": self.reason}


@dataclass(frozen=True)
class ValidationSettings:
    """What counts as a usable crystal.

    Attributes:
        min_distance: smallest allowed distance (Å) between two atoms, periodic images included.
            0.5 Å is below any real bond (H–H in H2 is 0.74 Å) and catches duplicated sites.
        max_atoms: largest cell accepted, in atoms per cell.
        min_volume_per_atom: cells with less volume (Å³ per atom) are treated as singular.
        occupancy_tolerance: how far from 1 a site occupancy may be and still count as ordered.
    """

    min_distance: float = 0.5
    max_atoms: int = 5000
    min_volume_per_atom: float = 0.1
    occupancy_tolerance: float = 1e-3


@dataclass
class Crystal:
    """One ordered periodic crystal with optional labels. See the module docstring for units."""

    atomic_numbers: np.ndarray  # [N] int64
    frac_coords: np.ndarray  # [N, 3] float64 in [0, 1)
    lattice: np.ndarray  # [3, 3] float64, rows = lattice vectors, Å
    id: str = ""
    labels: dict[str, float] = field(default_factory=dict)
    source: str = ""
    record: str = ""

    @property
    def num_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])

    @property
    def cart_coords(self) -> np.ndarray:
        return self.frac_coords @ self.lattice  # [N, 3]

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.lattice)))

    @property
    def formula(self) -> str:
        from collections import Counter

        from pymatgen.core.periodic_table import Element

        counts = Counter(int(z) for z in self.atomic_numbers)
        return "".join(
            f"{Element.from_Z(z).symbol}{n if n > 1 else ''}" for z, n in sorted(counts.items())
        )


def wrap_frac(frac_coords: np.ndarray) -> np.ndarray:
    """Wrap fractional coordinates into [0, 1), mapping values that round to 1.0 onto 0.0."""
    wrapped = frac_coords - np.floor(frac_coords)
    wrapped[wrapped >= 1.0] = 0.0  # -1e-17 - floor(-1e-17) == 1.0 in float64
    return wrapped


_IMAGES = np.array([(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)], dtype=np.float64)  # [27, 3]


def nearest_pair(cart: np.ndarray, lattice: np.ndarray) -> tuple[int, int, float]:
    """The closest pair of atoms ``(i, j, distance)`` of one crystal, over the cell and its 26
    neighbouring images (``j == i`` for an atom and its own image, as in a one-atom cell).

    Small cells: dense over the 27 images. Large cells: a k-d tree over the images, so memory stays
    linear in N.
    """
    n = cart.shape[0]
    shifts = _IMAGES @ lattice  # [27, 3]
    if n <= 64:
        # |d + s|² = |d|² + 2 d·s + |s|² for every pair d = r_j - r_i and image shift s: one matmul
        # instead of an [N, N, 27, 3] array (squared distances; one square root at the end)
        diff = (cart[None, :, :] - cart[:, None, :]).reshape(-1, 3)  # [N*N, 3]
        dist2 = (diff * diff).sum(-1)[:, None] + 2.0 * (diff @ shifts.T) + (shifts * shifts).sum(-1)[None, :]
        dist2 = dist2.reshape(n, n, 27)
        dist2[np.arange(n), np.arange(n), 13] = np.inf  # an atom and itself in the home cell
        flat = int(np.argmin(dist2))
        i, j, _ = np.unravel_index(flat, dist2.shape)
        return int(i), int(j), math.sqrt(max(float(dist2.flat[flat]), 0.0))
    from scipy.spatial import cKDTree

    images = (cart[None, :, :] + shifts[:, None, :]).reshape(-1, 3)  # [27N, 3]
    distances, hits = cKDTree(images).query(cart, k=2)  # the nearest image of each atom is itself
    i = int(np.argmin(distances[:, 1]))
    return i, int(hits[i, 1]) % n, float(distances[i, 1])


def _min_image_clash(cart: np.ndarray, lattice: np.ndarray, min_distance: float) -> tuple[int, int, float] | None:
    """The closest pair of atoms (i, j, distance) if it is closer than ``min_distance``."""
    i, j, d = nearest_pair(cart, lattice)
    return (i, j, d) if d < min_distance else None


def validate(crystal: Crystal, settings: ValidationSettings = ValidationSettings()) -> Crystal:
    """Check a crystal and return it with coordinates wrapped into [0, 1) and canonical dtypes.

    Raises:
        RecordError: naming ``crystal.source`` and ``crystal.record`` and what is wrong.
    """

    def fail(reason: str) -> RecordError:
        return RecordError(crystal.source, crystal.record or crystal.id, reason)

    z = np.asarray(crystal.atomic_numbers)
    frac = np.asarray(crystal.frac_coords, dtype=np.float64)
    lattice = np.asarray(crystal.lattice, dtype=np.float64)
    n = z.shape[0] if z.ndim == 1 else -1
    if n <= 0:
        raise fail("the structure has no atoms" if n == 0 else f"atomic numbers must be 1-D, got shape {z.shape}")
    if frac.shape != (n, 3):
        raise fail(f"expected fractional coordinates of shape ({n}, 3), found {frac.shape}")
    if lattice.shape != (3, 3):
        raise fail(f"expected a 3x3 lattice, found shape {lattice.shape}")
    if n > settings.max_atoms:
        raise fail(f"{n} atoms per cell exceeds the limit of {settings.max_atoms} (ValidationSettings.max_atoms)")
    if not np.issubdtype(z.dtype, np.integer):
        if not np.all(np.equal(np.mod(z, 1), 0)):
            raise fail("atomic numbers must be integers")
    z = z.astype(np.int64)
    bad = z[(z < 1) | (z > MAX_ATOMIC_NUMBER)]
    if bad.size:
        raise fail(f"atomic number {int(bad[0])} is not an element (expected 1..{MAX_ATOMIC_NUMBER})")
    if not np.all(np.isfinite(lattice)):
        raise fail("the lattice contains NaN or infinite values")
    if not np.all(np.isfinite(frac)):
        raise fail("the coordinates contain NaN or infinite values")
    volume = abs(float(np.linalg.det(lattice)))
    if not volume > settings.min_volume_per_atom * n:
        raise fail(
            f"the lattice is singular or degenerate: cell volume {volume:.3g} Å^3 for {n} atoms "
            f"(minimum {settings.min_volume_per_atom} Å^3 per atom)"
        )
    lengths = np.linalg.norm(lattice, axis=1)
    if lengths.min() < settings.min_distance:
        raise fail(
            f"a lattice vector is {lengths.min():.3g} Å long, shorter than the minimum interatomic "
            f"distance {settings.min_distance} Å (every atom would overlap its own image)"
        )
    frac = wrap_frac(frac)
    clash = _min_image_clash(frac @ lattice, lattice, settings.min_distance)
    if clash is not None:
        i, j, d = clash
        raise fail(
            f"atoms {i} and {j} are {d:.3f} Å apart, closer than the minimum {settings.min_distance} Å "
            "(duplicated or overlapping sites)"
        )
    labels = {}
    for key, value in crystal.labels.items():
        labels[key] = _to_float(value)
    return Crystal(
        atomic_numbers=z,
        frac_coords=frac,
        lattice=lattice,
        id=str(crystal.id),
        labels=labels,
        source=crystal.source,
        record=crystal.record,
    )


_CERTIFY_ATOMS = 128  # crystals up to this size have their atom pairs checked together (larger: validate)
_CERTIFY_TERMS = 1 << 20  # (pair, image) distances evaluated at once (bounds memory)
_CERTIFY_MARGIN = 1e-6  # Å² (plus 1e-12 of the largest |image shift|²): what a rearranged sum may be off by, far over


def validated_many(crystals: list[Crystal], settings: ValidationSettings = ValidationSettings()) -> list[Crystal | None]:
    """:func:`validate` of many crystals, with the checks made for all of them together: each is the
    Crystal :func:`validate` returns, to the bit, or ``None`` where this could not certify it (it
    may fail, or lies next to a limit, or does not have the common dtypes and shapes): the caller
    validates those one at a time (:func:`validate` raises the exact error).

    The limits are checked with margins (a volume, a length or a distance computed in another order
    is off by ~1e-13 of its size, the margins are 1e-9 and 1e-6 Å²), so whatever is certified here
    passes :func:`validate`'s own tests; the overlap check covers the same 27 images of each cell."""
    out: list[Crystal | None] = [None] * len(crystals)
    keep, zs, fracs, lattices = [], [], [], []
    for k, crystal in enumerate(crystals):
        z, frac, lattice = crystal.atomic_numbers, crystal.frac_coords, crystal.lattice
        if not (isinstance(z, np.ndarray) and isinstance(frac, np.ndarray) and isinstance(lattice, np.ndarray)
                and z.ndim == 1 and z.dtype.kind in "iu" and frac.dtype == np.float64 and lattice.dtype == np.float64
                and 0 < z.shape[0] <= settings.max_atoms and frac.shape == (z.shape[0], 3) and lattice.shape == (3, 3)):
            continue
        keep.append(k), zs.append(z), fracs.append(frac), lattices.append(lattice)
    if not keep:
        return out
    counts = np.array([z.shape[0] for z in zs])
    z_all = np.concatenate(zs).astype(np.int64)
    frac_all = np.concatenate(fracs)
    lattice_all = np.stack(lattices)  # [B, 3, 3]
    owner = np.repeat(np.arange(len(keep)), counts)
    good = np.ones(len(keep), dtype=bool)
    good &= np.bincount(owner, weights=(z_all < 1) | (z_all > MAX_ATOMIC_NUMBER), minlength=len(keep)) == 0
    good &= np.isfinite(lattice_all).all(axis=(1, 2))
    good &= np.bincount(owner, weights=~np.isfinite(frac_all).all(axis=1), minlength=len(keep)) == 0
    lattice_all = np.where(good[:, None, None], lattice_all, np.eye(3))  # no NaN below; those are not certified
    volume = np.abs(np.linalg.det(lattice_all))
    good &= volume > settings.min_volume_per_atom * counts * (1 + 1e-9) + 1e-9
    good &= np.sqrt((lattice_all * lattice_all).sum(axis=2)).min(axis=1) > settings.min_distance * (1 + 1e-9)
    wrapped = wrap_frac(np.where(good[owner, None], frac_all, 0.0))
    start = np.concatenate([[0], np.cumsum(counts)])
    good &= counts <= _CERTIFY_ATOMS  # larger cells: validate's k-d tree
    good &= _apart(wrapped, lattice_all, start, np.flatnonzero(good), settings.min_distance)
    for b in np.flatnonzero(good):
        crystal = crystals[keep[b]]
        lo, hi = start[b], start[b + 1]
        out[keep[b]] = Crystal(atomic_numbers=z_all[lo:hi], frac_coords=wrapped[lo:hi], lattice=lattices[b],
                               id=str(crystal.id), labels={key: _to_float(value) for key, value in crystal.labels.items()},
                               source=crystal.source, record=crystal.record)
    return out


def _apart(frac: np.ndarray, lattices: np.ndarray, start: np.ndarray, which: np.ndarray, min_distance: float) -> np.ndarray:
    """``[B]``: for the crystals ``which`` (atoms ``start[b]:start[b + 1]`` of ``frac``), whether every two
    atoms, and every atom and its images, are over ``min_distance`` apart (with the margin) over the 27
    images :func:`nearest_pair` looks at; ``False`` elsewhere. Each pair is taken once (``i < j``: the
    pair ``j, i`` has the same distances at the opposite images), the distances of all crystals together."""
    out = np.zeros(len(lattices), dtype=bool)
    if not len(which):
        return out
    shifts = _IMAGES @ lattices[which]  # [W, 27, 3]
    shift2 = np.einsum("wsk,wsk->ws", shifts, shifts)  # [W, 27]
    limit = min_distance * min_distance + _CERTIFY_MARGIN + 1e-12 * shift2.max(axis=1)  # [W]
    self_ok = np.where(np.arange(27) == 13, np.inf, shift2).min(axis=1) > limit  # an atom and its own images
    shift2_t = np.ascontiguousarray(shift2.T)  # [27, W]
    grams = lattices[which] @ lattices[which].transpose(0, 2, 1)  # [W, 3, 3]
    eigen = np.linalg.eigvalsh(grams)  # [W, 3] ascending
    floor = np.maximum(eigen[:, 0] - 1e-9 * eigen[:, 2], 0.0) * (1 - 1e-9)  # λ_min, rounded down
    n = start[which + 1] - start[which]
    pairs = n * (n - 1) // 2
    ok = self_ok.copy()
    lo = 0
    while lo < len(which):  # crystals in chunks of about _CERTIFY_TERMS (pair, image) terms
        hi = lo + max(1, int(np.searchsorted(np.cumsum(pairs[lo:]) * 27, _CERTIFY_TERMS)))
        i, j, w = [], [], []
        for k in range(lo, hi):
            if pairs[k]:
                a, b = _upper_pairs(int(n[k]))
                i.append(a + start[which[k]]), j.append(b + start[which[k]]), w.append(np.full(len(a), k))
        if i:
            i, j, w = np.concatenate(i), np.concatenate(j), np.concatenate(w)
            step = frac[j] - frac[i]  # [P, 3] r_j - r_i = step @ L
            # a lower bound first: |(step + image) L|² >= λ_min(L Lᵀ) |step + image|², whose smallest value
            # over the 27 images is that of the nearest integer offsets; only pairs it cannot clear are summed
            nearest = step - np.rint(step)
            near = floor[w] * np.einsum("pk,pk->p", nearest, nearest) <= limit[w]
            step, w = step[near], w[near]
            gram = grams[w]  # [P', 3, 3]
            along = step[:, 0, None] * gram[:, 0] + step[:, 1, None] * gram[:, 1] + step[:, 2, None] * gram[:, 2]  # step G
            # |d + s|² = |d|² + 2 d·s + |s|² with s = image @ L: d·s = (step G)·image, one matmul for all pairs
            dist2 = (2.0 * _IMAGES) @ along.T  # [27, P']
            dist2 += shift2_t[:, w]
            distance = dist2.min(axis=0) + np.einsum("pk,pk->p", along, step)
            ok &= np.bincount(w, weights=distance <= limit[w], minlength=len(which)) == 0
        lo = hi
    out[which] = ok
    return out


_PAIRS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _upper_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = _PAIRS.get(n)
    if pairs is None:
        pairs = _PAIRS[n] = np.triu_indices(n, 1)
    return pairs


def label_from_text(text: str) -> float | None:
    """A label written as text: a missing marker ('', 'na', 'nan', ...) is NaN, a number its float,
    anything else None (the readers report it; :class:`Crystal` stores NaN)."""
    text = text.strip()
    if text.lower() in MISSING_MARKERS:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return None


def _to_float(value: Any) -> float:
    """A label value as float; missing markers (None, '', 'na', 'nan') become NaN."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        out = label_from_text(value)
        return math.nan if out is None else out
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


# --- adapters at the edge ------------------------------------------------------------------------


def from_pymatgen(structure, id: str = "", labels: dict | None = None, source: str = "<pymatgen>", record: str = "") -> Crystal:
    """A :class:`Crystal` from a ``pymatgen.core.Structure`` (ordered structures only)."""
    if not structure.is_ordered:
        raise RecordError(source, record or id, "the structure has partial occupancies (disordered sites); crysdiff needs an ordered structure")
    return Crystal(
        atomic_numbers=np.array([site.specie.Z for site in structure], dtype=np.int64),
        frac_coords=np.array(structure.frac_coords, dtype=np.float64),
        lattice=np.array(structure.lattice.matrix, dtype=np.float64),
        id=id,
        labels=dict(labels or {}),
        source=source,
        record=record,
    )


def to_pymatgen(crystal: Crystal):
    """The crystal as a ``pymatgen.core.Structure``."""
    from pymatgen.core import Lattice, Structure

    return Structure(
        Lattice(crystal.lattice), [int(z) for z in crystal.atomic_numbers], crystal.frac_coords, coords_are_cartesian=False
    )


def from_ase(atoms, id: str = "", labels: dict | None = None, source: str = "<ase>", record: str = "") -> Crystal:
    """A :class:`Crystal` from an ``ase.Atoms`` with a full 3-D cell."""
    cell = np.array(atoms.cell[:], dtype=np.float64)
    if abs(np.linalg.det(cell)) < 1e-8:
        raise RecordError(source, record or id, "the ASE Atoms object has no 3-D cell (is it periodic?)")
    return Crystal(
        atomic_numbers=np.array(atoms.numbers, dtype=np.int64),
        frac_coords=np.array(atoms.get_scaled_positions(wrap=False), dtype=np.float64),
        lattice=cell,
        id=id,
        labels=dict(labels or {}),
        source=source,
        record=record,
    )


def to_ase(crystal: Crystal):
    """The crystal as a periodic ``ase.Atoms``."""
    from ase import Atoms

    return Atoms(numbers=crystal.atomic_numbers, scaled_positions=crystal.frac_coords, cell=crystal.lattice, pbc=True)
