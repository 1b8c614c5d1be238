"""Pre-train the CrysDiff denoiser on structures (labels ignored), paper Alg. 1.

Joint diffusion on the lattice (DDPM) and the fractional coordinates (wrapped-normal score
matching). Writes OUT/model.ckpt (self-describing: config, weights, diffusion constants, data
summary), OUT/config.yaml, OUT/logs/metrics.csv, OUT/loss_curve.png and resumable Lightning
checkpoints in OUT/checkpoints/.

Ablations (paper Fig. 5): model.kind=cartesian pre-trains the non-equivariant encoder;
diffusion.mode=lattice or diffusion.mode=coords diffuses one field only (combine two such models
with `crysdiff finetune --init A.ckpt extra_init=B.ckpt`).

Example:
  crysdiff pretrain --data ../shared/data/mp2018/train.csv.gz --out runs/pre train.max_epochs=5 model.hidden_dim=128
  crysdiff pretrain --data ../shared/data/mp2018/train.csv.gz --out runs/pre_lattice diffusion.mode=lattice
"""

from __future__ import annotations


from crysdiff.commands._common import add_run_arguments, resolve_config, run_guarded


def add_arguments(parser) -> None:
    parser.add_argument("--data", nargs="+", required=True, help="training structures: files, folders, datasets")
    parser.add_argument("--val", nargs="*", help="validation structures (default: a seeded data.val_fraction of --data)")
    add_run_arguments(parser)


def run(args) -> int:
    from crysdiff.pretrain import PretrainConfig, run_pretrain

    def go():
        config = resolve_config(PretrainConfig, args)
        path = run_pretrain(config, args.data, args.out, val_sources=args.val, resume=args.resume,
                            progress=not args.no_progress, workers=args.workers)
        print(f"pre-trained model written to {path}")

    return run_guarded(go)
