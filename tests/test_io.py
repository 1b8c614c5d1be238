"""Readers on the real files in ../shared/data (small subsets where files are large)."""

from __future__ import annotations

import csv
import gzip
import json
import math
import sys
import warnings

import numpy as np
import pytest

from crysdiff.crystal import Crystal, RecordError, ValidationSettings, to_ase, to_pymatgen
from crysdiff.io import KNOWN_UNITS, Source, from_structures, plan, read, resolve, run_task

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _run(source: Source, max_tasks: int | None = None, chunk_size: int = 256):
    crystals, errors = [], []
    for k, task in enumerate(plan(source, chunk_size=chunk_size)):
        if max_tasks is not None and k >= max_tasks:
            break
        for result in run_task(task, ValidationSettings()):
            (errors if isinstance(result, RecordError) else crystals).append(result)
    return crystals, errors


def _same_crystal(a: Crystal, z, frac, lattice, tol=1e-6):
    """Same lattice and the same (species, position mod 1) multiset."""
    np.testing.assert_allclose(a.lattice, lattice, atol=tol)
    assert sorted(a.atomic_numbers.tolist()) == sorted(np.asarray(z).tolist())
    frac = np.asarray(frac) % 1.0
    for zi, fi in zip(a.atomic_numbers, a.frac_coords):
        delta = frac - fi
        delta -= np.round(delta)
        assert np.any((np.abs(delta).max(axis=1) < tol) & (np.asarray(z) == zi))


# --- detection ------------------------------------------------------------------------------------


def test_resolve_detects_every_format(shared_data):
    sources = {s.path: s for s in resolve([shared_data])}
    formats = {str(shared_data / rel): fmt for rel, fmt in [
        ("mp2018/train.csv.gz", "csv"),
        ("perov_5/val.csv.gz", "csv"),
        ("matminer/flla_2015.extxyz", "extxyz"),
        ("prototypes/cod_spg229_jarvis.json", "jarvis"),
        ("prototypes/ase_dcdft.json", "ase"),
        ("prototypes/robocrys_mineral_db.json.gz", "pymatgen"),
        ("prototypes/pymatgen_structures/Si.json", "pymatgen"),
    ]}
    for path, fmt in formats.items():
        assert sources[path].format == fmt
    elastic = sources[str(shared_data / "mp_elastic")]
    assert elastic.format == "folder" and elastic.labels_path.endswith("labels.csv")
    assert not any(path.endswith("README.md") or "/mp_elastic/" in path for path in sources)
    assert len(sources) == 37


def test_resolve_errors(tmp_path, shared_data):
    with pytest.raises(FileNotFoundError, match="nope"):
        resolve([tmp_path / "nope.cif"])
    odd = tmp_path / "notes.bin"
    odd.write_text("hello\n")
    with pytest.raises(ValueError, match="notes.bin"):
        resolve([odd])
    with pytest.raises(ValueError, match="unknown format"):
        resolve([odd], format="xyzzy")


def test_detect_by_content_and_forcing(tmp_path, shared_data):
    text = (shared_data / "mp_elastic" / "structures" / "mp-10000.cif").read_text()
    unnamed = tmp_path / "structure.txt"
    unnamed.write_text(text)
    assert resolve([unnamed])[0].format == "cif"
    forced = tmp_path / "structure.data"
    forced.write_text(text)
    crystals, errors = read([forced], format="cif")
    assert errors == [] and crystals[0].formula == "S2Hf4" and crystals[0].id == "structure.data"
    # forcing a wrong format gives a reason, not a traceback
    crystals, errors = read([forced], format="jarvis")
    assert crystals == [] and errors[0].record == "*" and "JSON" in errors[0].reason


# --- CSV ------------------------------------------------------------------------------------------


