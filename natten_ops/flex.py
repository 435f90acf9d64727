"""torch ``flex_attention`` backend: the comparison peer in benchmarks and a fallback on GPUs.

Neighborhood attention becomes flex attention over the flattened ``H*W`` tokens with:

- a ``mask_mod`` that admits key ``(a, c)`` for query ``(i, j)`` iff both axes are in the query's
  window (same dilation group, within ``k`` dilated steps of the clamped window start), per head,
  so Hydra head groups with different kernels and dilations share one call;
- a ``score_mod`` that adds the RPB entry ``rpb[h, (k_h-1) + (a-i)/d_h, (k_w-1) + (c-j)/d_w]`` from
  one flat table of all groups (indices clamped so masked-out pairs read a valid entry).

The flex kernel is compiled with ``torch.compile`` on first use and block masks are cached per
(shape, groups, device). torch has no flex_attention backward on the CPU: there this backend serves
inference only, and asking it for gradients is an error.

NaN and Inf: torch's CPU flex kernel does not propagate them as the reference does (it drops a NaN in
q or k, spreads a NaN or Inf of v to queries whose window does not hold that key, returns 0 for a row
whose logits are all -inf, and fails to compile a NaN scale). On the CPU, a call whose inputs are not
all finite is therefore computed by ``natten_ops.reference`` (exact semantics; the check is one pass
over the inputs). On CUDA the inputs are not checked (that would synchronise every call): there NaN /
Inf handling is flex_attention's own.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from natten_ops import reference
from natten_ops.groups import HeadGroup

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # torch < 2.5
    create_block_mask = flex_attention = None


def unavailable_reason(op: str, device: torch.device, dtype: torch.dtype, needs_grad: bool,
                       head_dim: Optional[int] = None) -> Optional[str]:
    if flex_attention is None:
        return f"torch {torch.__version__} has no flex_attention (needs torch >= 2.5)"
    if op != "na2d":
        return "flex serves the fused na2d only"
    if device.type not in ("cpu", "cuda"):
        return f"flex_attention does not run on {device.type}"
    if device.type == "cpu" and needs_grad:
        return "torch's flex_attention has no backward on the CPU (use backend='cpu' for training)"
    if device.type == "cpu" and dtype in (torch.float16, torch.float64):
        return f"flex_attention on the CPU does not take {dtype} (float32 and bfloat16 only)"
    return None


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=None)
def _compiled_create_block_mask():
    # Compiled so the mask is evaluated block by block, never as a dense [heads, HW, HW] tensor.
    return torch.compile(create_block_mask)


def _window_start(pos: Tensor, length: int, kernel: Tensor, dilation: Tensor) -> Tensor:
    """Axis position of the first key in the window of ``pos`` (tensor form of na2d_index.h)."""
    group = pos % dilation
    group_length = (length - 1 - group) // dilation + 1
    start = torch.minimum((pos // dilation - kernel // 2).clamp(min=0), group_length - kernel)
    return group + dilation * start


class _Pattern:
    """Per-head window parameters as ``[heads]`` int64 tensors: ``kh, kw, dh, dw``."""

    def __init__(self, groups: Sequence[HeadGroup], device):
        per_head = [(g.kernel_size, g.dilation) for g in groups for _ in range(g.heads)]
        as_tensor = functools.partial(torch.tensor, dtype=torch.int64, device=device)
        self.kh = as_tensor([k[0] for k, _ in per_head])
        self.kw = as_tensor([k[1] for k, _ in per_head])
        self.dh = as_tensor([d[0] for _, d in per_head])
        self.dw = as_tensor([d[1] for _, d in per_head])


def _in_window(query, key, length: int, kernel, dilation):
    """Whether axis position ``key`` is in the window of ``query`` (same group, k dilated steps)."""
    offset = key - _window_start(query, length, kernel, dilation)
    return (offset >= 0) & (offset < kernel * dilation) & (offset % dilation == 0)


def _mask_mod(pattern: _Pattern, height: int, width: int):
    kh, kw, dh, dw = pattern.kh, pattern.kw, pattern.dh, pattern.dw

    def mask_mod(b, h, q_idx, kv_idx):
        rows = _in_window(q_idx // width, kv_idx // width, height, kh[h], dh[h])
        return rows & _in_window(q_idx % width, kv_idx % width, width, kw[h], dw[h])

    return mask_mod


def _bias_tables(groups: Sequence[HeadGroup], input_dtype, dtype, device) -> tuple[Tensor, Tensor]:
    """All groups' RPB tables flattened into one ``dtype`` vector (each rounded to the inputs' dtype
    first, the rule of every backend), and each head's offset into it."""
    chunks, offsets, start = [], [], 0
    for g in groups:
        kh, kw = g.kernel_size
        table = g.rpb if g.rpb is not None else torch.zeros(g.heads, 2 * kh - 1, 2 * kw - 1, device=device)
        chunks.append(table.to(input_dtype).to(dtype).reshape(-1))
        offsets += [start + head * (2 * kh - 1) * (2 * kw - 1) for head in range(g.heads)]
        start += table.numel()
    return torch.cat(chunks), torch.tensor(offsets, dtype=torch.int64, device=device)


