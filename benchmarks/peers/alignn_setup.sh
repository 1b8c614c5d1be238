#!/usr/bin/env bash
# Create .venv-alignn/ beside crysdiff's .venv and install ALIGNN from PyPI into it.
#
# ALIGNN gets its own environment so that its pins (jarvis-tools, pydantic, lmdb, ...)
# never touch crysdiff's. torch is installed FIRST and pinned to the CPU wheel
# (torch==2.13.0 lies on this machine's disk; alignn asks only torch>=2.2.1), so
# resolving alignn's dependencies never pulls a multi-GB CUDA build. alignn
# 2026.8.11 does not depend on DGL; the runner uses its pure-PyTorch model
# (alignn.models.alignn_atomwise_pure).
#
# Usage: bash benchmarks/peers/alignn_setup.sh            (from the repository root)
#        ALIGNN_VERSION=2026.8.11 TORCH_SPEC=torch==2.13.0 bash benchmarks/peers/alignn_setup.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${ALIGNN_VENV:-.venv-alignn}
ALIGNN_VERSION=${ALIGNN_VERSION:-2026.8.11}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
# 1. the CPU torch first; a later "torch>=2.2.1" is then already satisfied.
"$VENV/bin/python" -m pip install "$TORCH_SPEC"
# 2. alignn with torch held at the installed version (a constraint, so nothing can upgrade it).
CONSTRAINTS=$(mktemp)
"$VENV/bin/python" - >"$CONSTRAINTS" <<'PY'
import torch
print(f"torch=={torch.__version__.split('+')[0]}")
PY
"$VENV/bin/python" -m pip install -c "$CONSTRAINTS" "alignn==$ALIGNN_VERSION"
rm -f "$CONSTRAINTS"
# 3. refuse to finish with DGL or a CUDA torch in the environment.
"$VENV/bin/python" - <<'PY'
import importlib.util, torch
assert importlib.util.find_spec("dgl") is None, "dgl got installed; the runner expects pure-PyTorch ALIGNN"
assert torch.version.cuda is None, f"a CUDA torch build got installed ({torch.version.cuda})"
from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure  # noqa: F401
import alignn
print("alignn", getattr(alignn, "__version__", "?"), "torch", torch.__version__, "(CPU) ready")
PY
