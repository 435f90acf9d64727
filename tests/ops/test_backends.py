"""The CPU kernels and flex against the reference: forward and all gradients, fixed cases and a
property-based sweep (tolerances: tests/ops/na_testing.py). The CUDA kernels have the same checks in
test_cuda.py, their CPU harness in test_cuda_harness.py."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from na_testing import (CASES, assert_matches_reference, assert_unfused_matches_reference, make_inputs,
                        na2d_with_grads, na_problems)

import natten_ops
from natten_ops import HeadGroup

@pytest.mark.parametrize("B, heads, H, W, D, kernel, dilation, with_rpb", CASES)
def test_cpu_na2d_matches_reference(B, heads, H, W, D, kernel, dilation, with_rpb):
    assert_matches_reference("cpu", B, heads, H, W, D, kernel, dilation, with_rpb)


@given(problem=na_problems(), seed=st.integers(0, 2**16))
def test_cpu_na2d_sweep(problem, seed):
    assert_matches_reference("cpu", **problem, seed=seed)


@pytest.mark.parametrize("B, heads, H, W, D, kernel, dilation, with_rpb", CASES[:5])
def test_cpu_unfused_ops_match_reference(B, heads, H, W, D, kernel, dilation, with_rpb):
    assert_unfused_matches_reference("cpu", B, heads, H, W, D, kernel, dilation, with_rpb)


def test_hydra_groups_equal_separate_calls():
    """One grouped call == each head group through na2d separately, concatenated along heads."""
    q, k, v, _ = make_inputs(2, 7, 16, 16, 16, (7, 7), (1, 1), False, dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    groups = [HeadGroup(3, 7, 1, torch.randn(3, 13, 13, generator=gen)),
              HeadGroup(4, (5, 3), (3, 4), torch.randn(4, 9, 5, generator=gen)),
              ]
    for backend in ("reference", "cpu", "flex"):
        with torch.no_grad():
            grouped = natten_ops.na2d_grouped(q, k, v, groups, backend=backend)
            separate = torch.cat([natten_ops.na2d(q[:, :3], k[:, :3], v[:, :3], 7, 1, rpb=groups[0].rpb, backend="reference"),
                                  natten_ops.na2d(q[:, 3:], k[:, 3:], v[:, 3:], (5, 3), (3, 4), rpb=groups[1].rpb,
                                                  backend="reference")], dim=1)
        torch.testing.assert_close(grouped, separate, rtol=0, atol=1e-5, msg=backend)


def test_hydra_groups_gradients_cpu():
    q, k, v, _ = make_inputs(1, 4, 12, 12, 8, (5, 5), (1, 1), False)
    gen = torch.Generator().manual_seed(4)
    rpbs = [torch.randn(2, 9, 9, generator=gen, dtype=torch.float64), torch.randn(2, 5, 5, generator=gen, dtype=torch.float64)]
    grads = {}
    for backend in ("reference", "cpu"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, *rpbs)]
        groups = [HeadGroup(2, 5, 2, leaves[3]), HeadGroup(2, 3, 4, leaves[4])]
        out = natten_ops.na2d_grouped(*leaves[:3], groups, backend=backend)
        grads[backend] = torch.autograd.grad((out * out.detach().sin()).sum(), leaves)
    for got, expected in zip(grads["cpu"], grads["reference"]):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_half_inputs_computed_in_float32(dtype):
    q, k, v, rpb = make_inputs(1, 2, 10, 10, 16, (5, 5), (2, 2), True, dtype=torch.float32)
    half = [t.to(dtype) for t in (q, k, v, rpb)]
    out = natten_ops.na2d(*half[:3], 5, 2, rpb=half[3], backend="cpu")
    assert out.dtype == dtype
    expected = natten_ops.na2d(*(t.float() for t in half[:3]), 5, 2, rpb=half[3].float(), backend="reference")
    torch.testing.assert_close(out.float(), expected, rtol=0, atol={torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype])


@pytest.mark.parametrize("backend", ["reference", "cpu", "flex"])
@pytest.mark.parametrize("rpb_dtype", [torch.float64, torch.float16])
def test_rpb_of_another_dtype_is_cast_to_the_dtype_of_q(backend, rpb_dtype):
    """The documented rule, the same in every op and backend: an rpb of any floating dtype is used as
    rpb.to(q.dtype); its gradient comes back in the rpb's own dtype."""
    q, k, v, rpb = (t.float() for t in make_inputs(1, 2, 9, 9, 8, (3, 3), (2, 2), True))
    rpb = rpb.to(rpb_dtype).requires_grad_(backend != "flex")
    out = natten_ops.na2d(q, k, v, 3, 2, rpb=rpb, backend=backend)
    expected = natten_ops.na2d(q, k, v, 3, 2, rpb=rpb.detach().float(), backend="reference")
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    if backend != "flex":  # flex has no CPU backward
        assert torch.autograd.grad(out.sum(), rpb)[0].dtype == rpb_dtype
        logits = natten_ops.na2d_qk(q, k, 3, 2, rpb=rpb, backend=backend)
        torch.testing.assert_close(logits, natten_ops.na2d_qk(q, k, 3, 2, rpb=rpb.detach().float(), backend="reference"),
                                   rtol=0, atol=1e-5)
        assert torch.autograd.grad(logits.sum(), rpb)[0].dtype == rpb_dtype


