"""``scripts/device_check.sh`` itself, run on the CPU (its checks are ``tests/test_device_check.py``)."""

from __future__ import annotations

import json
import os
import subprocess

from conftest import REPO


def test_the_script_runs_its_checks_on_the_cpu_and_fails_loudly(shared_data, tmp_path):
    """``scripts/device_check.sh --cpu`` (here one check and the timing at toy sizes) exits 0 and writes
    its JSON; a check that fails (its data missing) makes it exit 1 and say so; a bad option exits 2."""

    def run(out, *args, **env):
        done = subprocess.run(["bash", str(REPO / "scripts" / "device_check.sh"), *args], capture_output=True, text=True,
                              env={**os.environ, "OUT": str(out), "CRYSDIFF_TEST_DATA": str(shared_data), **env}, timeout=300)
        return done.returncode, done.stdout + done.stderr

    code, log = run(tmp_path / "ok", "--cpu", "-k", "denoiser_symmetries")
    assert code == 0, log[-3000:]
    assert json.loads((tmp_path / "ok" / "device_check.json").read_text())["passed"] is True
    timing = json.loads((tmp_path / "ok" / "device_throughput.json").read_text())
    assert timing["pretrain"]["bf16-mixed"]["batch64"]["crystals_per_s"] > 0 and timing["predict"]["batch64"]["samples"] == 100
    assert "2 passed" in (tmp_path / "ok" / "tests.log").read_text()
    code, log = run(tmp_path / "bad", "--cpu", "-k", "denoiser_symmetries", CRYSDIFF_TEST_DATA=str(tmp_path / "nothing"))
    summary = json.loads((tmp_path / "bad" / "device_check.json").read_text())
    assert code == 1 and summary["passed"] is False and summary["tests"] != 0 and "tests FAILED" in log, log[-3000:]
    assert run(tmp_path / "option", "--gpu")[0] == 2
