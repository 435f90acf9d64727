"""``stylenat generate``, ``stylenat fid`` and ``stylenat attention-map``.

    stylenat generate --ckpt G.safetensors --seeds 0-15,42 --trunc 0.7 --grid --outdir out
    stylenat generate --ckpt G.safetensors --interpolate 1 2 --frames 60 --space z
    stylenat fid --ckpt run/last.ckpt --ref ffhq:256:trainval70k --num 50000 --run-dir run
    stylenat fid --images out --ref-data data/ffhq256.zip --kid
    stylenat attention-map --ckpt G.safetensors --seed 0 --resolution 64 --query 10,3 --probs

Each command is a :class:`Command`: ``add_arguments(parser)`` and ``run(args) -> int``; ``stylenat.cli``
registers them. Bad input (a missing, corrupt or foreign checkpoint, malformed seeds, an unknown
statistics name, a query outside the map, ...) ends with ``stylenat <command>: error: <message>`` on
stderr and exit code 2. Heavy imports wait until a command runs, so ``stylenat --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

GRID_NAME = "grid.png"
LATENTS_NAME = "latents.npz"
INTERPOLATION_NAME = "interpolation"  # folder of frameNNNN.png, and the video's stem
MIN_DISPLAY_SIZE = 256  # attention maps of smaller samples are enlarged (nearest) to at least this


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, its arguments and its body."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _with_clean_errors(command: str, body: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``body`` with bad input (``ValueError``, ``OSError``) reported as one stderr line and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return body(args)
        except (ValueError, OSError) as err:  # missing/corrupt files, bad values: no traceback for the user
            print(f"stylenat {command}: error: {err}", file=sys.stderr)
            return 2

    return run


def _device(name: str | None):
    """``torch.device`` for ``--device`` (default: cuda when available, else cpu)."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown --device {name!r}: use cuda, cuda:N or cpu") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for, but no GPU is available; use --device cpu")
    return device


def _check_at_least(minimum: int, **flags: int) -> None:
    for flag, value in flags.items():
        if value < minimum:
            raise ValueError(f"--{flag} must be >= {minimum}, got {value}")


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")


# ---------------------------------------------------------------------------------------------
# generate


def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="generator export (.safetensors) or training checkpoint (.ckpt)")
    parser.add_argument("--seeds", help="seeds and ranges, e.g. 0-15,42,100-103 (one seedNNNN.png each)")
    parser.add_argument("--trunc", type=float, default=1.0, help="truncation psi (default 1: none)")
    parser.add_argument("--cutoff", type=int, help="truncate only the first N style inputs (default: all)")
    parser.add_argument("--outdir", default="out", help="output folder (default: out)")
    parser.add_argument("--grid", action="store_true", help=f"also write the seeds' images as one {GRID_NAME}")
    parser.add_argument("--batch", type=int, default=16, help="images per forward pass (default 16)")
    _add_device(parser)
    parser.add_argument("--save-latents", action="store_true",
                        help=f"write {LATENTS_NAME}: seeds, z and w (the styles after truncation)")
    parser.add_argument("--interpolate", type=int, nargs=2, metavar=("SEED_A", "SEED_B"),
                        help=f"write {INTERPOLATION_NAME}/frameNNNN.png from SEED_A to SEED_B, and a video")
    parser.add_argument("--frames", type=int, default=60, help="interpolation frames, both ends included (default 60)")
    parser.add_argument("--space", choices=("z", "w"), default="z",
                        help="interpolate by slerp between the z, or by lerp between the (truncated) w (default z)")
    parser.add_argument("--fps", type=int, default=30, help="frame rate of the interpolation video (default 30)")
    parser.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                        help="run the synthesis network through torch.compile (default backend inductor; "
                             "CUDA graphs on a GPU)")


def _generate(args: argparse.Namespace) -> int:
    from stylenat.models.checkpoint import load_generator
    from stylenat.sampling import compile_generator, parse_seeds

    seeds = parse_seeds(args.seeds) if args.seeds is not None else []
    if not seeds and args.interpolate is None:
        raise ValueError("nothing to generate: give --seeds and/or --interpolate SEED_A SEED_B")
    _check_at_least(1, batch=args.batch, fps=args.fps)
    if args.interpolate is not None:
        _check_at_least(2, frames=args.frames)
    G, _ = load_generator(args.ckpt, _device(args.device))
    if args.compile is not None:
        compile_generator(G, args.compile)
    if args.cutoff is not None and not 1 <= args.cutoff <= G.num_ws:
        raise ValueError(f"--cutoff must lie in [1, {G.num_ws}] (this generator's style inputs), got {args.cutoff}")
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = _save_seeds(G, seeds, args, outdir) if seeds else []
    if args.interpolate is not None:
        written += _save_interpolation(G, args, outdir)
    print(f"wrote {', '.join(written)} in {outdir}")
    return 0


