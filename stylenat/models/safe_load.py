"""Reading a user's ``torch.save`` file as data: no code from it ever runs.

Every ``torch.load`` of a file a user hands us (``--ckpt``, ``fit --ckpt_path``, ``stylenat convert``,
``create_model(pretrained=)``) goes through :func:`load_torch_file`, which unpickles with
``weights_only=True`` passed explicitly (so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` cannot turn it off: torch
lets that variable override only a call that left ``weights_only`` unset) and allows exactly
:data:`ALLOWED_GLOBALS` besides torch's tensors and Python's plain containers. Our Lightning checkpoints
need no global beyond those; the reference StyleNAT and NAT / DiNAT checkpoints store their training
arguments as an ``argparse.Namespace`` (rebuilt as a plain attribute bag, which runs nothing).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import warnings
from typing import Any

import torch

ALLOWED_GLOBALS = (argparse.Namespace,)


class UnsafeCheckpointError(ValueError):
    """A checkpoint that would need Python objects outside :data:`ALLOWED_GLOBALS` to load: refused."""


def load_torch_file(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` a user's file as data: weights only, :data:`ALLOWED_GLOBALS` allowed, no code run;
    ``mmap``: tensors are memory-mapped, read only when used.

    Raises :class:`UnsafeCheckpointError` (one line naming the file and the refused global) for a
    pickle that asks for anything else; other read errors propagate as ``torch.load`` raises them.
    """
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # a bare pickle: refused below anyway
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines()]
        reason = next((line for line in lines if re.search(r"GLOBAL|Unsupported|not an allowed", line)),
                      "a pickle the weights-only loader refuses")
        raise UnsafeCheckpointError(f"{path} holds Python objects besides tensors and plain containers "
                                    f"({reason}); refused to load it: checkpoints are read as data, "
                                    "never as code") from None


