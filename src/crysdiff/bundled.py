"""The models shipped inside the package (``crysdiff/models/<name>.ckpt``), by name.

Nothing heavy is imported here, so ``crysdiff predict --list-models`` starts without torch.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MODELS_DIR", "bundled_models", "resolve_model"]

MODELS_DIR = Path(__file__).parent / "models"


def bundled_models() -> dict[str, Path]:
    """Models shipped inside the package, by name (``models/<name>.ckpt``)."""
    return {p.stem: p for p in sorted(MODELS_DIR.glob("*.ckpt"))}


def resolve_model(model: str | Path) -> Path:
    """The checkpoint file ``model`` names: a path, or a bundled model's name."""
    path = Path(model)
    if path.is_file():
        return path
    models = bundled_models()
    if str(model) in models:
        return models[str(model)]
    from crysdiff.checkpoint import CheckpointError

    known = ", ".join(models) or "none bundled in this install"
    raise CheckpointError(f"{model}: neither a checkpoint file nor a bundled model name (bundled: {known})")
