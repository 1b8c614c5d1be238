"""Symmetry transformations of crystals and the test helpers built on them (shipped, like e3nn's).

Every transformation maps a crystal onto *the same* periodic structure written differently, so an
invariant quantity must not change and an equivariant one must change in the prescribed way:

* :func:`rotate_lattice` — ``lattice -> lattice @ Qᵀ`` for an orthogonal ``Q`` (rotation, or
  reflection when ``det Q = -1``); fractional coordinates are unchanged and Cartesian coordinates
  rotate, ``cart -> cart @ Qᵀ``.
* :func:`permute_atoms` — reorder the atoms within each crystal.
* :func:`shift_all` — one common fractional shift of every atom of a crystal, wrapped into ``[0, 1)``.
* :func:`shift_one_atom_by_lattice_vector` — move one atom by an integer lattice vector, wrapped or
  not (the network sees ``f_j - f_i`` only through periodic features, so both must be invisible).
* :func:`supercell` — replicate the cell ``n1 x n2 x n3`` times (same structure, larger cell).
* :func:`change_basis` — the same lattice in another basis, ``lattice -> M @ lattice`` for an integer
  ``M`` with ``det M = ±1``, fractional coordinates ``-> frac @ M⁻¹`` wrapped into ``[0, 1)``.
* :func:`conventional_cell` — the conventional (standard) cell spglib finds, atoms kept where they are.

Each accepts either a :class:`~crysdiff.crystal.Crystal` (numpy, returns a new ``Crystal``) or a
PyG ``Batch`` from :mod:`crysdiff.batching` (torch, returns a new ``Batch``; for batches every
transform acts on each crystal). :func:`assert_invariant` and :func:`assert_equivariant` compare a
function's outputs before and after a transformation, for tensors, arrays or dicts of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from crysdiff.batching import EdgeSettings, make_batch
from crysdiff.crystal import Crystal, wrap_frac

__all__ = [
    "random_orthogonal",
    "random_permutation",
    "rotate_lattice",
    "permute_atoms",
    "shift_all",
    "shift_one_atom_by_lattice_vector",
    "supercell",
    "change_basis",
    "conventional_cell",
    "assert_invariant",
    "assert_equivariant",
]


def _generator(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(0 if seed is None else int(seed))


def random_orthogonal(seed: int | torch.Generator | None = None, reflect: bool = False, dtype=torch.float64) -> torch.Tensor:
    """A random ``[3, 3]`` orthogonal matrix (Haar measure), ``det = -1`` if ``reflect`` else ``+1``."""
    gen = _generator(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))[None, :]  # unique QR -> Haar-distributed Q
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def random_permutation(x: Crystal | Any, seed: int | torch.Generator | None = None) -> np.ndarray:
    """A random reordering of the atoms within each crystal: ``[N]`` global indices ``perm`` such that
    new atom ``k`` is old atom ``perm[k]`` (use with :func:`permute_atoms`)."""
    gen = _generator(seed)
    if isinstance(x, Crystal):
        return torch.randperm(x.num_atoms, generator=gen).numpy()
    ptr = x.ptr.cpu().numpy()
    parts = [lo + torch.randperm(int(hi - lo), generator=gen).numpy() for lo, hi in zip(ptr[:-1], ptr[1:])]
    return np.concatenate(parts)


def _with(batch, **fields):
    """A shallow copy of ``batch`` with some fields replaced."""
    out = batch.clone()
    for key, value in fields.items():
        setattr(out, key, value)
    return out


def rotate_lattice(x, rotation):
    """``lattice -> lattice @ rotationᵀ`` (fractional coordinates unchanged).

    ``rotation`` is ``[3, 3]``, or ``[B, 3, 3]`` (one per crystal) for a batch.
    """
    if isinstance(x, Crystal):
        q = np.asarray(rotation, dtype=np.float64)
        return replace(x, lattice=x.lattice @ q.T)
    q = torch.as_tensor(rotation).to(x.lattice)
    return _with(x, lattice=x.lattice @ q.transpose(-1, -2))


def permute_atoms(x, perm):
    """Reorder atoms: new atom ``k`` is old atom ``perm[k]``; ``perm`` keeps each atom in its crystal.

    For a batch the edges are relabelled (same edge set), so all-pairs and kNN graphs stay valid.
    """
    if isinstance(x, Crystal):
        perm = np.asarray(perm)
        return replace(x, atomic_numbers=x.atomic_numbers[perm], frac_coords=x.frac_coords[perm])
    perm = torch.as_tensor(np.asarray(perm), dtype=torch.long, device=x.frac_coords.device)
    if not torch.equal(x.batch[perm], x.batch):
        raise ValueError("the permutation moves atoms between crystals: it must reorder atoms within each crystal")
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    return _with(
        x, atomic_numbers=x.atomic_numbers[perm], frac_coords=x.frac_coords[perm], edge_index=inverse[x.edge_index]
    )


def shift_all(x, shift):
    """Add one fractional shift to every atom of a crystal and wrap into ``[0, 1)``.

    ``shift`` is ``[3]`` (the same for every crystal) or, for a batch, ``[B, 3]``.
    """
    if isinstance(x, Crystal):
        return replace(x, frac_coords=wrap_frac(x.frac_coords + np.asarray(shift, dtype=np.float64)))
    shift = torch.as_tensor(shift).to(x.frac_coords)
    if shift.dim() == 2:
        shift = shift[x.batch]  # [N, 3]
    moved = x.frac_coords + shift
    return _with(x, frac_coords=moved - torch.floor(moved))


def shift_one_atom_by_lattice_vector(x, atom: int, n: Sequence[int] = (1, 0, 0), wrap: bool = False):
    """Move atom ``atom`` (global index for a batch) by the lattice vector ``n @ lattice``, i.e. add the
    integer vector ``n`` to its fractional coordinates. ``wrap=False`` leaves it outside ``[0, 1)``."""
    offset = np.asarray(n, dtype=np.float64)
    if isinstance(x, Crystal):
        frac = x.frac_coords.copy()
        frac[atom] += offset
        return replace(x, frac_coords=wrap_frac(frac) if wrap else frac)
    frac = x.frac_coords.clone()
    frac[atom] += torch.as_tensor(offset).to(frac)
    if wrap:
        frac = frac - torch.floor(frac)
    return _with(x, frac_coords=frac)


def _supercell_arrays(z: np.ndarray, frac: np.ndarray, lattice: np.ndarray, scale: Sequence[int]):
    scale_arr = np.asarray(scale, dtype=np.int64)
    cells = np.array(list(itertools.product(*(range(s) for s in scale_arr))), dtype=np.float64)  # [n1 n2 n3, 3]
    new_frac = ((frac[None, :, :] + cells[:, None, :]) / scale_arr).reshape(-1, 3)  # image-major order
    return np.tile(z, len(cells)), new_frac, lattice * scale_arr[:, None]


def supercell(x, scale: Sequence[int] = (2, 1, 1), edges: EdgeSettings = EdgeSettings()):
    """The ``n1 x n2 x n3`` supercell: lattice rows scaled by ``n1, n2, n3``, atoms replicated (the
    original cell's atoms first, then image by image). For a batch, edges are rebuilt with ``edges``."""
    if isinstance(x, Crystal):
        z, frac, lattice = _supercell_arrays(x.atomic_numbers, x.frac_coords, x.lattice, scale)
        return replace(x, atomic_numbers=z, frac_coords=frac, lattice=lattice)
    ptr = x.ptr.cpu().numpy()
    z_all, frac_all, lat_all = (x.atomic_numbers.cpu().numpy(), x.frac_coords.cpu().double().numpy(), x.lattice.cpu().double().numpy())
    parts = [_supercell_arrays(z_all[lo:hi], frac_all[lo:hi], lat_all[b], scale) for b, (lo, hi) in enumerate(zip(ptr[:-1], ptr[1:]))]
    out = make_batch(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.stack([p[2] for p in parts]),
        np.array([len(p[0]) for p in parts]),
        edges=edges,
    )
    return out.to(x.frac_coords.device)


def _unimodular(matrix) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (3, 3) or not np.array_equal(m, np.round(m)) or round(abs(np.linalg.det(m))) != 1:
        raise ValueError(f"a change of basis needs a 3x3 integer matrix of determinant ±1, got {m.tolist()}")
    return m


def change_basis(x, matrix):
    """The same lattice in another basis: new lattice rows ``matrix @ lattice`` (``matrix`` a 3x3
    integer matrix of determinant ±1), fractional coordinates ``frac @ matrix⁻¹`` wrapped into
    ``[0, 1)``. Cartesian positions do not move; for a batch the edges stay those of the same atoms."""
    m = _unimodular(matrix)
    inverse = np.round(np.linalg.inv(m))  # integer as well
    if isinstance(x, Crystal):
        return replace(x, lattice=m @ x.lattice, frac_coords=wrap_frac(x.frac_coords @ inverse))
    moved = x.frac_coords @ torch.as_tensor(inverse).to(x.frac_coords)
    return _with(x, lattice=torch.as_tensor(m).to(x.lattice) @ x.lattice, frac_coords=moved - torch.floor(moved))


def conventional_cell(crystal: Crystal, symprec: float = 0.01, angle_tolerance: float = 5.0) -> Crystal:
    """The conventional standard cell of ``crystal`` (spglib ``standardize_cell`` with
    ``no_idealize``: the atoms keep their positions, the lattice is not symmetrised)."""
    import spglib

    found = spglib.standardize_cell((crystal.lattice, crystal.frac_coords, crystal.atomic_numbers), to_primitive=False,
                                    no_idealize=True, symprec=symprec, angle_tolerance=angle_tolerance)
    if found is None:
        raise ValueError(f"spglib found no symmetry for {crystal.id or 'the crystal'} at symprec={symprec}")
    lattice, frac, z = (np.asarray(a) for a in found)
    return replace(crystal, lattice=lattice.astype(np.float64), frac_coords=wrap_frac(frac.astype(np.float64)),
                   atomic_numbers=z.astype(np.int64))


# --- assertions ------------------------------------------------------------------------------------


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def _compare(expected, actual, atol: float, rtol: float, what: str) -> None:
    if isinstance(expected, dict):
        for key in expected:
            if key not in actual:
                raise AssertionError(f"{what}: output {key!r} is missing after the transformation")
            _compare(expected[key], actual[key], atol, rtol, f"{what} [{key}]")
        return
    a, b = _as_numpy(expected), _as_numpy(actual)
    if a.shape != b.shape:
        raise AssertionError(f"{what}: shape {b.shape} after the transformation, expected {a.shape}")
    err = np.abs(a - b)
    bound = atol + rtol * np.abs(a)
    if not np.all(err <= bound):
        worst = np.unravel_index(int(np.argmax(err - bound)), err.shape) if err.ndim else ()
        raise AssertionError(
            f"{what}: max abs error {err.max():.3e} exceeds atol={atol:g}, rtol={rtol:g} "
            f"(worst entry {tuple(int(i) for i in worst)}: expected {a[worst]:.6g}, found {b[worst]:.6g})"
        )


def assert_invariant(fn: Callable, x, transform: Callable, atol: float = 1e-6, rtol: float = 0.0) -> None:
    """Assert ``fn(transform(x)) == fn(x)`` within tolerance (outputs: tensors, arrays or dicts of them)."""
    _compare(fn(x), fn(transform(x)), atol, rtol, "not invariant")


def assert_equivariant(
    fn: Callable, x, transform_input: Callable, transform_output: Callable, atol: float = 1e-6, rtol: float = 0.0
) -> None:
    """Assert ``fn(transform_input(x)) == transform_output(fn(x))`` within tolerance."""
    _compare(transform_output(fn(x)), fn(transform_input(x)), atol, rtol, "not equivariant")
