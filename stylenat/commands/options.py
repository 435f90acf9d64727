"""Arguments shared by several commands: ``--device``, range checks of integer flags, the generator ``--ckpt``."""

from __future__ import annotations

import argparse


GENERATOR_CKPT_HELP = "generator export (.safetensors), training checkpoint (.ckpt) or reference StyleNAT checkpoint"


def load_generator(path: str, device):
    """:func:`stylenat.checkpoints.load_generator`, printing its note when it converted a reference
    StyleNAT checkpoint in memory."""
    from stylenat.checkpoints import load_generator as load

    generator, info = load(path, device)
    if "note" in info:
        print(info["note"])
    return generator, info


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")


def resolve_device(name: str | None):
    """``torch.device`` for ``--device`` (default: cuda when available, else cpu)."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown --device {name!r}: use cuda, cuda:N or cpu") from err
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for, but no GPU is available; use --device cpu")
    return chosen


def check_at_least(minimum: int, **flags: int) -> None:
    """Reject ``--flag value`` below ``minimum``, naming the flag."""
    for flag, value in flags.items():
        if value < minimum:
            raise ValueError(f"--{flag} must be >= {minimum}, got {value}")
