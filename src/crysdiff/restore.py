"""A fine-tuned model from its checkpoint, with no training code (no Lightning).

The checkpoint's ``config`` is read into a :class:`FinetuneConfig` (the schema of a fine-tuning
run) by :func:`stored_finetune_config`, which also migrates what older crysdiff versions wrote;
:func:`build_property_model` gives the network of that shape and :func:`restore` the network with
the checkpoint's weights and target statistics. Training (:mod:`crysdiff.finetune`) and inference
(:mod:`crysdiff.predict`, :mod:`crysdiff.calibrate`) both build their models here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crysdiff.card import PropertyDiffusionConfig
from crysdiff.cells import stored_data_config
from crysdiff.config import DataConfig, TrainConfig, from_dict
from crysdiff.denoiser import DenoiserConfig, build_encoder
from crysdiff.diffusion import DiffusionConfig, JointDiffusion
from crysdiff.heads import HeadConfig
from crysdiff.property_model import AveragedEncoder, NoisedStructures, PropertyModel

__all__ = ["FinetuneConfig", "build_property_model", "stored_finetune_config", "payload_config", "stored_state", "restore"]


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings.

    Attributes:
        target: the label column to learn (e.g. ``formation_energy_per_atom``).
        model: the encoder's config (replaced by the ``--init`` checkpoint's own when there is one).
        head: the property head (default ``kind="gaussian"`` with ``prior="learned"``; the paper's
            ``kind="card"`` with ``prior="mean"``; ``"eq4"``; ``"regression"`` with ``prior="mean"``).
        property: the CARD schedule on the target.
        freeze_encoder: keep the pre-trained encoder fixed (ablation "without updating the encoder").
        encoder_lr_ratio: the encoder's learning rate relative to the head's.
        eval_samples: samples per crystal when validating during training.
        report_samples: samples per crystal in the final validation report and the calibration
            after training: ``crysdiff predict``'s default, because the scale fitted there is for
            intervals taken from that many samples (the 2.5/97.5 percentiles of fewer samples sit
            slightly closer together, so a scale fitted on them over-covers at 100).
        extra_init: a second pre-training checkpoint (same ``model`` settings as ``--init``): the
            encoder becomes the mean of both pre-trained encoders' atom states, both trained
            (ablation "without joint diffusion": ``--init`` pre-trained with ``diffusion.mode=lattice``,
            this one with ``diffusion.mode=coords``). Its weights are copied into the fine-tuned
            checkpoint, which needs neither file afterwards.
        fix_structure: ``True`` (the paper): the encoder reads the clean structure. ``False``
            (ablation "without fixing structures"): the structure is diffused with ``y`` by
            ``structure_diffusion``, see :mod:`crysdiff.property_model`.
        structure_encodings: with ``fix_structure=false``, encoder passes per crystal at inference
            (the chain's steps are cut into this many blocks, each with one noised structure).
        structure_diffusion: the structure diffusion of pre-training (taken from the ``--init``
            checkpoint); used only with ``fix_structure=false``.
        calibrate: after training, fit one factor for the spread on the validation crystals
            (split-conformal, :func:`crysdiff.uncertainty.conformal_interval_scale`) so that the
            95% interval covers 95% of them; stored in the checkpoint and applied by ``predict``.
            The validation metrics report the coverage before it.
        exact_mean: predict the chain's exact mean (closed form, for the affine heads ``card``,
            ``gaussian`` and ``eq4``) instead of the samples' mean, so the mean has no sampling noise;
            the spread and interval still come from the samples (:mod:`crysdiff.property_model`).
            On for new fine-tunings; a checkpoint written before the field existed reads it as
            off and predicts exactly as before.
        holdout_fraction: a seeded share of the validation crystals kept out of everything the run
            decides (the best checkpoint, the interval's scale); after training the model is scored
            on them as users get it (calibrated interval, ``report_samples``), stored as
            ``holdout`` beside ``val`` in the checkpoint's metrics and ``val_metrics.json``, with
            ``holdout_predictions.csv``. ``0``: every validation crystal takes part in the choices.
    """

    target: str = ""
    model: DenoiserConfig = field(default_factory=DenoiserConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    property: PropertyDiffusionConfig = field(default_factory=PropertyDiffusionConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-4, max_epochs=30, warmup_steps=100))
    data: DataConfig = field(default_factory=DataConfig)
    freeze_encoder: bool = False
    encoder_lr_ratio: float = 1.0
    eval_samples: int = 20
    report_samples: int = 100
    extra_init: str = ""
    fix_structure: bool = True
    structure_encodings: int = 20
    structure_diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    calibrate: bool = True
    exact_mean: bool = True
    holdout_fraction: float = 0.0


