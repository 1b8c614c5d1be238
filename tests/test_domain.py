"""Per-row flags on predictions (crysdiff.domain): every deliberately out-of-distribution probe is
flagged by the bundled models, ordinary mp2018 validation crystals mostly are not, and a
checkpoint without a training summary still predicts with the checks it can make."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

import crysdiff
from crysdiff.checkpoint import load_checkpoint
from crysdiff.domain import DEFAULT_BOUNDS, crystal_features, flags, training_summary
from crysdiff.predict import bundled_models

from conftest import read_csv_crystals


def _rock_salt(a: float = 5.64) -> Structure:
    """Conventional cell of rock-salt NaCl (8 atoms)."""
    return Structure(Lattice.cubic(a), ["Na", "Cl"] * 4,
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0, 0, 0.5],
                      [0.5, 0, 0.5], [0, 0.5, 0], [0, 0.5, 0.5], [0.5, 0, 0]])


def _slab_with_vacuum(vacuum: float) -> Structure:
    """Four layers of rock-salt NaCl (001) with ``vacuum`` Å of empty space above them."""
    a = 5.64
    slab = _rock_salt(a) * (1, 1, 2)
    lattice = Lattice.from_parameters(a, a, 2 * a + vacuum, 90, 90, 90)
    return Structure(lattice, slab.species, slab.cart_coords, coords_are_cartesian=True)


PROBES = {
    "Og": (Structure(Lattice.cubic(5.0), ["Og"], [[0, 0, 0]]), "unseen_element(Og)"),
    "Ar": (Structure(Lattice.cubic(5.26), ["Ar"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
           "unseen_element(Ar)"),
    "slab": (_slab_with_vacuum(40.0), "vacuum("),
    "close": (Structure(Lattice.cubic(3.6), ["Cu", "Cu"], [[0, 0, 0], [0.6 / 3.6, 0, 0]]), "min_distance("),
    "Po": (Structure(Lattice.cubic(3.359), ["Po"], [[0, 0, 0]]), "unseen_element(Po)"),
}


@pytest.fixture(scope="module")
def summary():
    return load_checkpoint(bundled_models()["formation_energy_per_atom"])["data"]["domain"]


def test_features_of_a_simple_cubic_cell():
    features = crystal_features(np.zeros((1, 3)), np.eye(3) * 3.359)
    assert features["atoms_per_cell"] == 1
    assert features["volume_per_atom"] == pytest.approx(3.359 ** 3)
    assert features["min_distance"] == pytest.approx(3.359)  # the atom's own image
    assert features["vacuum"] == pytest.approx(3.359)  # one empty plane spacing along each axis


def test_vacuum_is_the_thickest_empty_slab():
    slab = _slab_with_vacuum(40.0)
    features = crystal_features(slab.frac_coords, slab.lattice.matrix)
    assert features["vacuum"] == pytest.approx(40.0 + 5.64 / 2)  # the vacuum plus half a layer spacing
    bulk = _slab_with_vacuum(0.0)
    assert crystal_features(bulk.frac_coords, bulk.lattice.matrix)["vacuum"] == pytest.approx(5.64 / 2)


def test_training_summary_counts_crystals_per_element():
    lattices = np.stack([np.eye(3) * 4.0, np.eye(3) * 5.0])
    z = np.array([8, 8, 12, 11])  # O2 in the first cell, Mg Na... in the second
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0.5, 0.5]], dtype=float)
    summary = training_summary(z, frac, lattices, np.array([2, 2]), min_element_count=2)
    assert summary["element_counts"] == {"O": 1, "Na": 1, "Mg": 1} and summary["crystals"] == 2
    oxygen = np.array([8])
    assert flags(oxygen, np.zeros((1, 3)), np.eye(3) * 4.0, summary).startswith("rare_element(O:1)")


def test_every_probe_is_flagged_by_the_bundled_model():
    predictor = crysdiff.load("formation_energy_per_atom", device="cpu")
    frame = predictor.predict([structure for structure, _ in PROBES.values()], samples=4)
    assert list(frame.columns)[-1] == "flags" and frame.attrs["flags_note"] == ""
    for (name, (_, expected)), row_flags in zip(PROBES.items(), frame["flags"]):
        assert expected in row_flags, (name, row_flags)
    # rock salt is unflagged; the same two atoms on a simple cubic lattice have 4x its volume per atom
    wrong = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    ordinary = predictor.predict([_rock_salt(), wrong], samples=4)
    assert ordinary["flags"][0] == "" and ordinary["flags"][1].startswith("volume_per_atom(")


def test_ordinary_validation_crystals_are_mostly_unflagged(shared_data, summary):
    crystals = read_csv_crystals(shared_data / "mp2018" / "val.csv.gz", rows=300, max_atoms=200)
    flagged = [c.id for c in crystals if flags(c.atomic_numbers, c.frac_coords, c.lattice, summary)]
    assert len(crystals) > 250 and len(flagged) <= 0.05 * len(crystals), flagged


def test_a_checkpoint_without_summary_still_predicts_with_the_geometric_checks(tmp_path):
    payload = load_checkpoint(bundled_models()["formation_energy_per_atom"])
    del payload["data"]["domain"]
    old = tmp_path / "old.ckpt"
    torch.save(payload, old)
    frame = crysdiff.load(old, device="cpu").predict([PROBES["close"][0], PROBES["Ar"][0]], samples=4)
    assert "min_distance(" in frame["flags"][0] and frame["flags"][1] == ""  # elements cannot be checked
    assert "no training-data summary" in frame.attrs["flags_note"]
    assert set(DEFAULT_BOUNDS) == {"atoms_per_cell", "volume_per_atom", "min_distance", "vacuum"}
