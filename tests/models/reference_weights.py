"""Deterministic weights for the reference implementations, and the golden outputs they produced there.

The golden files live in tests/data/golden/ (safetensors: tensors plus string metadata, loaded as data):

- ``official_stylenat_g256_golden.safetensors``: what the reference StyleNAT generator (legacy layout,
  NATTEN 0.17.5 on CPU, float32) produced with :func:`recipe` values for its learned tensors (its fixed
  buffers — DWT filters, blur kernels, index tables — keep their own values), for ``z``
  (randn(2, 512) from a torch.Generator seeded 7). Tensors: ``z`` [2, 512], ``pixel_0_1`` [2, 3, 256, 256]
  (its output mapped back to [0, 1] with the ImageNet mean/std); metadata ``learned``: a JSON list of the
  names of its learned tensors.
- ``reference_nat_dinat_mini_golden.safetensors``: the reference NAT-Mini and DiNAT-Mini (NATTEN 0.17.5 on
  CPU, float32, 1000 classes) with :func:`nat_recipe` values. Tensors: ``x`` [2, 3, 224, 224] (randn from a
  torch.Generator seeded 11), ``logits.nat_mini`` and ``logits.dinat_mini`` [2, 1000].

float32 and float64 runs of the reference differ by at most 2e-6, so 1e-4 is a safe tolerance.
The ``*_state_dict.txt`` files beside them list the reference checkpoints' tensors (name and shape per line).
"""

from pathlib import Path

import torch
from safetensors import safe_open

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"


def read_keys(file: str) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor listed in ``GOLDEN / file``, in file order."""
    rows = []
    for line in (GOLDEN / file).read_text().splitlines():
        if not line.strip() or line.startswith("##"):
            continue
        name, shape = line.split(" ", 1)
        rows.append((name, tuple(int(x) for x in shape.strip().strip("()").split(",") if x.strip())))
    return rows


def random_state_dict(file: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Standard-normal values for every tensor in ``file`` (names and shapes only matter)."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=g) for name, shape in read_keys(file)}


def recipe(file: str) -> dict[str, torch.Tensor]:
    """The reference generator's golden-run values for every tensor in ``file`` (a legacy-layout list)."""
    out = {}
    for i, (name, shape) in enumerate(read_keys(file)):
        g = torch.Generator().manual_seed(1000 + i)
        if name.startswith("style.") and name.endswith(".weight"):
            std, mean = 100.0, 0.0  # mapping layers: equalized lr with lr multiplier 0.01
        elif ".style.weight" in name or name == "input.input":
            std, mean = 1.0, 0.0
        elif name.endswith("upsample.norm.weight"):
            std, mean = 0.1, 1.0
        else:
            std, mean = 0.02, 0.0
        out[name] = torch.randn(shape, generator=g, dtype=torch.float32) * std + mean
    return out


def nat_recipe(file: str) -> dict[str, torch.Tensor]:
    """The reference NAT/DiNAT classifiers' golden-run values for every tensor in ``file``."""
    out = {}
    for i, (name, shape) in enumerate(read_keys(file)):
        g = torch.Generator().manual_seed(5000 + i)
        leaf = name.rsplit(".", 1)[-1]
        if "norm" in name and leaf == "weight":
            std, mean = 0.1, 1.0
        elif leaf == "rpb":
            std, mean = 0.5, 0.0
        elif name.startswith("patch_embed.proj") and leaf == "weight":
            std, mean = 0.1, 0.0
        elif leaf in ("gamma1", "gamma2"):
            std, mean = 0.1, 1.0
        else:
            std, mean = 0.05, 0.0
        out[name] = torch.randn(shape, generator=g, dtype=torch.float32) * std + mean
    return out


def load_golden(file: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the string metadata of the golden file ``GOLDEN / file`` (read as data, no pickle)."""
    with safe_open(GOLDEN / file, framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}, f.metadata()
