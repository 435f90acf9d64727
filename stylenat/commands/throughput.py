"""``stylenat throughput``: generator images per second and peak memory, per natten_ops backend, in one run.

    stylenat throughput --preset ffhq256 --batch 1                 # inference (G_ema sampling)
    stylenat throughput --preset ffhq256 --batch 2 --train         # one G step + one D step per iteration
    stylenat throughput --preset ffhq256 --batch 32 --device cuda --dtype bfloat16
    stylenat throughput --preset ffhq256 --batch 1 --device cuda --compile    # eager and torch.compile rows

With ``--compile`` every backend is timed twice, eagerly and through ``torch.compile``; the compiled row is
labelled ``<backend> + compile``.

The measurement is :func:`stylenat.throughput.measure`.
"""

from __future__ import annotations

import argparse

from stylenat.commands import Command, with_clean_errors
from stylenat.commands.options import add_device, resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="ffhq256", help="generator/discriminator preset (default ffhq256)")
    parser.add_argument("--batch", type=int, default=1)
    add_device(parser)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="autocast dtype (float32: no autocast)")
    parser.add_argument("--backends", default=None, help="comma list (default: every available one)")
    parser.add_argument("--train", action="store_true", help="time G+D training iterations instead of sampling")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="also time G (and D) through torch.compile (default backend inductor)")


def throughput(args: argparse.Namespace) -> int:
    import torch

    import natten_ops
    from stylenat.generation import check_compile_backend
    from stylenat.throughput import measure

    device, dtype = resolve_device(args.device), getattr(torch, args.dtype)
    backends = args.backends.split(",") if args.backends else natten_ops.BACKENDS
    if args.compile is not None:
        check_compile_backend(args.compile)
    mode = "training (G+D step)" if args.train else "inference"
    print(f"# {args.preset}, batch {args.batch}, {mode}, {args.dtype}, device {device}"
          f" ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})")
    print("| backend | img/s | ms / batch | peak MB |\n|---|---|---|---|")
    for backend in backends:
        reason = natten_ops.unavailable_reason(backend, "na2d", device, dtype, needs_grad=args.train)
        if reason is not None:
            print(f"| {backend} | - | - | - ({reason}) |")
            continue
        for compile_backend in (None, args.compile) if args.compile else (None,):
            label = backend if compile_backend is None else f"{backend} + compile"
            try:
                seconds, memory = measure(args.preset, backend, batch=args.batch, device=device, dtype=dtype,
                                          train=args.train, repeats=args.repeats, compile=compile_backend)
            except (RuntimeError, MemoryError) as err:  # out of memory, most often: report it and go on
                print(f"| {label} | - | - | - ({(str(err) or type(err).__name__).splitlines()[0]}) |", flush=True)
                continue
            print(f"| {label} | {args.batch / seconds:.3f} | {seconds * 1e3:.0f} | {memory / 2**20:.0f} |",
                  flush=True)
    return 0


COMMAND = Command("generator img/s and peak memory per natten_ops backend, eager and compiled", add_arguments,
                  with_clean_errors(throughput))
