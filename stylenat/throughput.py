"""``stylenat throughput``: generator images per second and peak memory, per natten_ops backend, in one run.

    stylenat throughput --preset ffhq256 --batch 1                 # inference (G_ema sampling)
    stylenat throughput --preset ffhq256 --batch 2 --train         # one G step + one D step per iteration
    stylenat throughput --preset ffhq256 --batch 32 --device cuda --dtype bfloat16
    stylenat throughput --preset ffhq256 --batch 1 --device cuda --compile    # eager and torch.compile rows

With ``--compile`` every backend is timed twice, eagerly and through ``torch.compile`` (sampling compiles
the synthesis network as ``stylenat generate --compile`` does, with CUDA graphs on a GPU; training compiles
G and D); the compiled row is labelled ``<backend> + compile`` and its first calls (compilation, graph
recording) are warm-up, not timed.

Training iterations use the paper's losses without the lazy regularisers (R1 every 16 steps, bCR), so
they measure the attention-bound part that the backends change.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

import natten_ops
from stylenat.models import create_discriminator, create_generator
from stylenat.profiling import median_seconds, peak_memory_bytes
from stylenat.sampling import check_compile_backend, compile_generator


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="ffhq256", help="generator/discriminator preset (default ffhq256)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="autocast dtype (float32: no autocast)")
    parser.add_argument("--backends", default=None, help="comma list (default: every available one)")
    parser.add_argument("--train", action="store_true", help="time G+D training iterations instead of sampling")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="also time G (and D) through torch.compile (default backend inductor)")


def run(args) -> int:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    backends = args.backends.split(",") if args.backends else natten_ops.BACKENDS
    if args.compile is not None:
        try:
            check_compile_backend(args.compile)
        except ValueError as err:
            print(f"stylenat throughput: error: {err}", file=sys.stderr)
            return 2
    mode = "training (G+D step)" if args.train else "inference"
    print(f"# {args.preset}, batch {args.batch}, {mode}, {args.dtype}, device {device}"
          f" ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})")
    print("| backend | img/s | ms / batch | peak MB |\n|---|---|---|---|")
    for backend in backends:
        reason = natten_ops.unavailable_reason(backend, "na2d", device, dtype, needs_grad=args.train)
        if reason is not None:
            print(f"| {backend} | - | - | - ({reason}) |")
            continue
        for compiled in (False, True) if args.compile else (False,):
            _time_row(args, backend, compiled, device, dtype)
    return 0


def _time_row(args, backend: str, compiled: bool, device, dtype) -> None:
    """Build G (and D), time them and print one row (or why they failed)."""
    label = f"{backend} + compile" if compiled else backend
    torch.manual_seed(0)
    G = create_generator(args.preset, backend=backend).to(device)
    if args.train:
        D = create_discriminator(args.preset).to(device)
        G.train()
        if compiled:
            G, D = (torch.compile(net, backend=args.compile) for net in (G, D))
        step = _training_step(G, D, args.batch, device, dtype)
    else:
        step = _inference_step(compile_generator(G.eval(), args.compile) if compiled else G.eval(), args.batch,
                               device, dtype)
    try:
        seconds = median_seconds(step, device, args.repeats, warmup=3 if compiled else 1)
        memory = peak_memory_bytes(step, device)
    except (RuntimeError, MemoryError) as err:  # out of memory, most often: report it and go on
        print(f"| {label} | - | - | - ({(str(err) or type(err).__name__).splitlines()[0]}) |", flush=True)
        return
    finally:
        del G, step
    print(f"| {label} | {args.batch / seconds:.3f} | {seconds * 1e3:.0f} | {memory / 2**20:.0f} |", flush=True)
