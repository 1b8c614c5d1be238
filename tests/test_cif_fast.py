"""The fast P1 CIF reader agrees with pymatgen's CifParser; everything else falls back to pymatgen."""

from __future__ import annotations

import csv
import gzip
import random
import sys
import warnings

import numpy as np
import pytest

from crysdiff.io import read
from crysdiff.io.cif import lattice_from_parameters, parse_cif_fast

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _csv_cifs(path, rng: random.Random, count: int) -> list[tuple[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    picks = rng.sample(range(len(rows)), count)
    return [(f"{path.name} row {k}", rows[k]["cif"]) for k in picks]


@pytest.fixture(scope="module")
def sample_cifs(shared_data) -> list[tuple[str, str]]:
    """A seeded random sample of 320 real CIFs from four datasets."""
    rng = random.Random(20240217)
    cifs = _csv_cifs(shared_data / "mp2018" / "train.csv.gz", rng, 120)
    cifs += _csv_cifs(shared_data / "perov_5" / "val.csv.gz", rng, 60)
    cifs += _csv_cifs(shared_data / "carbon_24" / "train.csv.gz", rng, 60)
    files = sorted((shared_data / "mp_elastic" / "structures").glob("*.cif"))
    cifs += [(path.name, path.read_text()) for path in rng.sample(files, 80)]
    return cifs


def _pymatgen_read(text: str):
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CifParser.from_str(text).parse_structures(primitive=False)[0]


def _assert_same_sites(z_a, frac_a, z_b, frac_b, tol=1e-5, where=""):
    """Same multiset of (species, fractional position modulo 1)."""
    assert len(z_a) == len(z_b), where
    unused = set(range(len(z_b)))
    for i in range(len(z_a)):
        match = None
        for j in unused:
            if z_b[j] != z_a[i]:
                continue
            delta = frac_a[i] - frac_b[j]
            delta -= np.round(delta)  # wrap-aware: 0.999999 and 0.0 are the same place
            if np.abs(delta).max() < tol:
                match = j
                break
        assert match is not None, f"{where}: atom {i} (Z={z_a[i]}, {frac_a[i]}) has no counterpart in pymatgen's reading"
        unused.remove(match)


def test_fast_path_matches_pymatgen_on_real_cifs(sample_cifs):
    assert len(sample_cifs) >= 300
    for where, text in sample_cifs:
        fast = parse_cif_fast(text)
        assert fast is not None, f"{where}: a pymatgen-written P1 CIF should take the fast path"
        numbers, frac, lattice = fast
        structure = _pymatgen_read(text)
        np.testing.assert_allclose(lattice, structure.lattice.matrix, atol=1e-5, err_msg=where)
        z_ref = np.array([site.specie.Z for site in structure])
        _assert_same_sites(numbers, frac, z_ref, np.array(structure.frac_coords), where=where)


def test_lattice_orientation_is_pymatgen_from_parameters():
    from pymatgen.core import Lattice

    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b, c = rng.uniform(2, 12, 3)
        alpha, beta, gamma = rng.uniform(60, 120, 3)
        ours = lattice_from_parameters(a, b, c, alpha, beta, gamma)
        theirs = Lattice.from_parameters(a, b, c, alpha, beta, gamma).matrix
        np.testing.assert_allclose(ours, theirs, atol=1e-10)


NACL_SYMMETRIC = """data_NaCl
_symmetry_space_group_name_H-M   'F m -3 m'
_cell_length_a   5.64
_cell_length_b   5.64
_cell_length_c   5.64
_cell_angle_alpha   90
_cell_angle_beta   90
_cell_angle_gamma   90
_symmetry_Int_Tables_number   225
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Na+  Na1  0.0  0.0  0.0  1
  Cl-  Cl1  0.5  0.5  0.5  1
"""

DISORDERED = """data_FeNi
_symmetry_space_group_name_H-M   'P 1'
_cell_length_a   3.5
_cell_length_b   3.5
_cell_length_c   3.5
_cell_angle_alpha   90
_cell_angle_beta   90
_cell_angle_gamma   90
loop_
 _symmetry_equiv_pos_as_xyz
  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Fe  Fe1  0.0  0.0  0.0  0.5
  Ni  Ni1  0.0  0.0  0.0  0.5
  Fe  Fe2  0.5  0.5  0.5  1
"""


def test_symmetric_cif_falls_back_and_is_expanded(tmp_path):
    assert parse_cif_fast(NACL_SYMMETRIC) is None
    path = tmp_path / "nacl.cif"
    path.write_text(NACL_SYMMETRIC)
    crystals, errors = read([path])
    assert errors == []
    assert crystals[0].num_atoms == 8  # conventional rock-salt cell: 4 Na + 4 Cl
    assert sorted(crystals[0].atomic_numbers.tolist()) == [11] * 4 + [17] * 4


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_symmetric_cif_with_explicit_operations(tmp_path):
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    structure = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    text = str(CifWriter(structure, symprec=0.01))
    assert "_symmetry_equiv_pos_as_xyz" in text and text.count("'x, y, z'") == 1
    assert parse_cif_fast(text) is None
    path = tmp_path / "nacl_ops.cif"
    path.write_text(text)
    crystals, errors = read([path])
    assert errors == [] and crystals[0].num_atoms == 8


def test_disordered_cif_is_rejected_with_occupancy_reason(tmp_path):
    assert parse_cif_fast(DISORDERED) is None
    path = tmp_path / "feni.cif"
    path.write_text(DISORDERED)
    crystals, errors = read([path])
    assert crystals == []
    assert len(errors) == 1 and "occupanc" in errors[0].reason


def test_fast_path_handles_variants():
    text = NACL_SYMMETRIC.replace("'F m -3 m'", "'P 1'").replace("225", "1")
    numbers, frac, lattice = parse_cif_fast(text)
    assert numbers.tolist() == [11, 17]  # oxidation states stripped
    np.testing.assert_allclose(np.diag(lattice), [5.64] * 3)
    # uncertainties in brackets, labels only (no type symbol), ideal fractions as pymatgen rounds them
    text = text.replace("5.64\n", "5.64(2)\n").replace("0.5  0.5  0.5", "0.3333  0.6667  0.5")
    text = text.replace(" _atom_site_type_symbol\n", "").replace("  Na+  Na1", "  Na1").replace("  Cl-  Cl1", "  Cl1")
    numbers, frac, lattice = parse_cif_fast(text)
    assert numbers.tolist() == [11, 17]
    np.testing.assert_allclose(frac[1], [1 / 3, 2 / 3, 0.5], atol=1e-12)
    # several data blocks or a text field: not the fast layout
    assert parse_cif_fast(text + "\n" + text) is None
    assert parse_cif_fast(text.replace("data_NaCl", "data_NaCl\n_publ_section_title\n;\nA title\n;")) is None
    assert parse_cif_fast("") is None
    assert parse_cif_fast("garbage") is None
