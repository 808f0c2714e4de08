"""Embedding colours: each tile coloured by where its embedding lies (the SIC paper, section 2.2).

The tile embeddings are reduced to three dimensions (UMAP when ``umap-learn`` is
installed, PCA otherwise) and the three coordinates become red, green and blue, so that
tiles with similar embeddings get similar colours on the slide (Chelebian et al., 2021).
It is a view for people, not a result: the clustering always runs on the full embeddings,
and the colours depend on the reduction.

Coordinates to colours: each axis is scaled from its 1st to its 99th percentile over the
tiles to 0-255 (values outside are clipped), so that a few outlying tiles do not wash out
the others; a constant axis gives 128.

Here only the arrays are computed. In QuPath the colours are a layer of ``tile`` objects
(:func:`tumls_qp.outputs.classified.embedding_colour_features`); the figure is drawn by the
report's figures (``tumls_qp.outputs._report_figures.embedding_colours_figure``).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, InvalidInputError

__all__ = [
    "EmbeddingColours",
    "embedding_colours",
    "coordinates_to_rgb",
    "umap_available",
    "METHODS",
    "UMAP_MIN_TILES",
]

log = logging.getLogger(__name__)

#: ``auto``: UMAP when installed (and there are enough tiles), else PCA.
METHODS = ("auto", "umap", "pca")
#: UMAP's neighbourhood graph (15 neighbours) needs a few times that many tiles; below this, auto uses PCA.
UMAP_MIN_TILES = 50


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
