"""NAT and DiNAT image classifiers.

NAT: Hassani, Walton, Li, Li, Shi, "Neighborhood Attention Transformer", arXiv 2204.07143.
DiNAT: Hassani, Shi, "Dilated Neighborhood Attention Transformer", arXiv 2209.15001.
Reference code: github.com/SHI-Labs/Neighborhood-Attention-Transformer (classification/nat.py, dinat.py,
dinats.py, isotropic.py) and transformers' NAT/DiNAT models. The code is ours; the parameter names are the
reference's, so its state dicts load as they are and transformers' load through ``convert_transformers``.

    img [B, 3, H, W] --patch_embed--> [B, H/4, W/4, C] --levels--> [B, H/32, W/32, 8C] --norm, mean, head--> logits

One class, :class:`NAT`, builds every family:

- NAT: a conv tokenizer stem (two 3x3 stride-2 convs, LayerNorm) and four levels of width ``C * 2^i``;
  each level but the last ends in a conv downsampler (3x3 stride-2 conv, LayerNorm) to the next.
- DiNAT: NAT whose layers alternate plain (d=1) and dilated neighborhood attention.
- DiNAT_s: DiNAT on Swin's skeleton: a 4x4 patch conv + LayerNorm stem and Swin's patch merging.
- Isotropic NAT/DiNAT: a 16x16 patch conv + LayerNorm stem and a single level of 12 layers.

Tokens stay channels-last ``[B, H, W, C]`` from the stem to the head. Any input size works: strided steps
round up, and :class:`NeighborhoodAttention2D` pads maps smaller than ``kernel * dilation`` (as the reference).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from stylenat.models.attention import NeighborhoodAttention2D
from stylenat.models.layers import Mlp
from stylenat.models.safe_load import load_torch_file

# ---------------------------------------------------------------------------------------------
# Helpers


def level_sizes(img_size: tuple[int, int], stem_stride: int, num_levels: int) -> list[tuple[int, int]]:
    """Feature-map ``(height, width)`` of each level for an ``img_size`` input (strided steps round up).

    >>> level_sizes((224, 224), 4, 4)
    [(56, 56), (28, 28), (14, 14), (7, 7)]
    """
    return [tuple(-(-side // (stem_stride * 2 ** i)) for side in img_size) for i in range(num_levels)]


def dinat_dilations(depths: Sequence[int], sizes: Sequence[tuple[int, int]], kernel_size: int) -> list[list[int]]:
    """DiNAT's schedule: layers alternate plain (d=1) and dilated, plain first; a dilated layer takes the
    largest dilation its level's map allows, ``floor(min(h, w) / kernel_size)`` (at least 1).

    >>> dinat_dilations([3, 4, 6, 5], level_sizes((224, 224), 4, 4), 7)
    [[1, 8, 1], [1, 4, 1, 4], [1, 2, 1, 2, 1, 2], [1, 1, 1, 1, 1]]
    """
    schedule = []
    for depth, (h, w) in zip(depths, sizes):
        dilation = max(1, min(h, w) // kernel_size)
        schedule.append([1 if j % 2 == 0 else dilation for j in range(depth)])
    return schedule


def check_dilations(dilations: Sequence[Sequence[int]], depths: Sequence[int], sizes: Sequence[tuple[int, int]],
                    kernel_size: int, img_size: tuple[int, int]) -> None:
    """One dilation per layer, each >= 1; a dilated layer's window ``kernel_size * d`` must fit its level's
    map at ``img_size`` (plain layers may be larger than small maps: attention pads those, as the reference)."""
    if len(dilations) != len(depths) or any(len(ds) != n for ds, n in zip(dilations, depths)):
        raise ValueError(f"dilations must hold one list per level and one value per layer (depths {list(depths)}), "
                         f"got {[list(ds) for ds in dilations]}")
    for i, (ds, (h, w)) in enumerate(zip(dilations, sizes)):
        for j, d in enumerate(ds):
            if d < 1:
                raise ValueError(f"level {i} layer {j}: dilation must be >= 1, got {d}")
            if d > 1 and kernel_size * d > min(h, w):
                raise ValueError(
                    f"level {i} layer {j}: kernel_size {kernel_size} x dilation {d} = {kernel_size * d} exceeds the "
                    f"{h}x{w} feature map of a {img_size[0]}x{img_size[1]} input (img_size); the largest valid "
                    f"dilation there is {max(1, min(h, w) // kernel_size)}")


def _init_weights(module: nn.Module) -> None:
    """The reference's init: Linear weights trunc-normal(0.02), biases 0; LayerNorm 1, 0. Convs keep
    PyTorch's default; RPB tables are trunc-normal(0.02) from the attention module."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------
