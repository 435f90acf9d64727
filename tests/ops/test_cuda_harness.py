"""The CUDA kernels' element math (csrc/na2d_elements.h), run on the CPU by the harness extension,
against the reference: forward and every gradient of na2d, na2d_qk and na2d_av, head groups included.

The harness calls the same __host__ __device__ functions the CUDA threads call, so a wrong window,
inverse window, bias index, online softmax or softmax gradient fails here, in CI, without a GPU.
What it cannot check (thread mapping, warp shuffles, shared-memory reductions) is covered by
test_cuda.py on a GPU.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from na_testing import (CASES, assert_head_groups_match_reference, assert_matches_reference,
                        assert_unfused_matches_reference, make_inputs, na_problems)

from natten_ops import _build, functional
from natten_ops.custom_ops import CompiledBackend

HARNESS = "cuda-harness"


@pytest.fixture(autouse=True)
def harness_backend(monkeypatch):
    """Registers the harness as a CPU backend named "cuda-harness" for the duration of a test."""
    backend = CompiledBackend(HARNESS, "cpu", lambda: _build.CUDA_HARNESS_EXTENSION, (torch.float32, torch.float64))
    monkeypatch.setattr(functional, "BACKENDS", functional.BACKENDS + (HARNESS,))
    monkeypatch.setitem(functional._REGISTRY, HARNESS, backend)


@pytest.mark.parametrize("B, heads, H, W, D, kernel, dilation, with_rpb", CASES)
def test_fused_matches_reference(B, heads, H, W, D, kernel, dilation, with_rpb):
    assert_matches_reference(HARNESS, B, heads, H, W, D, kernel, dilation, with_rpb)


@settings(max_examples=10)
@given(problem=na_problems(), seed=st.integers(0, 2**16))
def test_fused_sweep(problem, seed):
    assert_matches_reference(HARNESS, **problem, seed=seed)


@pytest.mark.parametrize("B, heads, H, W, D, kernel, dilation, with_rpb", CASES[:5])
def test_unfused_match_reference(B, heads, H, W, D, kernel, dilation, with_rpb):
    assert_unfused_matches_reference(HARNESS, B, heads, H, W, D, kernel, dilation, with_rpb)


def test_head_groups_match_reference():
    assert_head_groups_match_reference(HARNESS)


def test_harness_rejects_what_the_cuda_kernels_reject():
    q, k, v, _ = make_inputs(1, 1, 7, 7, 8, (3, 3), (1, 1), False)
    ext = _build.load_cuda_harness()
    table = torch.tensor([[0, 1, 3, 3, 1, 1]])
    with pytest.raises(RuntimeError, match="group_table"):
        ext.na2d_forward(q, k, v, table.int(), [], 1.0)
    with pytest.raises(RuntimeError, match="cover 1 heads, the input has 2"):
        ext.na2d_forward(*(t.repeat(1, 2, 1, 1, 1) for t in (q, k, v)), table, [], 1.0)
    with pytest.raises(RuntimeError, match=r"rpb of group 0 must be \[1, 5, 5\]"):
        ext.na2d_forward(q, k, v, table, [torch.zeros(1, 3, 3, dtype=q.dtype)], 1.0)
