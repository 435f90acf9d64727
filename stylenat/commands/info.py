"""``stylenat info``: the version, and which natten_ops backends this machine can run (nothing is compiled)."""

from __future__ import annotations

import argparse

from stylenat.commands import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No arguments."""


def info(args: argparse.Namespace) -> int:
    import stylenat
    from natten_ops import report

    print(f"stylenat {stylenat.__version__}")
    print(report())
    return 0


COMMAND = Command("versions and natten_ops backends", add_arguments, info)
