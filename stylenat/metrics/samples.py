"""Sampling a generator for evaluation: seeded latents, uint8 pixels, features sharded over DDP ranks.

StyleGAN's conventions, so that evaluation sees exactly the images ``stylenat generate`` saves:

- **Latents.** Seed ``s`` gives ``z = np.random.RandomState(s).randn(z_dim)``. Evaluation sample ``i``
  with base seed ``s`` uses seed ``s + i``: ``fid50k`` with seed 0 measures the images of
  ``generate --seeds 0-49999``, whatever the batch size or the number of ranks.
- **Pixels.** ``x`` in [-1, 1] becomes ``(x * 127.5 + 128).clamp(0, 255).to(uint8)``: the cast
  truncates, so this rounds ``x * 127.5 + 127.5`` to the nearest integer. PNGs saved from the same
  output hold the same bytes.
- **Precision.** Metrics never run in TF32 (:func:`strict_float32`): training may allow it, but an
  in-training FID then equals ``stylenat fid`` on the same checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from stylenat.metrics.distributed import gather_features, own_share, rank_and_world, shard
from stylenat.metrics.extractors import FeatureExtractor

GeneratorFn = Callable[[Tensor], Tensor]
"""``z`` ``[B, z_dim]`` -> images float ``[B, 3, H, W]`` in [-1, 1] (truncation etc. applied inside)."""

MAX_SEED = 2**32 - 1


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """Run the block with TF32 on or off for float32 matmuls (precision ``high`` / ``highest``) and cuDNN
    convolutions; the previous settings are restored afterwards, even on error."""
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn


def strict_float32() -> AbstractContextManager[None]:
    """``tf32(False)``: the block runs in strict float32, then the previous settings come back."""
    return tf32(False)


def to_uint8(images: Tensor) -> Tensor:
    """float ``[N, 3, H, W]`` in [-1, 1] -> uint8 ``[N, 3, H, W]``, as saved PNGs hold them (see module doc)."""
    if not images.is_floating_point():
        raise ValueError(f"to_uint8 takes float images in [-1, 1], got {images.dtype}")
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def z_from_seeds(seeds: Iterable[int], z_dim: int) -> Tensor:
    """Latents ``[len(seeds), z_dim]`` (float32, CPU): row k is ``RandomState(seeds[k]).randn(z_dim)``."""
    seeds = list(seeds)
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise ValueError(f"seeds must lie in [0, {MAX_SEED}], got {bad[:5]}")
    z = np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds]) if seeds else np.empty((0, z_dim))
    return torch.from_numpy(z.astype(np.float32))


@torch.no_grad()
def generator_features(generator: GeneratorFn, extractor: FeatureExtractor, *, num_samples: int, seed: int = 0,
                       z_dim: int = 512, batch_size: int = 32, device: str | torch.device = "cpu",
                       resolution: int | None = None, verbose: bool = True) -> np.ndarray:
    """Features ``[num_samples, D]`` of samples ``0 .. num_samples-1`` (seeds ``seed + i``), in order.

    Images must be ``resolution`` pixels square when it is given (that of the reference statistics).
    The generator and the extractor run with TF32 off (:func:`strict_float32`). Under DDP each rank
    generates a contiguous shard and all ranks gather the result (every rank must call this). A progress
    bar on rank 0 counts that rank's images.
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    if not 0 <= seed <= MAX_SEED - (num_samples - 1):
        raise ValueError(f"seeds {seed}..{seed + num_samples - 1} must lie in [0, {MAX_SEED}]")
    rank, world = rank_and_world()
    mine = shard(num_samples, rank, world)

    def work() -> np.ndarray:
        feats = [np.empty((0, extractor.feature_dim), np.float32)]
        with tqdm(total=len(mine), desc=f"sampling for {extractor.name} features", unit="img",
                  disable=not verbose or rank != 0) as bar:
            for start in range(mine.start, mine.stop, batch_size):
                seeds = range(seed + start, seed + min(start + batch_size, mine.stop))
                images = generator(z_from_seeds(seeds, z_dim).to(device))
                if images.ndim != 4 or images.shape[:2] != (len(seeds), 3):
                    raise ValueError(f"the generator returned {tuple(images.shape)} for {len(seeds)} latents; "
                                     "expected [B, 3, H, W] in [-1, 1]")
                if resolution is not None and images.shape[2:] != (resolution, resolution):
                    raise ValueError(f"the generator makes {images.shape[2]}x{images.shape[3]} images, but the "
                                     f"reference statistics are for {resolution}x{resolution}")
                feats.append(extractor(to_uint8(images)).cpu().numpy())
                bar.update(len(seeds))
        return np.concatenate(feats)

    with strict_float32():
        return gather_features(np.arange(mine.start, mine.stop), own_share(work))
