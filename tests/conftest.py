"""Shared test fixtures. Tests read the real data in ``../shared/data`` in place (never copied), or
in ``$CRYSDIFF_TEST_DATA`` where that is set (a machine without ``../shared``: the GPU check's
carried excerpt, see ``scripts/device_check.sh``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from crysdiff.heads import NoiseHead

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CRYSDIFF_TEST_DATA") or REPO.parent / "shared" / "data").resolve()
EXAMPLES = REPO / "examples" / "structures"
# marks of a test (or parameter) that needs a CUDA GPU: selected by ``-m cuda``, skipped without one
CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the test data folder {SHARED_DATA} is missing: clone crysdiff beside ../shared")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own crysdiff cache directory, so tests never touch ~/.cache."""
    monkeypatch.setenv("CRYSDIFF_CACHE", str(tmp_path_factory.mktemp("crysdiff-cache")))


def read_csv_crystals(path, rows: int, max_atoms: int = 24):
    """The first ``rows`` crystals of a CDVAE-style CSV read through pymatgen (the independent path),
    keeping those with at most ``max_atoms`` atoms."""
    import warnings

    import pandas as pd
    from pymatgen.core import Structure

    from crysdiff.crystal import from_pymatgen, validate

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _, row in pd.read_csv(path, nrows=rows).iterrows():
            crystal = validate(from_pymatgen(Structure.from_str(row["cif"], fmt="cif"), id=str(row["material_id"])))
            if crystal.num_atoms <= max_atoms:
                out.append(crystal)
    return out


@pytest.fixture(scope="module")
def perov_16_6(shared_data, tmp_path_factory):
    """The first 16 labelled Perov-5 crystals (val split) as ``train.csv`` and the next 6 as ``val.csv``:
    4 batches of 4 an epoch, for the tiny training runs of the tests."""
    import pandas as pd

    table = pd.read_csv(shared_data / "perov_5" / "val.csv.gz", index_col=0)
    root = tmp_path_factory.mktemp("perov16")
    table.iloc[:16].to_csv(root / "train.csv")
    table.iloc[16:22].to_csv(root / "val.csv")
    return root


@pytest.fixture(scope="module")
def crystals(shared_data):
    """Four small mp2018 crystals and one Perov-5 crystal: a real, mixed batch for symmetry tests."""
    mp = read_csv_crystals(shared_data / "mp2018" / "val.csv.gz", rows=8)[:4]
    perov = read_csv_crystals(shared_data / "perov_5" / "val.csv.gz", rows=1)
    assert len(mp) == 4 and len(perov) == 1
    return mp + perov


def pytest_configure(config):
    # The test models are tiny: one thread is faster for them than torch's default, and it keeps the
    # suite fast when another process (a training run, a second test job) shares the cores.
    import torch

    torch.set_num_threads(1)


class HeadWithoutCoefficients(NoiseHead):
    """The same head, declared a general noise head (forces the generic per-sample chain)."""

    def __init__(self, head):
        super().__init__()
        self.inner = head

    def forward(self, features, y_t, mu, t, alpha_bar):
        return self.inner(features, y_t, mu, t, alpha_bar)


def write_perov_rows(shared_data, folder, **splits) -> None:
    """CDVAE-style CSVs of Perov-5 validation rows: ``write_perov_rows(data, root, train=(0, 16))``
    writes rows 0-15 to ``root/train.csv``."""
    import pandas as pd

    table = pd.read_csv(shared_data / "perov_5" / "val.csv.gz", index_col=0)
    for name, (start, stop) in splits.items():
        table.iloc[start:stop].to_csv(Path(folder) / f"{name}.csv")
