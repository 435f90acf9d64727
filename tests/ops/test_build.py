"""The JIT build cache: keys, clear failures, concurrent builds, and the ``python -m natten_ops`` report."""

import dataclasses
import os
import shutil
import subprocess
import sys

import pytest
import torch

import natten_ops
from natten_ops import _build


def test_build_key_follows_sources_and_flags(tmp_path, monkeypatch):
    shutil.copytree(_build.CSRC, tmp_path / "csrc")
    monkeypatch.setattr(_build, "CSRC", tmp_path / "csrc")
    ext = _build.CPU_EXTENSION
    key = _build.build_key(ext)
    assert _build.build_key(ext) == key  # stable
    assert _build.build_key(dataclasses.replace(ext, cflags=ext.cflags + ("-g",))) != key
    header = tmp_path / "csrc" / "na2d_index.h"
    header.write_text(header.read_text() + "\n// edited\n")
    assert _build.build_key(ext) != key


def test_missing_toolchain_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NATTEN_OPS_CACHE", str(tmp_path))
    monkeypatch.setattr(_build, "_loaded", {})
    monkeypatch.setattr(_build, "missing_tools", lambda ext: ["ninja (pip install ninja)"])
    with pytest.raises(natten_ops.BuildError, match=r"missing ninja \(pip install ninja\).*backend='reference'"):
        _build.load_cpu()
    reason = natten_ops.unavailable_reason("cpu", "na2d", "cpu")
    assert reason is not None and "ninja" in reason


BUILD = "import natten_ops._build as b; m = b.load_cpu(); print(m.axis_tables(7, 3, 1)[:, 0].tolist())"


@pytest.mark.slow
def test_two_processes_building_at_once_build_once(tmp_path):
    env = {**os.environ, "NATTEN_OPS_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", BUILD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
        assert out.strip() == "[0, 0, 1, 2, 3, 4, 4]"
    assert sum("building natten_ops_cpu" in err for _, err in results) == 1  # the other waited and loaded
    folders = [p.name for p in tmp_path.iterdir() if p.is_dir()]
    assert folders == [_build.module_path(_build.CPU_EXTENSION).parent.name]  # no staging folders left


def test_module_report_lists_backends():
    out = subprocess.run([sys.executable, "-m", "natten_ops"], capture_output=True, text=True, check=True).stdout
    assert f"natten_ops {natten_ops.__version__}" in out
    for name in ("reference", "cpu", "flex", "cuda"):
        assert name in out
    assert "cuda       unavailable:" in out


def test_module_build_command():
    result = subprocess.run([sys.executable, "-m", "natten_ops", "build"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert str(_build.module_path(_build.CPU_EXTENSION)) in result.stdout


def test_cuda_architectures_come_from_the_environment_or_a_clear_error(monkeypatch):
    monkeypatch.setenv(_build.ARCH_ENV, "8.0;9.0")
    assert _build.cuda_arch_list() == "8.0;9.0"
    key = _build.build_key(_build.cuda_extension())
    monkeypatch.setenv(_build.ARCH_ENV, "9.0")
    assert _build.build_key(_build.cuda_extension()) != key  # the architectures are part of the cache key
    if not torch.cuda.is_available():
        monkeypatch.delenv(_build.ARCH_ENV)
        with pytest.raises(_build.BuildError, match="TORCH_CUDA_ARCH_LIST"):
            _build.cuda_extension()


@pytest.mark.skipif(_build.cuda_home() is None, reason="no CUDA toolkit (nvcc) on this machine")
def test_cuda_extension_builds_and_checks_its_inputs(monkeypatch):
    """The CUDA kernels compile here (CI builds them first, so this is a cache hit there) and reject
    a CPU tensor with a message instead of touching its memory from the GPU."""
    monkeypatch.setenv(_build.ARCH_ENV, "8.0;9.0")  # .ci/run's architectures: the same cache entry
    ext = _build.load_cuda()
    q = torch.randn(1, 1, 7, 7, 8)
    table = torch.tensor([[0, 1, 3, 3, 1, 1]])
    with pytest.raises(RuntimeError, match="q must be a CUDA tensor"):
        ext.na2d_forward(q, q, q, table, [], 1.0)
    with pytest.raises(RuntimeError, match="q must be a CUDA tensor"):
        ext.na2d_qk_forward(q, q, table, q.new_empty(0))
