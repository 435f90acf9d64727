"""``stylenat fit / validate / test``: LightningCLI over any LightningModule and LightningDataModule.

    stylenat fit --config configs/demo.yaml
    stylenat fit --config configs/ffhq256.yaml --data.path /data/ffhq256.zip --ckpt_path last

The model and data module are chosen by ``class_path`` in the YAML config (GAN or classifier), every
``__init__`` argument is a flag (``--data.path``, ``--trainer.devices 8``), ``--print_config`` prints the
resolved config and every run saves it in its log directory.

Values that must agree are set in one place and linked (:func:`lightning_cli`); ``--print_config`` leaves the
linked values out, as they follow their source, and setting one is an error naming its source:

- ``trainer.default_root_dir`` -> ``trainer.logger.init_args.save_dir``: one flag moves a run directory;
- GAN: ``model.generator`` (+ ``generator_kwargs.size``) -> ``data.resolution``, the generator's image size;
- classifier: the data's class count (``data.num_classes``, read from the dataset) -> ``model.num_classes``.
"""

from __future__ import annotations

import argparse
from typing import Any

from stylenat.commands import Command


def generator_size(generator: str, generator_kwargs: dict[str, Any] | None) -> int:
    """The image size of generator preset ``generator`` with ``generator_kwargs`` applied."""
    from stylenat.models.generator import PRESETS

    if generator not in PRESETS:
        raise ValueError(f"model.generator: unknown preset {generator!r}; choose from {sorted(PRESETS)}")
    return (generator_kwargs or {}).get("size", PRESETS[generator]["size"])


# Linked values: target -> (the model class it applies to, None: any; where it is set). LightningCLI would
# silently replace a target given by the user, so check_no_linked_values refuses one.
LINKED = {"trainer.logger.save_dir": (None, "--trainer.default_root_dir"),
          "data.resolution": ("StyleNATGAN", "the generator (model.generator, model.generator_kwargs.size)"),
          "model.num_classes": ("ImageClassifier", "the data (its class count)")}


def check_no_linked_values(argv: list[str]) -> None:
    """ValueError if a flag or a ``--config`` file of ``argv`` sets a linked value, naming where it is set."""
    import yaml

    given: dict[str, object] = {}  # dotted key -> value, later sources win
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        key, _, value = arg[2:].partition("=")
        value = value or (argv[i + 1] if i + 1 < len(argv) else "")
        if key == "config":
            with open(value, encoding="utf-8") as file:
                given.update(_flatten(yaml.safe_load(file) or {}))
        else:
            given[key] = value
    model_class = str(given.get("model.class_path", given.get("model", "")))
    for key in given:
        plain = key.replace(".init_args.", ".")
        if plain in LINKED:
            applies_to, source = LINKED[plain]
            if applies_to is None or model_class.endswith(applies_to):
                raise ValueError(f"{key} is linked and cannot be set: it follows {source}")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a": {...}, "a.b": 1}``."""
    flat = {}
    for key, value in tree.items():
        flat[prefix + str(key)] = value
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """None: LightningCLI parses the arguments (``stylenat fit --help``)."""


def lightning_cli(argv: list[str], run: bool = True):
    """The :class:`~lightning.pytorch.cli.LightningCLI` of ``argv`` (with ``run``, a subcommand and its flags;
    without, only flags), with the links of the module docstring."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    check_no_linked_values(argv)

    class StyleNATCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            # A link whose source or target the chosen classes lack is skipped (GAN vs classifier).
            parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir")
            parser.link_arguments(("model.init_args.generator", "model.init_args.generator_kwargs"),
                                  "data.init_args.resolution", compute_fn=generator_size)
            parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    return StyleNATCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       save_config_kwargs={"overwrite": True}, args=argv, run=run)


def lightning(args: argparse.Namespace) -> int:
    lightning_cli([args.command, *args.argv])
    return 0


FIT = Command("train with LightningCLI (stylenat fit --help)", add_arguments, lightning, passthrough=True)
VALIDATE = Command("LightningCLI validate: the validation loop on a checkpoint", add_arguments, lightning,
                   passthrough=True)
TEST = Command("LightningCLI test: the test loop on a checkpoint", add_arguments, lightning, passthrough=True)
