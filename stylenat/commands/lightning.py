"""``stylenat fit / validate / test``: LightningCLI over any LightningModule and LightningDataModule.

    stylenat fit --config configs/demo.yaml
    stylenat fit --config configs/ffhq256.yaml --data.path /data/ffhq256.zip --ckpt_path last

The model and data module are chosen by ``class_path`` in the YAML config (GAN or classifier), every
``__init__`` argument is a flag (``--data.path``, ``--trainer.devices 8``), ``--print_config`` prints the
resolved config and every run saves it in its log directory.
"""

from __future__ import annotations

import argparse

from stylenat.commands import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """None: LightningCLI parses the arguments (``stylenat fit --help``)."""


def lightning(args: argparse.Namespace) -> int:
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    from stylenat.training.callbacks import use_safe_checkpoint_io

    class CLI(LightningCLI):
        def instantiate_trainer(self, **kwargs):  # --ckpt_path is read as data, never run (AtomicCheckpointIO)
            return use_safe_checkpoint_io(super().instantiate_trainer(**kwargs))

    CLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
        save_config_kwargs={"overwrite": True}, args=[args.command, *args.argv])
    return 0


FIT = Command("train with LightningCLI (stylenat fit --help)", add_arguments, lightning, passthrough=True)
VALIDATE = Command("LightningCLI validate: the validation loop on a checkpoint", add_arguments, lightning,
                   passthrough=True)
TEST = Command("LightningCLI test: the test loop on a checkpoint", add_arguments, lightning, passthrough=True)
