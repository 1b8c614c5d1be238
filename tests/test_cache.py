"""The memory-mapped cache: exact round trip, content/settings keys, atomic builds, strictness."""

import json
import os

import numpy as np
import pytest

from crysdiff.cache import DatasetError, load_dataset
from crysdiff.crystal import RecordError, ValidationSettings
from crysdiff.io import read

NACL = """data_NaCl
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Na 0.0 0.0 0.0 1
Cl 0.5 0.5 0.5 1
"""


def parts(cache_dir):
    return sorted(p.name for p in cache_dir.iterdir() if p.is_dir())


def test_round_trip_is_exact(shared_data, tmp_path):
    source = shared_data / "mp_elastic"
    cache = load_dataset([source], cache_dir=tmp_path, workers=2, progress=False)
    crystals, errors = read([source])
    assert len(cache) == len(crystals) == 2988 and not errors and not cache.skipped
    assert cache.label_names == ["K_VRH", "G_VRH", "poisson_ratio"] and cache.units["K_VRH"] == "GPa"
    by_id = {c.id: c for c in crystals}
    for i in np.random.default_rng(0).choice(len(cache), 50, replace=False):
        got, want = cache.crystal(i), by_id[cache.id(i)]
        np.testing.assert_array_equal(got.atomic_numbers, want.atomic_numbers)
        np.testing.assert_array_equal(got.frac_coords, want.frac_coords)
        np.testing.assert_array_equal(got.lattice, want.lattice)
        assert got.labels == pytest.approx(want.labels)
    # gather returns the same atoms in batch order
    idx = np.array([7, 3, 2500, 3])
    z, frac, lattices, counts = cache.gather(idx)
    assert counts.tolist() == [cache.crystal(i).num_atoms for i in idx]
    np.testing.assert_array_equal(z[: counts[0]], cache.crystal(7).atomic_numbers)
    np.testing.assert_array_equal(frac[-counts[3]:], cache.crystal(3).frac_coords)
    np.testing.assert_array_equal(lattices[2], cache.crystal(2500).lattice)