# Blocks


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a sample's residual branch with probability ``p`` and scale
    the kept ones by ``1 / (1 - p)``. ``[B, ...]`` -> ``[B, ...]``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class NATBlock(nn.Module):
    """Pre-norm transformer block with neighborhood attention, ``[B, H, W, C]`` -> ``[B, H, W, C]``::

        x = x + DropPath(gamma1 * NA(norm1(x)))
        x = x + DropPath(gamma2 * MLP(norm2(x)))

    ``gamma1``/``gamma2`` are layer-scale vectors ``[C]`` initialised to ``layer_scale``, or absent (1).
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 7, dilation: int = 1, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, layer_scale: float | None = None, drop_path: float = 0.0,
                 backend: str = "auto"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = NeighborhoodAttention2D(dim, num_heads, kernel_size, dilation, qkv_bias=qkv_bias, backend=backend)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        if layer_scale:
            self.gamma1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma2 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        else:
            self.register_parameter("gamma1", None)
            self.register_parameter("gamma2", None)

    def forward(self, x: Tensor) -> Tensor:
        y = self.attn(self.norm1(x))
        x = x + self.drop_path(y if self.gamma1 is None else self.gamma1 * y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(y if self.gamma2 is None else self.gamma2 * y)

    def extra_repr(self) -> str:
        return f"layer_scale={self.gamma1 is not None}"


class ConvTokenizer(nn.Module):
    """NAT's stem: 3x3 stride-2 conv to C/2, 3x3 stride-2 conv to C (nothing between), LayerNorm.

    ``[B, in_chans, H, W]`` -> ``[B, ceil(H/4), ceil(W/4), C]``.
    """

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, dim // 2, kernel_size=3, stride=2, padding=1),
            nn.Conv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1),
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchEmbed(nn.Module):
    """Swin/ViT stem: non-overlapping ``patch_size`` conv (the image zero-padded bottom/right to a multiple
    of it), LayerNorm. ``[B, in_chans, H, W]`` -> ``[B, ceil(H/p), ceil(W/p), C]``."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        x = F.pad(x, (0, -x.shape[3] % p, 0, -x.shape[2] % p))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvDownsampler(nn.Module):
    """NAT's downsampler: 3x3 stride-2 conv without bias, LayerNorm.

    ``[B, H, W, d]`` -> ``[B, ceil(H/2), ceil(W/2), 2d]``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, 2 * dim, kernel_size=3, stride=2, padding=1, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class PatchMerging(nn.Module):
    """Swin's downsampler: concatenate each 2x2 patch's tokens (odd sides zero-padded bottom/right),
    LayerNorm, Linear 4d -> 2d without bias. ``[B, H, W, d]`` -> ``[B, ceil(H/2), ceil(W/2), 2d]``."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)  # [B, h, w, 4d]
        return self.reduction(self.norm(x))


class NATLevel(nn.Module):
    """One resolution: ``blocks``, then (every level but the last) the downsampler to the next level."""

    def __init__(self, blocks: Sequence[NATBlock], downsample: nn.Module | None = None):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample if downsample is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(self.blocks(x))


# ---------------------------------------------------------------------------------------------
# The model


