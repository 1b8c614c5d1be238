"""Predictions with uncertainty from a fine-tuned model: ``crysdiff.load(...).predict([...])``.

``load`` takes a checkpoint path or the name of a bundled model (a target name such as
``formation_energy_per_atom``; see :func:`bundled_models`). ``predict`` takes paths (anything the
readers understand), ``pymatgen`` Structures, ``ase`` Atoms or :class:`~crysdiff.crystal.Crystal`
objects, and returns one row per structure: ``id``, ``source``, ``mean``, ``std``, ``p2.5``,
``p97.5``, ``unit``. Each crystal is encoded once; the ``S`` samples of the reverse chain then run
through the head only (Alg. 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from crysdiff.card import PropertyDiffusion
from crysdiff.checkpoint import CheckpointError, load_checkpoint
from crysdiff.config import from_dict
from crysdiff.finetune import FinetuneConfig, PropertyModel, build_property_model

__all__ = ["Predictor", "load", "bundled_models"]

MODELS_DIR = Path(__file__).parent / "models"


def bundled_models() -> dict[str, Path]:
    """Models shipped inside the package, by name (``models/<name>.ckpt``)."""
    return {p.stem: p for p in sorted(MODELS_DIR.glob("*.ckpt"))}


def _resolve_model(model: str | Path) -> Path:
    path = Path(model)
    if path.is_file():
        return path
    models = bundled_models()
    if str(model) in models:
        return models[str(model)]
    known = ", ".join(models) or "none bundled in this install"
    raise CheckpointError(f"{model}: neither a checkpoint file nor a bundled model name (bundled: {known})")


@dataclass
class Predictor:
    """A fine-tuned model ready to predict (see :func:`load`)."""

    model: PropertyModel
    diffusion: PropertyDiffusion
    config: FinetuneConfig
    target: str
    unit: str
    device: torch.device
    info: dict = field(default_factory=dict)

    def _crystals(self, inputs: Iterable[Any], strict: bool) -> tuple[list, list]:
        from crysdiff.crystal import Crystal, RecordError, ValidationSettings, validate
        from crysdiff.io import from_structures, read

        settings = ValidationSettings(min_distance=self.config.data.min_distance, max_atoms=self.config.data.max_atoms)
        crystals, errors, objects, paths = [], [], [], []
        for item in inputs:
            (paths if isinstance(item, (str, Path)) else objects).append(item)
        if paths:
            found, bad = read(paths, settings=settings, strict=strict)
            crystals.extend(found)
            errors.extend(bad)
        for position, obj in enumerate(objects):
            try:
                if isinstance(obj, Crystal):
                    crystals.append(validate(obj, settings))
                else:
                    crystals.extend(from_structures([obj], ids=[f"input {position}"], settings=settings))
            except RecordError as error:
                if strict:
                    raise
                errors.append(error)
        return crystals, errors

    @torch.no_grad()
    def predict(self, inputs: Iterable[Any] | Any, *, samples: int = 100, batch_size: int = 64, seed: int = 0,
                strict: bool = False, progress: bool = False, return_errors: bool = False):
        """A ``pandas.DataFrame`` with one row per readable structure (bad records skipped and, with
        ``return_errors``, returned as a second value)."""
        import pandas as pd

        from crysdiff.batching import EdgeSettings, collate_crystals

        if isinstance(inputs, (str, Path)) or not isinstance(inputs, (list, tuple)):
            inputs = [inputs]
        crystals, errors = self._crystals(inputs, strict)
        edges = EdgeSettings(max_dense_atoms=self.config.data.max_dense_atoms, knn_neighbors=self.config.data.knn_neighbors)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        rows = []
        chunks = range(0, len(crystals), batch_size)
        if progress and len(crystals) > batch_size:
            from rich.progress import track

            chunks = track(chunks, description="predicting", transient=True)
        for start in chunks:
            part = crystals[start:start + batch_size]
            batch = collate_crystals(part, edges=edges).to(self.device)
            out = self.model.predict(batch, self.diffusion, num_samples=samples, generator=generator)
            for k, crystal in enumerate(part):
                rows.append({
                    "id": crystal.id, "source": crystal.source, "mean": float(out["mean"][k]), "std": float(out["std"][k]),
                    "p2.5": float(out["p2.5"][k]), "p97.5": float(out["p97.5"][k]), "unit": self.unit,
                })
        frame = pd.DataFrame(rows, columns=["id", "source", "mean", "std", "p2.5", "p97.5", "unit"])
        return (frame, errors) if return_errors else frame


def load(model: str | Path, device: str | torch.device | None = None) -> Predictor:
    """A :class:`Predictor` from a fine-tuned checkpoint path or a bundled model name."""
    path = _resolve_model(model)
    payload = load_checkpoint(path, kind="finetune")
    config = from_dict(FinetuneConfig, payload["config"])
    normalizer = payload["normalizer"]
    network = build_property_model(config, normalizer["mean"], normalizer["std"])
    network.load_state_dict(payload["state_dict"], strict=True)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Predictor(
        model=network.to(device).eval(),
        diffusion=PropertyDiffusion(config.property),
        config=config,
        target=normalizer["target"],
        unit=normalizer.get("unit", ""),
        device=device,
        info={"path": str(path), "metrics": payload.get("metrics", {}), "data": payload.get("data", {})},
    )
