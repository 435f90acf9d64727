"""The public neighborhood-attention functions: argument checks and backend choice (the compiled kernels,
their custom ops and autograd live in ``natten_ops.custom_ops``).

Every call is validated here, once, with errors that name the argument and show the values; backends
only ever see normalised arguments (``HeadGroup`` lists with pair-valued kernel sizes and dilations).
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from torch import Tensor

from natten_ops import _build, flex, reference
from natten_ops import triton as triton_backend
from natten_ops.custom_ops import CompiledBackend
from natten_ops.groups import HeadGroup, IntOrPair, as_pair

logger = logging.getLogger("natten_ops")

BACKENDS = ("reference", "cpu", "cuda", "triton", "flex")
OPS = ("na2d", "na2d_qk", "na2d_av")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run this call; the message says why and what to use instead."""


# ---------------------------------------------------------------------------------------------
# Argument checks


def _check_attention_tensor(x, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 5:
        raise ValueError(f"{name} must be 5-D [batch, heads, height, width, head_dim], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _check_head_dim(x: Tensor, name: str) -> None:
    if x.shape[4] == 0:
        raise ValueError(f"{name} has head_dim 0 (shape {tuple(x.shape)}); head_dim must be >= 1")


def _check_like(x: Tensor, ref: Tensor, name: str, ref_name: str, dims: int = 5) -> None:
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device} but {ref_name} is on {ref.device}")
    if x.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but {ref_name} has {ref.dtype}")
    if x.shape[:dims] != ref.shape[:dims]:
        raise ValueError(f"{name} has shape {tuple(x.shape)} but {ref_name} has {tuple(ref.shape)}"
                         + ("" if dims == 5 else f" (the first {dims} dims must match)"))


def _check_window(group: HeadGroup, height: int, width: int, where: str = "") -> None:
    for axis, (k, d, length) in enumerate(zip(group.kernel_size, group.dilation, (height, width))):
        axis_name = ("height", "width")[axis]
        if k < 2 or k % 2 == 0:
            raise ValueError(f"{where}kernel_size must be odd and > 1 on every axis, got {group.kernel_size}")
        if d < 1:
            raise ValueError(f"{where}dilation must be >= 1 on every axis, got {group.dilation}")
        if k * d > length:
            raise ValueError(
                f"{where}kernel_size * dilation must not exceed the input {axis_name}: "
                f"{k} * {d} = {k * d} > {length} (axis {axis}). Use a smaller kernel or dilation, or pad the input."
            )


def _check_rpb(rpb, group: HeadGroup, ref: Tensor, where: str = "") -> None:
    if rpb is None:
        return
    if not isinstance(rpb, Tensor):
        raise TypeError(f"{where}rpb must be a torch.Tensor or None, got {type(rpb).__name__}")
    kh, kw = group.kernel_size
    expected = (group.heads, 2 * kh - 1, 2 * kw - 1)
    if tuple(rpb.shape) != expected:
        raise ValueError(f"{where}rpb must have shape [heads, 2*k_h-1, 2*k_w-1] = {list(expected)}, "
                         f"got {list(rpb.shape)}")
    if rpb.device != ref.device:
        raise ValueError(f"{where}rpb is on {rpb.device} but the input is on {ref.device}")
    if not rpb.is_floating_point():
        raise TypeError(f"{where}rpb must be floating point, got {rpb.dtype}")


def _check_groups(groups: Sequence[HeadGroup], q: Tensor) -> list[HeadGroup]:
    groups = list(groups)
    if not groups or not all(isinstance(g, HeadGroup) for g in groups):
        raise TypeError("groups must be a non-empty sequence of natten_ops.HeadGroup")
    heads = sum(g.heads for g in groups)
    if heads != q.shape[1]:
        raise ValueError(f"the head groups cover {heads} heads ({[g.heads for g in groups]}) "
                         f"but q has {q.shape[1]} heads")
    for index, group in enumerate(groups):
        where = f"group {index}: " if len(groups) > 1 else ""
        _check_window(group, q.shape[2], q.shape[3], where)
        _check_rpb(group.rpb, group, q, where)
    return groups


def _check_backend(backend) -> None:
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")


# ---------------------------------------------------------------------------------------------
# Backends and the choice between them


class ReferenceBackend:
    name = "reference"

    def unavailable_reason(self, op, device, dtype, needs_grad, head_dim=None) -> Optional[str]:
        return None

    na2d = staticmethod(reference.na2d)
    na2d_qk = staticmethod(reference.na2d_qk)
    na2d_av = staticmethod(reference.na2d_av)


_REGISTRY = {
    "reference": ReferenceBackend(),
    "cpu": CompiledBackend("cpu", "cpu", _build.cpu_extension,
                           (torch.float32, torch.float64, torch.float16, torch.bfloat16)),
    "cuda": CompiledBackend("cuda", "cuda", _build.cuda_extension,
                            (torch.float32, torch.float64, torch.float16, torch.bfloat16), max_head_dim=128),
    "triton": triton_backend,
    "flex": flex,
}

# What "auto" tries, in order, per device type. The CUDA kernels compile in CI and their element math
# passes the CPU harness, but they join the CUDA list only once they have passed the GPU test suite
# on a GPU (README, "CUDA kernels"); until then backend="cuda" must be asked for by name.
AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("flex", "reference")}
AUTO_NOTES = {"cuda": "the cuda and triton kernels join this list once they pass the GPU test suite and are "
                      "measured on a GPU; until then ask for backend='cuda' or 'triton' by name"}


