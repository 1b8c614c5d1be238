"""A damaged cache part is found (sizes and checksums in meta.json), reported in one line, rebuilt
from its sources, and the command succeeds; two processes healing the same part end with one good
part; ``crysdiff data cache --verify`` re-hashes sources edited in place with size and mtime kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import write_perov_rows

from crysdiff.cache import part as part_module
from crysdiff.cache import load_dataset, part_problem
from crysdiff.cli import main

FILES = ["frac_coords.npy", "lattices.npy", "atomic_numbers.npy", "labels.npy", "meta.json"]


@pytest.fixture
def table(shared_data, tmp_path):
    write_perov_rows(shared_data, tmp_path, perov=(0, 10))
    return tmp_path / "perov.csv"


def _part(cache_dir):
    parts = [p for p in cache_dir.iterdir() if p.is_dir()]
    assert len(parts) == 1
    return parts[0]


def _damage_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "is damaged" in line]


@pytest.mark.parametrize("name", FILES)
def test_a_truncated_file_is_reported_and_rebuilt(name, table, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    assert main(["data", "inspect", str(table), "--cache-dir", str(cache_dir), "--workers", "1", "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    part = _part(cache_dir)
    damaged = part / name
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    assert main(["data", "inspect", str(table), "--cache-dir", str(cache_dir), "--workers", "1", "--json"]) == 0
    captured = capsys.readouterr()
    lines = _damage_lines(captured.err)
    assert len(lines) == 1 and str(part) in lines[0] and "rebuilding" in lines[0] and "Traceback" not in captured.err
    assert (name in lines[0]) or name == "meta.json"
    assert json.loads(captured.out) == before
    assert part_problem(_part(cache_dir), checksums=True) is None
    # healed: the next open is quiet
    assert main(["data", "inspect", str(table), "--cache-dir", str(cache_dir), "--workers", "1", "--json"]) == 0
    assert not _damage_lines(capsys.readouterr().err)


def test_predict_heals_a_damaged_part(tmp_path, capsys, monkeypatch):
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("CRYSDIFF_CACHE", str(cache_dir))
    args = ["predict", "--model", "formation_energy_per_atom", "examples/structures", "--samples", "2", "--device", "cpu"]
    assert main(args) == 0
    first = capsys.readouterr().out
    part = _part(cache_dir)
    (part / "lattices.npy").write_bytes(b"")
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out == first and len(_damage_lines(captured.err)) == 1


def test_same_size_damage_is_found_by_the_checksum(table, tmp_path, capsys, monkeypatch):
    cache_dir = tmp_path / "cache"
    load_dataset([table], cache_dir=cache_dir, workers=1, progress=False)
    coords = _part(cache_dir) / "frac_coords.npy"
    data = bytearray(coords.read_bytes())
    data[-8:] = np.float64(0.123456).tobytes()  # same size, another number
    coords.write_bytes(bytes(data))
    # a part too big to checksum at every open is only checked by --verify
    monkeypatch.setattr(part_module, "_CHECKSUM_ON_OPEN_BYTES", 0)
    load_dataset([table], cache_dir=cache_dir, workers=1, progress=False)
    assert not _damage_lines(capsys.readouterr().err)
    assert main(["data", "cache", str(table), "--cache-dir", str(cache_dir), "--workers", "1", "--verify",
                 "--cell", "given"]) == 0  # the cells load_dataset built above
    captured = capsys.readouterr()
    assert "does not match its checksum" in captured.err and "every checksum verified" in captured.out
    assert part_problem(_part(cache_dir), checksums=True) is None
    # a small part is checksummed at every open
    monkeypatch.setattr(part_module, "_CHECKSUM_ON_OPEN_BYTES", 4 << 20)
    coords = _part(cache_dir) / "frac_coords.npy"
    data = bytearray(coords.read_bytes())
    data[-1] ^= 0xFF
    coords.write_bytes(bytes(data))
    load_dataset([table], cache_dir=cache_dir, workers=1, progress=False)
    assert len(_damage_lines(capsys.readouterr().err)) == 1


def test_verify_rehashes_sources_edited_with_size_and_mtime_kept(shared_data, tmp_path, capsys):
    table = tmp_path / "edited.csv"
    frame = pd.read_csv(shared_data / "perov_5" / "val.csv.gz", index_col=0).iloc[:5]
    frame = frame[["material_id", "cif"]].assign(value=[1.5, 2.5, 3.5, 4.5, 5.5])
    frame.to_csv(table, index=False)
    cache_dir = tmp_path / "cache"
    assert load_dataset([table], cache_dir=cache_dir, workers=1, progress=False).labels[:, 0].tolist()[-1] == 5.5
    text = table.read_text()
    assert text.rstrip().endswith(",5.5")
    stat = table.stat()
    table.write_text(text.rstrip()[:-3] + "7.5\n")  # same size
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime
    assert table.stat().st_size == stat.st_size
    stale = load_dataset([table], cache_dir=cache_dir, workers=1, progress=False)
    assert stale.labels[-1, 0] == 5.5  # documented in docs/data.md: an edit keeping size and mtime is not seen
    assert main(["data", "cache", str(table), "--cache-dir", str(cache_dir), "--workers", "1", "--verify",
                 "--cell", "given"]) == 0  # the cells load_dataset built above
    assert load_dataset([table], cache_dir=cache_dir, workers=1, progress=False).labels[-1, 0] == 7.5


def test_two_processes_healing_one_part_end_with_one_good_part(table, tmp_path):
    cache_dir = tmp_path / "cache"
    load_dataset([table], cache_dir=cache_dir, workers=1, progress=False)
    part = _part(cache_dir)
    (part / "atomic_numbers.npy").write_bytes(b"\x93NUMPY")
    code = ("import sys; from crysdiff.cache import load_dataset; "
            f"c = load_dataset([{str(table)!r}], cache_dir={str(cache_dir)!r}, workers=1, progress=False); "
            "print(len(c), int(c.num_atoms.sum()))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    runs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)]
    results = [run.communicate(timeout=120) for run in runs]
    assert all(run.returncode == 0 for run in runs), results
    assert results[0][0] == results[1][0] and results[0][0].split()[0] == "10"
    assert [p.name for p in cache_dir.iterdir() if p.is_dir() or p.name.startswith(".tmp")] == [part.name]
    assert part_problem(part, checksums=True) is None
