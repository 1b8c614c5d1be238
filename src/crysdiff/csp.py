"""Crystal structure prediction with a pre-trained denoiser: generate structures for compositions,
and score them against known structures as in the DiffCSP benchmark.

* :func:`composition_atoms` turns ``"SrTiO3"`` and a number of formula units (or of atoms) into
  atomic numbers.
* :func:`generate` batches many compositions and samples (predictor-corrector for the fractional
  coordinates, ancestral DDPM for the lattice; :func:`crysdiff.sampling.sample_structures`).
* :func:`match` compares a generated structure with the reference using pymatgen's
  ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``; the RMSE is pymatgen's RMS displacement,
  normalised by ``(V/N)^(1/3)``, as DiffCSP reports it. A sample is counted only if it is a usable
  crystal (finite lattice with positive volume, no two atoms closer than 0.5 Å).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from crysdiff.batching import EdgeSettings, make_batch
from crysdiff.crystal import Crystal, RecordError, ValidationSettings, validate

__all__ = ["composition_atoms", "generate", "match", "validity", "volume_range", "MATCHER_SETTINGS", "CSPResult",
           "DEFAULT_VOLUME_PER_ATOM"]

MATCHER_SETTINGS = dict(stol=0.5, angle_tol=10, ltol=0.3)
# Volume per atom (Å³) a physically valid sample must have when its checkpoint records no training
# range: the smallest and largest of mp2018/train.csv.gz (31,884 crystals; crysdiff.domain).
DEFAULT_VOLUME_PER_ATOM = (4.81, 114.1)


def composition_atoms(formula: str, formula_units: int | None = None, num_atoms: int | None = None) -> np.ndarray:
    """Atomic numbers ``[N]`` for ``formula`` times ``formula_units`` (or filling ``num_atoms``).

    Raises:
        ValueError: for an unreadable formula or a ``num_atoms`` that is not a multiple of the
            reduced formula's size.
    """
    from pymatgen.core import Composition

    try:
        composition = Composition(formula)
    except Exception as error:  # pymatgen raises several types for bad formulas
        raise ValueError(f"cannot read composition {formula!r}: {error}") from None
    if not composition.valid or composition.num_atoms == 0:
        raise ValueError(f"cannot read composition {formula!r}")
    reduced, factor = composition.get_reduced_composition_and_factor()
    if any(abs(v - round(v)) > 1e-6 for v in reduced.values()):
        raise ValueError(f"composition {formula!r} has fractional amounts; give an integer formula")
    per_unit = int(round(reduced.num_atoms))
    if num_atoms is not None:
        if num_atoms % per_unit:
            raise ValueError(f"{num_atoms} atoms is not a whole number of {reduced.reduced_formula} units ({per_unit} atoms each)")
        units = num_atoms // per_unit
    else:
        units = formula_units if formula_units is not None else int(round(factor))
    if units < 1:
        raise ValueError("the number of formula units must be at least 1")
    numbers = []
    for element, amount in sorted(reduced.items(), key=lambda kv: kv[0].Z):
        numbers += [element.Z] * int(round(amount)) * units
    return np.array(numbers, dtype=np.int64)


@torch.no_grad()
def generate(model, diffusion, compositions: list[np.ndarray], *, batch_size: int = 256, seed: int = 0,
             edges: EdgeSettings = EdgeSettings(), device: str | torch.device = "cpu",
             progress: bool = False, **sampler) -> list[Crystal]:
    """One generated crystal per entry of ``compositions`` (each an ``[N]`` array of atomic numbers).

    ``sampler`` holds :func:`crysdiff.sampling.sample_structures`'s settings (``corrector_steps``,
    ``step_lr``, ``timesteps``, ``lattice_snr``, ``schedule``, ``late_below``, ``late_corrector_steps``,
    ``late_step_lr``); ``None`` means its default."""
    from crysdiff.sampling import sample_structures

    generator = torch.Generator(device=device).manual_seed(seed)
    out: list[Crystal] = []
    starts = range(0, len(compositions), batch_size)
    if progress:
        from rich.progress import track

        starts = track(starts, description="sampling", transient=True)
    kwargs = {key: value for key, value in sampler.items() if value is not None} | {"generator": generator}
    for start in starts:
        part = compositions[start:start + batch_size]
        batch = composition_batch(part, seed + start, edges, device)
        out += to_crystals(part, *sample_structures(model, diffusion, batch, **kwargs), start)
    return out


def composition_batch(compositions: list[np.ndarray], seed: int, edges: EdgeSettings = EdgeSettings(),
                      device: str | torch.device = "cpu"):
    """The batch :func:`generate` samples ``compositions`` in: positions are placeholders (the
    sampler starts from noise) that only shape a kNN edge list, drawn with ``seed``."""
    num_atoms = np.array([len(z) for z in compositions])
    placeholder = np.random.default_rng(seed).random((int(num_atoms.sum()), 3))
    lattices = np.repeat(np.eye(3)[None] * 5.0, len(compositions), 0)
    return make_batch(np.concatenate(compositions), placeholder, lattices, num_atoms, edges=edges).to(device)


def to_crystals(compositions: list[np.ndarray], frac: torch.Tensor, lattice: torch.Tensor,
                start: int = 0) -> list[Crystal]:
    """The sampler's ``(frac [N, 3], lattice [B, 3, 3])`` for ``compositions`` as crystals."""
    frac, lattice = frac.double().cpu().numpy(), lattice.double().cpu().numpy()
    offsets = np.concatenate([[0], np.cumsum([len(z) for z in compositions])])
    return [Crystal(atomic_numbers=np.asarray(z), frac_coords=frac[offsets[k]:offsets[k + 1]] % 1.0,
                    lattice=lattice[k], id=f"sample {start + k}", source="<generated>")
            for k, z in enumerate(compositions)]


