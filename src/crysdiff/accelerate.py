"""Optional speed lever for training (issue 26): ``torch.compile`` of a module, with a fallback to eager.

:func:`compile_module` makes a module's ``forward`` go through ``torch.compile(type(module).forward,
dynamic=True)`` (the inductor backend: C++ loops on the CPU, Triton on a GPU; dynamic shapes, since
every batch has its own atom and edge counts). Compilation happens at the first call and can fail
where no C compiler or no supported backend is found; then a warning is given once and that class
runs eager from then on, so a run never stops because of the lever. An error that the eager
forward raises as well (bad input) is raised as it is. The weights and ``state_dict`` keys are
untouched, and a deep copy of the module (the weight average) keeps the compiled forward bound to
the copy.

Compiled kernels may add floating-point terms in another order than the eager ones, so a compiled
network is the same function only up to rounding: the lever is for training (``train.compile``),
never for ``crysdiff predict``, whose outputs stay byte-identical for a given checkpoint and seed.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from crysdiff.notices import warn_once

__all__ = ["compile_module", "is_compiled"]

_WRAPPERS: dict[type, types.FunctionType] = {}  # module class -> its compiled forward (an unbound function)
_FAILED: set[type] = set()  # classes whose compilation failed: eager from then on


def _wrapper(cls: type) -> types.FunctionType:
    if cls not in _WRAPPERS:
        compiled = torch.compile(cls.forward, dynamic=True)

        def forward(self, *args, **kwargs):
            if cls in _FAILED:
                return cls.forward(self, *args, **kwargs)
            try:
                return compiled(self, *args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any compiler failure; eager decides below
                result = cls.forward(self, *args, **kwargs)  # raises the input's own error if eager fails too
                message = str(error).strip().splitlines()
                warn_once(f"train.compile: torch.compile of {cls.__name__} failed ({type(error).__name__}"
                          f"{': ' + message[0] if message else ''}); running eager")
                _FAILED.add(cls)
                return result

        _WRAPPERS[cls] = forward
    return _WRAPPERS[cls]


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module``'s forward goes through :func:`compile_module`'s wrapper."""
    return getattr(module.forward, "__func__", None) is _WRAPPERS.get(type(module))


def compile_module(module: nn.Module, enabled: bool = True) -> nn.Module:
    """``module`` with its ``forward`` compiled (in place; returned for chaining); unchanged when not
    ``enabled`` or when this torch has no ``torch.compile``."""
    if enabled and hasattr(torch, "compile") and not is_compiled(module):
        module.forward = types.MethodType(_wrapper(type(module)), module)
    return module
