"""``stylenat convert SRC OUT.safetensors``: published or trained weights -> our export.

    stylenat convert stylenat_ffhq256.pt G.safetensors          reference StyleNAT -> generator export
    stylenat convert runs/demo/checkpoints/last.ckpt G.safetensors
    stylenat convert dinat_mini_in1k_224.pth dinat_mini.safetensors   NAT / DiNAT -> classifier export

What SRC is and which preset or variant it holds are found from its keys and tensor shapes
(:mod:`stylenat.models.pretrained`); the command says what it found and what it wrote. SRC is read as
data: no pickle code ever runs.
"""

from __future__ import annotations

import argparse

from stylenat.commands import Command, with_clean_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="reference StyleNAT checkpoint, our training .ckpt, or a NAT / DiNAT state dict "
                                    "(reference repository or transformers: a file or a model folder)")
    parser.add_argument("out", help="the export to write (.safetensors)")
    parser.add_argument("--preset", help="generator preset of a reference StyleNAT checkpoint "
                                         "(default: inferred from the tensor shapes)")
    parser.add_argument("--model", help="registry name of a NAT / DiNAT state dict (default: inferred from the "
                                        "tensor shapes and the file name; needed when NAT and DiNAT shapes agree)")


def run(args: argparse.Namespace) -> int:
    from stylenat.checkpoints import convert

    print(convert(args.src, args.out, preset=args.preset, model=args.model))
    return 0


COMMAND = Command("convert published or trained weights to our .safetensors export",
                  add_arguments, with_clean_errors(run))