def test_mp2018_plan_counts_and_chunks(shared_data):
    for name, rows in [("train.csv.gz", 31884), ("val.csv.gz", 2615)]:
        tasks = list(plan(Source(str(shared_data / "mp2018" / name), "csv"), chunk_size=1000))
        assert sum(len(t.items) for t in tasks) == rows
        assert max(len(t.items) for t in tasks) == 1000
    crystals, errors = _run(Source(str(shared_data / "mp2018" / "train.csv.gz"), "csv"), max_tasks=2)
    assert errors == [] and len(crystals) == 512
    first = crystals[0]
    assert first.id == "mp-1" and first.record == "row 0 (mp-1)"
    assert set(first.labels) == {"formation_energy_per_atom", "band_gap", "fermi_energy", "total_magnetization"}
    assert first.labels["formation_energy_per_atom"] == pytest.approx(0.038769612068965564)
    assert first.atomic_numbers.tolist() == [55]


def test_perov5_index_column_and_empty_train_labels(shared_data):
    val, errors = _run(Source(str(shared_data / "perov_5" / "val.csv.gz"), "csv"), max_tasks=1)
    assert errors == []
    assert set(val[0].labels) == {"heat_all", "heat_ref", "dir_gap", "ind_gap"}  # no unnamed index column
    assert val[0].id == "18517" and val[0].labels["heat_ref"] == pytest.approx(2.709152583232041)
    train, _ = _run(Source(str(shared_data / "perov_5" / "train.csv.gz"), "csv"), max_tasks=1)
    assert all(math.isnan(v) for c in train for v in c.labels.values())
    assert set(train[0].labels) == {"heat_all", "heat_ref", "dir_gap", "ind_gap"}
    assert all(c.num_atoms == 5 for c in train)


def test_carbon24(shared_data):
    crystals, errors = read([shared_data / "carbon_24" / "test.csv.gz"])
    assert errors == [] and len(crystals) == 2030
    assert all(set(c.atomic_numbers.tolist()) == {6} for c in crystals)
    assert all(np.isfinite(c.labels["energy_per_atom"]) for c in crystals)


def test_gzipped_csv_written_here(tmp_path, shared_data):
    with gzip.open(shared_data / "perov_5" / "test.csv.gz", "rt") as handle:
        rows = list(csv.reader(handle))[:6]
    path = tmp_path / "small.csv.gz"
    with gzip.open(path, "wt", newline="") as handle:
        csv.writer(handle).writerows(rows)
    assert resolve([path])[0].format == "csv"
    crystals, errors = read([path])
    assert errors == [] and len(crystals) == 5 and crystals[0].id == rows[1][1]


# --- folders --------------------------------------------------------------------------------------


def test_mp_elastic_folder_with_labels_csv(shared_data):
    source = resolve([shared_data / "mp_elastic"])[0]
    tasks = list(plan(source))
    assert sum(len(t.items) for t in tasks) == 2988
    crystals, errors = _run(source, max_tasks=1, chunk_size=100)
    assert errors == [] and len(crystals) == 100
    first = crystals[0]
    assert first.id == "mp-10000" and first.labels == {"K_VRH": 131.0, "G_VRH": 74.0, "poisson_ratio": 0.26}
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Structure.from_file(shared_data / "mp_elastic" / "structures" / "mp-10000.cif")
    _same_crystal(first, [s.specie.Z for s in reference], reference.frac_coords, reference.lattice.matrix, tol=1e-5)


def test_id_prop_folder(tmp_path, shared_data):
    structures = shared_data / "mp_elastic" / "structures"
    for name in ("mp-10000", "mp-10003", "mp-10010"):
        (tmp_path / f"{name}.cif").write_text((structures / f"{name}.cif").read_text())
    (tmp_path / "id_prop.csv").write_text("mp-10000.cif,1.5\nmp-10003,2.5\nmp-404,3.5\n")
    [source] = resolve([tmp_path])
    assert source.format == "folder" and source.labels_path.endswith("id_prop.csv")
    crystals, errors = read([tmp_path])
    by_id = {c.id: c for c in crystals}
    assert by_id["mp-10000"].labels == {"target": 1.5} and by_id["mp-10003"].labels == {"target": 2.5}
    assert math.isnan(by_id["mp-10010"].labels["target"])  # a file without a label row still loads
    assert len(errors) == 1 and "mp-404" in errors[0].record


