"""Fine-tune a pre-trained model on one property with CARD-style diffusion (paper Alg. 2).

--init takes a pre-training checkpoint (its encoder is kept), a fine-tuned checkpoint (refined on
new data, e.g. a few experimental values) or nothing (training from scratch, the baseline).
Writes OUT/model.ckpt (best by validation MAE), OUT/val_metrics.json (MAE, RMSE, R², 95% interval
coverage), OUT/val_predictions.csv, OUT/parity.png, OUT/loss_curve.png and OUT/config.yaml.

The default head is a Gaussian head around CARD's learned prior f(x) (head.kind=gaussian
head.prior=learned); the paper's setting is head.kind=card head.prior=mean (docs/method.md says why
and what each measured). After training, the 95% interval is calibrated on the validation crystals
(calibrate=true: one split-conformal scale for the spread, stored in model.ckpt and applied by
crysdiff predict; val_metrics.json reports the coverage before and the scale).

Ablations (paper Fig. 5) are config overrides: freeze_encoder=true (without updating the encoder);
extra_init=B.ckpt (without joint diffusion: --init and B pre-trained with diffusion.mode=lattice and
diffusion.mode=coords, their encoders averaged); fix_structure=false head.prior=mean (without fixing
structures: the structure is diffused with the property; prediction encodes each crystal
structure_encodings times).

Example:
  crysdiff finetune --init runs/pre/model.ckpt --data ../shared/data/mp2018/train.csv.gz \
      --val ../shared/data/mp2018/val.csv.gz --target band_gap --label-fraction 0.1 --out runs/gap
  crysdiff finetune --init runs/pre_lattice/model.ckpt extra_init=runs/pre_coords/model.ckpt \
      --data ../shared/data/mp2018/train.csv.gz --target band_gap --out runs/gap_no_jd
"""

from __future__ import annotations

from crysdiff.commands._common import add_run_arguments, resolve_config, run_guarded


def add_arguments(parser) -> None:
    parser.add_argument("--init", help="pre-trained or fine-tuned checkpoint (omit to train from scratch)")
    parser.add_argument("--data", nargs="+", required=True, help="labelled training structures")
    parser.add_argument("--target", required=True, help="label column to learn, e.g. formation_energy_per_atom")
    parser.add_argument("--val", nargs="*", help="validation structures (default: a seeded data.val_fraction of --data)")
    parser.add_argument("--label-fraction", type=float, default=1.0, help="use this seeded fraction of the training labels")
    parser.add_argument("--seed", type=int, help="seed (sets train.seed)")
    add_run_arguments(parser)


def run(args) -> int:
    from crysdiff.finetune import FinetuneConfig, run_finetune

    def go():
        if not 0 < args.label_fraction <= 1:
            raise ValueError(f"--label-fraction must be in (0, 1], got {args.label_fraction}")
        defaults = {"target": args.target}
        if args.seed is not None:
            defaults["train.seed"] = args.seed
        config = resolve_config(FinetuneConfig, args, **defaults)
        metrics = run_finetune(config, args.init, args.data, args.out, val_sources=args.val,
                               label_fraction=args.label_fraction, resume=args.resume,
                               progress=not args.no_progress, workers=args.workers)
        val = metrics.get("val")
        if val:
            unit = metrics.get("unit", "")
            print(f"validation MAE {val['mae']:.4g} {unit}, RMSE {val['rmse']:.4g}, R² {val['r2']:.3f}, "
                  f"95% coverage {val.get('coverage95', float('nan')):.3f} ({val['count']} crystals)")
        print(f"fine-tuned model written to {args.out / 'model.ckpt'}")

    return run_guarded(go)
