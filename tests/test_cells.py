"""Same crystal, same answer: canonical cells (crysdiff.cells) make predictions independent of the cell
a structure is written in; checkpoints without a cell record keep seeing cells as given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import crysdiff
from crysdiff.batching import collate_crystals
from crysdiff.cells import AS_GIVEN, CellConfig, canonical_cell
from crysdiff.checkpoint import load_checkpoint, save_checkpoint
from crysdiff.crystal import Crystal
from crysdiff.io import read
from crysdiff.predict import bundled_models
from crysdiff.symmetry import (change_basis, conventional_cell, permute_atoms, random_orthogonal, random_permutation,
                               rotate_lattice, shift_all, supercell)

from conftest import read_csv_crystals

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "structures"
SHEAR = [[1, 1, 0], [0, 1, 0], [0, 0, 1]]


def example(name: str):
    return read(EXAMPLES / f"{name}.cif")[0][0]


@pytest.fixture(scope="module")
def structures(shared_data):
    """The 2-atom primitive cell of silicon (from the 8-atom CIF) and four mp2018 crystals; the last one
    (mp-1008921) has less symmetry than its lattice, so its Niggli cell has bases the network tells apart."""
    mp = read_csv_crystals(shared_data / "mp2018" / "val.csv.gz", rows=33, max_atoms=12)
    return [canonical_cell(example("Si_diamond")).crystal, *mp[:3], *[c for c in mp if c.id == "mp-1008921"]]


def forms(crystal):
    """The same crystal written seven ways (the last one past the 200-atom switch to kNN edges)."""
    past = int(np.ceil((201 / crystal.num_atoms) ** (1 / 3)))
    rng = np.random.default_rng(0)
    moved = shift_all(permute_atoms(rotate_lattice(crystal, random_orthogonal(4).numpy()), random_permutation(crystal, 1)),
                      rng.random(3))
    return {"given": crystal, "2x1x1": supercell(crystal, (2, 1, 1)), "2x2x2": supercell(crystal, (2, 2, 2)),
            "past 200 atoms": supercell(crystal, (past,) * 3), "conventional": conventional_cell(crystal),
            "sheared basis": change_basis(crystal, SHEAR), "rotated, shifted, permuted": moved}


def test_canonical_cell_is_one_cell_per_crystal(structures):
    for crystal in structures:
        reference = canonical_cell(crystal).crystal
        gram = reference.lattice @ reference.lattice.T
        for name, form in forms(crystal).items():
            reduced = canonical_cell(form)
            assert reduced.fallback == "" and reduced.given_atoms == form.num_atoms, (crystal.id, name)
            assert reduced.crystal.num_atoms == reference.num_atoms, (crystal.id, name)
            lattice = reduced.crystal.lattice
            np.testing.assert_allclose(lattice @ lattice.T, gram, atol=1e-8, err_msg=f"{crystal.id}: {name}")
            assert np.all((reduced.crystal.frac_coords >= 0) & (reduced.crystal.frac_coords < 1))
            assert sorted(reduced.crystal.atomic_numbers) == sorted(reference.atomic_numbers)
    assert canonical_cell(supercell(structures[1], (2, 1, 1)), AS_GIVEN).crystal.num_atoms == 2 * structures[1].num_atoms


def test_reduction_never_merges_distinct_structures():
    silicon = canonical_cell(example("Si_diamond")).crystal
    big = supercell(silicon, (2, 1, 1))
    frac = big.frac_coords.copy()
    frac[3] += np.array([0.1, 0.0, 0.0]) @ np.linalg.inv(big.lattice)  # one atom moved by 0.1 Å: no longer a supercell
    distorted = canonical_cell(type(big)(big.atomic_numbers, frac, big.lattice, id="distorted"))
    assert (distorted.crystal.num_atoms, distorted.given_atoms, distorted.fallback) == (4, 4, "")
    # spglib cannot work at a tolerance beyond the bond length: the structure keeps its own cell, and says why
    fallback = canonical_cell(big, CellConfig(symprec=2.5))
    assert fallback.crystal is big and fallback.given_atoms == 4 and "spglib" in fallback.fallback


@pytest.fixture(scope="module")
def canonical_model():
    """The bundled formation-energy model as shipped: trained on canonical cells, and its checkpoint says so."""
    predictor = crysdiff.load("formation_energy_per_atom", device="cpu")
    assert predictor.cell == CellConfig()
    return predictor


def test_predictions_and_features_do_not_depend_on_the_cell(structures, canonical_model):
    predictor = canonical_model
    variants = [forms(c) for c in structures]
    columns = ["mean", "std", "p2.5", "p97.5"]
    reference = predictor.predict(structures, samples=16, seed=5)
    assert list(reference.columns[-4:]) == ["n_atoms", "n_atoms_model", "cell", "flags"]
    for name in variants[0]:
        given = [v[name] for v in variants]
        frame = predictor.predict(given, samples=16, seed=5)
        np.testing.assert_allclose(frame[columns].to_numpy(), reference[columns].to_numpy(), atol=2e-5, err_msg=name)
        assert frame["n_atoms"].tolist() == [c.num_atoms for c in given]
        assert frame["n_atoms_model"].tolist() == reference["n_atoms_model"].tolist()
        assert (frame["cell"] == "canonical").all() and frame["flags"].tolist() == reference["flags"].tolist()
        batch = collate_crystals([canonical_cell(c, predictor.cell).crystal for c in given], edges=predictor.edge_settings)
        with torch.no_grad():
            features = predictor.model.encode(batch)
        if name == "given":
            expected = features
        torch.testing.assert_close(features, expected, atol=2e-5, rtol=0, msg=name)
    # a file goes the same way, through the cache: the 8-atom conventional CIF of silicon
    from_file = predictor.predict(EXAMPLES / "Si_diamond.cif", samples=16, seed=5)
    alone = predictor.predict(structures[:1], samples=16, seed=5)
    np.testing.assert_allclose(from_file[columns].to_numpy(), alone[columns].to_numpy(), atol=2e-5)
    assert (from_file.loc[0, "n_atoms"], from_file.loc[0, "n_atoms_model"]) == (8, 2)


def test_a_structure_that_cannot_be_reduced_is_predicted_from_its_own_cell(canonical_model, monkeypatch):
    from dataclasses import replace

    silicon = supercell(canonical_cell(example("Si_diamond")).crystal, (2, 1, 1))
    loose = replace(canonical_model.config.data, cell=CellConfig(symprec=2.5))
    monkeypatch.setattr(canonical_model.members[0], "config", replace(canonical_model.config, data=loose))
    row = canonical_model.predict([silicon], samples=8, seed=0).iloc[0]
    assert (row["n_atoms"], row["n_atoms_model"], row["cell"]) == (4, 4, "given") and np.isfinite(row["mean"])
    assert row["flags"].split("; ")[0] == "cell_fallback"  # the user is told to distrust the row


def test_models_without_a_cell_record_see_cells_as_given(tmp_path):
    """A checkpoint written before cells were canonical (no ``data.cell``) keeps reading cells as given,
    with the columns it had."""
    payload = load_checkpoint(bundled_models()["formation_energy_per_atom"], kind="finetune")
    config = dict(payload["config"])
    config["data"] = {k: v for k, v in config["data"].items() if k != "cell"}
    path = tmp_path / "model.ckpt"
    extra = {k: payload[k] for k in ("normalizer", "metrics", "data") if k in payload}
    save_checkpoint(path, kind="finetune", config=config, state_dict=payload["state_dict"], **extra)
    predictor = crysdiff.load(path, device="cpu")
    assert predictor.cell == AS_GIVEN
    assert list(predictor.predict(EXAMPLES / "Si_diamond.cif", samples=4).columns) == \
        ["id", "source", "mean", "std", "p2.5", "p97.5", "unit", "flags"]


def test_canonical_cells_are_those_of_the_reference_code():
    """120 structures of ../shared/data (every source, 2 to 48 same-metric bases, cells spglib reduced,
    one that falls back, mp-20411 whose fingerprints tie to the last bit between symmetric bases) and
    the canonical cells the code of a2c511c made of them: the faster reduction must give the same ones."""
    stored = np.load(Path(__file__).parent / "data" / "canonical_cells_a2c511c.npz", allow_pickle=False)
    given_at, reduced_at = np.cumsum(stored["given_count"])[:-1], np.cumsum(stored["count"])[:-1]
    given = zip(np.split(stored["given_z"], given_at), np.split(stored["given_frac"], given_at), stored["given_lattice"])
    reduced = zip(np.split(stored["z"], reduced_at), np.split(stored["frac"], reduced_at), stored["lattice"])
    for id_, (z, frac, lattice), (z_ref, frac_ref, lattice_ref), fallback in zip(stored["ids"], given, reduced, stored["fallback"]):
        out = canonical_cell(Crystal(z, frac, lattice, id=str(id_)))
        assert out.fallback == str(fallback), id_
        _assert_reference_cell(out.crystal, Crystal(z_ref, frac_ref, lattice_ref), len(z), str(id_))


def test_canonical_cells_of_many_structures_at_once_are_those_of_the_reference_code(monkeypatch):
    """The same 120 structures canonicalised in one call (the cache build's path: the basis choice made
    for all of them together) give the cells of a2c511c too, and the structures with a fingerprint next
    to a rounding boundary (mp-20411 among them) are the ones decided by the per-structure arithmetic."""
    from crysdiff import cell_basis
    from crysdiff.cells import canonical_cells

    stored = np.load(Path(__file__).parent / "data" / "canonical_cells_a2c511c.npz", allow_pickle=False)
    given_at, reduced_at = np.cumsum(stored["given_count"])[:-1], np.cumsum(stored["count"])[:-1]
    given = [Crystal(z, frac, lattice, id=str(i)) for i, z, frac, lattice in
             zip(stored["ids"], np.split(stored["given_z"], given_at), np.split(stored["given_frac"], given_at),
                 stored["given_lattice"])]
    exact, decided = cell_basis._exact_keys, []
    monkeypatch.setattr(cell_basis, "_exact_keys", lambda frac, *rest: decided.append(len(frac)) or exact(frac, *rest))
    out = canonical_cells(given)
    assert 0 < len(decided) < len(given) // 4  # the fast fingerprints decide most, the exact ones the doubtful
    reduced = zip(np.split(stored["z"], reduced_at), np.split(stored["frac"], reduced_at), stored["lattice"])
    for crystal, got, (z_ref, frac_ref, lattice_ref), fallback in zip(given, out, reduced, stored["fallback"]):
        assert got.fallback == str(fallback), crystal.id
        _assert_reference_cell(got.crystal, Crystal(z_ref, frac_ref, lattice_ref), crystal.num_atoms, crystal.id)


def _assert_reference_cell(got: Crystal, reference: Crystal, given_atoms: int, name: str) -> None:
    """``got`` is the reference code's canonical cell: to 1e-9 where the given cell was already
    primitive; where a pure translation made it smaller (the reference asked spglib for the primitive
    cell, this code builds it from the translations it finds), the same crystal: the same metric, and
    the same atoms up to a lattice symmetry, a translation and their order, within 1e-4 Å."""
    if reference.num_atoms == given_atoms:
        np.testing.assert_array_equal(got.atomic_numbers, reference.atomic_numbers, err_msg=name)
        np.testing.assert_allclose(got.lattice, reference.lattice, rtol=0, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(got.frac_coords, reference.frac_coords, rtol=0, atol=1e-9, err_msg=name)
    else:
        assert_same_crystal(got, reference, 1e-4, name)


def assert_same_crystal(a: Crystal, b: Crystal, tolerance: float, name: str = "") -> None:
    """``a`` and ``b`` are one crystal in cells of the same size: ``b``'s basis is an integer,
    unimodular change of ``a``'s (the same metric), and after it every atom of ``a``, shifted by one
    translation, lies within ``tolerance`` Å of an atom of its element in ``b`` (and the compositions match)."""
    assert a.num_atoms == b.num_atoms and sorted(a.atomic_numbers) == sorted(b.atomic_numbers), name
    change = np.rint(b.lattice @ np.linalg.inv(a.lattice))
    assert abs(round(np.linalg.det(change))) == 1, name
    np.testing.assert_allclose(change @ a.lattice, b.lattice, rtol=0, atol=tolerance, err_msg=name)
    frac = a.frac_coords @ np.linalg.inv(change)
    best = np.inf
    for j in np.flatnonzero(b.atomic_numbers == a.atomic_numbers[0]):
        delta = frac[:, None, :] + (b.frac_coords[j] - frac[0]) - b.frac_coords[None, :, :]
        delta -= np.round(delta)
        distance = np.linalg.norm(delta @ b.lattice, axis=2)
        distance[a.atomic_numbers[:, None] != b.atomic_numbers[None, :]] = np.inf
        best = min(best, distance.min(axis=1).max())
    assert best <= tolerance, (name, best)


def test_primitive_cells_from_translations_are_spglibs(monkeypatch):
    """Cells with a pure translation (conventional cells, supercells, the fixture's reduced ones) are
    made primitive from the translations crysdiff finds, without spglib's full symmetry search (~4 ms
    a cell): the result is spglib's primitive cell of the crystal to 1e-4 Å, in another basis."""
    import spglib

    from crysdiff.cells import _primitive, _translations

    stored = np.load(Path(__file__).parent / "data" / "canonical_cells_a2c511c.npz", allow_pickle=False)
    given_at = np.cumsum(stored["given_count"])[:-1]
    crystals = [Crystal(z, frac, lattice, id=str(i)) for i, z, frac, lattice in
                zip(stored["ids"], np.split(stored["given_z"], given_at), np.split(stored["given_frac"], given_at),
                    stored["given_lattice"])]
    crystals += [supercell(c, (2, 1, 3)) for c in crystals[:10]] + [conventional_cell(example("Si_diamond"))]
    made = 0
    for crystal in crystals:
        found = _translations(crystal, 0.01)
        if found is None or len(found[0]) == 1 or found[2] > 0.005:  # none, or spglib decides
            continue
        with monkeypatch.context() as patched:  # the cell is built here: spglib is not asked
            patched.setattr(spglib, "standardize_cell", lambda *a, **k: pytest.fail("spglib was asked"))
            lattice, frac, z = _primitive(crystal, CellConfig())
        ref = spglib.standardize_cell((crystal.lattice, crystal.frac_coords, crystal.atomic_numbers), to_primitive=True,
                                      no_idealize=True, symprec=0.01)
        mine = Crystal(z, frac, lattice)
        theirs = Crystal(ref[2], ref[1], ref[0])
        assert mine.num_atoms == theirs.num_atoms == crystal.num_atoms // len(found[0]), crystal.id
        # the two primitive bases differ: compare both after taking one to the other's basis
        assert_same_crystal(mine, theirs, 1e-4, crystal.id)
        made += 1
    assert made >= 12
