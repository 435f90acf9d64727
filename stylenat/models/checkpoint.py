"""Generator files: the small G_ema export that sampling and evaluation load, and reading a generator
back from either that export or a full training checkpoint.

The export is one safetensors file: the generator's state dict (``w_avg`` included) plus metadata
``kind = "stylenat-generator"``, ``preset`` (a ``create_generator`` name), ``overrides`` (JSON of its
keyword overrides) and free-form ``info`` (JSON: cur_nimg, source checkpoint, ...).

A training checkpoint (Lightning ``.ckpt``) is recognised by ``hyper_parameters["generator"]`` (the
preset name), ``hyper_parameters["generator_kwargs"]`` (overrides) and ``state_dict`` keys under
``G_ema.``, which is what :class:`stylenat.training.gan.StyleNATGAN` saves. Loading a ``.ckpt`` unpickles
it (``torch.load(weights_only=False)``): only load checkpoints you trust.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from stylenat.models.generator import Generator, create_generator

GENERATOR_KIND = "stylenat-generator"
EMA_PREFIX = "G_ema."


def save_safetensors_atomic(tensors: dict[str, Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file atomically: a temporary file beside ``path``, flushed to disk, then renamed
    over it, so readers never see a partial file. Permissions follow the umask, as a plain ``open``'s."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates the file 0600
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_generator(generator: Generator, path: str | os.PathLike, preset: str, overrides: dict[str, Any],
                   info: dict[str, Any] | None = None) -> Path:
    """Write ``generator`` (weights and buffers) with the config that rebuilds it; atomic replace."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in generator.state_dict().items()}
    metadata = {"kind": GENERATOR_KIND, "preset": preset, "overrides": json.dumps(overrides),
                "info": json.dumps(info or {})}
    return save_safetensors_atomic(tensors, path, metadata)


def _read_export(path: Path) -> tuple[str, dict, dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("kind") != GENERATOR_KIND:
            raise ValueError(f"{path} is a safetensors file but not a StyleNAT generator export "
                             f"(kind={metadata.get('kind')!r})")
        state = {name: f.get_tensor(name) for name in f.keys()}
    return metadata["preset"], json.loads(metadata["overrides"]), json.loads(metadata.get("info", "{}")), state


def _read_training_checkpoint(path: Path) -> tuple[str, dict, dict, dict]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict') nor a generator export")
    hparams = checkpoint.get("hyper_parameters", {})
    state = {k[len(EMA_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(EMA_PREFIX)}
    if "generator" not in hparams or not state:
        kind = hparams.get("model", type(hparams).__name__) if isinstance(hparams, dict) else "unknown"
        raise ValueError(f"{path} is a checkpoint of another model kind ({kind}), not a StyleNAT GAN "
                         "(no 'generator' hyper-parameter or no G_ema weights)")
    info = {"cur_nimg": checkpoint.get("cur_nimg"), "source": str(path)}
    return hparams["generator"], dict(hparams.get("generator_kwargs") or {}), info, state


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Generator, dict[str, Any]]:
    """Rebuild the generator stored in ``path`` (an export or a training checkpoint), in eval mode.

    Returns ``(generator, info)``; ``info`` holds ``preset``, ``overrides`` and what the file recorded
    (``cur_nimg``, ...). Errors are one line naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        reader = _read_export if path.suffix == ".safetensors" else _read_training_checkpoint
        preset, overrides, info, state = reader(path)
    except ValueError:
        raise
    except Exception as err:  # truncated or corrupt file: whatever the reader raised
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    generator = create_generator(preset, **overrides)
    missing, unexpected = generator.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match generator preset {preset!r} with {overrides}: "
                         f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return generator.to(device).eval().requires_grad_(False), {"preset": preset, "overrides": overrides, **info}
