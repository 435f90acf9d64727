"""Datasets for StyleNAT: image folders, StyleGAN zips, LSUN LMDBs and the built-in ``digits``.

Every dataset yields float32 ``[3, R, R]`` images in ``[-1, 1]`` (or ``(image, label)`` pairs), after
centre crop and resize with a named filter; ``open_dataset`` picks the reader from the path.
``StyleNATDataModule`` streams them endlessly for GAN training (DDP-sharded, resumable),
``ClassificationDataModule`` gives labelled train/val loaders, and ``prepare`` writes a StyleGAN zip.
"""

from stylenat.data.base import BadImageWarning, ImageDataset, UnreadableImageError, stratified_split
from stylenat.data.datamodule import ClassificationDataModule, StyleNATDataModule
from stylenat.data.digits import DigitsDataset
from stylenat.data.factory import BUILTIN_DATASETS, dataset_kind, open_dataset
from stylenat.data.formats import ImageFolderDataset, LSUNDataset, ZipDataset
from stylenat.data.prepare import PrepareResult, prepare
from stylenat.data.sampler import InfiniteSampler
from stylenat.data.transforms import IMAGE_EXTENSIONS, RESIZE_FILTERS

__all__ = [
    "BUILTIN_DATASETS",
    "BadImageWarning",
    "ClassificationDataModule",
    "DigitsDataset",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "ImageFolderDataset",
    "InfiniteSampler",
    "LSUNDataset",
    "PrepareResult",
    "RESIZE_FILTERS",
    "StyleNATDataModule",
    "UnreadableImageError",
    "ZipDataset",
    "dataset_kind",
    "open_dataset",
    "prepare",
    "stratified_split",
]
