"""``stylenat generate``: images from seeds (``seedNNNN.png``), a grid, the latents, an interpolation video.

    stylenat generate --ckpt G.safetensors --seeds 0-15,42 --trunc 0.7 --grid --outdir out
    stylenat generate --ckpt G.safetensors --interpolate 1 2 --frames 60 --space z
    stylenat generate --ckpt G.safetensors --seeds 0-999 --device cuda --compile   # torch.compile + CUDA graphs

``generate --seeds 0-49999`` saves exactly the images that ``fid`` with seed 0 measures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stylenat.commands import Command, with_clean_errors
from stylenat.commands.options import (GENERATOR_CKPT_HELP, add_device, check_at_least, load_generator,
                                       resolve_device)

GRID_NAME = "grid.png"
LATENTS_NAME = "latents.npz"
INTERPOLATION_NAME = "interpolation"  # folder of frameNNNN.png, and the video's stem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help=GENERATOR_CKPT_HELP)
    parser.add_argument("--seeds", help="seeds and ranges, e.g. 0-15,42,100-103 (one seedNNNN.png each)")
    parser.add_argument("--trunc", type=float, default=1.0, help="truncation psi (default 1: none)")
    parser.add_argument("--cutoff", type=int, help="truncate only the first N style inputs (default: all)")
    parser.add_argument("--outdir", default="out", help="output folder (default: out)")
    parser.add_argument("--grid", action="store_true", help=f"also write the seeds' images as one {GRID_NAME}")
    parser.add_argument("--batch", type=int, default=16, help="images per forward pass (default 16)")
    add_device(parser)
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


def generate(args: argparse.Namespace) -> int:
    from stylenat.generation import compile_generator, parse_seeds

    seeds = parse_seeds(args.seeds) if args.seeds is not None else []
    if not seeds and args.interpolate is None:
        raise ValueError("nothing to generate: give --seeds and/or --interpolate SEED_A SEED_B")
    check_at_least(1, batch=args.batch, fps=args.fps)
    if args.interpolate is not None:
        check_at_least(2, frames=args.frames)
    G, _ = load_generator(args.ckpt, resolve_device(args.device))
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
    from stylenat.generation import image_grid, save_latents, save_png, synthesize

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
    from stylenat.generation import interpolation_latents, save_png, synthesize, write_video

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


COMMAND = Command("images from seeds (seedNNNN.png), grid, latents, interpolation", add_arguments,
                  with_clean_errors(generate))