def test_plain_folder_of_pymatgen_json(shared_data):
    folder = shared_data / "prototypes" / "pymatgen_structures"
    sources = resolve([folder])
    assert len(sources) == 21 and {s.format for s in sources} == {"pymatgen"}
    crystals, errors = read([folder])
    assert len(crystals) == 20
    assert [e.source.split("/")[-1] for e in errors] == ["Li10GeP2S12.json"]  # disordered, not rounded
    assert "partial occupancy" in errors[0].reason
    from pymatgen.core import Structure

    reference = Structure.from_file(folder / "LiFePO4.json")
    lifepo4 = next(c for c in crystals if c.id == "LiFePO4")
    _same_crystal(lifepo4, [s.specie.Z for s in reference], reference.frac_coords, reference.lattice.matrix)


# --- native formats -------------------------------------------------------------------------------


def test_matminer_extxyz_against_ase(shared_data):
    from ase.io import read as ase_read

    path = shared_data / "matminer" / "piezoelectric_tensor.extxyz"
    crystals, errors = read([path])
    assert errors == [] and len(crystals) == 894
    frames = ase_read(path, index=":30")
    for crystal, atoms in zip(crystals, frames):
        assert crystal.id == atoms.info["material_id"]
        assert crystal.labels == {"eij_max": pytest.approx(atoms.info["eij_max"])}
        _same_crystal(crystal, atoms.numbers, atoms.get_scaled_positions(), atoms.cell[:], tol=1e-9)
    elastic, _ = _run(Source(str(shared_data / "matminer" / "elastic_tensor.extxyz"), "extxyz"), max_tasks=1)
    assert set(elastic[0].labels) == {"K_VRH", "G_VRH", "poisson_ratio", "elastic_anisotropy"}


def test_extxyz_fallback_to_ase(tmp_path):
    from ase import Atoms
    from ase.io import write

    atoms = Atoms("CsCl", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=np.diag([4.1, 4.2, 4.3]), pbc=True)
    atoms.info["gap"] = 1.25
    atoms.arrays["charges"] = np.array([1.0, -1.0])  # an extra column: not the fast layout
    path = tmp_path / "extra.extxyz"
    write(path, [atoms, atoms], format="extxyz")
    crystals, errors = read([path])
    assert errors == [] and len(crystals) == 2
    assert crystals[1].labels == {"gap": 1.25} and crystals[1].id == "1"
    _same_crystal(crystals[0], [55, 17], [[0, 0, 0], [0.5, 0.5, 0.5]], np.diag([4.1, 4.2, 4.3]))


def test_jarvis_cod_including_4640_atoms(shared_data):
    path = shared_data / "prototypes" / "cod_spg229_jarvis.json"
    records = json.loads(path.read_text())
    crystals, errors = read([path])
    assert len(crystals) + len(errors) == 229
    assert all("closer than the minimum" in e.reason for e in errors)  # COD's overlapping sites
    largest = max(crystals, key=lambda c: c.num_atoms)
    assert largest.num_atoms == 4640
    k = int(largest.record.split()[1])
    atoms = records[k]["atoms"]
    np.testing.assert_allclose(largest.lattice, atoms["lattice_mat"])
    assert largest.labels == {"spg_number": float(records[k]["spg_number"])}


def test_robocrys_split_table(shared_data):
    path = shared_data / "prototypes" / "robocrys_mineral_db.json.gz"
    with gzip.open(path, "rt") as handle:
        table = json.load(handle)
    crystals, errors = read([path])
    assert errors == [] and len(crystals) == 180
    assert [c.id for c in crystals[:3]] == table["index"][:3]
    assert crystals[0].labels == {"n_elems": 2.0}
    from pymatgen.core import Structure

    reference = Structure.from_dict(table["data"][0][0])
    _same_crystal(crystals[0], [s.specie.Z for s in reference], reference.frac_coords, reference.lattice.matrix)


def test_ase_json_database(shared_data):
    import ase.db

    path = shared_data / "prototypes" / "ase_dcdft.json"
    crystals, errors = read([path])
    assert errors == [] and len(crystals) == 71
    row = ase.db.connect(str(path)).get(id=1)
    first = crystals[0]
    assert first.id == row.name == "H" and first.record == "row 1 (H)"
    assert first.labels == {"wien2k_B": 10.284, "wien2k_Bp": 2.71, "wien2k_volume": 17.3883}
    _same_crystal(first, row.numbers, row.toatoms().get_scaled_positions(), row.cell[:])


