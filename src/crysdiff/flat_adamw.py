"""AdamW, gradient-norm clipping and the weight EMA over one flat buffer (``train.flat_parameters``).

torch's AdamW on the CPU loops over the parameter tensors: about eight small kernels per tensor per
step (``lerp_``, ``mul_``, ``addcmul_``, ``sqrt``, ``div``, ``add_``, ``addcdiv_``, the step count),
``clip_grad_norm_`` adds a norm and a ``mul_`` per tensor and the EMA four kernels and a ``.to``. With ~53 parameter
tensors that is over 600 launches a step, each touching a few KB. Here every optimised parameter is
a view into one contiguous buffer, and so are its two moments; the gradients are gathered into one
contiguous buffer by a single ``cat`` after the backward pass; the clip runs two kernels over the whole
gradient, the update torch's kernels over chunks of 64K elements (or, with ``fused=True``, AdamW's fused
kernel once over each parameter group's buffer), the EMA three kernels per chunk.

The update is torch's own (:func:`torch.optim.adamw.adamw`, the same elementwise formulas, here
applied to the chunks of each group's buffer), so every element gets the update it would get from
:class:`torch.optim.AdamW`, to the bit (tested). The clip's total norm is one ``vector_norm`` of the whole gradient
instead of the norm of the per-tensor norms: the same number up to float rounding.

Why gather rather than let autograd accumulate into preallocated gradient views: accumulating into a
defined ``.grad`` costs one in-place ``add_`` per tensor (autograd otherwise hands its result over
without a copy) plus the zero fill, where the gather is one kernel; and ``.grad`` stays ``None`` for
a parameter that got no gradient, as torch's optimisers (and DDP's unused-parameter handling) expect.
Such a step (some parameter without a gradient) falls back to the per-tensor AdamW, as do
parameters the flat path does not cover (sparse or complex ones, several devices or dtypes, amsgrad,
capturable or differentiable groups).

Checkpoints: the optimiser is a :class:`torch.optim.AdamW` subclass with the same ``state_dict``
(one entry per parameter, same keys and shapes), so checkpoints written by either path resume in the
other. Module ``state_dict`` keys and shapes do not change either; :func:`crysdiff.checkpoint.save_checkpoint`
stores each tensor on its own.

A move to another device (``module.to``) gives the parameters new storage; the optimiser notices
(it checks its views before every step) and rebuilds the buffer from the moved parameters.
"""

from __future__ import annotations

import torch
from torch.optim.adamw import adamw as adamw_update
from torch.optim.swa_utils import AveragedModel

__all__ = ["FlatAdamW", "flatten_parameters", "FlatEMA", "FlatAveragedModel"]


