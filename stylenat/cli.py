"""The ``stylenat`` command.

    stylenat fit --config configs/demo.yaml            train (LightningCLI; also validate/test)
    stylenat prepare SRC OUT.zip --resolution 256      convert a dataset to a StyleGAN-layout zip
    stylenat generate --ckpt G --seeds 0-15 --grid     images from seeds (also interpolation, latents)
    stylenat fid --ckpt G --ref ffhq:256:trainval70k   FID / KID with a recorded protocol
    stylenat attention-map --ckpt G --resolution 64 --query 10,3   what each head group attends
    stylenat throughput --preset ffhq256 --batch 1     generator img/s per natten_ops backend
    stylenat convert SRC OUT.safetensors               published or trained weights -> our export
    stylenat evaluate-classifier --ckpt C --data DIR   top-1/top-5 and throughput of a NAT/DiNAT
    stylenat info                                      versions and natten_ops backends

Each subcommand is a module of :mod:`stylenat.commands` (``stylenat <command> --help`` for its flags).
"""

from __future__ import annotations

import argparse
import sys

from stylenat.commands import COMMAND_MODULES, load_command


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; builds without importing torch."""
    parser = argparse.ArgumentParser(prog="stylenat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        command = load_command(name)
        if command.passthrough:  # parses its own arguments, --help included
            command_parser = sub.add_parser(name, help=command.help, add_help=False)
            command_parser.add_argument("argv", nargs=argparse.REMAINDER)
        else:
            command_parser = sub.add_parser(name, help=command.help, description=command.help)
            command.add_arguments(command_parser)
        command_parser.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMAND_MODULES and load_command(argv[0]).passthrough:
        return load_command(argv[0]).run(argparse.Namespace(command=argv[0], argv=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        import stylenat

        print(f"stylenat {stylenat.__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