def test_ase_sqlite_database(tmp_path):
    import ase.db
    from ase.build import bulk

    path = tmp_path / "small.db"
    with ase.db.connect(str(path)) as db:
        db.write(bulk("Cu", "fcc", a=3.6), material_id="cu", energy_above_hull=0.0)
        db.write(bulk("NaCl", "rocksalt", a=5.6), material_id="nacl", energy_above_hull=0.1)
    crystals, errors = read([path])
    assert errors == [] and [c.id for c in crystals] == ["cu", "nacl"]
    assert crystals[1].labels == {"energy_above_hull": 0.1}


def test_poscar_and_multiblock_cif(tmp_path, shared_data):
    from pymatgen.io.vasp import Poscar

    first, _ = _run(Source(str(shared_data / "mp_elastic"), "folder", str(shared_data / "mp_elastic" / "labels.csv")), max_tasks=1, chunk_size=3)
    structure = to_pymatgen(first[2])
    Poscar(structure).write_file(tmp_path / "POSCAR")
    (tmp_path / "CONTCAR.vasp").write_text(Poscar(structure).get_str())
    crystals, errors = read([tmp_path / "POSCAR", tmp_path / "CONTCAR.vasp"])
    assert errors == [] and len(crystals) == 2
    _same_crystal(crystals[0], first[2].atomic_numbers, first[2].frac_coords, first[2].lattice)
    blocks = "".join((shared_data / "mp_elastic" / "structures" / f"{n}.cif").read_text() for n in ("mp-10000", "mp-10003"))
    (tmp_path / "two.cif").write_text(blocks)
    crystals, errors = read([tmp_path / "two.cif"])
    assert errors == [] and [c.record for c in crystals] == ["block data_Hf2S", "block data_Nb4CoSi"]
    assert [c.id for c in crystals] == ["Hf2S", "Nb4CoSi"]


# --- adapters -------------------------------------------------------------------------------------


def test_round_trips_with_pymatgen_and_ase(tmp_path, shared_data):
    crystals, _ = _run(Source(str(shared_data / "mp2018" / "val.csv.gz"), "csv"), max_tasks=1, chunk_size=8)
    structures = [to_pymatgen(c) for c in crystals]
    again = from_structures(structures, ids=[c.id for c in crystals])
    atoms = [to_ase(c) for c in crystals]
    via_ase = from_structures(atoms)
    for original, a, b in zip(crystals, again, via_ase):
        assert a.id == original.id
        for other in (a, b):
            np.testing.assert_array_equal(other.atomic_numbers, original.atomic_numbers)
            np.testing.assert_allclose(other.lattice, original.lattice, atol=1e-10)
            delta = other.frac_coords - original.frac_coords
            assert np.abs(delta - np.round(delta)).max() < 1e-9
    assert from_structures(crystals[:2])[0].id == crystals[0].id
    # through files: extxyz written by ASE, CIF written by pymatgen
    from ase.io import write
    from pymatgen.io.cif import CifWriter

    write(tmp_path / "out.extxyz", atoms, format="extxyz")
    read_back, errors = read([tmp_path / "out.extxyz"])
    assert errors == [] and len(read_back) == len(crystals)
    (tmp_path / "out.cif").write_text(str(CifWriter(structures[0])))
    [cif_back], errors = read([tmp_path / "out.cif"])
    _same_crystal(cif_back, crystals[0].atomic_numbers, crystals[0].frac_coords, crystals[0].lattice, tol=1e-6)