def _scalar_dtype() -> torch.dtype:
    """The dtype torch's Adam gives its ``step`` counts (float32 unless the default dtype is float64)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _flat_eligible(tensors: list[torch.Tensor]) -> bool:
    """Whether ``tensors`` can share one buffer: dense, real floating point, one device and dtype."""
    if not tensors:
        return False
    first = tensors[0]
    return all(t.layout == torch.strided and t.is_floating_point() and not t.is_complex()
               and t.device == first.device and t.dtype == first.dtype for t in tensors)


def flatten_parameters(parameters: list[torch.nn.Parameter]) -> torch.Tensor | None:
    """Make ``parameters`` views into one new contiguous buffer (in this order), values kept; returns
    the buffer, or ``None`` (nothing changed) when they cannot share one."""
    parameters = list(parameters)
    if not _flat_eligible(parameters):
        return None
    flat = torch.empty(sum(p.numel() for p in parameters), dtype=parameters[0].dtype, device=parameters[0].device)
    torch.cat([p.detach().reshape(-1) for p in parameters], out=flat)
    offset = 0
    for p in parameters:
        p.data = flat[offset : offset + p.numel()].view(p.shape)
        offset += p.numel()
    return flat


CHUNK = 1 << 16  # elements per kernel of the unfused update and of the EMA (256 KiB of float32)


def _chunks(tensor: torch.Tensor, size: int | None = None) -> list[torch.Tensor]:
    """A contiguous ``tensor`` as consecutive 1-d views of at most ``size`` (``CHUNK``) elements."""
    size = size or CHUNK
    flat = tensor.view(-1)
    return [flat[i : i + size] for i in range(0, flat.numel(), size)] or [flat]


class _Segment:
    """One parameter group's slice of the flat buffers, and the same cut into chunks of ``CHUNK``.

    The unfused update runs chunk by chunk: over the whole buffer each of its eight passes (and its
    two temporaries of the buffer's size) would stream megabytes through the cache, where a chunk's
    passes stay in it; measured, a whole-buffer pass was slower than the per-tensor loop, 64K-element
    chunks twice as fast (docs/training.md)."""

    def __init__(self, group: int, start: int, end: int, buffers, step: torch.Tensor):
        self.group = group
        self.param, self.grad, self.exp_avg, self.exp_avg_sq = (b[start:end] for b in buffers)
        self.step = step  # the step count every parameter of the group shares (its state's "step")
        self.chunks = [_chunks(b) for b in (self.param, self.grad, self.exp_avg, self.exp_avg_sq)]
        # torch's update increments the count of each tensor it is given: one count per chunk, kept
        # equal to the group's
        self.chunk_steps = [step.clone() for _ in self.chunks[0]]


class _Layout:
    """The flat buffers of a :class:`FlatAdamW` and what it checks before every step."""

    def __init__(self, params, pointers, moments, steps, segments, grad):
        self.params, self.pointers, self.moments, self.steps = params, pointers, moments, steps
        self.segments, self.grad = segments, grad


class FlatAdamW(torch.optim.AdamW):
    """:class:`torch.optim.AdamW` over one flat parameter buffer, with the gradient-norm clip inside.

    Args:
        params, lr, weight_decay, **kwargs: as for :class:`torch.optim.AdamW` (whose defaults apply).
        max_grad_norm: clip the gradient of all parameters to this 2-norm before the update, as
            ``torch.nn.utils.clip_grad_norm_`` (and Lightning's ``gradient_clip_val``) does; ``0`` = off.
            Done here so that it runs over the flat gradient: leave Lightning's clipping off.

    The buffers are built at the first step (after Lightning has moved the model to its device and
    wrapped it for DDP, and after a resumed run has loaded its state), and again whenever the
    parameters or the optimiser state stop being views of them.
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 1e-2, *, max_grad_norm: float = 0.0, **kwargs):
        super().__init__(params, lr=lr, weight_decay=weight_decay, **kwargs)
        # a fused AdamW tells GradScaler (16-mixed) to leave the unscaling to its step; this step clips
        # first, so it needs unscaled gradients whatever the kernel: the scaler unscales before it
        self._step_supports_amp_scaling = False
        self.max_grad_norm = float(max_grad_norm)
        self._layout: _Layout | None = None
        self.flat_steps = 0  # steps taken by the flat path (the rest fell back to the per-tensor AdamW)

    # --- the buffers ---------------------------------------------------------------------------------

    def _groups_supported(self) -> bool:
        return all(not g["amsgrad"] and not g["capturable"] and not g["differentiable"] for g in self.param_groups)

    def _intact(self, layout: _Layout) -> bool:
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                if index >= len(layout.params) or p is not layout.params[index] or p.data_ptr() != layout.pointers[index]:
                    return False
                state = self.state.get(p)
                if (not state or state.get("exp_avg") is not layout.moments[index][0]
                        or state.get("exp_avg_sq") is not layout.moments[index][1]
                        or state.get("step") is not layout.steps[index]):
                    return False
                index += 1
        return index == len(layout.params)

    def _build(self) -> _Layout | None:
        """Flat buffers for the parameters, their moments and gradients; ``None`` where not possible
        (unsupported parameters or options, or step counts that differ inside a group)."""
        params = [p for g in self.param_groups for p in g["params"]]
        if not self._groups_supported() or not _flat_eligible(params):
            return None
        group_steps = []
        for group in self.param_groups:
            states = [self.state.get(p) for p in group["params"]]
            if any(states) and not all(s and "step" in s and "exp_avg" in s and "exp_avg_sq" in s for s in states):
                return None  # some parameters have taken steps, others not
            counts = {float(s["step"]) for s in states} if any(states) else {0.0}
            if len(counts) != 1:
                return None
            fused = bool(group.get("fused"))  # torch keeps a fused group's counts on the device, in float32
            group_steps.append(torch.tensor(counts.pop(), dtype=torch.float32 if fused else _scalar_dtype(),
                                            device=params[0].device if fused else "cpu"))
        flat = flatten_parameters(params)
        moments = [torch.zeros_like(flat), torch.zeros_like(flat)]
        grad = torch.empty_like(flat)
        pointers, views, steps, segments, offset = [], [], [], [], 0
        for index, (group, step) in enumerate(zip(self.param_groups, group_steps)):
            start = offset
            for p in group["params"]:
                view = tuple(m[offset : offset + p.numel()].view(p.shape) for m in moments)
                earlier = self.state.get(p)
                if earlier:  # a resumed run's moments, or the per-tensor path's
                    view[0].copy_(earlier["exp_avg"])
                    view[1].copy_(earlier["exp_avg_sq"])
                self.state[p] = {"step": step, "exp_avg": view[0], "exp_avg_sq": view[1]}
                pointers.append(p.data_ptr())
                views.append(view)
                steps.append(step)
                offset += p.numel()
            segments.append(_Segment(index, start, offset, (flat, grad, *moments), step))
        return _Layout(params, pointers, views, steps, segments, grad)

    def _unshare_steps(self) -> None:
        """Give every parameter its own step count again (the per-tensor AdamW increments each)."""
        if self._layout is not None:
            for p in self._layout.params:
                state = self.state.get(p)
                if state and "step" in state:
                    state["step"] = state["step"].clone()
            self._layout = None

    # --- the step ------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for g in self.param_groups for p in g["params"]]
        if any(g is None or g.is_sparse for g in grads):
            return self._per_tensor_step(loss)
        if self._layout is None or not self._intact(self._layout):
            self._layout = self._build()
            if self._layout is None:
                return self._per_tensor_step(loss)
        layout = self._layout
        torch.cat([g.reshape(-1) for g in grads], out=layout.grad)
        if self.max_grad_norm > 0:  # torch.nn.utils.clip_grad_norm_'s formula, on the whole gradient
            total = torch.linalg.vector_norm(layout.grad, 2)
            layout.grad.mul_(torch.clamp(self.max_grad_norm / (total + 1e-6), max=1.0))
        for segment in layout.segments:
            group = self.param_groups[segment.group]
            beta1, beta2 = group["betas"]
            fused = bool(group.get("fused"))  # one kernel over the whole segment
            buffers = [[b] for b in (segment.param, segment.grad, segment.exp_avg, segment.exp_avg_sq)] if fused else segment.chunks
            adamw_update(*buffers[:2], *buffers[2:], [], [segment.step] if fused else segment.chunk_steps,
                         foreach=False, capturable=False, differentiable=False, fused=fused,
                         has_complex=False, amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
                         weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"])
            if not fused:
                segment.step += 1
        self.flat_steps += 1
        return loss

    def _per_tensor_step(self, loss):
        """torch's AdamW step, after ``clip_grad_norm_`` (what the trainer would do without this class)."""
        self._unshare_steps()
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for g in self.param_groups for p in g["params"]], self.max_grad_norm)
        super().step()
        return loss

    # --- checkpoints ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """torch's AdamW ``state_dict``; each parameter's step count a tensor of its own (the flat path
        shares one per group, which a per-tensor AdamW loading the file would increment once per tensor)."""
        state = super().state_dict()
        state["state"] = {k: {**v, "step": v["step"].clone()} if "step" in v else v for k, v in state["state"].items()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._layout = None


class FlatEMA:
    """The weight EMA's update as a ``multi_avg_fn`` for :class:`torch.optim.swa_utils.AveragedModel`
    (what Lightning's ``WeightAveraging`` runs after every step): ``a ← a + (c − a)(1 − β)`` with the
    warmed-up ``β = min(decay, (1 + n) / (10 + n))``, the same expression per element as the per-tensor
    update, but over runs of tensors that lie back to back in memory in both lists (all of them when the
    averaged model was flattened in the order of the optimiser's buffer, a few when the orders differ),
    so a handful of kernels instead of four per tensor."""

    def __init__(self, decay: float):
        self.decay = decay
        self._key = None
        self._pieces: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def beta(self, num_averaged) -> float:
        n = float(num_averaged)
        return min(self.decay, (1.0 + n) / (10.0 + n))

    def __call__(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        weight = 1.0 - self.beta(num_averaged)
        for a, c, difference in self._chunks(averaged, current):
            # a + (c - a) * weight, as the per-tensor update computes it (the same roundings), in place
            torch.sub(c, a, out=difference).mul_(weight)
            a.add_(difference)

    def _chunks(self, averaged, current):
        """The runs of :func:`_paired_runs` in pieces of at most ``CHUNK`` elements, each with a
        scratch tensor of its shape (one buffer of ``CHUNK`` elements for all), cached while the
        tensors stay where they are."""
        key = (tuple(t.data_ptr() for t in averaged), tuple(t.data_ptr() for t in current))
        if key != self._key:
            averaged, current = [t.detach() for t in averaged], [t.detach() for t in current]
            pieces = []
            for a, c in _paired_runs(averaged, current):
                if a.is_contiguous() and c.is_contiguous():
                    pieces += zip(_chunks(a), _chunks(c))
                else:
                    pieces.append((a, c))
            size = max((a.numel() for a, _ in pieces), default=0)
            scratch = {}
            for a, _ in pieces:
                if (a.device, a.dtype) not in scratch:
                    scratch[a.device, a.dtype] = torch.empty(size, dtype=a.dtype, device=a.device)
            self._pieces = [(a, c, scratch[a.device, a.dtype][: a.numel()].view(a.shape)) for a, c in pieces]
            self._key = key
        return self._pieces


def _follows(previous: torch.Tensor, tensor: torch.Tensor) -> bool:
    """Whether contiguous ``tensor`` starts where contiguous ``previous`` ends, in the same storage."""
    return (tensor.is_contiguous() and tensor.dtype == previous.dtype
            and tensor.untyped_storage().data_ptr() == previous.untyped_storage().data_ptr()
            and tensor.storage_offset() == previous.storage_offset() + previous.numel())


def _run_view(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One 1-d tensor over the memory of ``tensors`` (back to back in one storage), or the one tensor."""
    if len(tensors) == 1:
        return tensors[0]
    first = tensors[0]
    return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(), (sum(t.numel() for t in tensors),))


def _paired_runs(averaged, current) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``averaged`` and ``current`` cut into the longest runs that are back to back in both."""
    runs, start = [], 0
    for i in range(1, len(averaged) + 1):
        if i == len(averaged) or not (averaged[i - 1].is_contiguous() and current[i - 1].is_contiguous()
                                      and _follows(averaged[i - 1], averaged[i]) and _follows(current[i - 1], current[i])):
            runs.append((_run_view(averaged[start:i]), _run_view(current[start:i])))
            start = i
    return runs


class FlatAveragedModel(AveragedModel):
    """The weight EMA's :class:`~torch.optim.swa_utils.AveragedModel` (what Lightning's
    ``WeightAveraging`` keeps; the same ``state_dict``) with its parameters in one buffer and
    :class:`FlatEMA` as its update. :meth:`update_parameters` does what ``AveragedModel``'s does for
    ``use_buffers=False`` (copy at the first update, average after, buffers copied), without walking the
    module tree twice a step: it keeps both models' parameter lists (a module's parameters do not change
    during training), which on the denoiser cost more than the averaging itself."""

    def __init__(self, model: torch.nn.Module, decay: float, device=None):
        super().__init__(model, device=device, multi_avg_fn=FlatEMA(decay), use_buffers=False)
        flatten_parameters(list(self.module.parameters()))
        self._lists = None

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        if self._lists is None or self._lists[0] is not model:
            averaged, current = list(self.module.parameters()), list(model.parameters())
            same = len(averaged) == len(current) and all(a.device == c.device and a.dtype == c.dtype
                                                         for a, c in zip(averaged, current))
            self._lists = (model, averaged, current, list(self.module.buffers()), list(model.buffers()), same)
        _, averaged, current, own_buffers, model_buffers, same = self._lists
        if not same:  # another device or dtype: AveragedModel's own update (copies each tensor over)
            return super().update_parameters(model)
        if self.n_averaged == 0:
            for a, c in zip(averaged, current):
                a.copy_(c)
        else:
            self.multi_avg_fn(averaged, current, self.n_averaged)
        for own, theirs in zip(own_buffers, model_buffers):  # not averaged: kept in sync
            own.copy_(theirs)
        self.n_averaged += 1