def unavailable_reason(backend: str, op: str, device, dtype: torch.dtype = torch.float32,
                       needs_grad: bool = False, head_dim: Optional[int] = None) -> Optional[str]:
    """Why ``backend`` cannot run ``op`` for such inputs (``head_dim`` of q, when known), or ``None``.
    Never compiles: kernels that are not built yet but can be count as able to run."""
    if backend not in _REGISTRY:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return _REGISTRY[backend].unavailable_reason(op, torch.device(device), dtype, needs_grad, head_dim)


def backend_status(backend: str, device="cpu") -> str:
    """One line about ``backend`` on ``device``, without compiling anything: ``"available"`` (pure PyTorch),
    ``"built"`` / ``"buildable (not built yet)"`` (compiled kernels; the first call builds them), or
    ``"unavailable: why"``."""
    reason = unavailable_reason(backend, "na2d", device)
    if reason is not None:
        return f"unavailable: {reason}"
    impl = _REGISTRY[backend]
    return impl.status() if hasattr(impl, "status") else "available"


def available_backends(device="cpu", dtype: torch.dtype = torch.float32) -> list[str]:
    """The backends that can run the fused ``na2d`` forward on ``device`` for ``dtype``; compiled kernels
    count once built or buildable (:func:`backend_status`), and nothing is compiled to find out."""
    return [name for name in BACKENDS if unavailable_reason(name, "na2d", device, dtype) is None]


_warned: set[str] = set()


def _select(backend: str, op: str, x: Tensor, needs_grad: bool):
    """The backend object that runs ``op`` on inputs like ``x`` (BackendUnavailable when none can)."""
    _check_backend(backend)
    name, error = _choose(backend, op, x.device, x.dtype, needs_grad, int(x.shape[-1]))
    if error is not None:
        raise BackendUnavailable(error)
    return _REGISTRY[name]


@torch.compiler.assume_constant_result
def _choose(backend: str, op: str, device: torch.device, dtype: torch.dtype, needs_grad: bool,
            head_dim: int) -> tuple[Optional[str], Optional[str]]:
    """``(backend name, None)`` or ``(None, why none can run it)``.

    torch.compile runs this while tracing and keeps its result as a constant (its inputs are guarded
    tensor properties), so reading the build cache, building kernels on their first use and logging
    stay out of the graph. A backend with an ``ensure_ready()`` method gets it called here: it returns
    None once the backend can run, or why it cannot (e.g. its kernels failed to build).
    """
    candidates = (backend,) if backend != "auto" else AUTO_ORDER.get(device.type, ("reference",))
    reasons = []
    for name in candidates:
        impl = _REGISTRY[name]
        reason = impl.unavailable_reason(op, device, dtype, needs_grad, head_dim)
        if reason is None and hasattr(impl, "ensure_ready"):
            reason = impl.ensure_ready()
        if reason is None:
            if reasons and name not in _warned:
                _warned.add(name)
                logger.warning("natten_ops: backend='auto' uses %r for %s: %s", name, op, "; ".join(reasons))
            return name, None
        reasons.append(f"{name}: {reason}")
    if backend != "auto":
        return None, f"natten_ops.{op}: backend={backend!r} is unavailable: {reason}"
    return None, f"natten_ops.{op}: no backend can run it: " + "; ".join(reasons)


def _requires_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ---------------------------------------------------------------------------------------------
# Public API


