"""Shared test fixtures. Tests read the real data in ``../shared/data`` in place (never copied)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
EXAMPLES = REPO / "examples" / "structures"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"the test data folder {SHARED_DATA} is missing: clone crysdiff beside ../shared")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own crysdiff cache directory, so tests never touch ~/.cache."""
    monkeypatch.setenv("CRYSDIFF_CACHE", str(tmp_path_factory.mktemp("crysdiff-cache")))
