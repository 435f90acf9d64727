"""The kernels as torch.library custom ops: schemas, fake implementations and autograd pass torch's own
checker (``torch.library.opcheck``), fake tensors need no build, and asking about a backend never compiles."""

import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import natten_ops
from natten_ops import _build, functional
from natten_ops.custom_ops import flat_group_table

CPU_OPS = functional._REGISTRY["cpu"].ops


def _inputs(dtype=torch.float64, heads=2, size=(7, 9), dim=8):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, heads, *size, dim, dtype=dtype, requires_grad=True) for _ in range(3))
    return q, k, v


@pytest.mark.parametrize("with_rpb", [False, True])
def test_fused_op_passes_opcheck(with_rpb):
    q, k, v = _inputs()
    groups = [natten_ops.HeadGroup(1, (3, 5), (2, 1)), natten_ops.HeadGroup(1, 3, 1)]
    rpbs = [torch.randn(1, 5, 9, dtype=q.dtype, requires_grad=True) if with_rpb else q.new_empty(0),
            torch.randn(1, 5, 5, dtype=q.dtype, requires_grad=True)]
    torch.library.opcheck(CPU_OPS.na2d_forward, (q, k, v, flat_group_table(groups), rpbs, 0.3))


@pytest.mark.parametrize("with_rpb", [False, True])
def test_unfused_ops_pass_opcheck(with_rpb):
    q, k, v = _inputs()
    groups = flat_group_table([natten_ops.HeadGroup(2, (3, 5), (2, 1))])
    rpb = torch.randn(2, 5, 9, dtype=q.dtype, requires_grad=True) if with_rpb else q.new_empty(0)
    torch.library.opcheck(CPU_OPS.na2d_qk_forward, (q, k, groups, rpb))
    attn = torch.randn(2, 2, 7, 9, 15, dtype=q.dtype, requires_grad=True)
    torch.library.opcheck(CPU_OPS.na2d_av_forward, (attn, v, groups))


def test_every_entry_point_is_a_registered_op():
    entries = ("na2d_forward", "na2d_backward", "na2d_qk_forward", "na2d_qk_backward", "na2d_av_forward",
               "na2d_av_backward")
    for family in ("cpu", "cuda"):
        for entry in entries:
            assert hasattr(torch.ops.natten_ops, f"{family}_{entry}"), f"natten_ops::{family}_{entry}"


def test_fake_tensors_need_no_build(tmp_path, monkeypatch):
    """Shape propagation (export, compile) runs the fake implementations: nothing is built or loaded."""
    monkeypatch.setenv("NATTEN_OPS_CACHE", str(tmp_path))
    monkeypatch.setattr(_build, "_loaded", {})
    monkeypatch.setattr(_build, "_compile", lambda *args: pytest.fail("a fake-tensor call compiled the kernels"))
    groups = flat_group_table([natten_ops.HeadGroup(3, (3, 5), (1, 2))])
    with FakeTensorMode():
        q = torch.empty(2, 3, 7, 11, 16, dtype=torch.float16)
        out, lse = CPU_OPS.na2d_forward(q, q, q, groups, [q.new_empty(0)], 0.25)
        attn = CPU_OPS.na2d_qk_forward(q, q, groups, torch.empty(3, 5, 9, dtype=torch.float16))
        dq, dk, drpb = CPU_OPS.na2d_qk_backward(attn, q, q, groups, True)
    assert out.shape == q.shape and lse.shape == (2, 3, 7, 11) and lse.dtype == torch.float32
    assert attn.shape == (2, 3, 7, 11, 15) and drpb.shape == (3, 5, 9)
    assert not any(tmp_path.iterdir())


def test_asking_about_backends_never_compiles(tmp_path, monkeypatch):
    """A fresh machine (empty kernel cache): availability and the report answer from the build status."""
    monkeypatch.setenv("NATTEN_OPS_CACHE", str(tmp_path))
    monkeypatch.setattr(_build, "_loaded", {})
    monkeypatch.setattr(_build, "_compile", lambda *args: pytest.fail("an availability check compiled the kernels"))
    assert natten_ops.backend_status("cpu") == _build.BUILDABLE
    assert "cpu" in natten_ops.available_backends("cpu")
    assert natten_ops.unavailable_reason("cpu", "na2d", "cpu") is None
    assert "cpu        buildable (not built yet)" in natten_ops.report()
    monkeypatch.setattr(_build, "missing_tools", lambda ext: ["a C++ compiler"])
    assert natten_ops.backend_status("cpu") == "unavailable: cannot build it here: missing a C++ compiler"
    assert "cpu" not in natten_ops.available_backends("cpu")
    assert not any(tmp_path.iterdir())


def test_module_report_on_an_empty_cache_builds_nothing(tmp_path):
    env = {**os.environ, "NATTEN_OPS_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "natten_ops"], capture_output=True, text=True, check=True,
                         env=env).stdout
    assert "cpu        buildable (not built yet)" in out
    assert not any(tmp_path.iterdir()), "the report built something"


def test_a_built_extension_reports_built():
    _build.load_cpu()
    assert natten_ops.backend_status("cpu") == _build.BUILT
