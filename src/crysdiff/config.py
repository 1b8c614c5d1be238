"""Typed configs: frozen dataclasses, read from and written to YAML, overridable from the command line.

Every component owns one frozen dataclass (``DenoiserConfig``, ``DiffusionConfig``, ``HeadConfig``,
...). A run's config nests them (:class:`PretrainConfig`, :class:`FinetuneConfig`). YAML holds plain
values only and never names Python classes; the schema is the dataclass itself, so an unknown key
or a value of the wrong type is an error that names the key.

Overrides use dotted keys, as on the command line::

    crysdiff pretrain ... model.hidden_dim=256 train.max_epochs=50 diffusion.sigma_max=0.5
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from crysdiff.cells import CellConfig

__all__ = [
    "ConfigError",
    "TrainConfig",
    "DataConfig",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "load_yaml",
    "save_yaml",
]

T = TypeVar("T")

# the spacings of a strided reverse schedule crysdiff.sampling offers (here, torch-free, for the command line)
SCHEDULES = ("linear", "quadratic")


class ConfigError(ValueError):
    """A config key or value that does not fit the schema."""


@dataclass(frozen=True)
class TrainConfig:
    """The training engine's settings (shared by pre-training and fine-tuning).

    Attributes:
        batch_size: crystals per batch (per device).
        max_atoms_per_batch: if set, batches are also capped at this many atoms, so big cells get
            small batches and memory stays bounded.
        lr, weight_decay: AdamW settings; the learning rate follows a cosine decay to ``lr * min_lr_ratio``
            after ``warmup_steps`` of linear warm-up, over the planned steps (``max_epochs`` or
            ``max_steps``). ``anneal_over_time``: decay over ``max_time_minutes`` instead when that ends
            first (off by default: measured worse for 4-minute fine-tuning, see docs/training.md).
        fused_optimizer: AdamW's fused implementation (one kernel per step for all parameters instead of
            several per parameter tensor: about a quarter of a pre-training step's kernel launches, see
            docs/method.md); the same update up to float rounding. Falls back to the plain AdamW with
            a warning where torch has no fused kernel for the parameters' device or dtype. Off by
            default until it is measured on a quiet machine (issue 26).
        max_epochs, max_steps, max_time_minutes: stop at whichever comes first (``0`` = no limit).
        grad_clip: gradient norm clip (``0`` = off).
        ema_decay: decay of the exponential moving average of the weights (``0`` = off). Validation,
            the saved checkpoints and the exported model use the averaged weights; the decay is
            warmed up as ``min(ema_decay, (1 + n) / (10 + n))`` after ``n`` updates so short runs are
            not dominated by the initial weights.
        seed: seeds the model initialisation, data order and diffusion noise.
        val_every_steps: validation interval in optimiser steps (``0`` = once per epoch); the model is
            also validated once more when training stops.
        log_every_steps: interval of the training-loss rows in ``OUT/logs/metrics.csv``.
        checkpoint_every_steps: also write ``OUT/checkpoints/last.ckpt`` every this many optimiser
            steps (``0`` = only at the end of each epoch), so a killed run loses at most that much.
        num_workers: data-loading worker processes.
        accelerator, devices, num_nodes, strategy, precision: passed to Lightning's ``Trainer``
            (``devices="auto"`` uses every GPU; several nodes work with ``num_nodes`` and a launcher
            such as SLURM or torchrun). ``precision="auto"`` is ``bf16-mixed`` on a CUDA GPU that
            supports it and ``32-true`` otherwise.
    """

    batch_size: int = 64
    max_atoms_per_batch: int = 0
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200
    min_lr_ratio: float = 0.05
    max_epochs: int = 100
    max_steps: int = 0
    max_time_minutes: float = 0.0
    anneal_over_time: bool = False
    fused_optimizer: bool = False
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    val_every_steps: int = 0
    log_every_steps: int = 10
    checkpoint_every_steps: int = 500
    num_workers: int = 0
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"


@dataclass(frozen=True)
class DataConfig:
    """How structures become crystals and batches.

    Attributes:
        max_atoms: largest cell accepted (atoms per cell); larger ones are skipped and reported.
        min_distance: smallest allowed interatomic distance in Å.
        max_dense_atoms: cells up to this size use all-pairs edges; larger cells use kNN edges.
        knn_neighbors: neighbours per atom for cells above ``max_dense_atoms``.
        val_fraction: fraction held out for validation when no validation source is given.
        cell: which cell of each structure the model sees (:class:`~crysdiff.cells.CellConfig`: the
            Niggli-reduced primitive cell by default; checkpoints written before it saw cells as given).
    """

    max_atoms: int = 5000
    min_distance: float = 0.5
    max_dense_atoms: int = 200
    knn_neighbors: int = 24
    val_fraction: float = 0.05
    cell: CellConfig = field(default_factory=CellConfig)


# --- dict <-> dataclass ---------------------------------------------------------------------------


def _resolve_hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {hint.__name__}, found {value!r}")
        return from_dict(hint, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        (item,) = typing.get_args(hint)[:1] or (Any,)
        items = [_coerce(v, item, key) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, found {value!r}")
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, found {value!r}")
        return int(value)
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, found {value!r}") from None
    if hint is str:
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (possibly partial, possibly nested) dict, checking every key."""
    data = dict(data or {})
    hints = _resolve_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in data.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """A plain nested dict (YAML/JSON-safe) of a dataclass config."""
    out = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(config: T, overrides: list[str] | dict[str, Any]) -> T:
    """A copy of ``config`` with dotted-key overrides (``["model.hidden_dim=256", ...]``) applied."""
    if isinstance(overrides, dict):
        pairs = list(overrides.items())
    else:
        pairs = []
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.lr=3e-4)")
            key, text = item.split("=", 1)
            pairs.append((key.strip(), _parse_scalar(text.strip())))
    data = to_dict(config)
    for key, value in pairs:
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"unknown config section {key!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config key {key!r} (known here: {', '.join(sorted(node))})")
        node[parts[-1]] = value
    return from_dict(type(config), data)


def load_yaml(cls: type[T], path: str | Path) -> T:
    """Read a config of type ``cls`` from YAML (missing keys take their defaults)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config {path}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return from_dict(cls, data)


def save_yaml(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def replace(config: T, **changes) -> T:
    return dataclasses.replace(config, **changes)


def default_factory(cls):
    return field(default_factory=cls)
