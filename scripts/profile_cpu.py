"""Where the CPU time goes, by model component: one profiled run, printed as a Markdown table.

    python scripts/profile_cpu.py --preset ffhq256 --batch 1            # G sampling (stylenat throughput's)
    python scripts/profile_cpu.py --train configs/demo.yaml             # the demo's training steps
    python scripts/profile_cpu.py --preset demo --batch 8 --threads 2

Runs on ``--threads`` intra-op threads (default 1: the most repeatable on a shared machine). The shares are
the robust figures; absolute times carry the profiler's per-op overhead and the machine's load. The
attribution rules are in :mod:`stylenat.breakdown`.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from stylenat.breakdown import format_table, generator_breakdown, training_breakdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ffhq256", help="generator preset to sample (default ffhq256)")
    parser.add_argument("--batch", type=int, default=1, help="images per sampled batch (default 1)")
    parser.add_argument("--iterations", type=int, default=1, help="sampled batches profiled (default 1)")
    parser.add_argument("--backend", default="cpu", help="natten_ops backend of G (default cpu)")
    parser.add_argument("--train", metavar="CONFIG", default=None,
                        help="profile training steps of this GAN config instead (e.g. configs/demo.yaml)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps profiled (default: the config's r1_interval, so R1 counts once)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args(argv)
    for name in ("batch", "iterations", "steps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    torch.set_num_threads(args.threads)
    try:
        if args.train:
            breakdown = training_breakdown(args.train, steps=args.steps)
        else:
            breakdown = generator_breakdown(args.preset, batch=args.batch, backend=args.backend,
                                            iterations=args.iterations)
    except ValueError as err:
        parser.error(str(err))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{format_table(breakdown)}\n(load average {load}; {os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
