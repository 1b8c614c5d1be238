"""The models shipped inside the package load by name and give physically sensible predictions
on the example structures bundled with the repository (see models/README.md for their metrics)."""

from pathlib import Path

import numpy as np
import pytest

import crysdiff
from crysdiff.predict import bundled_models

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "structures"


def test_both_default_models_are_bundled():
    assert {"formation_energy_per_atom", "band_gap"} <= set(bundled_models())


@pytest.fixture(scope="module")
def formation():
    return crysdiff.load("formation_energy_per_atom", device="cpu").predict(EXAMPLES, samples=50).set_index("id")


def test_formation_energy_predictions_are_sensible(formation):
    assert len(formation) == 10 and (formation["unit"] == "eV/atom").all()
    assert (formation["p2.5"] <= formation["mean"]).all() and (formation["mean"] <= formation["p97.5"]).all()
    assert (formation["std"] > 0).all()
    # oxides and halides are strongly bound; elemental metals sit near zero by definition
    for ionic in ("MgO_rocksalt", "TiO2_rutile", "NaCl_rocksalt", "SrTiO3_perovskite"):
        assert formation.loc[ionic, "mean"] < -1.0, ionic
    for element in ("Cu_fcc", "Fe_bcc"):
        assert abs(formation.loc[element, "mean"]) < 0.5, element


def test_band_gap_predictions_separate_insulators_from_metals():
    gaps = crysdiff.load("band_gap", device="cpu").predict(EXAMPLES, samples=50).set_index("id")
    assert (gaps["unit"] == "eV").all() and np.isfinite(gaps["mean"]).all()
    assert min(gaps.loc[["NaCl_rocksalt", "MgO_rocksalt", "CsCl"], "mean"]) > max(gaps.loc[["Cu_fcc", "Fe_bcc"], "mean"])
