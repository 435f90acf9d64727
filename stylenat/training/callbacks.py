"""Callbacks of GAN training. Schedules are in thousands of images shown to D (``pl_module.cur_nimg``, kept by
:class:`stylenat.training.gan.StyleNATGAN`), not in optimizer steps. Files go to the run directory
(``trainer.log_dir``, else ``trainer.default_root_dir``), written by rank 0.

    KimgSchedule        when the callbacks below act
    ImageGrids          reals.png at start, fakes_init.png, fakes<kimg>.png: fixed latents through G_ema;
                        also to TensorBoard (step = kimg)
    GeneratorExport     network-snapshot-<kimg>.safetensors and generator.safetensors (the latest): G_ema
                        and its config, for ``load_generator``; also at extra kimg marks
    KimgCheckpoint      Lightning's ModelCheckpoint writing last.ckpt every N kimg and when training ends, and a
                        kept kimg<kimg>.ckpt at extra kimg marks
    KimgProgressBar     the training bar in kimg, with rate and ETA
    CPUThreads          torch's intra-op thread count for the run (CPU demos on shared machines)
    TF32                TF32 on or off for the run on CUDA, restored afterwards
    AtomicCheckpointIO  checkpoints go to a temporary file beside the target, are fsynced, then renamed over it;
                        they are read back as data (no pickle code runs)

``<kimg>`` in file names is :func:`kimg_label`: ``000012`` at a whole kimg, ``000000.016`` between.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins import TorchCheckpointIO
from PIL import Image
from torch import Tensor

from stylenat.data.prepare import prepared_filter
from stylenat.files import atomic_write
from stylenat.generation import image_grid
from stylenat.metrics import to_uint8
from stylenat.metrics.samples import tf32
from stylenat.models.checkpoint import save_generator
from stylenat.models.safe_load import load_torch_file


def crossed(nimg_before: int, nimg_after: int, every_kimg: float | None) -> bool:
    """Whether a step from ``nimg_before`` to ``nimg_after`` images passed a multiple of ``every_kimg`` kimg.

    >>> crossed(960, 1024, 1), crossed(1024, 1088, 1), crossed(0, 64, None)
    (True, False, False)
    """
    if every_kimg is None:
        return False
    every_nimg = max(round(every_kimg * 1000), 1)
    return nimg_after // every_nimg > nimg_before // every_nimg


def kimg_label(nimg: int) -> str:
    """The kimg in snapshot file names: exact and distinct for every ``nimg``, sorting in training order.

    >>> kimg_label(12000), kimg_label(16), kimg_label(1234567)
    ('000012', '000000.016', '001234.567')
    """
    whole, rest = divmod(int(nimg), 1000)
    return f"{whole:06d}" if rest == 0 else f"{whole:06d}.{rest:03d}"


def run_dir(trainer: L.Trainer) -> Path:
    """The run directory; call on every rank (``trainer.log_dir`` is a collective under DDP)."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def crossed_mark(nimg_before: int, nimg_after: int, marks_kimg: Sequence[float]) -> bool:
    """Whether a step from ``nimg_before`` to ``nimg_after`` images reached one of ``marks_kimg``.

    >>> crossed_mark(60_159_936, 60_160_000, [60_160]), crossed_mark(60_160_000, 60_160_064, [60_160])
    (True, False)
    """
    return any(nimg_before < round(mark * 1000) <= nimg_after for mark in marks_kimg)


class KimgSchedule:
    """When a callback driven by images seen acts: after every step that passes a multiple of ``every_kimg``
    thousand images (never if None) or reaches one of ``marks_kimg``, and when training ends unless that state
    is written already (so a fit that trains no step, e.g. resumed from a finished run, writes nothing)."""

    def __init__(self, every_kimg: float | None, marks_kimg: Sequence[float] = ()):
        self.every_kimg = every_kimg
        self.marks_kimg = tuple(marks_kimg)
        self._before = 0  # cur_nimg when the current step began
        self._written = 0  # cur_nimg of the state written last, or found when this fit started

    def start(self, nimg: int) -> None:
        self._before = self._written = nimg

    def step_begins(self, nimg: int) -> None:
        self._before = nimg

    def due(self, nimg: int) -> bool:
        return crossed(self._before, nimg, self.every_kimg) or self.at_mark(nimg)

    def at_mark(self, nimg: int) -> bool:
        """Whether the step that ends at ``nimg`` images reached one of the marks."""
        return crossed_mark(self._before, nimg, self.marks_kimg)

    def due_at_end(self, nimg: int) -> bool:
        return nimg != self._written

    def written(self, nimg: int) -> None:
        self._written = nimg


