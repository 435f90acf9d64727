"""``stylenat throughput``: generator images per second and peak memory, per natten_ops backend, in one run.

    stylenat throughput --preset ffhq256 --batch 1                 # inference (G_ema sampling)
    stylenat throughput --preset ffhq256 --batch 2 --train         # one G step + one D step per iteration
    stylenat throughput --preset ffhq256 --batch 32 --device cuda --dtype bfloat16
    stylenat throughput --preset ffhq256 --batch 1 --device cuda --compile    # eager and torch.compile rows

With ``--compile`` every backend is timed twice, eagerly and through ``torch.compile``; the compiled row is
labelled ``<backend> + compile``.

The measurement is :func:`stylenat.throughput.measure`: each number is the median of the last ``--repeats``
iterations once they agree within 5% (the table reports that spread and how many iterations it took).
Progress goes to stderr, the table to stdout; the profiler's and the compilers' chatter is kept off both.
"""

from __future__ import annotations

import argparse
import sys

from stylenat.commands import Command, with_clean_errors
from stylenat.commands.options import add_device, check_at_least, resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="ffhq256", help="generator/discriminator preset (default ffhq256)")
    parser.add_argument("--batch", type=int, default=1)
    add_device(parser)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="autocast dtype (float32: no autocast)")
    parser.add_argument("--backends", default=None, help="comma list (default: every available one)")
    parser.add_argument("--train", action="store_true", help="time G+D training iterations instead of sampling")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed iterations that must agree within 5%% before a number is reported (default 5)")
    parser.add_argument("--max-runs", type=int, default=30,
                        help="give up waiting for agreement after this many timed iterations (default 30)")
    parser.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="also time G (and D) through torch.compile (default backend inductor)")


def throughput(args: argparse.Namespace) -> int:
    import logging

    import torch

    import natten_ops
    from stylenat.generation import check_compile_backend

    check_at_least(1, batch=args.batch, repeats=args.repeats, max_runs=args.max_runs)
    if args.compile is not None:
        check_compile_backend(args.compile)
    device, dtype = resolve_device(args.device), getattr(torch, args.dtype)
    backends = args.backends.split(",") if args.backends else natten_ops.BACKENDS
    mode = "training (G+D step)" if args.train else "inference"
    print(f"# {args.preset}, batch {args.batch}, {mode}, {args.dtype}, device {device}"
          f" ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})")
    print("| backend | img/s | ms / batch | spread | peak MB |\n|---|---|---|---|---|", flush=True)
    cpp_extension_log = logging.getLogger("torch.utils.cpp_extension")  # "No CUDA runtime is found" while compiling
    level = cpp_extension_log.level
    cpp_extension_log.setLevel(logging.ERROR)
    try:
        for backend in backends:
            reason = natten_ops.unavailable_reason(backend, "na2d", device, dtype, needs_grad=args.train)
            if reason is not None:
                print(f"| {backend} | - | - | - | - ({reason}) |")
                continue
            for compile_backend in (None, args.compile) if args.compile else (None,):
                _row(args, backend, device, dtype, compile_backend)
    finally:
        cpp_extension_log.setLevel(level)
    return 0


def _row(args: argparse.Namespace, backend: str, device, dtype, compile_backend: str | None) -> None:
    """Time ``backend`` (through torch.compile's ``compile_backend`` unless None) and print its row."""
    from stylenat.throughput import measure

    label = backend if compile_backend is None else f"{backend} + compile"
    _progress(f"{label}: warming up" + (" (the first call compiles the flex kernels: a minute or more)"
                                        if backend == "flex" or compile_backend else ""))
    try:
        timing, memory = measure(args.preset, backend, batch=args.batch, device=device, dtype=dtype,
                                 train=args.train, repeats=args.repeats, max_runs=args.max_runs,
                                 on_run=lambda run, s: _progress(f"{label}: run {run}: {s * 1e3:.0f} ms"),
                                 compile=compile_backend)
    except (RuntimeError, MemoryError) as err:  # out of memory, most often: report it and go on
        _progress("")
        print(f"| {label} | - | - | - | - ({(str(err) or type(err).__name__).splitlines()[0]}) |", flush=True)
        return
    _progress("")
    spread = f"{timing.spread:.0%} of {timing.runs}" + ("" if timing.stable else " (unsettled)")
    print(f"| {label} | {args.batch / timing.seconds:.3f} | {timing.seconds * 1e3:.0f} | {spread} | "
          f"{memory / 2**20:.0f} |", flush=True)


def _progress(text: str) -> None:
    """A status line on stderr (the table on stdout stays clean): rewritten in place on a terminal, one line
    each elsewhere; ``""`` clears it."""
    if sys.stderr.isatty():
        print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)
    elif text:
        print(text, file=sys.stderr, flush=True)


COMMAND = Command("generator img/s and peak memory per natten_ops backend, eager and compiled", add_arguments,
                  with_clean_errors(throughput))
