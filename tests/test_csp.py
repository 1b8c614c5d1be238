"""``csp.match``, the test behind every CSP match rate: a known match and known non-matches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from crysdiff.csp import match
from crysdiff.symmetry import permute_atoms, random_orthogonal, random_permutation, rotate_lattice, shift_all


def test_a_structure_matches_itself_rotated_translated_and_permuted(crystals):
    rng = np.random.default_rng(0)
    for c in crystals:
        same = match(c, c)
        assert same is not None and same < 1e-4, c.id
        moved = shift_all(permute_atoms(rotate_lattice(c, random_orthogonal(3).numpy()), random_permutation(c, 1)),
                          rng.random(3))
        rms = match(moved, c)
        assert rms is not None and rms < 1e-4, f"{c.id}: the same structure, rotated, shifted and relabelled: {rms}"
        # a small displacement of every atom still matches, with a small but non-zero RMS
        jiggled = replace(c, frac_coords=(c.frac_coords + 0.01 * rng.standard_normal(c.frac_coords.shape)) % 1.0)
        rms = match(jiggled, c)
        assert rms is not None and 1e-4 < rms < 0.1, f"{c.id}: {rms}"


def test_other_structures_do_not_match(crystals):
    # another crystal of the batch (a different composition or structure) never matches
    for a, b in zip(crystals, crystals[1:] + crystals[:1]):
        assert match(a, b) is None, f"{a.id} vs {b.id}"
    # the same composition in a different arrangement: one atom moved far from its site
    c = next(c for c in crystals if c.num_atoms >= 4)
    moved = c.frac_coords.copy()
    moved[0] = (moved[0] + 0.5) % 1.0
    assert match(replace(c, frac_coords=moved), c) is None
    # the same atoms in a cell stretched by half along one axis: beyond ltol
    stretched = replace(c, lattice=c.lattice * np.array([[1.5], [1.0], [1.0]]))
    assert match(stretched, c) is None
    # a generated structure that is not usable (two atoms on top of each other) is no match
    clash = c.frac_coords.copy()
    clash[1] = clash[0]
    assert match(replace(c, frac_coords=clash), c) is None
