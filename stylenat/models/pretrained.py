"""Classifier weights in our naming: reading a source file, recognising and converting a NAT / DiNAT state
dict of the reference repository (github.com/SHI-Labs/Neighborhood-Attention-Transformer; bare, or under
``model`` / ``state_dict`` / ``state_dict_ema``) or of transformers (``(di)nat.embeddings.*``; a file, or a
model folder holding ``model.safetensors`` / ``pytorch_model.bin``), whose registry name is inferred from
the shapes, and the classifier export. Which format a file holds, our training checkpoints included, is
decided in :mod:`stylenat.checkpoints`.

The classifier export (see :func:`save_classifier`) is a safetensors state dict in the reference naming
with metadata: ``kind = "stylenat-classifier"``, ``model`` (a :func:`~stylenat.models.nat.create_model`
name), ``num_classes``, ``overrides`` (JSON) and ``preprocessing`` (JSON of :class:`Preprocessing`: the
evaluation transform the weights expect). Published ImageNet weights get :data:`IMAGENET_EVAL` (timm's
default that NAT / DiNAT report top-1 with: bicubic resize of the short side to ``img_size / 0.875``,
centre crop ``img_size``, ImageNet mean / std); ours get :data:`OURS_EVAL` (centre square, bicubic
resize to ``img_size``, pixels to [-1, 1], as :class:`~stylenat.data.ClassificationDataModule` feeds them).

Every ``torch.save`` file is read with :func:`~stylenat.models.safe_load.load_torch_file`: no code runs.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from torch import Tensor

from stylenat.models.checkpoint import save_safetensors_atomic
from stylenat.models.nat import NAT, checkpoint_filter_fn, create_model, list_models
from stylenat.models.pixels import IMAGENET_MEAN, IMAGENET_STD
from stylenat.models.safe_load import load_torch_file

CLASSIFIER_KIND = "stylenat-classifier"
TRANSFORMERS_FILES = ("model.safetensors", "pytorch_model.bin")
_NAT_WRAPPERS = ("model", "state_dict", "state_dict_ema")  # where reference / timm checkpoints keep weights


@dataclass(frozen=True)
class Preprocessing:
    """The evaluation transform: resize the short side to ``round(img_size / crop_pct)`` (``interpolation``),
    centre crop ``img_size``, pixels to [0, 1], then ``(x - mean) / std`` per channel."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    interpolation: str = "bicubic"


IMAGENET_EVAL = Preprocessing(IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.875)
OURS_EVAL = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), crop_pct=1.0)


@dataclass
class ClassifierWeights:
    """A NAT / DiNAT classifier in our naming: ``create_model(model, num_classes, **overrides)`` takes
    ``state_dict``; ``found`` says what the source was."""

    model: str
    num_classes: int
    state_dict: dict[str, Tensor]
    preprocessing: Preprocessing
    overrides: dict[str, Any] = field(default_factory=dict)
    found: str = ""

    def build(self, device: str | torch.device = "cpu") -> NAT:
        """The classifier with these weights, in eval mode."""
        network = create_model(self.model, num_classes=self.num_classes, **self.overrides)
        network.load_state_dict(self.state_dict, strict=False)  # checked already; backbone norms may be absent
        return network.to(device).eval().requires_grad_(False)

    @property
    def img_size(self) -> int:
        size = self.overrides.get("img_size", 224)
        return size if isinstance(size, int) else int(size[0])


# ---------------------------------------------------------------------------------------------
# Reading a source


def read_source(path: str | os.PathLike) -> tuple[Any, dict[str, str], Path]:
    """``(content, safetensors metadata, file read)`` of ``path``: a safetensors file (content: its state
    dict), a ``torch.save`` file (read as data), or a transformers model folder (its weights file)."""
    path = Path(path)
    if path.is_dir():
        file = next((path / name for name in TRANSFORMERS_FILES if (path / name).is_file()), None)
        if file is None:
            raise FileNotFoundError(f"{path} is a folder without {' or '.join(TRANSFORMERS_FILES)}: "
                                    "expected a checkpoint file or a transformers model folder")
        path = file
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}, path
        return load_torch_file(path), {}, path
    except ValueError:
        raise
    except Exception as err:  # truncated or corrupt file: whatever the reader raised, on one line
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def find_nat_state_dict(content: Any) -> tuple[dict[str, Tensor], str] | None:
    """The NAT / DiNAT state dict in ``content`` and where it was, or None if there is none."""
    candidates = [(content, "")] + [(content.get(key), f" (under {key!r})") for key in _NAT_WRAPPERS
                                     if isinstance(content, Mapping)]
    for state_dict, where in candidates:
        if _is_state_dict(state_dict) and any(re.match(r"((di)?nat\.)?(patch_embed\.proj|embeddings\.patch_embeddings)",
                                                       k) for k in state_dict):
            return dict(state_dict), where
    return None


