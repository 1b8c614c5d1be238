"""CLI verbs of ``crysdiff`` (see :mod:`crysdiff.cli`): one module per verb, each with
``add_arguments(parser)`` and ``run(args) -> int``."""
