"""`crysdiff data inspect` through the real CLI entry point."""

import json

from crysdiff.cli import main

GOOD = """data_x
_cell_length_a 4.0
_cell_length_b 4.0
_cell_length_c 4.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
loop_
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Cs 0 0 0 1
Cl 0.5 0.5 0.5 1
"""


def test_inspect_examples_human(capsys):
    assert main(["data", "inspect", "examples/structures"]) == 0
    out = capsys.readouterr().out
    assert "10 crystals" in out and "band_gap_exp" in out and "atoms per cell" in out


def test_inspect_json(capsys):
    assert main(["data", "inspect", "examples/structures", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["crystals"] == 10 and report["skipped"] == 0
    assert report["labels"]["band_gap_exp"]["present"] == 9 and report["labels"]["band_gap_exp"]["missing"] == 1
    # canonical cells by default (TiO2 rutile, 6 atoms, is the largest primitive cell); --cell given: the files' cells
    assert report["elements"]["O"] == 4 and report["atoms_per_cell"]["max"] == 6
    assert report["cells"]["reduced"] == 6 and report["cells"]["atoms_given"] == 55 and report["cells"]["fallbacks"] == []
    assert main(["data", "inspect", "examples/structures", "--json", "--cell", "given"]) == 0
    given = json.loads(capsys.readouterr().out)
    assert given["atoms_per_cell"]["max"] == 8 and given["cells"]["reduced"] == 0


def test_bad_file_is_reported_and_good_ones_kept(tmp_path, capsys):
    (tmp_path / "good.cif").write_text(GOOD)
    (tmp_path / "half.cif").write_text(GOOD[:150])
    assert main(["data", "inspect", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["crystals"] == 1 and report["skipped"] == 1
    assert report["skipped_records"][0]["source"].endswith("half.cif")
    assert main(["data", "inspect", str(tmp_path)]) == 0
    assert "half.cif" in capsys.readouterr().out
    assert main(["data", "inspect", str(tmp_path), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "half.cif" in err and "Traceback" not in err


def test_all_bad_and_missing_paths_fail_cleanly(tmp_path, capsys):
    (tmp_path / "empty.cif").write_text("")
    assert main(["data", "inspect", str(tmp_path)]) == 2
    assert "no usable crystal" in capsys.readouterr().err
    assert main(["data", "inspect", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_cache_action(capsys):
    assert main(["data", "cache", "examples/structures"]) == 0
    assert "10 crystals cached" in capsys.readouterr().out


def test_no_cache_and_long_skip_lists(tmp_path, capsys, monkeypatch):
    (tmp_path / "good.cif").write_text(GOOD)
    for k in range(55):
        (tmp_path / f"bad{k:02d}.cif").write_text(GOOD.replace("Cl 0.5", "Qq 0.5"))
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("CRYSDIFF_CACHE", str(cache_dir))
    assert main(["data", "inspect", str(tmp_path), "--no-cache", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "skipped records (55)" in out and "... and 5 more" in out and "bad54.cif" not in out
    assert not cache_dir.exists() or not any(cache_dir.iterdir())