def _save_seeds(G, seeds: list[int], args: argparse.Namespace, outdir: Path) -> list[str]:
    """``seedNNNN.png`` per seed, and the grid and latents when asked; returns what was written."""
    import torch

    from stylenat.metrics import z_from_seeds
    from stylenat.sampling import image_grid, save_latents, save_png, synthesize

    z = z_from_seeds(seeds, G.z_dim)
    all_ws, all_images, done = [], [], 0
    for ws, images in synthesize(G, z, psi=args.trunc, cutoff=args.cutoff, batch_size=args.batch):
        for seed, image in zip(seeds[done:done + len(images)], images):
            save_png(image, outdir / f"seed{seed:04d}.png")
        done += len(images)
        if args.save_latents:
            all_ws.append(ws)
        if args.grid:
            all_images.append(images)
    written = [f"{len(seeds)} images seed{seeds[0]:04d}.png" + (" ..." if len(seeds) > 1 else "")]
    if args.grid:
        save_png(image_grid(torch.cat(all_images)), outdir / GRID_NAME)
        written.append(GRID_NAME)
    if args.save_latents:
        save_latents(outdir / LATENTS_NAME, seeds, z, torch.cat(all_ws), trunc=args.trunc, cutoff=args.cutoff,
                     checkpoint=str(args.ckpt))
        written.append(LATENTS_NAME)
    return written


def _save_interpolation(G, args: argparse.Namespace, outdir: Path) -> list[str]:
    """``interpolation/frameNNNN.png`` and ``interpolation.mp4`` (or ``.gif``); returns what was written."""
    import torch

    from stylenat.metrics import z_from_seeds
    from stylenat.sampling import interpolation_latents, save_png, synthesize, write_video

    z_a, z_b = z_from_seeds(args.interpolate, G.z_dim)
    latents = interpolation_latents(G, z_a, z_b, args.frames, space=args.space, psi=args.trunc, cutoff=args.cutoff)
    folder = outdir / INTERPOLATION_NAME
    folder.mkdir(exist_ok=True)
    frames = []
    for _, images in synthesize(G, latents, space=args.space, psi=args.trunc, cutoff=args.cutoff,
                                batch_size=args.batch, desc=f"interpolating ({args.space})"):
        for image in images:
            save_png(image, folder / f"frame{len(frames):04d}.png")
            frames.append(image)
    video = write_video(torch.stack(frames), outdir / INTERPOLATION_NAME, fps=args.fps)
    if video.suffix == ".gif":
        print("note: an mp4 needs torchvision.io.write_video and PyAV (pip install av); wrote an animated GIF instead")
    return [f"{len(frames)} frames {INTERPOLATION_NAME}/frame0000.png ...", video.name]


# ---------------------------------------------------------------------------------------------
# fid


