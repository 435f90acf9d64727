"""Exponential moving average of a model's weights (timm's ``ModelEmaV3``, StyleGAN's ``G_ema``).

    ema = ModelEMA(model)                    # a frozen copy, always in eval mode
    ...optimizer step...
    ema.update(model, decay=0.999)           # ema_p <- decay * ema_p + (1 - decay) * p; buffers copied
    logits = ema(images)                     # the averaged network

The caller picks the decay at each update: a fixed value for classifiers, or one derived from the images
seen for a GAN generator (``0.5 ** (batch / ema_images)``). As an ``nn.Module`` attribute of a
LightningModule the copy moves with it between devices and is saved in its checkpoints (``ema.module.*``).

The GAN keeps its average as a plain ``G_ema`` generator (checkpoint keys ``G_ema.*``, what
:func:`stylenat.checkpoints.load_generator` reads) made by :func:`frozen_copy` and moved by :func:`update_ema`,
the update :class:`ModelEMA` runs too, with an affine ``fold`` that averages G's weights in G_ema's
output scale (see :mod:`stylenat.training.gan`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with ``requires_grad`` off, in eval mode: the start of an average."""
    return copy.deepcopy(model).requires_grad_(False).eval()


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float,
               fold: dict[str, tuple[Tensor, Tensor]] | None = None) -> None:
    """``ema_p = decay * ema_p + (1 - decay) * p`` for every parameter; every buffer copied.

    ``decay`` in ``[0, 1]``: 0 copies ``model``, 1 leaves the average unchanged. ``model`` must have the
    architecture ``ema`` was copied from (parameters and buffers are paired in order). ``fold`` (by parameter
    name: ``(scale, shift)``, see :func:`stylenat.models.pixels.fold_output`) averages ``p * scale + shift``
    instead of ``p`` for the parameters it names.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    fold = fold or {}
    averages, targets = [], []
    for (name, ema_p), p in zip(ema.named_parameters(), model.parameters(), strict=True):
        target = p.detach()
        if name in fold:
            scale, shift = fold[name]
            target = target * scale + shift
        averages.append(ema_p)
        targets.append(target)
    if averages:  # one multi-tensor lerp: a few hundred small tensors cost one call, not one each
        torch._foreach_lerp_(averages, targets, 1.0 - decay)
    for ema_b, b in zip(ema.buffers(), model.buffers(), strict=True):
        ema_b.copy_(b)


class ModelEMA(nn.Module):
    """A frozen copy of ``model`` whose parameters follow an exponential moving average of ``model``'s
    and whose buffers (e.g. BatchNorm statistics) are copied from it at every :meth:`update`.

    The copy never trains: ``requires_grad`` is off and ``train()`` keeps it in eval mode, so calling
    it always gives the deterministic averaged network.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.module = frozen_copy(model)

    def train(self, mode: bool = True) -> ModelEMA:
        """Stay in eval mode whatever ``mode`` is (parents call this on every ``train()``/``eval()``)."""
        return super().train(False)

    def update(self, model: nn.Module, decay: float) -> None:
        """:func:`update_ema` of the copy towards ``model``."""
        update_ema(self.module, model, decay)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)
