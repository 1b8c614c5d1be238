"""Pieces shared by the verbs: config loading with overrides, and errors printed without tracebacks."""

from __future__ import annotations

import sys
from pathlib import Path

from crysdiff.config import apply_overrides, load_yaml

# errors a user can fix: printed as one line, never as a traceback
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError)


class UsageError(ValueError):
    """A command-line argument that cannot work (checked before any work): one line, exit code 2."""


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


def fail(message: str, code: int = 2) -> int:
    print(f"crysdiff: error: {message}", file=sys.stderr)
    return code


def run_guarded(function) -> int:
    """Run ``function()``; a user error (bad path, bad record under --strict, bad config) prints one line."""
    from crysdiff.crystal import RecordError

    try:
        return int(function() or 0)
    except RecordError as error:
        return fail(f"{error.source} [{error.record}]: {error.reason}")
    except USER_ERRORS as error:  # every user error (bad file, bad record, bad argument) exits with code 2
        return fail(str(error))


def check_device(name: str | None) -> None:
    """``--device`` names a device this machine has: cpu, cuda, cuda:N (N < the GPUs present) or mps."""
    import torch

    if name is None:
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name}: not a device name; expected cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__}); "
                             "use --device cpu")
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise UsageError(f"--device {name}: unsupported device type {device.type!r}; expected cpu, cuda, cuda:N or mps")
