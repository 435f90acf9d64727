"""``stylenat prepare``: convert a folder, zip, LSUN LMDB or built-in dataset to a StyleGAN-layout zip.

    stylenat prepare ~/photos data/photos256.zip --resolution 256
    stylenat prepare digits data/digits32.zip --resolution 32 --filter box

The conversion itself is :func:`stylenat.data.prepare`.
"""

from __future__ import annotations

import argparse

from stylenat.commands import Command, UsageError, with_clean_errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="folder, .zip, LSUN LMDB folder, or built-in name (digits)")
    parser.add_argument("out", help="output .zip")
    parser.add_argument("--resolution", type=int, required=True, help="output side in pixels")
    parser.add_argument("--filter", default="lanczos",
                        help="resize filter: lanczos (default), box, bicubic, bilinear, hamming or nearest; "
                             "recorded in dataset.json")
    parser.add_argument("--center-crop", action=argparse.BooleanOptionalAction, default=True,
                        help="crop non-square images to their centre square (default); "
                             "--no-center-crop rejects them")
    parser.add_argument("--class-folders", action="store_true",
                        help="for a folder source: its sub-folders are classes, written as labels")
    parser.add_argument("--on-error", choices=("skip", "raise"), default="skip",
                        help="unreadable images: skip and report them (default) or stop")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output zip")
    parser.epilog = "Images with transparency are composited on white (recorded in dataset.json)."


def prepare(args: argparse.Namespace) -> int:
    from stylenat.data import UnreadableImageError, prepare
    from stylenat.data.transforms import check_filter

    try:
        result = prepare(args.src, args.out, args.resolution, check_filter(args.filter), args.center_crop,
                         args.force, class_folders=args.class_folders, on_error=args.on_error)
    except UnreadableImageError as err:  # --on-error raise
        raise UsageError(str(err)) from err
    crop = "centre-cropped, " if args.center_crop else ""
    print(f"wrote {result.num_images} images ({args.resolution}x{args.resolution}, {crop}{args.filter}) "
          f"to {result.path}; skipped {len(result.skipped)} unreadable" + (f"; {result.scan}" if result.scan else ""))
    return 0


COMMAND = Command("convert a dataset to a StyleGAN-layout zip of PNGs", add_arguments, with_clean_errors(prepare))
