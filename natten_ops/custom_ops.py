"""The C++/CUDA kernels as ``torch.library`` custom ops, and the backend object that drives them.

Every kernel family (a JIT-built extension exporting the entry points of ``csrc/ops.h``: ``cpu``,
``cuda``, and in tests the CUDA kernels' CPU harness) becomes six custom ops in the ``natten_ops``
namespace, ``natten_ops::<family>_<entry point>``:

    <family>_na2d_forward(q, k, v, groups, rpbs, scale) -> (out, lse)     autograd: <family>_na2d_backward
    <family>_na2d_backward(dout, q, k, v, out, lse, groups, rpbs, scale) -> [dq, dk, dv, drpb per group]
    <family>_na2d_qk_forward(q, k, groups, rpb) -> attn                   autograd: <family>_na2d_qk_backward
    <family>_na2d_qk_backward(dattn, q, k, groups, has_rpb) -> [dq, dk, drpb]
    <family>_na2d_av_forward(attn, v, groups) -> out                      autograd: <family>_na2d_av_backward
    <family>_na2d_av_backward(dout, attn, v, groups) -> [dattn, dv]

Layouts: q, k, v, out ``[B, heads, H, W, D]``; attn ``[B, heads, H, W, k_h * k_w]``; lse ``[B, heads, H, W]``
(float32 for half inputs); ``groups`` is the flat int list ``(head_begin, head_end, k_h, k_w, d_h, d_w)`` per
head group (the kernels' ``group_table``); ``rpbs`` one ``[group_heads, 2 k_h - 1, 2 k_w - 1]`` table per
group, an empty tensor for a group without one (its gradient is empty too).

Each op has a fake (meta) implementation that computes output shapes without the extension, and the
forward ops have registered autograd, so ``torch.compile(fullgraph=True)``, ``torch.export`` and CUDA-graph
capture see them as single graph nodes. The extension is built and loaded on an op's first real call,
never at import; the wrappers make no host synchronisation (the group table is built on the host).
"""

# No `from __future__ import annotations`: torch.library reads the ops' annotations at runtime.
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from natten_ops import _build
from natten_ops.groups import HeadGroup

GROUP_FIELDS = 6  # (head_begin, head_end, k_h, k_w, d_h, d_w)


def flat_group_table(groups: Sequence[HeadGroup]) -> list[int]:
    """The ``groups`` argument of the ops: ``(head_begin, head_end, k_h, k_w, d_h, d_w)`` per group, flat."""
    table, head = [], 0
    for g in groups:
        table += [head, head + g.heads, *g.kernel_size, *g.dilation]
        head += g.heads
    return table


def _table_tensor(groups: list[int]) -> Tensor:
    """``[G, 6]`` int64 on the CPU, as the kernels read it."""
    return torch.tensor(groups, dtype=torch.int64).view(-1, GROUP_FIELDS)


def _bias_or_empty(rpb: Optional[Tensor], dtype: torch.dtype, like: Tensor) -> Tensor:
    """The ops' bias argument: ``rpb`` rounded to ``dtype`` (the input's, as the reference does), then as a
    contiguous tensor of ``like``'s dtype; an empty tensor for no bias."""
    return rpb.to(dtype).to(like.dtype).contiguous() if rpb is not None else like.new_empty(0)


