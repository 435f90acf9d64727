"""``python -m natten_ops``: version and backend report; ``python -m natten_ops build [--cuda]``: compile ahead of time."""

from __future__ import annotations

import argparse
import sys

import torch

import natten_ops
from natten_ops import _build
from natten_ops.functional import AUTO_NOTES, AUTO_ORDER, BACKENDS, unavailable_reason


def report() -> int:
    print(f"natten_ops {natten_ops.__version__} (torch {torch.__version__})")
    print(f"kernel cache: {_build.cache_root()}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        print(f"\n{device}: backend='auto' tries {', '.join(AUTO_ORDER[device])}")
        if device in AUTO_NOTES:
            print(f"  ({AUTO_NOTES[device]})")
        for name in BACKENDS:
            reason = unavailable_reason(name, "na2d", device)
            print(f"  {name:<10} {'available' if reason is None else 'unavailable: ' + reason}")
    if not torch.cuda.is_available():
        toolkit = _build.cuda_home()
        print("\ncuda: no GPU visible to torch; the CUDA kernels "
              + (f"can still be compiled here ({toolkit}): python -m natten_ops build --cuda" if toolkit
                 else "need a CUDA toolkit to compile (set CUDA_HOME)"))
    return 0


def build(args) -> int:
    try:
        _build.load_cpu()
        print(f"natten_ops: CPU kernels ready: {_build.module_path(_build.cpu_extension())}")
        if args.cuda:
            _build.load_cuda()
            print(f"natten_ops: CUDA kernels ready ({_build.cuda_arch_list()}): "
                  f"{_build.module_path(_build.cuda_extension())}")
    except _build.BuildError as err:
        print(err, file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m natten_ops", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    build_parser = sub.add_parser("build", help="compile the kernels now instead of on first use")
    build_parser.add_argument("--cuda", action="store_true",
                              help="also build the CUDA kernels (for $TORCH_CUDA_ARCH_LIST or the visible GPUs)")
    args = parser.parse_args(argv)
    return build(args) if args.command == "build" else report()


if __name__ == "__main__":
    sys.exit(main())
