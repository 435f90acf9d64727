"""GAN losses and regularisers of the StyleNAT recipe (StyleGAN2's, as the reference uses them).

    D:   softplus(-D(x)) + softplus(D(G(z)))          d_logistic_loss
    G:   softplus(-D(G(z)))                           g_nonsaturating_loss
    R1:  E ||grad_x D(x)||^2 on reals                 r1_penalty   (scaled by gamma / 2 by the caller)
    bCR: E (D(aug(x)) - D(x))^2                       consistency_loss

Logits are ``[B, 1]``; every function returns a scalar.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def d_logistic_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Non-saturating logistic D loss: ``mean softplus(-D(real)) + mean softplus(D(fake))``."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_nonsaturating_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating G loss: ``mean softplus(-D(G(z)))``."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(discriminator: Callable[[Tensor], Tensor], real: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): ``mean_b sum_pixels (d D(x_b) / d x_b)^2`` on reals ``[B, 3, R, R]``.

    Always computed in float32 with autocast off: the double backward of ``create_graph=True`` bypasses
    AMP loss scaling and is too coarse in bf16.
    """
    real = real.detach().float().requires_grad_(True)
    with torch.autocast(device_type=real.device.type, enabled=False):
        logits = discriminator(real)
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.square().sum(dim=(1, 2, 3)).mean()


def consistency_loss(augmented_logits: Tensor, logits: Tensor) -> Tensor:
    """Balanced consistency regularisation term (Zhao et al. 2021): ``mean (D(aug(x)) - D(x))^2``.

    Gradients flow through both sides, as in the reference.
    """
    return F.mse_loss(augmented_logits, logits)
