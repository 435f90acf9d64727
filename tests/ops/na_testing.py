"""Shared helpers of the backend tests: inputs, forward + all gradients, comparison with the reference.

Tolerances (spec section 5, rtol 0), against a float64 reference: float64 kernels agree to round-off
(1e-10); float32 forward / dK / dV / dRPB atol 1e-4, dQ 1e-3; float16 / bfloat16 inputs (computed with
float32 accumulation) atol 1e-2 / 5e-2 on outputs and gradients scaled as in ``HALF_ATOL``.
"""

import torch
from hypothesis import strategies as st

import natten_ops
from natten_ops import HeadGroup

FLOAT32_ATOL = {"out": 1e-4, "q": 1e-3, "k": 1e-4, "v": 1e-4, "rpb": 1e-4}
HALF_ATOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


def make_inputs(B, heads, H, W, D, kernel, dilation, with_rpb, dtype=torch.float64, seed=0):
    """q, k, v ``[B, heads, H, W, D]`` and an rpb ``[heads, 2 kh - 1, 2 kw - 1]`` (or None), on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, heads, H, W, D, generator=gen, dtype=dtype) for _ in range(3))
    rpb = torch.randn(heads, 2 * kernel[0] - 1, 2 * kernel[1] - 1, generator=gen, dtype=dtype) if with_rpb else None
    return q, k, v, rpb


def na2d_with_grads(backend, q, k, v, kernel, dilation, rpb, dtype, device="cpu"):
    """Output and gradients of sum(out * weights) for na2d on ``backend``, computed in ``dtype`` on
    ``device``; returned as float64 CPU tensors keyed "out", "q", "k", "v" (and "rpb")."""
    leaves = [t.detach().to(device, dtype).requires_grad_() if t is not None else None for t in (q, k, v, rpb)]
    out = natten_ops.na2d(*leaves[:3], kernel, dilation, rpb=leaves[3], backend=backend)
    weights = torch.linspace(-1, 1, out.numel(), dtype=dtype, device=device).reshape(out.shape)
    grads = torch.autograd.grad((out * weights).sum(), [t for t in leaves if t is not None])
    names = ["q", "k", "v", "rpb"][: len(grads)]
    return {name: t.detach().cpu().double() for name, t in zip(["out", *names], [out, *grads])}


def assert_matches_reference(backend, B, heads, H, W, D, kernel, dilation, with_rpb, seed=0, device="cpu"):
    """``backend``'s na2d forward and every gradient, in float64 and float32, vs the float64 reference."""
    inputs = make_inputs(B, heads, H, W, D, kernel, dilation, with_rpb, seed=seed)
    expected = na2d_with_grads("reference", *inputs[:3], kernel, dilation, inputs[3], torch.float64)
    got64 = na2d_with_grads(backend, *inputs[:3], kernel, dilation, inputs[3], torch.float64, device)
    got32 = na2d_with_grads(backend, *inputs[:3], kernel, dilation, inputs[3], torch.float32, device)
    for name, value in expected.items():
        torch.testing.assert_close(got64[name], value, rtol=0, atol=1e-10, msg=f"float64 {name}")
        torch.testing.assert_close(got32[name], value, rtol=0, atol=FLOAT32_ATOL[name], msg=f"float32 {name}")


CASES = [  # (B, heads, H, W, D, kernel, dilation, rpb)
    (2, 4, 16, 16, 32, (7, 7), (2, 2), True),    # a StyleNAT 16x16 stage
    (1, 2, 14, 14, 16, (7, 7), (1, 1), True),
    (2, 3, 7, 9, 8, (3, 3), (2, 3), False),
    (1, 2, 9, 13, 8, (3, 5), (3, 2), True),      # L = k*d and L = k*d + d - 1
    (1, 1, 13, 13, 8, (13, 13), (1, 1), True),   # k = L
    (1, 16, 6, 6, 8, (3, 3), (2, 2), True),      # 16 heads
    (1, 1, 5, 7, 128, (5, 7), (1, 1), False),    # head_dim 128, non-square kernel
    (1, 2, 11, 10, 24, (3, 3), (3, 3), True),    # head_dim without a compiled fast path
]