class NAT(nn.Module):
    """NAT / DiNAT / DiNAT_s / isotropic classifier (see the module docstring); ``forward``:
    ``[B, in_chans, H, W]`` -> logits ``[B, num_classes]``.

    Args:
        depths, num_heads: blocks and attention heads per level; level ``i`` has width ``embed_dim * 2^i``.
        mlp_ratio: MLP hidden width over block width.
        kernel_size: neighborhood size, the same in every layer.
        dilations: one list per level, one dilation per layer; ``None``: all 1 (NAT); ``"max"``: DiNAT's
            schedule for ``img_size`` (:func:`dinat_dilations`).
        layer_scale: initial value of the layer-scale vectors ``gamma1``/``gamma2``; ``None``: none.
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks to this rate.
        stem: ``"conv"``: NAT's tokenizer (stride 4); ``"patch"``: a ``patch_size`` patch conv.
        downsample: between levels: ``"conv"``: NAT's conv downsampler; ``"merge"``: Swin's patch merging.
        img_size: the input size the dilations are checked against (and ``"max"`` computed for); int or
            ``(height, width)``. Other sizes still run.
        out_indices: levels whose maps :meth:`forward_backbone` returns, each through its own LayerNorm
            ``norm{i}`` (as the reference detection/segmentation backbones).
        backend: the ``natten_ops`` backend of every attention layer.
    """

    def __init__(self, depths: Sequence[int] = (3, 4, 6, 5), num_heads: Sequence[int] = (2, 4, 8, 16),
                 embed_dim: int = 64, mlp_ratio: float = 3.0, kernel_size: int = 7,
                 dilations: Sequence[Sequence[int]] | str | None = None, layer_scale: float | None = None,
                 drop_path_rate: float = 0.2, stem: str = "conv", patch_size: int = 4, downsample: str = "conv",
                 qkv_bias: bool = True, in_chans: int = 3, num_classes: int = 1000, img_size: int | Sequence[int] = 224,
                 out_indices: Sequence[int] | None = None, backend: str = "auto"):
        super().__init__()
        if len(num_heads) != len(depths):
            raise ValueError(f"num_heads {list(num_heads)} needs one entry per level of depths {list(depths)}")
        if stem not in ("conv", "patch"):
            raise ValueError(f"stem must be 'conv' or 'patch', got {stem!r}")
        if stem == "conv" and patch_size != 4:
            raise ValueError(f"stem='conv' always has stride 4; patch_size={patch_size} needs stem='patch'")
        if downsample not in ("conv", "merge"):
            raise ValueError(f"downsample must be 'conv' or 'merge', got {downsample!r}")
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_levels = len(depths)
        self.widths = [embed_dim * 2 ** i for i in range(self.num_levels)]
        self.num_features = self.widths[-1]
        self.num_classes = num_classes
        out_indices = tuple(out_indices or ())
        if any(not 0 <= i < self.num_levels for i in out_indices):
            raise ValueError(f"out_indices {list(out_indices)} must be levels in 0..{self.num_levels - 1}")
        self.out_indices = out_indices

        sizes = level_sizes(self.img_size, patch_size, self.num_levels)
        if dilations is None:
            dilations = [[1] * depth for depth in depths]
        elif dilations == "max":
            dilations = dinat_dilations(depths, sizes, kernel_size)
        elif isinstance(dilations, str):
            raise ValueError(f"dilations must be None, 'max' or per-layer lists, got {dilations!r}")
        check_dilations(dilations, depths, sizes, kernel_size, self.img_size)
        self.dilations = [list(ds) for ds in dilations]

        self.patch_embed = (ConvTokenizer(in_chans, embed_dim) if stem == "conv"
                            else PatchEmbed(in_chans, embed_dim, patch_size))
        downsampler = ConvDownsampler if downsample == "conv" else PatchMerging
        total = sum(depths)
        rates = [drop_path_rate * n / max(total - 1, 1) for n in range(total)]  # 0 -> drop_path_rate
        self.levels = nn.ModuleList()
        for i, (dim, heads, ds) in enumerate(zip(self.widths, num_heads, self.dilations)):
            first = sum(depths[:i])
            blocks = [NATBlock(dim, heads, kernel_size, d, mlp_ratio, qkv_bias, layer_scale, rates[first + j], backend)
                      for j, d in enumerate(ds)]
            self.levels.append(NATLevel(blocks, downsampler(dim) if i < self.num_levels - 1 else None))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.widths[i]))
        self.apply(_init_weights)

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters to exclude from weight decay: the RPB tables."""
        return {name for name, _ in self.named_parameters() if name.endswith(".rpb")}

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a fresh ``Linear(num_features, num_classes)`` (``Identity`` for 0)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(_init_weights)

    def forward_features(self, x: Tensor) -> Tensor:
        """``[B, in_chans, H, W]`` -> normalised last-level tokens ``[B, h, w, num_features]``
        (``h = ceil(H/32)`` for the four-level models, ``ceil(H/16)`` for the isotropic ones)."""
        x = self.patch_embed(x)
        for level in self.levels:
            x = level(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens ``[B, h, w, num_features]`` -> their mean ``[B, num_features]`` (``pre_logits``) or logits
        ``[B, num_classes]``."""
        x = x.mean(dim=(1, 2))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_backbone(self, x: Tensor) -> list[Tensor]:
        """``[B, in_chans, H, W]`` -> one NCHW map per level in ``out_indices``, taken before that level's
        downsampler and passed through its LayerNorm ``norm{i}``: ``[B, embed_dim * 2^i, ceil(H / 2^(i+2)),
        ceil(W / 2^(i+2))]`` for the four-level models (strides 4, 8, 16, 32)."""
        if not self.out_indices:
            raise RuntimeError("this model has no backbone outputs: build it with out_indices=(0, 1, 2, 3)")
        x = self.patch_embed(x)
        maps = []
        for i, level in enumerate(self.levels):
            x = level.blocks(x)
            if i in self.out_indices:
                maps.append(getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous())
            x = level.downsample(x)
        return maps

    def extra_repr(self) -> str:
        return f"img_size={self.img_size}, dilations={self.dilations}, num_classes={self.num_classes}"


