"""The denoiser respects the crystal's symmetries, and its fast path computes the reference function."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from crysdiff.batching import EdgeSettings, collate_crystals
from crysdiff.denoiser import CrysDiffDenoiser, CrysDiffEncoder, DenoiserConfig
from crysdiff.symmetry import (
    assert_equivariant,
    assert_invariant,
    permute_atoms,
    random_orthogonal,
    random_permutation,
    rotate_lattice,
    shift_all,
    shift_one_atom_by_lattice_vector,
)

SMALL = DenoiserConfig(hidden_dim=32, num_layers=2, num_frequencies=8, time_dim=16)


def double(batch):
    batch = batch.clone()
    batch.frac_coords, batch.lattice = batch.frac_coords.double(), batch.lattice.double()
    return batch


@pytest.fixture(scope="module")
def batch(crystals):
    return double(collate_crystals(crystals))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CrysDiffDenoiser(SMALL).double().eval()


def runner(model, t):
    return lambda b: model(b, b.frac_coords, b.lattice, t)


def timesteps(batch, seed=0):
    return torch.randint(1, 1001, (batch.num_atoms.shape[0],), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_and_reflection(model, batch, reflect):
    q = random_orthogonal(7, reflect=reflect)
    fn = runner(model, timesteps(batch))

    def rotate_output(out):
        return {**out, "eps_lattice": out["eps_lattice"] @ q.T}

    assert_equivariant(fn, batch, lambda b: rotate_lattice(b, q), rotate_output, atol=1e-9)
    # one rotation per crystal works too
    qs = torch.stack([random_orthogonal(i, reflect=reflect) for i in range(batch.num_atoms.shape[0])])
    assert_equivariant(
        fn, batch, lambda b: rotate_lattice(b, qs), lambda out: {**out, "eps_lattice": out["eps_lattice"] @ qs.transpose(1, 2)}, atol=1e-9
    )


def test_periodic_translations(model, batch):
    fn = runner(model, timesteps(batch, 1))
    shift = torch.rand(batch.num_atoms.shape[0], 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert_invariant(fn, batch, lambda b: shift_all(b, shift), atol=1e-9)
    for wrap in (False, True):
        assert_invariant(fn, batch, lambda b: shift_one_atom_by_lattice_vector(b, 3, (1, -2, 5), wrap=wrap), atol=1e-9)


def test_permutation(model, batch):
    fn = runner(model, timesteps(batch, 2))
    perm = random_permutation(batch, 3)

    def permute_output(out):
        return {**out, "score_frac": out["score_frac"][perm], "node_features": out["node_features"][perm]}

    assert_equivariant(fn, batch, lambda b: permute_atoms(b, perm), permute_output, atol=1e-9)


def test_not_trivially_invariant(model, batch):
    """The outputs do react to a real change of structure (guards the tests above against a constant net)."""
    fn = runner(model, timesteps(batch))
    with pytest.raises(AssertionError):
        assert_invariant(fn, batch, _nudge, atol=1e-6)


def _nudge(b):
    out = b.clone()
    out.frac_coords = b.frac_coords.clone()
    out.frac_coords[0] += 0.05
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_path_equals_reference(crystals, dtype):
    torch.manual_seed(1)
    model = CrysDiffDenoiser(SMALL).to(dtype)
    # a small kNN threshold exercises both graph kinds in one batch
    batch = collate_crystals(crystals, edges=EdgeSettings(max_dense_atoms=6, knn_neighbors=4))
    frac, lattice = batch.frac_coords.to(dtype), batch.lattice.to(dtype)
    t = timesteps(batch)
    grads = []
    outs = []
    for reference in (False, True):
        model.zero_grad()
        out = model(batch, frac, lattice, t, reference=reference)
        (out["eps_lattice"].square().sum() + out["score_frac"].square().sum()).backward()
        outs.append(out)
        grads.append([p.grad.clone() for p in model.parameters()])
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    for key in outs[0]:
        torch.testing.assert_close(outs[0][key], outs[1][key], **tol)
    for fast, ref in zip(*grads):
        torch.testing.assert_close(fast, ref, **tol)


def test_shapes_encoder_and_time_zero(batch):
    torch.manual_seed(0)
    model = CrysDiffDenoiser(SMALL).double()
    b = batch.num_atoms.shape[0]
    out = model(batch, batch.frac_coords, batch.lattice, torch.zeros(b, dtype=torch.long))
    assert out["eps_lattice"].shape == (b, 3, 3)
    assert out["score_frac"].shape == (batch.num_nodes, 3)
    assert out["node_features"].shape == (batch.num_nodes, SMALL.hidden_dim)
    assert out["crystal_features"].shape == (b, SMALL.hidden_dim)
    assert isinstance(model.encoder, CrysDiffEncoder)
    torch.testing.assert_close(model.encoder(batch, batch.frac_coords, batch.lattice, torch.zeros(b, dtype=torch.long)), out["node_features"])
    bad = batch.clone()
    bad.atomic_numbers = batch.atomic_numbers.clone()
    bad.atomic_numbers[0] = 200
    with pytest.raises(ValueError, match="max_atomic_number"):
        model(bad, bad.frac_coords, bad.lattice, torch.ones(b, dtype=torch.long))
    assert np.isfinite(out["eps_lattice"].detach().numpy()).all()


def test_all_layers_returns_each_layers_input_and_the_output(batch):
    from crysdiff.denoiser import CrysDiffEncoder, DenoiserConfig

    torch.manual_seed(0)
    encoder = CrysDiffEncoder(DenoiserConfig(hidden_dim=16, num_layers=3, num_frequencies=4, time_dim=8))
    t = torch.full((batch.num_atoms.shape[0],), 5, dtype=torch.long)
    states = encoder(batch, batch.frac_coords, batch.lattice, t, all_layers=True)
    assert len(states) == 4
    assert torch.equal(states[-1], encoder(batch, batch.frac_coords, batch.lattice, t))
    assert torch.allclose(states[0], encoder._initial_state(batch, t))
    assert not torch.allclose(states[1], states[0])  # each layer changes the states


def test_the_encoder_modules_do_not_import_each_other_at_module_level():
    """Issue 23's ``denoiser`` <-> ``cartesian`` cycle: both build on :mod:`crysdiff.layers`; the
    denoiser imports the Cartesian encoder only inside ``build_encoder``, and nothing imports back."""
    import ast
    from pathlib import Path

    import crysdiff

    def top_level_imports(name: str) -> set[str]:
        tree = ast.parse((Path(crysdiff.__file__).parent / f"{name}.py").read_text())
        return {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module} | {
            alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}

    assert "crysdiff.denoiser" not in top_level_imports("cartesian") | top_level_imports("layers")
    assert "crysdiff.cartesian" not in top_level_imports("denoiser") | top_level_imports("layers")
