#!/usr/bin/env bash
# The GPU check: crysdiff's CUDA tests and its throughput on one NVIDIA GPU, in one command.
#
#   bash scripts/device_check.sh --prepare   # here (network, ../shared/data): fill .devcheck/ with the wheels the
#                                            # GPU machine lacks (cp312, manylinux x86_64) and the data excerpt
#   bash scripts/device_check.sh             # on the GPU machine (no network): install .devcheck/whl, run the
#                                            # tests marked cuda, time throughput, write JSON to $OUT
#   bash scripts/device_check.sh --cpu       # anywhere: the same checks on the CPU with small budgets
#   ... -k EXPR                              # only the checks whose names match EXPR (pytest -k)
#
# Writes $OUT/device_check.json (each step's exit code; default OUT: runs/device_check), the throughput
# JSON ($OUT/device_throughput.json) and each step's log ($OUT/STEP.log). Exits 1 if any step fails, 2 on
# a bad option. docs/training.md ("GPU check") gives the exact call.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
SELECT=()
while [ $# -gt 0 ]; do
    case "$1" in
        --prepare) MODE=prepare ;;
        --cpu) MODE=cpu ;;
        -k) [ $# -ge 2 ] || { echo "device_check.sh: -k needs an expression" >&2; exit 2; }; SELECT=(-k "$2"); shift ;;
        *) echo "device_check.sh: unknown option $1 (use --prepare, --cpu, -k EXPR)" >&2; exit 2 ;;
    esac
    shift
done
CHECK=.devcheck
# the test files that hold tests marked cuda (named, not collected from tests/: a module that cannot be
# imported on the GPU machine must not cost the one GPU run)
CUDA_TESTS=(tests/test_device_check.py)
PYTHON="${PYTHON:-python3}"
# The packages crysdiff needs that the GPU machine's image lacks (its python3 has torch, lightning,
# torch-geometric, numpy 2.5, scipy, pandas, matplotlib, networkx, sympy, lxml, requests, ...). Versions
# built for numpy 2 and Python 3.12. bibtexparser 1.x is published as source only: built into a wheel here.
# plotly is left out (pymatgen imports it only for plots; 9.7 MB of the 64 MiB that travel).
WHEELS="pymatgen==2026.10.24 pymatgen-core==2026.10.16 spglib==2.8.0 ase==3.29.0 monty==2026.10.21 ruamel.yaml==0.19.1
        orjson==3.13.0 palettable==3.3.3 uncertainties==3.2.3"
SOURCE_ONLY="bibtexparser==1.4.4"

if [ "$MODE" = prepare ]; then
    set -e
    DATA="${CRYSDIFF_SHARED_DATA:-../shared/data}"
    rm -rf "$CHECK" && mkdir -p "$CHECK/whl" "$CHECK/data/mp2018" "$CHECK/data/perov_5"
    platforms=""
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
        platforms="$platforms --platform $p"
    done
    # shellcheck disable=SC2086
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
        -d "$CHECK/whl" $WHEELS
    # shellcheck disable=SC2086
    "$PYTHON" -m pip wheel -q --no-deps -w "$CHECK/whl" $SOURCE_ONLY
    # the data the checks read (tests/conftest.py reads $CRYSDIFF_TEST_DATA): mp2018/val whole (2,615 cells,
    # the cells of the CPU throughput figures) and the first 100 rows of perov_5/val
    cp "$DATA/mp2018/val.csv.gz" "$CHECK/data/mp2018/val.csv.gz"
    "$PYTHON" - "$DATA/perov_5/val.csv.gz" "$CHECK/data/perov_5/val.csv.gz" <<'EOF'
import gzip, itertools, sys
with gzip.open(sys.argv[1], "rt", newline="") as src, gzip.open(sys.argv[2], "wt", newline="") as dst:
    import csv
    writer = csv.writer(dst, lineterminator="\n")
    writer.writerows(itertools.islice(csv.reader(src), 101))