# ---------------------------------------------------------------------------------------------
# Checkpoint converters: reference repository and transformers -> ours; ours -> transformers

# Module names (ours -> transformers') inside a block: levels.i.blocks.j.<ours> = encoder.levels.i.layers.j.<theirs>.
# qkv (split in thirds into query/key/value) and gamma1/gamma2 (stacked as layer_scale_parameters) are special.
_HF_BLOCK = {"norm1": "layernorm_before", "attn.rpb": "attention.self.rpb", "attn.proj": "attention.output.dense",
             "norm2": "layernorm_after", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
# Outside the levels; every transformers name but the classifier's carries the "nat."/"dinat." prefix.
_HF_TOP = {"patch_embed.proj.0": "embeddings.patch_embeddings.projection.0",
           "patch_embed.proj.1": "embeddings.patch_embeddings.projection.1",
           "patch_embed.norm": "embeddings.norm", "norm": "layernorm", "head": "classifier"}
_FROM_HF_BLOCK = {theirs: ours for ours, theirs in _HF_BLOCK.items()}
_FROM_HF_TOP = {theirs: ours for ours, theirs in _HF_TOP.items()}
_QKV = ("query", "key", "value")


def _rename(name: str, table: dict[str, str]) -> str | None:
    """The table's entry for ``name``, or for its module with the leaf (``weight``, ...) kept; None if neither."""
    if name in table:
        return table[name]
    module, _, leaf = name.rpartition(".")
    return f"{table[module]}.{leaf}" if module in table else None


def _listing(names: Sequence[str], limit: int = 12) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _checked(state_dict: dict[str, Tensor], model: NAT, source: str, unmapped: Sequence[str] = ()) -> dict:
    """Return ``state_dict`` if it fills ``model`` exactly (names and shapes); else raise a ValueError listing
    the source names without a counterpart, the missing names and the shape mismatches. The backbone
    norms ``norm{i}`` may be missing (classification checkpoints have none; they keep their init)."""
    expected = model.state_dict()
    missing = [k for k in expected.keys() - state_dict.keys() if not re.match(r"norm\d+\.", k)]
    unexpected = list(unmapped) + sorted(state_dict.keys() - expected.keys())
    mismatched = [f"{k} {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    problems = [f"{label}: {_listing(names)}" for label, names in
                (("not in the model", unexpected), ("missing", missing), ("shape mismatch", mismatched)) if names]
    if problems:
        raise ValueError(f"the {source} checkpoint does not fit this model ({len(expected)} tensors) -- "
                         + "; ".join(problems))
    return state_dict


def convert_reference(state_dict: dict[str, Tensor], model: NAT) -> dict[str, Tensor]:
    """Reference-repository state dict -> ours. NAT/DiNAT names are ours unchanged; DiNAT_s's
    ``layers.i.{blocks,downsample}`` are our ``levels.i.*`` and the isotropic ``layers.j`` our ``levels.0.blocks.j``."""
    out = {}
    for name, value in state_dict.items():
        name = re.sub(r"^layers\.(\d+)\.(blocks|downsample)\.", r"levels.\1.\2.", name)
        out[re.sub(r"^layers\.(\d+)\.", r"levels.0.blocks.\1.", name)] = value
    return _checked(out, model, "reference")


def convert_transformers(state_dict: dict[str, Tensor], model: NAT) -> dict[str, Tensor]:
    """transformers ``Nat``/``Dinat`` (``ForImageClassification`` or ``Model``) state dict -> ours."""
    out, qkv, unmapped = {}, {}, []
    for theirs, value in state_dict.items():
        name = re.sub(r"^(di)?nat\.", "", theirs)
        if m := re.fullmatch(r"encoder\.levels\.(\d+)\.layers\.(\d+)\.(.+)", name):
            block, rest = f"levels.{m[1]}.blocks.{m[2]}.", m[3]
            if part := re.fullmatch(r"attention\.self\.(query|key|value)\.(weight|bias)", rest):
                qkv.setdefault(f"{block}attn.qkv.{part[2]}", {})[part[1]] = value
                continue
            if rest == "layer_scale_parameters":  # [2, d]
                out[block + "gamma1"], out[block + "gamma2"] = value.unbind(0)
                continue
            ours = _rename(rest, _FROM_HF_BLOCK)
            if ours is not None:
                ours = block + ours
        elif m := re.fullmatch(r"encoder\.(levels\.\d+\.downsample\..+)", name):
            ours = m[1]
        else:
            ours = _rename(name, _FROM_HF_TOP)
        if ours is None:
            unmapped.append(theirs)
        else:
            out[ours] = value
    for name, parts in qkv.items():
        if set(parts) == set(_QKV):
            out[name] = torch.cat([parts[p] for p in _QKV])
        else:
            unmapped.append(f"{name} (only {'/'.join(sorted(parts))} of query/key/value)")
    return _checked(out, model, "transformers", unmapped)


def to_transformers(state_dict: dict[str, Tensor], prefix: str = "dinat") -> dict[str, Tensor]:
    """Our state dict -> transformers' ``NatForImageClassification`` (``prefix="nat"``) or
    ``DinatForImageClassification`` (``prefix="dinat"``) names; conv-stem models only (transformers has
    no DiNAT_s or isotropic model)."""
    if "patch_embed.proj.0.weight" not in state_dict:
        raise ValueError("transformers has only the conv-stem NAT/DiNAT; this state dict has no patch_embed.proj.0")
    out, unmapped = {}, []
    for name, value in state_dict.items():
        if m := re.fullmatch(r"levels\.(\d+)\.blocks\.(\d+)\.(.+)", name):
            layer, rest = f"{prefix}.encoder.levels.{m[1]}.layers.{m[2]}.", m[3]
            if rest.startswith("attn.qkv."):
                for part, chunk in zip(_QKV, value.chunk(3)):
                    out[f"{layer}attention.self.{part}.{rest.rpartition('.')[2]}"] = chunk
            elif rest == "gamma1":
                gamma2 = state_dict[f"levels.{m[1]}.blocks.{m[2]}.gamma2"]
                out[layer + "layer_scale_parameters"] = torch.stack([value, gamma2])  # [2, d]
            elif rest != "gamma2":
                theirs = _rename(rest, _HF_BLOCK)
                if theirs is None:
                    unmapped.append(name)
                else:
                    out[layer + theirs] = value
        elif re.fullmatch(r"levels\.\d+\.downsample\..+", name):
            out[f"{prefix}.encoder.{name}"] = value
        elif (theirs := _rename(name, _HF_TOP)) is not None:
            out[theirs if theirs.startswith("classifier") else f"{prefix}.{theirs}"] = value
        else:
            unmapped.append(name)
    if unmapped:
        raise ValueError(f"no transformers name for: {_listing(unmapped)}")
    return out


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: NAT) -> dict[str, Tensor]:
    """Convert a foreign state dict to ours, choosing the converter by a key unique to each format."""
    if any("embeddings.patch_embeddings.projection" in k for k in state_dict):
        return convert_transformers(state_dict, model)
    if any(k.startswith("patch_embed.proj") for k in state_dict):
        return convert_reference(state_dict, model)
    raise ValueError("unrecognised checkpoint: expected a reference NAT/DiNAT state dict (patch_embed.proj.*) or "
                     f"a transformers one ((di)nat.embeddings.patch_embeddings.*); first keys: {list(state_dict)[:5]}")


