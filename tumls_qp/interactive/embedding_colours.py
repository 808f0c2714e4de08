"""Embedding colours: each tile coloured by where its embedding lies (the SIC paper, section 2.2).

The tile embeddings are reduced to three dimensions (UMAP when ``umap-learn`` is
installed, PCA otherwise) and the three coordinates become red, green and blue, so that
tiles with similar embeddings get similar colours on the slide (Chelebian et al., 2021).
It is a view for people, not a result: the clustering always runs on the full embeddings,
and the colours depend on the reduction.

Coordinates to colours: each axis is scaled from its 1st to its 99th percentile over the
tiles to 0-255 (values outside are clipped), so that a few outlying tiles do not wash out
the others; a constant axis gives 128.

In QuPath the colours are a layer of ``tile`` objects that carry their own colour
(``properties.color``). QuPath draws an object in its own colour before its class colour,
so the layer shows the RGB directly, while one shared class ("Embedding colour") keeps the
class list clean and lets a user hide or delete the layer in one go. The three coordinates
are also measurements ("Embedding 1".."Embedding 3"), for QuPath's measurement maps.
Per-tile classes would instead add one class per colour to the project.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, InvalidInputError

__all__ = [
    "EmbeddingColours",
    "embedding_colours",
    "coordinates_to_rgb",
    "umap_available",
    "embedding_colour_features",
    "draw_embedding_colours",
    "LAYER_CLASS",
    "LAYER_COLOUR",
    "METHODS",
    "UMAP_MIN_TILES",
]

log = logging.getLogger(__name__)

#: ``auto``: UMAP when installed (and there are enough tiles), else PCA.
METHODS = ("auto", "umap", "pca")
#: UMAP's neighbourhood graph (15 neighbours) needs a few times that many tiles; below this, auto uses PCA.
UMAP_MIN_TILES = 50
#: QuPath class shared by the tiles of the layer, and its (neutral grey) colour.
LAYER_CLASS = "Embedding colour"
LAYER_COLOUR = (128, 128, 128)


@dataclass(frozen=True)
class EmbeddingColours:
    """Three coordinates and a colour per tile.

    Attributes
    ----------
    coords : (n, 3) float32 ndarray
    rgb : (n, 3) uint8 ndarray
    method : str
        ``"umap"`` or ``"pca"``: what was used.
    """

    coords: np.ndarray
    rgb: np.ndarray
    method: str


def umap_available() -> bool:
    """True when ``umap-learn`` can be imported."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numba and pynndescent warn at import on some platforms
            import umap  # noqa: F401
    except ImportError:
        return False
    return True


