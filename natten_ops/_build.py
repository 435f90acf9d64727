"""Just-in-time build of the C++/CUDA kernels, cached by a hash of everything that affects the binary.

One loader for all compiled code (the stylegan3 pattern):

- the cache key hashes every file under ``csrc/``, the compiler flags, the torch / Python versions
  and (for ``-march=native`` builds) the CPU's instruction-set flags, so a change to any of them
  rebuilds and nothing else does;
- builds happen in a private temporary folder and are published with an atomic rename, under a file
  lock, so two processes (DDP ranks, pytest workers) that start at once build once and never see a
  half-written module;
- one status line by default, the full compiler log with ``NATTEN_OPS_VERBOSE=1``;
- a failure raises :class:`BuildError` saying what is missing and how to fall back.

Nothing is compiled at import time: the first call that needs a kernel triggers the build, or
``python -m natten_ops build`` does it ahead of time.

Cache folder: ``$NATTEN_OPS_CACHE`` or ``~/.cache/natten_ops``.

The CPU kernels are built with ``-fopenmp`` so ``at::parallel_for`` runs on torch's intra-op threads
(``torch.set_num_threads``). Only the compile step gets the flag: the module does not link an OpenMP
runtime of its own, its ``GOMP_*`` symbols resolve to the one libtorch_cpu already loaded.
``-fno-trapping-math`` (no program here reads the floating-point exception flags; values, NaN and Inf
are unchanged) lets the compiler turn the selects of ``exp_nonpositive`` into vector blends, so the
portable kernels' loops over it vectorise.

``NATTEN_OPS_PORTABLE=1`` selects the portable build: the kernels a processor without AVX-512 (most
laptops) runs, compiled as for one. On x86 it adds ``-mno-avx512f`` to ``-march=native`` (which also
drops every AVX-512 extension), so on an AVX-512 machine it is the AVX2 + FMA code a laptop of the
same generation gets, not code auto-vectorised with AVX-512; elsewhere (aarch64: NEON) the flags are
the default build's. ``-DNATTEN_OPS_PORTABLE`` leaves the tiled AVX-512 kernels out. The flags are part
of the cache key, so each build has its own entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

CSRC = Path(__file__).parent / "csrc"
_loaded: dict[str, ModuleType] = {}


class BuildError(RuntimeError):
    """The kernels could not be built or loaded; the message says why and how to fall back."""


@dataclass(frozen=True)
class Extension:
    """A compiled module: its sources (relative to csrc/) and flags."""

    name: str
    sources: tuple[str, ...]
    cflags: tuple[str, ...]
    cuda_cflags: tuple[str, ...] = ()
    with_cuda: bool = False
    extra: tuple[str, ...] = field(default=())  # other strings that change the binary (e.g. arch list)


_CPU_SOURCES = ("cpu/entry_points.cpp", "cpu/bindings.cpp")
_CPU_CFLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-trapping-math")

# The CPU kernels: the AVX-512 tiled kernels where the processor has AVX-512, else the portable ones.
CPU_EXTENSION = Extension(name="natten_ops_cpu", sources=_CPU_SOURCES, cflags=_CPU_CFLAGS)

# The portable kernels only, compiled as for a processor without AVX-512 (x86: -march=native less
# AVX-512, i.e. AVX2 + FMA on current processors; other architectures: the default flags).
PORTABLE_CPU_EXTENSION = Extension(
    name="natten_ops_cpu_portable",
    sources=_CPU_SOURCES,
    cflags=_CPU_CFLAGS + ("-DNATTEN_OPS_PORTABLE",)
    + (("-mno-avx512f",) if platform.machine() in ("x86_64", "AMD64") else ()),
)

PORTABLE_ENV = "NATTEN_OPS_PORTABLE"


def cpu_extension() -> Extension:
    """The CPU kernels this process uses: :data:`PORTABLE_CPU_EXTENSION` if ``$NATTEN_OPS_PORTABLE``
    is set (not ``0``), else :data:`CPU_EXTENSION`."""
    portable = os.environ.get(PORTABLE_ENV, "0") not in ("", "0")
    return PORTABLE_CPU_EXTENSION if portable else CPU_EXTENSION


# The CUDA kernels' element math compiled for the host: tests run it on machines without a GPU.
CUDA_HARNESS_EXTENSION = Extension(
    name="natten_ops_cuda_harness",
    sources=("cuda/harness.cpp",),
    cflags=("-O2",),
)

ARCH_ENV = "TORCH_CUDA_ARCH_LIST"


def cuda_arch_list() -> str:
    """The GPU architectures to compile for: ``$TORCH_CUDA_ARCH_LIST`` (e.g. ``"8.0;9.0"``), else the
    visible GPUs'. Without either there is nothing sensible to target: a :class:`BuildError` says so."""
    archs = os.environ.get(ARCH_ENV, "").strip()
    if archs:
        return archs
    if torch.cuda.is_available():
        capabilities = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in capabilities)
    raise BuildError(f"natten_ops: no GPU is visible and {ARCH_ENV} is not set, so there is no architecture to "
                     f"compile the CUDA kernels for; set e.g. {ARCH_ENV}='8.0;9.0' (A100, H100)")


