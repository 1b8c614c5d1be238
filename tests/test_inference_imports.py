"""Inference does not depend on training: the prediction path imports neither Lightning nor crysdiff.finetune."""

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_prediction_and_calibration_import_no_training_code():
    done = _run("import crysdiff.predict, crysdiff.calibrate, crysdiff.restore, sys\n"
                "print(sorted(m for m in ('lightning', 'crysdiff.finetune', 'crysdiff.engine') if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_list_models_imports_neither_torch_nor_lightning():
    done = _run("import sys\nfrom crysdiff.cli import main\ncode = main(['predict', '--list-models'])\n"
                "print(sorted(m for m in ('torch', 'lightning', 'crysdiff.finetune') if m in sys.modules), code)")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert any(line.startswith("formation_energy_per_atom\t") for line in lines)
    assert lines[-1] == "[] 0"