def na2d(q: Tensor, k: Tensor, v: Tensor, kernel_size: IntOrPair, dilation: IntOrPair = 1,
         rpb: Optional[Tensor] = None, scale: Optional[float] = None, backend: str = "auto") -> Tensor:
    """Fused 2-D neighborhood attention.

    Args:
        q, k, v: ``[B, heads, H, W, head_dim]`` (any strides).
        kernel_size: odd int > 1, or a per-axis ``(k_h, k_w)`` pair.
        dilation: int >= 1 or ``(d_h, d_w)``; ``k * d`` must not exceed the axis length.
        rpb: optional relative positional bias ``[heads, 2*k_h - 1, 2*k_w - 1]`` (added after scaling), of
            any floating dtype: every backend casts it to q's dtype first, as the reference adds it to the
            logits in their dtype; its gradient comes back in its own dtype.
        scale: logit scale, ``head_dim ** -0.5`` by default.
        backend: ``"auto"``, ``"reference"``, ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"flex"``.

    Returns:
        ``[B, heads, H, W, head_dim]``, in the dtype of q.
    """
    _check_attention_tensor(q, "q")
    group = HeadGroup(q.shape[1], as_pair(kernel_size, "kernel_size"), as_pair(dilation, "dilation"), rpb)
    return na2d_grouped(q, k, v, [group], scale=scale, backend=backend)


def na2d_grouped(q: Tensor, k: Tensor, v: Tensor, groups: Sequence[HeadGroup], scale: Optional[float] = None,
                 backend: str = "auto") -> Tensor:
    """Fused NA over head groups (Hydra-NA) in one call.

    ``groups`` split the heads of q/k/v into contiguous slices, in order; each ``HeadGroup`` has its own
    kernel size, dilation and optional RPB table ``[group.heads, 2*k_h - 1, 2*k_w - 1]``. Equivalent to
    running ``na2d`` per slice and concatenating along heads, without the copies.
    """
    _check_attention_tensor(q, "q")
    _check_attention_tensor(k, "k")
    _check_attention_tensor(v, "v")
    _check_like(k, q, "k", "q")
    _check_like(v, q, "v", "q", dims=4)
    if v.shape[4] != q.shape[4]:
        raise ValueError(f"v has head_dim {v.shape[4]} but q has {q.shape[4]}; they must match")
    _check_head_dim(q, "q")
    groups = _check_groups(groups, q)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    needs_grad = _requires_grad(q, k, v, *(g.rpb for g in groups))
    impl = _select(backend, "na2d", q, needs_grad)
    return impl.na2d(q, k, v, groups, float(scale))


def na2d_qk(q: Tensor, k: Tensor, kernel_size: IntOrPair, dilation: IntOrPair = 1, rpb: Optional[Tensor] = None,
            backend: str = "auto") -> Tensor:
    """Unfused step 1: logits ``q . k[neighbor] (+ rpb)``, ``[B, heads, H, W, k_h * k_w]``.

    Not scaled (as NATTEN's op: pre-scale q). Slot ``u = u_row * k_w + u_col``.
    """
    _check_attention_tensor(q, "q")
    _check_attention_tensor(k, "k")
    _check_like(k, q, "k", "q")
    _check_head_dim(q, "q")
    group = HeadGroup(q.shape[1], as_pair(kernel_size, "kernel_size"), as_pair(dilation, "dilation"), rpb)
    _check_groups([group], q)
    if backend == "flex":
        raise ValueError("backend='flex' serves the fused na2d only; use 'cpu', 'cuda' or 'reference' for na2d_qk")
    impl = _select(backend, "na2d_qk", q, _requires_grad(q, k, rpb))
    return impl.na2d_qk(q, k, group.kernel_size, group.dilation, rpb)


def na2d_av(attn: Tensor, v: Tensor, kernel_size: IntOrPair, dilation: IntOrPair = 1, backend: str = "auto") -> Tensor:
    """Unfused step 2: ``sum_u attn[..., u] * v[neighbor u]`` -> ``[B, heads, H, W, head_dim]``.

    ``attn`` is ``[B, heads, H, W, k_h * k_w]`` (usually the softmax of ``na2d_qk``).
    """
    _check_attention_tensor(attn, "attn")
    _check_attention_tensor(v, "v")
    _check_like(attn, v, "attn", "v", dims=4)
    _check_head_dim(v, "v")
    group = HeadGroup(v.shape[1], as_pair(kernel_size, "kernel_size"), as_pair(dilation, "dilation"))
    _check_groups([group], v)
    area = group.kernel_size[0] * group.kernel_size[1]
    if attn.shape[4] != area:
        raise ValueError(f"attn must have k_h * k_w = {area} slots in its last dim, got {attn.shape[4]}")
    if backend == "flex":
        raise ValueError("backend='flex' serves the fused na2d only; use 'cpu', 'cuda' or 'reference' for na2d_av")
    impl = _select(backend, "na2d_av", v, _requires_grad(attn, v))
    return impl.na2d_av(attn, v, group.kernel_size, group.dilation)
