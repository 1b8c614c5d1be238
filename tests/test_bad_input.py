"""Bad input: every broken record becomes a RecordError with a reason; good records survive."""

from __future__ import annotations

import gzip
import json

import pytest

from crysdiff.crystal import RecordError, ValidationSettings
from crysdiff.io import Source, Task, plan, read, run_task

CSCL = """# generated using pymatgen
data_CsCl
_symmetry_space_group_name_H-M   'P 1'
_cell_length_a   4.20000000
_cell_length_b   4.20000000
_cell_length_c   4.20000000
_cell_angle_alpha   90.00000000
_cell_angle_beta   90.00000000
_cell_angle_gamma   90.00000000
_symmetry_Int_Tables_number   1
loop_
 _symmetry_equiv_pos_site_id
 _symmetry_equiv_pos_as_xyz
  1  'x, y, z'
loop_
 _atom_site_type_symbol
 _atom_site_label
 _atom_site_symmetry_multiplicity
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 _atom_site_occupancy
  Cs  Cs0  1  0.00000000  0.00000000  0.00000000  1
  Cl  Cl1  1  0.50000000  0.50000000  0.50000000  1
"""


def _variant(old: str, new: str, name: str = "Bad") -> str:
    assert old in CSCL
    return CSCL.replace(old, new).replace("data_CsCl", f"data_{name}")


def _csv(path, cifs: list[str]):
    lines = ["material_id,cif,band_gap"]
    for k, text in enumerate(cifs):
        escaped = text.replace('"', '""')
        lines.append(f'id-{k},"{escaped}",{k}.5')
    path.write_text("\n".join(lines) + "\n")
    return path


def _read_one_bad(path, **kwargs):
    """Read a file holding one good record (first) and one bad one; return the bad one's error."""
    crystals, errors = read([path], **kwargs)
    assert [c.formula for c in crystals] == ["ClCs"] or [c.id for c in crystals] == ["id-0"], crystals
    assert len(errors) == 1, errors
    assert errors[0].source == str(path)
    with pytest.raises(RecordError):
        read([path], strict=True, **kwargs)
    return errors[0]


# --- per-record failures: the good record in the same file survives -------------------------------


def test_unparsable_cif_block(tmp_path):
    path = tmp_path / "two.cif"
    path.write_text(CSCL + "data_junk\nthis is not a CIF at all\n")
    error = _read_one_bad(path)
    assert error.record == "block data_junk"
    assert "expected a readable CIF" in error.reason


def test_truncated_cif(tmp_path):
    cut = CSCL[: CSCL.index("  Cl  Cl1") + 20]  # stops in the middle of the last atom row
    error = _read_one_bad(_csv(tmp_path / "t.csv", [CSCL, cut]))
    assert error.record == "row 1 (id-1)"
    assert "truncated" in error.reason


def test_truncated_cif_without_atoms(tmp_path):
    error = _read_one_bad(_csv(tmp_path / "t.csv", [CSCL, CSCL[: CSCL.index("_cell_angle_beta")]]))
    assert "missing cell parameter" in error.reason


def test_truncated_poscar(tmp_path):
    good = tmp_path / "POSCAR"
    good.write_text("CsCl\n1.0\n4.2 0 0\n0 4.2 0\n0 0 4.2\nCs Cl\n1 1\nDirect\n0 0 0\n0.5 0.5 0.5\n")
    bad = tmp_path / "CONTCAR"
    bad.write_text("CsCl\n1.0\n4.2 0 0\n0 4.2 0\n0 0 4.2\nCs Cl\n1 1\nDirect\n0 0 0\n")
    crystals, errors = read([good, bad])
    assert len(crystals) == 1 and crystals[0].formula == "ClCs"
    assert len(errors) == 1 and errors[0].source == str(bad)
    assert "truncated: the counts give 2 atoms but only 1 coordinate lines follow" in errors[0].reason


def test_partial_occupancy(tmp_path):
    bad = _variant("0.50000000  1\n", "0.50000000  0.6\n")
    error = _read_one_bad(_csv(tmp_path / "p.csv", [CSCL, bad]))
    assert "occupancy" in error.reason and "disorder" in error.reason


