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


@pytest.mark.parametrize("ext", [_build.CPU_EXTENSION, _build.CUDA_HARNESS_EXTENSION], ids=lambda e: e.name)
def test_build_key_hashes_every_file_under_csrc(ext, tmp_path, monkeypatch):
    """No hand-kept header list: editing or adding any file under csrc/ changes every module's key."""
    shutil.copytree(_build.CSRC, tmp_path / "csrc")
    monkeypatch.setattr(_build, "CSRC", tmp_path / "csrc")
    keys = {_build.build_key(ext)}
    for path in sorted((tmp_path / "csrc").rglob("*.h")):
        path.write_text(path.read_text() + "\n// edited\n")
        keys.add(_build.build_key(ext))
    (tmp_path / "csrc" / "cpu" / "new_kernel.h").write_text("// new\n")
    keys.add(_build.build_key(ext))
    assert len(keys) == len(list((tmp_path / "csrc").rglob("*.h"))) + 1


def test_cpu_flags_are_in_the_key_of_native_builds_only(monkeypatch):
    keys = {ext.name: _build.build_key(ext) for ext in (_build.CPU_EXTENSION, _build.CUDA_HARNESS_EXTENSION)}
    monkeypatch.setattr(_build, "_cpu_flags", lambda: "flags : another processor")
    assert _build.build_key(_build.CPU_EXTENSION) != keys["natten_ops_cpu"]  # -march=native
    assert _build.build_key(_build.CUDA_HARNESS_EXTENSION) == keys["natten_ops_cuda_harness"]


def test_cuda_build_leaves_cuda_home_as_it_was(tmp_path, monkeypatch):
    """The CUDA build points torch at the toolkit it found only while it compiles."""
    from torch.utils import cpp_extension

    seen = {}

    def fake_load(**kwargs):
        seen["home"], seen["archs"] = cpp_extension.CUDA_HOME, os.environ.get(_build.ARCH_ENV)
        raise RuntimeError("compiler stub")

    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/somewhere/else")
    monkeypatch.setattr(cpp_extension, "load", fake_load)
    monkeypatch.setattr(_build, "cuda_home", lambda: tmp_path / "cuda")
    monkeypatch.delenv(_build.ARCH_ENV, raising=False)
    ext = _build.Extension("fake_cuda", ("cuda/na2d_cuda.cu",), ("-O3",), with_cuda=True, extra=("9.0",))
    with pytest.raises(RuntimeError, match="compiler stub"):
        _build._compile(ext, tmp_path)
    assert seen == {"home": str(tmp_path / "cuda"), "archs": "9.0"}
    assert cpp_extension.CUDA_HOME == "/somewhere/else" and _build.ARCH_ENV not in os.environ


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
    assert folders == [_build.module_path(_build.cpu_extension()).parent.name]  # no staging folders left


def test_module_report_lists_backends():
    out = subprocess.run([sys.executable, "-m", "natten_ops"], capture_output=True, text=True, check=True).stdout
    assert f"natten_ops {natten_ops.__version__}" in out
    for name in ("reference", "cpu", "flex", "cuda"):
        assert name in out
    assert "cuda       unavailable:" in out


def test_module_build_command():
    result = subprocess.run([sys.executable, "-m", "natten_ops", "build"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert str(_build.module_path(_build.cpu_extension())) in result.stdout


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