def is_usable(crystal: Crystal, min_distance: float = 0.5) -> bool:
    """A generated structure counts only if it would pass the data layer's checks (any volume)."""
    return validity(crystal, (0.0, math.inf), min_distance) == ""


def volume_range(data: dict) -> tuple[float, float]:
    """The training crystals' volume per atom (min, max) that a pre-training checkpoint's ``data``
    summary records, else :data:`DEFAULT_VOLUME_PER_ATOM`."""
    recorded = data.get("train", {}).get("volume_per_atom")
    return (recorded["min"], recorded["max"]) if recorded else DEFAULT_VOLUME_PER_ATOM


def validity(crystal: Crystal, volumes: tuple[float, float] = DEFAULT_VOLUME_PER_ATOM, min_distance: float = 0.5) -> str:
    """Why a generated structure is not physically valid, or ``""`` when it is: a usable crystal
    (finite lattice, positive volume, no two atoms closer than ``min_distance`` Å) whose volume
    per atom lies within ``volumes`` (the training range)."""
    try:
        validate(crystal, ValidationSettings(min_distance=min_distance, max_atoms=10**6))
    except RecordError as error:
        return error.reason
    per_atom = crystal.volume / crystal.num_atoms
    if not volumes[0] <= per_atom <= volumes[1]:
        return f"volume per atom {per_atom:.3g} Å³ outside the training range {volumes[0]:.3g}-{volumes[1]:.3g}"
    return ""


def match(generated: Crystal, reference: Crystal, matcher=None) -> float | None:
    """Normalised RMS displacement if ``generated`` matches ``reference``, else ``None``."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from crysdiff.crystal import to_pymatgen

    if not is_usable(generated):
        return None
    matcher = matcher or StructureMatcher(**MATCHER_SETTINGS)
    try:
        rms = matcher.get_rms_dist(to_pymatgen(generated), to_pymatgen(reference))
    except Exception:  # pymatgen can fail on degenerate generated lattices
        return None
    return None if rms is None else float(rms[0])


@dataclass
class CSPResult:
    """Per-reference outcome: RMSE of the first sample (one-shot) and the best over ``K`` samples."""

    id: str
    formula: str
    num_atoms: int
    one_shot_rmse: float | None
    best_rmse: float | None
    matched_samples: int

    def as_row(self) -> dict:
        return {
            "id": self.id, "formula": self.formula, "num_atoms": self.num_atoms,
            "one_shot_match": self.one_shot_rmse is not None,
            "one_shot_rmse": self.one_shot_rmse if self.one_shot_rmse is not None else math.nan,
            "best_match": self.best_rmse is not None,
            "best_rmse": self.best_rmse if self.best_rmse is not None else math.nan,
            "matched_samples": self.matched_samples,
        }
