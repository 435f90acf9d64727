"""Generator images per second and peak memory on one natten_ops backend (``stylenat throughput``).

Training iterations use the paper's losses without the lazy regularisers (R1 every 16 steps, bCR), so
they measure the attention-bound part that the backends change.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from stylenat.generation import compile_generator
from stylenat.models import create_discriminator, create_generator
from stylenat.profiling import Timing, peak_memory_bytes, stable_seconds


def _inference_step(G, batch: int, device, dtype):
    def step():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            return G(torch.randn(batch, G.z_dim, device=device))
    return step


def _training_step(G, D, batch: int, device, dtype):
    def step():
        z = torch.randn(batch, G.z_dim, device=device)
        reals = torch.randn(batch, 3, G.size, G.size, device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            d_loss = F.softplus(D(G(z).detach())).mean() + F.softplus(-D(reals)).mean()
        d_loss.backward()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            g_loss = F.softplus(-D(G(z))).mean()
        g_loss.backward()
    return step


def measure(preset: str, backend: str, *, batch: int, device: torch.device, dtype: torch.dtype, train: bool,
            repeats: int, max_runs: int = 30, on_run: Callable[[int, float], None] | None = None,
            compile: str | None = None) -> tuple[Timing, int]:
    """``(seconds per iteration, peak bytes)`` of the ``preset`` generator on natten_ops ``backend``: sampling a
    batch of ``batch`` images, or with ``train`` one G step and one D step. Timed until the last ``repeats``
    iterations agree within 5% (at most ``max_runs``; see :func:`stylenat.profiling.stable_seconds`).

    ``compile`` names a torch.compile backend to run them through: sampling compiles the synthesis network
    as ``stylenat generate --compile`` does (CUDA graphs on a GPU), training compiles G and D; the first
    calls (compilation, graph recording) are warm-up, not timed."""
    torch.manual_seed(0)
    G = create_generator(preset, backend=backend).to(device)
    if train:
        D = create_discriminator(preset).to(device)
        G.train()
        if compile is not None:
            G, D = (torch.compile(net, backend=compile) for net in (G, D))
        step = _training_step(G, D, batch, device, dtype)
    else:
        step = _inference_step(compile_generator(G.eval(), compile) if compile is not None else G.eval(), batch,
                               device, dtype)
    timing = stable_seconds(step, device, window=repeats, max_runs=max(max_runs, repeats), on_run=on_run,
                            warmup=1 if compile is None else 3)
    return timing, peak_memory_bytes(step, device)
