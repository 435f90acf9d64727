"""Generator files: the small G_ema export that sampling and evaluation load, and reading a generator
back from that export, a full training checkpoint or a reference StyleNAT checkpoint (converted in memory).

The export is one safetensors file: the generator's state dict (``w_avg`` included) plus metadata
``kind = "stylenat-generator"``, ``preset`` (a ``create_generator`` name), ``overrides`` (JSON of its
keyword overrides) and free-form ``info`` (JSON: cur_nimg, source checkpoint, ...).

A training checkpoint (Lightning ``.ckpt``) is recognised by ``hyper_parameters["generator"]`` (the
preset name), ``hyper_parameters["generator_kwargs"]`` (overrides) and ``state_dict`` keys under
``G_ema.``, which is what :class:`stylenat.training.gan.StyleNATGAN` saves.

The classifier export lives in :mod:`stylenat.models.pretrained`. Files are data, never code: ``.ckpt`` /
``.pt`` files are read with :func:`stylenat.models.safe_load.load_torch_file`.
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

from stylenat.models.convert import is_official_checkpoint, official_generator
from stylenat.models.generator import Generator, create_generator
from stylenat.models.safe_load import load_torch_file

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


def generator_from_training_checkpoint(checkpoint: Any, path: str | os.PathLike) -> tuple[str, dict, dict, dict]:
    """``(preset, overrides, info, G_ema state dict)`` of a loaded StyleNATGAN Lightning checkpoint."""
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict'), a reference StyleNAT "
                         "checkpoint nor a generator export")
    hparams = checkpoint.get("hyper_parameters", {})
    state = {k[len(EMA_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(EMA_PREFIX)}
    if "generator" not in hparams or not state:
        kind = hparams.get("model", type(hparams).__name__) if isinstance(hparams, dict) else "unknown"
        raise ValueError(f"{path} is a checkpoint of another model kind ({kind}), not a StyleNAT GAN "
                         "(no 'generator' hyper-parameter or no G_ema weights)")
    info = {"cur_nimg": checkpoint.get("cur_nimg"), "source": str(path)}
    return hparams["generator"], dict(hparams.get("generator_kwargs") or {}), info, state


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Generator, dict[str, Any]]:
    """Rebuild the generator stored in ``path``, in eval mode: our export (``.safetensors``), one of our
    training checkpoints, or a reference StyleNAT checkpoint (converted in memory; ``info["note"]`` says so).

    Returns ``(generator, info)``; ``info`` holds ``preset``, ``overrides`` and what the file recorded
    (``cur_nimg``, ...). Errors are one line naming the file and the problem (a converter's error lists
    every misfit tensor).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            preset, overrides, info, state = _read_export(path)
        else:
            checkpoint = load_torch_file(path)
            if is_official_checkpoint(checkpoint):
                generator, preset = official_generator(checkpoint)
                note = (f"note: {path} is a reference StyleNAT checkpoint, converted in memory (preset {preset}); "
                        f"`stylenat convert {path} G.safetensors` converts it once")
                return (generator.to(device).eval().requires_grad_(False),
                        {"preset": preset, "overrides": {}, "source": str(path), "note": note})
            preset, overrides, info, state = generator_from_training_checkpoint(checkpoint, path)
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
