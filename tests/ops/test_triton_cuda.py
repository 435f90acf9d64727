"""The Triton kernels on a GPU (marked ``cuda``: skipped without one), beside the CUDA kernels where the
case is new to both: float32 / float16 / bfloat16 vs the float64 reference (forward and every gradient,
spec tolerances), the StyleNAT Hydra shapes, a problem past 32-bit indexing, determinism, the custom
op's fake implementation and ``torch.compile(fullgraph=True)``.

Run on a GPU machine: ``pytest -m cuda tests/ops/test_triton_cuda.py``. (On the CPU, the same kernels run
under Triton's interpreter in ``test_triton_interpreter.py``.)
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from na_testing import (CASES, FLOAT32_ATOL, HALF_ATOL, assert_dtype_matches_reference,
                        assert_fused_past_32_bit_indexing, assert_head_groups_match_reference, make_inputs,
                        na2d_with_grads, na_problems)

import natten_ops
from natten_ops import HeadGroup

pytestmark = pytest.mark.cuda
CUDA, TRITON = "cuda", "triton"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("B, heads, H, W, D, kernel, dilation, with_rpb", CASES)
def test_float32_matches_reference(B, heads, H, W, D, kernel, dilation, with_rpb):
    assert_dtype_matches_reference(TRITON, B, heads, H, W, D, kernel, dilation, with_rpb, torch.float32, CUDA)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B, heads, H, W, D, kernel, dilation, with_rpb", CASES[:3] + CASES[6:7])
def test_half_precision(dtype, B, heads, H, W, D, kernel, dilation, with_rpb):
    assert_dtype_matches_reference(TRITON, B, heads, H, W, D, kernel, dilation, with_rpb, dtype, CUDA)


@given(problem=na_problems(), seed=st.integers(0, 2**16))
def test_sweep(problem, seed):
    assert_dtype_matches_reference(TRITON, **problem, dtype=torch.float32, device=CUDA, seed=seed)


def test_head_groups_match_reference():
    assert_head_groups_match_reference(TRITON, device=CUDA, dtype=torch.float32)


@pytest.mark.parametrize("backend", [CUDA, TRITON])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size, dilation", [(32, 4), (64, 8)])
def test_stylenat_hydra_layer(backend, dtype, size, dilation):
    """A StyleNAT generator layer: half the heads (k=7, d=1), half (k=7, d=res/8), head_dim 32, RPB per
    group, one na2d_grouped call; every output and gradient vs float64 on the dtype-rounded inputs."""
    q, k, v, _ = make_inputs(2, 4, size, size, 32, (7, 7), (1, 1), False)
    gen = torch.Generator().manual_seed(5)
    rpbs = [torch.randn(2, 13, 13, generator=gen, dtype=torch.float64) for _ in range(2)]
    results = {}
    for name, device, as_dtype in (("reference", "cpu", torch.float64), (backend, CUDA, dtype)):
        leaves = [t.to(dtype).to(device, as_dtype).requires_grad_() for t in (q, k, v, *rpbs)]
        groups = [HeadGroup(2, 7, 1, leaves[3]), HeadGroup(2, 7, dilation, leaves[4])]
        out = natten_ops.na2d_grouped(*leaves[:3], groups, backend=name)
        weights = torch.linspace(-1, 1, out.numel(), dtype=as_dtype, device=device).reshape(out.shape)
        grads = torch.autograd.grad((out * weights).sum(), leaves)
        results[name] = dict(zip(["out", "q", "k", "v", "rpb", "rpb2"], (t.cpu().double() for t in (out, *grads))))
    for key, expected in results["reference"].items():
        atol = (FLOAT32_ATOL[key[:3]] if dtype == torch.float32
                else HALF_ATOL[dtype] * max(1.0, expected.abs().max().item()))
        torch.testing.assert_close(results[backend][key], expected, rtol=0, atol=atol, msg=f"{backend} {dtype} {key}")


def test_non_contiguous_inputs():
    qkv = torch.randn(2, 16, 16, 3, 4, 32, device=CUDA).permute(3, 0, 4, 1, 2, 5)
    strided = natten_ops.na2d(*qkv, 7, 2, backend=TRITON)
    torch.testing.assert_close(strided, natten_ops.na2d(*(t.contiguous() for t in qkv), 7, 2, backend=TRITON),
                               rtol=0, atol=0)


def test_past_32_bit_indexing():
    assert_fused_past_32_bit_indexing(TRITON)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deterministic(dtype):
    q, k, v, rpb = make_inputs(2, 4, 32, 32, 32, (7, 7), (2, 2), True, dtype=torch.float32)
    runs = [na2d_with_grads(TRITON, q, k, v, (7, 7), (2, 2), rpb, dtype, CUDA) for _ in range(2)]
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name


def test_tf32_only_behind_the_flag():
    """IEEE float32 by default (float32 tolerance); torch's allow_tf32 switches to TF32 (looser, not equal)."""
    q, k, v, rpb = make_inputs(1, 2, 32, 32, 64, (7, 7), (1, 1), True, dtype=torch.float32)
    expected = natten_ops.na2d(q.double(), k.double(), v.double(), 7, 1, rpb=rpb.double(), backend="reference")
    q, k, v, rpb = (t.to(CUDA) for t in (q, k, v, rpb))
    ieee = natten_ops.na2d(q, k, v, 7, 1, rpb=rpb, backend=TRITON)
    torch.testing.assert_close(ieee.cpu().double(), expected, rtol=0, atol=FLOAT32_ATOL["out"])
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        tf32 = natten_ops.na2d(q, k, v, 7, 1, rpb=rpb, backend=TRITON)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    torch.testing.assert_close(tf32.cpu().double(), expected, rtol=0, atol=1e-2)


def test_custom_op_checks():
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of the forward op."""
    from natten_ops.triton import ops

    q, k, v, rpb = (t.to(CUDA).requires_grad_() for t in make_inputs(1, 2, 16, 16, 32, (7, 7), (2, 2), True,
                                                                         dtype=torch.float32))
    layout = [2, 7, 7, 2, 2, 1]
    table = torch.tensor([[7, 7, 2, 2, 0], [7, 7, 2, 2, 169]], dtype=torch.int32, device=CUDA)
    torch.library.opcheck(ops.na2d_forward, (q, k, v, rpb.reshape(-1), table, layout, 32 ** -0.5, False))


def test_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) traces the Triton ops (forward and backward); results equal eager."""
    q, k, v, rpb = (t.to(CUDA).requires_grad_() for t in make_inputs(2, 4, 16, 16, 32, (7, 7), (2, 2), True,
                                                                         dtype=torch.float32))

    def attention(q, k, v, rpb):
        return natten_ops.na2d(q, k, v, 7, 2, rpb=rpb, backend=TRITON)

    eager = na2d_with_grads(TRITON, q, k, v, (7, 7), (2, 2), rpb, torch.float32, CUDA)
    compiled = torch.compile(attention, fullgraph=True)
    out = compiled(q, k, v, rpb)
    weights = torch.linspace(-1, 1, out.numel(), device=CUDA).reshape(out.shape)
    grads = torch.autograd.grad((out * weights).sum(), [q, k, v, rpb])
    for name, got in zip(["out", "q", "k", "v", "rpb"], (out, *grads)):
        torch.testing.assert_close(got.detach().cpu().double(), eager[name], rtol=0, atol=1e-6, msg=name)
