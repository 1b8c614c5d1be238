#!/usr/bin/env bash
# Run the test suite (a few minutes on 2 CPU cores). Needs ../shared/data beside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
python -m pytest "$@"
