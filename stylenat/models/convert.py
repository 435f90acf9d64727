"""Load checkpoints of the reference StyleNAT implementation (github.com/SHI-Labs/StyleNAT) into our models.

Its checkpoints hold ``g``, ``g_ema`` and ``d`` state dicts at the top level (older) or under
``state_dicts`` (newer). Its generator stores Hydra-NA biases in the legacy two-half layout
(``attn.rpb0`` / ``attn.rpb1``, half of the heads each: the released FFHQ checkpoints) or per head group
(``attn.rpb.{i}``); both are regrouped into our head groups (``attn.rpb.{i}``), which must use the same
kernel size per head. Fixed buffers (``relative_position_index``, ``sin_pos_embed._float_tensor``, FIR
kernels, Haar filters) are not read: our modules rebuild them. Anything else unmapped, missing or of
the wrong shape is an error that lists every offending name.

Pixel scale: the reference generator outputs ImageNet-normalised pixels ``x`` (``x * std + mean`` is in
[0, 1]); ours outputs ``2 * (x * std + mean) - 1``, in [-1, 1]. That map folds exactly into the ToRGB
layers (:func:`stylenat.models.pixels.imagenet_output_fold`).

The reference discriminator was likewise trained on ImageNet-normalised images; its weights are copied
unchanged (the Haar pyramid's zero-padded FIR filters make that input map not foldable exactly), so
feed it ``(x + 1) / 2`` normalised with the ImageNet mean/std to reproduce the reference's logits.
"""

from __future__ import annotations

import re
import warnings
from os import PathLike
from typing import Any, Mapping, Union

import torch
from torch import Tensor

from stylenat.models.attention import HydraNeighborhoodAttention
from stylenat.models.discriminator import Discriminator
from stylenat.models.generator import Generator, create_generator
from stylenat.models.pixels import fold_output, imagenet_output_fold
from stylenat.models.safe_load import load_torch_file

# The presets of the released models (FFHQ-256, FFHQ-1024, LSUN Church 256), in the order they are tried.
REFERENCE_PRESETS = ("ffhq256", "church256", "ffhq1024")

Checkpoint = Union[str, PathLike, Mapping[str, Any]]

# Reference name -> our name, applied in order (re.sub on the whole name).
_GENERATOR_RENAMES = [
    (r"^style\.(\d+)\.", lambda m: f"mapping.layers.{int(m[1]) - 1}."),
    (r"^input\.input$", "synthesis.const"),
    (r"^layers\.(\d+)\.", r"synthesis.stages.\1."),
    (r"\.upsample\.reduction\.", ".upsample.proj."),
    (r"^to_rgbs\.(\d+)\.conv\.", r"synthesis.stages.\1.to_rgb.proj."),
    (r"^to_rgbs\.(\d+)\.bias$", r"synthesis.stages.\1.to_rgb.bias"),
]
_GENERATOR_FIXED = r"\.relative_position_index$|\.sin_pos_embed\._float_tensor$|\.upsample\.kernel$"
# Our name -> the reshape from the reference's layout to ours.
_GENERATOR_RESHAPES = [
    (r"synthesis\.const", lambda t: t.squeeze(0).permute(1, 2, 0).contiguous()),  # [1, C, 4, 4] -> [4, 4, C]
    (r".+\.to_rgb\.proj\.weight", lambda t: t.flatten(1)),  # 1x1 conv [3, C, 1, 1] -> [3, C]
    (r".+\.to_rgb\.bias", lambda t: t.flatten()),  # [1, 3, 1, 1] -> [3]
]

_DISCRIMINATOR_RENAMES = [
    (r"^(from_rgbs\.\d+)\.conv\.0\.", r"\1.conv."),
    (r"^(from_rgbs\.\d+)\.conv\.1\.bias$", r"\1.act.bias"),
    (r"^convs\.(\d+)\.conv1\.0\.", r"blocks.\1.conv1."),
    (r"^convs\.(\d+)\.conv1\.1\.bias$", r"blocks.\1.act1.bias"),
    (r"^convs\.(\d+)\.conv2\.1\.", r"blocks.\1.conv2."),
    (r"^convs\.(\d+)\.conv2\.2\.bias$", r"blocks.\1.act2.bias"),
    (r"^final_conv\.0\.", "final_conv."),
    (r"^final_conv\.1\.bias$", "final_act.bias"),
    (r"^final_linear\.0\.", "fc."),
    (r"^final_linear\.1\.bias$", "fc_act.bias"),
    (r"^final_linear\.2\.", "out."),
    # torch.nn.utils.spectral_norm -> torch.nn.utils.parametrizations.spectral_norm
    (r"\.weight_orig$", ".parametrizations.weight.original"),
    (r"\.weight_u$", ".parametrizations.weight.0._u"),
    (r"\.weight_v$", ".parametrizations.weight.0._v"),
]
_DISCRIMINATOR_FIXED = r"(^|\.)(dwt|iwt)\.(ll|lh|hl|hh)$|\.downsample\.kernel$|^convs\.\d+\.conv2\.0\.kernel$"


