#!/usr/bin/env bash
# Create benchmarks/peers/.venv-chgnet/ for the CHGNet columns of benchmarks/smalldata.py
# (CHGNet 0.4.2 pre-trained crystal features + ridge / + a small MLP; scikit-learn heads).
#
# CHGNet asks for torch without an upper bound, so torch==2.13.0 (the CPU wheel on this
# machine's disk) goes in FIRST and stays held by a constraint while chgnet resolves;
# otherwise pip could pull a multi-GB CUDA build. CHGNet's weights ship inside its wheel,
# so the runner works offline. The runner (benchmarks/peers/chgnet_runner.py) never imports crysdiff.
#
# Usage: bash benchmarks/peers/chgnet_setup.sh
#        CHGNET_VERSION=0.4.2 TORCH_SPEC=torch==2.13.0 bash benchmarks/peers/chgnet_setup.sh
set -euo pipefail
cd "$(dirname "$0")"
VENV=${CHGNET_VENV:-.venv-chgnet}
CHGNET_VERSION=${CHGNET_VERSION:-0.4.2}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PYTHON=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install "$TORCH_SPEC"
HELD=$(mktemp)
"$VENV/bin/python" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" >"$HELD"
"$VENV/bin/python" -m pip install -c "$HELD" "chgnet==$CHGNET_VERSION" scikit-learn ase
rm -f "$HELD"
"$VENV/bin/python" - <<'PY'
import torch
from chgnet.model import CHGNet
import sklearn
assert torch.version.cuda is None, f"a CUDA torch build got installed ({torch.version.cuda})"
model = CHGNet.load(verbose=False)  # the bundled weights: fails here if they are not in the wheel
print("chgnet", model.version, "parameters", sum(p.numel() for p in model.parameters()),
      "torch", torch.__version__, "scikit-learn", sklearn.__version__, "(CPU) ready")
PY
