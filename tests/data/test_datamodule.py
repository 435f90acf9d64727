"""LightningDataModules: the GAN stream resumes exactly through a checkpoint; classification loaders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from PIL import Image

from stylenat.data import ClassificationDataModule, StyleNATDataModule

NUM_IMAGES = 12


@pytest.fixture
def grey_folder(tmp_path: Path) -> Path:
    """Twelve solid 8x8 images, image ``i`` of grey level ``10 + 20 i``, so a batch tells which images it holds."""
    for i in range(NUM_IMAGES):
        Image.fromarray(np.full((8, 8, 3), 10 + 20 * i, np.uint8)).save(tmp_path / f"{i:02d}.png")
    return tmp_path


def identities(batch: torch.Tensor) -> list[int]:
    grey = (batch.mean((1, 2, 3)) + 1) * 127.5
    return ((grey - 10) / 20).round().int().tolist()


class Recorder(L.LightningModule):
    """Trains nothing; records which images each training step received."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[list[int]] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        assert batch.shape[1:] == (3, 8, 8)
        self.seen.append(identities(batch))
        return self.weight * 0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(datamodule: StyleNATDataModule, max_steps: int, ckpt_path: Path | None = None,
        save_to: Path | None = None) -> list[list[int]]:
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False)
    model = Recorder()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    if save_to is not None:
        trainer.save_checkpoint(save_to)
    return model.seen


def make(folder: Path) -> StyleNATDataModule:
    return StyleNATDataModule(str(folder), resolution=8, batch_size=4, num_workers=2, xflip=False, seed=11)


def test_gan_stream_is_endless_and_advances_epochs(grey_folder):
    datamodule = make(grey_folder)
    seen = fit(datamodule, max_steps=8)
    epochs = [sum(seen[3 * e: 3 * e + 3], []) for e in range(2)]  # 12 images / batch 4 = 3 steps per epoch
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(NUM_IMAGES)) and epochs[0] != epochs[1]
    # counted from the batches trained on, not the ones the two workers prefetched
    assert datamodule.state_dict() == {"sampler": {"epoch": 2, "position": 8, "size": 12, "world_size": 1}}
    assert fit(make(grey_folder), max_steps=8) == seen  # deterministic given the seed


def test_gan_stream_resumes_exactly_from_a_checkpoint(grey_folder, tmp_path):
    uninterrupted = fit(make(grey_folder), max_steps=7)
    first = fit(make(grey_folder), max_steps=4, save_to=tmp_path / "mid.ckpt")
    checkpoint = torch.load(tmp_path / "mid.ckpt", weights_only=False)
    assert checkpoint["StyleNATDataModule"] == {"sampler": {"epoch": 1, "position": 4, "size": 12, "world_size": 1}}
    rest = fit(make(grey_folder), max_steps=7, ckpt_path=tmp_path / "mid.ckpt")
    assert first + rest == uninterrupted


def test_gan_xflip_doubles_the_epoch(grey_folder):
    datamodule = StyleNATDataModule(str(grey_folder), resolution=8, batch_size=4, num_workers=0, xflip=True)
    datamodule.setup("fit")
    assert len(datamodule.dataset) == 2 * NUM_IMAGES
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.shape == (4, 3, 8, 8) and batch.min() >= -1 and batch.max() <= 1


def test_gan_datamodule_checks_arguments_up_front(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere' does not exist"):
        StyleNATDataModule(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        StyleNATDataModule("digits", batch_size=0)
    with pytest.raises(ValueError, match="unknown resize filter 'fancy'"):
        StyleNATDataModule("digits", filter="fancy")


def test_classification_on_digits():
    datamodule = ClassificationDataModule("digits", resolution=32, batch_size=16, num_workers=0)
    assert datamodule.num_classes == 10
    assert (len(datamodule.train_dataset), len(datamodule.val_dataset)) == (1438, 359)
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (16, 3, 32, 32) and labels.dtype == torch.int64 and labels.shape == (16,)
    val_images, val_labels = next(iter(datamodule.val_dataloader()))
    assert val_labels.tolist() == datamodule.val_dataset.labels[:16]  # validation is in order


def test_classification_folder_split_and_val_path(class_folder, tmp_path):
    datamodule = ClassificationDataModule(str(class_folder), resolution=16, batch_size=4, num_workers=0,
                                          val_fraction=0.2, xflip=True)
    datamodule.setup("fit")
    train, val = datamodule.train_dataset, datamodule.val_dataset
    assert datamodule.num_classes == 3 and val.num_images == 6 and train.num_images == 24
    assert len(train) == 48 and len(val) == 6  # mirrored copies for training only
    assert sorted(val.labels) == [0, 0, 1, 1, 2, 2]
    assert not {train.where(i) for i in range(24)} & {val.where(i) for i in range(6)}
    separate = ClassificationDataModule(str(class_folder), resolution=16, num_workers=0, val_path=str(class_folder))
    assert len(separate.val_dataloader().dataset) == 30


def test_classification_needs_labels(image_folder):
    datamodule = ClassificationDataModule(str(image_folder), num_workers=0)
    with pytest.raises(ValueError, match="outside class sub-folders"):
        datamodule.setup("fit")


class ShardRecorder(Recorder):
    """Writes what this rank trained on to ``out_dir/rank<r>.json`` (ranks run in forked processes)."""

    def __init__(self, out_dir: Path):
        super().__init__()
        self.out_dir = out_dir

    def on_train_end(self) -> None:
        state = self.trainer.datamodule.state_dict()
        (self.out_dir / f"rank{self.global_rank}.json").write_text(json.dumps({"seen": self.seen, "state": state}))


def test_gan_stream_is_sharded_across_ddp_ranks(grey_folder, tmp_path):
    trainer = L.Trainer(max_steps=3, accelerator="cpu", devices=2, strategy="ddp_fork", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False)
    datamodule = StyleNATDataModule(str(grey_folder), resolution=8, batch_size=2, num_workers=0, xflip=False)
    trainer.fit(ShardRecorder(tmp_path), datamodule=datamodule)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    first_epoch = [sum(rank["seen"], []) for rank in ranks]  # 12 images / (2 ranks x 2 per batch) = 3 steps
    assert not set(first_epoch[0]) & set(first_epoch[1])
    assert sorted(first_epoch[0] + first_epoch[1]) == list(range(NUM_IMAGES))
    assert ranks[0]["state"] == {"sampler": {"epoch": 1, "position": 0, "size": 12, "world_size": 2}}


def test_typed_arguments_parse_with_lightning_cli(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["stylenat"])
    cli = LightningCLI(Recorder, StyleNATDataModule, run=False,
                       args=["--data.path", "digits", "--data.resolution", "32", "--data.on_error", "raise",
                             "--trainer.logger", "false"])
    assert cli.datamodule.hparams.on_error == "raise" and cli.datamodule.hparams.resolution == 32


def test_lightning_distributed_sampler_injection_fails_with_instructions(grey_folder):
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=2, strategy="ddp_fork", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    datamodule = StyleNATDataModule(str(grey_folder), resolution=8, batch_size=2, num_workers=0)
    with pytest.raises(Exception, match="pass use_distributed_sampler=False to the Lightning Trainer"):
        trainer.fit(Recorder(), datamodule=datamodule)
