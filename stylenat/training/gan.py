"""StyleNAT GAN training: the LightningModule behind the GAN configs.

    stylenat fit --config configs/demo.yaml                                   # CPU demo on the built-in digits
    stylenat fit --config configs/ffhq256.yaml --data.path /data/ffhq256.zip
    stylenat fit --config configs/ffhq256.yaml --data.path /data/ffhq256.zip --ckpt_path last   # resume

One training step on a batch of reals ``[B, 3, R, R]`` in [-1, 1] per device (global batch ``B * world_size``):

1. D step: fakes from G under ``no_grad`` (detached; G's ``w_avg`` tracks their w, averaged over ranks), loss
   ``softplus(-D(real)) + softplus(D(fake))`` plus bCR; D's gradient norm clipped; Adam step.
2. Every ``r1_interval``-th step: lazy R1 on the same reals, scaled by the interval, as its own D Adam step
   (so D's Adam lr and betas are adjusted by ``interval / (interval + 1)``, StyleGAN2's lazy regularisation).
3. G step with D frozen: ``softplus(-D(G(z)))`` on fresh latents; Adam step.
4. ``G_ema`` moves towards G with a decay set by the global batch (a half-life in images); buffers copied.

Pixel space (``pixel_space``, see :mod:`stylenat.models.pixels`): with ``imagenet`` (the reference's), reals
are mapped to ImageNet-normalised pixels before D, G's output is read in that space, and D's loss, bCR (its
augmentations, fills and pivots) and R1 (the gradient with respect to those pixels) all happen there. ``G_ema``
always makes [-1, 1] images: it averages G with the exact ToRGB fold applied (the fold is affine, so folding
the average equals averaging the folded weights), so grids, exports, metrics and ``load_generator`` on a
training checkpoint need no conversion. With ``minus1_1`` every network sees [-1, 1] pixels.

Progress is counted in images shown to D (``cur_nimg``, logged as kimg), never in optimizer steps; the
learning rates are recomputed from ``cur_nimg`` before every step (constant, then linear to 0 between
``decay_start_kimg`` and ``decay_end_kimg``). Step ``i`` of rank ``r`` draws all its random numbers (latents,
bCR augmentations, style mixing) from the global generators seeded with ``(rng_seed, r, i)``: a resumed run
repeats the uninterrupted one exactly with no RNG state to restore, and DDP ranks draw different latents.
The data order is restored by :class:`stylenat.data.StyleNATDataModule`; G, D, G_ema (``w_avg`` included),
both optimizers and ``cur_nimg`` by the Lightning checkpoint.

Under DDP use the strategy ``ddp_find_unused_parameters_true``: each phase leaves one network without
gradients.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function

from stylenat.models.discriminator import create_discriminator
from stylenat.models.generator import Generator, create_generator
from stylenat.models.pixels import PIXEL_SPACES, fold_output, imagenet_output_fold, to_pixel_space
from stylenat.training.augment import bcr_augment
from stylenat.training.callbacks import TF32, GeneratorExport, ImageGrids
from stylenat.training.ema import frozen_copy, update_ema
from stylenat.training.losses import consistency_loss, d_logistic_loss, g_nonsaturating_loss, r1_penalty

PHASE_SCOPES = {"D": "stylenat::D step", "R1": "stylenat::R1 step", "G": "stylenat::G step",
                "G_ema": "stylenat::G_ema update", "bCR": "stylenat::bCR"}
"""The ``torch.profiler`` scopes (``record_function`` names) around the phases of a training step, keyed by phase:
profiles of training (``scripts/profile_cpu.py``, Lightning's PyTorchProfiler) show them by these names."""

# ---------------------------------------------------------------------------------------------
# Recipe pieces, as plain functions


def ema_decay(global_batch: int, cur_nimg: int, half_life_kimg: float, rampup: float | None = None) -> float:
    """Per-step decay of G_ema: ``0.5 ** (global_batch / half_life_images)`` (StyleGAN2-ADA).

    With ``rampup``, the half-life is at most ``cur_nimg * rampup`` images, so early averages forget fast.

    >>> round(ema_decay(64, 0, 10.0), 6)
    0.995574
    """
    half_life = half_life_kimg * 1000
    if rampup is not None:
        half_life = min(half_life, cur_nimg * rampup)
    return 0.5 ** (global_batch / max(half_life, 1e-8))


def in_decay(cur_nimg: int, decay_start_kimg: float | None) -> bool:
    """Whether ``cur_nimg`` images are past the start of the learning-rate decay."""
    return decay_start_kimg is not None and cur_nimg > decay_start_kimg * 1000


def lr_factor(cur_nimg: int, decay_start_kimg: float | None, decay_end_kimg: float | None) -> float:
    """Learning-rate multiplier after ``cur_nimg`` images: 1 until ``decay_start_kimg``, then linearly to 0
    at ``decay_end_kimg`` (and 0 after). No decay when the bounds are None.

    >>> [lr_factor(n, 1, 3) for n in (0, 1000, 2000, 3000, 4000)]
    [1.0, 1.0, 0.5, 0.0, 0.0]
    """
    if decay_start_kimg is None or decay_end_kimg is None:
        return 1.0
    progress = (cur_nimg / 1000 - decay_start_kimg) / (decay_end_kimg - decay_start_kimg)
    return 1.0 - min(max(progress, 0.0), 1.0)


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of every random draw of training step ``step`` on rank ``rank``."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory of this process: CUDA memory allocated on ``device``, else the resident set (Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# ---------------------------------------------------------------------------------------------
# The LightningModule


class StyleNATGAN(L.LightningModule):
    """A StyleNAT generator against the wavelet discriminator, with the paper's recipe as defaults.

    Batches are reals ``[B, 3, R, R]`` in ``[-1, 1]`` (:class:`stylenat.data.StyleNATDataModule`); ``R`` must
    be the generator's size. Holds ``G``, ``D`` and ``G_ema`` (always in eval mode); the hyper-parameters
    ``generator`` and ``generator_kwargs`` rebuild G for :func:`stylenat.checkpoints.load_generator`.

    Logs ``Loss/G``, ``Loss/D`` (logistic part), ``Loss/bcr``, ``Loss/r1`` (the raw penalty, on R1 steps),
    ``Logits/real``, ``Logits/fake`` (mean D outputs), ``Progress/kimg``, ``Progress/kimg_per_s``,
    ``Progress/lr_g``, ``Progress/lr_d`` and ``Resources/peak_memory_gib``. Adds the callbacks
    :class:`~stylenat.training.callbacks.TF32`, :class:`~stylenat.training.callbacks.ImageGrids` and
    :class:`~stylenat.training.callbacks.GeneratorExport`.

    Args:
        generator, discriminator: preset names (``ffhq256``, ``ffhq1024``, ``church256``, ``demo``).
        generator_kwargs, discriminator_kwargs: keyword overrides of the presets.
        lr_d: D's Adam learning rate. lr_g: G's; None gives ``lr_d / 4`` (TTUR, the paper's).
        betas: Adam betas of both (D's are adjusted for lazy R1).
        r1_gamma: R1 weight (``gamma / 2 * penalty``); 0 turns R1 off.
        r1_interval: apply R1 every this many steps, scaled by it (lazy regularisation).
        bcr_real, bcr_fake: bCR weights on reals and fakes; 0 turns each off.
        d_grad_clip: max total norm of D's gradients in the D step; None: no clipping.
        ema_half_life_kimg: G_ema half-life in thousands of images.
        ema_rampup: cap the half-life at ``cur_nimg * ema_rampup`` images; None: no ramp-up.
        decay_start_kimg, decay_end_kimg: both learning rates decay linearly to 0 between these; None: constant.
        decay_lr_ratio: past ``decay_start_kimg``, D's lr is this multiple of G's (the reference sets 4, which
            drops the lazy-R1 adjustment of D's lr); None: D keeps ``lr_d * r1_ratio * factor`` throughout.
        pixel_space: ``imagenet`` (the reference's: D's input, R1 and bCR on ImageNet-normalised pixels, G
            trained to output them) or ``minus1_1``; G_ema and everything downstream make [-1, 1] images.
        style_mixing_prob: probability of style-mixing regularisation in G's training forward passes.
        total_kimg: stop once this many thousand reals were shown to D.
        image_snapshot_kimg: write ``fakes<kimg>.png`` this often; None: no image grids.
        export_snapshot_kimg: export G_ema this often (and always at the end); None: only at the end.
        export_marks_kimg: also export G_ema when training passes each of these kimg (e.g. a published
            checkpoint's point).
        rng_seed: seed of the per-step random draws (network init follows ``seed_everything``).
        allow_tf32: on CUDA, let float32 matmuls and convolutions use TF32 tensor cores (the recipe's
            "fp32/TF32" default); False keeps them in strict float32. Set for the run by the
            :class:`~stylenat.training.callbacks.TF32` callback and restored after it.
        compile: run G and D through ``torch.compile`` in the training steps (True: the default inductor
            backend; a string names another torch.compile backend, e.g. ``"aot_eager"``). R1 keeps the eager
            D (it differentiates D twice, which compiled graphs do not support); G_ema samples eagerly.
            Off by default until a GPU run shows the gain.
    """

    def __init__(self, generator: str = "ffhq256", generator_kwargs: dict[str, Any] | None = None,
                 discriminator: str = "ffhq256", discriminator_kwargs: dict[str, Any] | None = None,
                 lr_d: float = 2e-4, lr_g: float | None = None, betas: tuple[float, float] = (0.0, 0.99),
                 r1_gamma: float = 10.0, r1_interval: int = 16, bcr_real: float = 10.0, bcr_fake: float = 10.0,
                 d_grad_clip: float | None = 5.0, ema_half_life_kimg: float = 10.0, ema_rampup: float | None = None,
                 decay_start_kimg: float | None = 49_600.0, decay_end_kimg: float | None = 64_000.0,
                 decay_lr_ratio: float | None = None, pixel_space: str = "minus1_1",
                 style_mixing_prob: float = 0.0, total_kimg: float = 64_000.0,
                 image_snapshot_kimg: float | None = 200.0, export_snapshot_kimg: float | None = 1000.0,
                 export_marks_kimg: Sequence[float] = (), rng_seed: int = 0, allow_tf32: bool = True,
                 compile: bool | str = False):
        super().__init__()
        generator_kwargs, discriminator_kwargs = dict(generator_kwargs or {}), dict(discriminator_kwargs or {})
        _check_args(locals())
        self.save_hyperparameters()
        self.G: Generator = create_generator(generator, **generator_kwargs, style_mixing_prob=style_mixing_prob)
        self.D = create_discriminator(discriminator, **discriminator_kwargs)
        if self.G.size != self.D.size:
            raise ValueError(f"the generator makes {self.G.size}px images but the discriminator takes "
                             f"{self.D.size}px: make model.generator(_kwargs) and model.discriminator(_kwargs) agree")
        # G's output in its pixel space -> [-1, 1], folded into G_ema's ToRGB parameters (see the module doc)
        fold = imagenet_output_fold(len(self.G.synthesis.stages)) if pixel_space == "imagenet" else {}
        self._fold = fold  # moved to the training device on first use
        self.G_ema: Generator = frozen_copy(self.G)
        self.G_ema.load_state_dict(fold_output(self.G_ema.state_dict(), fold))
        # What the training steps call: G and D, or their compiled forms (in a dict, so they are not
        # registered as submodules: the checkpoint keeps the plain G and D keys).
        self.nets = {"G": self.G, "D": self.D}
        if compile:
            backend = "inductor" if compile is True else compile
            self.nets = {name: torch.compile(net, backend=backend) for name, net in self.nets.items()}
        self.automatic_optimization = False
        self.lr_g = lr_d / 4 if lr_g is None else lr_g
        self.r1_ratio = r1_interval / (r1_interval + 1) if r1_gamma > 0 else 1.0  # lazy R1's Adam adjustment
        self.cur_nimg = 0  # reals shown to D, all ranks together
        self.cur_step = 0  # training steps done
        self._last_step_time: float | None = None

    # -- Lightning hooks --------------------------------------------------------------------------

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """``[Adam(G), Adam(D)]``; D's lr and betas adjusted by ``r1_ratio``. The lrs are then set per step."""
        hp = self.hparams
        # Multi-tensor Adam on every device (torch picks it on CUDA only): ~10 ops per step instead of per
        # parameter. Not fused: Lightning refuses D's gradient clipping under mixed precision with a fused one.
        opt_g = torch.optim.Adam(self.G.parameters(), lr=self.lr_g, betas=tuple(hp.betas), foreach=True)
        opt_d = torch.optim.Adam(self.D.parameters(), lr=hp.lr_d * self.r1_ratio,
                                 betas=tuple(b ** self.r1_ratio for b in hp.betas), foreach=True)
        return [opt_g, opt_d]

    def configure_callbacks(self) -> list[Callback]:
        hp = self.hparams
        return [TF32(hp.allow_tf32), ImageGrids(every_kimg=hp.image_snapshot_kimg),
                GeneratorExport(every_kimg=hp.export_snapshot_kimg, marks_kimg=hp.export_marks_kimg)]

    def setup(self, stage: str) -> None:
        """Reject data whose resolution is not the generator's, naming both flags."""
        resolution = getattr(self.trainer.datamodule, "hparams", {}).get("resolution")
        if resolution is not None and resolution != self.G.size:
            raise ValueError(f"data.resolution is {resolution} but the generator "
                             f"(model.generator={self.hparams.generator!r}) makes {self.G.size}px images")

    def on_fit_start(self) -> None:
        model = self.trainer.strategy.model
        if isinstance(model, DistributedDataParallel) and not model.find_unused_parameters:
            raise ValueError("GAN training under DDP leaves D without gradients in the G step and G in the D step: "
                             "use --trainer.strategy ddp_find_unused_parameters_true")

    def on_train_start(self) -> None:
        if self.done:  # resumed from a finished run
            rank_zero_info(f"already finished at {self.cur_nimg / 1000:g} kimg (model.total_kimg is "
                           f"{self.hparams.total_kimg:g}); nothing to train")
            self.trainer.should_stop = True

    def on_train_batch_end(self, outputs: Any, batch: Tensor, batch_idx: int) -> None:
        if self.done:
            self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cur_nimg"], checkpoint["cur_step"] = self.cur_nimg, self.cur_step

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.cur_nimg, self.cur_step = checkpoint["cur_nimg"], checkpoint["cur_step"]

    def train(self, mode: bool = True) -> StyleNATGAN:
        """Set G and D to ``mode``; G_ema stays in eval mode."""
        super().train(mode)
        self.G_ema.eval()
        return self

    @property
    def done(self) -> bool:
        """Whether ``total_kimg`` is reached."""
        return self.cur_nimg >= round(self.hparams.total_kimg * 1000)

    # -- the training step ------------------------------------------------------------------------

    def training_step(self, batch: Tensor, batch_idx: int) -> None:
        """One D step (with lazy R1 when due), one G step and the G_ema update on reals ``[B, 3, R, R]``."""
        hp = self.hparams
        opt_g, opt_d = self.optimizers()
        global_batch = batch.shape[0] * self.trainer.world_size
        lr_g, lr_d = self.learning_rates(self.cur_nimg)
        _set_lr(opt_g, lr_g)
        _set_lr(opt_d, lr_d)
        with self._step_rng():
            with record_function(PHASE_SCOPES["D"]):
                logs = self._d_step(batch, opt_d)
            if hp.r1_gamma > 0 and self.cur_step % hp.r1_interval == 0:
                with record_function(PHASE_SCOPES["R1"]):
                    logs.update(self._r1_step(batch, opt_d))
            with record_function(PHASE_SCOPES["G"]):
                logs.update(self._g_step(batch.shape[0], opt_g))
        with record_function(PHASE_SCOPES["G_ema"]):
            self._update_ema(global_batch)
        self.cur_nimg += global_batch
        self.cur_step += 1
        self._log_step(logs, global_batch, lr_g, lr_d)

    def learning_rates(self, cur_nimg: int) -> tuple[float, float]:
        """``(lr_g, lr_d)`` after ``cur_nimg`` images: the schedule's factor, D's lazy-R1 adjustment, and past the
        decay start D at ``decay_lr_ratio`` times G when that is set."""
        hp = self.hparams
        factor = lr_factor(cur_nimg, hp.decay_start_kimg, hp.decay_end_kimg)
        lr_g = self.lr_g * factor
        if hp.decay_lr_ratio is not None and in_decay(cur_nimg, hp.decay_start_kimg):
            return lr_g, lr_g * hp.decay_lr_ratio
        return lr_g, hp.lr_d * self.r1_ratio * factor

    def d_input(self, real: Tensor) -> Tensor:
        """Reals ``[B, 3, R, R]`` in [-1, 1] -> D's pixel space (where G's training output already is)."""
        return to_pixel_space(real, self.hparams.pixel_space)

    def d_loss_terms(self, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """The D step's terms on reals and fakes already in D's pixel space: ``Loss/D`` (logistic), ``Loss/bcr``
        (weighted, both sides; bCR's augmentations draw from the global generators) and the mean logits."""
        hp = self.hparams
        real_logits, fake_logits = self.nets["D"](real), self.nets["D"](fake)
        loss = d_logistic_loss(real_logits, fake_logits)
        loss_bcr = self._bcr(real, real_logits, hp.bcr_real) + self._bcr(fake, fake_logits, hp.bcr_fake)
        return {"Loss/D": loss, "Loss/bcr": loss_bcr, "Logits/real": real_logits.mean(),
                "Logits/fake": fake_logits.mean()}

    def _d_step(self, real: Tensor, opt_d: LightningOptimizer) -> dict[str, Tensor]:
        hp = self.hparams
        with self.toggled_optimizer(opt_d):
            with torch.no_grad():
                fake = self.nets["G"](self._latents(real.shape[0]), update_w_avg=True)
                self._average_w_avg()
            logs = self.d_loss_terms(self.d_input(real), fake)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(logs["Loss/D"] + logs["Loss/bcr"])
            if hp.d_grad_clip is not None:
                self.clip_gradients(opt_d, gradient_clip_val=hp.d_grad_clip, gradient_clip_algorithm="norm")
            opt_d.step()
        if hp.bcr_real <= 0 and hp.bcr_fake <= 0:
            del logs["Loss/bcr"]
        return logs

    def _bcr(self, images: Tensor, logits: Tensor, weight: float) -> Tensor:
        """``weight * mean (D(aug(images)) - logits)^2``; a zero when ``weight`` is 0."""
        if weight <= 0:
            return logits.new_zeros(())
        with record_function(PHASE_SCOPES["bCR"]):
            return weight * consistency_loss(self.nets["D"](bcr_augment(images)), logits)

    def r1_term(self, real: Tensor) -> Tensor:
        """The raw R1 penalty of reals ``[B, 3, R, R]`` in [-1, 1]: the gradient is taken with respect to D's
        input, in D's pixel space."""
        return r1_penalty(self.D, self.d_input(real))

    def _r1_step(self, real: Tensor, opt_d: LightningOptimizer) -> dict[str, Tensor]:
        hp = self.hparams
        with self.toggled_optimizer(opt_d):
            penalty = self.r1_term(real)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(penalty * (hp.r1_gamma / 2 * hp.r1_interval))
            opt_d.step()
        return {"Loss/r1": penalty}

    def _g_step(self, batch_size: int, opt_g: LightningOptimizer) -> dict[str, Tensor]:
        with self.toggled_optimizer(opt_g):
            fake = self.nets["G"](self._latents(batch_size), update_w_avg=False)
            loss = g_nonsaturating_loss(self.nets["D"](fake))
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt_g.step()
        return {"Loss/G": loss}

    def _update_ema(self, global_batch: int) -> None:
        hp = self.hparams
        if any(scale.device != self.device for scale, _ in self._fold.values()):
            self._fold = {name: (s.to(self.device), t.to(self.device)) for name, (s, t) in self._fold.items()}
        update_ema(self.G_ema, self.G, ema_decay(global_batch, self.cur_nimg, hp.ema_half_life_kimg, hp.ema_rampup),
                   self._fold)

    def _average_w_avg(self) -> None:
        """Average G's ``w_avg`` over the ranks: the same as updating it with the mean w of the global batch."""
        if self.trainer.world_size > 1:
            w_avg = self.G.mapping.w_avg
            w_avg.copy_(self.trainer.strategy.reduce(w_avg.clone(), reduce_op="mean"))

    def _latents(self, batch_size: int) -> Tensor:
        """``z ~ N(0, I)``, ``[batch_size, z_dim]``."""
        return torch.randn(batch_size, self.G.z_dim, device=self.device)

    @contextmanager
    def _step_rng(self) -> Iterator[None]:
        """Seed the global CPU and device generators with ``(rng_seed, rank, cur_step)``; restore them after."""
        on_device = self.device.type != "cpu"
        with torch.random.fork_rng(devices=[self.device] if on_device else [],
                                   device_type=self.device.type if on_device else None):
            torch.manual_seed(step_seed(self.hparams.rng_seed, self.global_rank, self.cur_step))
            yield

    def _log_step(self, logs: dict[str, Tensor], global_batch: int, lr_g: float, lr_d: float) -> None:
        now = time.perf_counter()
        scalars: dict[str, Tensor | float] = {name: value.detach() for name, value in logs.items()}
        scalars.update({"Progress/kimg": self.cur_nimg / 1000, "Progress/lr_g": lr_g, "Progress/lr_d": lr_d,
                        "Resources/peak_memory_gib": peak_memory_gib(self.device)})
        if self._last_step_time is not None:
            scalars["Progress/kimg_per_s"] = global_batch / 1000 / (now - self._last_step_time)
        self._last_step_time = now
        shown = {"Loss/G", "Loss/D"}
        self.log_dict({k: v for k, v in scalars.items() if k in shown}, prog_bar=True)
        self.log_dict({k: v for k, v in scalars.items() if k not in shown})


def _set_lr(optimizer: LightningOptimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _check_args(args: dict[str, Any]) -> None:
    """Reject bad option values up front, naming the flag."""
    problems = []
    if "style_mixing_prob" in args["generator_kwargs"]:
        problems.append("set model.style_mixing_prob, not model.generator_kwargs.style_mixing_prob")
    if args["lr_d"] <= 0 or (args["lr_g"] is not None and args["lr_g"] <= 0):
        problems.append(f"model.lr_d ({args['lr_d']}) and model.lr_g ({args['lr_g']}) must be > 0")
    if not all(0 <= b < 1 for b in args["betas"]) or len(args["betas"]) != 2:
        problems.append(f"model.betas must be two values in [0, 1), got {args['betas']}")
    for key in ("r1_gamma", "bcr_real", "bcr_fake"):
        if args[key] < 0:
            problems.append(f"model.{key} must be >= 0 (0 turns it off), got {args[key]}")
    if args["r1_interval"] < 1:
        problems.append(f"model.r1_interval must be >= 1, got {args['r1_interval']}")
    for key in ("d_grad_clip", "ema_rampup", "image_snapshot_kimg", "export_snapshot_kimg"):
        if args[key] is not None and args[key] <= 0:
            problems.append(f"model.{key} must be > 0 or null, got {args[key]}")
    for key in ("ema_half_life_kimg", "total_kimg"):
        if args[key] <= 0:
            problems.append(f"model.{key} must be > 0, got {args[key]}")
    start, end = args["decay_start_kimg"], args["decay_end_kimg"]
    if (start is None) != (end is None) or (start is not None and not 0 <= start < end):
        problems.append(f"model.decay_start_kimg and model.decay_end_kimg must both be null or "
                        f"0 <= start < end, got {start} and {end}")
    if args["decay_lr_ratio"] is not None and args["decay_lr_ratio"] <= 0:
        problems.append(f"model.decay_lr_ratio must be > 0 or null, got {args['decay_lr_ratio']}")
    if args["pixel_space"] not in PIXEL_SPACES:
        problems.append(f"model.pixel_space must be one of {', '.join(PIXEL_SPACES)}, got {args['pixel_space']!r}")
    if any(m <= 0 for m in args["export_marks_kimg"]):
        problems.append(f"model.export_marks_kimg must be > 0, got {list(args['export_marks_kimg'])}")
    if not 0 <= args["style_mixing_prob"] <= 1:
        problems.append(f"model.style_mixing_prob must be in [0, 1], got {args['style_mixing_prob']}")
    backends = torch.compiler.list_backends(exclude_tags=())
    if not isinstance(args["compile"], bool) and args["compile"] not in backends:
        problems.append(f"model.compile must be true, false or a torch.compile backend ({', '.join(backends)}), "
                        f"got {args['compile']!r}")
    if problems:
        raise ValueError("; ".join(problems))
