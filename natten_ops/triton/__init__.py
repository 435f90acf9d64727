"""``backend="triton"``: fused 2-D neighborhood attention in Triton (tensor cores on GPUs).

The kernels (``kernels.py``) run on CUDA tensors, or on CPU tensors through Triton's interpreter when
``TRITON_INTERPRET=1`` is set before triton is first imported: that is how CI tests the real kernel
source without a GPU. They are exposed as ``torch.library`` custom ops (``ops.py``) so that
``torch.compile`` traces them. The backend serves the fused ``na2d`` / ``na2d_grouped``; the unfused
``na2d_qk`` / ``na2d_av`` are unavailable here (use ``cuda``, ``cpu`` or ``reference``).

float32 matmuls use IEEE fp32 unless ``torch.backends.cuda.matmul.allow_tf32`` is set (then TF32).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Optional, Sequence

import torch
from torch import Tensor

from natten_ops import reference
from natten_ops.groups import HeadGroup

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 128
MAX_BATCH_HEADS = 65535  # CUDA's limit on the second grid axis
_MISSING = None if importlib.util.find_spec("triton") is not None else "triton is not installed (pip install triton)"


def unavailable_reason(op: str, device: torch.device, dtype: torch.dtype, needs_grad: bool,
                       head_dim: Optional[int] = None) -> Optional[str]:
    if _MISSING:
        return _MISSING
    if op != "na2d":
        return "the triton backend serves the fused na2d only (for na2d_qk / na2d_av use 'cuda', 'cpu' or 'reference')"
    if device.type == "cpu":
        if not INTERPRET:
            return ("the triton backend runs on CUDA tensors (CPU tensors only under Triton's interpreter: "
                    "TRITON_INTERPRET=1 set before natten_ops is imported)")
        if dtype == torch.bfloat16:
            return "Triton's interpreter mishandles bfloat16 (bfloat16 runs on GPUs only)"
    elif device.type != "cuda":
        return f"the triton backend runs on CUDA tensors, the input is on {device}"
    elif not torch.cuda.is_available():
        return "no GPU is visible to torch"
    if dtype not in DTYPES:
        return f"the triton backend takes {[str(d) for d in DTYPES]}, the input is {dtype}"
    if head_dim is not None and head_dim > MAX_HEAD_DIM:
        return f"the triton backend takes head_dim <= {MAX_HEAD_DIM}, got {head_dim}"
    return None


@functools.lru_cache(maxsize=64)
def _head_table(layout: tuple[int, ...], device: torch.device) -> Tensor:
    """``[heads, 5]`` int32 (k_h, k_w, d_h, d_w, bias offset or -1) on ``device``, built once per layout."""
    rows, offset = [], 0
    for i in range(0, len(layout), 6):
        heads, kh, kw, dh, dw, has_rpb = layout[i:i + 6]
        for _ in range(heads):
            rows.append([kh, kw, dh, dw, offset if has_rpb else -1])
            offset += (2 * kh - 1) * (2 * kw - 1) if has_rpb else 0
    return torch.tensor(rows, dtype=torch.int32, device=device)


def na2d(q: Tensor, k: Tensor, v: Tensor, groups: Sequence[HeadGroup], scale: float) -> Tensor:
    """Fused NA over head groups in one launch; same contract as ``natten_ops.reference.na2d``."""
    if q.numel() == 0:
        return reference.na2d(q, k, v, groups, scale)
    if q.shape[0] * q.shape[1] > MAX_BATCH_HEADS:
        raise ValueError(f"backend='triton' takes batch * heads <= {MAX_BATCH_HEADS} (one grid axis), got "
                         f"{q.shape[0]} * {q.shape[1]}; split the batch")
    layout = tuple(x for g in groups for x in (g.heads, *g.kernel_size, *g.dilation, int(g.rpb is not None)))
    tables = [g.rpb.to(q.dtype).float().reshape(-1) for g in groups if g.rpb is not None]  # rpb rule: q's dtype
    bias = torch.cat(tables) if tables else q.new_empty(0, dtype=torch.float32)
    out, _ = ops.na2d_forward(q, k, v, bias, _head_table(layout, q.device), list(layout), scale,
                                 bool(torch.backends.cuda.matmul.allow_tf32))
    return out


# Import triton and register the custom ops only where they can run (importing triton costs time).
if _MISSING is None and (INTERPRET or torch.cuda.is_available()):
    from natten_ops.triton import ops