def test_disordered_pymatgen_dict(tmp_path):
    from pymatgen.core import Lattice, Structure

    good = Structure(Lattice.cubic(4.2), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    bad = Structure(Lattice.cubic(4.2), [{"Cs": 0.5, "Rb": 0.5}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    path = tmp_path / "list.json"
    path.write_text(json.dumps([good.as_dict(), bad.as_dict()]))
    crystals, errors = read([path])
    assert len(crystals) == 1 and len(errors) == 1
    assert errors[0].record == "entry 1" and "partial occupancy" in errors[0].reason


def test_unknown_element_symbol(tmp_path):
    error = _read_one_bad(_csv(tmp_path / "u.csv", [CSCL, _variant("  Cl  Cl1", "  Xx  Xx1")]))
    assert "unknown element symbol" in error.reason


def test_unknown_element_in_jarvis(tmp_path):
    atoms = {"lattice_mat": [[4.2, 0, 0], [0, 4.2, 0], [0, 0, 4.2]], "coords": [[0, 0, 0], [0.5, 0.5, 0.5]], "cartesian": False}
    records = [
        {"jid": "good", "atoms": {**atoms, "elements": ["Cs", "Cl"]}, "gap": 1.0},
        {"jid": "bad", "atoms": {**atoms, "elements": ["Cs", "Qq"]}, "gap": "na"},
    ]
    path = tmp_path / "j.json"
    path.write_text(json.dumps(records))
    crystals, errors = read([path])
    assert [c.id for c in crystals] == ["good"]
    assert errors[0].record == "entry 1 (bad)" and "unknown element symbol 'Qq'" in errors[0].reason


def test_nan_coordinates(tmp_path):
    error = _read_one_bad(_csv(tmp_path / "n.csv", [CSCL, _variant("0.50000000  0.50000000  1", "nan  0.50000000  1")]))
    assert "NaN or infinite" in error.reason


def test_infinite_lattice(tmp_path):
    good = {"jid": "good", "atoms": {"lattice_mat": [[4.2, 0, 0], [0, 4.2, 0], [0, 0, 4.2]], "coords": [[0, 0, 0]], "elements": ["Cs"]}}
    bad = {"jid": "bad", "atoms": {"lattice_mat": [[float("inf"), 0, 0], [0, 4.2, 0], [0, 0, 4.2]], "coords": [[0, 0, 0]], "elements": ["Cs"]}}
    path = tmp_path / "inf.json"
    path.write_text(json.dumps([good, bad]))  # json writes Infinity, as numpy-minded tools do
    crystals, errors = read([path], format="jarvis")
    assert len(crystals) == 1 and "lattice contains NaN or infinite" in errors[0].reason


def test_singular_lattice(tmp_path):
    error = _read_one_bad(_csv(tmp_path / "s.csv", [CSCL, _variant("_cell_angle_gamma   90.00000000", "_cell_angle_gamma   0.0")]))
    assert "singular" in error.reason


def test_singular_lattice_extxyz(tmp_path):
    frame = 'Lattice="{}" Properties=species:S:1:pos:R:3 pbc="T T T"\n'
    path = tmp_path / "s.extxyz"
    path.write_text(
        "1\n" + frame.format("4 0 0 0 4 0 0 0 4") + "Cs 0 0 0\n" + "1\n" + frame.format("4 0 0 8 0 0 0 0 4") + "Cs 0 0 0\n"
    )
    crystals, errors = read([path])
    assert len(crystals) == 1 and errors[0].record == "frame 1" and "singular" in errors[0].reason


def test_atoms_too_close(tmp_path):
    error = _read_one_bad(_csv(tmp_path / "c.csv", [CSCL, _variant("0.50000000  0.50000000  0.50000000", "0.02  0.0  0.0")]))
    assert "closer than the minimum 0.5" in error.reason


def test_cell_over_max_atoms(tmp_path):
    big = CSCL + "".join(f"  Cl  Cl{k}  1  0.5  0.5  {k / 10:.2f}  1\n" for k in range(1, 4))
    big = big.replace("data_CsCl", "data_Big").replace("4.20000000\n_cell_angle_alpha", "42.0\n_cell_angle_alpha")
    path = _csv(tmp_path / "m.csv", [CSCL, big])
    error = _read_one_bad(path, settings=ValidationSettings(max_atoms=4))
    assert "5 atoms per cell exceeds the limit of 4" in error.reason


def test_extxyz_truncated_and_bad_count(tmp_path):
    frame = '1\nLattice="4 0 0 0 4 0 0 0 4" Properties=species:S:1:pos:R:3 id=f{} pbc="T T T"\nCs 0 0 0\n'
    path = tmp_path / "t.extxyz"
    path.write_text(frame.format(0) + "one\nnot a frame\n" + frame.format(2) + "3\nLattice=\"4 0 0 0 4 0 0 0 4\"\nCs 0 0 0\n")
    crystals, errors = read([path])
    assert [c.id for c in crystals] == ["f0", "f2"]
    assert [e.record for e in errors] == ["frame 1", "frame 3"]
    assert "expected the atom count" in errors[0].reason and "truncated frame" in errors[1].reason


def test_label_row_without_file(tmp_path):
    (tmp_path / "a.cif").write_text(CSCL)
    (tmp_path / "id_prop.csv").write_text("a,1.0\nmissing,2.0\n")
    crystals, errors = read([tmp_path])
    assert [c.id for c in crystals] == ["a"]
    assert errors[0].record == "id_prop.csv row 1 (missing)" and "no structure file" in errors[0].reason


def test_folder_file_errors_stay_per_file(tmp_path):
    (tmp_path / "a.cif").write_text(CSCL)
    (tmp_path / "b.cif").write_bytes(b"data_b\n\xff\xfe garbage")
    (tmp_path / "labels.csv").write_text("material_id,gap\na,1\nb,2\n")
    crystals, errors = read([tmp_path])
    assert [c.id for c in crystals] == ["a"] and errors[0].record == "file b.cif" and "UTF-8" in errors[0].reason


# --- whole-source failures: plan() raises RecordError(path, "*", reason) ---------------------------


def _whole_source_error(path, format):
    with pytest.raises(RecordError) as info:
        list(plan(Source(str(path), format)))
    assert info.value.source == str(path) and info.value.record == "*"
    return info.value.reason


def test_empty_file(tmp_path):
    for name, fmt in [("e.cif", "cif"), ("e.csv", "csv"), ("e.extxyz", "extxyz"), ("e.json", "jarvis"), ("POSCAR", "poscar")]:
        path = tmp_path / name
        path.write_text("")
        assert "empty" in _whole_source_error(path, fmt)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "c.csv.gz"
    path.write_bytes(gzip.compress(b"material_id,cif\n" + CSCL.encode() * 20)[:60])
    assert "gzip" in _whole_source_error(path, "csv")


def test_csv_without_cif_column(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("material_id,structure,band_gap\nmp-1,abc,1.0\n")
    assert "expected a column named 'cif'" in _whole_source_error(path, "csv")


def test_undecodable_bytes(tmp_path):
    path = tmp_path / "latin1.cif"
    path.write_bytes(CSCL.replace("# generated", "# g\u00e9n\u00e9r\u00e9").encode("latin-1"))
    reason = _whole_source_error(path, "cif")
    assert "UTF-8" in reason and "0xe9" in reason


def test_json_syntax_error(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"atoms": {"lattice_mat": [[1, 0, 0]')
    assert "syntax error" in _whole_source_error(path, "jarvis")


def test_cif_without_data_block(tmp_path):
    path = tmp_path / "nothing.cif"
    path.write_text("# just a comment\n")
    assert "data_" in _whole_source_error(path, "cif")


def test_whole_source_failure_does_not_stop_other_sources(tmp_path):
    good = tmp_path / "good.cif"
    good.write_text(CSCL)
    empty = tmp_path / "empty.cif"
    empty.write_text("")
    crystals, errors = read([empty, good])
    assert len(crystals) == 1 and errors[0].record == "*"
    with pytest.raises(RecordError, match="empty"):
        read([empty, good], strict=True)


def test_run_task_never_raises_on_garbage():
    items_by_format = {
        "cif": [None, 42, "data_x\n", "\x00\x01"],
        "csv": [("row 0", "0", "data_", {}), ("row 1", "1", 3.5, {})],
        "extxyz": [("frame 0", "0", "2\nLattice=\"1 2\"\nX 0 0 0\n", {})],
        "jarvis": [("entry 0", "0", {"lattice_mat": "bad"}, {}), ("entry 1", "1", None, {})],
        "pymatgen": [("entry 0", "0", {"lattice": {}, "sites": [{}]}, {})],
        "ase": [("row 1", "1", (None, None, None), {})],
        "poscar": [("structure", "x", "1\n2\n", {})],
        "folder": [("file x", "x", "/nonexistent/x.cif", {})],
    }
    from crysdiff.io.payload import Item

    for fmt, raw in items_by_format.items():
        items = [Item(*r) if isinstance(r, tuple) else Item("block x", "x", r, {}) for r in raw]
        results = run_task(Task("<test>", fmt, items), ValidationSettings())
        assert len(results) == len(items)
        assert all(isinstance(r, RecordError) and r.reason for r in results), (fmt, results)