def load_checkpoint(model: NAT, path: str | Path) -> NAT:
    """Load a reference-format or transformers-format checkpoint file (``.safetensors``, or a ``torch.save``
    file, read as data, holding the state dict itself or under ``"model"``/``"state_dict"``) into ``model``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state_dict = load_file(path)
    else:
        state_dict = load_torch_file(path)
        for key in ("model", "state_dict"):
            if isinstance(state_dict.get(key), dict):
                state_dict = state_dict[key]
                break
    # checkpoint_filter_fn checked every name and shape; only the backbone norms may be absent
    model.load_state_dict(checkpoint_filter_fn(state_dict, model), strict=False)
    return model


# ---------------------------------------------------------------------------------------------
# Registry and variants

# Variant name -> its NAT arguments; a new variant is a new row (then a value of ``create_model`` and
# ``--model.model``). Comments: parameters (millions, 1000 classes) and ImageNet-1k top-1 of the NAT and DiNAT
# papers. DiNAT_s is the Swin skeleton (patch stem, patch merging); isotropic: one level of 16x16 patches.
_DINAT_S = {"stem": "patch", "downsample": "merge", "mlp_ratio": 4.0, "dilations": "max"}
_ISOTROPIC = {"stem": "patch", "patch_size": 16, "depths": (12,), "mlp_ratio": 4.0}

VARIANTS: dict[str, dict] = {
    # 20 M, 81.8
    "nat_mini": dict(depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3.0, drop_path_rate=0.2),
    # 28 M, 83.2
    "nat_tiny": dict(depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3.0, drop_path_rate=0.2),
    # 51 M, 83.7
    "nat_small": dict(depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=2.0,
                      drop_path_rate=0.3, layer_scale=1e-5),
    # 90 M, 84.3
    "nat_base": dict(depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), embed_dim=128, mlp_ratio=2.0,
                     drop_path_rate=0.5, layer_scale=1e-5),
    # 20 M, 81.8
    "dinat_mini": dict(depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3.0,
                       drop_path_rate=0.2, dilations="max"),
    # 28 M, 82.7
    "dinat_tiny": dict(depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), embed_dim=64, mlp_ratio=3.0,
                       drop_path_rate=0.2, dilations="max"),
    # 51 M, 83.8
    "dinat_small": dict(depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), embed_dim=96, mlp_ratio=2.0,
                        drop_path_rate=0.3, dilations="max"),
    # 90 M, 84.4
    "dinat_base": dict(depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), embed_dim=128, mlp_ratio=2.0,
                       drop_path_rate=0.5, layer_scale=1e-5, dilations="max"),
    # ImageNet-22k pretrained, 201 M; 86.6 at 224, 87.4 at 384 (``img_size=384``)
    "dinat_large": dict(depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), embed_dim=192, mlp_ratio=2.0,
                        drop_path_rate=0.35, dilations="max"),
    # 28 M, 81.8
    "dinat_s_tiny": dict(_DINAT_S, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), embed_dim=96, drop_path_rate=0.2),
    # 50 M, 83.5
    "dinat_s_small": dict(_DINAT_S, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), embed_dim=96,
                          drop_path_rate=0.3),
    # 88 M, 83.8
    "dinat_s_base": dict(_DINAT_S, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), embed_dim=128,
                         drop_path_rate=0.5),
    # ImageNet-22k pretrained, 197 M. Heads 6/12/24/48 (head_dim 32), as the spec's count and the reference
    # detection configs that load its checkpoint; the reference classification file says 4/8/16/32.
    "dinat_s_large": dict(_DINAT_S, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), embed_dim=192,
                          drop_path_rate=0.35),
    # 22 M, 80.0
    "nat_isotropic_small": dict(_ISOTROPIC, num_heads=(12,), embed_dim=384, drop_path_rate=0.1),
    # 86 M, 81.6
    "nat_isotropic_base": dict(_ISOTROPIC, num_heads=(24,), embed_dim=768, drop_path_rate=0.4),
    # 22 M, 80.8 (dilation 2 on every other layer at 224)
    "dinat_isotropic_small": dict(_ISOTROPIC, num_heads=(12,), embed_dim=384, drop_path_rate=0.1, dilations="max"),
    # 86 M, 82.1
    "dinat_isotropic_base": dict(_ISOTROPIC, num_heads=(24,), embed_dim=768, drop_path_rate=0.4, dilations="max"),
}


def list_models() -> list[str]:
    """Names :func:`create_model` accepts."""
    return sorted(VARIANTS)


def create_model(name: str, num_classes: int = 1000, pretrained: str | Path | None = None,
                 **overrides) -> NAT:
    """Build a variant of :data:`VARIANTS`; ``overrides`` replace its :class:`NAT` arguments (e.g.
    ``img_size=384``, ``drop_path_rate``, ``out_indices``); ``pretrained``: a checkpoint file for
    :func:`load_checkpoint`."""
    if name not in VARIANTS:
        close = difflib.get_close_matches(name, VARIANTS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; available: {', '.join(list_models())}")
    model = NAT(**{**VARIANTS[name], "num_classes": num_classes, **overrides})
    if pretrained is not None:
        load_checkpoint(model, pretrained)
    return model
