"""The Triton kernels as ``torch.library`` custom ops, with fake (meta) implementations and autograd.

    natten_ops::triton_na2d_forward(q, k, v, bias, table, groups, scale, tf32) -> (out, lse)
    natten_ops::triton_na2d_backward(grad_out, q, k, v, out, lse, bias, table, groups, scale, tf32,
                                     bias_grad) -> (dq, dk, dv, dbias)

``groups`` is the flat int list ``[heads, k_h, k_w, d_h, d_w, has_rpb] * G`` (the launch geometry);
``table`` is the same per head on the device (``kernels`` docstring); ``bias`` is every group's RPB
table flattened into one float32 vector (empty without RPB). The ops are ``torch.library.triton_op``
where torch has it (>= 2.6), so ``torch.compile`` traces into the kernels; on older torch they are
plain custom ops around the same launches.
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
from torch import Tensor

from natten_ops.triton import kernels

_TRITON_OP = hasattr(torch.library, "triton_op") and hasattr(torch.library, "wrap_triton")
_custom_op = torch.library.triton_op if _TRITON_OP else torch.library.custom_op
_launch = torch.library.wrap_triton if _TRITON_OP else (lambda kernel: kernel)

GROUP_FIELDS = 6  # heads, k_h, k_w, d_h, d_w, has_rpb
RPB_TILE = (8, 16)  # query tile of the dRPB kernel (128 queries; one tile per group of the interpreter tests)


def _unpack(groups: Sequence[int]) -> list[tuple[int, ...]]:
    return [tuple(groups[i:i + GROUP_FIELDS]) for i in range(0, len(groups), GROUP_FIELDS)]


def _tiles(groups: Sequence[int], H: int, W: int, th: int, tw: int) -> int:
    """Programs per (batch, head): the most (dilation group x tile) pairs any head needs."""
    return max(dh * dw * triton.cdiv(triton.cdiv(H, dh), th) * triton.cdiv(triton.cdiv(W, dw), tw)
               for _, _, _, dh, dw, _ in _unpack(groups))


def _block_d(D: int) -> int:
    return max(16, triton.next_power_of_2(D))


def _unit_stride(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _strides(*tensors: Tensor) -> list[int]:
    return [s for t in tensors for s in t.stride()[:4]]


@_custom_op("natten_ops::triton_na2d_forward", mutates_args=())
def na2d_forward(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, table: Tensor, groups: list[int], scale: float,
                 tf32: bool) -> tuple[Tensor, Tensor]:
    q, k, v = (_unit_stride(x) for x in (q, k, v))
    B, heads, H, W, D = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((B, heads, H, W), dtype=torch.float32, device=q.device)

    def grid(meta):
        return _tiles(groups, H, W, meta["TH"], meta["TW"]), B * heads

    _launch(kernels.na2d_forward_kernel)[grid](
        q, k, v, out, lse, bias, table, *_strides(q, k, v, out), heads, H, W, D, scale,
        BLOCK_D=_block_d(D), HAS_BIAS=bias.numel() > 0, TF32=tf32 and q.dtype == torch.float32)
    return out, lse


@_custom_op("natten_ops::triton_na2d_backward", mutates_args=())
def na2d_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, bias: Tensor,
                  table: Tensor, groups: list[int], scale: float, tf32: bool,
                  bias_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    q, k, v = (_unit_stride(x) for x in (q, k, v))
    grad_out = grad_out.contiguous()
    B, heads, H, W, D = q.shape
    delta = (grad_out.float() * out.float()).sum(-1)  # [B, heads, H, W]: rowsum(dO * O) of the softmax backward
    dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    common = dict(BLOCK_D=_block_d(D), HAS_BIAS=bias.numel() > 0, TF32=tf32 and q.dtype == torch.float32)

    def grid(meta):
        return _tiles(groups, H, W, meta["TH"], meta["TW"]), B * heads

    strides = _strides(q, k, v, grad_out)
    _launch(kernels.na2d_backward_dq_kernel)[grid](
        q, k, v, grad_out, lse, delta, dq, bias, table, *strides, heads, H, W, D, scale, **common)
    _launch(kernels.na2d_backward_dkv_kernel)[grid](
        q, k, v, grad_out, lse, delta, dk, dv, bias, table, *strides, heads, H, W, D, scale, **common)
    dbias = torch.zeros_like(bias)
    if bias_grad and bias.numel() > 0:
        dbias = _rpb_grad(grad_out, q, k, v, lse, delta, bias, table, groups, scale, strides)
    return dq, dk, dv, dbias


def _rpb_grad(grad_out, q, k, v, lse, delta, bias, table, groups, scale, strides) -> Tensor:
    """Per-program partial tables ``[heads, programs, rows, cols]`` summed over programs (a fixed order),
    then each head's ``[2k_h - 1, 2k_w - 1]`` corner flattened in the layout of ``bias``."""
    B, heads, H, W, D = q.shape
    unpacked = _unpack(groups)
    rows = triton.next_power_of_2(max(2 * kh - 1 for _, kh, _, _, _, _ in unpacked))
    cols = triton.next_power_of_2(max(2 * kw - 1 for _, _, kw, _, _, _ in unpacked))
    th, tw = RPB_TILE
    programs = _tiles(groups, H, W, th, tw)
    partial = torch.zeros((heads, programs, rows, cols), dtype=torch.float32, device=q.device)
    _launch(kernels.na2d_backward_rpb_kernel)[(programs, heads)](
        q, k, v, grad_out, lse, delta, partial, bias, table, *strides, B, heads, H, W, D, scale,
        BLOCK_D=_block_d(D), ROWS=rows, COLS=cols, TH=th, TW=tw)
    summed = partial.sum(1)
    pieces, head = [], 0
    for n, kh, kw, _, _, has_rpb in unpacked:
        if has_rpb:
            pieces.append(summed[head:head + n, :2 * kh - 1, :2 * kw - 1].reshape(-1))
        head += n
    return torch.cat(pieces)


def _forward_fake(q, k, v, bias, table, groups, scale, tf32):
    B, heads, H, W, _ = q.shape
    return torch.empty(q.shape, dtype=q.dtype, device=q.device), q.new_empty((B, heads, H, W), dtype=torch.float32)


def _backward_fake(grad_out, q, k, v, out, lse, bias, table, groups, scale, tf32, bias_grad):
    return (*(torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3)), torch.empty_like(bias))


if not _TRITON_OP:  # triton_op derives its fake from the Python body; plain custom ops need one
    torch.library.register_fake("natten_ops::triton_na2d_forward")(_forward_fake)
    torch.library.register_fake("natten_ops::triton_na2d_backward")(_backward_fake)


def _setup_context(ctx, inputs, output):
    q, k, v, bias, table, groups, scale, tf32 = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, bias, table)
    ctx.groups, ctx.scale, ctx.tf32 = groups, scale, tf32
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, bias, table = ctx.saved_tensors
    bias_grad = ctx.needs_input_grad[3]
    dq, dk, dv, dbias = torch.ops.natten_ops.triton_na2d_backward(
        grad_out, q, k, v, out, lse, bias, table, ctx.groups, ctx.scale, ctx.tf32, bias_grad)
    return dq, dk, dv, dbias if bias_grad else None, None, None, None, None


torch.library.register_autograd("natten_ops::triton_na2d_forward", _backward, setup_context=_setup_context)
