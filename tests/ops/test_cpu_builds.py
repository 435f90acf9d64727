"""The CPU kernels' builds: they run on torch's intra-op threads (one OpenMP runtime, torch's), honour
torch.set_num_threads, and the portable build (NATTEN_OPS_PORTABLE=1) computes what the default one does."""

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from na_testing import make_inputs

from natten_ops import _build

BUILDS = {"default": _build.CPU_EXTENSION, "portable": _build.PORTABLE_CPU_EXTENSION}


@pytest.fixture
def restore_threads():
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to tell a parallel build from a serial one")
@pytest.mark.parametrize("build", BUILDS)
def test_kernels_run_on_torch_intra_op_threads(build, restore_threads):
    """at::parallel_for inside the built library spreads tasks over torch.get_num_threads() threads; a
    build without OpenMP (the old -fopenmp-simd only) runs them all on the calling thread and fails."""
    ext = _build.load(BUILDS[build])
    torch.set_num_threads(2)
    assert ext.parallel_threads(8) == 2
    torch.set_num_threads(1)
    assert ext.parallel_threads(8) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_one_openmp_runtime_is_loaded():
    """The module uses the OpenMP runtime torch already loaded: it calls GOMP_* (compiled with -fopenmp),
    and after it ran in parallel the process maps one OpenMP library, torch's. Checked in a fresh interpreter:
    other libraries loaded by earlier tests (scikit-learn ships its own libgomp) must not count."""
    _build.load(_build.CPU_EXTENSION)
    assert b"GOMP_parallel" in _build.module_path(_build.CPU_EXTENSION).read_bytes()
    probe = (
        "import json\n"
        "from pathlib import Path\n"
        "from natten_ops import _build\n"
        "_build.load(_build.CPU_EXTENSION).parallel_threads(4)\n"
        "maps = Path('/proc/self/maps').read_text().splitlines()\n"
        "names = ('libgomp', 'libiomp', 'libomp')\n"
        "print(json.dumps(sorted({str(Path(l.split()[-1]).resolve()) for l in maps if any(n in l for n in names)})))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    runtimes = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(runtimes) == 1 and "torch" in runtimes[0], runtimes


def test_portable_switch_selects_the_portable_build(monkeypatch):
    monkeypatch.setenv(_build.PORTABLE_ENV, "1")
    assert _build.cpu_extension() is _build.PORTABLE_CPU_EXTENSION
    monkeypatch.setenv(_build.PORTABLE_ENV, "0")
    assert _build.cpu_extension() is _build.CPU_EXTENSION
    assert _build.build_key(_build.PORTABLE_CPU_EXTENSION) != _build.build_key(_build.CPU_EXTENSION)
    assert _build.load(_build.PORTABLE_CPU_EXTENSION).kernel_variant() == "portable"


def test_portable_build_is_compiled_without_avx512():
    """On x86 the portable build is what a processor without AVX-512 runs (AVX2 at most), even on one that
    has it; elsewhere it is compiled like the default build."""
    isa = {name: _build.load(ext).vector_isa() for name, ext in BUILDS.items()}
    if platform.machine() in ("x86_64", "AMD64"):
        assert isa["portable"] != "avx512", isa
        if "avx512f" in _build._cpu_flags().split():
            assert isa == {"default": "avx512", "portable": "avx2"}
    else:
        assert isa["portable"] == isa["default"], isa


# x86 intrinsics: their headers, vector types and functions (_mm_*, _mm256_*, _mm512_*).
X86_INTRINSICS = re.compile(r"#\s*include\s*<\w*intrin\.h>|\b__m(64|128|256|512)[di]?\b|\b_mm\d*_\w+")
AVX512_GUARD = "#if defined(__AVX512F__)"


def outside_avx512_guard(text):
    """The lines of a C++ source outside its ``#if defined(__AVX512F__) ... #endif`` blocks (nesting followed)."""
    kept, depth = [], 0  # depth > 0: inside a guarded block, counting the #if's opened in it
    for line in text.splitlines():
        directive = line.strip()
        if depth:
            depth += directive.startswith("#if") - directive.startswith("#endif")
        elif directive.startswith(AVX512_GUARD):
            depth = 1
        else:
            kept.append(line)
    return kept


def test_cpu_sources_hold_no_x86_intrinsics_outside_the_avx512_guard():
    """What an aarch64 (or any non-AVX-512) compiler sees of the CPU kernels is free of x86 intrinsics: the
    portable kernels rely on the compiler's vectoriser and generic vector types only."""
    sources = sorted((_build.CSRC / "cpu").iterdir()) + sorted(_build.CSRC.glob("*.h"))
    found = [f"{path.name}: {line.strip()}" for path in sources for line in outside_avx512_guard(path.read_text())
             if X86_INTRINSICS.search(line)]
    assert not found, found
    guarded = (_build.CSRC / "cpu" / "tiled_kernels.h").read_text()
    assert X86_INTRINSICS.search(guarded) and not any(map(X86_INTRINSICS.search, outside_avx512_guard(guarded)))


@pytest.mark.parametrize("shape", [  # (B, heads, H, W, D, kernel, dilation): StyleNAT-like stages
    (4, 4, 16, 16, 32, (7, 7), (2, 2)),
    (1, 2, 40, 36, 16, (7, 7), (4, 1)),
    (1, 1, 24, 24, 8, (5, 3), (1, 1)),
])
def test_portable_build_matches_default_build(shape):
    """float32 forward and backward of both builds agree (the default one runs the AVX-512 tiled kernels
    where the processor has AVX-512, so this compares the two kernel families)."""
    B, heads, H, W, D, kernel, dilation = shape
    q, k, v, rpb = (t.float() for t in make_inputs(B, heads, H, W, D, kernel, dilation, True))
    table = torch.tensor([[0, heads, *kernel, *dilation]])
    results = {}
    for name, ext in BUILDS.items():
        module = _build.load(ext)
        out, lse = module.na2d_forward(q, k, v, table, [rpb], D ** -0.5)
        grads = module.na2d_backward(torch.cos(out), q, k, v, out, lse, table, [rpb], D ** -0.5)
        results[name] = [out, lse, *grads]
    for got, want, name in zip(results["portable"], results["default"], ("out", "lse", "dq", "dk", "dv", "drpb")):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=name)


AARCH64_CXX = "aarch64-linux-gnu-g++"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(AARCH64_CXX) is None, reason=f"no {AARCH64_CXX} (apt-get install g++-aarch64-linux-gnu)")
@pytest.mark.parametrize("source", _build.CPU_EXTENSION.sources)
def test_cpu_kernels_compile_for_aarch64(source, tmp_path):
    """The CPU sources compile for aarch64 (ARM laptops), code generation included, with the portable
    build's flags (less the native target: a cross compiler has none)."""
    from torch.utils.cpp_extension import include_paths

    includes = [f"-I{_build.CSRC}", *(f"-isystem{p}" for p in include_paths()),
                f"-isystem{sysconfig.get_paths()['include']}"]
    flags = [f for f in _build.PORTABLE_CPU_EXTENSION.cflags if not f.startswith(("-march", "-mno-"))]
    result = subprocess.run([AARCH64_CXX, "-std=c++20", *flags, "-c", "-o", str(tmp_path / "out.o"),
                             "-DTORCH_EXTENSION_NAME=natten_ops_cpu", *includes, str(_build.CSRC / source)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