def test_from_structures_rejects_bad_objects():
    from pymatgen.core import Lattice, Structure

    disordered = Structure(Lattice.cubic(4), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    with pytest.raises(RecordError, match="partial occupancy"):
        from_structures([disordered])
    with pytest.raises(TypeError, match="str"):
        from_structures(["not a structure"])


def test_known_units_cover_shared_labels(shared_data):
    names = {"formation_energy_per_atom", "band_gap", "fermi_energy", "total_magnetization", "K_VRH", "G_VRH",
             "poisson_ratio", "heat_ref", "heat_all", "dir_gap", "ind_gap", "energy_per_atom", "e_above_hull",
             "n", "poly_electronic", "poly_total", "eij_max", "elastic_anisotropy"}
    assert names <= set(KNOWN_UNITS)
    assert KNOWN_UNITS["formation_energy_per_atom"] == "eV/atom" and KNOWN_UNITS["K_VRH"] == "GPa"


def test_tasks_are_picklable_for_every_format(shared_data):
    import pickle

    names = ["carbon_24/test.csv.gz", "matminer/piezoelectric_tensor.extxyz", "prototypes/cod_spg229_jarvis.json",
             "prototypes/ase_dcdft.json", "prototypes/robocrys_mineral_db.json.gz", "mp_elastic"]
    for source in resolve([shared_data / name for name in names]):
        task = next(iter(plan(source, chunk_size=4)))
        again = pickle.loads(pickle.dumps(task))
        results = run_task(again, ValidationSettings())
        assert len(results) == 4 and all(isinstance(r, Crystal) for r in results), source
        assert pickle.loads(pickle.dumps(results))[0].id == results[0].id


def test_forced_format_on_a_folder(tmp_path, shared_data):
    text = (shared_data / "mp_elastic" / "structures" / "mp-10000.cif").read_text()
    (tmp_path / "a.txt").write_text("notes")
    (tmp_path / "b.struct").write_text(text)
    (tmp_path / "c.extxyz").write_text("not used")
    sources = resolve([tmp_path], format="cif")
    assert [s.path.split("/")[-1] for s in sources] == ["b.struct"]
    with pytest.raises(ValueError, match="label table"):
        resolve([tmp_path], format="folder")


# --- the quirks listed in ../shared/data/README.md ------------------------------------------------


def test_mp2018_formation_energy_outliers_are_kept(shared_data):
    """Four formation energies below -5 eV/atom are database outliers, but real records: kept, not filtered."""
    values = [item.labels["formation_energy_per_atom"]
              for task in plan(Source(str(shared_data / "mp2018" / "train.csv.gz"), "csv"), chunk_size=4096)
              for item in task.items]
    assert sum(v < -5 for v in values) == 4


def test_jarvis_na_strings_are_missing_labels(tmp_path):
    """JARVIS downloads write missing values as the string "na": the record stays, the label is NaN."""
    atoms = {"lattice_mat": [[4.1, 0, 0], [0, 4.1, 0], [0, 0, 4.1]], "coords": [[0, 0, 0], [0.5, 0.5, 0.5]],
             "elements": ["Cs", "Cl"], "cartesian": False}
    path = tmp_path / "jarvis.json"
    path.write_text(json.dumps([{"jid": "JVASP-1", "atoms": atoms, "optb88vdw_bandgap": "na", "mbj_bandgap": 5.1},
                                {"jid": "JVASP-2", "atoms": {**atoms, "cartesian": True,
                                                             "coords": [[0, 0, 0], [2.05, 2.05, 2.05]]}, "optb88vdw_bandgap": 4.2}]))
    crystals, errors = read([path])
    assert errors == [] and [c.id for c in crystals] == ["JVASP-1", "JVASP-2"]
    assert math.isnan(crystals[0].labels["optb88vdw_bandgap"]) and crystals[0].labels["mbj_bandgap"] == 5.1
    np.testing.assert_allclose(crystals[1].frac_coords, [[0, 0, 0], [0.5, 0.5, 0.5]])  # Cartesian input converted


def test_left_handed_lattices_are_valid(shared_data):
    """Some cells are stored left-handed (negative determinant: pymatgen's K2O2 and LiFePO4): valid, kept as given."""
    crystals, errors = read([shared_data / "prototypes" / "pymatgen_structures"])
    left = [c for c in crystals if np.linalg.det(c.lattice) < 0]
    assert {c.id for c in left} == {"K2O2", "LiFePO4"}
    assert all(c.volume > 0 for c in left)