def cuda_extension() -> Extension:
    """The CUDA kernels, for the architectures of :func:`cuda_arch_list` (part of the cache key)."""
    return Extension(
        name="natten_ops_cuda",
        sources=("cuda/na2d_cuda.cu", "cuda/bindings.cpp"),
        cflags=("-O3",),
        cuda_cflags=("-O3", "-lineinfo"),
        with_cuda=True,
        extra=(cuda_arch_list(),),
    )


def cuda_home() -> Path | None:
    """The CUDA toolkit: the first of ``$CUDA_HOME``, ``$CUDA_PATH``, torch's guess, ``/usr/local/cuda*``
    that has both ``bin/nvcc`` and ``include/cuda_runtime.h`` (torch's guess from a wrapper script on
    PATH such as ``/usr/local/bin/nvcc`` can point at a folder without the headers)."""
    from torch.utils import cpp_extension

    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME,
                  "/usr/local/cuda", *sorted(str(p) for p in Path("/usr/local").glob("cuda-*"))]
    for candidate in filter(None, candidates):
        home = Path(candidate)
        if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists():
            return home
    return None


def cache_root() -> Path:
    return Path(os.environ.get("NATTEN_OPS_CACHE", Path.home() / ".cache" / "natten_ops"))


def _verbose() -> bool:
    return os.environ.get("NATTEN_OPS_VERBOSE", "0") not in ("", "0")


def _cpu_flags() -> str:
    """The processor's instruction-set flags (they decide what -march=native emits)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def build_key(ext: Extension) -> str:
    """A hash of every input that changes the compiled module: every file under ``csrc/`` (so no
    header can be forgotten), the flags, torch and Python, and the CPU's flags for ``-march=native``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in CSRC.rglob("*") if p.is_file()):
        digest.update(path.relative_to(CSRC).as_posix().encode())
        digest.update(path.read_bytes())
    native = "-march=native" in ext.cflags
    for item in (*ext.sources, *ext.cflags, *ext.cuda_cflags, *ext.extra, torch.__version__, sys.version,
                 _cpu_flags() if native else ""):
        digest.update(item.encode())
    return digest.hexdigest()[:16]


def missing_tools(ext: Extension) -> list[str]:
    """What the build needs and this machine lacks, as human-readable items."""
    from torch.utils import cpp_extension

    missing = []
    if not cpp_extension.is_ninja_available():
        missing.append("ninja (pip install ninja)")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        missing.append(f"a C++ compiler ({compiler!r} not on PATH; e.g. apt-get install g++)")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        missing.append("the Python headers (Python.h; e.g. apt-get install python3-dev)")
    if ext.with_cuda and cuda_home() is None:
        missing.append("the CUDA toolkit (nvcc and its headers; set CUDA_HOME)")
    return missing


