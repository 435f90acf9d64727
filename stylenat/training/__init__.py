"""Training: LightningModules (GAN, classifier), losses and regularisers, generator EMA and callbacks
(sample grids, FID/KID evaluation, metric JSONL)."""

from stylenat.training.augment import bcr_augment
from stylenat.training.callbacks import (AtomicCheckpointIO, CPUThreads, GeneratorExport, ImageGrids,
                                         KimgCheckpoint, KimgProgressBar)
from stylenat.training.gan import StyleNATGAN
from stylenat.training.losses import consistency_loss, d_logistic_loss, g_nonsaturating_loss, r1_penalty

__all__ = [
    "AtomicCheckpointIO",
    "CPUThreads",
    "GeneratorExport",
    "ImageGrids",
    "KimgCheckpoint",
    "KimgProgressBar",
    "StyleNATGAN",
    "bcr_augment",
    "consistency_loss",
    "d_logistic_loss",
    "g_nonsaturating_loss",
    "r1_penalty",
]
