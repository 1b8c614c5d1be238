"""Pieces shared by the verbs: config loading with overrides, and errors printed without tracebacks."""

from __future__ import annotations

import sys
from pathlib import Path

from crysdiff.config import apply_overrides, load_yaml

# errors a user can fix: printed as one line, never as a traceback
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError)


class UsageError(ValueError):
    """A command-line argument that cannot work (checked before any work): one line, exit code 2."""

    exit_code = 2


def add_config_arguments(parser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config (keys as in the config written to OUT/config.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.max_epochs=5 model.hidden_dim=64")


def add_run_arguments(parser) -> None:
    """Options every training verb has: output folder, resuming, parser processes, progress bars."""
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    parser.add_argument("--workers", type=int, help="parser processes for the cache (default: all cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser)


def resolve_config(cls, args, **defaults):
    config = load_yaml(cls, args.config) if args.config else cls()
    if defaults:
        config = apply_overrides(config, defaults)
    return apply_overrides(config, list(args.overrides or []))


def fail(message: str, code: int = 1) -> int:
    print(f"crysdiff: error: {message}", file=sys.stderr)
    return code


def run_guarded(function) -> int:
    """Run ``function()``; a user error (bad path, bad record under --strict, bad config) prints one line."""
    from crysdiff.crystal import RecordError

    try:
        return int(function() or 0)
    except RecordError as error:
        return fail(f"{error.source} [{error.record}]: {error.reason}")
    except USER_ERRORS as error:  # a refused file or a bad argument carries exit code 2
        return fail(str(error), getattr(error, "exit_code", 1))
