"""The most representative tiles of each tissue (TUMLS's "trustful" part), and the patch read around each.

Choice: among a tissue's *confident* tiles (confidence at least ``min_confidence``, see
:func:`tumls_qp.tissue.clusters.assignment_confidence`), the N closest to its centroid, as in
the paper. A tile close to its centroid is usually also confident; the filter removes the
exceptions, tiles near the centroid of a tissue that lies close to another one, so that a
representative is a tile the tool is sure about. When a tissue has fewer than N confident
tiles, its other representatives are its next-closest tiles and are marked
``confident=False``.

Patch: the representative is read at full resolution over a fixed physical size
(``patch_um``, default 256 µm: the paper's 1024 px at 0.25 µm/px), centred on its tile
whatever the tile size, so that its nuclei and features mean the same on every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from .clusters import Clustering

__all__ = ["Representative", "select_representatives", "patch_box"]


@dataclass(frozen=True)
class Representative:
    """One representative tile."""

    #: Tissue, 0-based ("Tissue 1" is 0).
    tissue: int
    #: 1 = closest to the centroid.
    rank: int
    #: Index of the tile in the clustered tile list.
    tile: int
    distance: float
    uncertainty: float
    #: Confidence of the tile's assignment, in [0, 1].
    confidence: float
    #: Whether the confidence reaches the threshold the representatives were chosen with.
    confident: bool


def select_representatives(clustering: Clustering, n: int, min_confidence: float = 0.0) -> list[Representative]:
    """The ``n`` confident tiles of each tissue closest to its centroid (fewer when a tissue has fewer tiles).

    Parameters
    ----------
    clustering : Clustering
    n : int
        Representatives per tissue.
    min_confidence : float
        Tiles below this confidence are taken only when a tissue has fewer than ``n`` above it.

    Returns
    -------
    list of Representative
        Ordered by tissue, then rank. Ties in distance go to the lower tile index.
    """
    out = []
    for tissue in range(clustering.k):
        members = np.flatnonzero(clustering.labels == tissue)
        by_distance = members[np.lexsort((members, clustering.distance[members]))]
        sure = clustering.confidence[by_distance] >= min_confidence
        order = np.concatenate([by_distance[sure], by_distance[~sure]])[:n]
        for rank, tile in enumerate(order, start=1):
            confidence = float(clustering.confidence[tile])
            out.append(
                Representative(
                    tissue=tissue,
                    rank=rank,
                    tile=int(tile),
                    distance=float(clustering.distance[tile]),
                    uncertainty=float(clustering.uncertainty[tile]),
                    confidence=confidence,
                    confident=confidence >= min_confidence,
                )
            )
    return out


def patch_box(tile_box: tuple[int, int, int, int], patch_um: float, mpp: float,
              slide_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The level-0 box of a representative patch: ``patch_um`` wide, centred on its tile, inside the slide.

    Parameters
    ----------
    tile_box : (x, y, width, height)
        The tile, level-0 px.
    patch_um : float
        Side of the patch in µm.
    mpp : float
        Level-0 pixel size, µm/px.
    slide_size : (width, height)
        Level-0 size of the slide, px.

    Returns
    -------
    (x, y, width, height)
        Level-0 px. Square, ``round(patch_um / mpp)`` px wide; shifted (not cut) to stay inside
        the slide near an edge, and cut to the slide only when the slide is smaller than the patch.
    """
    if not (isinstance(patch_um, (int, float)) and np.isfinite(patch_um) and patch_um > 0):
        raise InvalidInputError(f"patch_um must be a size in µm > 0; got {patch_um!r}")
    x, y, w, h = (int(v) for v in tile_box)
    width, height = (int(v) for v in slide_size)
    side = max(1, int(round(patch_um / mpp)))
    side_x, side_y = min(side, width), min(side, height)
    x0 = int(round(x + w / 2 - side_x / 2))
    y0 = int(round(y + h / 2 - side_y / 2))
    x0 = min(max(x0, 0), width - side_x)
    y0 = min(max(y0, 0), height - side_y)
    return x0, y0, side_x, side_y
