#!/usr/bin/env bash
# Create benchmarks/peers/.venv-matminer/ for the random-forest column of benchmarks/smalldata.py:
# matminer (Magpie ElementProperty, DensityFeatures, GlobalSymmetryFeatures) and scikit-learn.
#
# Its own environment, so matminer's pins (pymatgen, pandas, scikit-learn, ...) never touch
# crysdiff's .venv. No torch is needed here. The runner (benchmarks/peers/rf_runner.py) reads only
# the plain extxyz task files that benchmarks/smalldata.py writes; it never imports crysdiff.
#
# Usage: bash benchmarks/peers/matminer_setup.sh            (from anywhere)
#        MATMINER_VERSION=0.10.1 bash benchmarks/peers/matminer_setup.sh
set -euo pipefail
cd "$(dirname "$0")"
VENV=${MATMINER_VENV:-.venv-matminer}
MATMINER_VERSION=${MATMINER_VERSION:-0.10.1}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install "matminer==$MATMINER_VERSION" scikit-learn ase
"$VENV/bin/python" - <<'PY'
from matminer.featurizers.composition import ElementProperty
from matminer.featurizers.structure import DensityFeatures, GlobalSymmetryFeatures  # noqa: F401
from sklearn.ensemble import RandomForestRegressor  # noqa: F401
import matminer, sklearn
ElementProperty.from_preset("magpie")  # the preset's tables ship inside the wheel
print("matminer", matminer.__version__ if hasattr(matminer, "__version__") else "?", "scikit-learn", sklearn.__version__, "ready")
PY