class KimgScheduled:
    """The hooks of a callback driven by a :class:`KimgSchedule` (``self.schedule``): ``self._act(trainer,
    pl_module)`` runs after every step that passes a multiple of the interval and when training ends (if
    ``self._acts_at_end()``), each act recorded in the schedule. Mix in before the Lightning base class."""

    schedule: KimgSchedule

    def _act(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise NotImplementedError

    def _acts_at_end(self) -> bool:
        return True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.schedule.start(pl_module.cur_nimg)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.schedule.step_begins(pl_module.cur_nimg)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.schedule.due(pl_module.cur_nimg):
            self._scheduled_act(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._acts_at_end() and self.schedule.due_at_end(pl_module.cur_nimg):
            self._scheduled_act(trainer, pl_module)

    def _scheduled_act(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.schedule.written(pl_module.cur_nimg)
        self._act(trainer, pl_module)


class ImageGrids(KimgScheduled, Callback):
    """Sample grids: ``reals.png`` (a seeded choice of training images) when training starts,
    ``fakes_init.png`` before the first step, and ``fakes<kimg>.png`` every ``every_kimg`` and at the end,
    all from the same fixed latents through ``G_ema`` (no truncation). Also logged to every TensorBoard logger
    under ``reals`` and ``fakes`` with the kimg as step.

    Args:
        every_kimg: interval of the fake grids; None: no grids at all.
        grid_size: images per side; None: 8, or 4 from 1024px on.
        seed: the latents and the choice of reals.
        batch_size: G_ema batch when rendering.
    """

    def __init__(self, every_kimg: float | None, grid_size: int | None = None, seed: int = 0, batch_size: int = 16):
        self.schedule = KimgSchedule(every_kimg)
        self.grid_size, self.seed, self.batch_size = grid_size, seed, batch_size
        self._dir: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._dir = run_dir(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.schedule.every_kimg is None or not trainer.is_global_zero:
            return
        dataset = trainer.train_dataloader.dataset
        count = min(self._side(pl_module) ** 2, len(dataset))
        picks = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.seed))[:count]
        self._write(trainer, pl_module, "reals", "reals.png", torch.stack([_image(dataset[int(i)]) for i in picks]))
        if pl_module.cur_nimg == 0:
            self._write(trainer, pl_module, "fakes", "fakes_init.png", self._fakes(pl_module))

    def _acts_at_end(self) -> bool:
        return self.schedule.every_kimg is not None  # None: no grids at all

    def _act(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            name = f"fakes{kimg_label(pl_module.cur_nimg)}.png"
            self._write(trainer, pl_module, "fakes", name, self._fakes(pl_module))

    def _side(self, pl_module: L.LightningModule) -> int:
        return self.grid_size or (8 if pl_module.G_ema.size < 1024 else 4)

    @torch.no_grad()
    def _fakes(self, pl_module: L.LightningModule) -> Tensor:
        """``G_ema`` on the fixed latents: ``[side^2, 3, R, R]``."""
        generator = torch.Generator().manual_seed(self.seed)
        z = torch.randn(self._side(pl_module) ** 2, pl_module.G_ema.z_dim, generator=generator).to(pl_module.device)
        return torch.cat([pl_module.G_ema(chunk, update_w_avg=False).cpu() for chunk in z.split(self.batch_size)])

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str, name: str, images: Tensor) -> None:
        grid = image_grid(to_uint8(images), self._side(pl_module)).permute(1, 2, 0).numpy()  # [H, W, 3]
        assert self._dir is not None
        self._dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(self._dir / name)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tag, grid, global_step=pl_module.cur_nimg // 1000, dataformats="HWC")


def _image(item: Any) -> Tensor:
    """A dataset item (an image, or an ``(image, label)`` pair) -> the image ``[3, R, R]``."""
    return item[0] if isinstance(item, (tuple, list)) else item


class GeneratorExport(KimgScheduled, Callback):
    """Export ``G_ema`` with :func:`stylenat.models.save_generator` as ``network-snapshot-<kimg>.safetensors``
    and ``generator.safetensors`` (always the latest) every ``every_kimg`` (None: never), when training reaches
    each of ``marks_kimg`` and when training ends. The export records ``cur_nimg`` and the resize filter that
    ``stylenat prepare`` recorded for the training data (``data_resize_filter``; ``stylenat fid`` warns when it
    differs from the reference statistics')."""

    def __init__(self, every_kimg: float | None, marks_kimg: Sequence[float] = ()):
        self.schedule = KimgSchedule(every_kimg, marks_kimg)
        self._dir: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._dir = run_dir(trainer)

    def _act(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        assert self._dir is not None
        hp = pl_module.hparams
        data_path = getattr(trainer.datamodule, "hparams", {}).get("path")
        info = {"cur_nimg": pl_module.cur_nimg,
                "data_resize_filter": None if data_path is None else prepared_filter(data_path)}
        for name in (f"network-snapshot-{kimg_label(pl_module.cur_nimg)}.safetensors", "generator.safetensors"):
            save_generator(pl_module.G_ema, self._dir / name, hp.generator, dict(hp.generator_kwargs or {}), info)


class KimgCheckpoint(KimgScheduled, ModelCheckpoint):
    """Lightning's :class:`ModelCheckpoint` writing ``last.ckpt`` every ``every_n_kimg`` thousand images and when
    training ends (the stock one counts ``global_step``, which is two optimizer steps per GAN step, and does not
    save at the end once it has saved before). ``--ckpt_path last`` finds the file in ``dirpath`` (default: the
    run directory's ``checkpoints/``). Uses ModelCheckpoint's private ``_save_last_checkpoint``, which keeps its
    bookkeeping (``last_model_path``, loggers notified) as the stock triggers do. When a step reaches one of
    ``marks_kimg``, the state is also kept as ``kimg<kimg>.ckpt`` beside ``last.ckpt``, never overwritten by
    later saves (e.g. 60160: the released FFHQ-256 model's 940k iterations of 64 images).

    Args:
        every_n_kimg: interval in thousands of images.
        dirpath: checkpoint folder; None: ``<run dir>/checkpoints``.
        marks_kimg: extra points (in kimg) whose checkpoints are kept.
    """

    def __init__(self, every_n_kimg: float = 200.0, dirpath: str | None = None, marks_kimg: Sequence[float] = ()):
        if every_n_kimg <= 0 or any(mark <= 0 for mark in marks_kimg):
            raise ValueError(f"every_n_kimg and marks_kimg must be > 0, got {every_n_kimg} and {list(marks_kimg)}")
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_epochs=0)
        self.every_n_kimg = every_n_kimg
        self.schedule = KimgSchedule(every_n_kimg, marks_kimg)

    def _act(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._should_skip_saving_checkpoint(trainer):  # fast_dev_run, sanity check, not fitting
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        if self.schedule.at_mark(pl_module.cur_nimg):  # every rank calls it; the strategy writes once
            trainer.save_checkpoint(Path(self.dirpath) / f"kimg{kimg_label(pl_module.cur_nimg)}.ckpt",
                                    weights_only=self.save_weights_only)


class KimgProgressBar(TQDMProgressBar):
    """The training bar counts kimg up to ``total_kimg``, with rate and ETA:
    ``Training:  64%|######4   | 7.7/12 kimg [03:02<01:47, 23.65s/kimg, Loss/D=0.961, Loss/G=1.160]``."""

    BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:g} kimg [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

    def init_train_tqdm(self) -> Tqdm:
        return Tqdm(desc="Training", total=self.trainer.lightning_module.hparams.total_kimg, unit="kimg",
                    position=2 * self.process_position, disable=self.is_disabled, leave=True, dynamic_ncols=True,
                    file=sys.stdout, smoothing=0, bar_format=self.BAR_FORMAT)

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar
        bar.reset(total=trainer.lightning_module.hparams.total_kimg)
        bar.initial = bar.n = trainer.lightning_module.cur_nimg / 1000  # resumed runs start part-way

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.is_enabled and ((batch_idx + 1) % self.refresh_rate == 0 or pl_module.done):
            self.train_progress_bar.n = min(pl_module.cur_nimg / 1000, pl_module.hparams.total_kimg)
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar


class CPUThreads(Callback):
    """Run with ``torch.set_num_threads(num_threads)`` from setup to teardown, then restore the previous count.

    On a small CPU shared with other jobs, one thread is often several times faster than two: OpenMP workers
    that get descheduled stall every parallel region.
    """

    def __init__(self, num_threads: int = 1):
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.num_threads = num_threads
        self._previous: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._previous = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous is not None:
            torch.set_num_threads(self._previous)
            self._previous = None


class TF32(Callback):
    """On CUDA, run with TF32 ``enabled`` (float32 matmuls and cuDNN convolutions) from setup to teardown, then
    restore the previous settings, also when the run fails. On other devices nothing changes."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._scope = ExitStack()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if pl_module.device.type == "cuda":  # the strategy's root device, already in setup
            self._scope.enter_context(tf32(self.enabled))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._scope.close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._scope.close()


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` through :func:`stylenat.files.atomic_write` (a temporary file in the target's folder,
    fsync, ``os.replace`` over the target, fsync of the folder): a crash at any point leaves either the previous
    checkpoint or the new one, never a truncated file. (Lightning's default writes a temporary file in the system temp folder and moves it, which
    is a copy, not a rename, when that folder is on another file system; and it never fsyncs.) Remote URLs
    fall back to Lightning's writer.

    Loading reads the file as data (:func:`~stylenat.models.safe_load.load_torch_file`: weights only, our
    allow-list, whatever ``weights_only`` Lightning or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` ask for), so
    ``--ckpt_path`` never runs code from the file. ``stylenat fit/validate/test`` install it in place of
    Lightning's default (:func:`use_safe_checkpoint_io`); in a Python script, pass it in ``plugins``.
    """

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            raise ValueError(f"checkpoint {path}: only local files can be resumed from (copy it here first)")
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        return load_torch_file(path, map_location=map_location)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if "://" in str(path) or storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_write(path) as f:
            torch.save(checkpoint, f)


def use_safe_checkpoint_io(trainer: L.Trainer) -> L.Trainer:
    """Give ``trainer`` an :class:`AtomicCheckpointIO` (safe loading, atomic saving) unless it already has one
    or a custom checkpoint plugin the user chose; returns ``trainer``."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default: loads per torch's setting
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    return trainer
