"""The ``stylenat`` command.

    stylenat fit --config configs/demo.yaml            train (LightningCLI; also validate/test)
    stylenat prepare SRC OUT.zip --resolution 256      convert a dataset to a StyleGAN-layout zip
    stylenat generate --ckpt G --seeds 0-15 --grid     images from seeds (also interpolation, latents)
    stylenat fid --ckpt G --ref ffhq:256:trainval70k   FID / KID with a recorded protocol
    stylenat attention-map --ckpt G --resolution 64 --query 10,3   what each head group attends
    stylenat throughput --preset ffhq256 --batch 1     generator img/s per natten_ops backend
    stylenat info                                      versions and natten_ops backends

``fit`` / ``validate`` / ``test`` are LightningCLI subcommands: the model and data module are chosen by
``class_path`` in the YAML config (GAN or classifier), every ``__init__`` argument is a flag
(``--data.path``, ``--trainer.devices 8``), ``--print_config`` prints the resolved config and every run
saves it in its log directory.
"""

from __future__ import annotations

import argparse
import sys

LIGHTNING_COMMANDS = ("fit", "validate", "test")


def _lightning(argv: list[str]) -> int:
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=None if argv == sys.argv[1:] else argv,  # None: LightningCLI reads sys.argv itself
    )
    return 0


def _info(_args) -> int:
    import stylenat
    from natten_ops import report

    print(f"stylenat {stylenat.__version__}")
    print(report())
    return 0


def _prepare(args) -> int:
    from stylenat.data import prepare_main

    return prepare_main(args.rest)


def _throughput_command():
    from stylenat import throughput
    from stylenat.evaluate_cli import Command

    return Command("generator img/s and peak memory per natten_ops backend", throughput.add_arguments, throughput.run)


def build_parser() -> argparse.ArgumentParser:
    from stylenat.evaluate_cli import COMMANDS  # generate, fid, attention-map


    parser = argparse.ArgumentParser(prog="stylenat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"LightningCLI {name} (stylenat {name} --help)", add_help=False)
    sub.add_parser("info", help="versions and natten_ops backends").set_defaults(run=_info)
    prepare = sub.add_parser("prepare", help="convert a dataset to a zip (stylenat prepare --help)", add_help=False)
    prepare.add_argument("rest", nargs=argparse.REMAINDER)
    prepare.set_defaults(run=_prepare)
    for name, command in {**COMMANDS, "throughput": _throughput_command()}.items():
        command_parser = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(command_parser)
        command_parser.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        return _lightning(argv)
    args = build_parser().parse_args(argv)
    if args.version:
        import stylenat

        print(f"stylenat {stylenat.__version__}")
        return 0
    if args.command is None:
        build_parser().print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
