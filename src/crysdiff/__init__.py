"""crysdiff: crystal property prediction with diffusion pre-training (CrysDiff, AAAI 2024).

Public API (implementations live in the modules named after what they hold):

* :mod:`crysdiff.crystal` — the :class:`Crystal` record, its conventions and validation.
* :mod:`crysdiff.io` — readers for the formats materials researchers exchange.
* :mod:`crysdiff.cache` — the on-disk, memory-mapped dataset cache.
* :mod:`crysdiff.batching` — batches of crystals (PyTorch Geometric) with edge lists.
"""

from crysdiff.crystal import Crystal, RecordError, ValidationSettings, validate

__version__ = "0.1.0"

__all__ = ["Crystal", "RecordError", "ValidationSettings", "validate", "__version__"]
