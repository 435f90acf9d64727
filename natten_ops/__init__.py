"""natten_ops: 2-D neighborhood attention (plain, dilated, with relative positional bias, Hydra head
groups) with a pure-PyTorch reference, C++ CPU and CUDA kernels (``torch.library`` custom ops, so models
that use them compile with ``torch.compile(fullgraph=True)`` and export with ``torch.export``) and a
flex_attention backend. ``report()`` / ``backend_status()`` say what can run here without compiling.

Semantics: NATTEN 0.14-0.17, defined by :mod:`natten_ops.reference` (the ground truth) and ``csrc/na2d_index.h``;
the layers are in ``docs/ARCHITECTURE.md``. Layout ``[B, heads, H, W, D]``.
"""

from natten_ops._build import BuildError
from natten_ops.functional import (
    BACKENDS,
    BackendUnavailable,
    available_backends,
    backend_status,
    na2d,
    na2d_av,
    na2d_grouped,
    na2d_qk,
    unavailable_reason,
)
from natten_ops.groups import HeadGroup
from natten_ops.info import report
from natten_ops.windows import window_indices

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "BuildError",
    "HeadGroup",
    "available_backends",
    "backend_status",
    "na2d",
    "na2d_av",
    "na2d_grouped",
    "na2d_qk",
    "report",
    "unavailable_reason",
    "window_indices",
    "__version__",
]
