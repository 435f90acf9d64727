"""float64 gradcheck of every differentiable op on the compiled CPU kernels and the reference.

``fast_mode`` checks the Jacobian along random directions (torch's recommended mode for large inputs),
which keeps the suite within CI's budget; the elementwise comparison against the reference lives in
test_backends.py.
"""

import pytest
import torch
from torch.autograd import gradcheck

import natten_ops

SHAPES = [((14, 14), 7, 2), ((7, 9), 3, (2, 3))]  # (H, W), kernel, dilation: the spec's examples


def _inputs(H, W, kernel, with_rpb, heads=2, D=3):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, heads, H, W, D, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3))
    rpb = torch.randn(heads, 2 * kh - 1, 2 * kw - 1, generator=gen, dtype=torch.float64, requires_grad=True)
    return q, k, v, (rpb if with_rpb else None)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("size, kernel, dilation", SHAPES)
@pytest.mark.parametrize("with_rpb", [False, True])
def test_gradcheck_na2d_qk(backend, size, kernel, dilation, with_rpb):
    q, k, _, rpb = _inputs(*size, kernel, with_rpb)
    args = (q, k) + ((rpb,) if with_rpb else ())
    assert gradcheck(lambda q, k, *r: natten_ops.na2d_qk(q, k, kernel, dilation, rpb=r[0] if r else None,
                                                         backend=backend), args, fast_mode=True)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("size, kernel, dilation", SHAPES)
def test_gradcheck_na2d_av(backend, size, kernel, dilation):
    H, W = size
    _, _, v, _ = _inputs(H, W, kernel, False)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    attn = torch.softmax(torch.randn(1, 2, H, W, kh * kw, dtype=torch.float64), -1).requires_grad_()
    assert gradcheck(lambda a, v: natten_ops.na2d_av(a, v, kernel, dilation, backend=backend), (attn, v), fast_mode=True)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("size, kernel, dilation", SHAPES)
@pytest.mark.parametrize("with_rpb", [False, True])
def test_gradcheck_na2d(backend, size, kernel, dilation, with_rpb):
    q, k, v, rpb = _inputs(*size, kernel, with_rpb)
    args = (q, k, v) + ((rpb,) if with_rpb else ())
    assert gradcheck(lambda q, k, v, *r: natten_ops.na2d(q, k, v, kernel, dilation, rpb=r[0] if r else None,
                                                         backend=backend), args, fast_mode=True)
