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

Uncertainty
-----------
d = Euclidean distance of a tile's latent to its tissue's centroid;
uncertainty = min(1, d / D), with D the 99th percentile of d over all tiles of the
run (of the cohort in cohort mode). 0 is the centroid itself; 1 is as far as the
1 % most atypical tiles. One scale for all tissues, so uncertainties compare across
tissues and slides of a cohort.

Tissues are numbered by size: tissue 0 ("Tissue 1") has the most tiles.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from scipy.cluster.hierarchy import linkage

from ..config import ClusterConfig
from ..errors import InvalidInputError

__all__ = [
    "Clustering",
    "cluster_embeddings",
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
        ``"user"``, ``"dendrogram"`` (largest gap) or ``"split test: one tissue"``.
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
    k_votes : dict of int to int
        How many resamples chose each k (empty when k was given or not voted on).
    posterior : (n, k) float32 ndarray or None
        p(tissue | tile) from the embedding's mixture, columns in tissue order (``vade``); None otherwise.
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
    k_votes: dict[int, int] = field(default_factory=dict)
    posterior: np.ndarray | None = None

    def sizes(self) -> list[int]:
        """Tiles per tissue."""
        return np.bincount(self.labels, minlength=self.k).tolist()

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


def cluster_embeddings(latents: np.ndarray, cfg: ClusterConfig, seed: int, *,
                       posterior: np.ndarray | None = None, posterior_source: str = "VaDE mixture (lowest BIC)") -> Clustering:
    """Group tiles into tissues.

    Parameters
    ----------
    latents : (n, d) float ndarray
        One embedding per tile.
    cfg : ClusterConfig
    seed : int
        Seeds the linkage subset, the reference clouds and k-means.
    posterior : (n, m) float ndarray, optional
        The embedding's own mixture posteriors p(component | tile) (``vade``): then each tile
        goes to its most probable component, k is the number of components that receive
        tiles (the mixture chose it, or ``cfg.k`` set it) and ``k_source`` is
        ``posterior_source``; the dendrogram is still computed for the report. Unless k is
        given, the one-tissue split test still applies: one Gaussian cloud is one tissue.
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
                source = "split test: one tissue" if k == 1 else "dendrogram"

    if k == 1:
        labels = np.zeros(len(x), dtype=np.int64)
        centroids = x.mean(axis=0, keepdims=True)
    else:
        if posterior is not None:
            labels = post.argmax(axis=1).astype(np.int64)
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
        if posterior is not None:
            post = post[:, order]

    distance = np.linalg.norm(x - centroids[labels], axis=1)
    scale = float(np.percentile(distance, UNCERTAINTY_PERCENTILE))
    uncertainty = np.clip(distance / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(distance)
    log.info("k = %d (%s); tiles per tissue %s", k, source, np.bincount(labels).tolist())
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
        k_votes=votes,
        posterior=None if posterior is None else post.astype(np.float32),
    )