# ---------------------------------------------------------------------------------------------
# Classifiers


def head_classes(state_dict: Mapping[str, Tensor]) -> int:
    """The class count of a NAT / DiNAT state dict (reference ``head`` or transformers ``classifier``); 0: none."""
    return next((int(v.shape[0]) for k, v in state_dict.items() if re.fullmatch(r"(head|classifier)\.weight", k)), 0)


@functools.lru_cache(maxsize=None)
def shapes_only(name: str, num_classes: int) -> NAT:
    """Registered variant ``name`` on the meta device: its tensor names and shapes, no memory."""
    with torch.device("meta"):
        return create_model(name, num_classes=num_classes)


def infer_classifier(state_dict: Mapping[str, Tensor], source_name: str = "") -> tuple[str, dict[str, Tensor], str]:
    """``(registry name, state dict in our naming, how the name was chosen)`` for a reference or
    transformers NAT / DiNAT state dict: the registered variants whose every tensor it fits (built on the
    meta device), narrowed by the transformers prefix (``nat.`` / ``dinat.``) and then by a variant name
    in ``source_name`` (``dinat_mini_in1k_224.pth``). A ``ValueError`` when no variant or several fit."""
    num_classes = head_classes(state_dict)
    fits = {}
    for name in list_models():
        try:
            fits[name] = checkpoint_filter_fn(dict(state_dict), shapes_only(name, num_classes))
        except ValueError:
            continue
    if not fits:
        raise ValueError(f"the NAT / DiNAT state dict ({len(state_dict)} tensors, {num_classes} classes) fits no "
                         f"registered variant ({', '.join(list_models())})")
    how = "the only variant its tensor shapes fit"
    prefix = next((m[1] for k in state_dict if (m := re.match(r"(dinat|nat)\.", k))), None)
    names = [n for n in fits if prefix is None or n.startswith(prefix + "_")] or list(fits)
    if len(names) > 1:
        named = [n for n in names if re.search(rf"(?<![a-z]){n}(?![a-z])", Path(source_name).name.lower())]
        if len(named) == 1:
            names, how = named, f"its shapes fit {', '.join(sorted(fits))}; the file name says {named[0]}"
    if len(names) > 1:
        raise ValueError(f"the state dict fits several variants ({', '.join(sorted(names))}: the same tensor shapes); "
                         "name one with --model")
    weights = fits[names[0]]
    return names[0], {k: v.detach().float().contiguous() for k, v in weights.items()}, how


def exported_classifier(content: Mapping[str, Tensor], metadata: Mapping[str, str]) -> ClassifierWeights:
    """The classifier of a loaded classifier export (its state dict and safetensors metadata)."""
    meta = dict(metadata)
    pre = json.loads(meta["preprocessing"])
    return ClassifierWeights(meta["model"], int(meta["num_classes"]), dict(content),
                             Preprocessing(tuple(pre["mean"]), tuple(pre["std"]), pre["crop_pct"],
                                           pre["interpolation"]),
                             json.loads(meta.get("overrides", "{}")), f"classifier export ({meta['model']})")


def foreign_classifier(content: Any, path: Path, model: str | None = None) -> ClassifierWeights:
    """The classifier in a loaded reference-repository or transformers NAT / DiNAT file; ``model`` forces the
    registry name (else inferred from the shapes and the file name)."""
    state_dict, where = find_nat_state_dict(content)
    origin = "transformers" if any("embeddings.patch_embeddings" in k for k in state_dict) else "reference-repository"
    if model is not None:
        name, how = model, "named with --model"
        state = checkpoint_filter_fn(state_dict, shapes_only(model, head_classes(state_dict)))
    else:
        name, state, how = infer_classifier(state_dict, path.name)
    num_classes = head_classes(state)
    return ClassifierWeights(name, num_classes, state, IMAGENET_EVAL, {},
                             f"{origin} NAT / DiNAT state dict{where}: {name} ({how}), {num_classes} classes")


def save_classifier(weights: ClassifierWeights, path: str | os.PathLike) -> Path:
    """Write a classifier export (module docstring); atomic replace."""
    metadata = {"kind": CLASSIFIER_KIND, "model": weights.model, "num_classes": str(weights.num_classes),
                "overrides": json.dumps(weights.overrides), "preprocessing": json.dumps(asdict(weights.preprocessing))}
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.state_dict.items()}
    return save_safetensors_atomic(tensors, path, metadata)
