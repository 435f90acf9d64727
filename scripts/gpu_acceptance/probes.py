"""Small jobs that import torch and the project, run in a subprocess by the steps so that a crash or a hang
costs one step: ``python scripts/gpu_acceptance/probes.py NAME ARGS...`` prints one JSON line."""

from __future__ import annotations

import json
import math
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[2]

def probe_env() -> dict:
    """Versions, the GPU, and what this checkout offers; a part that fails is reported in ``errors``."""
    import importlib.metadata as metadata

    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "torch_cuda": torch.version.cuda, "gpu": None, "errors": {}}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                       "capability": list(torch.cuda.get_device_capability(0)),
                       "multiprocessors": props.multi_processor_count, "count": torch.cuda.device_count()}
    for name in ("triton", "lightning"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            info[name] = None
    info["driver"] = _output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).strip() or None
    commit = _output(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"]).strip()
    dirty = _output(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]).strip()
    info["commit"] = (commit + (" (with uncommitted changes)" if dirty else "")) if commit else None
    for part in (_requirements_info, _natten_ops_info, _options_info):
        try:
            info.update(part())
        except Exception as err:  # still report the rest (the GPU above all)
            info["errors"][part.__name__.strip("_")] = f"{type(err).__name__}: {err}"
    return info


def _requirements_info() -> dict:
    return {"requirements_missing": missing_requirements()}


def _natten_ops_info() -> dict:
    from natten_ops import BACKENDS, _build

    home = _build.cuda_home()
    nvcc = _output([str(home / "bin" / "nvcc"), "--version"]) if home else ""
    return {"backends": list(BACKENDS), "nvcc": _first_match(nvcc, r"release ([\d.]+)")}


def _options_info() -> dict:
    """The optional parts that other work adds: ``stylenat throughput --compile`` (read off its ``--help``, so
    wherever the command lives) and ``StyleNATGAN(compile=...)``."""
    import inspect

    from stylenat.training.gan import StyleNATGAN

    usage = _output([sys.executable, "-m", "stylenat.cli", "throughput", "--help"])
    if "--backends" not in usage:
        raise RuntimeError(f"stylenat throughput --help printed no usage: {usage[-300:]!r}")
    parameter = inspect.signature(StyleNATGAN.__init__).parameters.get("compile")
    return {"throughput_compile": "[--compile]" in usage,  # a plain flag (one that takes a value shows a metavar)
            "gan_compile": None if parameter is None else repr(parameter.default)}


def missing_requirements() -> list[str]:
    """pyproject.toml's requirements (with their extras' and the test extra's) not installed in a matching version."""
    import importlib.metadata as metadata

    from packaging.requirements import Requirement

    try:
        import tomllib
    except ImportError:  # Python 3.10
        return []
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"].get("test", [])]
    missing, seen = [], set()
    while todo:
        requirement = todo.pop()
        if requirement.name.lower() in seen:
            continue
        seen.add(requirement.name.lower())
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(f"{requirement.name} (not installed)")
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{requirement.name} {version} (needs {requirement.specifier})")
        for extra in requirement.extras:  # e.g. jsonargparse[signatures]: its extra's requirements too
            for text in metadata.requires(requirement.name) or []:
                needed = Requirement(text)
                if needed.marker is not None and needed.marker.evaluate({"extra": extra}) and \
                        not needed.marker.evaluate({"extra": ""}):
                    needed.marker = None
                    todo.append(needed)
    return sorted(missing)


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _first_match(text: str, pattern: str) -> Optional[str]:
    match = re.search(pattern, text)
    return match.group(1) if match else None


def probe_build(kind: str) -> dict:
    from natten_ops import _build

    extension = _build.cuda_extension() if kind == "cuda" else _build.CPU_EXTENSION
    cached = _build.module_path(extension).exists()
    start = time.perf_counter()
    _build.load_cuda() if kind == "cuda" else _build.load_cpu()
    seconds = time.perf_counter() - start
    import torch

    import natten_ops

    dtype = torch.bfloat16 if kind == "cuda" else torch.float32
    backends = {name: natten_ops.unavailable_reason(name, "na2d", kind, dtype, needs_grad=True, head_dim=32)
                for name in natten_ops.BACKENDS}
    return {"seconds": round(seconds, 1), "cached": cached, "module": str(_build.module_path(extension)),
            "backends": backends}


def probe_dataset(folder: str, resolution: str, classes: str, per_class: str) -> dict:
    """Smooth random images (bicubic-upsampled noise, one tint per class) in class sub-folders."""
    import numpy as np
    from PIL import Image

    root, size = Path(folder), int(resolution)
    rng = np.random.default_rng(0)
    for label in range(int(classes)):
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        tint = rng.uniform(0.3, 1.0, size=3)
        for index in range(int(per_class)):
            small = (rng.uniform(0, 255, size=(8, 8, 3)) * tint).astype(np.uint8)
            Image.fromarray(small).resize((size, size), Image.BICUBIC).save(root / f"class{label}" / f"{index:03d}.png")
    return {"images": int(classes) * int(per_class), "resolution": size}


def probe_gan_run(root: str, since: str, device: str) -> dict:
    """Step 6's run folder: the counters of the checkpoints before (first.ckpt) and after the resume
    (checkpoints/last.ckpt), its scalars (see :func:`probe_scalars`) and the export run on ``device``."""
    import torch

    from stylenat.checkpoints import load_generator

    folder = Path(root)
    counters = {}
    for key, path in (("first_checkpoint", folder / "first.ckpt"), ("checkpoint", folder / "checkpoints" / "last.ckpt")):
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)  # written by this run
        counters[key] = {name: checkpoint.get(name) for name in ("cur_nimg", "cur_step", "global_step")}
    generator, info = load_generator(folder / "generator.safetensors", device=device)
    with torch.no_grad():
        images = generator(torch.randn(2, generator.z_dim, device=device))
    export = {"preset": info["preset"], "cur_nimg": info.get("cur_nimg"), "shape": list(images.shape),
              "finite": bool(torch.isfinite(images).all())}
    return {**counters, "scalars": probe_scalars(root, since), "export": export}


def probe_scalars(folder: str, since: str) -> dict:
    """Every scalar tag of the TensorBoard event files under ``folder``: count, all finite, the first value
    logged at or after the wall time ``since``, the last value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events: dict[str, list] = {}
    for path in sorted(Path(folder).rglob("events.out.tfevents*")):
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            events.setdefault(tag, []).extend(accumulator.Scalars(tag))
    result = {}
    for tag, values in events.items():
        values.sort(key=lambda e: e.wall_time)
        later = [e.value for e in values if e.wall_time >= float(since)]
        result[tag] = {"count": len(values), "finite": all(math.isfinite(e.value) for e in values),
                       "first_since": later[0] if later else None, "last": values[-1].value}
    return result


PROBES = {"env": probe_env, "build": probe_build, "dataset": probe_dataset, "gan-run": probe_gan_run,
          "scalars": probe_scalars}


if __name__ == "__main__":
    name, *arguments = sys.argv[1:]
    print(json.dumps(PROBES[name](*arguments), default=str))
