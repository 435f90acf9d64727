"""The window rule of neighborhood attention along one axis, as index tables.

Query ``i`` of an axis of length ``L`` with kernel ``k`` and dilation ``d`` belongs to dilation group
``g = i % d`` (the positions ``g, g + d, ...``, ``L_g`` of them) and attends the ``k`` positions of its group
starting at ``g + d * clamp(i // d - k // 2, 0, L_g - k)``: centred where it can be, shifted inwards at
the borders. The reference backend gathers with these tables; other packages use them to draw what a
query attends (``stylenat attention-map``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def window_start(length: int, kernel: int, dilation: int, device=None) -> Tensor:
    """First key position of every query's window along one axis.

    Returns a ``[length]`` int64 tensor: for query ``i`` (group ``g = i % d``, in-group ``t = i // d``)
    the axis position ``g + d * clamp(t - k//2, 0, L_g - k)``.
    """
    i = torch.arange(length, device=device)
    group, t = i % dilation, i // dilation
    group_length = (length - 1 - group) // dilation + 1
    start = torch.minimum((t - kernel // 2).clamp(min=0), group_length - kernel)
    return group + dilation * start


def window_indices(length: int, kernel: int, dilation: int, device=None) -> tuple[Tensor, Tensor]:
    """Key positions and RPB indices of every query along one axis.

    Returns ``(keys, bias_index)``, both ``[length, kernel]`` int64: ``keys[i, u]`` is the axis position
    of slot ``u`` of query ``i``; ``bias_index[i, u] = (k - 1) + (keys[i, u] - i) / d`` in ``[0, 2k-2]``.
    """
    start = window_start(length, kernel, dilation, device)
    keys = start[:, None] + dilation * torch.arange(kernel, device=device)[None, :]
    query = torch.arange(length, device=device)[:, None]
    bias_index = (kernel - 1) + torch.div(keys - query, dilation, rounding_mode="floor")
    return keys, bias_index
