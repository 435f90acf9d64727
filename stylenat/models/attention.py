"""Neighborhood-attention modules over channels-last tokens ``[B, H, W, C]``.

One implementation serves both model families:

- :class:`NeighborhoodAttention2D` — NAT / DiNAT: one kernel size and dilation for all heads,
  one RPB table ``rpb`` ``[heads, 2k-1, 2k-1]``.
- :class:`RelativePositionAttention` — StyleNAT's 4x4 stage: full attention with a relative-position
  bias table, for maps too small for a neighborhood.
- :class:`HydraNeighborhoodAttention` — StyleNAT: the heads split into contiguous groups, each with
  its own (kernel, dilation) and RPB table ``rpb.{i}`` ``[group_heads, 2k-1, 2k-1]``; all groups run in
  one ``natten_ops.na2d_grouped`` call.

Inputs smaller than ``kernel * dilation`` on an axis are zero-padded at the bottom/right before the
qkv projection and cropped after attention, as the reference NAT code did, so any input size works.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import natten_ops
from natten_ops import HeadGroup


def split_heads(num_heads: int, num_groups: int) -> list[int]:
    """Contiguous head counts per group; when uneven, the last groups get one extra head each.

    >>> split_heads(16, 2), split_heads(10, 4)
    ([8, 8], [2, 2, 3, 3])
    """
    if num_groups > num_heads:
        raise ValueError(f"cannot split {num_heads} heads into {num_groups} groups")
    base, extra = divmod(num_heads, num_groups)
    return [base + (1 if g >= num_groups - extra else 0) for g in range(num_groups)]


class _GroupedNeighborhoodAttention(nn.Module):
    """qkv -> neighborhood attention over head groups -> proj. Subclasses register ``rpb``."""

    def __init__(self, dim: int, num_heads: int, pattern: Sequence[tuple[int, int]], qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, backend: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if attn_drop:
            raise ValueError("attention dropout is not supported by the fused kernels; use attn_drop=0")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.pattern = [(int(k), int(d)) for k, d in pattern]
        self.group_heads = split_heads(num_heads, len(self.pattern))
        if len(set(self.group_heads)) > 1:
            warnings.warn(f"{num_heads} heads do not split evenly over {len(self.pattern)} groups; "
                          f"using {self.group_heads}", stacklevel=3)
        self.window = max(k * d for k, d in self.pattern)  # smallest input side without padding
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _rpb_tables(self) -> list[Tensor | None]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """``[B, H, W, C]`` -> ``[B, H, W, C]``."""
        B, H, W, C = x.shape
        pad_h, pad_w = max(0, self.window - H), max(0, self.window - W)
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        Hp, Wp = H + pad_h, W + pad_w
        qkv = self.qkv(x).reshape(B, Hp, Wp, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)  # each [B, heads, Hp, Wp, head_dim]
        groups = [HeadGroup(n, kd[0], kd[1], rpb)
                  for n, kd, rpb in zip(self.group_heads, self.pattern, self._rpb_tables())]
        x = natten_ops.na2d_grouped(q, k, v, groups, scale=self.scale, backend=self.backend)
        x = x.permute(0, 2, 3, 1, 4).reshape(B, Hp, Wp, C)
        if pad_h or pad_w:
            x = x[:, :H, :W]
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        groups = ", ".join(f"{n}x(k={k}, d={d})" for n, (k, d) in zip(self.group_heads, self.pattern))
        return f"dim={self.dim}, heads={self.num_heads}, groups=[{groups}], backend={self.backend!r}"


def _new_rpb(heads: int, kernel: int) -> nn.Parameter:
    table = nn.Parameter(torch.zeros(heads, 2 * kernel - 1, 2 * kernel - 1))
    nn.init.trunc_normal_(table, std=0.02)
    return table


class NeighborhoodAttention2D(_GroupedNeighborhoodAttention):
    """NAT/DiNAT attention: all heads share ``kernel_size`` and ``dilation``; parameters ``qkv``,
    ``rpb`` ``[heads, 2k-1, 2k-1]`` (when ``rel_pos_bias``), ``proj``."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 7, dilation: int = 1, qkv_bias: bool = True,
                 rel_pos_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0, backend: str = "auto"):
        super().__init__(dim, num_heads, [(kernel_size, dilation)], qkv_bias, attn_drop, proj_drop, backend)
        self.rpb = _new_rpb(num_heads, kernel_size) if rel_pos_bias else None

    def _rpb_tables(self):
        return [self.rpb]


class HydraNeighborhoodAttention(_GroupedNeighborhoodAttention):
    """StyleNAT's split-head attention: ``pattern`` lists the (kernel, dilation) of each head group, in
    head order; group ``i`` has its own RPB table ``rpb.{i}`` ``[group_heads, 2k-1, 2k-1]``."""

    def __init__(self, dim: int, num_heads: int, pattern: Sequence[tuple[int, int]] = ((7, 1),),
                 qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0, backend: str = "auto"):
        super().__init__(dim, num_heads, pattern, qkv_bias, attn_drop, proj_drop, backend)
        self.rpb = nn.ParameterList(_new_rpb(n, k) for n, (k, _) in zip(self.group_heads, self.pattern))

    def _rpb_tables(self):
        return list(self.rpb)


class RelativePositionAttention(nn.Module):
    """Full multi-head self-attention over an ``r x r`` map with a learned relative-position bias.

    The bias of query ``i`` and key ``j`` is ``rpb[head, (row_j - row_i) + r - 1, (col_j - col_i) + r - 1]``
    (the neighborhood-attention convention: key minus query), gathered through the non-persistent
    ``relative_position_index`` buffer ``[r*r, r*r]``. Parameters ``qkv``, ``rpb`` ``[heads, 2r-1, 2r-1]``
    and ``proj``.

    ``[B, r, r, C]`` -> ``[B, r, r, C]``.
    """

    def __init__(self, dim: int, num_heads: int, resolution: int, qkv_bias: bool = True):
        super().__init__()
        self.dim, self.num_heads, self.head_dim, self.resolution = dim, num_heads, dim // num_heads, resolution
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * resolution - 1, 2 * resolution - 1))
        nn.init.trunc_normal_(self.rpb, std=0.02)
        self.proj = nn.Linear(dim, dim)
        rows, cols = torch.meshgrid(torch.arange(resolution), torch.arange(resolution), indexing="ij")
        rows, cols = rows.flatten(), cols.flatten()
        index = (rows[None, :] - rows[:, None] + resolution - 1) * (2 * resolution - 1) \
            + (cols[None, :] - cols[:, None] + resolution - 1)
        self.register_buffer("relative_position_index", index, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        assert H == W == self.resolution, f"expected a {self.resolution}x{self.resolution} map, got {H}x{W}"
        qkv = self.qkv(x).view(B, H * W, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, heads, N, head_dim]
        bias = self.rpb.flatten(1)[:, self.relative_position_index]  # [heads, N, N]
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))  # scale head_dim^-0.5
        return self.proj(x.transpose(1, 2).reshape(B, H, W, C))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.num_heads}, resolution={self.resolution}"