def build_property_model(config: FinetuneConfig, mean: float = 0.0, std: float = 1.0,
                         lower_bound: float | None = None, interval_scale: float = 1.0) -> PropertyModel:
    """A (randomly initialised) :class:`PropertyModel` of the shape ``config`` describes: its encoder
    (two averaged ones with ``extra_init``), head, and how it reads structures (``fix_structure``)."""
    encoder = build_encoder(config.model)
    if config.extra_init:
        encoder = AveragedEncoder([encoder, build_encoder(config.model)])
    structures = None
    if not config.fix_structure:
        structures = NoisedStructures(JointDiffusion(config.structure_diffusion), config.structure_encodings)
    return PropertyModel(encoder, config.model.hidden_dim, config.head, mean=mean, std=std, lower_bound=lower_bound,
                         interval_scale=interval_scale, structures=structures, exact_mean=config.exact_mean)


# head settings measured and dropped (docs/results.md, "Tried and dropped"): the value every model
# still loadable was written with, and what to tell the owner of a file written with another one
_DROPPED_HEAD = {
    "baseline": ("prior", "head.baseline=zero (the card/gaussian head without the prior residual)"),
    "composition": (False, "head.composition=true (an element embedding added to the pooled states)"),
    "layers": ("last", "head.layers=all (the head reading every layer's pooled states)"),
}


def stored_finetune_config(stored: dict, current: bool = False) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of a fine-tuned checkpoint's ``config`` dict, migrated
    (``current``: written by this version, whose heads have no ``baseline`` field; see :func:`payload_config`).

    A head without ``kind`` or ``prior`` is read with the defaults of the time (``card``, ``mean``),
    not today's; a regression head's prior (never used) is ``mean``; a checkpoint without
    ``data.cell`` saw cells as given and keeps doing so, and one without ``exact_mean`` reported
    the samples' mean and keeps doing so. The dropped head settings are removed
    where they hold the one value still supported, and refused (``ValueError``) otherwise: a head
    without ``baseline`` was written before it existed, with the dropped ``baseline="zero"``.
    ``head.kind=card_mlp`` is refused likewise.
    """
    stored = {"exact_mean": False, **stored_data_config(stored)}
    head = {"kind": "card", "prior": "mean", "baseline": "prior" if current else "zero", **(stored.get("head") or {})}
    for key, (kept, what) in _DROPPED_HEAD.items():
        if head.pop(key, kept) != kept:
            raise ValueError(f"written with {what}, an option crysdiff no longer has; crysdiff at commit a2c511c "
                             f"reads it (the option's measurements: docs/results.md, 'Tried and dropped')")
    if head["kind"] == "card_mlp":
        raise ValueError("written with head.kind=card_mlp, a head crysdiff no longer has; crysdiff at commit a2c511c "
                         "reads it (docs/results.md, 'Tried and dropped')")
    if head["kind"] == "regression":
        head["prior"] = "mean"  # was ignored: a regression head has no prior
    stored["head"] = head
    return from_dict(FinetuneConfig, stored)


def stored_state(payload: dict) -> dict:
    """A fine-tuned checkpoint's ``state_dict``; one written before the lower bound and the interval
    scale were part of the model's state gets them from its ``normalizer`` (no bound: -inf; no
    scale: 1, written before calibration existed)."""
    import torch

    state, normalizer = dict(payload["state_dict"]), payload["normalizer"]
    if "y_lower_bound" not in state:
        bound = normalizer.get("lower_bound")
        state["y_lower_bound"] = torch.tensor(-float("inf") if bound is None else float(bound), dtype=torch.float64)
    if "y_interval_scale" not in state:
        state["y_interval_scale"] = torch.tensor(float(normalizer.get("interval_scale", 1.0)), dtype=torch.float64)
    return state


def payload_config(payload: dict) -> FinetuneConfig:
    """The migrated config of a fine-tuned checkpoint's payload. A file of this version is told
    from an older one by its state holding the interval scale (older files keep it in the normaliser)."""
    return stored_finetune_config(payload["config"], current="y_interval_scale" in payload["state_dict"])


def restore(payload: dict) -> tuple[FinetuneConfig, PropertyModel]:
    """The config and the network (weights, target statistics, lower bound and interval scale
    loaded) of a fine-tuned checkpoint's payload (:func:`crysdiff.checkpoint.load_checkpoint`)."""
    config = payload_config(payload)
    normalizer = payload["normalizer"]
    network = build_property_model(config, normalizer["mean"], normalizer["std"])
    network.load_state_dict(stored_state(payload), strict=True)
    return config, network