def test_warm_open_reuses_and_changes_rebuild(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.cif").write_text(NACL)
    cache_dir = tmp_path / "cache"
    first = load_dataset([data], cache_dir=cache_dir, workers=1, progress=False)
    built = parts(cache_dir)
    again = load_dataset([data], cache_dir=cache_dir, workers=1, progress=False)
    assert parts(cache_dir) == built and len(again) == len(first) == 1
    # new content -> new key; the old part is left alone
    (data / "a.cif").write_text(NACL.replace("5.64", "5.70"))
    changed = load_dataset([data], cache_dir=cache_dir, workers=1, progress=False)
    assert len(parts(cache_dir)) == 2 and changed.crystal(0).lattice[0, 0] == pytest.approx(5.70)
    # new settings -> new key
    load_dataset([data], cache_dir=cache_dir, workers=1, progress=False, settings=ValidationSettings(min_distance=0.4))
    assert len(parts(cache_dir)) == 3


def test_same_content_touched_is_reused(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "a.cif").write_text(NACL)
    load_dataset([data], cache_dir=tmp_path / "c", workers=1, progress=False)
    os.utime(data / "a.cif", (1, 1))  # stat changes, content does not: digest recomputed, same key
    load_dataset([data], cache_dir=tmp_path / "c", workers=1, progress=False)
    assert len(parts(tmp_path / "c")) == 1


def test_interrupted_build_leaves_no_partial_cache(tmp_path, monkeypatch):
    data = tmp_path / "d"
    data.mkdir()
    (data / "a.cif").write_text(NACL)
    cache_dir = tmp_path / "c"
    good = load_dataset([data], cache_dir=cache_dir, workers=1, progress=False)
    before = parts(cache_dir)
    (data / "b.cif").write_text(NACL.replace("Na", "K"))
    from crysdiff.cache.writer import PartWriter

    def interrupted(self, units):
        raise KeyboardInterrupt

    monkeypatch.setattr(PartWriter, "finish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_dataset([data], cache_dir=cache_dir, workers=1, progress=False)
    assert parts(cache_dir) == before  # no new part, no temporary folder left
    assert not any(p.name.startswith(".tmp") for p in cache_dir.iterdir())
    assert good.crystal(0).num_atoms == 2  # the earlier cache is still readable


def test_skipped_records_are_kept_and_strict_fails(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "good.cif").write_text(NACL)
    (data / "bad.cif").write_text(NACL.replace("Cl 0.5 0.5 0.5 1", "Xx 0.5 0.5 0.5 1"))
    cache = load_dataset([data], cache_dir=tmp_path / "c", workers=1, progress=False)
    assert len(cache) == 1 and len(cache.skipped) == 1
    assert cache.skipped[0]["source"].endswith("bad.cif") and "Xx" in cache.skipped[0]["reason"]
    # strict fails on a fresh build and on a warm open of a cache that has skipped records
    with pytest.raises(RecordError, match="bad.cif"):
        load_dataset([data], cache_dir=tmp_path / "c2", workers=1, progress=False, strict=True)
    with pytest.raises(RecordError, match="bad.cif"):
        load_dataset([data], cache_dir=tmp_path / "c", workers=1, progress=False, strict=True)


def test_all_bad_is_a_dataset_error(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "empty.cif").write_text("")
    (data / "junk.cif").write_text("data_x\n_cell_length_a oops\n")
    with pytest.raises(DatasetError, match="no usable crystal"):
        load_dataset([data], cache_dir=tmp_path / "c", workers=1, progress=False)


def test_pool_of_several_sources(shared_data, tmp_path):
    cache = load_dataset([shared_data / "perov_5" / "val.csv.gz", shared_data / "prototypes" / "pymatgen_structures"],
                         cache_dir=tmp_path, workers=2, progress=False)
    assert len(cache.sources) == 1 + 21
    assert int((cache.source_index == 0).sum()) == 3787
    assert "heat_ref" in cache.label_names
    perov = cache.labels[cache.source_index == 0, cache.label_names.index("heat_ref")]
    assert np.isfinite(perov).all()
    assert np.isnan(cache.labels[cache.source_index > 0, cache.label_names.index("heat_ref")]).all()
    assert any("Li10GeP2S12" in s["source"] for s in cache.skipped)


def test_cache_is_picklable_for_worker_processes(shared_data, tmp_path):
    import pickle

    cache = load_dataset([shared_data / "perov_5" / "test.csv.gz"], cache_dir=tmp_path, workers=1, progress=False)
    clone = pickle.loads(pickle.dumps(cache))
    assert len(clone) == len(cache) and clone.id(10) == cache.id(10)


def test_meta_records_counts(shared_data, tmp_path):
    load_dataset([shared_data / "carbon_24" / "val.csv.gz"], cache_dir=tmp_path, workers=1, progress=False)
    (part,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    meta = json.loads((part / "meta.json").read_text())
    assert meta["num_crystals"] == 2032 and meta["label_names"] == ["energy_per_atom"]
    assert meta["sources"][0]["format"] == "csv" and meta["sources"][0]["crystals"] == 2032
    assert meta["settings"]["min_distance"] == 0.5 and meta["key"] == part.name


def test_loose_files_share_a_part_and_datasets_are_shared_between_pools(shared_data, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    for k in range(40):
        (data / f"s{k:02d}.cif").write_text(NACL.replace("5.64", f"{5.0 + k / 10:.2f}"))
    cache_dir = tmp_path / "c"
    cache = load_dataset([data], cache_dir=cache_dir, workers=2, progress=False)
    assert len(cache) == 40 and len(cache.sources) == 40 and len(parts(cache_dir)) == 1
    assert cache.source_of(7).endswith("s07.cif") and cache.crystal(7).lattice[0, 0] == pytest.approx(5.7)
    assert np.array_equal(cache.source_index, np.arange(40))
    # a dataset file read alone reuses the part built when it was pooled
    val = shared_data / "carbon_24" / "val.csv.gz"
    load_dataset([shared_data / "carbon_24"], cache_dir=cache_dir, workers=2, progress=False)
    before = parts(cache_dir)
    alone = load_dataset([val], cache_dir=cache_dir, workers=2, progress=False)
    assert parts(cache_dir) == before and len(alone) == 2032 and alone.sources == [str(val)]


def test_parallel_and_serial_builds_agree(shared_data, tmp_path):
    source = shared_data / "matminer" / "piezoelectric_tensor.extxyz"
    serial = load_dataset([source], cache_dir=tmp_path / "a", workers=1, progress=False)
    parallel = load_dataset([source], cache_dir=tmp_path / "b", workers=2, progress=False)
    assert len(serial) == len(parallel) == 894
    for name in ("atomic_numbers", "frac_coords", "lattices"):
        np.testing.assert_array_equal(serial.parts[0].arrays[name], parallel.parts[0].arrays[name])
    np.testing.assert_array_equal(serial.labels, parallel.labels)
    assert [serial.id(i) for i in range(0, 894, 97)] == [parallel.id(i) for i in range(0, 894, 97)]


def test_interrupted_parallel_build_cleans_up(shared_data, tmp_path, monkeypatch):
    from crysdiff.cache.writer import PartWriter

    original = PartWriter.add

    def add(self, item, slot):
        if self.records >= 1000:  # a few tasks in
            raise KeyboardInterrupt
        original(self, item, slot)

    monkeypatch.setattr(PartWriter, "add", add)
    with pytest.raises(KeyboardInterrupt):
        load_dataset([shared_data / "perov_5" / "val.csv.gz"], cache_dir=tmp_path, workers=2, progress=False)
    assert parts(tmp_path) == []
    monkeypatch.setattr(PartWriter, "add", original)
    assert len(load_dataset([shared_data / "perov_5" / "val.csv.gz"], cache_dir=tmp_path, workers=2, progress=False)) == 3787
