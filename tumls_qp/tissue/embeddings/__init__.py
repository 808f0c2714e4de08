"""Tile embeddings: the only package that imports torch.

One interface for every method (``methods``: :func:`fit_embedding` returns a
:class:`TileEmbedding` of per-tile vectors and, for ``vade``, per-tile posteriors); the
methods themselves: the TUMLS autoencoder (``model``, ``training``), contrastive learning
(``contrastive``, ``augment``), VaDE (``vade``), hand-crafted descriptors (``handcrafted``)
and texton histograms (``textons``).
"""

from .methods import (
    METHODS,
    MIN_TILES,
    VIEW_METHODS,
    Encoder,
    TileEmbedding,
    TileImages,
    check_tile_count,
    fit_embedding,
    load_encoder,
    needs_views,
    training_table,
)
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
    "METHODS",
    "MIN_TILES",
    "VIEW_METHODS",
    "Autoencoder",
    "Encoder",
    "TileEmbedding",
    "TileImages",
    "TrainedAutoencoder",
    "TrainingHistory",
    "check_tile_count",
    "embed_tiles",
    "fit_embedding",
    "load_checkpoint",
    "load_encoder",
    "needs_views",
    "reconstruct",
    "resolve_device",
    "save_checkpoint",
    "set_cpu_threads",
    "train_autoencoder",
    "training_table",
]
