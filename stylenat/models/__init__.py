"""Plain ``nn.Module`` models (no Lightning): the StyleNAT generator and wavelet discriminator, the
NAT / DiNAT classifiers, the attention they share, and loaders for foreign checkpoints."""

from stylenat.models.attention import HydraNeighborhoodAttention, NeighborhoodAttention2D
from stylenat.models.checkpoint import save_generator
from stylenat.models.convert import load_official_discriminator, load_official_generator
from stylenat.models.discriminator import Discriminator, create_discriminator
from stylenat.models.generator import Generator, create_generator
from stylenat.models.nat import NAT, create_model, list_models

__all__ = [
    "NAT",
    "Discriminator",
    "Generator",
    "HydraNeighborhoodAttention",
    "NeighborhoodAttention2D",
    "create_discriminator",
    "create_generator",
    "create_model",
    "list_models",
    "load_official_discriminator",
    "load_official_generator",
    "save_generator",
]