@st.composite
def na_problems(draw):
    """Random valid shapes, biased towards the edge cases: L = k*d and L = k*d + 1 .. k*d + d - 1."""
    axes = []
    for _ in range(2):
        kernel = draw(st.sampled_from([3, 5, 7, 9, 11, 13]))
        dilation = draw(st.integers(1, max(1, 24 // kernel)))
        extra = draw(st.one_of(st.just(0), st.integers(1, max(1, dilation - 1)), st.integers(0, 8)))
        axes.append((kernel * dilation + extra, kernel, dilation))
    heads = draw(st.integers(1, 16))
    D = draw(st.sampled_from([8, 16, 32, 64, 128, 12]))
    if heads * D > 256:
        heads = max(1, 256 // D)
    return dict(B=draw(st.integers(1, 2)), heads=heads, H=axes[0][0], W=axes[1][0], D=D,
                kernel=(axes[0][1], axes[1][1]), dilation=(axes[0][2], axes[1][2]), with_rpb=draw(st.booleans()))


def unfused_with_grads(backend, q, k, v, rpb, attn, kernel, dilation, device="cpu"):
    """na2d_qk logits, na2d_av output and the gradients of a non-linear loss of both w.r.t. every input."""
    leaves = [t.detach().to(device).requires_grad_() if t is not None else None for t in (q, k, v, rpb, attn)]
    logits = natten_ops.na2d_qk(leaves[0], leaves[1], kernel, dilation, rpb=leaves[3], backend=backend)
    out = natten_ops.na2d_av(leaves[4], leaves[2], kernel, dilation, backend=backend)
    loss = (logits * torch.cos(logits)).sum() + (out * torch.sin(out)).sum()
    grads = torch.autograd.grad(loss, [t for t in leaves if t is not None])
    return [t.detach().cpu() for t in (logits, out, *grads)]


def assert_unfused_matches_reference(backend, B, heads, H, W, D, kernel, dilation, with_rpb, device="cpu"):
    """``backend``'s na2d_qk and na2d_av and all their gradients, in float64, vs the reference (1e-10)."""
    q, k, v, rpb = make_inputs(B, heads, H, W, D, kernel, dilation, with_rpb)
    attn = torch.softmax(torch.randn(B, heads, H, W, kernel[0] * kernel[1], dtype=torch.float64), -1)
    expected = unfused_with_grads("reference", q, k, v, rpb, attn, kernel, dilation)
    for got, want in zip(unfused_with_grads(backend, q, k, v, rpb, attn, kernel, dilation, device), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def assert_head_groups_match_reference(backend, device="cpu", dtype=torch.float64):
    """One na2d_grouped call over two head groups (own kernels, dilations and bias tables) on ``backend``,
    computed in ``dtype``: output and every gradient vs the float64 reference (1e-10 for float64 kernels,
    ``FLOAT32_ATOL`` for float32)."""
    q, k, v, _ = make_inputs(2, 5, 12, 13, 8, (5, 5), (1, 1), False)
    gen = torch.Generator().manual_seed(4)
    rpbs = [torch.randn(2, 9, 9, generator=gen, dtype=torch.float64),
            torch.randn(3, 5, 9, generator=gen, dtype=torch.float64)]
    results = {}
    for name, on, as_dtype in (("reference", "cpu", torch.float64), (backend, device, dtype)):
        leaves = [t.to(on, as_dtype).requires_grad_() for t in (q, k, v, *rpbs)]
        groups = [HeadGroup(2, 5, 2, leaves[3]), HeadGroup(3, (3, 5), (4, 2), leaves[4])]
        out = natten_ops.na2d_grouped(*leaves[:3], groups, backend=name)
        grads = torch.autograd.grad((out * out.detach().sin()).sum(), leaves)
        results[name] = [t.cpu().double() for t in (out, *grads)]
    for key, got, expected in zip(["out", "q", "k", "v", "rpb", "rpb"], results[backend], results["reference"]):
        atol = 1e-10 if dtype == torch.float64 else FLOAT32_ATOL[key]
        torch.testing.assert_close(got, expected, rtol=0, atol=atol, msg=key)


def assert_dtype_matches_reference(backend, B, heads, H, W, D, kernel, dilation, with_rpb, dtype, device="cpu",
                                   seed=0):
    """``backend``'s na2d output and every gradient computed in ``dtype`` vs the float64 reference on the
    same inputs rounded to ``dtype``: float32 to ``FLOAT32_ATOL``, half types to ``HALF_ATOL`` times the
    magnitude of the expected values."""
    inputs = make_inputs(B, heads, H, W, D, kernel, dilation, with_rpb, seed=seed)
    inputs = [t.to(dtype).double() if t is not None else None for t in inputs]  # the values dtype can hold
    expected = na2d_with_grads("reference", *inputs[:3], kernel, dilation, inputs[3], torch.float64)
    got = na2d_with_grads(backend, *inputs[:3], kernel, dilation, inputs[3], dtype, device)
    for name, value in expected.items():
        atol = FLOAT32_ATOL[name] if dtype == torch.float32 else HALF_ATOL[dtype] * max(1.0, value.abs().max().item())
        torch.testing.assert_close(got[name], value, rtol=0, atol=atol, msg=f"{backend} {dtype} {name}")


def assert_fused_past_32_bit_indexing(backend):
    """``backend``'s na2d on a GPU on 8 heads x 1280x1920 x head_dim 128 in float16 (2.5e9 elements per tensor),
    checked against the reference at the far end, where a 32-bit offset would wrap."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 8, 1280, 1920, 128, device="cuda", generator=gen, dtype=torch.float16) for _ in range(3))
    assert q.numel() > 2**31
    out = natten_ops.na2d(q, k, v, 5, 1, backend=backend)
    tail = [t[:, 7:, 1260:].float() for t in (q, k, v)]  # the top 10 rows of the slice see a cut border
    expected = natten_ops.na2d(*tail, 5, 1, backend="reference")[:, :, 10:]
    torch.testing.assert_close(out[:, 7:, 1270:].float(), expected, rtol=0, atol=1e-2)
