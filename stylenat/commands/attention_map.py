"""``stylenat attention-map``: draw which pixels a query attends in each Hydra head group.

    stylenat attention-map --ckpt G.safetensors --seed 0 --resolution 64 --query 10,3 --probs
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stylenat.commands import Command, with_clean_errors
from stylenat.commands.options import GENERATOR_CKPT_HELP, add_device, load_generator, resolve_device

MIN_DISPLAY_SIZE = 256  # attention maps of smaller samples are enlarged (nearest) to at least this


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help=GENERATOR_CKPT_HELP)
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
    add_device(parser)


def _parse_query(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise ValueError(f"malformed --query {text!r}: expected X,Y (column, row), e.g. 3,5")
    return int(parts[0]), int(parts[1])


def attention_map(args: argparse.Namespace) -> int:
    import torch

    from stylenat.metrics import to_uint8, z_from_seeds
    from stylenat.attention_maps import (attention_probabilities, capture_output, hydra_attention,
                                         overlay_attention, window_masks)
    from stylenat.generation import save_png

    x, y = _parse_query(args.query)
    device = resolve_device(args.device)
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


COMMAND = Command("draw which pixels a query attends in each Hydra head group", add_arguments,
                  with_clean_errors(attention_map))
