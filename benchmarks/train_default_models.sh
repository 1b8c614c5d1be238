#!/usr/bin/env bash
# Train the default models shipped with crysdiff, on this 2-core CPU (no GPU), from the shared data:
#   1. pre-train the denoiser on every structure under ../shared/data (labels ignored),
#   2. fine-tune it on mp2018/train for formation energy per atom and for band gap (validated on mp2018/val).
# Budgets are wall-clock caps (train.max_time_minutes) so the script finishes in about 75 minutes.
# Outputs go to runs/default/ (not committed); the exported model.ckpt files are then copied to
# models/ and src/crysdiff/models/ with their model cards.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
DATA=../shared/data
OUT=${OUT:-runs/default}
PRE_MINUTES=${PRE_MINUTES:-32}
FT_MINUTES=${FT_MINUTES:-20}

crysdiff pretrain --data "$DATA" --out "$OUT/pretrain" --no-progress \
    train.max_epochs=6 train.max_time_minutes=$PRE_MINUTES train.batch_size=64 train.lr=1e-3 train.log_every_steps=20

for target in formation_energy_per_atom band_gap; do
  crysdiff finetune --init "$OUT/pretrain/model.ckpt" --data "$DATA/mp2018/train.csv.gz" --val "$DATA/mp2018/val.csv.gz" \
      --target "$target" --out "$OUT/$target" --no-progress \
      train.max_epochs=8 train.max_time_minutes=$FT_MINUTES train.batch_size=64 train.lr=5e-4 train.log_every_steps=20
done