def official_state_dict(checkpoint: Checkpoint, which: str = "g_ema") -> dict[str, Tensor]:
    """The ``which`` (``"g"``, ``"g_ema"`` or ``"d"``) state dict of a reference checkpoint.

    ``checkpoint`` is a path, a loaded checkpoint (``which`` at the top level or under ``state_dicts``),
    or already a bare state dict.
    """
    if isinstance(checkpoint, (str, PathLike)):
        checkpoint = load_torch_file(checkpoint)
    if all(isinstance(v, Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    for container in (checkpoint.get("state_dicts", {}), checkpoint):
        if which in container:
            return dict(container[which])
    raise KeyError(f"the checkpoint has no {which!r} state dict (top-level keys: {sorted(checkpoint)}; "
                   f"under 'state_dicts': {sorted(checkpoint.get('state_dicts', {}))})")


def _rename(name: str, rules) -> str:
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


def _check_complete(converted: dict[str, Tensor], unmapped: list[str], model: torch.nn.Module,
                    skip: tuple[str, ...] = ()) -> None:
    """Raise one error listing unmapped sources, missing targets and shape mismatches."""
    expected = {k: v for k, v in model.state_dict().items() if k not in skip}
    problems = [f"unmapped in the checkpoint: {name}" for name in unmapped]
    problems += [f"missing for our model: {name} {list(t.shape)}"
                 for name, t in expected.items() if name not in converted]
    problems += [f"not in our model: {name}" for name in converted if name not in expected]
    problems += [f"shape of {name}: checkpoint gives {list(t.shape)}, our model has {list(expected[name].shape)}"
                 for name, t in converted.items() if name in expected and t.shape != expected[name].shape]
    if problems:
        raise ValueError(f"cannot convert the reference {type(model).__name__} checkpoint "
                         f"({len(problems)} problems):\n  " + "\n  ".join(problems))


def _regroup_rpb(tables: list[Tensor], attn: HydraNeighborhoodAttention, name: str) -> dict[str, Tensor]:
    """The reference's RPB tables of one attention (in head order) -> our head groups' ``rpb.{i}``."""
    heads = [table for group in tables for table in group.unbind(0)]
    if len(heads) != attn.num_heads:
        raise ValueError(f"{name}: the checkpoint's RPB tables cover {len(heads)} heads, "
                         f"our model has {attn.num_heads}")
    out, start = {}, 0
    for i, (count, (kernel, _)) in enumerate(zip(attn.group_heads, attn.pattern)):
        group = heads[start:start + count]
        start += count
        if any(t.shape != (2 * kernel - 1, 2 * kernel - 1) for t in group):
            raise ValueError(f"{name}: head group {i} has kernel {kernel} in our model but the checkpoint's "
                             f"tables for its heads are {sorted({tuple(t.shape) for t in group})}")
        out[f"{name}.rpb.{i}"] = torch.stack(group)
    return out


def map_generator_tensors(state_dict: Mapping[str, Tensor], generator: Generator) -> dict[str, Tensor]:
    """A reference generator state dict renamed and reshaped into ``generator``'s names (values unscaled,
    possibly sharing memory with ``state_dict``); raises one ``ValueError`` listing every name or shape that
    does not fit. ``generator`` may live on the meta device: only its names and shapes are read."""
    hydra = {name: m for name, m in generator.named_modules() if isinstance(m, HydraNeighborhoodAttention)}
    converted, unmapped, rpb_tables = {}, [], {}
    for source, tensor in state_dict.items():
        if re.search(_GENERATOR_FIXED, source):
            continue
        name = _rename(source, _GENERATOR_RENAMES)
        rpb = re.fullmatch(r"(.+\.attn)\.rpb(\d|\.\d+)", name)
        if rpb and rpb[1] in hydra:
            rpb_tables.setdefault(rpb[1], []).append((int(rpb[2].lstrip(".")), tensor))
        elif name.startswith(("mapping.", "synthesis.")):
            tensor = tensor.detach()
            for pattern, reshape in _GENERATOR_RESHAPES:
                if re.fullmatch(pattern, name):
                    tensor = reshape(tensor)
            converted[name] = tensor
        else:
            unmapped.append(source)
    for name, tables in rpb_tables.items():
        converted.update(_regroup_rpb([t for _, t in sorted(tables, key=lambda x: x[0])], hydra[name], name))
    _check_complete(converted, unmapped, generator, skip=("mapping.w_avg",))
    return converted


def convert_generator(state_dict: Mapping[str, Tensor], generator: Generator, w_avg_samples: int = 10_000,
                      seed: int = 0) -> dict[str, Tensor]:
    """A reference generator state dict -> a state dict for ``generator`` (built with the matching config).

    Folds the reference's ImageNet pixel normalisation into the ToRGB layers (module docstring), and
    sets ``mapping.w_avg``, which the reference does not track, to the mean w of ``w_avg_samples``
    latents drawn with ``seed``.
    """
    converted = {name: t.float().clone() for name, t in map_generator_tensors(state_dict, generator).items()}
    converted = fold_output(converted, imagenet_output_fold(len(generator.synthesis.stages)))

    mapping = {k[len("mapping."):]: v for k, v in converted.items() if k.startswith("mapping.")}
    z = torch.randn(w_avg_samples, generator.z_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ws = torch.func.functional_call(generator.mapping, mapping, (z,), {"update_w_avg": False})
    converted["mapping.w_avg"] = ws[:, 0].mean(dim=0)
    return converted


def is_official_checkpoint(checkpoint: Any) -> bool:
    """Whether a loaded object is a reference StyleNAT checkpoint: ``g`` / ``g_ema`` at the top level or
    under ``state_dicts``, or a bare reference generator state dict (``style.1.weight``, ``to_rgbs.*``)."""
    if not isinstance(checkpoint, Mapping):
        return False
    containers = [checkpoint, checkpoint.get("state_dicts")]
    if any(isinstance(c, Mapping) and isinstance(c.get(k), Mapping) for c in containers for k in ("g_ema", "g")):
        return True
    return "style.1.weight" in checkpoint and any(str(k).startswith("to_rgbs.") for k in checkpoint)


def infer_generator_preset(state_dict: Mapping[str, Tensor]) -> str:
    """The one preset of :data:`REFERENCE_PRESETS` whose generator every tensor of a reference generator
    state dict fits (names and shapes, RPB tables included); a ``ValueError`` says why when none or
    several do. Each candidate is built on the meta device: no memory, no initialisation."""
    fits, misfits = [], []
    for preset in REFERENCE_PRESETS:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # church256's uneven head split is announced at construction
            generator = create_generator(preset)
        try:
            map_generator_tensors(state_dict, generator)
            fits.append(preset)
        except ValueError as err:
            misfits.append(f"{preset}: {str(err).splitlines()[-1].strip()}")
    if len(fits) == 1:
        return fits[0]
    if fits:
        raise ValueError(f"the reference generator fits several presets ({', '.join(fits)}); name one")
    raise ValueError("the reference generator fits none of the presets " + ", ".join(REFERENCE_PRESETS)
                     + " (first problem for each: " + "; ".join(misfits) + ")")


def official_generator(checkpoint: Checkpoint, preset: str | None = None, which: str = "g_ema") -> tuple[Generator, str]:
    """The ``which`` generator of a reference checkpoint, converted: ``(generator, preset)``; the preset
    is inferred from the tensor shapes unless given."""
    state_dict = official_state_dict(checkpoint, which)
    preset = preset or infer_generator_preset(state_dict)
    generator = create_generator(preset)
    return load_official_generator(state_dict, generator), preset


def convert_discriminator(state_dict: Mapping[str, Tensor], discriminator: Discriminator) -> dict[str, Tensor]:
    """A reference discriminator state dict (spectral-norm variant) -> a state dict for ``discriminator``."""
    converted, unmapped = {}, []
    for source, tensor in state_dict.items():
        if re.search(_DISCRIMINATOR_FIXED, source):
            continue
        name = _rename(source, _DISCRIMINATOR_RENAMES)
        if name == source:
            unmapped.append(source)
        else:
            converted[name] = tensor.detach().float().clone()
    _check_complete(converted, unmapped, discriminator)
    return converted


def load_official_generator(checkpoint: Checkpoint, generator: Generator, which: str = "g_ema",
                            **kwargs) -> Generator:
    """Load ``which`` of a reference checkpoint into ``generator`` (strictly); kwargs go to
    :func:`convert_generator`. Returns ``generator``."""
    state_dict = convert_generator(official_state_dict(checkpoint, which), generator, **kwargs)
    generator.load_state_dict(state_dict)
    return generator


def load_official_discriminator(checkpoint: Checkpoint, discriminator: Discriminator) -> Discriminator:
    """Load the ``d`` state dict of a reference checkpoint into ``discriminator`` (strictly)."""
    discriminator.load_state_dict(convert_discriminator(official_state_dict(checkpoint, "d"), discriminator))
    return discriminator
