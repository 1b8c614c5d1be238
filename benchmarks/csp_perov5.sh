#!/usr/bin/env bash
# Crystal structure prediction on Perov-5 (issue 3), on this 2-core CPU (no GPU):
#   1. train the denoiser on perov_5/train (validated on perov_5/val) within MINUTES of wall clock;
#   2. evaluate-csp on a seeded subset of LIMIT perov_5/test crystals with K=20 samples each
#      (StructureMatcher stol=0.5, angle_tol=10, ltol=0.3), one-shot and best-of-20;
#   3. copy the summary to benchmarks/results/csp_perov5.json.
# Outputs go to runs/perov5/ (not committed); export_models.py copies the model to models/perov5_csp.ckpt.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
DATA=../shared/data
OUT=${OUT:-runs/perov5}
MINUTES=${MINUTES:-35}
EPOCHS=${EPOCHS:-250}
LIMIT=${LIMIT:-500}
STEPS=${STEPS:-"train evaluate"}

if [[ " $STEPS " == *" train "* ]]; then
  crysdiff pretrain --data "$DATA/perov_5/train.csv.gz" --val "$DATA/perov_5/val.csv.gz" --out "$OUT" --no-progress \
      train.max_epochs=$EPOCHS train.max_time_minutes=$MINUTES train.batch_size=256 train.lr=1e-3 train.log_every_steps=20
fi
if [[ " $STEPS " == *" evaluate "* ]]; then
  crysdiff evaluate-csp --model "$OUT/model.ckpt" --data "$DATA/perov_5/test.csv.gz" --samples 20 --limit "$LIMIT" \
      --batch-size 2000 --out "$OUT/csp"
  python - "$OUT" "$MINUTES" "$LIMIT" <<'PY'
import json, sys, torch
out, minutes, limit = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
summary = json.load(open(f"{out}/csp/summary.json"))
payload = torch.load(f"{out}/model.ckpt", weights_only=True)
summary.update(training=payload.get("training"), train_cap_minutes=minutes, val_metrics=payload.get("metrics"),
               machine="2-core CPU development machine, no GPU",
               command=f"MINUTES={minutes:g} LIMIT={limit} bash benchmarks/csp_perov5.sh")
json.dump(summary, open("benchmarks/results/csp_perov5.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
PY
fi
