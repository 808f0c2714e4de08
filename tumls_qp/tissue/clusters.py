"""Tissues from tile latents: k from the Ward dendrogram, k-means, per-tile uncertainty.

How k is chosen (TUMLS's "optimal tree cut", plus a rule for one tissue)
-------------------------------------------------------------------------
1. Ward linkage of the latents (a seeded random subset of ``linkage_max_tiles`` when
   there are more tiles; linkage is O(n²)). With merge heights h₁ ≤ … ≤ h_{n-1},
   cutting the tree into k clusters leaves a gap g(k) = h_{n-k+1} − h_{n-k}.
2. k* = argmax g(k) over 2 ≤ k ≤ k_max (at least k_min): the cut with the largest gap.
3. One tissue (k = 1, allowed when k_min = 1), by the split test of G-means
   (Hamerly & Elkan, "Learning the k in k-means", NIPS 2003), cross-fitted: split
   the tiles at random into halves A and B, find the 2-means centres of A, project
   the latents of B on the line through them, and test that projection for
   normality with the Anderson-Darling statistic
   A*² = A²(1 + 4/n − 25/n²). A single tissue (one roughly Gaussian cloud) gives a
   Gaussian projection; two tissues give a bimodal or skewed one. k = 1 when
   A*² ≤ 1.8692, the critical value at α = 0.0001 that G-means uses. (A Gaussian
   reference for the dendrogram gap itself was tried and rejected: on real slides
   the Ward gaps of clearly distinct tissues are no larger than those of a Gaussian
   cloud with the same covariance. Cross-fitting matters in 256 dimensions: the
   2-means axis of a half fits its noise, so projecting that same half would make a
   single Gaussian look bimodal.)
4. **Votes over resamples.** Steps 1-3 are repeated on ``resamples`` random subsets of
   80 % of the tiles (at most ``linkage_max_tiles``); k is the value most of them choose
   (a tie goes to the choice on all tiles). The runner-up is the second most chosen k:
   ``k_votes`` says how close it came, so that a pathologist knows when another k is
   nearly as well supported (the demo slide's k = 2 and k = 3 gaps are almost equal).
   With ``resamples = 0`` only the tiles' own choice counts.
5. A user-given k skips all of this.

Methods (``clusters.method``)
-----------------------------
``kmeans``
    k-means on the latents (TUMLS).
``graph``
    The patch graph of the CDAC study (UnSeGArmaNet): every tile is a node; two tiles are
    joined when their centres lie within ``graph_radius`` tile sides and the cosine
    similarity of their centred latents (the mean latent subtracted, so that "similar"
    means similar relative to this slide) exceeds ``graph_similarity``. A small graph
    neural network (ARMA convolutions, :mod:`tumls_qp.tissue.embeddings.graph`) trained
    with the modularity loss gives every tile a soft assignment to k clusters; a tile's
    tissue is the largest. Clusters left empty are dropped (with a warning). A graph with
    no edge (no two neighbouring tiles similar enough, or every tile alone on its tissue
    fragment) cannot be partitioned by modularity: the tiles are clustered with k-means
    (or the mixture, below) instead, and a warning says so.

When the embedding has its own mixture (``embedding.method = 'vade'``), the mixture
chooses k (or ``clusters.k`` sets it) and, with ``kmeans``, assigns each tile to its most
probable component (``Clustering.method`` is then ``mixture``); ``graph`` partitions the
tiles into the mixture's k. Otherwise both methods use the same k (from the dendrogram
or the user). Centroids are the mean latent of each tissue's tiles (for k-means, its
centres).

Typicality and confidence: two questions about a tile
------------------------------------------------------
*Typicality* (the ``uncertainty`` of TUMLS): how far a tile lies from its own tissue's
centre. d = Euclidean distance of the tile's latent to its tissue's centroid;
uncertainty = min(1, d / D), with D the 99th percentile of d over all tiles of the run
(of the cohort in cohort mode). 0 is the centroid itself; 1 is as far as the 1 % most
atypical tiles. One scale for all tissues, so it compares across tissues and slides of a
cohort. It does not see a tile that sits between two tissues: such a tile can be close
to both centroids.

*Confidence* (:func:`assignment_confidence`): how sure the assignment is. With d₁ the
distance to the tile's own centroid and d₂ to the nearest other one,
confidence = max(0, (d₂ − d₁) / (d₂ + d₁)), in [0, 1]: 0 when another tissue is as
near (or nearer), 1 on the centroid itself; 1 when k = 1. For k-means d₁ is the nearest
centroid, so this is the margin between the nearest and the second-nearest. It equals
p₁ − p₂ for the two-way posterior p ∝ 1/d between the two tissues
(:func:`distance_posterior`). Seeded clustering and the prototype dictionary use the same
function with their own centres (classes, prototypes). The graph network's softmax and
the mixture's posterior are not used for confidence, so that it means one thing whatever
the method; the softmax also saturates (on the lung mosaic of ``reports/regions.md`` most
tiles have a softmax margin of 1.0, straddling tiles included).

*Posterior* (``Clustering.posterior``): each tile's soft assignment, the evidence the
region refinement (:mod:`tumls_qp.tissue.regions`) shares out below the tile: the
two-way posterior for k-means, the network's softmax for graph clustering, the
embedding's p(tissue | tile) for a mixture.

Tissues are numbered by size: tissue 0 ("Tissue 1") has the most tiles.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.cluster.hierarchy import linkage

from ..config import ClusterConfig
from ..errors import InvalidInputError

__all__ = [
    "Clustering",
    "cluster_embeddings",
    "assignment_confidence",
    "distance_posterior",
    "tile_graph",
    "choose_k",
    "vote_k",
    "dendrogram_gaps",
    "split_statistic",
    "SPLIT_CRITICAL_VALUE",
    "UNCERTAINTY_PERCENTILE",
]

log = logging.getLogger(__name__)

#: Anderson-Darling critical value at α = 0.0001 (G-means' choice): above it, the latents are more than one tissue.
SPLIT_CRITICAL_VALUE = 1.8692
#: Percentile of the centroid distances that maps to uncertainty 1.
UNCERTAINTY_PERCENTILE = 99.0
#: Fraction of the tiles in each resample of the k vote.
RESAMPLE_FRACTION = 0.8


@dataclass(frozen=True)
class Clustering:
    """Tissue assignment of every tile.

    Attributes
    ----------
    k : int
        Number of tissues.
    k_source : str
        ``"user"``, ``"dendrogram"`` (largest gap), ``"split test: one tissue"`` or ``"resample vote"`` (the
        resamples' most chosen k overruled the choice on all tiles).
    labels : (n,) int64 ndarray
        Tissue of each tile, 0 = the largest.
    centroids : (k, d) float32 ndarray
    distance : (n,) float32 ndarray
        Distance of each tile's latent to its tissue's centroid.
    uncertainty : (n,) float32 ndarray
        ``min(1, distance / uncertainty_scale)``.
    uncertainty_scale : float
        D, the 99th percentile of ``distance``.
    gaps : dict of int to float
        Dendrogram gap g(k) for each k considered (empty when k was given).
    split_statistic : float or None
        A*² of the one-tissue test (None when not computed); k = 1 when it is at most
        ``SPLIT_CRITICAL_VALUE``.
    linkage : (m - 1, 4) float64 ndarray or None
        Ward linkage matrix of the subset (for the report's dendrogram).
    linkage_indices : (m,) int64 ndarray or None
        Tiles in the linkage, in its leaf numbering.
    method : str
        ``"kmeans"`` or ``"graph"``: the method that made ``labels`` (k-means when graph
        clustering had to fall back; see ``warnings``), or ``"mixture"`` when the embedding's
        own mixture (``vade``) assigned the tiles.
    posterior : (n, k) float32 ndarray
        Soft assignment of each tile (rows sum to 1): the embedding's mixture p(tissue | tile)
        when it has one, the graph network's softmax, or else the two-way distance posterior.
    confidence : (n,) float32 ndarray
        :func:`assignment_confidence` of each tile, in [0, 1].
    warnings : tuple of str
        What a reader of the result should know (e.g. a fallback).
    k_votes : dict of int to int
        How many resamples chose each k (empty when k was given or not voted on).
    """

    k: int
    k_source: str
    labels: np.ndarray
    centroids: np.ndarray
    distance: np.ndarray
    uncertainty: np.ndarray
    uncertainty_scale: float
    gaps: dict[int, float]
    split_statistic: float | None
    linkage: np.ndarray | None
    linkage_indices: np.ndarray | None
    method: str
    posterior: np.ndarray
    confidence: np.ndarray
    warnings: tuple[str, ...] = ()
    k_votes: dict[int, int] = field(default_factory=dict)

    def sizes(self) -> list[int]:
        """Tiles per tissue."""
        return np.bincount(self.labels, minlength=self.k).tolist()

    def select(self, part: slice | np.ndarray) -> "Clustering":
        """The part that covers some tiles (e.g. one slide of a cohort); centroids, gaps and linkage stay the whole's."""
        return replace(self, labels=self.labels[part], distance=self.distance[part],
                       uncertainty=self.uncertainty[part], posterior=self.posterior[part],
                       confidence=self.confidence[part], linkage_indices=None)
    @property
    def runner_up(self) -> tuple[int, int] | None:
        """(k, votes) of the second most chosen k, or None when every resample chose the same k."""
        others = [(v, -k) for k, v in self.k_votes.items() if k != self.k]
        if not others:
            return None
        votes, neg_k = max(others)
        return -neg_k, votes


def dendrogram_gaps(heights: np.ndarray, k_lo: int, k_hi: int) -> dict[int, float]:
    """Gap g(k) between the merge heights that bracket a cut into k clusters, for k_lo ≤ k ≤ k_hi.

    Parameters
    ----------
    heights : (n - 1,) ndarray
        Merge heights of a linkage of n points, ascending.
    """
    h = np.sort(np.asarray(heights, dtype=np.float64))
    n = len(h) + 1
    gaps = {}
    for k in range(max(2, k_lo), min(k_hi, n - 1) + 1):
        gaps[k] = float(h[n - k] - h[n - k - 1])
    return gaps


def choose_k(gaps: dict[int, float], split_statistic: float | None, k_min: int) -> tuple[int, str]:
    """k with the largest dendrogram gap; 1 when the split test finds one Gaussian cloud and ``k_min`` allows it."""
    if k_min <= 1 and (not gaps or (split_statistic is not None and split_statistic <= SPLIT_CRITICAL_VALUE)):
        return 1, "split test: one tissue"
    if not gaps:
        return max(k_min, 1), "dendrogram"
    return max(gaps, key=lambda k: (gaps[k], -k)), "dendrogram"


def split_statistic(x: np.ndarray, seed: int) -> float:
    """Anderson-Darling A*² of half the latents projected on the 2-means axis of the other half (G-means, cross-fitted)."""
    from scipy.special import ndtr
    from sklearn.cluster import KMeans

    order = np.random.default_rng(seed).permutation(len(x))
    fit, test = x[order[: len(x) // 2]], x[order[len(x) // 2 :]]
    if len(fit) < 2 or len(test) < 8:
        return 0.0
    centres = KMeans(n_clusters=2, n_init=3, random_state=seed).fit(fit).cluster_centers_
    axis = centres[1] - centres[0]
    norm = float(np.linalg.norm(axis))
    if norm == 0:
        return 0.0
    projected = np.sort((test - test.mean(axis=0)) @ (axis / norm))
    std = projected.std(ddof=1)
    if not std > 0:
        return 0.0
    cdf = np.clip(ndtr(projected / std), 1e-300, 1 - 1e-16)
    n = len(projected)
    i = np.arange(1, n + 1)
    a2 = -n - np.mean((2 * i - 1) * (np.log(cdf) + np.log1p(-cdf[::-1])))
    return float(a2 * (1 + 4 / n - 25 / n**2))


def assignment_confidence(distances: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """How sure each assignment is: max(0, (d₂ − d₁) / (d₂ + d₁)), in [0, 1].

    Parameters
    ----------
    distances : (n, k) float ndarray
        Distance of each point to each of k centres (or classes).
    labels : (n,) int ndarray, optional
        The centre each point is assigned to (d₁ is the distance to it, d₂ to the nearest
        other). None: the nearest centre, so that this is the margin between the nearest
        and the second-nearest.

    Returns
    -------
    (n,) float64 ndarray
        0 where another centre is at least as near, 1 on the centre itself; 1 when k = 1.
    """
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2:
        raise InvalidInputError(f"distances must be an (n, k) array; got shape {d.shape}")
    if d.shape[1] < 2:
        return np.ones(len(d))
    own, other = _own_and_other(d, labels)
    total = own + other
    with np.errstate(invalid="ignore", divide="ignore"):
        margin = np.where(total > 0, (other - own) / total, 0.0)
    return np.clip(np.nan_to_num(margin, nan=0.0), 0.0, 1.0)


def distance_posterior(distances: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Two-way posterior p ∝ 1/d between each point's own centre and the nearest other one; 0 elsewhere.

    ``p_own = d₂ / (d₁ + d₂)`` and ``p_other = d₁ / (d₁ + d₂)``, so that
    ``p_own − p_other`` is :func:`assignment_confidence` (when the own centre is the nearer).

    Parameters
    ----------
    distances : (n, k) float ndarray
    labels : (n,) int ndarray, optional
        Own centre of each point; None: the nearest.

    Returns
    -------
    (n, k) float64 ndarray
        Rows sum to 1 (both nearest at distance 0: ½ each).
    """
    d = np.asarray(distances, dtype=np.float64)
    n, k = d.shape
    own_index = np.argmin(d, axis=1) if labels is None else np.asarray(labels, dtype=np.int64)
    p = np.zeros((n, k))
    rows = np.arange(n)
    if k == 1:
        p[:, 0] = 1.0
        return p
    own, other = _own_and_other(d, own_index)
    other_d = np.where(np.arange(k)[None, :] == own_index[:, None], np.inf, d)
    other_index = np.argmin(other_d, axis=1)
    total = own + other
    share = np.where(total > 0, other / np.where(total > 0, total, 1.0), 0.5)
    p[rows, own_index] = share
    p[rows, other_index] = 1.0 - share
    return p


def _own_and_other(d: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the own centre (the nearest when labels is None) and to the nearest other."""
    rows = np.arange(len(d))
    own_index = np.argmin(d, axis=1) if labels is None else np.asarray(labels, dtype=np.int64)
    own = d[rows, own_index]
    other = np.where(np.arange(d.shape[1])[None, :] == own_index[:, None], np.inf, d).min(axis=1)
    return own, other


def tile_graph(latents: np.ndarray, positions: np.ndarray, radius: float, similarity: float,
               groups: np.ndarray | None = None) -> np.ndarray:
    """Edges of the patch graph: spatial neighbours whose centred latents are similar (CDAC study).

    Parameters
    ----------
    latents : (n, d) float ndarray
    positions : (n, 2) float ndarray
        Tile centres in tile sides (e.g. grid column and row).
    radius : float
        Tiles whose centres are at most this far apart are neighbours.
    similarity : float
        Neighbours are joined when the cosine similarity of their latents, less the mean
        latent, exceeds this.
    groups : (n,) int ndarray, optional
        Tiles of different groups (slides of a cohort) are never joined.

    Returns
    -------
    (m, 2) int64 ndarray
        Edges (i, j) with i < j, each once.
    """
    from scipy.spatial import cKDTree

    x = np.asarray(latents, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.float64)
    if pos.shape != (len(x), 2) or not np.isfinite(pos).all():
        raise InvalidInputError(f"positions must be an ({len(x)}, 2) array of finite tile coordinates; "
                                f"got shape {pos.shape}")
    if groups is not None:
        groups = np.asarray(groups, dtype=np.int64)
        if groups.shape != (len(x),):
            raise InvalidInputError(f"groups must give one group per tile; got shape {groups.shape}")
        # Groups side by side, more than the radius apart: no edge can cross.
        span = float(np.ptp(pos[:, 0])) + 2 * radius + 1
        pos = pos + np.column_stack([groups * span, np.zeros(len(pos))])
    pairs = cKDTree(pos).query_pairs(radius + 1e-9, output_type="ndarray")
    if len(pairs) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    centred = x - x.mean(axis=0)
    norm = np.linalg.norm(centred, axis=1)
    unit = centred / np.where(norm > 0, norm, 1.0)[:, None]
    cosine = np.einsum("ij,ij->i", unit[pairs[:, 0]], unit[pairs[:, 1]])
    edges = np.sort(pairs[cosine > similarity], axis=1)
    return edges[np.lexsort((edges[:, 1], edges[:, 0]))].astype(np.int64)


def _graph_labels(x: np.ndarray, k: int, cfg: ClusterConfig, seed: int, positions: np.ndarray | None,
                  groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | str:
    """Labels and softmax of graph clustering, or why it cannot run (the caller falls back to k-means)."""
    if positions is None:
        raise InvalidInputError("clusters.method = 'graph' needs the tiles' positions on the slide; tiles without "
                                "positions (a tile folder) can only use clusters.method = 'kmeans'")
    edges = tile_graph(x, positions, cfg.graph_radius, cfg.graph_similarity, groups)
    if len(edges) == 0:
        return (f"the patch graph has no edge (no two tiles within {cfg.graph_radius:g} tile sides have a "
                f"latent cosine similarity above clusters.graph_similarity = {cfg.graph_similarity:g})")
    from .embeddings.graph import train_graph_partition

    std = x.std(axis=0)
    features = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    posterior = train_graph_partition(features, edges, k, seed=seed, epochs=cfg.graph_epochs)
    return posterior.argmax(axis=1).astype(np.int64), posterior


def vote_k(x: np.ndarray, cfg: ClusterConfig, seed: int, n_distinct: int | None = None) -> dict[int, int]:
    """How many of ``cfg.resamples`` random subsets of the tiles choose each k (dendrogram gap and split test).

    Each subset holds ``RESAMPLE_FRACTION`` of the tiles, at most ``cfg.linkage_max_tiles``.
    """
    x = np.asarray(x, dtype=np.float64)
    if n_distinct is None:
        n_distinct = len(np.unique(x.round(6), axis=0))
    rng = np.random.default_rng([seed, 1])
    size = max(3, min(int(round(RESAMPLE_FRACTION * len(x))), cfg.linkage_max_tiles))
    votes: Counter[int] = Counter()
    for r in range(cfg.resamples):
        sub = x[np.sort(rng.choice(len(x), size, replace=False))]
        gaps = dendrogram_gaps(linkage(sub, method="ward")[:, 2], cfg.k_min, min(cfg.k_max, n_distinct))
        statistic = split_statistic(sub, seed + 1 + r) if cfg.k_min <= 1 and gaps else None
        votes[choose_k(gaps, statistic, cfg.k_min)[0]] += 1
    return dict(sorted(votes.items()))


def cluster_embeddings(latents: np.ndarray, cfg: ClusterConfig, seed: int, *, positions: np.ndarray | None = None,
                       groups: np.ndarray | None = None, posterior: np.ndarray | None = None,
                       posterior_source: str = "VaDE mixture (lowest BIC)") -> Clustering:
    """Group tiles into tissues.

    Parameters
    ----------
    latents : (n, d) float ndarray
        One embedding per tile.
    cfg : ClusterConfig
    seed : int
        Seeds the linkage subset, the reference clouds, k-means and the graph network.
    positions : (n, 2) float ndarray, optional
        Tile centres in tile sides (grid column, row); needed by graph clustering.
    groups : (n,) int ndarray, optional
        Slide of each tile in a cohort: graph clustering joins no tiles of different slides.
    posterior : (n, m) float ndarray, optional
        The embedding's own mixture posteriors p(component | tile) (``vade``): k is the
        number of components that receive tiles (the mixture chose it, or ``cfg.k`` set it)
        and ``k_source`` is ``posterior_source``; with ``clusters.method = 'kmeans'`` each
        tile goes to its most probable component (``method`` is then ``"mixture"``), with
        ``'graph'`` the graph network partitions the tiles into that k. The dendrogram is
        still computed for the report. Unless k is given, the one-tissue split test still
        applies: one Gaussian cloud is one tissue.

    Raises
    ------
    InvalidInputError
        Latents that are not an (n >= 2, d) finite array; a k larger than the distinct tiles;
        a posterior of the wrong shape; graph clustering without positions.
    """
    from sklearn.cluster import KMeans

    x = np.asarray(latents, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise InvalidInputError(f"latents must be an (n, d) array with n >= 2; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InvalidInputError("latents hold NaN or infinite values; the autoencoder diverged")
    rng = np.random.default_rng(seed)
    n_distinct = len(np.unique(x.round(6), axis=0))

    gaps: dict[int, float] = {}
    votes: dict[int, int] = {}
    statistic = None
    z = sub = None
    if len(x) >= 3:
        sub = np.sort(rng.choice(len(x), cfg.linkage_max_tiles, replace=False)) if len(x) > cfg.linkage_max_tiles \
            else np.arange(len(x))
        z = linkage(x[sub], method="ward")
    if posterior is not None:
        post = np.asarray(posterior, dtype=np.float64)
        if post.shape[0] != len(x) or post.ndim != 2 or not np.isfinite(post).all():
            raise InvalidInputError(f"posterior must be a finite (n, m) array with n = {len(x)}; got {post.shape}")
        used = np.unique(post.argmax(axis=1))
        post = post[:, used] / np.maximum(post[:, used].sum(axis=1, keepdims=True), 1e-12)
        k, source = len(used), ("user" if cfg.k is not None else posterior_source)
        if cfg.k is None and cfg.k_min <= 1 and k > 1 and sub is not None:
            # The one-tissue test holds for a mixture too: one Gaussian cloud is one tissue.
            statistic = split_statistic(x[sub], seed)
            if statistic <= SPLIT_CRITICAL_VALUE:
                k, source, post = 1, "split test: one tissue", np.ones((len(x), 1))
    elif cfg.k is not None:
        k, source = cfg.k, "user"
        if k > n_distinct:
            raise InvalidInputError(
                f"k={k} tissues were asked for, but there are only {n_distinct} distinct tiles; use a smaller --k"
            )
    else:
        if z is not None:
            gaps = dendrogram_gaps(z[:, 2], cfg.k_min, min(cfg.k_max, n_distinct))
        if cfg.k_min <= 1 and gaps:
            statistic = split_statistic(x[sub], seed)
        k, source = choose_k(gaps, statistic, cfg.k_min)
        if cfg.resamples and len(x) >= 10:
            votes = vote_k(x, cfg, seed, n_distinct)
            top = max(votes.values())
            if votes.get(k, 0) < top:
                k = min(kk for kk, v in votes.items() if v == top)
                source = "resample vote"

    mixture = posterior is not None and k > 1
    method, warnings = ("mixture" if mixture and cfg.method == "kmeans" else cfg.method), []
    soft = None  # the method's own soft assignment (graph network or mixture), one column per tissue
    if k == 1:
        labels = np.zeros(len(x), dtype=np.int64)
        centroids = x.mean(axis=0, keepdims=True)
    else:
        graph = _graph_labels(x, k, cfg, seed, positions, groups) if cfg.method == "graph" else None
        if isinstance(graph, str):
            method = "mixture" if mixture else "kmeans"
            warnings.append(f"graph clustering fell back to {'the mixture' if mixture else 'k-means'}: {graph}")
            log.warning("%s", warnings[-1])
        if isinstance(graph, tuple):
            labels, soft = graph
            present = np.flatnonzero(np.bincount(labels, minlength=k))
            if len(present) < k:
                warnings.append(f"graph clustering left {k - len(present)} of the k = {k} tissues empty; "
                                f"{len(present)} remain")
            soft = soft[:, present]
            labels = np.searchsorted(present, labels)
            k = len(present)
        elif mixture:
            labels, soft = post.argmax(axis=1).astype(np.int64), post
        if soft is not None:
            centroids = np.stack([x[labels == j].mean(axis=0) for j in range(k)])
        else:
            km = KMeans(n_clusters=k, n_init=cfg.n_init, random_state=seed).fit(x)
            labels, centroids = km.labels_.astype(np.int64), km.cluster_centers_
        # Renumber by size (ties: by first tile), so that tissue 0 is the largest.
        sizes = np.bincount(labels, minlength=k)
        first = np.array([np.flatnonzero(labels == j)[0] for j in range(k)])
        order = np.lexsort((first, -sizes))
        remap = np.empty(k, dtype=np.int64)
        remap[order] = np.arange(k)
        labels, centroids = remap[labels], centroids[order]
        if soft is not None:
            soft = soft[:, order]

    all_distances = np.sqrt(np.maximum(
        (x * x).sum(axis=1)[:, None] - 2.0 * x @ centroids.T + (centroids * centroids).sum(axis=1)[None, :], 0.0))
    distance = np.linalg.norm(x - centroids[labels], axis=1)
    scale = float(np.percentile(distance, UNCERTAINTY_PERCENTILE))
    uncertainty = np.clip(distance / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(distance)
    confidence = assignment_confidence(all_distances, labels)
    assignment = soft / soft.sum(axis=1, keepdims=True) if soft is not None \
        else distance_posterior(all_distances, labels)
    log.info("k = %d (%s, %s); tiles per tissue %s", k, source, method, np.bincount(labels).tolist())
    return Clustering(
        k=k,
        k_source=source,
        labels=labels,
        centroids=centroids.astype(np.float32),
        distance=distance.astype(np.float32),
        uncertainty=uncertainty.astype(np.float32),
        uncertainty_scale=scale,
        gaps=gaps,
        split_statistic=statistic,
        linkage=z,
        linkage_indices=sub,
        method=method,
        posterior=assignment.astype(np.float32),
        confidence=confidence.astype(np.float32),
        warnings=tuple(warnings),
        k_votes=votes,
    )

