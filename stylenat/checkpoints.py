"""Every checkpoint format a command accepts, and the one place that knows our training checkpoints' layout.

:func:`identify` names what a file holds, choosing by keys unique to each format:

- a generator or classifier export (safetensors metadata ``kind``; :mod:`stylenat.models.checkpoint`,
  :mod:`stylenat.models.pretrained`);
- a reference StyleNAT checkpoint (github.com/SHI-Labs/StyleNAT: ``g`` / ``g_ema`` / ``d`` at the top
  level or under ``state_dicts``, legacy ``attn.rpb0/1`` or per-group ``attn.rpb.{i}`` tables, or a bare
  generator state dict) -> a generator whose preset is inferred from the tensor shapes;
- one of our StyleNATGAN training checkpoints (Lightning ``.ckpt``: ``hyper_parameters["generator"]``, the
  preset name, ``hyper_parameters["generator_kwargs"]``, its overrides, and ``state_dict`` keys under
  ``G_ema.``, as :class:`stylenat.training.gan.StyleNATGAN` saves them) -> its G_ema;
- one of our ImageClassifier training checkpoints (``hyper_parameters["model"]`` and ``["num_classes"]``,
  weights under ``model.`` and, when averaged, ``ema.module.``) -> its EMA weights if any;
- a NAT / DiNAT state dict of the reference repository or of transformers -> a classifier whose registry
  name is inferred from the shapes (:func:`stylenat.models.pretrained.foreign_classifier`).

:func:`load_generator` and :func:`load_classifier` read any of these (converting in memory); :func:`convert`
(``stylenat convert``) writes our export of one. The models know none of the training layout; this module
sits above :mod:`stylenat.models` and imports neither Lightning nor :mod:`stylenat.training`. Files are
data, never code: ``torch.save`` files are read with :func:`stylenat.models.safe_load.load_torch_file`.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from stylenat.models.checkpoint import GENERATOR_KIND, read_generator_export, save_generator
from stylenat.models.convert import is_official_checkpoint, official_generator, official_state_dict
from stylenat.models.generator import Generator, create_generator
from stylenat.models.pretrained import (CLASSIFIER_KIND, OURS_EVAL, ClassifierWeights, exported_classifier,
                                        find_nat_state_dict, foreign_classifier, read_source, save_classifier)
from stylenat.models.safe_load import load_torch_file

EMA_PREFIX = "G_ema."


def identify(content: Any, metadata: Mapping[str, str] | None = None) -> str:
    """What a loaded file holds: ``"generator-export"``, ``"classifier-export"``, ``"stylenat-reference"``,
    ``"gan-training"``, ``"classifier-training"``, ``"nat-transformers"`` or ``"nat-reference"``; a
    ``ValueError`` for anything else."""
    kind = (metadata or {}).get("kind")
    if kind in (GENERATOR_KIND, CLASSIFIER_KIND):
        return {GENERATOR_KIND: "generator-export", CLASSIFIER_KIND: "classifier-export"}[kind]
    if is_official_checkpoint(content):
        return "stylenat-reference"
    if isinstance(content, Mapping) and isinstance(content.get("hyper_parameters"), Mapping) \
            and isinstance(content.get("state_dict"), Mapping):
        hparams = content["hyper_parameters"]
        if "generator" in hparams:
            return "gan-training"
        if "model" in hparams and "num_classes" in hparams:
            return "classifier-training"
    found = find_nat_state_dict(content)
    if found is not None:
        return "nat-transformers" if any("embeddings.patch_embeddings" in k for k in found[0]) else "nat-reference"
    keys = sorted(content)[:6] if isinstance(content, Mapping) else type(content).__name__
    raise ValueError(f"unrecognised checkpoint (first keys: {keys}): expected a reference StyleNAT checkpoint, "
                     "one of our training checkpoints or exports, or a NAT / DiNAT state dict of the reference "
                     "repository or of transformers")


def generator_from_training_checkpoint(checkpoint: Any, path: str | os.PathLike) -> tuple[str, dict, dict, dict]:
    """``(preset, overrides, info, G_ema state dict)`` of a loaded StyleNATGAN Lightning checkpoint."""
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict'), a reference StyleNAT "
                         "checkpoint nor a generator export")
    hparams = checkpoint.get("hyper_parameters", {})
    state = {k[len(EMA_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(EMA_PREFIX)}
    if "generator" not in hparams or not state:
        kind = hparams.get("model", type(hparams).__name__) if isinstance(hparams, dict) else "unknown"
        raise ValueError(f"{path} is a checkpoint of another model kind ({kind}), not a StyleNAT GAN "
                         "(no 'generator' hyper-parameter or no G_ema weights)")
    info = {"cur_nimg": checkpoint.get("cur_nimg"), "source": str(path)}
    return hparams["generator"], dict(hparams.get("generator_kwargs") or {}), info, state


def load_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Generator, dict[str, Any]]:
    """Rebuild the generator stored in ``path``, in eval mode: our export (``.safetensors``), one of our
    training checkpoints, or a reference StyleNAT checkpoint (converted in memory; ``info["note"]`` says so).

    Returns ``(generator, info)``; ``info`` holds ``preset``, ``overrides`` and what the file recorded
    (``cur_nimg``, ...). Errors are one line naming the file and the problem (a converter's error lists
    every misfit tensor).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            preset, overrides, info, state = read_generator_export(path)
        else:
            checkpoint = load_torch_file(path)
            if is_official_checkpoint(checkpoint):
                generator, preset = official_generator(checkpoint)
                note = (f"note: {path} is a reference StyleNAT checkpoint, converted in memory (preset {preset}); "
                        f"`stylenat convert {path} G.safetensors` converts it once")
                return (generator.to(device).eval().requires_grad_(False),
                        {"preset": preset, "overrides": {}, "source": str(path), "note": note})
            preset, overrides, info, state = generator_from_training_checkpoint(checkpoint, path)
    except ValueError:
        raise
    except Exception as err:  # truncated or corrupt file: whatever the reader raised
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    generator = create_generator(preset, **overrides)
    missing, unexpected = generator.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match generator preset {preset!r} with {overrides}: "
                         f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return generator.to(device).eval().requires_grad_(False), {"preset": preset, "overrides": overrides, **info}


