"""Is a crystal like the ones a model was trained on? Per-row ``flags`` for predictions.

A fine-tuned checkpoint carries, under ``data["domain"]``, a summary of its training crystals:
how many contain each element, and low and high quantiles of four geometric features. A crystal
to predict gets a flag for every check it fails; an empty ``flags`` means all is well. The checks:

* ``unseen_element(X)``: element X is in none of the training crystals.
* ``rare_element(X:n)``: X is in only ``n`` training crystals, fewer than ``min_element_count``
  (recorded in the summary; :data:`MIN_ELEMENT_COUNT` by default).
* ``atoms_per_cell(v>hi)``: more atoms in the cell than all but a fraction :data:`TAIL` of the
  training crystals (the ``1 − TAIL`` quantile, ``hi``).
* ``volume_per_atom(v<lo)`` / ``volume_per_atom(v>hi)``: cell volume per atom (Å³) below the
  ``TAIL`` quantile or above the ``1 − TAIL`` quantile of the training crystals.
* ``min_distance(v<lo)``: the smallest distance between two atoms (Å, periodic images included)
  below the ``TAIL`` quantile of the training crystals.
* ``vacuum(v>hi)``: the thickest atom-free slab (Å) above the ``1 − TAIL`` quantile. For each
  lattice vector the atoms' fractional coordinates along it are sorted on the circle; the largest
  gap, times the spacing of the lattice planes it crosses (``V / |b × c|`` for ``a``), is the
  thickest empty slab parallel to the other two vectors. A slab model with 40 Å of vacuum has a
  40 Å gap; bulk crystals have gaps of a few Å (one interlayer spacing).
* ``cell_fallback``: the model reduces every structure to its canonical cell (``data.cell``, see
  :mod:`crysdiff.cells`), and this one could not be reduced, so it was predicted from the cell as
  given, which the model's answers may depend on.

With ``TAIL = 0.001`` each geometric check fires on about one training crystal in a thousand by
construction, so a flag means "rarer than nearly everything the model learnt from". Checkpoints
written before this summary existed still predict: their rows get only the checks that need no
training data (the geometric ones against :data:`DEFAULT_BOUNDS`, the mp2018 training set's
quantiles), and :func:`flags_note` says so.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from crysdiff.crystal import nearest_pair

__all__ = ["MIN_ELEMENT_COUNT", "TAIL", "DEFAULT_BOUNDS", "FEATURES", "crystal_features", "training_summary", "flags",
           "batch_flags", "predictor_summary", "flags_note"]

MIN_ELEMENT_COUNT = 10  # an element in fewer training crystals than this is "rare"
TAIL = 0.001  # geometric checks flag what lies beyond this quantile (each side that is checked)
SUMMARY_VERSION = 1

# feature -> which side(s) of the training distribution are checked
FEATURES: dict[str, tuple[str, ...]] = {
    "atoms_per_cell": ("high",),
    "volume_per_atom": ("low", "high"),
    "min_distance": ("low",),
    "vacuum": ("high",),
}

# The 0.1% / 99.9% quantiles of mp2018/train.csv.gz (31,884 crystals, the bundled models' training
# set; training_summary, rounded to 3 digits): used only for checkpoints without a summary of their own.
DEFAULT_BOUNDS: dict[str, dict[str, float]] = {
    "atoms_per_cell": {"low": 1.0, "high": 168.0},
    "volume_per_atom": {"low": 7.27, "high": 70.4},
    "min_distance": {"low": 0.968, "high": 4.48},
    "vacuum": {"low": 0.291, "high": 4.19},
}


def _vacuum(frac: np.ndarray, lattice: np.ndarray) -> float:
    """The thickest atom-free slab (Å) parallel to two lattice vectors (see the module docstring)."""
    volume = abs(float(np.linalg.det(lattice)))
    widest = 0.0
    for axis in range(3):
        others = [k for k in range(3) if k != axis]
        spacing = volume / float(np.linalg.norm(np.cross(lattice[others[0]], lattice[others[1]])))
        f = np.sort(frac[:, axis] - np.floor(frac[:, axis]))
        gaps = np.append(np.diff(f), 1.0 - f[-1] + f[0])  # the last gap wraps around the cell
        widest = max(widest, float(gaps.max()) * spacing)
    return widest


def crystal_features(frac: np.ndarray, lattice: np.ndarray) -> dict[str, float]:
    """The four geometric features of one crystal (``frac`` ``[N, 3]``, ``lattice`` ``[3, 3]``, rows in Å)."""
    frac = np.asarray(frac, dtype=np.float64)
    lattice = np.asarray(lattice, dtype=np.float64)
    n = frac.shape[0]
    return {
        "atoms_per_cell": float(n),
        "volume_per_atom": abs(float(np.linalg.det(lattice))) / n,
        "min_distance": nearest_pair(frac @ lattice, lattice)[2],
        "vacuum": _vacuum(frac, lattice),
    }


def _split(atomic_numbers, frac, lattices, counts) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(atomic_numbers, frac, lattice)`` of each crystal of flat arrays (as batches and caches hold them)."""
    ends = np.cumsum(counts)
    for k, end in enumerate(ends):
        start = end - counts[k]
        yield atomic_numbers[start:end], frac[start:end], lattices[k]


