"""Bad input is a ValueError / TypeError that names the argument, never a crash or a wrong answer."""

import pytest
import torch

import natten_ops
from natten_ops import HeadGroup


def qkv(B=1, heads=2, H=8, W=8, D=4, dtype=torch.float32):
    return [torch.randn(B, heads, H, W, D, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("call, error, message", [
    (lambda q, k, v, b: natten_ops.na2d(q[0], k, v, 3, backend=b), ValueError, "q must be 5-D"),
    (lambda q, k, v, b: natten_ops.na2d(q, k[:, :1], v, 3, backend=b), ValueError, "k has shape"),
    (lambda q, k, v, b: natten_ops.na2d(q, k, v[..., :2], 3, backend=b), ValueError, "v has head_dim 2"),
    (lambda q, k, v, b: natten_ops.na2d(q, k.double(), v, 3, backend=b), TypeError, "k has dtype"),
    (lambda q, k, v, b: natten_ops.na2d(q, k, v, 4, backend=b), ValueError, "kernel_size must be odd"),
    (lambda q, k, v, b: natten_ops.na2d(q, k, v, 1, backend=b), ValueError, "kernel_size must be odd and > 1"),
    (lambda q, k, v, b: natten_ops.na2d(q, k, v, 3, 0, backend=b), ValueError, "dilation must be >= 1"),
    (lambda q, k, v, b: natten_ops.na2d(q, k, v, 3, (1, 3), backend=b), ValueError, r"3 \* 3 = 9 > 8 \(axis 1\)"),
    (lambda q, k, v, b: natten_ops.na2d(q, k, v, 9, backend=b), ValueError, "input height"),
    (lambda q, k, v, b: natten_ops.na2d(q, k, v, 3, rpb=torch.zeros(2, 3, 3), backend=b), ValueError,
     r"rpb must have shape \[heads, 2\*k_h-1, 2\*k_w-1\] = \[2, 5, 5\]"),
    (lambda q, k, v, b: natten_ops.na2d(q, k, v, 3, rpb=[1.0], backend=b), TypeError, "rpb must be a torch.Tensor"),
    (lambda q, k, v, b: natten_ops.na2d(q, k, v, "3", backend=b), TypeError, "kernel_size must be an int"),
    (lambda q, k, v, b: natten_ops.na2d(q, k, v, (3, 3, 3), backend=b), TypeError, "kernel_size must be an int"),
    (lambda q, k, v, b: natten_ops.na2d(q.int(), k, v, 3, backend=b), TypeError, "q must be a floating-point"),
    (lambda q, k, v, b: natten_ops.na2d_grouped(q, k, v, [HeadGroup(1, 3)], backend=b), ValueError,
     r"cover 1 heads \(\[1\]\) but q has 2"),
    (lambda q, k, v, b: natten_ops.na2d_grouped(q, k, v, [], backend=b), TypeError, "non-empty sequence"),
    (lambda q, k, v, b: natten_ops.na2d_grouped(q, k, v, [HeadGroup(1, 3), HeadGroup(1, 3, 3)], backend=b),
     ValueError, "group 1: kernel_size \\* dilation"),
    (lambda q, k, v, b: natten_ops.na2d_qk(q, k, 3, rpb=torch.zeros(2, 5, 4), backend=b), ValueError, "rpb must have"),
    (lambda q, k, v, b: natten_ops.na2d_av(torch.rand(1, 2, 8, 8, 8), v, 3, backend=b), ValueError, "9 slots"),
    (lambda q, k, v, b: natten_ops.na2d_av(torch.rand(1, 2, 8, 7, 9), v, 3, backend=b), ValueError, "attn has shape"),
])
def test_bad_input(backend, call, error, message):
    q, k, v = qkv()
    with pytest.raises(error, match=message):
        call(q, k, v, backend)


@pytest.mark.parametrize("backend", ["reference", "cpu", "flex"])
@pytest.mark.parametrize("op", ["na2d", "na2d_grouped", "na2d_qk", "na2d_av"])
def test_head_dim_zero_is_a_clear_error(op, backend):
    """An empty head_dim is refused up front (na2d used to divide by zero computing the default scale)."""
    q, k, v = qkv(D=0)
    call = {
        "na2d": lambda: natten_ops.na2d(q, k, v, 3, backend=backend),
        "na2d_grouped": lambda: natten_ops.na2d_grouped(q, k, v, [HeadGroup(2, 3)], scale=1.0, backend=backend),
        "na2d_qk": lambda: natten_ops.na2d_qk(q, k, 3, backend=backend),
        "na2d_av": lambda: natten_ops.na2d_av(torch.rand(1, 2, 8, 8, 9), v, 3, backend=backend),
    }[op]
    with pytest.raises(ValueError, match=r"(q|v) has head_dim 0 \(shape \(1, 2, 8, 8, 0\)\); head_dim must be >= 1"):
        call()


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        natten_ops.na2d(*qkv(), 3, backend="natten")


def test_unavailable_backend_says_why():
    with pytest.raises(natten_ops.BackendUnavailable, match="cuda"):
        natten_ops.na2d(*qkv(), 3, backend="cuda")


def test_flex_is_refused_for_unfused_ops():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="'flex' serves the fused na2d only"):
        natten_ops.na2d_qk(q, k, 3, backend="flex")


def test_mismatched_devices():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="k is on meta but q is on cpu"):
        natten_ops.na2d(q, k.to("meta"), v, 3)


def test_head_group_validation():
    with pytest.raises(ValueError, match="HeadGroup.heads must be a positive int"):
        HeadGroup(0, 3)
    with pytest.raises(TypeError, match="dilation must be an int"):
        HeadGroup(1, 3, 1.5)


def test_kernels_check_arguments_themselves():
    """A direct call into the extension with bad arguments raises instead of reading out of bounds."""
    ext = natten_ops._build.load_cpu()
    q, k, v = qkv()
    table = torch.tensor([[0, 2, 9, 9, 1, 1]])  # 9 > 8
    with pytest.raises(RuntimeError, match="exceeds the input"):
        ext.na2d_forward(q, k, v, table, [torch.empty(0)], 1.0)
    with pytest.raises(RuntimeError, match="contiguous"):
        ext.na2d_forward(q.transpose(2, 3), k, v, torch.tensor([[0, 2, 3, 3, 1, 1]]), [torch.empty(0)], 1.0)
