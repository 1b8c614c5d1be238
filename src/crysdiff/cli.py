"""The ``crysdiff`` command: a thin layer of verbs over the library.

Each verb lives in a module of :mod:`crysdiff.commands` that provides ``add_arguments(parser)``
and ``run(args) -> int``; the first line of its docstring is the verb's help and the rest (with an
``Example:``) is shown by ``crysdiff VERB --help``. Verbs whose module is not importable (an
optional dependency missing) are listed with the reason instead of breaking the whole command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Transparent huge pages for torch's CPU allocator: big fresh [E, H] edge buffers otherwise pay a
# page fault per 4 KiB (measured 3x slower forward+backward on the 4,640-atom COD cell). Must be
# set before torch is imported; the verbs import torch lazily.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# verb -> module in crysdiff.commands (kept in the order users meet them)
VERBS: dict[str, str] = {
    "data": "data",
    "pretrain": "pretrain",
    "sample": "sample",
    "evaluate-csp": "evaluate_csp",
    "finetune": "finetune",
    "predict": "predict",
    "calibrate": "calibrate",
}


def build_parser() -> argparse.ArgumentParser:
    from crysdiff import __version__

    parser = argparse.ArgumentParser(
        prog="crysdiff",
        description="Crystal property prediction with diffusion pre-training (CrysDiff).",
        epilog="Run 'crysdiff VERB --help' for a verb's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"crysdiff {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, module_name in VERBS.items():
        try:
            module = importlib.import_module(f"crysdiff.commands.{module_name}")
        except ModuleNotFoundError as error:
            if error.name and error.name.startswith("crysdiff.commands."):
                continue  # verb not part of this build yet
            raise
        doc = (module.__doc__ or verb).strip()
        sub = verbs.add_parser(
            verb,
            help=doc.splitlines()[0].replace("%", "%%"),  # argparse %-formats help strings ("95% interval")
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def _is_override(item: str) -> bool:
    """``section.key=value`` or ``key=value`` (what training verbs accept as config overrides)."""
    key, sep, _ = item.partition("=")
    return bool(sep) and not item.startswith("-") and all(part.isidentifier() for part in key.split("."))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may stand anywhere, also after options (argparse only takes positionals
    # in one run); anything else unknown is an error as usual
    stray = [item for item in extra if not _is_override(item)]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    for name in ("data", "val"):  # overrides swallowed by a multi-value option such as --data
        values = getattr(args, name, None)
        if isinstance(values, list) and hasattr(args, "overrides"):
            moved = [v for v in values if _is_override(v) and not os.path.exists(v)]
            if moved:
                setattr(args, name, [v for v in values if v not in moved])
                args.overrides = list(args.overrides or []) + moved
    if getattr(args, "_run", None) is None:  # bare ``crysdiff``: the verb list, as --help prints it
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("crysdiff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
