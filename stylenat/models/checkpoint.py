"""The generator export: the small G_ema file that sampling and evaluation load, written and read back.

The export is one safetensors file: the generator's state dict (``w_avg`` included) plus metadata
``kind = "stylenat-generator"``, ``preset`` (a ``create_generator`` name), ``overrides`` (JSON of its
keyword overrides) and free-form ``info`` (JSON: cur_nimg, source checkpoint, ...). Loading a generator
from any file a command accepts (this export, a training checkpoint, a reference StyleNAT checkpoint) is
:func:`stylenat.checkpoints.load_generator`; the classifier export lives in :mod:`stylenat.models.pretrained`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from stylenat.files import atomic_path
from stylenat.models.generator import Generator

GENERATOR_KIND = "stylenat-generator"


def save_safetensors_atomic(tensors: dict[str, Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file atomically (:func:`stylenat.files.atomic_path`): readers never see a partial
    file; permissions follow the umask, as a plain ``open``'s."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return path


def save_generator(generator: Generator, path: str | os.PathLike, preset: str, overrides: dict[str, Any],
                   info: dict[str, Any] | None = None) -> Path:
    """Write ``generator`` (weights and buffers) with the config that rebuilds it; atomic replace."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in generator.state_dict().items()}
    metadata = {"kind": GENERATOR_KIND, "preset": preset, "overrides": json.dumps(overrides),
                "info": json.dumps(info or {})}
    return save_safetensors_atomic(tensors, path, metadata)


def read_generator_export(path: str | os.PathLike) -> tuple[str, dict, dict, dict[str, Tensor]]:
    """``(preset, overrides, info, state dict)`` of a generator export; a ``ValueError`` for another
    safetensors file."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("kind") != GENERATOR_KIND:
            raise ValueError(f"{path} is a safetensors file but not a StyleNAT generator export "
                             f"(kind={metadata.get('kind')!r})")
        state = {name: f.get_tensor(name) for name in f.keys()}
    return metadata["preset"], json.loads(metadata["overrides"]), json.loads(metadata.get("info", "{}")), state