class KernelOps:
    """The six custom ops of one kernel family, ``natten_ops::<family>_*``; ``extension`` returns the
    :class:`natten_ops._build.Extension` that the real implementations load on first use."""

    def __init__(self, family: str, device_type: str, extension: Callable[[], _build.Extension]):
        self.family, self._extension = family, extension
        define = _definer(family, device_type)

        def fused_forward(q: Tensor, k: Tensor, v: Tensor, groups: list[int], rpbs: list[Tensor],
                          scale: float) -> tuple[Tensor, Tensor]:
            out, lse = self.module().na2d_forward(q, k, v, _table_tensor(groups), rpbs, scale)
            return out, lse

        def fused_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, groups: list[int],
                           rpbs: list[Tensor], scale: float) -> list[Tensor]:
            return self.module().na2d_backward(dout, q, k, v, out, lse, _table_tensor(groups), rpbs, scale)

        def qk_forward(q: Tensor, k: Tensor, groups: list[int], rpb: Tensor) -> Tensor:
            return self.module().na2d_qk_forward(q, k, _table_tensor(groups), rpb)

        def qk_backward(dattn: Tensor, q: Tensor, k: Tensor, groups: list[int], has_rpb: bool) -> list[Tensor]:
            return self.module().na2d_qk_backward(dattn, q, k, _table_tensor(groups), has_rpb)

        def av_forward(attn: Tensor, v: Tensor, groups: list[int]) -> Tensor:
            return self.module().na2d_av_forward(attn, v, _table_tensor(groups))

        def av_backward(dout: Tensor, attn: Tensor, v: Tensor, groups: list[int]) -> list[Tensor]:
            return self.module().na2d_av_backward(dout, attn, v, _table_tensor(groups))

        self.na2d_forward = define("na2d_forward", fused_forward, _fake_fused_forward)
        self.na2d_backward = define("na2d_backward", fused_backward, _fake_fused_backward)
        self.na2d_qk_forward = define("na2d_qk_forward", qk_forward, _fake_qk_forward)
        self.na2d_qk_backward = define("na2d_qk_backward", qk_backward, _fake_qk_backward)
        self.na2d_av_forward = define("na2d_av_forward", av_forward, _fake_av_forward)
        self.na2d_av_backward = define("na2d_av_backward", av_backward, _fake_av_backward)
        self._register_autograd()

    def module(self):
        """The loaded extension (built on the first call: :func:`natten_ops._build.load`)."""
        return _build.load(self._extension())

    def status(self) -> str:
        """``"built"``, ``"buildable (not built yet)"`` or ``"unavailable: why"``; never compiles."""
        try:
            return _build.build_status(self._extension())
        except _build.BuildError as err:  # e.g. no GPU architecture to compile for
            return f"unavailable: {err}"

    def ensure_built(self) -> Optional[str]:
        """Build and load the extension now; None, or why it failed."""
        try:
            self.module()
        except _build.BuildError as err:
            return str(err)
        return None

    def _register_autograd(self) -> None:
        def fused_setup(ctx, inputs, output):
            q, k, v, groups, rpbs, scale = inputs
            out, lse = output
            ctx.groups, ctx.scale, ctx.has_bias = groups, scale, [r.numel() > 0 for r in rpbs]
            ctx.mark_non_differentiable(lse)
            ctx.save_for_backward(q, k, v, out, lse, *rpbs)

        def fused_grad(ctx, grad_out, _grad_lse):
            q, k, v, out, lse, *rpbs = ctx.saved_tensors
            dq, dk, dv, *drpbs = self.na2d_backward(grad_out.contiguous(), q, k, v, out, lse, ctx.groups, rpbs,
                                                    ctx.scale)
            return dq, dk, dv, None, [d if has else None for d, has in zip(drpbs, ctx.has_bias)], None

        def qk_setup(ctx, inputs, output):
            q, k, groups, rpb = inputs
            ctx.groups, ctx.has_bias = groups, rpb.numel() > 0
            ctx.save_for_backward(q, k)

        def qk_grad(ctx, grad_attn):
            q, k = ctx.saved_tensors
            dq, dk, drpb = self.na2d_qk_backward(grad_attn.contiguous(), q, k, ctx.groups, ctx.has_bias)
            return dq, dk, None, drpb if ctx.has_bias else None

        def av_setup(ctx, inputs, output):
            attn, v, groups = inputs
            ctx.groups = groups
            ctx.save_for_backward(attn, v)

        def av_grad(ctx, grad_out):
            attn, v = ctx.saved_tensors
            dattn, dv = self.na2d_av_backward(grad_out.contiguous(), attn, v, ctx.groups)
            return dattn, dv, None

        self.na2d_forward.register_autograd(fused_grad, setup_context=fused_setup)
        self.na2d_qk_forward.register_autograd(qk_grad, setup_context=qk_setup)
        self.na2d_av_forward.register_autograd(av_grad, setup_context=av_setup)


def _definer(family: str, device_type: str):
    def define(entry: str, impl, fake):
        op = torch.library.custom_op(f"natten_ops::{family}_{entry}", impl, mutates_args=(), device_types=device_type)
        op.register_fake(fake)
        return op
    return define


# ---------------------------------------------------------------------------------------------
# Fake implementations: output shapes and dtypes only (the kernels allocate contiguous outputs)


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # float32 for half inputs, else the input's


def _fake_fused_forward(q, k, v, groups, rpbs, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:4], dtype=_lse_dtype(q.dtype))


def _fake_fused_backward(dout, q, k, v, out, lse, groups, rpbs, scale):
    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), *(torch.empty_like(r) for r in rpbs)]


def _fake_qk_forward(q, k, groups, rpb):
    kernel_h, kernel_w = groups[2], groups[3]
    return q.new_empty((*q.shape[:4], kernel_h * kernel_w))


