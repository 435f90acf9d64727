"""Image classification with a registered NAT / DiNAT model: the LightningModule behind the classifier configs.

    stylenat fit --config configs/nat_digits.yaml           # CPU demo: a small NAT on the digits dataset
    stylenat fit --config configs/imagenet_classifier.yaml --model.model nat_mini --data.path /data/imagenet/train \
        --data.val_path /data/imagenet/val

The recipe is the NAT/DiNAT reference's (timm-based): AdamW without weight decay on RPB tables, norms,
biases and layer-scale vectors; a learning rate that warms up linearly and then follows a cosine, stepped
every iteration; label smoothing; Mixup / CutMix; an optional EMA of the weights, which validation then
uses. Batches are ``(images [B, 3, R, R] in [-1, 1], labels int64 [B])``
(:class:`stylenat.data.ClassificationDataModule`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from stylenat.models.nat import NAT, create_model
from stylenat.training.ema import ModelEMA

# ---------------------------------------------------------------------------------------------
# Recipe pieces, as plain functions


def param_groups(model: NAT, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: ``weight_decay`` on weight matrices and conv kernels; none on the RPB tables
    (``model.no_weight_decay()``) nor on any tensor of fewer than 2 dims (norms, biases, layer scale)."""
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): linear warm-up ``1/w, 2/w, ..., 1`` over
    the first ``w = warmup_steps`` steps, then a half cosine from 1 down to ``min_ratio`` at ``total_steps``.

    >>> [round(warmup_cosine(s, 2, 6), 3) for s in range(7)]
    [0.5, 1.0, 1.0, 0.854, 0.5, 0.146, 0.0]
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def mix_batch(images: Tensor, labels: Tensor, num_classes: int, mixup_alpha: float = 0.0,
              cutmix_alpha: float = 0.0, switch_prob: float = 0.5) -> tuple[Tensor, Tensor]:
    """Mixup or CutMix of a batch with the batch reversed (timm's ``mode="batch"``).

    ``images [B, C, H, W]``, ``labels [B]`` -> mixed images ``[B, C, H, W]`` and soft targets ``[B, num_classes]``
    ``lam * onehot(labels) + (1 - lam) * onehot(labels.flip(0))``, one ``lam ~ Beta(alpha, alpha)`` per batch.
    With both alphas on, CutMix is chosen with probability ``switch_prob``. CutMix pastes a box of about
    ``(1 - lam)`` of the area from the reversed batch, clipped at the borders; ``lam`` becomes the exact
    share of pixels kept. Both alphas 0: the images unchanged and one-hot targets.
    """
    targets = F.one_hot(labels, num_classes).to(images.dtype)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or torch.rand(()).item() < switch_prob)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    if alpha <= 0:
        return images, targets
    lam = torch.distributions.Beta(alpha, alpha).sample().item()
    other = images.flip(0)
    if use_cutmix:
        height, width = images.shape[-2:]
        cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
        cy, cx = torch.randint(height, ()).item(), torch.randint(width, ()).item()
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        images = images.clone()
        images[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    else:
        images = images.lerp(other, 1.0 - lam)
    return images, targets.lerp(targets.flip(0), 1.0 - lam)


def _check_args(num_classes: int, overrides: dict[str, Any], lr: float, min_lr: float, weight_decay: float,
                warmup_epochs: float, label_smoothing: float, mixup_alpha: float, cutmix_alpha: float,
                ema_decay: float | None) -> None:
    """Reject bad option values up front, naming the flag."""
    problems = []
    if num_classes < 2:
        problems.append(f"model.num_classes must be >= 2, got {num_classes}")
    for key in ("num_classes", "drop_path_rate"):
        if key in overrides:
            problems.append(f"set model.{key}, not model.model_overrides.{key}")
    if not 0 <= min_lr <= lr or lr <= 0:
        problems.append(f"need 0 <= model.min_lr <= model.lr and model.lr > 0, got min_lr={min_lr}, lr={lr}")
    if weight_decay < 0 or warmup_epochs < 0 or mixup_alpha < 0 or cutmix_alpha < 0:
        problems.append(f"model.weight_decay ({weight_decay}), model.warmup_epochs ({warmup_epochs}), "
                        f"model.mixup_alpha ({mixup_alpha}) and model.cutmix_alpha ({cutmix_alpha}) must be >= 0")
    if not 0 <= label_smoothing < 1:
        problems.append(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
    if ema_decay is not None and not 0 <= ema_decay < 1:
        problems.append(f"model.ema_decay must be in [0, 1) or null, got {ema_decay}")
    if problems:
        raise ValueError("; ".join(problems))


# ---------------------------------------------------------------------------------------------
# The LightningModule


class ImageClassifier(L.LightningModule):
    """A registered NAT / DiNAT model trained with the reference recipe.

    Logs ``train/loss``, ``train/top1`` (against the un-mixed labels), ``val/loss``, ``val/top1`` and, for 5
    or more classes, ``train/top5`` and ``val/top5``. With ``ema_decay`` set, validation, :meth:`features`
    and :meth:`export_weights` use the EMA copy.

    Args:
        model: a name from :func:`stylenat.models.nat.list_models` (``nat_mini``, ``dinat_tiny``, ...).
        num_classes: classifier outputs; must match the data module's ``num_classes`` (checked in :meth:`setup`;
            ``stylenat fit`` links it from the data).
        model_overrides: further :class:`~stylenat.models.nat.NAT` arguments replacing the variant's (``depths``,
            ``num_heads``, ``embed_dim``, ``kernel_size``, ``img_size``, ``layer_scale``, ...), for small models.
        drop_path_rate: stochastic depth; ``None`` keeps the variant's rate.
        lr: peak AdamW learning rate (the reference: 1e-3 for a total batch of 1024, scaled linearly).
        min_lr: learning rate the cosine ends at.
        weight_decay: AdamW weight decay of weight matrices and conv kernels.
        warmup_epochs: linear warm-up length in epochs (fractions allowed), stepped per iteration.
        label_smoothing: cross-entropy label smoothing.
        mixup_alpha, cutmix_alpha: Beta parameters of Mixup and CutMix; 0 turns each off (see :func:`mix_batch`).
        ema_decay: decay of an EMA of the weights updated after every optimizer step; ``None``: no EMA.
    """

    def __init__(self, model: str = "nat_mini", num_classes: int = 1000, model_overrides: dict[str, Any] | None = None,
                 drop_path_rate: float | None = None, lr: float = 1e-3, min_lr: float = 0.0,
                 weight_decay: float = 0.05, warmup_epochs: float = 0.0, label_smoothing: float = 0.0,
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, ema_decay: float | None = None):
        super().__init__()
        overrides = dict(model_overrides or {})
        _check_args(num_classes, overrides, lr, min_lr, weight_decay, warmup_epochs, label_smoothing,
                    mixup_alpha, cutmix_alpha, ema_decay)
        self.save_hyperparameters()
        if drop_path_rate is not None:
            overrides["drop_path_rate"] = drop_path_rate
        self.model = create_model(model, num_classes=num_classes, **overrides)
        self.ema = ModelEMA(self.model) if ema_decay is not None else None
        metrics = {"top1": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
        if num_classes >= 5:
            metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        self.train_metrics = MetricCollection(metrics, prefix="train/")
        self.val_metrics = self.train_metrics.clone(prefix="val/")

    @property
    def eval_model(self) -> NAT:
        """The network that validation, :meth:`features` and :meth:`export_weights` use: the EMA copy if any."""
        return self.ema.module if self.ema is not None else self.model

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, R, R]`` in ``[-1, 1]`` -> logits ``[B, num_classes]`` of the trained (not averaged) model."""
        return self.model(images)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Penultimate features ``[B, num_features]`` of :attr:`eval_model` for images ``[B, 3, R, R]`` in
        ``[-1, 1]``: the head's input, i.e. the mean of the final LayerNorm's tokens
        (``forward_head(..., pre_logits=True)``).

        The offline feature extractor for a Fréchet distance with a classifier trained here (e.g. on digits,
        where Inception features mean little): call ``.eval()`` first, feed images the way the training data
        came (resolution ``R``, ``[-1, 1]``), and label the resulting statistics with this network's name.
        """
        net = self.eval_model
        return net.forward_head(net.forward_features(images), pre_logits=True)

    def export_weights(self, path: str | Path) -> Path:
        """Save :attr:`eval_model`'s state dict as a ``.safetensors`` file in the reference NAT/DiNAT naming:
        ``create_model(name, num_classes, pretrained=path, **model_overrides)`` loads it, and
        :func:`~stylenat.models.nat.to_transformers` renames it for transformers."""
        path = Path(path)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.eval_model.state_dict().items()}, str(path))
        return path

    def setup(self, stage: str) -> None:
        """Fail before training when the data module's class count differs from ``num_classes``."""
        data_classes = getattr(self.trainer.datamodule, "num_classes", None)
        if data_classes is not None and data_classes != self.hparams.num_classes:
            raise ValueError(f"model.num_classes is {self.hparams.num_classes} but the data has {data_classes} "
                             "classes; pass num_classes=data.num_classes (stylenat fit links the two)")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        hp = self.hparams
        targets = labels
        if hp.mixup_alpha > 0 or hp.cutmix_alpha > 0:
            images, targets = mix_batch(images, labels, hp.num_classes, hp.mixup_alpha, hp.cutmix_alpha)
        logits = self.model(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=hp.label_smoothing)
        self.train_metrics.update(logits.detach(), labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self.eval_model(images)
        self.log("val/loss", F.cross_entropy(logits, labels), sync_dist=True)
        self.val_metrics.update(logits, labels)
        self.log_dict(self.val_metrics, prog_bar=True)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer,
                       optimizer_closure: Callable[[], Any] | None = None) -> None:
        """The optimizer step, then the EMA update (once per step, also under gradient accumulation)."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.ema is not None:
            self.ema.update(self.model, self.hparams.ema_decay)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over :func:`param_groups`, with :func:`warmup_cosine` stepped every optimizer step."""
        hp = self.hparams
        total_steps = self.trainer.estimated_stepping_batches  # loads the training data to count its batches
        batches = self.trainer.num_training_batches
        if not (math.isfinite(total_steps) and math.isfinite(batches)):
            raise ValueError("the warm-up/cosine schedule needs a finite run with sized data: set trainer.max_epochs")
        steps_per_epoch = math.ceil(batches / self.trainer.accumulate_grad_batches)
        optimizer = torch.optim.AdamW(param_groups(self.model, hp.weight_decay), lr=hp.lr)
        schedule = partial(warmup_cosine, warmup_steps=round(hp.warmup_epochs * steps_per_epoch),
                           total_steps=int(total_steps), min_ratio=hp.min_lr / hp.lr)
        scheduler = {"scheduler": LambdaLR(optimizer, schedule), "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

