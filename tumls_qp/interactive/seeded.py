"""Seeded iterative clustering (SIC): a dense tile classification from a few seed tiles, without retraining.

Arrays in, arrays out: tile embeddings (a run's cached latents) and the indices of the
seed tiles of each class; :func:`seeds_to_tiles` maps seed annotations (shapely
geometries in level-0 px) to those indices. The request path that reads a run folder and
returns QuPath GeoJSON is :func:`tumls_qp.labelling.seeded_classification`.

Algorithm 1 of the SIC paper (binary: a positive class such as "Tumor" against a negative one)
-------------------------------------------------------------------------------------------------
1. Seeded k-means (Basu, Banerjee & Mooney, ICML 2002, "Seeded-KMeans"): k-means with one
   centre per class, each centre initialised at the mean of that class's seed tiles; the
   seeds are then clustered like every other tile (they may change cluster).
2. While the positive cluster still holds seeds of both classes, split it again with seeded
   k-means (initialised from the seeds inside it). A split is kept only when the seed F1
   improves; the first split that does not improve it ends the recursion and is discarded.
   The F1 is that of the positive class, computed on all seeds (the paper's "compare only
   sparse annotations"), so that scores of different levels compare.
3. The conventional k-means step: when the positive cluster holds positive seeds only, the
   paper splits it once more with plain 2-means ("it had shown to improve the performance when
   the tumour region was not big enough"); the half without positive seeds becomes negative.
   Its pseudo-code does not say when to keep that split, and the seed F1 cannot rise there
   (no negative seed is left inside). We keep it when (a) all positive seeds of the cluster
   fall on one side, so the seed F1 does not drop, and (b) the cluster is more than one
   Gaussian cloud by the G-means split test already used for k = 1
   (:func:`tumls_qp.tissue.clusters.split_statistic`, A*² above ``SPLIT_CRITICAL_VALUE``).
   Without (b), one seed would always halve a homogeneous positive cluster. The step runs at
   most once ("an additional step"). ``conventional_step=False`` leaves it out.

More than two classes (the paper's future work) — the default
----------------------------------------------------------------
Algorithm 1 carves the positive class out of the cluster that holds it. With C classes,
every class is carved the same way:

1. Seeded k-means with C centres, one per class.
2. Repeatedly, take the cluster that holds the most seeds of classes other than its own
   (ties: the larger cluster). Split it with seeded k-means over the classes whose seeds it
   holds, and give each part the class of its seeds. Keep the split when the seed macro-F1
   (the mean F1 over classes, on all seeds) improves; otherwise discard it and leave that
   cluster as it is for good. Stop when no cluster can be split.
3. No conventional step: with more than one other class, the paper gives no rule for where the
   seedless half should go.

With two classes and no designated positive class this is Algorithm 1 applied to both
classes (each class's cluster is refined when it holds seeds of the other). Every accepted
split strictly raises the seed F1, which takes finitely many values, so SIC ends.

Confidence
----------
Each accepted split assigns a tile to the nearest of its centres. For that decision, the
tile's relative margin is ``(d₂ − d₁) / (d₂ + d₁)``, with d₁ the distance (in the embedding
space) to the centre it joined and d₂ to the nearest other centre: 0 on the boundary between
two classes, 1 on the centre itself (the tool's one confidence,
:func:`tumls_qp.tissue.clusters.assignment_confidence`). A tile's confidence is the smallest margin over the
splits that decided its class (from the first seeded k-means down to its final cluster): it is
low as soon as one of these decisions was close. It is not a probability; it compares
tiles within one request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from ..errors import InvalidInputError
from ..tissue.clusters import assignment_confidence

__all__ = [
    "SeededResult",
    "SicStep",
    "SeedTiles",
    "seeded_kmeans",
    "relative_margin",
    "seeded_iterative_clustering",
    "seeds_to_tiles",
    "macro_f1",
    "binary_f1",
    "MIN_SEED_COVER",
]

log = logging.getLogger(__name__)

#: A polygon seed marks the tiles it covers by at least this fraction of their area.
MIN_SEED_COVER = 0.5


@dataclass(frozen=True)
class SicStep:
    """One clustering step of SIC, kept or discarded."""

    #: ``"seeded k-means"`` (the first step), ``"seeded split"`` or ``"k-means split"`` (the conventional step).
    kind: str
    #: Class of the cluster that was split (None for the first step).
    cluster_class: str | None
    #: Tiles in the cluster that was split.
    n_tiles: int
    #: Seed F1 before and after the step.
    seed_f1_before: float
    seed_f1: float
    accepted: bool


@dataclass(frozen=True)
class SeededResult:
    """A dense classification of tiles from seeds.

    Attributes
    ----------
    classes : tuple of str
        Class names, in the order of the ``seeds`` mapping.
    labels : (n,) int64 ndarray
        Class of each tile, an index into ``classes``.
    confidence : (n,) float32 ndarray
        Smallest relative margin of the decisions that gave each tile its class, in [0, 1]
        (see the module docstring).
    mode : str
        ``"multiclass"`` or ``"binary"`` (Algorithm 1 with a positive class).
    positive : str or None
        The positive class in binary mode.
    seed_f1 : float
        F1 on the seed tiles of the final labels (macro-F1 in multiclass mode, the positive
        class's F1 in binary mode).
    steps : tuple of SicStep
    """

    classes: tuple[str, ...]
    labels: np.ndarray
    confidence: np.ndarray
    mode: str
    positive: str | None
    seed_f1: float
    steps: tuple[SicStep, ...] = field(default_factory=tuple)

    def counts(self) -> dict[str, int]:
        """Tiles per class."""
        sizes = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(s) for name, s in zip(self.classes, sizes)}


# --- building blocks --------------------------------------------------------------------------------------------------

def _sq_distances(x: np.ndarray, sq: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d2 = sq[:, None] - 2.0 * (x @ centres.T) + (centres * centres).sum(axis=1)[None, :]
    return np.maximum(d2, 0.0, out=d2)


def relative_margin(sq_distances: np.ndarray) -> np.ndarray:
    """``(d₂ − d₁) / (d₂ + d₁)`` per row, from squared distances to k centres.

    The tool's one confidence, :func:`tumls_qp.tissue.clusters.assignment_confidence`, with
    d₁ the nearest centre.

    Parameters
    ----------
    sq_distances : (n, k) ndarray
        Squared distances of n points to k centres.

    Returns
    -------
    (n,) float64 ndarray
        In [0, 1]; 1 when k = 1, 0 where the two nearest centres are equally near.
    """
    return assignment_confidence(np.sqrt(np.maximum(sq_distances, 0.0)))


def seeded_kmeans(
    x: np.ndarray, seeds: Sequence[np.ndarray], max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded-KMeans (Basu et al. 2002): k-means whose centre j starts at the mean of seed set j.

    Parameters
    ----------
    x : (n, d) float ndarray
    seeds : sequence of k int ndarrays
        Row indices into ``x`` of the seeds of each cluster; none may be empty.
    max_iter : int
        Lloyd iterations at most (it usually converges in a few).

    Returns
    -------
    labels : (n,) int64 ndarray
        Nearest final centre of each row (ties: the lower index).
    centres : (k, d) float64 ndarray
        A centre whose cluster empties keeps its last position.
    sq_distances : (n, k) float64 ndarray
        Squared distances of each row to the final centres.
    """
    x = np.asarray(x, dtype=np.float64)
    centres = np.stack([x[np.asarray(s, dtype=np.int64)].mean(axis=0) for s in seeds])
    sq = np.einsum("ij,ij->i", x, x)
    labels = np.full(len(x), -1, dtype=np.int64)
    for _ in range(max_iter):
        d2 = _sq_distances(x, sq, centres)
        new = d2.argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(len(centres)):
            members = labels == j
            if members.any():
                centres[j] = x[members].mean(axis=0)
    else:
        d2 = _sq_distances(x, sq, centres)
        labels = d2.argmin(axis=1)
    return labels.astype(np.int64), centres, d2


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean over ``n_classes`` classes of the F1 score (a class with no true and no predicted member scores 0).

    The value of ``sklearn.metrics.f1_score(y_true, y_pred, labels=range(n_classes), average="macro",
    zero_division=0)`` (a test compares them); written out because SIC scores every candidate split
    and f1_score's input checks cost about 40 times the arithmetic.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scores = []
    for c in range(n_classes):
        tp = float(np.sum((y_true == c) & (y_pred == c)))
        fp = float(np.sum((y_true != c) & (y_pred == c)))
        fn = float(np.sum((y_true == c) & (y_pred != c)))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def binary_f1(y_true: np.ndarray, y_pred: np.ndarray, positive: int) -> float:
    """F1 score of class ``positive`` (``sklearn.metrics.f1_score(..., labels=[positive])``; see :func:`macro_f1`)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    tp = float(np.sum((y_true == positive) & (y_pred == positive)))
    fp = float(np.sum((y_true != positive) & (y_pred == positive)))
    fn = float(np.sum((y_true == positive) & (y_pred != positive)))
    return 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0


# --- SIC ----------------------------------------------------------------------------------------------------------------

@dataclass(eq=False)  # identity: two clusters are never equal by value
class _Cluster:
    members: np.ndarray
    cls: int
    final: bool = False


def _check_inputs(latents: Any, seeds: Mapping[str, Any]) -> tuple[np.ndarray, list[str], list[np.ndarray]]:
    x = np.asarray(latents, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise InvalidInputError(f"latents must be an (n, d) array of at least 2 tiles; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InvalidInputError("latents hold NaN or infinite values; re-run the analysis that made them")
    if not isinstance(seeds, Mapping) or len(seeds) == 0:
        raise InvalidInputError(
            "no seeds were given: SIC needs seed tiles of at least two classes (e.g. 'Tumor' and 'Benign')"
        )
    names = list(seeds)
    if len(names) < 2:
        raise InvalidInputError(
            f"SIC needs seeds of at least two classes; got seeds of {names[0]!r} only. Add at least one "
            "annotation of another class (e.g. the benign tissue next to a tumour)."
        )
    owner: dict[int, str] = {}
    arrays = []
    for name in names:
        try:
            idx = np.unique(np.asarray(list(seeds[name]), dtype=np.int64))
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"seeds of class {name!r} must be tile indices; got {seeds[name]!r}") from exc
        if idx.size == 0:
            raise InvalidInputError(f"class {name!r} has no seed tile; give each class at least one seed")
        if idx.min() < 0 or idx.max() >= len(x):
            raise InvalidInputError(
                f"seeds of class {name!r} must be tile indices in 0..{len(x) - 1}; got {idx.min()}..{idx.max()}"
            )
        for i in idx.tolist():
            if i in owner:
                raise InvalidInputError(f"tile {i} is a seed of both {owner[i]!r} and {name!r}; a tile has one class")
            owner[i] = name
        arrays.append(idx)
    return x, names, arrays


def seeded_iterative_clustering(
    latents: np.ndarray,
    seeds: Mapping[str, Sequence[int] | np.ndarray],
    *,
    positive: str | None = None,
    conventional_step: bool = True,
    seed: int = 0,
    max_splits: int = 64,
    max_iter: int = 100,
) -> SeededResult:
    """Classify every tile from a few seed tiles per class (see the module docstring).

    Parameters
    ----------
    latents : (n, d) float ndarray
        One embedding per tile (a run's ``embeddings.npz`` ``latents``).
    seeds : mapping of class name to tile indices
        At least two classes, each with at least one seed tile; a tile may seed one class only.
        The mapping's order is the order of ``SeededResult.classes``.
    positive : str, optional
        With exactly two classes, run the paper's binary Algorithm 1 with this class as the
        positive one (only its cluster is split further). Default: the multi-class scheme.
    conventional_step : bool
        Binary mode only: allow the paper's extra plain 2-means step (see the module docstring).
    seed : int
        Seeds the plain k-means of the conventional step and its split test.
    max_splits : int
        Upper bound on accepted splits (a guard; SIC normally stops long before).
    max_iter : int
        Lloyd iterations per k-means.

    Returns
    -------
    SeededResult

    Raises
    ------
    InvalidInputError
        No seeds, seeds of one class only, a class without seed tiles, a tile seeding two
        classes, a bad ``positive``, or unusable latents.
    """
    x, names, seed_sets = _check_inputs(latents, seeds)
    n_classes = len(names)
    pos: int | None = None
    if positive is not None:
        if positive not in names:
            raise InvalidInputError(f"positive={positive!r} is not one of the seed classes {names}")
        if n_classes != 2:
            raise InvalidInputError(
                f"positive={positive!r} selects the binary Algorithm 1, which needs exactly two classes; got "
                f"{n_classes} ({', '.join(names)}). Leave positive unset for the multi-class scheme."
            )
        pos = names.index(positive)
    seed_idx = np.concatenate(seed_sets)
    seed_y = np.concatenate([np.full(len(s), c, dtype=np.int64) for c, s in enumerate(seed_sets)])
    refine = {pos} if pos is not None else set(range(n_classes))

    def score(labels: np.ndarray) -> float:
        predicted = labels[seed_idx]
        return binary_f1(seed_y, predicted, pos) if pos is not None else macro_f1(seed_y, predicted, n_classes)

    labels, _, d2 = seeded_kmeans(x, seed_sets, max_iter)
    confidence = relative_margin(d2)
    f1 = score(labels)
    steps = [SicStep("seeded k-means", None, len(x), 0.0, f1, True)]
    clusters = [_Cluster(np.flatnonzero(labels == c), c) for c in range(n_classes)]
    clusters = [c for c in clusters if len(c.members)]
    tile_seed_class = np.full(len(x), -1, dtype=np.int64)
    tile_seed_class[seed_idx] = seed_y
    conventional_done = not (conventional_step and pos is not None)

    splits = 0
    while splits < max_splits:
        candidates = []
        for cl in clusters:
            if cl.final or cl.cls not in refine:
                continue
            inside = tile_seed_class[cl.members]
            present = np.unique(inside[inside >= 0])
            if len(present) >= 2:
                foreign = int(np.sum((inside >= 0) & (inside != cl.cls)))
                candidates.append((-foreign, -len(cl.members), int(cl.members[0]), cl, present))
        if candidates:
            *_, cl, present = min(candidates, key=lambda c: c[:3])
            inside = tile_seed_class[cl.members]
            local = [np.flatnonzero(inside == c) for c in present]
            sub, _, sub_d2 = seeded_kmeans(x[cl.members], local, max_iter)
            trial = labels.copy()
            trial[cl.members] = present[sub]
            new_f1 = score(trial)
            accepted = new_f1 > f1 + 1e-12
            steps.append(SicStep("seeded split", names[cl.cls], len(cl.members), f1, new_f1, accepted))
            if accepted:
                labels, f1 = trial, new_f1
                confidence[cl.members] = np.minimum(confidence[cl.members], relative_margin(sub_d2))
                clusters.remove(cl)
                clusters += [_Cluster(cl.members[sub == j], int(c)) for j, c in enumerate(present)
                             if np.any(sub == j)]
                splits += 1
            else:
                cl.final = True
            continue
        if not conventional_done:
            conventional_done = True
            cl = _conventional_candidate(clusters, pos, tile_seed_class)
            if cl is not None:
                keep, margin = _conventional_split(x[cl.members], tile_seed_class[cl.members] == pos, seed)
                trial = labels.copy()
                trial[cl.members[~keep]] = 1 - pos
                new_f1 = score(trial) if keep is not None and not keep.all() else f1
                accepted = margin is not None and new_f1 >= f1 - 1e-12
                steps.append(SicStep("k-means split", names[pos], len(cl.members), f1, new_f1, accepted))
                if accepted:
                    labels, f1 = trial, new_f1
                    confidence[cl.members] = np.minimum(confidence[cl.members], margin)
                    clusters.remove(cl)
                    clusters += [_Cluster(cl.members[keep], pos), _Cluster(cl.members[~keep], 1 - pos)]
                    splits += 1
            continue
        break
    log.info("SIC (%s): %d accepted split(s), seed F1 %.3f, tiles per class %s",
             "binary" if pos is not None else "multiclass", splits, f1,
             np.bincount(labels, minlength=n_classes).tolist())
    return SeededResult(
        classes=tuple(names),
        labels=labels.astype(np.int64),
        confidence=confidence.astype(np.float32),
        mode="binary" if pos is not None else "multiclass",
        positive=names[pos] if pos is not None else None,
        seed_f1=f1,
        steps=tuple(steps),
    )


def _conventional_candidate(clusters: list[_Cluster], pos: int | None, tile_seed_class: np.ndarray) -> _Cluster | None:
    """The positive cluster when it holds positive seeds and no negative one (Algorithm 1's else branch)."""
    positive = [c for c in clusters if c.cls == pos and not c.final]
    if len(positive) != 1:
        return None
    inside = tile_seed_class[positive[0].members]
    if not np.any(inside == pos) or np.any((inside >= 0) & (inside != pos)) or len(positive[0].members) < 4:
        return None
    return positive[0]


def _conventional_split(xs: np.ndarray, is_seed: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Plain 2-means of a positive cluster: (tiles kept positive, their margins or None when the split is refused).

    Refused when the cluster is one Gaussian cloud (G-means split test) or when its seeds fall on
    both sides; the side with most seeds is the one kept, so the caller can score the refusal.
    """
    from sklearn.cluster import KMeans

    from ..tissue.clusters import SPLIT_CRITICAL_VALUE, split_statistic

    if not split_statistic(xs, seed) > SPLIT_CRITICAL_VALUE:
        return np.ones(len(xs), dtype=bool), None
    km = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(xs)
    side = km.labels_
    seed_sides = np.bincount(side[is_seed], minlength=2)
    keep = side == int(np.argmax(seed_sides))
    if seed_sides.min() > 0:
        return keep, None
    d2 = _sq_distances(xs, np.einsum("ij,ij->i", xs, xs), km.cluster_centers_.astype(np.float64))
    return keep, relative_margin(d2)


# --- seeds drawn on the slide -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SeedTiles:
    """Seed annotations mapped to the tiles of a run.

    Attributes
    ----------
    tiles : dict of str to (m,) int64 ndarray
        Seed tiles of each class (indices into the run's tiles), in the order the classes
        first appear; tiles claimed by two classes are left out (see ``conflicts``).
    per_seed : tuple of (m,) int64 ndarray
        The tiles each seed covers, in the order of the seeds.
    conflicts : (m,) int64 ndarray
        Tiles covered by seeds of different classes; they seed no class.
    """

    tiles: dict[str, np.ndarray]
    per_seed: tuple[np.ndarray, ...]
    conflicts: np.ndarray


def _parts(geometry: BaseGeometry) -> list[BaseGeometry]:
    if hasattr(geometry, "geoms"):
        return [p for g in geometry.geoms for p in _parts(g)]
    return [geometry]


def _describe(geometry: BaseGeometry) -> str:
    c = geometry.centroid if not geometry.is_empty else None
    where = f" around x={c.x:.0f}, y={c.y:.0f} px" if c is not None and not c.is_empty else ""
    return f"a {geometry.geom_type}{where}"


def seeds_to_tiles(
    boxes: np.ndarray,
    seeds: Sequence[tuple[str, BaseGeometry]],
    *,
    min_cover: float = MIN_SEED_COVER,
) -> SeedTiles:
    """Map seed annotations to the tiles they cover.

    A point marks the tile it falls in (on a shared edge, the first such tile). A line
    (a scribble) marks every tile it runs through. A polygon marks the tiles it covers by at
    least ``min_cover`` of their area; a polygon smaller than that marks the one tile it
    overlaps most. Collections are handled part by part.

    Parameters
    ----------
    boxes : (n, 4) ndarray
        The run's tile boxes (x, y, width, height) in level-0 px.
    seeds : sequence of (class name, shapely geometry)
        Geometries in level-0 px of the same slide (QuPath's image frame).
    min_cover : float
        In (0, 1].

    Returns
    -------
    SeedTiles

    Raises
    ------
    InvalidInputError
        A seed has no class name or no usable geometry, or covers no tile of the run (it lies
        outside the analysed tissue); the message names the seed.
    """
    if not 0 < min_cover <= 1:
        raise InvalidInputError(f"min_cover must be in (0, 1]; got {min_cover!r}")
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
        raise InvalidInputError(f"boxes must be an (n, 4) array of tiles with n >= 1; got shape {boxes.shape}")
    tiles = shapely.box(boxes[:, 0], boxes[:, 1], boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3])
    tile_area = shapely.area(tiles)
    tree = shapely.STRtree(tiles)
    per_seed: list[np.ndarray] = []
    claims: dict[str, set[int]] = {}
    for i, item in enumerate(seeds):
        try:
            name, geometry = item
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"seed {i + 1} must be a (class name, geometry) pair; got {item!r}") from exc
        label = f"seed {i + 1} of {len(seeds)} (class {name!r})"
        if not isinstance(name, str) or not name.strip():
            raise InvalidInputError(f"seed {i + 1} of {len(seeds)} has no class name; classify the annotation")
        if not isinstance(geometry, BaseGeometry) or geometry.is_empty:
            raise InvalidInputError(f"{label} has no geometry (got {geometry!r}); redraw it")
        if not geometry.is_valid:
            geometry = shapely.make_valid(geometry)
        covered: set[int] = set()
        for part in _parts(geometry):
            if part.is_empty:
                continue
            candidates = tree.query(part, predicate="intersects")
            if len(candidates) == 0:
                continue
            dim = shapely.get_dimensions(part)
            if dim == 2:
                cover = shapely.area(shapely.intersection(tiles[candidates], part)) / tile_area[candidates]
                chosen = candidates[cover >= min_cover]
                if len(chosen) == 0 and cover.max() > 0:
                    chosen = candidates[[int(np.argmax(cover))]]
            elif dim == 1:
                length = shapely.length(shapely.intersection(tiles[candidates], part))
                chosen = candidates[length > 0]
            else:
                chosen = np.sort(candidates)[:1]
            covered.update(int(t) for t in chosen)
        if not covered:
            raise InvalidInputError(
                f"{label}, {_describe(geometry)}, covers no tissue tile of this run: seeds must lie on the "
                f"analysed tissue (the run's {len(boxes)} tiles span x {boxes[:, 0].min():.0f}-"
                f"{(boxes[:, 0] + boxes[:, 2]).max():.0f}, y {boxes[:, 1].min():.0f}-"
                f"{(boxes[:, 1] + boxes[:, 3]).max():.0f} px). Move or redraw it, or check that the run is of "
                "this image."
            )
        per_seed.append(np.array(sorted(covered), dtype=np.int64))
        claims.setdefault(name, set()).update(covered)
    owners: dict[int, set[str]] = {}
    for name, covered in claims.items():
        for t in covered:
            owners.setdefault(t, set()).add(name)
    conflicts = sorted(t for t, names in owners.items() if len(names) > 1)
    if conflicts:
        log.warning("%d tile(s) are covered by seeds of different classes and seed none", len(conflicts))
    conflict_set = set(conflicts)
    out = {}
    for name, covered in claims.items():
        kept = sorted(covered - conflict_set)
        if not kept:
            raise InvalidInputError(
                f"every tile that the seeds of class {name!r} cover is also covered by seeds of another class; "
                "draw the seeds of different classes apart"
            )
        out[name] = np.array(kept, dtype=np.int64)
    return SeedTiles(tiles=out, per_seed=tuple(per_seed), conflicts=np.array(conflicts, dtype=np.int64))

