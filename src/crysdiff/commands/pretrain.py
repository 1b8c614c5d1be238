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
  crysdiff pretrain --init models/pretrained_pool.ckpt --data MY_STRUCTURES/ --out runs/pre_more train.lr=5e-4

--init continues a pre-trained denoiser (its network and diffusion settings, a fresh optimizer and
schedule): train it longer, or adapt it to your own structures before fine-tuning. The checkpoint
records the steps and seconds of every stage.
"""

from __future__ import annotations


from crysdiff.commands._common import add_run_arguments, resolve_config, run_guarded


def add_arguments(parser) -> None:
    parser.add_argument("--data", nargs="+", required=True, help="training structures: files, folders, datasets")
    parser.add_argument("--val", nargs="*", help="validation structures (default: a seeded data.val_fraction of --data)")
    parser.add_argument("--init", help="pre-training checkpoint to continue (its weights, network and diffusion settings)")
    add_run_arguments(parser)


def run(args) -> int:
    from crysdiff.config import load_yaml
    from crysdiff.pretrain import PretrainConfig, init_config, run_pretrain

    def go():
        if args.init:
            base = load_yaml(PretrainConfig, args.config) if args.config else None
            config = init_config(args.init, args.overrides, base)
        else:
            config = resolve_config(PretrainConfig, args)
        path = run_pretrain(config, args.data, args.out, val_sources=args.val, resume=args.resume,
                            progress=not args.no_progress, workers=args.workers, init=args.init)
        print(f"pre-trained model written to {path}")

    return run_guarded(go)