def _bias_score_mod(groups: Sequence[HeadGroup], pattern: _Pattern, width: int, input_dtype, device):
    """``score + rpb[h, (k_h-1) + (a-i)/d_h, (k_w-1) + (c-j)/d_w]`` over flattened token indices (scores
    are float64 for float64 inputs, else float32)."""
    score_dtype = torch.float64 if input_dtype == torch.float64 else torch.float32
    table, offsets = _bias_tables(groups, input_dtype, score_dtype, device)
    kh, kw, dh, dw = pattern.kh, pattern.kw, pattern.dh, pattern.dw

    def score_mod(score, b, h, q_idx, kv_idx):
        qi, qj = q_idx // width, q_idx % width
        ki, kj = kv_idx // width, kv_idx % width
        row = torch.minimum((kh[h] - 1 + (ki - qi) // dh[h]).clamp(min=0), 2 * kh[h] - 2)
        col = torch.minimum((kw[h] - 1 + (kj - qj) // dw[h]).clamp(min=0), 2 * kw[h] - 2)
        return score + table[offsets[h] + row * (2 * kw[h] - 1) + col]

    return score_mod


def _all_finite(q: Tensor, k: Tensor, v: Tensor, groups: Sequence[HeadGroup], scale: float) -> bool:
    """Whether the inputs, bias tables and scale hold no NaN or Inf."""
    tensors = [q, k, v, *(g.rpb for g in groups if g.rpb is not None)]
    return math.isfinite(scale) and all(bool(torch.isfinite(t).all()) for t in tensors)


@functools.lru_cache(maxsize=32)
def _block_mask(signature: tuple, heads: int, height: int, width: int, device: torch.device):
    pattern = _Pattern([HeadGroup(n, k, d) for n, k, d in signature], device)
    tokens = height * width
    mask = _compiled_create_block_mask()(_mask_mod(pattern, height, width), B=None, H=heads, Q_LEN=tokens,
                                         KV_LEN=tokens, device=device)
    return mask, pattern


def na2d(q: Tensor, k: Tensor, v: Tensor, groups: Sequence[HeadGroup], scale: float) -> Tensor:
    """Fused NA via flex_attention; same contract as ``natten_ops.reference.na2d``."""
    if q.device.type == "cpu" and not _all_finite(q, k, v, groups, scale):
        return reference.na2d(q, k, v, groups, scale)
    B, heads, H, W, D = q.shape
    signature = tuple((g.heads, g.kernel_size, g.dilation) for g in groups)
    block_mask, pattern = _block_mask(signature, heads, H, W, q.device)
    score_mod = (_bias_score_mod(groups, pattern, W, q.dtype, q.device) if any(g.rpb is not None for g in groups)
                 else None)
    flat = [x.reshape(B, heads, H * W, D) for x in (q, k, v)]
    out = _compiled_flex()(*flat, score_mod=score_mod, block_mask=block_mask, scale=scale)
    return out.reshape(B, heads, H, W, D)