def coordinates_to_rgb(coords: np.ndarray) -> np.ndarray:
    """Scale each column from its 1st to its 99th percentile to 0-255.

    Parameters
    ----------
    coords : (n, 3) float ndarray

    Returns
    -------
    (n, 3) uint8 ndarray
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must be (n, 3); got {coords.shape}")
    out = np.full(coords.shape, 128.0)
    if len(coords):
        lo, hi = np.percentile(coords, [1, 99], axis=0)
        for j in range(3):
            if hi[j] > lo[j]:
                out[:, j] = np.clip((coords[:, j] - lo[j]) / (hi[j] - lo[j]), 0.0, 1.0) * 255.0
    return np.round(out).astype(np.uint8)


def embedding_colours(latents: np.ndarray, method: str = "auto", seed: int = 0) -> EmbeddingColours:
    """Reduce embeddings to 3-D and colour them.

    Parameters
    ----------
    latents : (n, d) float ndarray
    method : {"auto", "umap", "pca"}
        ``auto`` uses UMAP (3 components, 15 neighbours, min_dist 0.1, seeded) when
        ``umap-learn`` is installed and there are at least ``UMAP_MIN_TILES`` tiles, PCA otherwise.
    seed : int

    Raises
    ------
    ConfigError
        ``method="umap"`` without ``umap-learn`` installed, or an unknown method.
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    x = np.asarray(latents, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise InvalidInputError(f"latents must be an (n, d) array with n >= 1; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InvalidInputError("latents hold NaN or infinite values")
    if method == "umap" and not umap_available():
        raise ConfigError("method 'umap' needs umap-learn: pip install 'tumls-qp[umap]' (or use method 'pca')")
    use_umap = method == "umap" or (method == "auto" and len(x) >= UMAP_MIN_TILES and umap_available())
    if use_umap:
        coords = _umap(x, seed)
        used = "umap"
    else:
        coords = _pca(x, seed)
        used = "pca"
    coords = coords.astype(np.float32)
    return EmbeddingColours(coords=coords, rgb=coordinates_to_rgb(coords), method=used)


def _pca(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    n_components = min(3, len(x), x.shape[1])
    out = np.zeros((len(x), 3))
    if n_components >= 1 and len(x) >= 2:
        out[:, :n_components] = PCA(n_components=n_components, random_state=seed).fit_transform(x)
    return out


def _umap(x: np.ndarray, seed: int) -> np.ndarray:
    with warnings.catch_warnings():
        # umap-learn warns that a random_state forces one thread, and numba may warn at import;
        # neither concerns the result.
        warnings.simplefilter("ignore")
        import umap

        reducer = umap.UMAP(n_components=3, n_neighbors=min(15, len(x) - 1), min_dist=0.1, random_state=seed)
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def embedding_colour_features(boxes: np.ndarray, colours: EmbeddingColours) -> list[dict[str, Any]]:
    """The QuPath tile layer: one ``tile`` per tile in its embedding colour (see the module docstring).

    Parameters
    ----------
    boxes : (n, 4) ndarray
        (x, y, width, height) in level-0 px.
    colours : EmbeddingColours
    """
    from ..outputs.classified import coloured_tile_features

    measurements = {f"Embedding {j + 1}": colours.coords[:, j] for j in range(3)}
    return coloured_tile_features(boxes, colours.rgb, LAYER_CLASS, LAYER_COLOUR, measurements)


def draw_embedding_colours(
    colours: EmbeddingColours,
    path: str | os.PathLike[str],
    *,
    boxes: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Draw the embedding colours to a PNG, written atomically; the report can include it.

    Panels: the tiles in the first two reduced dimensions, each in its colour; then, with
    ``boxes``, the tiles where they lie on the slide in the same colours (the paper's
    feature-space view), otherwise the first and third dimensions; then, with ``labels``,
    the first two dimensions coloured by cluster.

    Parameters
    ----------
    colours : EmbeddingColours
    path : path-like
        The PNG to write.
    boxes : (n, 4) ndarray, optional
        Tile boxes (x, y, width, height) in level-0 px.
    labels : (n,) int ndarray, optional
        A cluster or class per tile (0-based).
    label_names : sequence of str, optional
        Legend names of the labels.
    title : str, optional
    dpi : int
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    from ..classes import tissue_colour

    rgb = colours.rgb.astype(np.float64) / 255.0
    xyz = colours.coords
    n_panels = 2 + (labels is not None)
    fig = Figure(figsize=(5.0 * n_panels, 4.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    size = max(2.0, min(30.0, 6000.0 / max(len(xyz), 1)))
    name = colours.method.upper()
    axes[0].scatter(xyz[:, 0], xyz[:, 1], c=rgb, s=size, linewidths=0)
    axes[0].set(xlabel=f"{name} 1", ylabel=f"{name} 2", title="Embedding, coloured by position")
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float64)
        polygons = [[(x, y), (x + w, y), (x + w, y + h), (x, y + h)] for x, y, w, h in b]
        axes[1].add_collection(PolyCollection(polygons, facecolors=rgb, edgecolors="none"))
        axes[1].set_xlim(b[:, 0].min(), (b[:, 0] + b[:, 2]).max())
        axes[1].set_ylim((b[:, 1] + b[:, 3]).max(), b[:, 1].min())
        axes[1].set_aspect("equal")
        axes[1].set(xlabel="x (level-0 px)", ylabel="y (level-0 px)", title="Tiles on the slide")
    else:
        axes[1].scatter(xyz[:, 0], xyz[:, 2], c=rgb, s=size, linewidths=0)
        axes[1].set(xlabel=f"{name} 1", ylabel=f"{name} 3", title="Embedding, dimensions 1 and 3")
    if labels is not None:
        labels = np.asarray(labels)
        for j in np.unique(labels):
            members = labels == j
            legend = label_names[int(j)] if label_names is not None else f"Cluster {int(j) + 1}"
            axes[2].scatter(xyz[members, 0], xyz[members, 1], color=np.array(tissue_colour(int(j))) / 255.0,
                            s=size, linewidths=0, label=legend)
        axes[2].set(xlabel=f"{name} 1", ylabel=f"{name} 2", title="Embedding, by cluster")
        if len(np.unique(labels)) <= 12:
            axes[2].legend(fontsize="small", markerscale=2, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
