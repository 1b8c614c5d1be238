"""The symmetry transformations describe the same crystal (pymatgen agrees), on Crystal and Batch alike."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from crysdiff.batching import collate_crystals
from crysdiff.crystal import to_pymatgen
from crysdiff.symmetry import (
    assert_equivariant,
    assert_invariant,
    change_basis,
    conventional_cell,
    permute_atoms,
    random_orthogonal,
    random_permutation,
    rotate_lattice,
    shift_all,
    shift_one_atom_by_lattice_vector,
    supercell,
)


def same_structure(a, b, **kwargs) -> bool:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(ltol=1e-3, stol=1e-3, angle_tol=0.01, primitive_cell=False, scale=False, **kwargs).fit(to_pymatgen(a), to_pymatgen(b))


@pytest.mark.parametrize("reflect", [False, True])
def test_random_orthogonal(reflect):
    q = random_orthogonal(3, reflect=reflect)
    assert torch.allclose(q @ q.T, torch.eye(3, dtype=q.dtype), atol=1e-12)
    assert torch.det(q).item() == pytest.approx(-1.0 if reflect else 1.0)
    assert torch.equal(q, random_orthogonal(torch.Generator().manual_seed(3), reflect=reflect))


def test_crystal_transforms_keep_the_structure(crystals):
    rng = np.random.default_rng(0)
    for c in crystals:
        variants = {
            "rotation": rotate_lattice(c, random_orthogonal(1).numpy()),
            "reflection": rotate_lattice(c, random_orthogonal(2, reflect=True).numpy()),
            "permutation": permute_atoms(c, random_permutation(c, 0)),
            "shift": shift_all(c, rng.random(3)),
            "lattice vector": shift_one_atom_by_lattice_vector(c, 0, (1, -2, 3), wrap=True),
        }
        for name, v in variants.items():
            assert same_structure(c, v), f"{c.id}: {name} changed the structure"
        moved = c.frac_coords.copy()
        moved[0] += 0.13
        assert not same_structure(c, replace(c, frac_coords=moved)), "the matcher must see a real change"
        rotated = variants["rotation"]
        q = random_orthogonal(1).numpy()
        np.testing.assert_allclose(rotated.cart_coords, c.cart_coords @ q.T, atol=1e-10)
        np.testing.assert_allclose(rotated.lattice @ rotated.lattice.T, c.lattice @ c.lattice.T, atol=1e-10)
        unwrapped = shift_one_atom_by_lattice_vector(c, 0, (1, 0, 0))
        assert unwrapped.frac_coords[0, 0] >= 1.0


def test_supercell_crystal(crystals):
    c = crystals[0]
    big = supercell(c, (2, 1, 3))
    assert big.num_atoms == 6 * c.num_atoms
    assert big.num_atoms / big.volume == pytest.approx(c.num_atoms / c.volume)
    assert np.all((big.frac_coords >= 0) & (big.frac_coords < 1))
    assert same_structure(c, big, attempt_supercell=True)


def test_batch_transforms_match_crystal_transforms(crystals):
    batch = collate_crystals(crystals)
    q = random_orthogonal(5, reflect=True)
    rotated = rotate_lattice(batch, q)
    expected = collate_crystals([rotate_lattice(c, q.numpy()) for c in crystals])
    torch.testing.assert_close(rotated.lattice, expected.lattice)
    perm = random_permutation(batch, 1)
    permuted = permute_atoms(batch, perm)
    assert torch.equal(permuted.atomic_numbers, batch.atomic_numbers[perm])
    # the relabelled edges are the same pairs of atoms
    old_pairs = set(map(tuple, batch.edge_index.T.tolist()))
    new_pairs = {(int(perm[j]), int(perm[i])) for j, i in permuted.edge_index.T.tolist()}
    assert old_pairs == new_pairs
    shifted = shift_all(batch, torch.rand(len(crystals), 3, generator=torch.Generator().manual_seed(0)))
    assert bool(((shifted.frac_coords >= 0) & (shifted.frac_coords < 1)).all())
    big = supercell(batch, (1, 2, 2))
    assert big.num_atoms.tolist() == [4 * c.num_atoms for c in crystals]
    torch.testing.assert_close(big.lattice[:, 1], 2 * batch.lattice[:, 1])
    with pytest.raises(ValueError, match="within each crystal"):
        permute_atoms(batch, np.arange(batch.num_nodes)[::-1].copy())


def test_assert_helpers(crystals):
    batch = collate_crystals(crystals)

    def gram(b):
        return b.lattice @ b.lattice.transpose(1, 2)

    q = random_orthogonal(0)
    assert_invariant(gram, batch, lambda b: rotate_lattice(b, q), atol=1e-3)
    assert_equivariant(lambda b: b.lattice, batch, lambda b: rotate_lattice(b, q), lambda lat: lat @ q.T.float(), atol=1e-5)
    with pytest.raises(AssertionError, match="not invariant"):
        assert_invariant(lambda b: b.lattice, batch, lambda b: rotate_lattice(b, q))
    with pytest.raises(AssertionError, match="missing"):
        assert_invariant(lambda b: {"a": b.lattice} if b is batch else {}, batch, lambda b: rotate_lattice(b, q))


SHEAR = [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_change_basis_crystal_and_batch(crystals):
    for c in crystals:
        for matrix in (SHEAR, [[0, 1, 0], [1, 0, 0], [0, 0, -1]], [[2, 1, 1], [1, 1, 0], [0, 0, 1]]):
            v = change_basis(c, matrix)
            np.testing.assert_allclose(v.lattice, np.asarray(matrix) @ c.lattice)
            assert np.all((v.frac_coords >= 0) & (v.frac_coords < 1))
            assert v.volume == pytest.approx(c.volume)
            assert same_structure(c, v), f"{c.id}: the change of basis {matrix} changed the structure"
    batch = collate_crystals(crystals)
    expected = collate_crystals([change_basis(c, SHEAR) for c in crystals])
    moved = change_basis(batch, SHEAR)
    torch.testing.assert_close(moved.lattice, expected.lattice)
    torch.testing.assert_close(moved.frac_coords, expected.frac_coords)
    for bad in ([[2, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0.5, 0], [0, 1, 0], [0, 0, 1]], [[1, 0], [0, 1]]):
        with pytest.raises(ValueError, match="determinant"):
            change_basis(crystals[0], bad)


def test_conventional_cell(crystals):
    from crysdiff.cells import canonical_cell
    from crysdiff.io import read

    silicon = read(Path(__file__).parents[1] / "examples" / "structures" / "Si_diamond.cif")[0][0]  # 8 atoms
    primitive = canonical_cell(silicon).crystal
    assert (silicon.num_atoms, primitive.num_atoms, conventional_cell(primitive).num_atoms) == (8, 2, 8)
    for c in [*crystals, primitive]:
        conv = conventional_cell(c)
        assert conv.num_atoms % c.num_atoms == 0
        assert conv.num_atoms / conv.volume == pytest.approx(c.num_atoms / c.volume, rel=1e-6)
        assert same_structure(c, conv, attempt_supercell=True), f"{c.id}: the conventional cell is another structure"
