"""Top-1 / top-5 accuracy and throughput of an image classifier on a folder of class sub-folders.

The folder is read like torchvision's ``ImageFolder`` (sorted sub-folder names are classes ``0..K-1``, so
an ImageNet validation folder of synset sub-folders gets the standard indices), or, when every
sub-folder is named by an integer, those integers are the labels (a subset of the classes). Each image
goes through the evaluation transform of :class:`~stylenat.models.pretrained.Preprocessing` (timm's:
bicubic resize of the short side to ``floor(img_size / crop_pct)``, centre crop ``img_size``, ``[0, 1]``,
normalise), the one NAT and DiNAT report their ImageNet top-1 with.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from stylenat.data.base import DECODE_ERRORS
from stylenat.data.formats import ImageFolderDataset
from stylenat.data.transforms import decode_image
from stylenat.models.pretrained import Preprocessing


def eval_transform(preprocessing: Preprocessing, img_size: int) -> T.Compose:
    """PIL image -> float ``[3, img_size, img_size]``, as timm's evaluation transform."""
    return T.Compose([
        T.Resize(math.floor(img_size / preprocessing.crop_pct), interpolation=T.InterpolationMode(preprocessing.interpolation)),
        T.CenterCrop(img_size),
        T.ToTensor(),
        T.Normalize(preprocessing.mean, preprocessing.std),
    ])


class LabelledImages(Dataset):
    """The images of a class-folder tree as ``(image [3, S, S], label)`` through ``transform``."""

    def __init__(self, root: str | os.PathLike, transform: T.Compose):
        listing = ImageFolderDataset(root, 1, class_folders=True)  # lists files (safe walk), checks the layout
        self.paths = [listing.where(i) for i in range(listing.num_images)]
        self.classes = listing.classes
        if all(name.isdigit() for name in self.classes):
            self.labels = [int(self.classes[label]) for label in listing.labels]
        else:
            self.labels = list(listing.labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        try:
            image = decode_image(self.paths[index])
        except DECODE_ERRORS as err:
            raise ValueError(f"unreadable image {self.paths[index]}: {type(err).__name__}: {err}") from err
        return self.transform(image), self.labels[index]


@dataclass(frozen=True)
class ClassificationResult:
    """Accuracies in [0, 1] (``top5`` None below 5 classes) and the model's forward throughput."""

    top1: float
    top5: float | None
    num_images: int
    num_classes: int
    forward_seconds: float
    images_per_second: float


@torch.no_grad()
def evaluate_classifier(model: nn.Module, images: LabelledImages, num_classes: int, *, batch_size: int = 64,
                        device: str | torch.device = "cpu", num_workers: int = 0) -> ClassificationResult:
    """Accuracy of ``model`` (logits ``[B, num_classes]``) on ``images``; throughput counts the forward
    passes only (synchronised on CUDA), not decoding."""
    labels_seen = max(images.labels) + 1
    if labels_seen > num_classes:
        raise ValueError(f"the image folder has labels up to {labels_seen - 1} ({len(images.classes)} class "
                         f"folders) but the classifier has {num_classes} classes")
    if len(images.classes) != num_classes and not all(c.isdigit() for c in images.classes):
        raise ValueError(f"the image folder has {len(images.classes)} class folders but the classifier has "
                         f"{num_classes} classes; name the folders by class index (0, 1, ...) to evaluate a subset")
    device = torch.device(device)
    model = model.to(device).eval()
    loader = DataLoader(images, batch_size=batch_size, num_workers=num_workers, pin_memory=device.type == "cuda")
    top1 = top5 = 0
    seconds = 0.0
    for batch, labels in loader:
        batch, labels = batch.to(device), labels.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        logits = model(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        ranked = logits.topk(min(5, num_classes), dim=1).indices  # [B, k]
        hits = ranked == labels[:, None]
        top1 += hits[:, 0].sum().item()
        top5 += hits.any(dim=1).sum().item()
    n = len(images)
    return ClassificationResult(top1 / n, top5 / n if num_classes >= 5 else None, n, num_classes, seconds,
                                n / seconds if seconds > 0 else math.inf)