def classifier_weights(content: Any, kind: str, path: Path, model: str | None = None,
                       metadata: Mapping[str, str] | None = None) -> ClassifierWeights:
    """The classifier in a loaded file of classifier ``kind`` (see :func:`identify`); ``model`` forces the
    registry name of a foreign state dict."""
    if kind == "classifier-export":
        return exported_classifier(content, metadata or {})
    if kind == "classifier-training":
        hparams = content["hyper_parameters"]
        prefix = "ema.module." if any(k.startswith("ema.module.") for k in content["state_dict"]) else "model."
        state = {k[len(prefix):]: v for k, v in content["state_dict"].items() if k.startswith(prefix)}
        overrides = dict(hparams.get("model_overrides") or {})
        which = "EMA" if prefix == "ema.module." else "trained"
        source = f"our ImageClassifier training checkpoint ({hparams['model']}, {which} weights)"
        return ClassifierWeights(hparams["model"], int(hparams["num_classes"]), state, OURS_EVAL, overrides, source)
    return foreign_classifier(content, path, model)


def load_classifier(path: str | os.PathLike, model: str | None = None) -> ClassifierWeights:
    """The classifier in ``path``: a classifier export, one of our training checkpoints, or a reference /
    transformers NAT / DiNAT file (converted in memory)."""
    content, metadata, file = read_source(path)
    kind = identify(content, metadata)
    if kind not in ("classifier-export", "classifier-training", "nat-reference", "nat-transformers"):
        raise ValueError(f"{path} holds a {kind.replace('-', ' ')}, not a classifier")
    return classifier_weights(content, kind, file, model, metadata)


def convert(src: str | os.PathLike, out: str | os.PathLike, *, preset: str | None = None,
            model: str | None = None) -> str:
    """Write our export of ``src`` to ``out`` (``.safetensors``); returns what was found and written.

    ``preset`` forces the generator preset of a reference StyleNAT checkpoint, ``model`` the registry name
    of a foreign NAT / DiNAT state dict (both are otherwise inferred from the tensor shapes).
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"output {str(out)!r} must end in .safetensors")
    content, metadata, file = read_source(src)
    kind = identify(content, metadata)
    if kind in ("generator-export", "classifier-export"):
        raise ValueError(f"{src} is already a {kind.replace('-', ' ')}: nothing to convert")
    if kind == "stylenat-reference":
        nested = content.get("state_dicts") if isinstance(content.get("state_dicts"), Mapping) else content
        which = "g_ema" if "g_ema" in nested else "g"
        state_dict = official_state_dict(content, which)
        layout = ("legacy two-half RPB layout" if any(re.search(r"\.attn\.rpb[01]$", k) for k in state_dict)
                  else "per-group RPB layout")
        nesting = ("under 'state_dicts'" if nested is not content else "top level") if which in nested \
            else "a bare generator state dict"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # church256's uneven head split
            generator, chosen = official_generator(state_dict, preset)
        how = "given" if preset else "inferred from the tensor shapes"
        save_generator(generator, out, chosen, {}, {"source": str(src), "converted_from": "reference StyleNAT"})
        found = f"a reference StyleNAT checkpoint ({which}, {nesting}, {layout}); preset {chosen} ({how})"
    elif kind == "gan-training":
        chosen, overrides, info, state = generator_from_training_checkpoint(content, file)
        generator = create_generator(chosen, **overrides)
        generator.load_state_dict(state)
        save_generator(generator, out, chosen, overrides, info)
        found = f"a StyleNATGAN training checkpoint (G_ema of preset {chosen}, {info.get('cur_nimg')} images seen)"
    else:
        weights = classifier_weights(content, kind, file, model, metadata)
        save_classifier(weights, out)
        found = f"a {weights.found}"
        return (f"found {found}\nwrote {out}: classifier export {weights.model}, {weights.num_classes} classes, "
                f"evaluation transform {weights.preprocessing}")
    parameters = sum(p.numel() for p in generator.parameters())
    return f"found {found}\nwrote {out}: generator export {chosen} ({parameters / 1e6:.2f} M parameters)"
