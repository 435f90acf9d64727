"""Images from a generator: seeds, batched synthesis, grids, latents and interpolation videos
(``stylenat generate``).

- **Seeds and latents.** ``parse_seeds("0-15,42")``; latents come from
  :func:`stylenat.metrics.z_from_seeds`, so ``generate --seeds 0-49999`` saves exactly the images that
  ``fid`` with seed 0 measures.
- **Images.** :func:`synthesize` runs a generator over latents in batches (truncation applied in the
  mapping, ``w_avg`` never updated; :func:`compile_generator` puts it through torch.compile); images
  are uint8 ``[N, 3, H, W]`` (:func:`stylenat.metrics.to_uint8`).
  :func:`image_grid`, :func:`save_png`, :func:`save_latents`, :func:`write_video`.
- **Interpolation.** :func:`interpolation_latents`: slerp between two z (then mapped) or lerp between
  their w.

Evaluation set-up lives in :mod:`stylenat.metrics`; attention maps in :mod:`stylenat.attention_maps`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from stylenat.metrics import to_uint8
from stylenat.metrics.samples import MAX_SEED
from stylenat.models.generator import Generator

_SEED_PART = re.compile(r"(\d+)(?:-(\d+))?")


def parse_seeds(text: str) -> list[int]:
    """``"0-15,42,100-103"`` -> ``[0, 1, ..., 15, 42, 100, ..., 103]`` (ranges inclusive, order kept,
    repeats dropped); a one-line ``ValueError`` for anything else."""
    seeds: list[int] = []
    for part in text.split(","):
        match = _SEED_PART.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"malformed seeds {text!r}: expected comma-separated seeds and ranges such as "
                             f"0-15,42,100-103 (bad part {part.strip()!r})")
        first, last = int(match[1]), int(match[2] or match[1])
        if first > last or last > MAX_SEED:
            raise ValueError(f"malformed seeds {text!r}: a range must run upwards within [0, {MAX_SEED}], "
                             f"got {part.strip()!r}")
        seeds.extend(range(first, last + 1))
    return list(dict.fromkeys(seeds))


@torch.no_grad()
def synthesize(G: Generator, latents: Tensor, *, space: str = "z", psi: float = 1.0, cutoff: int | None = None,
               batch_size: int = 16, desc: str = "generating") -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(ws [b, num_ws, w_dim], images uint8 [b, 3, H, W])`` on the CPU, batch by batch.

    ``latents`` are z ``[N, z_dim]`` (``space="z"``: mapped with truncation ``psi`` / ``cutoff``) or
    ws ``[N, num_ws, w_dim]`` (``space="w"``: fed to the synthesis network as they are).
    """
    if space not in ("z", "w"):
        raise ValueError(f"latent space must be 'z' or 'w', got {space!r}")
    device = G.synthesis.const.device
    with tqdm(total=len(latents), desc=desc, unit="img") as bar:
        for chunk in latents.split(batch_size):
            chunk = chunk.to(device)
            ws = G.mapping(chunk, psi, cutoff, update_w_avg=False) if space == "z" else chunk
            yield ws.cpu(), to_uint8(G.synthesis(ws)).cpu()
            bar.update(len(chunk))


def check_compile_backend(backend: str, flag: str = "--compile") -> str:
    """``backend`` if torch.compile knows it, else a ``ValueError`` naming ``flag`` and the choices."""
    backends = torch.compiler.list_backends(exclude_tags=())
    if backend not in backends:
        raise ValueError(f"{flag} must name a torch.compile backend ({', '.join(backends)}), got {backend!r}")
    return backend


def compile_generator(G: Generator, backend: str = "inductor") -> Generator:
    """Compile ``G``'s synthesis network in place (``nn.Module.compile``: weights and state-dict keys stay)
    with the torch.compile ``backend``; inductor on a GPU records CUDA graphs (``mode="reduce-overhead"``),
    safe here because :func:`synthesize` copies every batch out before the next. Returns ``G``."""
    check_compile_backend(backend)
    cuda_graphs = backend == "inductor" and G.synthesis.const.device.type == "cuda"
    G.synthesis.compile(backend=backend, mode="reduce-overhead" if cuda_graphs else None)
    return G


