#!/usr/bin/env bash
# Set everything up in ./.venv and run crysdiff's main job on the bundled example structures.
# torch is installed first and pinned: on a CPU-only machine torch==2.13.0 is the CPU wheel; installing
# lightning into an environment without torch would otherwise pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -d .venv ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==${CRYSDIFF_TORCH_VERSION:-2.13.0}"
python -m pip install --quiet -e ".[test]"
crysdiff data inspect examples/structures
crysdiff predict --model formation_energy_per_atom examples/structures --samples 100 --out runs/examples/formation_energy_per_atom.csv
crysdiff predict --model band_gap examples/structures --samples 100 --out runs/examples/band_gap.csv
