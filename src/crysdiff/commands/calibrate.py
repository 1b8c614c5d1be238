"""Refit a fine-tuned model's 95% interval on labelled crystals it has not seen.

Fine-tuning calibrates the interval on its own validation crystals. On another domain (another
functional, another family of compounds, measured values) the model can be over- or
under-confident; a few dozen to a few hundred labelled crystals from that domain refit the factor
crysdiff predict applies to the chain's spread (split-conformal, docs/method.md "Calibrated
intervals"). The weights and the mean predictions are unchanged. --data takes anything crysdiff
reads, with the property as a label (--target names the label column when it is not the model's
target name). Writes a calibrated copy of the model to --out (never over the model itself) and
prints the 95% coverage on these crystals: raw, with the model's stored scale, with the new one
(in-sample), and cross-fitted (each half calibrated on the other: what new crystals will see).

Example:
  crysdiff calibrate --model formation_energy_per_atom --data my_labelled.csv --out fe_mine.ckpt
  crysdiff predict --model fe_mine.ckpt my_cifs/ --out preds.csv
"""

from __future__ import annotations

import json
from pathlib import Path

from crysdiff.commands._common import check_device, fail, run_guarded


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="fine-tuned checkpoint path or bundled model name")
    parser.add_argument("--data", required=True, nargs="+", help="labelled structures the model has not seen")
    parser.add_argument("--target", help="label column holding the model's property (default: the model's target name)")
    parser.add_argument("--out", type=Path, required=True, help="the calibrated copy of the model (.ckpt)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists (never the model itself)")
    parser.add_argument("--samples", type=int, default=100,
                        help="samples per crystal, as crysdiff predict will draw them (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--report", type=Path, help="also write the calibration report as JSON")


def run(args) -> int:
    import sys

    from crysdiff.calibrate import calibrate

    def go():
        check_device(args.device)
        if args.out.exists() and not args.force and not args.out.is_dir():
            # fail before the sampling, not after it
            return fail(f"{args.out}: exists; choose another --out or pass --force to replace it")
        result = calibrate(args.model, args.data, target=args.target, samples=args.samples, seed=args.seed,
                           batch_size=args.batch_size, device=args.device, progress=True)
        r = result.report
        for entry in r["skipped_records"]:
            print(f"skipped {entry['source']} [{entry['record']}]: {entry['reason']}", file=sys.stderr)
        if r["skipped"] > len(r["skipped_records"]):
            print(f"... {r['skipped'] - len(r['skipped_records'])} more records skipped", file=sys.stderr)
        written = result.write(args.out, overwrite=args.force)
        if args.report:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(json.dumps({**r, "out": str(written)}, indent=1))
        folds = ", ".join(f"{k:.3g}" for k in r["crossfit_fold_scales"])
        print(f"{r['target']} on {r['count']} crystals ({r['label_column']}), {r['samples']} samples each: "
              f"MAE {r['mae']:.4g} {r['unit']}\n"
              f"95% interval coverage: raw {r['coverage95_raw']:.3f}; stored scale {r['previous_scale']:.3f}: "
              f"{r['coverage95_before']:.3f}; new scale {r['scale']:.3f}: {r['coverage95_after']:.3f} in-sample, "
              f"{r['coverage95_crossfit']:.3f} cross-fitted (halves' scales {folds})\n"
              f"calibrated model written to {written}")
        return 0

    return run_guarded(go)