EOF
    ls -l "$CHECK/whl"
    tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
    carried=$(du -sb "$CHECK" | cut -f1)
    echo "tracked files $((tracked / 1048576)) MiB + $CHECK $((carried / 1048576)) MiB (the limit of what travels: 64 MiB)"
    [ $((tracked + carried)) -lt $((60 * 1048576)) ] || { echo "device_check.sh: over 60 MiB, too close to the limit" >&2; exit 1; }
    exit 0
fi

OUT="${OUT:-runs/device_check}"
mkdir -p "$OUT"
started=$(date +%s)
if [ "$MODE" = gpu ]; then
    [ -d "$CHECK/whl" ] || { echo "device_check.sh: $CHECK/whl is missing: run --prepare first and carry $CHECK" >&2; exit 1; }
    SITE=/tmp/crysdiff-site
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$CHECK"/whl/*.whl \
        || { echo "device_check.sh: installing the carried wheels failed" >&2; exit 1; }
    rm -rf "$SITE/build" "$SITE/docs" "$SITE/scripts" "$SITE/test"  # stray top-level folders of palettable's wheel
    export PYTHONPATH="$PWD/src:$SITE:$PWD" CRYSDIFF_TEST_DATA="$PWD/$CHECK/data" CRYSDIFF_CACHE=/tmp/crysdiff-cache
    DEVICE=cuda
    TESTS=(-m cuda "${CUDA_TESTS[@]}")
    TIMING=(--device cuda --data "$CHECK/data/mp2018/val.csv.gz" --seconds 2)
    T_ENV=60 T_TESTS=240 T_TIMING=150  # 7.5 minutes at most, with the install: the 8 the check may take
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
    export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    DEVICE=cpu
    T_ENV=300 T_TESTS=900 T_TIMING=300  # a shared CPU may be slow; CI's clock is the suite's
    # toy sizes run fastest on one thread, and on a loaded machine two spinning threads per process can
    # make a step 80 times slower
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    TESTS=(-m "not cuda" "${CUDA_TESTS[@]}")
    DATA="${CRYSDIFF_TEST_DATA:-../shared/data}"
    TIMING=(--device cpu --data "$DATA/mp2018/val.csv.gz" --small-model --seconds 0 --cells 16 --max-batch 8 --predict-crystals 16
            --predict-batch 64)
fi
export PYTHONUNBUFFERED=1

status=0
step() {  # step NAME SECONDS COMMAND...: one check under a time limit, logged to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    [ $rc -eq 0 ] || { echo "device_check.sh: $name FAILED (exit $rc)" >&2; status=1; }
    results="$results\"$name\": $rc, "
}
results=""
step environment "$T_ENV" "$PYTHON" -c "
import sys, torch, numpy, lightning, torch_geometric, pymatgen.core, ase, spglib, crysdiff
print('python', sys.version.split()[0], 'torch', torch.__version__, 'numpy', numpy.__version__, 'lightning', lightning.__version__,
      'torch_geometric', torch_geometric.__version__, 'ase', ase.__version__, 'spglib', spglib.__version__, 'crysdiff', crysdiff.__version__)
if '$DEVICE' == 'cuda':
    assert torch.cuda.is_available(), 'torch sees no CUDA device'
    print('device', torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"
step tests "$T_TESTS" "$PYTHON" -m pytest "${TESTS[@]}" "${SELECT[@]}" -rfEs -p no:cacheprovider
step throughput "$T_TIMING" "$PYTHON" benchmarks/device_throughput.py "${TIMING[@]}" --out "$OUT/device_throughput.json"
elapsed=$(( $(date +%s) - started ))
printf '{"mode": "%s", %s"seconds": %d, "passed": %s}\n' "$MODE" "$results" "$elapsed" \
    "$([ $status -eq 0 ] && echo true || echo false)" > "$OUT/device_check.json"
cat "$OUT/device_check.json"
[ $status -eq 0 ] && echo "device_check.sh: all checks passed in ${elapsed}s" || echo "device_check.sh: FAILED" >&2
exit $status
