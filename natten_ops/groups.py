"""Head groups: the unit of configuration of (Hydra) neighborhood attention.

A neighborhood-attention call splits the heads of one q/k/v tensor into contiguous groups, each with its
own kernel size, dilation and optional relative positional bias table. Plain NA is a single group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

from torch import Tensor

IntOrPair = Union[int, Tuple[int, int]]


def as_pair(value: IntOrPair, name: str) -> tuple[int, int]:
    """Normalise an int or a 2-sequence of ints to ``(rows, cols)``; TypeError naming ``name`` otherwise."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints (rows, cols), got {value!r}")


@dataclass(frozen=True)
class HeadGroup:
    """``heads`` consecutive heads attending with ``kernel_size``/``dilation`` and their own ``rpb``.

    ``kernel_size`` and ``dilation`` are an int or a per-axis ``(rows, cols)`` pair; they are stored as
    pairs. ``rpb`` is ``None`` or a ``[heads, 2*k_h - 1, 2*k_w - 1]`` table.
    """

    heads: int
    kernel_size: IntOrPair
    dilation: IntOrPair = 1
    rpb: Optional[Tensor] = None

    def __post_init__(self):
        if isinstance(self.heads, bool) or not isinstance(self.heads, int) or self.heads < 1:
            raise ValueError(f"HeadGroup.heads must be a positive int, got {self.heads!r}")
        object.__setattr__(self, "kernel_size", as_pair(self.kernel_size, "kernel_size"))
        object.__setattr__(self, "dilation", as_pair(self.dilation, "dilation"))