def _import_from(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile(ext: Extension, build_dir: Path) -> ModuleType:
    from torch.utils import cpp_extension

    saved_arch, saved_home = os.environ.get(ARCH_ENV), cpp_extension.CUDA_HOME
    if ext.with_cuda:  # torch reads both when it builds the nvcc command line
        cpp_extension.CUDA_HOME = str(cuda_home())
        os.environ[ARCH_ENV] = ext.extra[0]
    try:
        module = cpp_extension.load(
            name=ext.name,
            sources=[str(CSRC / s) for s in ext.sources],
            extra_include_paths=[str(CSRC)],
            extra_cflags=list(ext.cflags),
            extra_cuda_cflags=list(ext.cuda_cflags),
            build_directory=str(build_dir),
            with_cuda=ext.with_cuda,
            is_python_module=True,
            verbose=_verbose(),
        )
    finally:
        cpp_extension.CUDA_HOME = saved_home
        if saved_arch is None:
            os.environ.pop(ARCH_ENV, None)
        else:
            os.environ[ARCH_ENV] = saved_arch
    built = build_dir / f"{ext.name}.so"
    if not built.exists():
        raise BuildError(f"natten_ops: the build of {ext.name} produced no module in {build_dir}")
    return module


def module_path(ext: Extension) -> Path:
    """Where the compiled module for the current sources and flags lives in the cache."""
    return cache_root() / f"{ext.name}-{build_key(ext)}" / f"{ext.name}.so"


BUILT, BUILDABLE = "built", "buildable (not built yet)"


def build_status(ext: Extension) -> str:
    """Whether ``ext`` can be used, without compiling anything: ``BUILT`` (loaded, or current in the
    cache), ``BUILDABLE`` (the first use will compile it) or ``"unavailable: <what is missing>"``."""
    if ext.name in _loaded or module_path(ext).exists():
        return BUILT
    missing = missing_tools(ext)
    return BUILDABLE if not missing else "unavailable: cannot build it here: missing " + "; ".join(missing)


def load(ext: Extension) -> ModuleType:
    """Return the compiled module for ``ext``, building it first if the cache has no current copy."""
    if ext.name in _loaded:
        return _loaded[ext.name]
    path = module_path(ext)
    target = path.parent
    module = None
    if not path.exists():
        missing = missing_tools(ext)
        if missing:
            raise BuildError(
                f"natten_ops: cannot build {ext.name}: missing " + "; ".join(missing)
                + ". Install them, or use backend='reference' (pure PyTorch, slow) instead."
            )
        cache_root().mkdir(parents=True, exist_ok=True)
        with open(cache_root() / f"{ext.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same key
            if not path.exists():
                module = _build_and_publish(ext, target)
    if module is None:
        try:
            module = _import_from(path, ext.name)
        except ImportError as err:
            raise BuildError(f"natten_ops: cannot load {path}: {err}. Delete that folder to rebuild.") from err
    _loaded[ext.name] = module
    return module


def _build_and_publish(ext: Extension, target: Path) -> ModuleType:
    """Compile into a private folder, then rename it to ``target`` (atomic); returns the loaded module."""
    duration = "several minutes per GPU architecture" if ext.with_cuda else "a minute"
    print(f"natten_ops: building {ext.name} (first use; takes {duration}) -> {target}", file=sys.stderr, flush=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{ext.name}-", dir=cache_root()))
    try:
        module = _compile(ext, staging)
        if target.exists():
            shutil.rmtree(target)  # a stale copy without a module (e.g. an interrupted manual clean-up)
        os.rename(staging, target)  # atomic publish
        return module
    except Exception as err:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, BuildError):
            raise
        hint = "" if _verbose() else " Re-run with NATTEN_OPS_VERBOSE=1 for the full compiler log."
        raise BuildError(
            f"natten_ops: building {ext.name} failed: {err}.{hint} "
            "Use backend='reference' to run without compiled kernels."
        ) from err


def load_cpu() -> ModuleType:
    """The CPU kernels of :func:`cpu_extension` (built on first use)."""
    return load(cpu_extension())


def load_cuda() -> ModuleType:
    """The CUDA kernels (built on first use, for :func:`cuda_arch_list`)."""
    return load(cuda_extension())


def load_cuda_harness() -> ModuleType:
    """The CUDA kernels' element math on the CPU (tests)."""
    return load(CUDA_HARNESS_EXTENSION)