def _fake_qk_backward(dattn, q, k, groups, has_rpb):
    kernel_h, kernel_w = groups[2], groups[3]
    drpb = q.new_empty((q.shape[1], 2 * kernel_h - 1, 2 * kernel_w - 1)) if has_rpb else q.new_empty(0)
    return [torch.empty_like(q), torch.empty_like(k), drpb]


def _fake_av_forward(attn, v, groups):
    return torch.empty_like(v)


def _fake_av_backward(dout, attn, v, groups):
    return [torch.empty_like(attn), torch.empty_like(v)]


# ---------------------------------------------------------------------------------------------
# The backend


_FAMILIES: dict[str, KernelOps] = {}


def kernel_ops(family: str, device_type: str, extension: Callable[[], _build.Extension]) -> KernelOps:
    """The custom ops of ``family``, defined on first request (an op name can be defined once per process)."""
    if family not in _FAMILIES:
        _FAMILIES[family] = KernelOps(family, device_type, extension)
    return _FAMILIES[family]


class CompiledBackend:
    """A natten_ops backend over one kernel family's custom ops. Half inputs on the CPU are computed in
    float32 (an rpb is rounded to q's dtype first, as the reference does); ``max_head_dim`` bounds the fused kernels' head_dim (None: any).

    Args:
        name: the backend's name (``"cpu"``, ``"cuda"``); also the ops' family name (``-`` becomes ``_``).
        device_type: the device its tensors must be on.
        extension: returns the extension to build and load (may raise ``BuildError``, e.g. no GPU arch).
        dtypes: the input dtypes it takes.
    """

    def __init__(self, name: str, device_type: str, extension: Callable[[], _build.Extension],
                 dtypes: tuple[torch.dtype, ...], max_head_dim: Optional[int] = None):
        self.name, self.device_type, self.dtypes, self.max_head_dim = name, device_type, dtypes, max_head_dim
        self.ops = kernel_ops(name.replace("-", "_"), device_type, extension)

    def status(self) -> str:
        """Build state of the kernels: ``"built"``, ``"buildable (not built yet)"`` or ``"unavailable: why"``."""
        return self.ops.status()

    def unavailable_reason(self, op: str, device: torch.device, dtype: torch.dtype, needs_grad: bool,
                           head_dim: Optional[int] = None) -> Optional[str]:
        """Why this backend cannot run ``op`` on such inputs, or None (kernels that are not built yet but
        can be count as available: the first call builds them). Never compiles."""
        if device.type != self.device_type:
            return f"the {self.name} backend runs on {self.device_type} tensors, the input is on {device}"
        if dtype not in self.dtypes:
            return f"the {self.name} backend takes {[str(d) for d in self.dtypes]}, the input is {dtype}"
        if op == "na2d" and self.max_head_dim is not None and head_dim is not None and head_dim > self.max_head_dim:
            return f"the {self.name} backend's fused na2d takes head_dim <= {self.max_head_dim}, got {head_dim}"
        status = self.status()
        return status.removeprefix("unavailable: ") if status.startswith("unavailable") else None

    def ensure_ready(self) -> Optional[str]:
        """Build and load the kernels if needed (a call is about to use them); None, or why that failed."""
        return self.ops.ensure_built()

    def _compute_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return torch.float32 if self.device_type == "cpu" and dtype in (torch.float16, torch.bfloat16) else dtype

    def na2d(self, q: Tensor, k: Tensor, v: Tensor, groups: Sequence[HeadGroup], scale: float) -> Tensor:
        q_, k_, v_ = (x.to(self._compute_dtype(q.dtype)).contiguous() for x in (q, k, v))
        rpbs = [_bias_or_empty(g.rpb, q.dtype, q_) for g in groups]
        out, _ = self.ops.na2d_forward(q_, k_, v_, flat_group_table(groups), rpbs, scale)
        return out.to(q.dtype)

    def na2d_qk(self, q: Tensor, k: Tensor, kernel_size, dilation, rpb: Optional[Tensor]) -> Tensor:
        q_, k_ = (x.to(self._compute_dtype(q.dtype)).contiguous() for x in (q, k))
        groups = flat_group_table([HeadGroup(q.shape[1], kernel_size, dilation)])
        attn = self.ops.na2d_qk_forward(q_, k_, groups, _bias_or_empty(rpb, q.dtype, q_))
        return attn.to(q.dtype)

    def na2d_av(self, attn: Tensor, v: Tensor, kernel_size, dilation) -> Tensor:
        dtype = self._compute_dtype(v.dtype)
        groups = flat_group_table([HeadGroup(v.shape[1], kernel_size, dilation)])
        out = self.ops.na2d_av_forward(attn.to(dtype).contiguous(), v.to(dtype).contiguous(), groups)
        return out.to(v.dtype)