def _fid_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="generator export (.safetensors) or training checkpoint (.ckpt) to sample")
    source.add_argument("--images", help="folder (or zip) of images to measure instead of a generator")
    reference = parser.add_mutually_exclusive_group(required=True)
    reference.add_argument("--ref", help="clean-fid's named statistics NAME:RESOLUTION:SPLIT, e.g. ffhq:256:trainval70k")
    reference.add_argument("--ref-data", help="dataset (folder or zip) whose statistics are computed once and cached")
    parser.add_argument("--num", type=int, default=50_000,
                        help="samples to generate (default 50000); with --images, the first N images")
    parser.add_argument("--mode", default="clean", help="clean-fid mode: clean, legacy_tensorflow or legacy_pytorch")
    parser.add_argument("--kid", action="store_true", help="also the kernel distance (needs --ref-data)")
    parser.add_argument("--seed", type=int, help="sample i uses seed SEED + i (default 0; --ckpt only)")
    parser.add_argument("--trunc", type=float, help="truncation psi (default 1: none; --ckpt only)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    _add_device(parser)
    parser.add_argument("--inception-weights", help="the Inception weights file or its folder (else looked up, "
                                                    "then downloaded if the network is reachable)")
    parser.add_argument("--extractor", default="inception",
                        help="'inception' (FID/KID) or a factory 'package.module:function' called with mode= and "
                             "device= that returns another extractor; its metrics carry its name (fd_<name>...)")
    parser.add_argument("--run-dir", "--outdir", dest="run_dir",
                        help="append each record to RUN_DIR/metric-<name>.jsonl")


def _fid(args: argparse.Namespace) -> int:
    from stylenat.metrics import ImageFiles, dataset_features, evaluate_features, evaluate_generator
    from stylenat.models.checkpoint import load_generator
    from stylenat.metrics import build_extractor, build_reference, parse_reference_name

    if args.images is not None and (args.seed is not None or args.trunc is not None):
        raise ValueError("--seed and --trunc describe generator samples: use them with --ckpt, not --images")
    _check_at_least(1, num=args.num, batch=args.batch)
    device = _device(args.device)
    if args.ckpt is not None:
        G, info = load_generator(args.ckpt, device)
        resolution = G.size
    else:
        images = ImageFiles(args.images)
        resolution = images[0].shape[-1]
    if args.ref is not None:
        parse_reference_name(args.ref, resolution)  # before the (slow, maybe failing) extractor
    extractor = build_extractor(args.extractor, mode=args.mode, weights=args.inception_weights, device=device)
    reference = build_reference(args.ref, args.ref_data, extractor=extractor, resolution=resolution,
                                batch_size=args.batch)
    if args.ckpt is not None:
        seed, trunc = args.seed or 0, 1.0 if args.trunc is None else args.trunc
        records = evaluate_generator(lambda z: G(z, psi=trunc), reference, extractor=extractor, num_samples=args.num,
                                     seed=seed, z_dim=G.z_dim, batch_size=args.batch, device=device, truncation=trunc,
                                     kid=args.kid, checkpoint=args.ckpt, cur_nimg=info.get("cur_nimg"),
                                     run_dir=args.run_dir)
    else:
        features = dataset_features(images, extractor, resolution=resolution, batch_size=args.batch,
                                    max_items=args.num)
        records = evaluate_features(features, reference, extractor=extractor, kid=args.kid, checkpoint=args.images,
                                    run_dir=args.run_dir)
    for record in records:
        where = f"; appended to {Path(args.run_dir) / ('metric-' + record['metric'] + '.jsonl')}" if args.run_dir else ""
        print(f"{record['metric']} = {record['value']:.4f}  ({record['extractor']}/{record['mode']} against "
              f"{record['reference']}, {record['num_samples']} images{where})")
    return 0


# ---------------------------------------------------------------------------------------------
# attention-map


def _attention_map_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="generator export (.safetensors) or training checkpoint (.ckpt)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    parser.add_argument("--trunc", type=float, default=1.0, help="truncation psi (default 1: none)")
    parser.add_argument("--resolution", type=int, required=True,
                        help="stage whose attention to draw (a neighborhood-attention resolution: 8, 16, ...)")
    parser.add_argument("--block", type=int, default=0, help="style block of the stage: 0 or 1 (default 0)")
    parser.add_argument("--query", required=True, help="query position X,Y (column, row) on that stage's map")
    parser.add_argument("--probs", action="store_true",
                        help="shade the window by the attention probabilities (mean over the group's heads) "
                             "instead of marking it uniformly")
    parser.add_argument("--outdir", default="attention", help="output folder (default: attention)")
    _add_device(parser)


def _parse_query(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise ValueError(f"malformed --query {text!r}: expected X,Y (column, row), e.g. 3,5")
    return int(parts[0]), int(parts[1])


def _attention_map(args: argparse.Namespace) -> int:
    import torch

    from stylenat.metrics import to_uint8, z_from_seeds
    from stylenat.models.checkpoint import load_generator
    from stylenat.sampling import (attention_probabilities, capture_output, hydra_attention, overlay_attention,
                                   save_png, window_masks)

    x, y = _parse_query(args.query)
    device = _device(args.device)
    G, _ = load_generator(args.ckpt, device)
    attn = hydra_attention(G, args.resolution, args.block)
    masks = window_masks(attn, args.resolution, x, y)  # also checks the query
    with capture_output(attn.qkv) as captured, torch.no_grad():
        sample = to_uint8(G(z_from_seeds([args.seed], G.z_dim).to(device), psi=args.trunc))[0].cpu()
    if args.probs:
        maps = [p.mean(0) for p in attention_probabilities(attn, captured["output"], args.resolution, x, y)]
    else:
        maps = masks
    zoom = max(1, MIN_DISPLAY_SIZE // sample.shape[-1])
    sample = sample.repeat_interleave(zoom, 1).repeat_interleave(zoom, 2)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    stem = f"r{args.resolution}_block{args.block}"
    panels = [sample]
    for g, (weights, (kernel, dilation)) in enumerate(zip(maps, attn.pattern)):
        panels.append(overlay_attention(sample, weights, x, y))
        save_png(panels[-1], outdir / f"{stem}_group{g}_k{kernel}_d{dilation}.png")
    gap = torch.full((3, sample.shape[1], 4), 255, dtype=torch.uint8)
    save_png(torch.cat([p for panel in panels for p in (panel, gap)][:-1], dim=2), outdir / f"{stem}_groups.png")
    print(f"wrote {len(maps)} head-group maps ({stem}_group*.png) and {stem}_groups.png (sample + groups, "
          f"query x={x}, y={y}) in {outdir}")
    return 0


COMMANDS: dict[str, Command] = {
    "generate": Command("images from seeds (seedNNNN.png), grid, latents, interpolation",
                        _generate_arguments, _with_clean_errors("generate", _generate)),
    "fid": Command("FID/KID of a generator or an image folder against reference statistics",
                   _fid_arguments, _with_clean_errors("fid", _fid)),
    "attention-map": Command("draw which pixels a query attends in each Hydra head group",
                             _attention_map_arguments, _with_clean_errors("attention-map", _attention_map)),
}
