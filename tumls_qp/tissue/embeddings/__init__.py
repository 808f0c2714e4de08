"""Tile embeddings: the only package that imports torch.

The autoencoder of TUMLS (``model``), its training, inference and checkpoints (``training``).
"""

from .model import Autoencoder
from .training import (
    TrainedAutoencoder,
    TrainingHistory,
    embed_tiles,
    load_checkpoint,
    reconstruct,
    resolve_device,
    save_checkpoint,
    set_cpu_threads,
    train_autoencoder,
)

__all__ = [
    "Autoencoder",
    "TrainedAutoencoder",
    "TrainingHistory",
    "embed_tiles",
    "load_checkpoint",
    "reconstruct",
    "resolve_device",
    "save_checkpoint",
    "set_cpu_threads",
    "train_autoencoder",
]
