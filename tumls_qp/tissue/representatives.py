"""The most representative tiles of each tissue: the N closest to its centroid (TUMLS's "trustful" part)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .clusters import Clustering

__all__ = ["Representative", "select_representatives"]


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


def select_representatives(clustering: Clustering, n: int) -> list[Representative]:
    """The ``n`` tiles of each tissue closest to its centroid (fewer when a tissue has fewer tiles).

    Returns
    -------
    list of Representative
        Ordered by tissue, then rank. Ties in distance go to the lower tile index.
    """
    out = []
    for tissue in range(clustering.k):
        members = np.flatnonzero(clustering.labels == tissue)
        order = members[np.lexsort((members, clustering.distance[members]))][:n]
        for rank, tile in enumerate(order, start=1):
            out.append(
                Representative(
                    tissue=tissue,
                    rank=rank,
                    tile=int(tile),
                    distance=float(clustering.distance[tile]),
                    uncertainty=float(clustering.uncertainty[tile]),
                )
            )
    return out
