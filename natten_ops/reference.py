"""Pure-PyTorch neighborhood attention: the ground truth every other backend is tested against.

Gather-based and deliberately plain: it takes, per axis, the table of key positions each query
attends (:func:`natten_ops.window_indices`), gathers the ``k_h * k_w`` keys and values of every query
and runs an ordinary softmax. Works on any device and dtype and is differentiable through autograd. It
materialises ``[B, heads, H, W, k_h*k_w, head_dim]`` tensors, so it is memory-hungry by design.

Layouts (the window rule is :func:`window_indices`, the same as ``csrc/na2d_index.h``):
    q, k, v, out: [B, heads, H, W, head_dim]
    attn / logits: [B, heads, H, W, k_h * k_w], slot u = u_row * k_w + u_col
    rpb: [heads, 2*k_h - 1, 2*k_w - 1]
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from natten_ops.groups import HeadGroup
from natten_ops.windows import window_indices


def _gather_neighbors(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``[B, h, H, W, D]`` -> ``[B, h, H, W, k_h*k_w, D]``: each query's neighborhood of ``x``."""
    neighbors = x[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # [B, h, H, W, kh, kw, D]
    return neighbors.flatten(4, 5)


def _bias(rpb: Tensor, row_bias: Tensor, col_bias: Tensor) -> Tensor:
    """``[h, 2kh-1, 2kw-1]`` -> ``[h, H, W, k_h*k_w]`` bias of every (query, slot)."""
    bias = rpb[:, row_bias[:, None, :, None], col_bias[None, :, None, :]]  # [h, H, W, kh, kw]
    return bias.flatten(3, 4)


def na2d_qk(q: Tensor, k: Tensor, kernel_size: tuple[int, int], dilation: tuple[int, int],
            rpb: Tensor | None = None) -> Tensor:
    """Unscaled logits ``[B, h, H, W, k_h*k_w]`` of q against its neighborhood of k, plus ``rpb``."""
    H, W = q.shape[2], q.shape[3]
    rows, row_bias = window_indices(H, kernel_size[0], dilation[0], q.device)
    cols, col_bias = window_indices(W, kernel_size[1], dilation[1], q.device)
    logits = torch.einsum("bhijd,bhijud->bhiju", q, _gather_neighbors(k, rows, cols))
    if rpb is not None:
        logits = logits + _bias(rpb, row_bias, col_bias).to(logits.dtype)
    return logits


def na2d_av(attn: Tensor, v: Tensor, kernel_size: tuple[int, int], dilation: tuple[int, int]) -> Tensor:
    """``sum_u attn[..., u] * v[neighbor u]``: ``[B, h, H, W, k_h*k_w]`` x v -> ``[B, h, H, W, D]``."""
    H, W = v.shape[2], v.shape[3]
    rows, _ = window_indices(H, kernel_size[0], dilation[0], v.device)
    cols, _ = window_indices(W, kernel_size[1], dilation[1], v.device)
    return torch.einsum("bhiju,bhijud->bhijd", attn, _gather_neighbors(v, rows, cols))


def na2d(q: Tensor, k: Tensor, v: Tensor, groups: Sequence[HeadGroup], scale: float) -> Tensor:
    """Fused neighborhood attention over head groups: ``softmax(scale * q.k + rpb) @ v`` per group.

    ``groups`` split the heads of q/k/v into contiguous slices, each with its own kernel, dilation and
    optional RPB table; the result is ``[B, heads, H, W, D]``.
    """
    outputs = []
    head = 0
    for group in groups:
        sl = slice(head, head + group.heads)
        logits = na2d_qk(q[:, sl] * scale, k[:, sl], group.kernel_size, group.dilation, group.rpb)
        attn = torch.softmax(logits, dim=-1)
        outputs.append(na2d_av(attn, v[:, sl], group.kernel_size, group.dilation))
        head += group.heads
    return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
