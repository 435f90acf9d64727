"""Optional dependencies, imported only by the feature that needs them.

``clean-fid`` (FID / KID, Inception) and ``lmdb`` (LSUN datasets) are never imported when ``stylenat`` or
any of its modules is imported: a machine without one of them trains, samples and benchmarks as usual, and
only the feature that needs it fails, with one line naming the package to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, package: str, feature: str) -> ModuleType:
    """``import module`` (e.g. ``"cleanfid.resize"``), or ``ModuleNotFoundError`` saying that ``feature``
    needs the distribution ``package`` and how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"{feature} needs the {package!r} package, which cannot be imported here "
                                  f"({err}): pip install {package}", name=err.name) from err
