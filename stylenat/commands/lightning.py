"""``stylenat fit / validate / test``: LightningCLI over any LightningModule and LightningDataModule.

    stylenat fit --config configs/demo.yaml
    stylenat fit --config configs/ffhq256.yaml --data.path /data/ffhq256.zip --ckpt_path last
    stylenat fit --config configs/demo.yaml --overwrite          # start over where a run already is

The model and data module are chosen by ``class_path`` in the YAML config (GAN or classifier), every
``__init__`` argument is a flag (``--data.path``, ``--trainer.devices 8``), ``--print_config`` prints the
resolved config and every run saves it in its log directory.

``fit`` guards its run directory (``trainer.log_dir``, else ``trainer.default_root_dir``; see
:mod:`stylenat.training.runs`): it locks it for the run, refuses to start a fresh run where one already is
(unless ``--overwrite``, a flag of this command that is not saved in the config), checks the checkpoint it
resumes from (``--ckpt_path last`` with none there is an error, not a fresh start; a finished run says so
and trains nothing), and removes the temporary files of writes that a killed run left. A mistake in the
arguments, the config, the data or the checkpoint, found while parsing, building the objects or in their
``setup`` hooks, and a full disk end with one line ``stylenat fit: error: ...`` and exit code 2.

Values that must agree are set in one place and linked (:data:`LINKED`); ``--print_config`` leaves the linked
values out, as they follow their source, and setting one is an error naming its source:

- ``trainer.default_root_dir`` -> ``trainer.logger.init_args.save_dir``: one flag moves a run directory;
- GAN: ``model.generator`` (+ ``generator_kwargs.size``) -> ``data.resolution``, the generator's image size;
- classifier: the data's class count (``data.num_classes``, read from the dataset) -> ``model.num_classes``.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from stylenat.commands import Command, UsageError, describe, report_error

OVERWRITE = "--overwrite"
"""A flag of ``stylenat fit`` itself, not of the config: it is never saved in the run's ``config.yaml``, so
re-running a saved config cannot overwrite anything by accident."""
FIT_DESCRIPTION = ("Train. --overwrite (a flag of this command, not saved in the config) starts a fresh run in a "
                   "run directory that already holds one; --ckpt_path last resumes it.")
NO_CONFIG_HINT = "no model or data given: start with stylenat fit --config configs/demo.yaml (the CPU demo)"


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
            try:
                with open(value, encoding="utf-8") as file:
                    config = yaml.safe_load(file)
            except (OSError, yaml.YAMLError):
                continue  # LightningCLI reports it in its own words
            given.update(_flatten(config if isinstance(config, dict) else {}))
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


def lightning(args: argparse.Namespace) -> int:
    from jsonargparse import ArgumentError

    if args.command == "fit" and not args.argv:
        return report_error(args.command, UsageError(NO_CONFIG_HINT))
    overwrite = args.command == "fit" and OVERWRITE in args.argv
    cli_args = [args.command, *(a for a in args.argv if not (overwrite and a == OVERWRITE))]
    try:
        check_no_linked_values(cli_args[1:])
    except ValueError as err:
        return report_error(args.command, err)
    try:
        with ExitStack() as cleanup:
            cleanup.enter_context(_without_known_notices())
            # args=None: LightningCLI reads sys.argv itself (and does not warn that both were given)
            _cli_class()(cleanup, overwrite, args=None if cli_args == sys.argv[1:] else cli_args)
    except ArgumentError as err:  # the arguments or the config file
        return report_error(args.command, err)
    except _Finished as done:
        print(done, file=sys.stderr)
        return 0
    except UsageError as err:
        return report_error(args.command, err)
    return 0


def lightning_cli(argv: list[str], run: bool = True):
    """The CLI of ``argv`` as ``stylenat fit`` builds it (links, linked-value check), without the command's
    one-line error reports. ``run=False``: ``argv`` holds only flags; the objects are built, nothing runs."""
    check_no_linked_values(argv)
    return _cli_class()(ExitStack(), False, args=argv, run=run)


KNOWN_NOTICES = (
    r"Found \d+ module\(s\) in eval mode at the start of training",  # G_ema: in eval mode by design
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # inside Lightning, about torch's pytree API
)
"""Warnings that every run would print and that need no action from the user: filtered while a command runs."""


@contextmanager
def _without_known_notices() -> Iterator[None]:
    """Within the block, :data:`KNOWN_NOTICES` and Lightning's advertisement for its cloud logger are not shown."""
    import logging

    def not_an_advert(record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()

    lightning_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with warnings.catch_warnings():
        for message in KNOWN_NOTICES:
            warnings.filterwarnings("ignore", message=message)
        lightning_log.addFilter(not_an_advert)
        try:
            yield
        finally:
            lightning_log.removeFilter(not_an_advert)


class _Finished(Exception):
    """The run to resume has already trained to ``total_kimg``: nothing to do."""


def _cli_class():
    """:class:`LightningCLI` with the run-directory guard of ``fit`` and one-line errors (built on first use, so
    that importing this module does not import Lightning)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    from stylenat.training.callbacks import run_dir, use_safe_checkpoint_io
    from stylenat.training.runs import (RunError, RunLock, earlier_run_outputs, read_checkpoint,
                                        remove_stale_temporaries)

    class StyleNATCLI(LightningCLI):
        def __init__(self, cleanup: ExitStack, overwrite: bool, args: list[str] | None, run: bool = True):
            self.cleanup = cleanup  # the run lock is released through it, however fit ends
            self.overwrite = overwrite
            parser_kwargs = {"exit_on_error": False, "fit": {"description": FIT_DESCRIPTION}}
            super().__init__(LightningModule, LightningDataModule, subclass_mode_model=True,
                             subclass_mode_data=True, save_config_kwargs={"overwrite": True},
                             parser_kwargs=parser_kwargs if run else {"exit_on_error": False}, args=args, run=run)

        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            # The links of the module docstring; one whose source or target the chosen classes lack is skipped.
            parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir")
            parser.link_arguments(("model.init_args.generator", "model.init_args.generator_kwargs"),
                                  "data.init_args.resolution", compute_fn=generator_size)
            parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

        def instantiate_trainer(self, **kwargs):  # --ckpt_path is read as data, never run (AtomicCheckpointIO)
            return use_safe_checkpoint_io(super().instantiate_trainer(**kwargs))

        def _parse_ckpt_path(self) -> None:
            """LightningCLI reads the hyper-parameters of a ``--ckpt_path`` file here, before anything else:
            check the file first, so a damaged or planted one is one line too."""
            subcommand = self.config.get("subcommand")
            ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
            if ckpt_path and Path(ckpt_path).is_file():
                try:
                    read_checkpoint(ckpt_path)
                except RunError as err:
                    raise UsageError(str(err)) from err
            super()._parse_ckpt_path()

        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except (ValueError, TypeError, OSError) as err:  # a bad value or path in the config: its own words
                raise UsageError(_root_cause(err)) from err

        def fit(self, model: LightningModule, **kwargs) -> None:
            if rank_zero_only.rank == 0:  # DDP ranks started by rank 0 share its run directory and its lock
                kwargs["ckpt_path"] = self._guard_run_directory(kwargs.get("ckpt_path"))
            try:
                self.trainer.fit(model, **kwargs)
            except OSError as err:  # a full disk, a vanished dataset: one line naming the path
                if err.filename is None:
                    err = OSError(err.errno, err.strerror, str(run_dir(self.trainer)))
                raise UsageError(describe(err)) from err
            except ValueError as err:
                if not _raised_in_setup(err):  # a bug in training: keep the traceback
                    raise
                raise UsageError(describe(err)) from err

        def _guard_run_directory(self, ckpt_path: str | None) -> str | None:
            """Lock the run directory and check the run may start (or resume) there; returns the checkpoint to
            resume from (``last`` resolved)."""
            trainer = self.trainer
            directory = run_dir(trainer)
            lock = RunLock(directory)
            try:
                stale = lock.acquire()
            except RunError as err:
                raise UsageError(str(err)) from err
            self.cleanup.callback(lock.release)
            if stale:
                print(f"note: took over the stale lock of a run that is gone (pid {stale.get('pid')} on "
                      f"{stale.get('host')}) in {directory}", file=sys.stderr)
            checkpoint_dirs = {Path(cb.dirpath) for cb in trainer.checkpoint_callbacks
                               if isinstance(cb, ModelCheckpoint) and cb.dirpath}
            remove_stale_temporaries(directory, directory / "checkpoints", *checkpoint_dirs)
            if ckpt_path is None:
                outputs = earlier_run_outputs(directory)
                if outputs and not self.overwrite:
                    shown = ", ".join(outputs[:3]) + (", ..." if len(outputs) > 3 else "")
                    raise UsageError(f"{directory} already holds a run ({shown}): resume it with --ckpt_path last, "
                                     "start over there with --overwrite, or choose another run directory")
                return None
            if ckpt_path == "last":
                ckpt_path = self._last_checkpoint(directory)
            try:
                checkpoint = read_checkpoint(ckpt_path)
            except RunError as err:
                raise UsageError(str(err)) from err
            self._stop_if_finished(checkpoint, directory)
            return str(ckpt_path)

        def _last_checkpoint(self, directory: Path) -> str:
            """The newest ``last*.ckpt`` of the checkpoint callbacks, as Lightning resolves ``ckpt_path="last"``."""
            candidates = set()
            for callback in self.trainer.checkpoint_callbacks:
                if isinstance(callback, ModelCheckpoint):
                    candidates |= callback._find_last_checkpoints(self.trainer)
            if not candidates:
                raise UsageError(f"--ckpt_path last: no last checkpoint in {directory / 'checkpoints'} to resume from; "
                                 "run without --ckpt_path to start a fresh run")
            return max(candidates, key=lambda path: Path(path).stat().st_mtime)

        def _stop_if_finished(self, checkpoint: dict, directory: Path) -> None:
            total_kimg = self.model.hparams.get("total_kimg")
            cur_nimg = checkpoint.get("cur_nimg")
            if total_kimg is not None and cur_nimg is not None and cur_nimg >= round(total_kimg * 1000):
                raise _Finished(f"{directory}: already finished at {cur_nimg / 1000:g} kimg (model.total_kimg is "
                                f"{total_kimg:g}); nothing to train. Raise --model.total_kimg to train further.")

    return StyleNATCLI


def _raised_in_setup(err: BaseException) -> bool:
    """Whether ``err`` came from a ``setup`` / ``prepare_data`` hook: a mistake in the config or the data (the
    data resolution against the generator's, a dataset that does not open), not a bug in a training step."""
    return any(frame.f_code.co_name in ("setup", "prepare_data") for frame, _ in traceback.walk_tb(err.__traceback__))


def _root_cause(err: BaseException) -> str:
    """The innermost cause of ``err`` as one line (jsonargparse wraps a constructor's error in its own)."""
    while err.__cause__ is not None:
        err = err.__cause__
    return describe(err)


FIT = Command("train with LightningCLI (stylenat fit --help)", add_arguments, lightning, passthrough=True)
VALIDATE = Command("LightningCLI validate: the validation loop on a checkpoint", add_arguments, lightning,
                   passthrough=True)
TEST = Command("LightningCLI test: the test loop on a checkpoint", add_arguments, lightning, passthrough=True)