def save_png(image: Tensor, path: str | os.PathLike) -> None:
    """Write a uint8 ``[3, H, W]`` image as PNG."""
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


GRID_PADDING = 2  # px of grey between the tiles of a grid (and around them), so samples read without zooming
GRID_PAD_VALUE = 128


def image_grid(images: Tensor, cols: int | None = None) -> Tensor:
    """uint8 ``[N, 3, H, W]`` -> one uint8 ``[3, rows * (H + p) + p, cols * (W + p) + p]`` image with
    ``p =`` :data:`GRID_PADDING` (torchvision's ``make_grid``): row-major, ``p`` px of grey between and around
    the tiles, grey where a row ends early; ``cols`` defaults to ``ceil(sqrt(N))``."""
    cols = cols or math.ceil(math.sqrt(len(images)))
    return torchvision.utils.make_grid(images, nrow=cols, padding=GRID_PADDING, pad_value=GRID_PAD_VALUE)


def save_latents(path: str | os.PathLike, seeds: list[int], z: Tensor, ws: Tensor, **meta) -> None:
    """``.npz`` with ``seeds`` ``[N]``, ``z`` ``[N, z_dim]``, ``w`` ``[N, num_ws, w_dim]`` (as fed to the
    synthesis network: truncation applied) and ``meta`` (a JSON string of ``meta``)."""
    np.savez(path, seeds=np.asarray(seeds, np.int64), z=z.numpy(), w=ws.numpy(), meta=np.array(json.dumps(meta)))


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation of ``a`` and ``b`` ``[D]`` at ``t`` ``[T]`` -> ``[T, D]``; exact at t = 0 and 1.

    The angle comes from the directions; the endpoints keep their own lengths.
    """
    cos = torch.dot(a / a.norm(), b / b.norm()).clamp(-1, 1)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-6:  # (anti)parallel within float error: the straight line is as good
        return torch.lerp(a, b, t[:, None])
    t = t[:, None]
    return torch.sin((1 - t) * omega) / torch.sin(omega) * a + torch.sin(t * omega) / torch.sin(omega) * b


@torch.no_grad()
def interpolation_latents(G: Generator, z_a: Tensor, z_b: Tensor, frames: int, *, space: str = "z",
                          psi: float = 1.0, cutoff: int | None = None) -> Tensor:
    """``frames`` latents from ``z_a`` to ``z_b`` (``[z_dim]`` each), both ends included, for :func:`synthesize`.

    ``space="z"``: slerp between the z (a Gaussian's mass lies on a sphere), returns z ``[frames, z_dim]``;
    ``space="w"``: lerp between their (truncated) ws, returns ws ``[frames, num_ws, w_dim]``.
    """
    if frames < 2:
        raise ValueError(f"an interpolation needs at least 2 frames, got {frames}")
    t = torch.linspace(0, 1, frames)
    if space == "z":
        return slerp(z_a, z_b, t)
    if space == "w":
        device = G.synthesis.const.device
        ws = G.mapping(torch.stack([z_a, z_b]).to(device), psi, cutoff, update_w_avg=False).cpu()
        return torch.lerp(ws[0], ws[1], t[:, None, None])
    raise ValueError(f"latent space must be 'z' or 'w', got {space!r}")


def write_video(frames: Tensor, stem: str | os.PathLike, fps: int = 30) -> Path:
    """Write uint8 ``[T, 3, H, W]`` frames as ``<stem>.mp4`` (torchvision's ``write_video`` with PyAV) or,
    when that writer is missing, as an animated ``<stem>.gif`` (Pillow). Returns the path written."""
    stem = Path(stem)
    write = getattr(torchvision.io, "write_video", None)  # gone from recent torchvision releases
    if write is not None and importlib.util.find_spec("av") is not None:
        path = stem.with_suffix(".mp4")
        write(str(path), frames.permute(0, 2, 3, 1), fps=fps)
        return path
    path = stem.with_suffix(".gif")
    pictures = [Image.fromarray(frame.permute(1, 2, 0).numpy()) for frame in frames]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=round(1000 / fps), loop=0)
    return path
