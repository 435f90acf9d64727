"""The CUDA kernels on a GPU (marked ``cuda``: skipped without one): every op against the reference
with the spec's tolerances, forward and all gradients, the sweep of the CPU backend, float16 /
bfloat16, a problem past 32-bit indexing, determinism and float64 gradcheck.

Run on a GPU machine: ``pytest -m cuda tests/ops`` (builds the kernels for the visible GPU first).
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from na_testing import (CASES, assert_dtype_matches_reference, assert_fused_past_32_bit_indexing,
                        assert_head_groups_match_reference, assert_matches_reference, assert_unfused_matches_reference,
                        make_inputs, na2d_with_grads, na_problems)
from torch.autograd import gradcheck

import natten_ops

pytestmark = pytest.mark.cuda
CUDA = "cuda"


@pytest.mark.parametrize("B, heads, H, W, D, kernel, dilation, with_rpb", CASES)
def test_fused_matches_reference(B, heads, H, W, D, kernel, dilation, with_rpb):
    assert_matches_reference(CUDA, B, heads, H, W, D, kernel, dilation, with_rpb, device=CUDA)


@given(problem=na_problems(), seed=st.integers(0, 2**16))
def test_fused_sweep(problem, seed):
    assert_matches_reference(CUDA, **problem, seed=seed, device=CUDA)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B, heads, H, W, D, kernel, dilation, with_rpb", CASES[:3] + CASES[6:7])
def test_half_precision(dtype, B, heads, H, W, D, kernel, dilation, with_rpb):
    assert_dtype_matches_reference(CUDA, B, heads, H, W, D, kernel, dilation, with_rpb, dtype, CUDA)


@pytest.mark.parametrize("B, heads, H, W, D, kernel, dilation, with_rpb", CASES[:5])
def test_unfused_match_reference(B, heads, H, W, D, kernel, dilation, with_rpb):
    assert_unfused_matches_reference(CUDA, B, heads, H, W, D, kernel, dilation, with_rpb, device=CUDA)


def test_head_groups_match_reference():
    assert_head_groups_match_reference(CUDA, device=CUDA)


def test_past_32_bit_indexing():
    """Tensors of more than 2**31 elements, checked at their far end, where a 32-bit offset would wrap:
    the fused kernel on 8 heads x 1280x1920 x head_dim 128 (2.5e9 elements each, float16) and na2d_qk's
    logits on 1280x1920 x 31x31 neighbours (2.4e9 elements)."""
    assert_fused_past_32_bit_indexing(CUDA)
    gen = torch.Generator(device=CUDA).manual_seed(0)
    q, k = (torch.randn(1, 1, 1280, 1920, 8, device=CUDA, generator=gen) for _ in range(2))
    logits = natten_ops.na2d_qk(q, k, 31, 1, backend=CUDA)
    assert logits.numel() > 2**31
    expected = natten_ops.na2d_qk(q[:, :, -64:], k[:, :, -64:], 31, 1, backend="reference")[:, :, 32:]
    torch.testing.assert_close(logits[:, :, -32:], expected, rtol=0, atol=1e-4)


def test_deterministic():
    q, k, v, rpb = make_inputs(2, 4, 32, 32, 32, (7, 7), (2, 2), True, dtype=torch.float32)
    runs = [na2d_with_grads(CUDA, q, k, v, (7, 7), (2, 2), rpb, torch.float32, CUDA) for _ in range(2)]
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name


@pytest.mark.parametrize("size, kernel, dilation", [((14, 14), 7, 2), ((7, 9), 3, (2, 3))])
def test_gradcheck(size, kernel, dilation):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, *size, 3, generator=gen, dtype=torch.float64).to(CUDA).requires_grad_()
               for _ in range(3))
    rpb = torch.randn(2, 2 * kh - 1, 2 * kw - 1, generator=gen, dtype=torch.float64).to(CUDA).requires_grad_()
    attn = torch.softmax(torch.randn(1, 2, *size, kh * kw, dtype=torch.float64), -1).to(CUDA).requires_grad_()
    assert gradcheck(lambda *t: natten_ops.na2d(*t[:3], kernel, dilation, rpb=t[3], backend=CUDA), (q, k, v, rpb))
    assert gradcheck(lambda q, k, r: natten_ops.na2d_qk(q, k, kernel, dilation, rpb=r, backend=CUDA), (q, k, rpb))
    assert gradcheck(lambda a, v: natten_ops.na2d_av(a, v, kernel, dilation, backend=CUDA), (attn, v))
