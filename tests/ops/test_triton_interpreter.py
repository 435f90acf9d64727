"""Runs ``triton_interpreter_cases.py`` in a child pytest with ``TRITON_INTERPRET=1`` (Triton reads it when
it is first imported, so it cannot be switched on inside this process): the Triton kernels' real source,
executed on CPU tensors, checked against the reference. The child's output is shown if it fails."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("triton_interpreter_cases.py")
ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("triton", reason="the triton backend needs the triton package")


def test_triton_kernels_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    child = subprocess.run([sys.executable, "-m", "pytest", str(CASES), "-q", "-p", "no:cacheprovider",
                            "-W", "ignore::RuntimeWarning"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if child.returncode != 0:
        pytest.fail(f"interpreter tests failed (exit {child.returncode}):\n{child.stdout[-20000:]}\n{child.stderr[-5000:]}",
                    pytrace=False)
    assert " passed" in child.stdout and "skipped" not in child.stdout, child.stdout[-2000:]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="checks the reason given outside the interpreter")
def test_unavailable_on_cpu_tensors_outside_the_interpreter():
    import torch

    import natten_ops

    reason = natten_ops.unavailable_reason("triton", "na2d", "cpu", torch.float32)
    assert reason is not None and "TRITON_INTERPRET=1" in reason
    q = torch.randn(1, 1, 5, 5, 16)
    with pytest.raises(natten_ops.BackendUnavailable, match="backend='triton' is unavailable: .*CUDA tensors"):
        natten_ops.na2d(q, q, q, 3, backend="triton")


def test_unfused_ops_are_unavailable_with_a_reason():
    import torch

    import natten_ops

    q = torch.randn(1, 1, 5, 5, 16)
    with pytest.raises(natten_ops.BackendUnavailable, match="serves the fused na2d only"):
        natten_ops.na2d_qk(q, q, 3, backend="triton")