def test_flex_forward_matches_reference():
    for B, heads, H, W, D, kernel, dilation, with_rpb in CASES[:4]:
        q, k, v, rpb = make_inputs(B, heads, H, W, D, kernel, dilation, with_rpb, dtype=torch.float32)
        with torch.no_grad():
            out = natten_ops.na2d(q, k, v, kernel, dilation, rpb=rpb, backend="flex")
        expected = natten_ops.na2d(q.double(), k.double(), v.double(), kernel, dilation,
                                   rpb=rpb.double() if rpb is not None else None, backend="reference")
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-4)


def test_flex_refuses_gradients_on_cpu():
    q, k, v, _ = make_inputs(1, 1, 7, 7, 8, (3, 3), (1, 1), False, dtype=torch.float32)
    with pytest.raises(natten_ops.BackendUnavailable, match="no backward on the CPU"):
        natten_ops.na2d(q.requires_grad_(), k, v, 3, backend="flex")


def test_cpu_backward_is_deterministic():
    q, k, v, rpb = make_inputs(2, 4, 16, 16, 32, (7, 7), (2, 2), True, dtype=torch.float32)
    runs = [na2d_with_grads("cpu", q, k, v, (7, 7), (2, 2), rpb, torch.float32) for _ in range(2)]
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name


def test_non_contiguous_inputs():
    q, k, v, rpb = make_inputs(2, 3, 9, 11, 8, (3, 3), (2, 3), True, dtype=torch.float64)
    # [B, H, W, heads, D] storage viewed as [B, heads, H, W, D], as attention modules produce.
    strided = [t.permute(0, 2, 3, 1, 4).contiguous().permute(0, 3, 1, 2, 4) for t in (q, k, v)]
    assert not strided[0].is_contiguous()
    for backend in ("reference", "cpu"):
        out = natten_ops.na2d(*strided, 3, (2, 3), rpb=rpb, backend=backend)
        torch.testing.assert_close(out, natten_ops.na2d(q, k, v, 3, (2, 3), rpb=rpb, backend="reference"),
                                   rtol=0, atol=1e-12)
    logits = natten_ops.na2d_qk(*strided[:2], 3, (2, 3), backend="cpu")
    torch.testing.assert_close(logits, natten_ops.na2d_qk(q, k, 3, (2, 3), backend="reference"), rtol=0, atol=1e-12)


def test_auto_picks_cpu_kernels_for_cpu_tensors():
    assert "cpu" in natten_ops.available_backends("cpu")
    q, k, v, _ = make_inputs(1, 1, 7, 7, 8, (3, 3), (1, 1), False)
    torch.testing.assert_close(natten_ops.na2d(q, k, v, 3), natten_ops.na2d(q, k, v, 3, backend="cpu"), rtol=0, atol=0)
