"""Nothing is misread silently: a VASP 4 POSCAR without species is refused, deuterium is read as H
with one warning per file, a symbolic link loop reads each real file once and is reported, bad rows
are named as they stand in the file, and exact duplicates are counted (not dropped)."""

from __future__ import annotations

import json

import pytest

from crysdiff.cli import main

CELL = """_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
"""

ATOMS = "loop_\n" + "".join(f"_atom_site_{key}\n" for key in ("label", "type_symbol", "fract_x", "fract_y", "fract_z",
                                                                 "occupancy"))

NACL_FM3M = f"""data_NaCl
{CELL}_symmetry_space_group_name_H-M 'F m -3 m'
_symmetry_Int_Tables_number 225
{ATOMS}Na1 Na 0 0 0 1
{{row}}
"""

HEAVY_WATER = f"""data_D2O
{CELL}_symmetry_space_group_name_H-M 'P 1'
{ATOMS}O1 O 0.5 0.5 0.5 1
D1 D 0.6 0.6 0.5 1
D2 D 0.4 0.6 0.5 1
"""

NACL_P1 = f"""data_NaCl
{CELL}_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Na 0 0 0
Cl 0.5 0.5 0.5
"""

VASP4 = """{title}
5.64
1 0 0
0 1 0
0 0 1
4 4
Direct
0 0 0
0 .5 .5
.5 0 .5
.5 .5 0
.5 0 0
0 .5 0
0 0 .5
.5 .5 .5
"""


def inspect(capsys, *paths, strict=False):
    capsys.readouterr()
    code = main(["data", "inspect", *map(str, paths), "--no-cache", "--workers", "1", "--json",
                 *(["--strict"] if strict else [])])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


def test_a_vasp4_poscar_without_species_is_refused_naming_the_line(tmp_path, capsys):
    bare = tmp_path / "POSCAR"
    bare.write_text(VASP4.format(title="rocksalt"))
    named = tmp_path / "named.vasp"
    named.write_text(VASP4.format(title="Na Cl"))  # VASP 4 with the species on line 1 (documented)
    code, report, _ = inspect(capsys, bare, named)
    assert code == 0 and report["crystals"] == 1 and report["elements"] == {"Na": 1, "Cl": 1}
    (skipped,) = report["skipped_records"]
    assert skipped["source"].endswith("POSCAR") and "line 6 holds the atom counts (4 4)" in skipped["reason"]
    assert "no line names the species" in skipped["reason"]
    unknown = tmp_path / "CONTCAR"
    unknown.write_text(VASP4.format(title="x").replace("4 4\n", "Na Xx\n4 4\n"))
    code, report, _ = inspect(capsys, unknown)
    assert code == 2  # nothing usable


def test_deuterium_is_read_as_hydrogen_with_one_warning_per_file(tmp_path, capsys):
    cif = tmp_path / "d2o.cif"
    cif.write_text(HEAVY_WATER + HEAVY_WATER.replace("data_D2O", "data_D2O_b"))  # two blocks, four D atoms
    poscar = tmp_path / "POSCAR_D2O"
    poscar.write_text("D2O\n5\n1 0 0\n0 1 0\n0 0 1\nO D\n1 2\nDirect\n.5 .5 .5\n.6 .6 .5\n.4 .6 .5\n")
    code, report, err = inspect(capsys, cif, poscar)
    assert code == 0 and report["crystals"] == 3 and report["elements"] == {"O": 3, "H": 3}
    warnings = [line for line in err.splitlines() if "deuterium (D) read as hydrogen" in line]
    assert len(warnings) == 2 and str(cif) in warnings[0] and str(poscar) in warnings[1]


def test_a_symlink_loop_reads_each_real_file_once_and_is_reported(tmp_path, capsys):
    root = tmp_path / "structures"
    (root / "sub").mkdir(parents=True)
    (root / "a.cif").write_text(HEAVY_WATER.replace("D", "H").replace("data_H2O", "data_a"))
    (root / "sub" / "b.cif").write_text(NACL_P1)
    (root / "sub" / "up").symlink_to("..")  # a loop
    (root / "alias.cif").symlink_to("a.cif")  # the same file twice
    for strict in (False, True):
        code, report, err = inspect(capsys, root, strict=strict)
        assert code == 0 and report["crystals"] == 2 and len(report["sources"]) == 2
        assert any("symbolic link loop back to" in line and "up" in line for line in err.splitlines())
        assert any("alias.cif" in line and "read once" in line for line in err.splitlines())


@pytest.mark.parametrize("row,expected", [
    ("Cl1 Cl 0.5 0.5 0.5 0.5", "atom_site row 2 (label Cl1) has occupancy 0.5: partial occupancy"),
    ("Xx1 Xx 0.5 0.5 0.5 1", "atom_site row 2 (label Xx1) has the unknown element symbol 'Xx'"),
])
def test_bad_rows_are_named_as_they_stand_in_the_file(row, expected, tmp_path, capsys):
    """pymatgen's sites are the symmetry-expanded ones (site 4 was the first Cl); the file has 2 rows."""
    bad = tmp_path / "bad.cif"
    bad.write_text(NACL_FM3M.format(row=row))
    good = tmp_path / "good.cif"
    good.write_text(NACL_FM3M.format(row="Cl1 Cl 0.5 0.5 0.5 1"))
    code, report, _ = inspect(capsys, bad, good)
    assert code == 0 and report["crystals"] == 1
    (skipped,) = report["skipped_records"]
    assert skipped["record"] == "block data_NaCl" and skipped["reason"].startswith(expected), skipped


def test_exact_duplicates_are_counted_not_dropped(tmp_path, capsys):
    folder = tmp_path / "copies"
    folder.mkdir()
    text = NACL_P1
    for k in range(12):
        (folder / f"copy{k:02d}.cif").write_text(text)
    (folder / "other.cif").write_text(text.replace("5.64", "5.70"))
    code, report, _ = inspect(capsys, folder)
    assert code == 0 and report["crystals"] == 13
    assert report["duplicates"]["crystals"] == 11 and report["duplicates"]["groups"] == 1
    assert report["duplicates"]["examples"][0][:2] == ["copy00", "copy01"]
    capsys.readouterr()
    assert main(["data", "inspect", str(folder), "--no-cache", "--workers", "1"]) == 0
    assert "exact duplicates: 11 crystals repeat an earlier one" in capsys.readouterr().out
