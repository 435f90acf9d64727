"""What can run here: the backend report of ``python -m natten_ops`` and ``stylenat info``.

Nothing is compiled to write it: compiled kernels show as ``built``, ``buildable (not built yet)`` or
``unavailable: why`` (:func:`natten_ops.backend_status`).
"""

from __future__ import annotations

import torch

from natten_ops import _build
from natten_ops.functional import AUTO_NOTES, AUTO_ORDER, BACKENDS, backend_status


def report() -> str:
    """The natten_ops and torch versions, the kernel cache, and per device what ``backend="auto"`` tries
    and the status of every backend, as text."""
    import natten_ops

    lines = [f"natten_ops {natten_ops.__version__} (torch {torch.__version__})", f"kernel cache: {_build.cache_root()}"]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        lines += ["", f"{device}: backend='auto' tries {', '.join(AUTO_ORDER[device])}"]
        if device in AUTO_NOTES:
            lines.append(f"  ({AUTO_NOTES[device]})")
        lines += [f"  {name:<10} {backend_status(name, device)}" for name in BACKENDS]
    if not torch.cuda.is_available():
        toolkit = _build.cuda_home()
        lines += ["", "cuda: no GPU visible to torch; the CUDA kernels "
                  + (f"can still be compiled here ({toolkit}): python -m natten_ops build --cuda" if toolkit
                     else "need a CUDA toolkit to compile (set CUDA_HOME)")]
    return "\n".join(lines)
