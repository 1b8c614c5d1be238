"""crysdiff: crystal property prediction with diffusion pre-training (CrysDiff, AAAI 2024).

Public API (implementations live in the modules named after what they hold):

* :mod:`crysdiff.crystal` — the :class:`Crystal` record, its conventions and validation.
* :mod:`crysdiff.io` — readers for the formats materials researchers exchange.
* :mod:`crysdiff.cache` — the on-disk, memory-mapped dataset cache (:func:`load_dataset`).
* :mod:`crysdiff.batching` — batches of crystals (PyTorch Geometric) with edge lists.
* :mod:`crysdiff.denoiser`, :mod:`crysdiff.diffusion`, :mod:`crysdiff.sampling` — pre-training and generation.
* :mod:`crysdiff.card`, :mod:`crysdiff.heads`, :mod:`crysdiff.finetune` — fine-tuning on a property.
* :func:`load` — a fine-tuned model (path or bundled name) whose ``predict`` returns a DataFrame.
"""

from crysdiff.crystal import Crystal, RecordError, ValidationSettings, validate

__version__ = "0.1.0"

__all__ = ["Crystal", "RecordError", "ValidationSettings", "validate", "load", "load_dataset", "__version__"]


def __getattr__(name):  # heavy imports (torch, Lightning) only when asked for
    if name == "load":
        from crysdiff.predict import load

        return load
    if name == "load_dataset":
        from crysdiff.cache import load_dataset

        return load_dataset
    raise AttributeError(f"module 'crysdiff' has no attribute {name!r}")
