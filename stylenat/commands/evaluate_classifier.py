"""``stylenat evaluate-classifier``: top-1 / top-5 and throughput of a NAT / DiNAT on an image folder.

    stylenat evaluate-classifier --ckpt dinat_mini.safetensors --data imagenet/val
    stylenat evaluate-classifier --ckpt runs/nat_digits/.../last.ckpt --data digits_test/ --device cpu

``--ckpt``: a classifier export (``stylenat convert``), one of our ImageClassifier training checkpoints, or
a reference / transformers NAT / DiNAT file (converted in memory). ``--data``: class sub-folders
(:mod:`stylenat.metrics.classification`). The evaluation transform is the one the weights record:
published ImageNet weights use timm's (bicubic resize to img_size / 0.875, centre crop, ImageNet mean/std).
"""

from __future__ import annotations

import argparse

from stylenat.commands import Command, with_clean_errors
from stylenat.commands.options import add_device, check_at_least, resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="classifier export, training .ckpt, or NAT / DiNAT state dict")
    parser.add_argument("--data", required=True, help="folder of class sub-folders (e.g. ImageNet val by synset)")
    parser.add_argument("--model", help="registry name, when a foreign state dict fits several (e.g. nat_mini)")
    parser.add_argument("--img-size", type=int, help="input size (default: the weights' own, e.g. 224)")
    parser.add_argument("--crop-pct", type=float, help="centre-crop fraction (default: the weights' own, e.g. 0.875)")
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--workers", type=int, default=4, help="data loader processes (default 4)")
    add_device(parser)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from stylenat.metrics.classification import LabelledImages, eval_transform, evaluate_classifier
    from stylenat.checkpoints import load_classifier

    check_at_least(1, batch=args.batch)
    check_at_least(0, workers=args.workers)
    if args.crop_pct is not None and not 0 < args.crop_pct <= 1:
        raise ValueError(f"--crop-pct must lie in (0, 1], got {args.crop_pct}")
    device = resolve_device(args.device)
    weights = load_classifier(args.ckpt, model=args.model)
    if args.img_size is not None:
        check_at_least(1, **{"img-size": args.img_size})
        weights.overrides["img_size"] = args.img_size
    if args.crop_pct is not None:
        weights.preprocessing = dataclasses.replace(weights.preprocessing, crop_pct=args.crop_pct)
    pre, size = weights.preprocessing, weights.img_size
    images = LabelledImages(args.data, eval_transform(pre, size))
    result = evaluate_classifier(weights.build(device), images, weights.num_classes, batch_size=args.batch,
                                 device=device, num_workers=args.workers)
    top5 = f", top-5 {100 * result.top5:.2f}%" if result.top5 is not None else ""
    print(f"{weights.model} ({weights.found}) on {args.data}: top-1 {100 * result.top1:.2f}%{top5} "
          f"({result.num_images} images, {len(images.classes)} class folders)\n"
          f"transform: resize short side to {int(size / pre.crop_pct)} ({pre.interpolation}), centre crop {size}, "
          f"normalise mean {list(pre.mean)} std {list(pre.std)}\n"
          f"throughput: {result.images_per_second:.1f} img/s (forward passes only, batch {args.batch}, {device})")
    return 0


COMMAND = Command("top-1/top-5 and throughput of a NAT/DiNAT classifier on an image folder",
                  add_arguments, with_clean_errors(run))
