"""LightningDataModules: an endless real-image stream for GAN training, and labelled train/val for classifiers.

``StyleNATDataModule`` batches are float32 ``[batch_size, 3, R, R]`` in ``[-1, 1]`` per device, drawn by an
:class:`InfiniteSampler` whose ``(epoch, position)`` is saved in Lightning checkpoints and restored on
resume, so the resumed run sees exactly the images the uninterrupted run would have seen.
Under DDP the Trainer needs ``use_distributed_sampler=False`` (the sampler shards itself).

``ClassificationDataModule`` batches are ``(images [B, 3, R, R] in [-1, 1], labels int64 [B])``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from stylenat.data.base import ImageDataset, OnError, stratified_split
from stylenat.data.factory import dataset_kind, open_dataset
from stylenat.data.sampler import InfiniteSampler
from stylenat.data.transforms import check_filter


def _check_loader_args(batch_size: int, num_workers: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")


def _loader_kwargs(num_workers: int) -> dict[str, Any]:
    return dict(num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())


class StyleNATDataModule(L.LightningDataModule):
    """Real images for GAN training: an endless, seeded, DDP-sharded, resumable stream.

    Args:
        path: a folder of images, a zip, an LSUN LMDB folder, or a built-in name (``digits``).
        resolution: image side ``R``; must match the generator's.
        batch_size: images per device per step.
        num_workers: DataLoader worker processes per device.
        xflip: add mirrored copies (StyleGAN's ``--mirror``): each pass shows every image both ways.
        seed: data order; the same seed gives the same stream.
        filter: resize filter (``lanczos``, ``box``, ``bicubic``, ...), used when images are not ``R x R``.
        center_crop: crop non-square images to their centre square (else they are rejected).
        on_error: ``"skip"`` unreadable images (reported with their path) or ``"raise"``.

    The epoch/position saved in checkpoints counts the batches Lightning actually moved to the device
    (``on_after_batch_transfer`` while training), not the ones workers prefetched; so the LightningModule
    must not override the batch-transfer hooks (Lightning would call only this module's).
    """

    def __init__(self, path: str, resolution: int = 256, batch_size: int = 8, num_workers: int = 4,
                 xflip: bool = True, seed: int = 0, filter: str = "lanczos", center_crop: bool = True,
                 on_error: OnError = "skip"):
        super().__init__()
        _check_loader_args(batch_size, num_workers)
        check_filter(filter)
        dataset_kind(path)  # a missing path fails here, before any trainer starts
        self.save_hyperparameters()
        self.dataset: ImageDataset | None = None
        self.sampler: InfiniteSampler | None = None
        self._resume: dict[str, int] | None = None
        self._consumed = 0  # samples trained on since self.sampler was made

    def setup(self, stage: str) -> None:
        if self.dataset is None:
            hp = self.hparams
            self.dataset = open_dataset(hp.path, hp.resolution, xflip=hp.xflip, filter=hp.filter,
                                        center_crop=hp.center_crop, on_error=hp.on_error)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.dataset is not None
        state = self.state_dict()["sampler"]
        self.sampler = InfiniteSampler(len(self.dataset), seed=self.hparams.seed)
        if state is not None:
            self.sampler.load_state_dict(state)
        self._consumed = 0
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size, sampler=self.sampler,
                          drop_last=True, **_loader_kwargs(self.hparams.num_workers))

    def on_after_batch_transfer(self, batch: torch.Tensor, dataloader_idx: int) -> torch.Tensor:
        if self.trainer is not None and self.trainer.training:
            self._consumed += len(batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """``{"sampler": {"epoch", "position", "size", "world_size"}}`` after the batches trained on so far
        (``{"sampler": None}`` before any data was read and nothing was restored)."""
        if self.sampler is not None:
            return {"sampler": self.sampler.state_after(self._consumed)}
        return {"sampler": self._resume}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the stream there; takes effect at the next ``train_dataloader()``."""
        self._resume = state_dict["sampler"]
        self.sampler = None


class ClassificationDataModule(L.LightningDataModule):
    """Labelled images for classifiers: ``(images [B, 3, R, R] in [-1, 1], labels int64 [B])``.

    Labels come from class sub-folders (a folder), ``dataset.json`` (a zip), or the built-in dataset.
    Validation data: the built-in test split (``digits``), else ``val_path`` if given, else a seeded
    per-class ``val_fraction`` of ``path``.

    Args:
        path: a folder with class sub-folders, a zip with labels, or a built-in name (``digits``).
        resolution: image side ``R``.
        batch_size: images per device per step.
        num_workers: DataLoader worker processes per device.
        xflip: add mirrored copies of the training images (not of validation).
        seed: training order and the val split.
        val_path: separate validation data in the same form as ``path``.
        val_fraction: share of each class held out when there is no test split or ``val_path``.
        filter, center_crop, on_error: as for :class:`StyleNATDataModule`.
    """

    def __init__(self, path: str = "digits", resolution: int = 32, batch_size: int = 64, num_workers: int = 4,
                 xflip: bool = False, seed: int = 0, val_path: str | None = None, val_fraction: float = 0.1,
                 filter: str = "bicubic", center_crop: bool = True, on_error: OnError = "skip"):
        super().__init__()
        _check_loader_args(batch_size, num_workers)
        check_filter(filter)
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self._kind = dataset_kind(path)
        if val_path is not None:
            dataset_kind(val_path)
        self.save_hyperparameters()
        self.train_dataset: ImageDataset | None = None
        self.val_dataset: ImageDataset | None = None

    def setup(self, stage: str) -> None:
        if self.train_dataset is not None:
            return
        hp = self.hparams
        options = dict(filter=hp.filter, center_crop=hp.center_crop, use_labels=True, on_error=hp.on_error)
        if self._kind == "builtin":
            train = open_dataset(hp.path, hp.resolution, split="train", xflip=hp.xflip, **options)
            val = open_dataset(hp.path, hp.resolution, split="test", **options)
        elif hp.val_path is not None:
            train = open_dataset(hp.path, hp.resolution, xflip=hp.xflip, **options)
            val = open_dataset(hp.val_path, hp.resolution, **options)
        else:
            full = open_dataset(hp.path, hp.resolution, **options)
            train_positions, val_positions = stratified_split(full.labels, hp.val_fraction, seed=hp.seed)
            train, val = full.subset(train_positions, xflip=hp.xflip), full.subset(val_positions)
        if val.classes != train.classes:
            raise ValueError(f"validation classes {val.classes} differ from training classes {train.classes}")
        self.train_dataset, self.val_dataset = train, val

    @property
    def num_classes(self) -> int:
        """Number of classes (reads the dataset index on first use), for linking to the model."""
        self.setup("fit")
        assert self.train_dataset is not None
        return self.train_dataset.num_classes

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        generator = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.train_dataset, batch_size=self.hparams.batch_size, shuffle=True, generator=generator,
                          **_loader_kwargs(self.hparams.num_workers))

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return DataLoader(self.val_dataset, batch_size=self.hparams.batch_size, shuffle=False,
                          **_loader_kwargs(self.hparams.num_workers))
