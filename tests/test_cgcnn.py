"""The CGCNN-style peer (benchmarks.peers): neighbour lists against pymatgen, symmetry of the
prediction, a tiny model that overfits a few real crystals, and the runner's command line."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from benchmarks.peers.cgcnn import CGCNN, CGCNNConfig, batch_from_crystals
from benchmarks.peers.neighbors import NeighborSettings, build_neighbor_table, neighbor_list
from crysdiff.symmetry import (assert_invariant, permute_atoms, random_orthogonal, random_permutation, rotate_lattice,
                               shift_all, shift_one_atom_by_lattice_vector)

TARGET = "formation_energy_per_atom"


@pytest.fixture(scope="module")
def mp_val(shared_data, tmp_path_factory):
    from crysdiff.cache import load_dataset

    return load_dataset([shared_data / "mp2018" / "val.csv.gz"], cache_dir=tmp_path_factory.mktemp("cache"),
                        progress=False, workers=1)


@pytest.fixture(scope="module")
def few(mp_val):
    """Eight small real crystals (at most 12 atoms) with their formation energies."""
    picked = [i for i in range(200) if mp_val.num_atoms[i] <= 12][:8]
    return [mp_val.crystal(i) for i in picked]


def _triples(center, neighbor, image):
    return sorted(zip(np.asarray(center).tolist(), np.asarray(neighbor).tolist(),
                      map(tuple, np.asarray(image).astype(int).tolist())))


def test_neighbor_list_matches_pymatgen(few):
    from crysdiff.crystal import to_pymatgen

    settings = NeighborSettings(cutoff=6.0, max_neighbors=0)
    for crystal in few[:6]:
        source, target, image, distance = neighbor_list(crystal.frac_coords, crystal.lattice, settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            center, neighbor, pm_image, pm_distance = to_pymatgen(crystal).get_neighbor_list(6.0)
        assert _triples(target, source, image) == _triples(center, neighbor, pm_image), crystal.id
        np.testing.assert_allclose(np.sort(distance), np.sort(pm_distance), atol=1e-6)


def test_neighbor_cap_keeps_the_whole_tied_shell():
    # fcc copper: 12 nearest neighbours at a/sqrt(2); a cap of 8 must not cut the shell
    a = 3.61
    lattice = np.array([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    source, target, _, distance = neighbor_list(np.zeros((1, 3)), lattice, NeighborSettings(8.0, max_neighbors=8))
    assert source.size == 12
    np.testing.assert_allclose(distance, a / np.sqrt(2))
    _, _, _, capped = neighbor_list(np.zeros((1, 3)), lattice, NeighborSettings(8.0, max_neighbors=13))
    assert capped.size == 18  # 12 + the whole second shell of 6


def test_neighbor_table_matches_per_crystal_lists(mp_val):
    indices = np.array([3, 0, 17, 5])
    table = build_neighbor_table(mp_val, indices)
    counts = mp_val.num_atoms[indices]
    edge_index, distance = table.edges(indices[::-1], np.concatenate([[0], np.cumsum(counts[::-1])[:-1]]))
    expected = []
    start = 0
    for i in indices[::-1]:
        c = mp_val.crystal(int(i))
        s, t, _, d = neighbor_list(c.frac_coords, c.lattice)
        expected.append((np.stack([s, t]) + start, d))
        start += c.num_atoms
    np.testing.assert_array_equal(edge_index, np.concatenate([e for e, _ in expected], axis=1))
    np.testing.assert_allclose(distance, np.concatenate([d for _, d in expected]), rtol=1e-6)


def _predict(model):
    def fn(crystals):
        with torch.no_grad():
            return model(batch_from_crystals(crystals, model.config.neighbors))["y"]
    return fn


def test_prediction_is_invariant(few):
    torch.manual_seed(0)
    model = CGCNN(CGCNNConfig(hidden_dim=16, num_conv=2, head_dim=16)).eval()
    fn = _predict(model)
    crystals = few[:4]
    q = random_orthogonal(1, reflect=True).numpy()
    assert_invariant(fn, crystals, lambda cs: [rotate_lattice(c, q) for c in cs], atol=1e-5)
    assert_invariant(fn, crystals, lambda cs: [shift_all(c, [0.31, -0.12, 0.57]) for c in cs], atol=1e-5)
    assert_invariant(fn, crystals, lambda cs: [shift_one_atom_by_lattice_vector(c, 0, (1, -2, 0)) for c in cs], atol=1e-5)
    assert_invariant(fn, crystals, lambda cs: [permute_atoms(c, random_permutation(c, 3)) for c in cs], atol=1e-5)


def test_tiny_model_overfits_a_few_crystals(few):
    torch.manual_seed(0)
    y = np.array([c.labels[TARGET] for c in few])
    model = CGCNN(CGCNNConfig(hidden_dim=16, num_conv=2, head_dim=32), y_mean=y.mean(), y_std=y.std())
    batch = batch_from_crystals(few, model.config.neighbors, target=TARGET)
    target = ((batch.y - model.y_mean) / model.y_std).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(150):
        loss = torch.nn.functional.l1_loss(model(batch)["y_normalised"], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses[::30]


def test_runner_command_line(shared_data, mp_val, tmp_path):
    from benchmarks.peers.train_cgcnn import main

    val = shared_data / "mp2018" / "val.csv.gz"
    ids = [mp_val.id(i) for i in range(30)]
    for name, part in (("train", ids[:16]), ("val", ids[16:23]), ("test", ids[23:])):
        (tmp_path / f"{name}.txt").write_text("\n".join(part) + "\n")
    out = tmp_path / "run"
    code = main(["--train", str(val), "--val", str(val), "--test", str(val), "model.hidden_dim=8", "model.num_conv=1",
                 "--target", TARGET, "--minutes", "0.02", "--out", str(out), "--train-ids", str(tmp_path / "train.txt"),
                 "--val-ids", str(tmp_path / "val.txt"), "--test-ids", str(tmp_path / "test.txt"), "train.batch_size=8"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["count"] == 7 and np.isfinite(metrics["mae"])
    assert metrics["settings"]["train"]["count"] == 16 and metrics["settings"]["config"]["model"]["hidden_dim"] == 8
    lines = (out / "test_predictions.csv").read_text().splitlines()
    assert lines[0] == "id,y,pred,mean" and sorted(line.split(",")[0] for line in lines[1:]) == sorted(ids[23:])
