"""The Triton kernels on CPU tensors through Triton's interpreter, against the float64 reference.

Needs ``TRITON_INTERPRET=1`` before triton is imported, so it runs in its own pytest process (started by
``test_triton_interpreter.py``; by hand: ``TRITON_INTERPRET=1 pytest tests/ops/triton_interpreter_cases.py``).
Shapes are tiny (the interpreter runs every program in Python) but span several query tiles, uneven
dilation groups, per-axis kernels and dilations, borders, head groups and a padded head_dim.
bfloat16 is tested on GPUs only (test_triton_cuda.py): the interpreter mishandles it.
"""

import math
import os

import pytest
import torch
from na_testing import FLOAT32_ATOL, assert_dtype_matches_reference, make_inputs, na2d_with_grads

if os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("run this module with TRITON_INTERPRET=1 (see test_triton_interpreter.py)")

import natten_ops  # noqa: E402  (after the environment check: triton reads it at import)
from natten_ops import HeadGroup  # noqa: E402

TRITON = "triton"
CASES = [  # (B, heads, H, W, D, kernel, dilation, rpb); the interpreter's tiles are 4x8 queries
    (1, 2, 7, 9, 16, (3, 3), (2, 2), True),   # uneven dilation groups on both axes (4+3 rows, 5+4 columns)
    (1, 1, 7, 9, 16, (5, 3), (1, 3), True),   # per-axis kernel and dilation, W = k*d
    (2, 1, 9, 11, 24, (5, 5), (1, 1), False),  # borders over 3x2 tiles, head_dim 24 padded to 32, batch 2
]


def test_backend_is_available_under_the_interpreter():
    assert natten_ops.unavailable_reason(TRITON, "na2d", "cpu", torch.float32) is None
    assert "bfloat16" in natten_ops.unavailable_reason(TRITON, "na2d", "cpu", torch.bfloat16)


@pytest.mark.parametrize("B, heads, H, W, D, kernel, dilation, with_rpb", CASES)
def test_float32_matches_reference(B, heads, H, W, D, kernel, dilation, with_rpb):
    """Forward, dQ, dK, dV (and dRPB) in float32 (IEEE matmuls) vs float64."""
    assert_dtype_matches_reference(TRITON, B, heads, H, W, D, kernel, dilation, with_rpb, torch.float32)


def test_float16_matches_reference():
    assert_dtype_matches_reference(TRITON, 1, 2, 7, 9, 16, (3, 3), (2, 1), True, torch.float16)


def test_head_groups_in_one_call():
    """Two groups in one launch: own kernel, dilation, and an RPB table for one of them only."""
    q, k, v, _ = make_inputs(1, 3, 7, 9, 16, (3, 3), (1, 1), False)
    rpb = torch.randn(1, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    results = {}
    for backend, dtype in (("reference", torch.float64), (TRITON, torch.float32)):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v, rpb)]
        groups = [HeadGroup(1, 3, (2, 1), leaves[3]), HeadGroup(2, (5, 3), (1, 3))]
        out = natten_ops.na2d_grouped(*leaves[:3], groups, backend=backend)
        grads = torch.autograd.grad((out * out.detach().sin()).sum(), leaves)
        results[backend] = dict(zip(["out", "q", "k", "v", "rpb"], (t.double() for t in (out, *grads))))
    for name, expected in results["reference"].items():
        torch.testing.assert_close(results[TRITON][name], expected, rtol=0, atol=FLOAT32_ATOL[name], msg=name)


def test_non_contiguous_inputs():
    """q, k, v as strided views of one fused projection [B, H, W, 3, heads, D] (as attention layers make
    them) and a transposed RPB table: read through their strides, same results as contiguous copies."""
    gen = torch.Generator().manual_seed(2)
    qkv = torch.randn(1, 7, 9, 3, 2, 16, generator=gen).permute(3, 0, 4, 1, 2, 5)  # [3, B, heads, H, W, D]
    rpb = torch.randn(2, 5, 5, generator=gen).transpose(1, 2)
    assert not qkv[0].is_contiguous() and not rpb.is_contiguous()
    strided = na2d_with_grads(TRITON, *qkv, (3, 3), (2, 2), rpb, torch.float32)
    expected = na2d_with_grads("reference", *(t.contiguous().double() for t in qkv), (3, 3), (2, 2),
                               rpb.contiguous().double(), torch.float64)
    for name, value in expected.items():
        torch.testing.assert_close(strided[name], value, rtol=0, atol=FLOAT32_ATOL[name], msg=name)


def test_log_sum_exp():
    """The forward op's lse is logsumexp over each query's window of the scaled logits plus RPB."""
    q, k, v, rpb = make_inputs(1, 2, 7, 9, 16, (3, 5), (2, 1), True, dtype=torch.float32)
    scale = 16 ** -0.5
    layout = [2, 3, 5, 2, 1, 1]
    table = torch.tensor([[3, 5, 2, 1, 0], [3, 5, 2, 1, 45]], dtype=torch.int32)
    out, lse = torch.ops.natten_ops.triton_na2d_forward(q, k, v, rpb.reshape(-1), table, layout, scale, False)
    logits = natten_ops.na2d_qk(q.double() * scale, k.double(), (3, 5), (2, 1), rpb=rpb.double(), backend="reference")
    torch.testing.assert_close(lse.double(), torch.logsumexp(logits, -1), rtol=0, atol=1e-5)
    expected = natten_ops.na2d(q.double(), k.double(), v.double(), (3, 5), (2, 1), rpb=rpb.double(), backend="reference")
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-4)


def test_special_values_propagate_as_in_the_reference():
    """A NaN key poisons exactly the queries whose windows hold it; an all -inf window gives NaN."""
    q, k, v, rpb = make_inputs(1, 1, 7, 9, 16, (3, 3), (2, 2), True, dtype=torch.float32)
    k[0, 0, 3, 4, 0] = math.nan
    rpb[0, 0, 0] = -math.inf
    got = natten_ops.na2d(q, k, v, 3, 2, rpb=rpb, backend=TRITON)
    expected = natten_ops.na2d(q, k, v, 3, 2, rpb=rpb, backend="reference")
    assert got.isnan().any()
    assert torch.equal(got.isnan(), expected.isnan())
    torch.testing.assert_close(got.nan_to_num(), expected.nan_to_num(), rtol=0, atol=1e-4)


def test_deterministic():
    """No atomics: two runs give bitwise equal outputs and gradients (dRPB included)."""
    inputs = make_inputs(1, 1, 7, 9, 16, (3, 3), (2, 2), True, dtype=torch.float32)
    runs = [na2d_with_grads(TRITON, *inputs[:3], (3, 3), (2, 2), inputs[3], torch.float32) for _ in range(2)]
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name


def test_custom_op_registration():
    """Schema and registered autograd of the forward op. (Its fake implementation is the op's own body
    traced with fake tensors, which the interpreter cannot launch: test_triton_cuda.py checks it.)"""
    q, k, v, rpb = (t.requires_grad_() for t in make_inputs(1, 1, 5, 6, 16, (3, 3), (1, 2), True, dtype=torch.float32))
    table = torch.tensor([[3, 3, 1, 2, 0]], dtype=torch.int32)
    args = (q, k, v, rpb.reshape(-1), table, [1, 3, 3, 1, 2, 1], 0.25, False)
    torch.library.opcheck(torch.ops.natten_ops.triton_na2d_forward, args,
                          test_utils=("test_schema", "test_autograd_registration"))
