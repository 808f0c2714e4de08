"""Prototype dictionary (Proto2Seg, sections 3.2-3.3): named cluster centres that label new slides.

1. **Over-clustering.** k-means++ on a run's tile embeddings with k from the elbow of the
   within-cluster distance D(k) (:func:`elbow_curve`, :func:`over_cluster`).
2. **Naming.** A person looks at the t tiles closest to each centre ("central sampling",
   t = 10 in the paper) and names the cluster's tissue, or calls it mixed; unnamed and mixed
   clusters are dropped (:class:`ClusterNaming`). The named centres are the prototypes.
3. **Dictionary file.** Prototypes, their classes and colours, the encoder that made the
   embeddings, and where it all came from, in one file (:func:`save_dictionary`,
   :func:`load_dictionary`; the format is documented on :func:`save_dictionary`).
4. **Queries.** Direct-Query: each tile takes the class of its nearest prototype
   (:func:`direct_query`). Cluster-then-Query: the slide's tiles are grouped into γ·d
   clusters (d = classes that Direct-Query finds on the slide, γ = 5) and each group takes
   the class of the prototype nearest its centre, which removes isolated outliers
   (:func:`cluster_then_query`).

The elbow rule
--------------
D(k) is the k-means objective, the sum of squared distances of the tiles to their centres
(the paper's "embedding squared distance"), for k = 1..50 (k = 1 is the spread around
the mean, so that R₂ = D₁ − D₂ exists). D cannot rise with k for optimal clusterings, so
the curve is made non-increasing (a running minimum removes k-means's local optima). The
paper looks at the reductions Rₖ = Dₖ₋₁ − Dₖ and picks "the elbow point where the
reduction slows down". We make that automatic with Kneedle (Satopää et al., 2011): with k
and D scaled to [0, 1], the elbow is the k in 2..50 where D lies farthest below the chord
from k = 1 to k = 50. For a convex curve this is the last k whose reduction Rₖ exceeds the
average reduction over the range. No threshold is involved.

Confidence of a query
---------------------
``(d₂ − d₁) / (d₂ + d₁)`` with d₁ the distance to the nearest prototype and d₂ to the
nearest prototype of another class (for Cluster-then-Query, measured at the group's
centre): 0 on the boundary between two classes, 1 on a prototype. This is the tool's one
confidence (:func:`tumls_qp.tissue.clusters.assignment_confidence`), the same as the tissue
map's and seeded clustering's.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import __version__
from ..classes import check_class_names, check_colour, class_colour
from ..config import PipelineConfig, config_from_dict, config_to_dict
from ..errors import ConfigError, InvalidInputError, OutputError
from ..files import atomic_write
from ..tissue.clusters import assignment_confidence

__all__ = [
    "ElbowCurve",
    "Overclustering",
    "ClusterNaming",
    "PrototypeDictionary",
    "QueryResult",
    "elbow_curve",
    "choose_elbow",
    "over_cluster",
    "central_tiles",
    "label_by_central_tiles",
    "naming_from_mapping",
    "load_names",
    "names_template",
    "build_prototypes",
    "save_dictionary",
    "load_dictionary",
    "direct_query",
    "cluster_then_query",
    "DICTIONARY_FORMAT",
    "DICTIONARY_VERSION",
    "K_RANGE",
    "DEFAULT_T",
    "DEFAULT_GAMMA",
    "PURITY",
    "MIXED",
]

log = logging.getLogger(__name__)

#: k considered by the elbow rule (the paper's v ∈ [2, 50]).
K_RANGE = (2, 50)
#: Central tiles shown per cluster for naming (the paper's t).
DEFAULT_T = 10
#: Cluster-then-Query groups per tissue class found on the slide (the paper's γ).
DEFAULT_GAMMA = 5
#: Share of one class among a cluster's central tiles above which a simulated expert names it (the paper's 80 %).
PURITY = 0.8
#: The name that marks a cluster as a mixture of tissues (dropped from the dictionary).
MIXED = "mixed"
#: Elbow curves are computed on at most this many tiles (the paper clusters a 20,000-patch sample).
ELBOW_MAX_TILES = 20_000

DICTIONARY_FORMAT = "tumls-qp-prototype-dictionary"
DICTIONARY_VERSION = 1
_MEMBERS = ("dictionary.json", "prototypes.npy", "model.pt", "model.json")

# --- over-clustering ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ElbowCurve:
    """The elbow rule's inputs and its choice.

    Attributes
    ----------
    ks : (m,) int64 ndarray
        1, 2, ..., k_max.
    inertia : (m,) float64 ndarray
        D(k), made non-increasing.
    reduction : (m,) float64 ndarray
        Rₖ = D(k−1) − D(k); NaN for k = 1.
    k : int
        The elbow.
    n_tiles : int
        Tiles the curve was computed on (a seeded sample of at most ``ELBOW_MAX_TILES``).
    """

    ks: np.ndarray
    inertia: np.ndarray
    reduction: np.ndarray
    k: int
    n_tiles: int


def choose_elbow(ks: np.ndarray, inertia: np.ndarray, k_min: int = K_RANGE[0]) -> int:
    """Kneedle's elbow: the k ≥ ``k_min`` where the scaled D(k) lies farthest below the chord of the curve.

    Parameters
    ----------
    ks : (m,) int ndarray
        Ascending, starting at 1.
    inertia : (m,) float ndarray
        D(k), non-increasing.
    """
    ks = np.asarray(ks, dtype=np.float64)
    d = np.asarray(inertia, dtype=np.float64)
    allowed = ks >= k_min
    if not allowed.any():
        raise ValueError(f"no k >= {k_min} in the curve")
    span = d[0] - d[-1]
    if len(ks) < 3 or not span > 0:
        return int(ks[allowed][0])
    x = (ks - ks[0]) / (ks[-1] - ks[0])
    y = (d - d[-1]) / span
    below = (1.0 - x) - y
    below[~allowed] = -np.inf
    return int(ks[int(np.argmax(below))])


def _check_latents(latents: Any, what: str = "latents") -> np.ndarray:
    x = np.asarray(latents, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise InvalidInputError(f"{what} must be an (n, d) array with n >= 2; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InvalidInputError(f"{what} hold NaN or infinite values")
    return x


def elbow_curve(latents: np.ndarray, *, k_max: int = K_RANGE[1], seed: int = 0,
                max_tiles: int = ELBOW_MAX_TILES) -> ElbowCurve:
    """D(k) for k = 1..k_max with k-means++ and the elbow it implies (see the module docstring).

    Parameters
    ----------
    latents : (n, d) float ndarray
    k_max : int
        Capped at the number of distinct tiles.
    seed : int
        Seeds the sample and k-means.
    max_tiles : int
        The curve is computed on a seeded random sample of at most this many tiles.
    """
    from sklearn.cluster import KMeans

    x = _check_latents(latents)
    rng = np.random.default_rng(seed)
    if len(x) > max_tiles:
        x = x[np.sort(rng.choice(len(x), max_tiles, replace=False))]
    n_distinct = len(np.unique(x.round(6), axis=0))
    k_hi = max(2, min(k_max, n_distinct))
    ks = np.arange(1, k_hi + 1)
    inertia = np.empty(len(ks))
    inertia[0] = float(((x - x.mean(axis=0)) ** 2).sum())
    for i, k in enumerate(ks[1:], start=1):
        inertia[i] = KMeans(n_clusters=int(k), n_init=1, random_state=seed).fit(x).inertia_
    inertia = np.minimum.accumulate(inertia)
    reduction = np.concatenate([[np.nan], -np.diff(inertia)])
    k = choose_elbow(ks, inertia)
    return ElbowCurve(ks=ks, inertia=inertia, reduction=reduction, k=k, n_tiles=len(x))


@dataclass(frozen=True)
class Overclustering:
    """Prototype candidates: the clusters a person names.

    Attributes
    ----------
    k : int
    k_source : str
        ``"elbow"`` or ``"user"``.
    labels : (n,) int64 ndarray
        Cluster of each tile, 0-based (shown to people as "Prototype 1".."Prototype k").
    centroids : (k, d) float32 ndarray
    distance : (n,) float32 ndarray
        Distance of each tile to its cluster's centre.
    elbow : ElbowCurve or None
        None when k was given.
    """

    k: int
    k_source: str
    labels: np.ndarray
    centroids: np.ndarray
    distance: np.ndarray
    elbow: ElbowCurve | None = None

    def sizes(self) -> list[int]:
        """Tiles per cluster."""
        return np.bincount(self.labels, minlength=self.k).tolist()


def over_cluster(latents: np.ndarray, *, k: int | None = None, seed: int = 0, n_init: int = 10,
                 k_max: int = K_RANGE[1]) -> Overclustering:
    """k-means++ with k from the elbow rule (or ``k``).

    Parameters
    ----------
    latents : (n, d) float ndarray
    k : int, optional
        Number of clusters; default: :func:`elbow_curve`'s elbow.
    seed : int
    n_init : int
        k-means restarts for the final clustering.
    k_max : int
        Largest k the elbow rule considers.
    """
    from sklearn.cluster import KMeans

    x = _check_latents(latents)
    n_distinct = len(np.unique(x.round(6), axis=0))
    elbow = None
    if k is None:
        elbow = elbow_curve(x, k_max=k_max, seed=seed)
        k, source = elbow.k, "elbow"
    else:
        source = "user"
        if not isinstance(k, (int, np.integer)) or k < 2:
            raise InvalidInputError(f"k must be an integer >= 2 for prototype clusters; got {k!r}")
        if k > n_distinct:
            raise InvalidInputError(f"k={k} prototype clusters were asked for, but there are only {n_distinct} "
                                    "distinct tiles; use a smaller k")
    km = KMeans(n_clusters=int(k), n_init=n_init, random_state=seed).fit(x)
    labels = km.labels_.astype(np.int64)
    centroids = km.cluster_centers_
    distance = np.linalg.norm(x - centroids[labels], axis=1)
    log.info("prototype clusters: k = %d (%s)", k, source)
    return Overclustering(k=int(k), k_source=source, labels=labels, centroids=centroids.astype(np.float32),
                          distance=distance.astype(np.float32), elbow=elbow)


def central_tiles(distance: np.ndarray, labels: np.ndarray, k: int, t: int = DEFAULT_T) -> list[np.ndarray]:
    """The ``t`` tiles of each cluster closest to its centre (the paper's central sampling).

    Parameters
    ----------
    distance : (n,) float ndarray
        Distance of each tile to its cluster's centre.
    labels : (n,) int ndarray
        Cluster of each tile, 0-based.
    k : int
    t : int

    Returns
    -------
    list of k int64 ndarrays
        Tile indices, closest first (ties: lower index); fewer than ``t`` in small clusters.
    """
    if t < 1:
        raise InvalidInputError(f"t (tiles shown per cluster) must be >= 1; got {t}")
    distance = np.asarray(distance)
    out = []
    for j in range(k):
        members = np.flatnonzero(labels == j)
        out.append(members[np.lexsort((members, distance[members]))][:t].astype(np.int64))
    return out


def label_by_central_tiles(true_labels: np.ndarray, central: Sequence[np.ndarray], purity: float = PURITY) -> list[int | None]:
    """Simulated naming (the paper's protocol): a cluster gets the class of more than ``purity`` of its central tiles.

    Parameters
    ----------
    true_labels : (n,) int ndarray
        Ground-truth class of each tile.
    central : sequence of int ndarrays
        Central tiles of each cluster (:func:`central_tiles`).
    purity : float
        A class must hold a share strictly above this.

    Returns
    -------
    list of int or None
        The class of each cluster, or None for a mixed (or empty) cluster.
    """
    out: list[int | None] = []
    true_labels = np.asarray(true_labels)
    for tiles in central:
        if len(tiles) == 0:
            out.append(None)
            continue
        values, counts = np.unique(true_labels[tiles], return_counts=True)
        best = int(np.argmax(counts))
        out.append(int(values[best]) if counts[best] / len(tiles) > purity else None)
    return out


# --- naming -------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClusterNaming:
    """Which prototype cluster shows which class.

    Attributes
    ----------
    classes : tuple of str
    colours : tuple of (r, g, b)
    cluster_class : dict of int to int
        0-based cluster -> index into ``classes``.
    mixed : frozenset of int
        0-based clusters judged mixed.
    """

    classes: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]
    cluster_class: dict[int, int]
    mixed: frozenset[int] = field(default_factory=frozenset)

    def unnamed(self, k: int) -> list[int]:
        """0-based clusters neither named nor marked mixed."""
        return [j for j in range(k) if j not in self.cluster_class and j not in self.mixed]

    def summary(self, k: int) -> dict[str, Any]:
        """Cluster numbers (1-based, as people see them) per class, mixed and unnamed."""
        return {
            "classes": {name: sorted(j + 1 for j, c in self.cluster_class.items() if c == i)
                        for i, name in enumerate(self.classes)},
            "mixed": sorted(j + 1 for j in self.mixed),
            "unnamed": [j + 1 for j in self.unnamed(k)],
        }


def _cluster_number(value: Any, k: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) and not (
            isinstance(value, str) and value.strip().isdigit()):
        raise InvalidInputError(f"{where}: cluster numbers must be integers 1..{k}; got {value!r}")
    number = int(value)
    if not 1 <= number <= k:
        raise InvalidInputError(f"{where}: cluster {number} does not exist; the clusters are numbered 1..{k}")
    return number - 1


def naming_from_mapping(
    mapping: Mapping[Any, str | None],
    k: int,
    colours: Mapping[str, Sequence[int]] | None = None,
    class_order: Sequence[str] | None = None,
) -> ClusterNaming:
    """A naming from ``{cluster number (1-based): class name}``, as a QuPath script would send it.

    A value of None or "" leaves the cluster unnamed; "mixed" (any case) marks it mixed.
    Classes are ordered as in ``class_order``, else by their first cluster; colours default
    to a palette.

    Raises
    ------
    InvalidInputError
        A cluster number outside 1..k, a bad class name or colour, or fewer than two classes.
    """
    colours = dict(colours or {})
    given = {v for v in mapping.values() if isinstance(v, str) and v.strip().lower() != MIXED}
    names: list[str] = [n for n in (class_order or []) if n in given]
    cluster_class: dict[int, int] = {}
    mixed: set[int] = set()
    for key in sorted(mapping, key=lambda v: _cluster_number(v, k, "cluster names")):
        j = _cluster_number(key, k, "cluster names")
        name = mapping[key]
        if name is None or (isinstance(name, str) and not name.strip()):
            continue
        if not isinstance(name, str):
            raise InvalidInputError(f"cluster {j + 1}: the class name must be a string; got {name!r}")
        if name.strip().lower() == MIXED:
            mixed.add(j)
            continue
        if name not in names:
            check_class_names([name])
            names.append(name)
        cluster_class[j] = names.index(name)
    check_class_names(names)
    unknown = sorted(set(colours) - set(names))
    if unknown:
        raise InvalidInputError(f"colours are given for class(es) {unknown} that name no cluster")
    rgb = tuple(check_colour(colours[n], f"the colour of class {n!r}") if n in colours else class_colour(i)
                for i, n in enumerate(names))
    naming = ClusterNaming(classes=tuple(names), colours=rgb, cluster_class=cluster_class, mixed=frozenset(mixed))
    _require_two_classes(naming)
    return naming


def _require_two_classes(naming: ClusterNaming) -> None:
    if len(naming.classes) < 2:
        got = f"only {naming.classes[0]!r}" if naming.classes else "none"
        raise InvalidInputError(
            f"a dictionary needs clusters named with at least two classes (got {got}): every tile of a new slide "
            "would otherwise get the same class. Name the clusters of at least one more tissue."
        )


def load_names(path: str | os.PathLike[str], k: int) -> ClusterNaming:
    """Read a names file (the format of :func:`names_template`).

    Raises
    ------
    ConfigError
        The file is missing or is not valid TOML.
    InvalidInputError
        Unknown keys, a cluster out of range or named twice, a bad name or colour, fewer than two classes.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the names file {str(path)!r}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the names file {str(path)!r} is not valid TOML: {exc}") from exc
    where = f"names file {path.name}"
    unknown = sorted(set(data) - {"classes", "mixed"})
    if unknown:
        raise InvalidInputError(f"{where}: unknown key(s) {unknown}; use [classes.NAME] tables and a mixed list")
    classes = data.get("classes", {})
    if not isinstance(classes, dict):
        raise InvalidInputError(f"{where}: 'classes' must be tables such as [classes.Tumor]")
    mixed_list = data.get("mixed", [])
    if not isinstance(mixed_list, list):
        raise InvalidInputError(f"{where}: 'mixed' must be a list of cluster numbers; got {mixed_list!r}")
    mapping: dict[int, str] = {}
    colours: dict[str, Any] = {}
    for name, table in classes.items():
        if not isinstance(table, dict):
            raise InvalidInputError(f"{where}: [classes.{name}] must be a table with 'clusters' (and 'color')")
        if name.strip().lower() == MIXED:
            raise InvalidInputError(f"{where}: list mixed clusters in the top-level 'mixed' list, not as a class")
        extra = sorted(set(table) - {"clusters", "color"})
        if extra:
            raise InvalidInputError(f"{where}: unknown key(s) {extra} in [classes.{name}]; use clusters and color")
        clusters = table.get("clusters")
        if not isinstance(clusters, list) or not clusters:
            raise InvalidInputError(f"{where}: [classes.{name}] needs clusters = [numbers of its clusters]")
        for value in clusters:
            j = _cluster_number(value, k, f"{where}, class {name!r}") + 1
            if j in mapping:
                raise InvalidInputError(f"{where}: cluster {j} is named both {mapping[j]!r} and {name!r}")
            mapping[j] = name
        if "color" in table:
            colours[name] = table["color"]
    for value in mixed_list:
        j = _cluster_number(value, k, f"{where}, mixed") + 1
        if j in mapping:
            raise InvalidInputError(f"{where}: cluster {j} is named {mapping[j]!r} and also listed as mixed")
        mapping[j] = MIXED
    return naming_from_mapping(mapping, k, colours, class_order=list(classes))


def names_template(k: int, run_name: str, k_source: str) -> str:
    """A names file to fill in for ``k`` prototype clusters (all unnamed)."""
    return (
        f"# Names of the {k} prototype clusters of run {run_name!r} (k from the {k_source}).\n"
        "# Look at each cluster's central tiles (prototypes.geojson in QuPath: \"Prototype j central r\")\n"
        "# and list, for each tissue class, the clusters that show it. A colour [r, g, b] is optional.\n"
        "# Clusters you leave out, or list under mixed, are dropped from the dictionary (Proto2Seg).\n"
        "# Class names must not contain ':'. Quote names with spaces: [classes.\"Immune cells\"].\n"
        "#\n"
        "# [classes.Tumor]\n"
        "# clusters = [1, 4]\n"
        "# color = [200, 30, 30]\n"
        "#\n"
        "# [classes.Stroma]\n"
        "# clusters = [2]\n"
        "\n"
        "mixed = []\n"
    )


def build_prototypes(over: Overclustering, naming: ClusterNaming) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The named cluster centres.

    Returns
    -------
    prototypes : (l, d) float32 ndarray
    prototype_class : (l,) int64 ndarray
        Index into ``naming.classes``.
    prototype_cluster : (l,) int64 ndarray
        0-based cluster each prototype comes from.
    """
    _require_two_classes(naming)
    bad = sorted(j + 1 for j in naming.cluster_class if j >= over.k)
    if bad:
        raise InvalidInputError(f"cluster(s) {bad} are named but there are only {over.k} clusters")
    clusters = np.array(sorted(naming.cluster_class), dtype=np.int64)
    sizes = np.bincount(over.labels, minlength=over.k)
    empty = [int(j) + 1 for j in clusters if sizes[j] == 0]
    if empty:
        raise InvalidInputError(f"cluster(s) {empty} have no tiles and cannot be prototypes")
    missing = [name for i, name in enumerate(naming.classes) if i not in naming.cluster_class.values()]
    if missing:
        raise InvalidInputError(f"class(es) {missing} name no cluster")
    return (over.centroids[clusters].astype(np.float32),
            np.array([naming.cluster_class[int(j)] for j in clusters], dtype=np.int64), clusters)


# --- the dictionary file ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrototypeDictionary:
    """A loaded, validated dictionary file.

    Attributes
    ----------
    path : Path
    classes : tuple of str
    colours : tuple of (r, g, b)
    prototypes : (l, d) float32 ndarray
    prototype_class : (l,) int64 ndarray
    prototype_cluster : (l,) int64 ndarray
        1-based cluster number in the run the prototype came from.
    config : PipelineConfig
        The configuration of that run: new slides are tiled and embedded the same way.
    encoder : dict
        ``model.json`` of the encoder (tile_px, training history, ...).
    provenance : dict
    """

    path: Path
    classes: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]
    prototypes: np.ndarray
    prototype_class: np.ndarray
    prototype_cluster: np.ndarray
    config: PipelineConfig
    encoder: dict[str, Any]
    provenance: dict[str, Any]

    def load_encoder(self) -> Any:
        """The fitted embedding method (``tissue.embeddings.Encoder``), on the CPU."""
        from ..tissue.embeddings import load_encoder

        with zipfile.ZipFile(self.path) as zf, tempfile.TemporaryDirectory(prefix="tumls-dict-") as tmp:
            for member in ("model.pt", "model.json"):
                Path(tmp, member).write_bytes(zf.read(member))
            return load_encoder(tmp)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_dictionary(
    path: str | os.PathLike[str],
    prototypes: np.ndarray,
    prototype_class: np.ndarray,
    classes: Sequence[str],
    colours: Sequence[Sequence[int]],
    model_dir: str | os.PathLike[str],
    config: PipelineConfig,
    provenance: Mapping[str, Any],
    prototype_cluster: np.ndarray | None = None,
) -> Path:
    """Write a dictionary file atomically (a temporary file in the same folder, then a rename).

    The file is a ZIP archive (``unzip -l`` lists it) holding:

    ``dictionary.json``
        ``format`` ("tumls-qp-prototype-dictionary") and ``format_version`` (1);
        ``classes``: ``[{"name", "color": [r, g, b]}]``; ``prototypes``:
        ``[{"class": index into classes, "cluster": 1-based cluster number in the source run}]``,
        one per row of ``prototypes.npy``; ``latent_dim``; ``encoder``: ``{"weights": "model.pt",
        "config": "model.json", "sha256": SHA-256 of model.pt, "method": the embedding method, "tile_px":
        the autoencoder's tile size (``tumls-ae``; else null)}``; ``pipeline_config``:
        the source run's configuration (tiling, stain checks, encoder training) as nested tables;
        ``provenance``: tool and version, creation time, source run and slide, the naming
        (clusters per class, mixed, unnamed), k and how it was chosen.
    ``prototypes.npy``
        (l, d) float32 prototypes (NumPy's ``.npy`` format; no pickles).
    ``model.pt``, ``model.json``
        The fitted embedding method the prototypes belong to (``embeddings.Encoder.save``).

    Parameters
    ----------
    path : path-like
        Any name; ``.tumlsdict`` is the convention.
    prototypes : (l, d) float ndarray
    prototype_class : (l,) int ndarray
    classes, colours : sequences
    model_dir : path-like
        Folder with ``model.pt`` and ``model.json`` (a run folder).
    config : PipelineConfig
    provenance : mapping
    prototype_cluster : (l,) int ndarray, optional
        1-based source clusters.
    """
    path = Path(path)
    names = check_class_names(classes)
    rgb = [check_colour(c, f"the colour of class {n!r}") for n, c in zip(names, colours)]
    prototypes = np.asarray(prototypes, dtype=np.float32)
    prototype_class = np.asarray(prototype_class, dtype=np.int64)
    cluster = (np.asarray(prototype_cluster, dtype=np.int64) if prototype_cluster is not None
               else np.arange(1, len(prototypes) + 1))
    try:
        weights = Path(model_dir, "model.pt").read_bytes()
        model_json = Path(model_dir, "model.json").read_bytes()
        model_meta = json.loads(model_json)
        method = str(model_meta.get("method", "tumls-ae"))
        tile_px = int(model_meta["tile_px"]) if method == "tumls-ae" else None
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise InvalidInputError(f"no usable encoder checkpoint (model.pt, model.json) in {str(model_dir)!r}: {exc}") from exc
    meta = {
        "format": DICTIONARY_FORMAT,
        "format_version": DICTIONARY_VERSION,
        "classes": [{"name": n, "color": list(c)} for n, c in zip(names, rgb)],
        "prototypes": [{"class": int(c), "cluster": int(j)} for c, j in zip(prototype_class, cluster)],
        "latent_dim": int(prototypes.shape[1]),
        "encoder": {"weights": "model.pt", "config": "model.json", "sha256": _sha256(weights), "method": method,
                    "tile_px": tile_px},
        "pipeline_config": config_to_dict(config),
        "provenance": {"tool": "tumls-qp", "version": __version__,
                       "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **provenance},
    }
    buffer = io.BytesIO()
    np.save(buffer, prototypes, allow_pickle=False)
    _validate(meta, prototypes, weights, model_json, str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("dictionary.json", json.dumps(meta, indent=2, allow_nan=False))
            zf.writestr("prototypes.npy", buffer.getvalue())
            zf.writestr("model.pt", weights)
            zf.writestr("model.json", model_json)
    except OSError as exc:
        raise OutputError(f"cannot write the dictionary {str(path)!r}: {exc.strerror or exc}") from exc
    return path


def _validate(meta: Any, prototypes: np.ndarray, weights: bytes, model_json: bytes, where: str) -> None:
    def fail(problem: str) -> None:
        raise InvalidInputError(f"{where} is not a valid prototype dictionary: {problem}")

    if not isinstance(meta, dict) or meta.get("format") != DICTIONARY_FORMAT:
        fail(f"dictionary.json has format {meta.get('format') if isinstance(meta, dict) else None!r}, expected "
             f"{DICTIONARY_FORMAT!r}")
    if meta.get("format_version") != DICTIONARY_VERSION:
        fail(f"format_version {meta.get('format_version')!r} is not supported (this tumls-qp reads version "
             f"{DICTIONARY_VERSION}); make the dictionary again with this version")
    classes = meta.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, dict) for c in classes):
        fail("'classes' must list at least two classes as {name, color}")
    try:
        check_class_names([c.get("name") for c in classes])
        for c in classes:
            check_colour(c.get("color"), f"the colour of class {c.get('name')!r}")
    except InvalidInputError as exc:
        fail(str(exc))
    if prototypes.ndim != 2 or len(prototypes) < 2 or not np.isfinite(prototypes).all():
        fail(f"prototypes.npy must be a finite (l, d) array with l >= 2; got shape {prototypes.shape}")
    if meta.get("latent_dim") != prototypes.shape[1]:
        fail(f"latent_dim {meta.get('latent_dim')!r} does not match prototypes.npy ({prototypes.shape[1]})")
    entries = meta.get("prototypes")
    if not isinstance(entries, list) or len(entries) != len(prototypes):
        fail(f"'prototypes' must have one entry per row of prototypes.npy ({len(prototypes)})")
    used = set()
    for i, entry in enumerate(entries):
        c = entry.get("class") if isinstance(entry, dict) else None
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(classes):
            fail(f"prototype {i} has class {c!r}, not an index into the {len(classes)} classes")
        used.add(c)
    if len(used) != len(classes):
        fail("every class must have at least one prototype")
    encoder = meta.get("encoder")
    if not isinstance(encoder, dict) or encoder.get("sha256") != _sha256(weights):
        fail("model.pt does not match the checksum in dictionary.json (the encoder was replaced or damaged)")
    method = encoder.get("method", "tumls-ae")
    try:
        model_meta = json.loads(model_json)
        if model_meta.get("method", "tumls-ae") != method:
            fail("model.json and dictionary.json disagree on the embedding method")
        if method == "tumls-ae" and int(model_meta["tile_px"]) != encoder.get("tile_px"):
            fail("model.json and dictionary.json disagree on tile_px")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        fail(f"model.json is unreadable: {exc}")
    if not isinstance(meta.get("pipeline_config"), dict):
        fail("'pipeline_config' is missing")
    try:
        config = config_from_dict(meta["pipeline_config"])
    except ConfigError as exc:
        fail(f"pipeline_config: {exc}")
    if config.embedding.method != method:
        fail(f"the encoder's method {method!r} differs from the pipeline config's embedding.method")
    if method == "tumls-ae" and config.tiles.tile_px != encoder.get("tile_px"):
        fail("the encoder's tile_px differs from the pipeline config's tiles.tile_px")
    if not isinstance(meta.get("provenance"), dict):
        fail("'provenance' is missing")


def load_dictionary(path: str | os.PathLike[str]) -> PrototypeDictionary:
    """Read and validate a dictionary file written by :func:`save_dictionary` (no torch needed).

    Raises
    ------
    InvalidInputError
        The file is missing, not a dictionary, damaged, of an unknown format version, or
        inconsistent (the message says which).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"dictionary file not found: {str(path)!r}")
    try:
        with zipfile.ZipFile(path) as zf:
            missing = [m for m in _MEMBERS if m not in zf.namelist()]
            if missing:
                raise InvalidInputError(f"{str(path)!r} is not a valid prototype dictionary: missing {missing}")
            meta = json.loads(zf.read("dictionary.json"))
            prototypes = np.load(io.BytesIO(zf.read("prototypes.npy")), allow_pickle=False)
            weights = zf.read("model.pt")
            model_json = zf.read("model.json")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise InvalidInputError(f"{str(path)!r} is not a readable prototype dictionary (a ZIP file written by "
                                f"tumls-qp make-dictionary): {exc}") from exc
    _validate(meta, np.asarray(prototypes), weights, model_json, repr(str(path)))
    return PrototypeDictionary(
        path=path,
        classes=tuple(c["name"] for c in meta["classes"]),
        colours=tuple(tuple(int(v) for v in c["color"]) for c in meta["classes"]),
        prototypes=np.asarray(prototypes, dtype=np.float32),
        prototype_class=np.array([e["class"] for e in meta["prototypes"]], dtype=np.int64),
        prototype_cluster=np.array([e.get("cluster", i + 1) for i, e in enumerate(meta["prototypes"])],
                                   dtype=np.int64),
        config=config_from_dict(meta["pipeline_config"]),
        encoder=json.loads(model_json),
        provenance=meta["provenance"],
    )


# --- queries ------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QueryResult:
    """Classes of a slide's tiles from a dictionary.

    Attributes
    ----------
    labels : (n,) int64 ndarray
        Class of each tile (index into the dictionary's classes).
    confidence : (n,) float32 ndarray
        Relative margin of the query (see the module docstring), in [0, 1].
    distance : (n,) float32 ndarray
        Distance of each tile to the nearest prototype of its class.
    method : str
        ``"direct"`` or ``"cluster-then-query"``.
    groups : (n,) int64 ndarray or None
        Cluster-then-Query's group of each tile.
    n_groups : int
        γ·d (capped at the number of distinct tiles); 0 for Direct-Query.
    d : int
        Classes Direct-Query found on the slide (Cluster-then-Query only; else 0).
    """

    labels: np.ndarray
    confidence: np.ndarray
    distance: np.ndarray
    method: str
    groups: np.ndarray | None = None
    n_groups: int = 0
    d: int = 0


def _check_dictionary_arrays(prototypes: Any, prototype_class: Any, dim: int) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(prototypes, dtype=np.float64)
    c = np.asarray(prototype_class, dtype=np.int64)
    if p.ndim != 2 or len(p) == 0 or p.shape[1] != dim:
        raise InvalidInputError(f"prototypes must be an (l, {dim}) array matching the embeddings; got shape {p.shape}")
    if c.shape != (len(p),) or c.min() < 0:
        raise InvalidInputError(f"prototype_class must give one class index per prototype; got shape {c.shape}")
    return p, c


def _query(points: np.ndarray, prototypes: np.ndarray, prototype_class: np.ndarray) -> tuple[np.ndarray, ...]:
    """Nearest prototype's class, the relative margin to the nearest other class, and the distance."""
    d2 = (np.einsum("ij,ij->i", points, points)[:, None] - 2.0 * points @ prototypes.T
          + np.einsum("ij,ij->i", prototypes, prototypes)[None, :])
    d = np.sqrt(np.maximum(d2, 0.0))
    nearest = d.argmin(axis=1)
    labels = prototype_class[nearest]
    d1 = d[np.arange(len(points)), nearest]
    # Distance to each class = to its nearest prototype; the confidence is the tool's one definition.
    classes = np.unique(prototype_class)
    class_d = np.stack([d[:, prototype_class == c].min(axis=1) for c in classes], axis=1)
    margin = assignment_confidence(class_d, np.searchsorted(classes, labels))
    return labels.astype(np.int64), margin, d1


def direct_query(latents: np.ndarray, prototypes: np.ndarray, prototype_class: np.ndarray) -> QueryResult:
    """Direct-Query: each tile takes the class of its nearest prototype.

    Parameters
    ----------
    latents : (n, d) float ndarray
        Embeddings made with the dictionary's encoder.
    prototypes : (l, d) float ndarray
    prototype_class : (l,) int ndarray
    """
    x = _check_latents(latents)
    p, c = _check_dictionary_arrays(prototypes, prototype_class, x.shape[1])
    labels, margin, distance = _query(x, p, c)
    return QueryResult(labels=labels, confidence=margin.astype(np.float32), distance=distance.astype(np.float32),
                       method="direct")


def cluster_then_query(latents: np.ndarray, prototypes: np.ndarray, prototype_class: np.ndarray, *,
                       gamma: int = DEFAULT_GAMMA, seed: int = 0, n_init: int = 10) -> QueryResult:
    """Cluster-then-Query: k-means++ groups the tiles into γ·d clusters; each group takes its centre's class.

    Parameters
    ----------
    latents : (n, d) float ndarray
    prototypes : (l, d) float ndarray
    prototype_class : (l,) int ndarray
    gamma : int
        Groups per class that Direct-Query finds on the slide (γ ≥ 1; the paper's 5).
    seed : int
    n_init : int
        k-means restarts.
    """
    from sklearn.cluster import KMeans

    if isinstance(gamma, bool) or not isinstance(gamma, (int, np.integer)) or gamma < 1:
        raise InvalidInputError(f"gamma must be an integer >= 1; got {gamma!r}")
    x = _check_latents(latents)
    p, c = _check_dictionary_arrays(prototypes, prototype_class, x.shape[1])
    direct_labels, _, _ = _query(x, p, c)
    d = len(np.unique(direct_labels))
    n_distinct = len(np.unique(x.round(6), axis=0))
    n_groups = max(1, min(int(gamma) * d, n_distinct))
    if n_groups == 1:
        groups = np.zeros(len(x), dtype=np.int64)
        centres = x.mean(axis=0, keepdims=True)
    else:
        km = KMeans(n_clusters=n_groups, n_init=n_init, random_state=seed).fit(x)
        groups, centres = km.labels_.astype(np.int64), km.cluster_centers_
    group_labels, group_margin, _ = _query(centres, p, c)
    labels = group_labels[groups]
    # Distance of each tile to the nearest prototype of the class its group was given.
    d2 = (np.einsum("ij,ij->i", x, x)[:, None] - 2.0 * x @ p.T + np.einsum("ij,ij->i", p, p)[None, :])
    own = np.where(c[None, :] == labels[:, None], np.maximum(d2, 0.0), np.inf)
    distance = np.sqrt(own.min(axis=1))
    return QueryResult(labels=labels, confidence=group_margin[groups].astype(np.float32),
                       distance=distance.astype(np.float32), method="cluster-then-query", groups=groups,
                       n_groups=n_groups, d=d)
