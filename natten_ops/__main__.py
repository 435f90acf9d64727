"""``python -m natten_ops``: version and backend report; ``python -m natten_ops build [--cuda]``: compile ahead of time."""

from __future__ import annotations

import argparse
import sys

from natten_ops import _build, report


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
    if args.command == "build":
        return build(args)
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
