"""Tiny deterministic stand-ins for Inception and a generator, and image folders to measure."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from stylenat.metrics import CleanFIDExtractor

RES = 16
Z_DIM = 8


class TinyNet(nn.Module):
    """float [N, 3, h, w] in [0, 255] (any size) -> [N, 8]; fixed weights."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, kernel_size=5, stride=4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.2)
            self.conv.bias.copy_(torch.randn(8, generator=g) * 0.1)

    def forward(self, x):
        return torch.tanh(self.conv(x / 127.5 - 1)).mean(dim=(2, 3))


def tiny_extractor(mode="clean"):
    return CleanFIDExtractor(TinyNet(), name="tiny", feature_dim=8, mode=mode)


class TinyClassifier(CleanFIDExtractor):
    """``tiny_extractor``'s features, and 4 classes from them through a fixed linear head (for readability)."""

    def __init__(self, mode="clean"):
        super().__init__(TinyNet(), name="tiny", feature_dim=8, mode=mode)
        self.head = torch.randn(8, 4, generator=torch.Generator().manual_seed(2)) * 8

    def class_probabilities(self, features):
        return (torch.as_tensor(features, dtype=torch.float32) @ self.head).softmax(dim=1)


class TinyGenerator(nn.Module):
    """z [B, 8] -> images [B, 3, 16, 16] in [-1, 1]; fixed weights."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.weight = nn.Parameter(torch.randn(Z_DIM, 3 * RES * RES, generator=g))

    def forward(self, z):
        return torch.tanh(z @ self.weight).view(-1, 3, RES, RES)


def random_images(n, seed, res=RES):
    """uint8 [n, res, res, 3]: a random colour per image plus noise, so features vary between images."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 1, 1, 3))
    noise = rng.integers(-40, 41, size=(n, res, res, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_pngs(folder, images_hwc, prefix="img"):
    """Save uint8 [n, H, W, 3] images as PNGs in ``folder``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images_hwc):
        Image.fromarray(img).save(folder / f"{prefix}{i:04d}.png")
    return folder
