"""``stylenat fid``: FID / KID of a generator or an image folder against reference statistics.

    stylenat fid --ckpt run/last.ckpt --ref ffhq:256:trainval70k --num 50000 --run-dir run
    stylenat fid --images out --ref-data data/ffhq256.zip --kid
    stylenat fid --ckpt G.safetensors --protocol stylenat-paper --ref-data data/ffhq256.zip   # the paper's FID

Each result is printed with its protocol and, with ``--run-dir``, appended to ``metric-<name>.jsonl``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stylenat.commands import Command, with_clean_errors
from stylenat.commands.generate import GRID_NAME, INTERPOLATION_NAME
from stylenat.commands.options import (GENERATOR_CKPT_HELP, add_device, check_at_least, load_generator,
                                       resolve_device)

MIN_UNBIASED_IMAGES = 2048
"""Below this many images (Inception's feature size) the distances are strongly biased: fid warns."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help=GENERATOR_CKPT_HELP)
    source.add_argument("--images", help="folder (or zip) of images to measure instead of a generator")
    reference = parser.add_mutually_exclusive_group(required=True)
    reference.add_argument("--ref", help="clean-fid's named statistics NAME:RESOLUTION:SPLIT, e.g. ffhq:256:trainval70k")
    reference.add_argument("--ref-data", help="dataset (folder or zip) whose statistics are computed once and cached")
    parser.add_argument("--protocol", help="a fixed protocol: stylenat-paper (the paper's FID: legacy_pytorch, 50k "
                                           "samples, psi 1, a seeded random 50k of --ref-data)")
    parser.add_argument("--num", type=int,
                        help="samples to generate (default 50000); with --images, the first N images")
    parser.add_argument("--mode", help="clean-fid mode: clean (default), legacy_tensorflow or legacy_pytorch")
    parser.add_argument("--ref-subset", type=int, help="use a random N of the --ref-data images (default: all; "
                                                       "50000 with --protocol stylenat-paper)")
    parser.add_argument("--ref-subset-seed", type=int, help="seed of the --ref-subset draw (default 0)")
    parser.add_argument("--kid", action="store_true", help="also the kernel distance (needs --ref-data)")
    parser.add_argument("--seed", type=int, help="sample i uses seed SEED + i (default 0; --ckpt only)")
    parser.add_argument("--trunc", type=float, help="truncation psi (default 1: none; --ckpt only)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    add_device(parser)
    parser.add_argument("--inception-weights", help="the Inception weights file or its folder (else looked up, "
                                                    "then downloaded if the network is reachable)")
    parser.add_argument("--extractor", default="inception",
                        help="'inception' (FID/KID) or a factory 'package.module:function' called with mode= and "
                             "device= that returns another extractor; its metrics carry its name (fd_<name>...)")
    parser.add_argument("--run-dir", "--outdir", dest="run_dir",
                        help="append each record to RUN_DIR/metric-<name>.jsonl")


def fid(args: argparse.Namespace) -> int:
    from stylenat.metrics import dataset_features, evaluate_features, evaluate_generator
    from stylenat.metrics import (build_extractor, build_reference, parse_reference_name, resolve_protocol,
                                  warn_if_filters_differ)

    if args.images is not None and (args.seed is not None or args.trunc is not None):
        raise ValueError("--seed and --trunc describe generator samples: use them with --ckpt, not --images")
    settings = resolve_protocol(args.protocol, mode=args.mode, truncation=args.trunc, num_samples=args.num,
                                ref=args.ref, ref_subset=args.ref_subset, ref_subset_seed=args.ref_subset_seed,
                                cli=True)
    check_at_least(1, num=settings.num_samples, batch=args.batch)
    device = resolve_device(args.device)
    if args.ckpt is not None:
        G, info = load_generator(args.ckpt, device)
        resolution = G.size
    else:
        images, resolution = _sample_images(args.images, settings.num_samples)
    if args.ref is not None:
        parse_reference_name(args.ref, resolution, settings.mode)  # before the (slow, maybe failing) extractor
    extractor = build_extractor(args.extractor, mode=settings.mode, weights=args.inception_weights, device=device)
    reference = build_reference(args.ref, args.ref_data, extractor=extractor, resolution=resolution,
                                batch_size=args.batch, ref_subset=settings.ref_subset,
                                ref_subset_seed=settings.ref_subset_seed)
    if args.ckpt is not None:
        warn_if_filters_differ(info.get("data_resize_filter"), reference, "the generator's training data")
        seed, trunc = args.seed or 0, settings.truncation
        records = evaluate_generator(lambda z: G(z, psi=trunc), reference, extractor=extractor,
                                     num_samples=settings.num_samples, seed=seed, z_dim=G.z_dim, batch_size=args.batch,
                                     device=device, truncation=trunc, kid=args.kid, checkpoint=args.ckpt,
                                     cur_nimg=info.get("cur_nimg"), run_dir=args.run_dir, protocol=settings.protocol)
    else:
        features = dataset_features(images, extractor, resolution=resolution, batch_size=args.batch,
                                    max_items=settings.num_samples)
        records = evaluate_features(features, reference, extractor=extractor, kid=args.kid, checkpoint=args.images,
                                    run_dir=args.run_dir, protocol=settings.protocol)
    for record in records:
        where = f"; appended to {Path(args.run_dir) / ('metric-' + record['metric'] + '.jsonl')}" if args.run_dir else ""
        print(f"{record['metric']} = {record['value']:.4f}  ({record['extractor']}/{record['mode']} against "
              f"{record['reference']} ({record['reference_images']} images), {record['num_samples']} "
              f"images{where})")
    if records and records[0]["num_samples"] < MIN_UNBIASED_IMAGES:
        print(f"warning: measured on {records[0]['num_samples']} images: below {MIN_UNBIASED_IMAGES:,} the Fréchet "
              "and kernel distances are strongly biased (FID is reported on 50,000); compare only values measured "
              "on the same number of images", file=sys.stderr)
    return 0


def _is_generate_extra(name: str) -> bool:
    """Whether a file that ``stylenat generate`` writes beside the samples: the grid and the interpolation."""
    return name == GRID_NAME or name.startswith(f"{INTERPOLATION_NAME}/")


def _sample_images(folder: str, num: int):
    """The first ``num`` sample images of ``folder`` (a dataset) and their side. ``generate``'s grid and
    interpolation frames are left out (and said so); images of different sizes fail here, naming the odd
    file, before any statistics are computed."""
    from torch.utils.data import Subset

    from stylenat.metrics import ImageFiles

    files = ImageFiles(folder)
    kept = [i for i, name in enumerate(files.names) if not _is_generate_extra(name)]
    if len(kept) < len(files):
        print(f"note: left out {len(files) - len(kept)} files of stylenat generate that are not samples "
              f"({GRID_NAME}, {INTERPOLATION_NAME}/)", file=sys.stderr)
    if not kept:
        raise ValueError(f"no sample images in {folder}: only {GRID_NAME} / {INTERPOLATION_NAME}/ frames")
    kept = kept[:num]
    first = files.names[kept[0]]
    size = files.image_size(kept[0])
    for i in kept:
        if files.image_size(i) != size:
            width, height = files.image_size(i)
            raise ValueError(f"{Path(folder) / files.names[i]} is {width}x{height} but {first} is "
                             f"{size[0]}x{size[1]}: fid measures samples of one size; move the odd file away")
    if size[0] != size[1]:
        raise ValueError(f"{Path(folder) / first} is {size[0]}x{size[1]}: fid measures square samples")
    return Subset(files, kept), size[0]


COMMAND = Command("FID/KID of a generator or an image folder against reference statistics", add_arguments,
                  with_clean_errors(fid))
