"""Exponential moving average of a model's weights (timm's ``ModelEmaV3``, StyleGAN's ``G_ema``).

    ema = ModelEMA(model)                    # a frozen copy, always in eval mode
    ...optimizer step...
    ema.update(model, decay=0.999)           # ema_p <- decay * ema_p + (1 - decay) * p; buffers copied
    logits = ema(images)                     # the averaged network

The caller picks the decay at each update: a fixed value for classifiers, or one derived from the images
seen for a GAN generator (``0.5 ** (batch / ema_images)``). As an ``nn.Module`` attribute of a
LightningModule the copy moves with it between devices and is saved in its checkpoints (``ema.module.*``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEMA(nn.Module):
    """A frozen copy of ``model`` whose parameters follow an exponential moving average of ``model``'s
    and whose buffers (e.g. BatchNorm statistics) are copied from it at every :meth:`update`.

    The copy never trains: ``requires_grad`` is off and ``train()`` keeps it in eval mode, so calling
    it always gives the deterministic averaged network.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(model).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> ModelEMA:
        """Stay in eval mode whatever ``mode`` is (parents call this on every ``train()``/``eval()``)."""
        return super().train(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        """``ema = decay * ema + (1 - decay) * model`` for every parameter; copy every buffer.

        ``decay`` in ``[0, 1]``: 0 copies ``model``, 1 leaves the average unchanged. ``model`` must have
        the architecture the copy was made from (parameters and buffers are paired in order).
        """
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        for ema_p, p in zip(self.module.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - decay)
        for ema_b, b in zip(self.module.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)
