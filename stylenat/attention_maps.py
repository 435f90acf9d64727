"""Which pixels one query attends in each head group of a Hydra attention layer (``stylenat attention-map``).

:func:`hydra_attention` finds the layer; :func:`window_masks` gives each group's window from the window index
math (:func:`natten_ops.window_indices`); :func:`attention_probabilities` recomputes the
probabilities from the layer's qkv output captured with :func:`capture_output` (a forward hook);
:func:`overlay_attention` draws either over the sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from natten_ops import window_indices
from stylenat.models.attention import HydraNeighborhoodAttention
from stylenat.models.generator import Generator


def hydra_attention(G: Generator, resolution: int, block: int = 0) -> HydraNeighborhoodAttention:
    """The Hydra attention of style block ``block`` (0 or 1) at the ``resolution`` stage of ``G``."""
    stages = {s.resolution: s for s in G.synthesis.stages if isinstance(s.blocks[0].attn, HydraNeighborhoodAttention)}
    if resolution not in stages:
        raise ValueError(f"resolution {resolution} is not a neighborhood-attention stage of this generator; "
                         f"choose from {sorted(stages)}")
    if block not in (0, 1):
        raise ValueError(f"block must be 0 or 1 (each stage has two style blocks), got {block}")
    return stages[resolution].blocks[block].attn


def _check_query(resolution: int, x: int, y: int) -> None:
    if not (0 <= x < resolution and 0 <= y < resolution):
        raise ValueError(f"query ({x}, {y}) is outside the {resolution}x{resolution} map: x and y must lie "
                         f"in [0, {resolution - 1}]")


def window_masks(attn: HydraNeighborhoodAttention, resolution: int, x: int, y: int) -> list[Tensor]:
    """Per head group, bool ``[resolution, resolution]``: the keys that the query at column ``x``, row
    ``y`` attends (maps smaller than a group's window are padded by the layer, and so here)."""
    _check_query(resolution, x, y)
    length = max(resolution, attn.window)
    masks = []
    for kernel, dilation in attn.pattern:
        keys, _ = window_indices(length, kernel, dilation)
        mask = torch.zeros(length, length, dtype=torch.bool)
        mask[keys[y][:, None], keys[x][None, :]] = True
        masks.append(mask[:resolution, :resolution])
    return masks


@contextmanager
def capture_output(module: nn.Module) -> Iterator[dict]:
    """Within the block, a forward hook stores ``module``'s latest output (detached) under ``"output"``."""
    store: dict = {}
    handle = module.register_forward_hook(lambda _module, _inputs, output: store.update(output=output.detach()))
    try:
        yield store
    finally:
        handle.remove()


@torch.no_grad()
def attention_probabilities(attn: HydraNeighborhoodAttention, qkv: Tensor, resolution: int, x: int, y: int,
                            sample: int = 0) -> list[Tensor]:
    """Per head group, ``[group_heads, resolution, resolution]``: the attention probabilities of the query
    at column ``x``, row ``y`` of ``sample``, zero outside its window.

    ``qkv`` is the output ``[B, Hp, Wp, 3C]`` of ``attn.qkv`` (see :func:`capture_output`); the logits are
    recomputed as the layer computes them: ``scale * q.k`` plus the group's relative-position bias.
    """
    _check_query(resolution, x, y)
    _, Hp, Wp, _ = qkv.shape
    q, k, _ = qkv[sample].float().reshape(Hp, Wp, 3, attn.num_heads, attn.head_dim).permute(2, 3, 0, 1, 4)
    maps, head = [], 0  # q, k: [heads, Hp, Wp, head_dim]
    for group, (heads, (kernel, dilation)) in enumerate(zip(attn.group_heads, attn.pattern)):
        rows, row_bias = window_indices(Hp, kernel, dilation, qkv.device)
        cols, col_bias = window_indices(Wp, kernel, dilation, qkv.device)
        r, c = rows[y][:, None], cols[x][None, :]  # [kernel, 1], [1, kernel]
        keys = k[head:head + heads][:, r, c]  # [heads, kernel, kernel, head_dim]
        logits = torch.einsum("hd,hijd->hij", q[head:head + heads, y, x] * attn.scale, keys)
        logits = logits + attn.rpb[group][:, row_bias[y][:, None], col_bias[x][None, :]].float()
        probs = logits.flatten(1).softmax(dim=-1).view(heads, kernel, kernel)
        full = qkv.new_zeros(heads, Hp, Wp, dtype=torch.float32)
        full[:, r, c] = probs
        maps.append(full[:, :resolution, :resolution].cpu())
        head += heads
    return maps


def overlay_attention(image: Tensor, weights: Tensor, x: int, y: int, alpha: float = 0.7) -> Tensor:
    """Draw ``weights`` ``[r, r]`` (>= 0; 0 leaves a pixel as it is) over uint8 ``image`` ``[3, S, S]`` in
    red, opacity ``alpha * weights / max``, each map cell covering ``S / r`` pixels; the query cell
    ``(x, y)`` is painted green. Returns uint8 ``[3, S, S]``."""
    size, r = image.shape[-1], weights.shape[-1]
    scale = size // r
    weights = weights.float()
    opacity = (alpha * weights / weights.max()).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    red = torch.tensor([255.0, 0.0, 0.0])[:, None, None]
    out = image.float() * (1 - opacity) + red * opacity
    out[:, y * scale:(y + 1) * scale, x * scale:(x + 1) * scale] = torch.tensor([0.0, 255.0, 0.0])[:, None, None]
    return out.round().to(torch.uint8)