def training_summary(atomic_numbers, frac, lattices, counts, min_element_count: int = MIN_ELEMENT_COUNT) -> dict:
    """What :func:`flags` needs, from the training crystals as flat arrays (``CrystalCache.gather``).

    Plain containers only (it travels in the checkpoint): element symbol -> number of crystals
    containing it, and per feature its minimum, ``TAIL`` and ``1 − TAIL`` quantiles and maximum."""
    from pymatgen.core.periodic_table import Element

    elements: dict[int, int] = {}
    values: dict[str, list[float]] = {name: [] for name in FEATURES}
    for z, f, lattice in _split(np.asarray(atomic_numbers), np.asarray(frac), np.asarray(lattices), np.asarray(counts)):
        for element in np.unique(z).tolist():
            elements[element] = elements.get(element, 0) + 1
        for name, value in crystal_features(f, lattice).items():
            values[name].append(value)
    features = {}
    for name, column in values.items():
        column = np.asarray(column)
        low, high = np.quantile(column, [TAIL, 1 - TAIL])
        features[name] = {"min": float(column.min()), "low": float(low), "high": float(high), "max": float(column.max())}
    return {
        "version": SUMMARY_VERSION,
        "crystals": int(len(counts)),
        "min_element_count": int(min_element_count),
        "tail": TAIL,
        "element_counts": {Element.from_Z(z).symbol: n for z, n in sorted(elements.items())},
        "features": features,
    }


def _number(value: float) -> str:
    return f"{value:.3g}"


def flags(atomic_numbers: np.ndarray, frac: np.ndarray, lattice: np.ndarray, summary: dict | None,
          notes: Iterable[str] = ()) -> str:
    """The ``flags`` of one crystal against a training summary (``None``: geometric checks against
    :data:`DEFAULT_BOUNDS` only), ``"; "``-separated, empty when all is well. ``notes`` are
    flags raised elsewhere (``cell_fallback``), kept first."""
    from pymatgen.core.periodic_table import Element

    out = list(notes)
    if summary is not None:
        counts = summary.get("element_counts", {})
        minimum = int(summary.get("min_element_count", MIN_ELEMENT_COUNT))
        for z in np.unique(np.asarray(atomic_numbers)).tolist():
            symbol = Element.from_Z(int(z)).symbol
            seen = int(counts.get(symbol, 0))
            if seen == 0:
                out.append(f"unseen_element({symbol})")
            elif seen < minimum:
                out.append(f"rare_element({symbol}:{seen})")
    bounds = DEFAULT_BOUNDS if summary is None else summary.get("features", {})
    for name, value in crystal_features(frac, lattice).items():
        if name not in bounds:
            continue
        low, high = bounds[name]["low"], bounds[name]["high"]
        if "low" in FEATURES[name] and value < low:
            out.append(f"{name}({_number(value)}<{_number(low)})")
        if "high" in FEATURES[name] and value > high:
            out.append(f"{name}({_number(value)}>{_number(high)})")
    return "; ".join(out)


def batch_flags(batch, summary: dict | None, notes: list | None = None) -> list[str]:
    """:func:`flags` of each crystal of a collated batch (``atomic_numbers``, ``frac_coords``, ``lattice``,
    ``num_atoms``); ``notes[k]``: flags raised elsewhere for crystal ``k`` (``cell_fallback``)."""
    arrays = (batch.atomic_numbers.cpu().numpy(), batch.frac_coords.double().cpu().numpy(),
              batch.lattice.double().cpu().numpy(), batch.num_atoms.cpu().numpy())
    crystals = list(_split(*arrays))
    notes = notes if notes is not None else [()] * len(crystals)
    return [flags(z, f, lattice, summary, note) for (z, f, lattice), note in zip(crystals, notes)]


def predictor_summary(info: dict) -> dict | None:
    """The training summary in a :class:`~crysdiff.predict.Predictor`'s ``info`` (an ensemble: its
    first member's, as the members share a target and, as a rule, a training set)."""
    first = info["members"][0] if "members" in info else info
    return first.get("data", {}).get("domain")


def flags_note(summary: dict | None) -> str:
    """One line for users when a model carries no training summary (empty when it does)."""
    if summary is not None:
        return ""
    return ("this model's checkpoint carries no training-data summary: its flags check the cell's geometry against "
            "the mp2018 training set's ranges only, not which elements the model has seen")
