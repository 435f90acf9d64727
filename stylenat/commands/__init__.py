"""The ``stylenat`` subcommands, one module each, every module exposing ``COMMAND = Command(...)``
(:mod:`.lightning` serves ``fit``, ``validate`` and ``test``: ``FIT``, ``VALIDATE``, ``TEST``).

:data:`COMMAND_MODULES` maps each subcommand name to its module; :mod:`stylenat.cli` builds the parser from
it. Adding a subcommand is one module here and one line in that table. Command modules import only the
standard library at module level (torch, Lightning and the models load when a command runs), so
``stylenat --help`` answers without importing torch.

A command either declares its arguments (``add_arguments(parser)``, then ``run(args)`` gets the parsed
namespace) or parses its own (``passthrough=True``: ``run(args)`` gets ``args.command`` and the raw
``args.argv``; LightningCLI's ``fit`` / ``validate`` / ``test``). Bad input ends with one line
``stylenat <command>: error: <message>`` on stderr and exit code 2 (:func:`with_clean_errors`).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

COMMAND_MODULES: dict[str, str] = {
    "fit": "lightning:FIT",
    "validate": "lightning:VALIDATE",
    "test": "lightning:TEST",
    "prepare": "prepare",
    "generate": "generate",
    "fid": "fid",
    "attention-map": "attention_map",
    "throughput": "throughput",
    "convert": "convert",
    "evaluate-classifier": "evaluate_classifier",
    "info": "info",
}
"""Subcommand name -> module of :mod:`stylenat.commands` holding its ``COMMAND`` (``module:NAME`` when the
module serves several subcommands), in the order of ``--help``."""


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, its arguments and its body.

    ``passthrough``: the command parses its own arguments; ``add_arguments`` is not called and ``run`` gets
    a namespace with ``command`` (the name it was called by) and ``argv`` (the arguments after it).
    """

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    passthrough: bool = False


class UsageError(Exception):
    """A mistake in what the user gave (a path, a value, a run directory): reported as one line, exit code 2."""


def with_clean_errors(body: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``body`` with bad input (``ValueError``, ``OSError``, :class:`UsageError`) reported as one stderr line
    ``stylenat <args.command>: error: <message>`` and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return body(args)
        except (UsageError, ValueError, OSError) as err:  # missing/corrupt files, bad values: no traceback
            return report_error(args.command, err)

    return run


def report_error(command: str, err: BaseException) -> int:
    """Print ``err`` as one line ``stylenat <command>: error: ...`` on stderr; return exit code 2."""
    print(f"stylenat {command}: error: {describe(err)}", file=sys.stderr)
    return 2


def describe(err: BaseException) -> str:
    """One line for ``err``: a full disk says so with the path, an ``OSError`` names its file."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        where = f" writing {err.filename}" if err.filename else ""
        return f"no space left on device{where}"
    if isinstance(err, OSError) and err.filename and str(err.filename) not in str(err):
        return f"{err.strerror or err}: {err.filename}"
    text = str(err).strip() or type(err).__name__
    return " ".join(line.strip() for line in text.splitlines())


def load_command(name: str) -> Command:
    """The ``COMMAND`` of subcommand ``name`` (see :data:`COMMAND_MODULES`)."""
    module, _, attribute = COMMAND_MODULES[name].partition(":")
    return getattr(importlib.import_module(f"stylenat.commands.{module}"), attribute or "COMMAND")
