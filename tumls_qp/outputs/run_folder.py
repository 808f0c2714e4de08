"""The run folder: the one owner of its format. File names, columns and the manifest are defined here only.

Every stage hands its results to the next through a folder of files. This module is the only
one that knows their names, their columns and the layout of ``manifest.json``: the pipeline
hands it one result object (:class:`SlideAnalysis`), and everything that reads a run folder
(the PDF report, the label-efficient methods, the QuPath project writer, the server) reads it
through :func:`read_run`, typed, with the arrays loaded when first used.

Kinds
-----
``manifest.json`` says which kind of folder it heads (``"kind"``), and each kind declares its files:

``analysis``
    A slide analysed by ``tumls-qp analyze`` (:func:`write_run` of a :class:`SlideAnalysis`;
    :class:`AnalysisManifest`). Read with :func:`read_run`. Its ``prototypes/`` subfolder,
    written by ``tumls-qp prototypes``, is the kind ``prototypes`` (:func:`write_prototype_clusters`).
``dictionary``
    A slide labelled by a prototype dictionary (``tumls-qp apply-dictionary``;
    :class:`DictionaryAnalysis`, :class:`DictionaryManifest`): its ``tiles.csv`` holds the two
    queries' classes, its ``embeddings.npz`` the latents and boxes, so that seeded clustering
    reads it like an analysis (:func:`read_run` with ``kinds``).
``cluster-tiles``
    A folder of tile images embedded and clustered (``tumls-qp cluster-tiles``;
    :class:`TileClustersAnalysis`, :class:`TileClustersManifest`): per image a file name instead
    of a box.

Format version
--------------
``manifest.json`` carries ``"format_version": FORMAT_VERSION``. A reader refuses any other
version with a :class:`~tumls_qp.errors.FormatVersionError` that names the version found and
what to do (re-run the analysis, or upgrade tumls-qp); it never guesses. Folders written before
format versions existed (tumls-qp 0.1, no ``format_version``) are format 1.

``FORMAT_VERSION`` is the layout of a release. Once a release has written folders in it, any
change to the layout needs the next number: a file, column or manifest field added, removed or
renamed, or a change of its meaning, unit or dtype (readers are strict: a manifest with a
missing or unknown field is an error, so no change is too small). Changes made before the next
release share its one bump; format 2 is not released yet, so additions to it stay format 2.

Adding to a run folder
----------------------
All in this module, plus the stage that computes the value:

- **A manifest field**: add it to the section's dataclass below (e.g. :class:`ClustersInfo`) and
  set it where the section is built (``_analysis_manifest``). Writing (JSON) and reading (typed,
  checked) follow from the dataclass.
- **A column of a CSV**: add its name to the table's columns (e.g. ``TILE_COLUMNS``), its value
  to the writer (e.g. ``_write_tiles``) and its field to the reader's table (e.g. :class:`TileTable`).
- **A file**: a name constant, a field of :class:`SlideAnalysis` holding what the stage produced,
  its writer in ``_write_analysis``, and a lazy reader on :class:`RunFolder`; and a row in the
  README's table ("Outputs: the run folder").

Then extend the round-trip test (``tests/test_run_folder.py``), which writes every field and
reads it back, and bump ``FORMAT_VERSION`` if the release it goes into needs it (see above).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import platform
import re
import resource
import shutil
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Mapping, NamedTuple, Sequence, Union

import numpy as np
from PIL import Image

from .. import __version__
from ..cells.features import NUCLEUS_FEATURES, TISSUE_FEATURES
from ..cells.glands import GLAND_MEASUREMENTS, GLAND_QUPATH_NAMES, GLAND_TISSUE_FEATURES
from ..classes import GLAND_CLASS, GLAND_COLOUR, NUCLEUS_CLASS, NUCLEUS_COLOUR
from ..config import PipelineConfig, config_from_dict, config_to_dict, dump_config
from ..errors import ConfigError, FormatVersionError, InvalidInputError
from ..files import atomic_write, replace_dir, staging_dir, write_csv, write_json
from ..interactive.embedding_colours import EmbeddingColours
from ..interactive.prototypes import Overclustering
from ..provenance import package_versions
from ..slide import Slide
from ..tissue.clusters import Clustering
from ..tissue.regions import RegionMap, block_regions, region_geometries
from ..tissue.representatives import Representative
from ..tissue.tiles import TissueTiles
from . import _report_figures as figures
from .classified import DICTIONARY_SCORE, classified_features, embedding_colour_features, prototype_features
from .geojson import feature_collection, make_feature, read_geojson, require_valid, tissue_features, write_geojson

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    # file names
    "MANIFEST", "TISSUE_GEOJSON", "TILES_CSV", "REPRESENTATIVES_CSV", "TRAINING_CSV", "NUCLEI_CSV",
    "PATCH_FEATURES_CSV", "FEATURES_CSV", "EMBEDDINGS_NPZ", "DENDROGRAM_NPZ", "RECONSTRUCTIONS_NPZ",
    "THUMBNAIL_PNG", "REGIONS_PNG", "CONFIG_TOML", "MODEL_FILES", "PATCHES_DIR", "REPORT_PDF", "EMBEDDING_COLOURS_GEOJSON",
    "EMBEDDING_COLOURS_NPZ", "EMBEDDING_COLOURS_PNG", "DICTIONARY_GEOJSON", "CLUSTERS_CSV", "PROTOTYPES_DIR",
    "PROTOTYPE_CLUSTERS_NPZ", "PROTOTYPES_GEOJSON", "NAMES_TOML", "GLANDS_CSV",
    # columns
    "TILE_COLUMNS", "REPRESENTATIVE_COLUMNS", "TRAINING_COLUMNS", "NUCLEUS_ID_COLUMNS", "PATCH_ID_COLUMNS",
    "DICTIONARY_TILE_COLUMNS", "CLUSTER_COLUMNS", "TILE_REPRESENTATIVE_COLUMNS", "GLAND_ID_COLUMNS",
    # manifests
    "SlideInfo", "TilesInfo", "EmbeddingInfo", "ClustersInfo", "RegionsInfo", "RepresentativeInfo", "NucleiInfo", "GlandsInfo",
    "OutputsInfo",
    "Environment", "EngineInfo", "LOCAL_ENGINE", "AnalysisManifest", "DictionaryInfo", "DictionaryTilesInfo", "QueryInfo", "DictionaryManifest",
    "TileFolderInfo", "TileClustersInfo", "TileClustersManifest", "ElbowInfo", "PrototypesManifest",
    # writing
    "Patch", "PatchNuclei", "PatchGlands", "SlideAnalysis", "DictionaryAnalysis", "TileClustersAnalysis",
    "PrototypeClusters",
    "RunStaging", "StagedRun", "write_run", "write_prototype_clusters", "write_embedding_colours",
    # reading
    "RunFolder", "Table", "TileTable", "AnalysisEmbeddings", "DictionaryEmbeddings", "RepresentativeFiles",
    "read_run", "read_manifest", "folder_kind", "read_prototype_clusters", "display_name", "load_labels",
]

#: The layout version written into every ``manifest.json`` (see the module docstring for when to bump it).
FORMAT_VERSION = 2
#: The kinds of folder a manifest can head.
KINDS = ("analysis", "dictionary", "cluster-tiles", "prototypes")

# --- file names -----------------------------------------------------------------------------------------------------

MANIFEST = "manifest.json"
#: QuPath objects of an analysis (``tissue.geojson.gz`` with ``output.gzip``).
TISSUE_GEOJSON = "tissue.geojson"
TILES_CSV = "tiles.csv"
REPRESENTATIVES_CSV = "representatives.csv"
TRAINING_CSV = "training.csv"
NUCLEI_CSV = "nuclei.csv"
PATCH_FEATURES_CSV = "patch_features.csv"
FEATURES_CSV = "features.csv"
EMBEDDINGS_NPZ = "embeddings.npz"
DENDROGRAM_NPZ = "dendrogram.npz"
RECONSTRUCTIONS_NPZ = "reconstructions.npz"
THUMBNAIL_PNG = "thumbnail.png"
#: The tissue regions at the tissue level (the thumbnail's size): 16-bit PNG, 0 = no region, t = tissue t.
REGIONS_PNG = "regions.png"
CONFIG_TOML = "config.toml"
#: The fitted embedding method (``tissue.embeddings.Encoder.save``; ``load_encoder`` reads it): weights, then
#: the method, its settings and history.
MODEL_FILES = ("model.pt", "model.json")
PATCHES_DIR = "patches"
#: The per-case PDF, rendered from the other files (``outputs.pdf_report``).
REPORT_PDF = "report.pdf"
#: The embedding-colour tile layer (``.gz`` with ``output.gzip``), its arrays and (``tumls-qp embedding-colours``,
#: ``cluster-tiles``) its figure.
EMBEDDING_COLOURS_GEOJSON = "embedding_colours.geojson"
EMBEDDING_COLOURS_NPZ = "embedding_colours.npz"
EMBEDDING_COLOURS_PNG = "embedding_colours.png"
#: QuPath objects of a dictionary run (``.gz`` with ``--gzip``).
DICTIONARY_GEOJSON = "dictionary.geojson"
#: One row per tile image of a cluster-tiles folder.
CLUSTERS_CSV = "clusters.csv"
#: Prototype clusters of a run, to be named (``tumls-qp prototypes``): a subfolder of the run folder.
PROTOTYPES_DIR = "prototypes"
PROTOTYPE_CLUSTERS_NPZ = "clusters.npz"
PROTOTYPES_GEOJSON = "prototypes.geojson"
NAMES_TOML = "names.toml"
#: One row per gland of the representatives (with ``glands.enabled``).
GLANDS_CSV = "glands.csv"


def _patch_name(tissue: int, rank: int, suffix: str = ".jpg") -> str:
    """A representative's file in ``patches/`` (``tissue`` 1..k): ``.jpg`` the image, ``.labels.png`` its nuclei,
    ``.glands.png`` its glands."""
    return f"{PATCHES_DIR}/tissue{tissue}-rank{rank}{suffix}"


# --- columns --------------------------------------------------------------------------------------------------------

#: ``tiles.csv`` of an analysis: one row per tissue tile, in the order of ``embeddings.npz``; box in level-0 px,
#: tissue 1..k, uncertainty 0-1, distance to the tissue's centroid in latent space, tissue fraction 0-1,
#: confidence 0-1 (``tissue.clusters.assignment_confidence``).
TILE_COLUMNS = ("x", "y", "w", "h", "tissue", "uncertainty", "distance", "tissue_fraction", "confidence")
#: ``representatives.csv``: per tissue its best tiles; ``tile`` is the row in ``tiles.csv``; the box is the tile's,
#: ``patch_x .. patch_h`` the area read at full resolution (level-0 px).
REPRESENTATIVE_COLUMNS = ("tissue", "rank", "tile", "x", "y", "w", "h", "uncertainty", "distance", "confidence",
                          "patch_x", "patch_y", "patch_w", "patch_h")
#: ``training.csv``: the loss per epoch of the embedding's training. ``tumls-ae``: these columns (MSE);
#: ``contrastive``: ``epoch, loss`` (NT-Xent); ``vade``: ``epoch, pretrain_mse, loss`` (pretraining MSE, then the
#: negative ELBO; empty in the other phase); ``handcrafted``, ``textons``: ``epoch, loss`` and no rows
#: (``embeddings.training_table``).
TRAINING_COLUMNS = ("epoch", "train_mse", "val_mse")
#: ``nuclei.csv`` starts with these, then one column per ``cells.features.NUCLEUS_FEATURES`` (but the label).
NUCLEUS_ID_COLUMNS = ("tissue", "rank", "label")
#: ``patch_features.csv`` starts with ``tissue, rank``, ``features.csv`` with ``tissue``; then one column per
#: ``cells.features.TISSUE_FEATURES``.
PATCH_ID_COLUMNS = ("tissue", "rank")
#: ``glands.csv`` starts with these, then one column per ``cells.glands.GLAND_MEASUREMENTS`` (named as
#: ``GLAND_QUPATH_NAMES`` says). ``features.csv`` adds one column per ``cells.glands.GLAND_TISSUE_FEATURES``.
GLAND_ID_COLUMNS = ("tissue", "rank", "label")
#: ``tiles.csv`` of a dictionary run: both queries per tile (class names, confidence 0-1, distance, group 1..).
DICTIONARY_TILE_COLUMNS = ("x", "y", "w", "h", "class_dq", "confidence_dq", "distance_dq", "class_cq",
                           "confidence_cq", "group_cq")
#: ``clusters.csv`` of a cluster-tiles folder.
CLUSTER_COLUMNS = ("file", "cluster", "uncertainty", "distance")
#: ``representatives.csv`` of a cluster-tiles folder.
TILE_REPRESENTATIVE_COLUMNS = ("cluster", "rank", "file", "uncertainty", "distance")

#: Packages whose versions every manifest records.
_DEPENDENCIES = ("numpy", "scipy", "scikit-image", "scikit-learn", "shapely", "tiffslide", "tifffile",
                 "imagecodecs", "pillow", "torch", "matplotlib", "reportlab", "umap-learn")
#: How ``tiles.csv`` and the other tables write floats.
_DIGITS = {"uncertainty": "{:.5f}", "distance": "{:.5f}", "tissue_fraction": "{:.3f}", "mse": "{:.6g}",
           "feature": "{:.6g}", "confidence": "{:.4f}"}


def _fmt(kind: str, value: Any) -> str:
    return _DIGITS[kind].format(float(value))


# --- the manifest ---------------------------------------------------------------------------------------------------
# Frozen dataclasses, written to JSON field by field in declaration order (dict keys as strings) and read back
# with every value checked against its annotation (``_from_json``).

@dataclass(frozen=True)
class SlideInfo:
    """The slide: where it was, what it is, its pixel size (``mpp``, µm/px at level 0) and where that came from."""

    path: str
    name: str
    quickhash: str
    vendor: str | None
    width_px: int
    height_px: int
    #: (width, height) px of each pyramid level.
    levels: tuple[tuple[int, int], ...]
    mpp: float
    #: ``"file"``, ``"caller"`` or ``"override"``.
    mpp_source: str
    objective_power: float | None

    @classmethod
    def of(cls, slide: Slide, quickhash: str) -> SlideInfo:
        """The record of an open slide."""
        return cls(path=str(slide.path.resolve()), name=slide.path.name, quickhash=quickhash, vendor=slide.vendor,
                   width_px=slide.dimensions[0], height_px=slide.dimensions[1],
                   levels=tuple((int(w), int(h)) for w, h in slide.level_dimensions), mpp=slide.mpp,
                   mpp_source=slide.mpp_source, objective_power=slide.objective_power)


@dataclass(frozen=True)
class TilesInfo:
    """The tile grid: tile side in µm, level-0 px and tissue-level px; grid (columns, rows); kept and dropped."""

    tile_um: float
    tile_size_px: int
    tile_px: int
    lowres_mpp: float
    grid: tuple[int, int]
    total: int
    kept: int
    #: Dropped tiles per reason (``background``, ``artefact``).
    dropped: dict[str, int]


@dataclass(frozen=True)
class EmbeddingInfo:
    """How tiles became vectors: the method (``embedding.method``), cache hit or miss, its training.

    ``tumls-ae``: epochs (the kept one: ``best_epoch``), reconstruction MSE and tiles per split
    (train, val, test). The other methods: ``epochs`` trained (0 for ``handcrafted``, ``textons``),
    ``best_epoch`` the last one, ``mse`` empty, ``n_tiles`` ``{"train": n}``; ``final_loss`` the
    last epoch's loss; ``view_um``/``view_mpp`` the field and pixel size of the views; ``vade``:
    ``bic`` of its mixture per k considered; ``pretrained``: the timm ``architecture``, the ``checkpoint``
    file's name and its ``checkpoint_sha256`` (None for the other methods).
    """

    cache: str
    epochs: int
    best_epoch: int
    early_stopped: bool
    mse: dict[str, float]
    n_tiles: dict[str, int]
    initialised_from: str | None
    train_seconds: float
    method: str = "tumls-ae"
    #: Length of a tile's vector.
    dim: int = 256
    view_um: float | None = None
    view_mpp: float | None = None
    final_loss: float | None = None
    bic: dict[int, float] = field(default_factory=dict)
    architecture: str | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None


@dataclass(frozen=True)
class ClustersInfo:
    """The tissues: k and how it was chosen (dendrogram gaps per k, split statistic), the uncertainty scale."""

    k: int
    k_source: str
    gaps: dict[int, float]
    split_statistic: float | None
    uncertainty_scale: float
    #: Tiles per tissue on this slide, index 0 = tissue 1.
    tiles_per_tissue: tuple[int, ...]
    #: Tiles per tissue over the analysis (the cohort's, with ``--cohort``).
    cohort_tiles_per_tissue: tuple[int, ...]
    #: ``kmeans`` or ``graph`` (``clusters.method``; k-means when graph clustering fell back, see the warnings),
    #: or ``mixture`` when the embedding's own mixture (``vade``) assigned the tiles.
    method: str
    #: How many resamples of the tiles chose each k (``clusters.resamples``; empty when k was given or came
    #: from the embedding's mixture).
    k_votes: dict[int, int] = field(default_factory=dict)
    #: (k, votes) of the second most chosen k: how close another k came. None: unanimous, or no vote.
    runner_up: tuple[int, int] | None = None


@dataclass(frozen=True)
class RegionsInfo:
    """The tissue regions (``tissue.regions``): the method that drew them (``felzenszwalb``, or ``blocks`` asked for
    or fallen back to), segments per scale (finest first), each tissue's region area in µm² (1..k), and the share
    of the tissue tiles' area whose tissue the refinement changed (glass left out included)."""

    method: str
    segments: tuple[int, ...]
    area_um2: dict[int, float]
    changed_fraction: float


@dataclass(frozen=True)
class RepresentativeInfo:
    """A representative: ``tissue`` 1..k, ``rank`` 1..N, ``tile`` (row of ``tiles.csv``), its patch file and µm/px."""

    tissue: int
    rank: int
    tile: int
    distance: float
    uncertainty: float
    patch: str
    patch_mpp: float
    #: Confidence of the tile's assignment (0-1), and whether it reached ``representatives.min_confidence``.
    confidence: float
    confident: bool
    #: The area read at full resolution, (x, y, width, height) in level-0 px.
    patch_box: tuple[int, int, int, int]


@dataclass(frozen=True)
class NucleiInfo:
    """The nucleus level: segmented representatives, nuclei, nuclei per tissue (1..k)."""

    enabled: bool
    representatives_segmented: int
    nuclei: int
    per_tissue: dict[int, int]


@dataclass(frozen=True)
class GlandsInfo:
    """The gland level: representatives segmented, glands, glands per tissue (1..k), seconds spent on them."""

    enabled: bool
    representatives_segmented: int
    glands: int
    per_tissue: dict[int, int]
    seconds: float


@dataclass(frozen=True)
class OutputsInfo:
    """The QuPath files: the objects' GeoJSON and its feature count; the embedding-colour layer (None: not written)."""

    geojson: str
    geojson_features: int
    embedding_colours: str | None = None


@dataclass(frozen=True)
class Environment:
    """What computed the result: Python, platform, the torch device, package versions, peak memory (MB)."""

    python: str
    platform: str
    device: str
    dependencies: dict[str, str]
    peak_rss_mb: float

    @classmethod
    def now(cls, device: str) -> Environment:
        """This process."""
        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = usage / 1024 if sys.platform != "darwin" else usage / (1024 * 1024)
        return cls(python=platform.python_version(), platform=platform.platform(), device=device,
                   dependencies=package_versions(_DEPENDENCIES), peak_rss_mb=round(peak, 1))


@dataclass(frozen=True)
class EngineInfo:
    """What ran the analysis: ``engine`` is ``"local"`` (the calling process) or ``"dask"``.

    With Dask: the scheduler's address, the worker that read the slide and wrote its run folder
    (``worker``), and the worker that trained the model and embedded the tiles (``model_worker``:
    the same one for a slide analysed alone, one worker for the whole of a ``--cohort`` analysis).
    """

    engine: str
    scheduler: str | None = None
    worker: str | None = None
    model_worker: str | None = None


#: The engine record of an analysis run in the calling process.
LOCAL_ENGINE = EngineInfo(engine="local")


@dataclass(frozen=True)
class AnalysisManifest:
    """``manifest.json`` of an analysis run folder."""

    KIND: ClassVar[str] = "analysis"
    #: The tumls-qp version that wrote it, and when (ISO 8601, UTC).
    version: str
    created: str
    seed: int
    slide: SlideInfo
    tiles: TilesInfo
    embedding: EmbeddingInfo
    clusters: ClustersInfo
    representatives: tuple[RepresentativeInfo, ...]
    nuclei: NucleiInfo
    #: Run folder names of the ``--cohort`` analysis this slide belongs to; None when analysed alone.
    cohort: tuple[str, ...] | None
    outputs: OutputsInfo
    #: Seconds per pipeline stage (summed over the slides of one analysis).
    timings_s: dict[str, float]
    #: Where it ran: in-process or on a Dask cluster (which worker).
    engine: EngineInfo
    environment: Environment
    warnings: tuple[str, ...]
    #: The effective configuration (also in ``config.toml``).
    config: PipelineConfig
    regions: RegionsInfo
    #: The glands of the representatives (``glands.enabled``); None in folders written before glands existed.
    glands: GlandsInfo | None = None


@dataclass(frozen=True)
class DictionaryInfo:
    """The dictionary a slide was labelled with: file and SHA-256, classes, prototypes, the run it came from."""

    path: str
    sha256: str
    classes: tuple[str, ...]
    prototypes: int
    source_run: str | None


@dataclass(frozen=True)
class DictionaryTilesInfo:
    """Tissue tiles of a dictionary run and their size."""

    kept: int
    tile_um: float
    tile_px: int


@dataclass(frozen=True)
class QueryInfo:
    """The queries: which one the GeoJSON shows, γ, d, groups, seed; tiles per class of each query; agreement."""

    shown: str
    gamma: int
    d: int
    groups: int
    seed: int
    #: ``{"dq": {class: tiles}, "cq": {...}}``.
    tiles_per_class: dict[str, dict[str, int]]
    agreement_dq_cq: float


@dataclass(frozen=True)
class DictionaryManifest:
    """``manifest.json`` of a slide labelled by a dictionary."""

    KIND: ClassVar[str] = "dictionary"
    version: str
    created: str
    dictionary: DictionaryInfo
    slide: SlideInfo
    tiles: DictionaryTilesInfo
    query: QueryInfo
    outputs: OutputsInfo
    seconds: float
    environment: Environment
    config: PipelineConfig


@dataclass(frozen=True)
class TileFolderInfo:
    """The tile images: how many, their size after resampling, how they were resampled, their sizes as read."""

    n: int
    tile_px: int
    resampling: str
    cropped: int
    #: Distinct ``"WxH"`` sizes of the images as read (at most 20).
    source_sizes: tuple[str, ...]


@dataclass(frozen=True)
class TileClustersInfo:
    """The clusters of a tile folder: k and how it was chosen, the uncertainty scale, tiles per cluster."""

    k: int
    k_source: str
    gaps: dict[int, float]
    split_statistic: float | None
    uncertainty_scale: float
    tiles_per_cluster: tuple[int, ...]
    #: Reduction used for ``embedding_colours.png`` (``umap`` or ``pca``).
    embedding_colours: str
    #: As in :class:`ClustersInfo`.
    k_votes: dict[int, int] = field(default_factory=dict)
    runner_up: tuple[int, int] | None = None


@dataclass(frozen=True)
class TileClustersManifest:
    """``manifest.json`` of a cluster-tiles folder."""

    KIND: ClassVar[str] = "cluster-tiles"
    version: str
    created: str
    seed: int
    #: The tile folder that was read.
    folder: str
    tiles: TileFolderInfo
    embedding: EmbeddingInfo
    clusters: TileClustersInfo
    timings_s: dict[str, float]
    environment: Environment
    config: PipelineConfig


@dataclass(frozen=True)
class ElbowInfo:
    """The elbow rule: tiles the curve was computed on, its k, and D(k) for k = 1, 2, ..."""

    n_tiles: int
    k: int
    inertia: tuple[float, ...]


@dataclass(frozen=True)
class PrototypesManifest:
    """``prototypes/manifest.json``: the prototype clusters of a run and the embeddings they were made from."""

    KIND: ClassVar[str] = "prototypes"
    version: str
    created: str
    k: int
    #: ``"elbow"`` or ``"user"``.
    k_source: str
    k_range: tuple[int, int]
    #: Central tiles per cluster.
    t: int
    seed: int
    tiles_per_cluster: tuple[int, ...]
    #: The elbow rule's curve; None when k was given.
    elbow: ElbowInfo | None
    #: SHA-256 of the run's ``embeddings.npz``: clusters of other embeddings are stale.
    embeddings_sha256: str


_MANIFESTS: dict[str, type] = {m.KIND: m for m in (AnalysisManifest, DictionaryManifest, TileClustersManifest,
                                                    PrototypesManifest)}  # type: ignore[attr-defined]
_Manifest = Union[AnalysisManifest, DictionaryManifest, TileClustersManifest, PrototypesManifest]


class _Bad(Exception):
    """A manifest value that does not fit its field: where, and what was wrong."""


def _to_json(value: Any) -> Any:
    if isinstance(value, PipelineConfig):
        return config_to_dict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_json(tp: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) as type ``tp``, checked; raises _Bad naming the field."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is PipelineConfig:
        try:
            return config_from_dict(value if isinstance(value, dict) else {"_": value})
        except ConfigError as exc:
            raise _Bad(f"{where}: {exc}") from exc
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Bad(f"{where} must be an object; got {value!r}")
        hints = typing.get_type_hints(tp)
        known = {f.name: f for f in fields(tp)}
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise _Bad(f"{where} has unknown field(s) {', '.join(unknown)}")
        missing = [n for n, f in known.items() if n not in value
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise _Bad(f"{where} lacks the field(s) {', '.join(missing)}")
        return tp(**{n: _from_json(hints[n], v, f"{where}.{n}") for n, v in value.items()})
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        [inner] = [a for a in args if a is not type(None)]
        return _from_json(inner, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise _Bad(f"{where} must be a list; got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_json(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _Bad(f"{where} must have {len(args)} values; got {value!r}")
        return tuple(_from_json(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise _Bad(f"{where} must be an object; got {value!r}")
        key_type, value_type = args
        out = {}
        for k, v in value.items():
            if key_type is int and not re.fullmatch(r"-?\d+", k):
                raise _Bad(f"{where} keys must be integers; got {k!r}")
            out[int(k) if key_type is int else k] = _from_json(value_type, v, f"{where}[{k!r}]")
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise _Bad(f"{where} must be true or false; got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"{where} must be an integer; got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad(f"{where} must be a number; got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _Bad(f"{where} must be a string; got {value!r}")
        return value
    raise TypeError(f"manifest field type {tp!r} is not supported")  # a bug in a dataclass above


def _write_manifest(folder: Path, manifest: Any) -> None:
    write_json(folder / MANIFEST, {"tool": "tumls-qp", "kind": manifest.KIND, "format_version": FORMAT_VERSION,
                                   **_to_json(manifest)})


def _command(kind: str) -> str:
    return {"analysis": "tumls-qp analyze SLIDE --out DIR", "dictionary": "tumls-qp apply-dictionary DICT SLIDE --out DIR",
            "cluster-tiles": "tumls-qp cluster-tiles DIR --out OUT",
            "prototypes": "tumls-qp prototypes RUN_DIR"}[kind]


def _format1_kind(data: dict[str, Any]) -> str:
    """The kind of a format-1 manifest, which named its command instead (none for an analysis)."""
    command = data.get("command")
    return {None: "analysis", "apply-dictionary": "dictionary"}.get(command, str(command))


def folder_kind(folder: str | Path) -> str | None:
    """The kind of tumls-qp folder ``folder`` holds, in any format version; None when it holds none.

    For deciding whether a folder may be replaced by a new result of the same kind.
    """
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("tool") != "tumls-qp":
        return None
    return data.get("kind") if "format_version" in data else _format1_kind(data)


def read_manifest(folder: str | Path, kinds: Sequence[str] = KINDS) -> Any:
    """The manifest of a folder written by tumls-qp, typed by its kind, after checking its format version.

    Parameters
    ----------
    folder : path-like
        A folder holding ``manifest.json``.
    kinds : sequence of str
        The kinds the caller can use (see :data:`KINDS`).

    Returns
    -------
    AnalysisManifest, DictionaryManifest, TileClustersManifest or PrototypesManifest

    Raises
    ------
    FormatVersionError
        The folder was written in another format version (the message names it and what to do).
    InvalidInputError
        No or no readable ``manifest.json``, not a tumls-qp manifest, a kind other than ``kinds``, or a
        value that does not fit its field (named).
    """
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InvalidInputError(f"{str(folder)!r} is not a tumls-qp folder: it has no {MANIFEST}. Give a folder "
                                f"written by {_command(kinds[0])}.") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(folder, MANIFEST, exc) from exc
    if not isinstance(data, dict) or data.get("tool") != "tumls-qp":
        raise _damaged(folder, MANIFEST, "it is not a tumls-qp manifest (no \"tool\": \"tumls-qp\")")
    version = data.get("format_version", 1)
    written_by = f"tumls-qp {data.get('version', 'of unknown version')}"
    if version != FORMAT_VERSION:
        if isinstance(version, int) and not isinstance(version, bool) and version < FORMAT_VERSION:
            kind = data.get("kind") if "format_version" in data else _format1_kind(data)
            command = _command(kind if kind in KINDS else "analysis")
            raise FormatVersionError(
                f"{str(folder)!r} was written by {written_by} in run-folder format {version}; this tumls-qp "
                f"({__version__}) reads format {FORMAT_VERSION} only. Write it again in format {FORMAT_VERSION} "
                f"(`{command}`), or open it with the tumls-qp release that wrote it."
            )
        raise FormatVersionError(
            f"{str(folder)!r} was written by {written_by} in run-folder format {version!r}; this tumls-qp "
            f"({__version__}) reads format {FORMAT_VERSION} only. Upgrade tumls-qp (pip install -U tumls-qp) to read it."
        )
    kind = data.get("kind")
    if kind not in _MANIFESTS:
        raise _damaged(folder, MANIFEST, f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
    if kind not in kinds:
        raise InvalidInputError(
            f"{str(folder)!r} holds the result of `{_command(kind)}`; this needs a folder written by "
            + " or ".join(f"`{_command(k)}`" for k in kinds) + "."
        )
    body = {k: v for k, v in data.items() if k not in ("tool", "kind", "format_version")}
    try:
        return _from_json(_MANIFESTS[kind], body, "manifest")
    except _Bad as exc:
        raise _damaged(folder, MANIFEST, exc) from exc


# --- writing --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PatchNuclei:
    """The nuclei of one patch (:mod:`tumls_qp.cells`).

    Attributes
    ----------
    labels : (H, W) int ndarray
        Instance labels (0 = background), the patch's size.
    table : dict of str to (m,) ndarray
        ``cells.features.measure_nuclei``: one entry per ``NUCLEUS_FEATURES`` name.
    roi : dict of str to float
        ``cells.features.measure_tissue`` of the whole patch.
    polygons : list of (label, shapely Polygon)
        Each nucleus outline in level-0 px of the slide.
    """

    labels: np.ndarray
    table: dict[str, np.ndarray]
    roi: dict[str, float]
    polygons: list[tuple[int, Any]]


@dataclass(frozen=True)
class PatchGlands:
    """The glands of one patch (:mod:`tumls_qp.cells.glands`).

    Attributes
    ----------
    labels : (H, W) int ndarray
        Instance labels (0 = not gland), the patch's size.
    table : dict of str to (m,) ndarray
        ``cells.glands.measure_glands``: ``label`` and one entry per ``GLAND_MEASUREMENTS`` key.
    polygons : list of (label, shapely Polygon)
        Each gland outline in level-0 px of the slide.
    """

    labels: np.ndarray
    table: dict[str, np.ndarray]
    polygons: list[tuple[int, Any]]


@dataclass(frozen=True)
class Patch:
    """A representative read at full resolution: ``rgb`` (H, W, 3) uint8 at ``mpp`` µm/px; its nuclei and glands, if
    segmented; ``box`` the area read, (x, y, width, height) in level-0 px (None: the representative's tile)."""

    rgb: np.ndarray
    mpp: float
    nuclei: PatchNuclei | None
    box: tuple[int, int, int, int] | None = None
    glands: PatchGlands | None = None


@dataclass(frozen=True)
class SlideAnalysis:
    """Everything one slide's run folder holds, as the stages produced it: the input of :func:`write_run`.

    Attributes
    ----------
    config : PipelineConfig
    created : datetime
        When the analysis started (UTC).
    slide : SlideInfo
    tiles : TissueTiles
        The slide's tissue level (grid, thumbnail, selection).
    latents : (n, d) float ndarray
        One row per kept tile.
    clustering : Clustering
        This slide's tiles (labels, distance, uncertainty); centroids, gaps and linkage of the whole analysis.
    cohort : tuple of str or None
        Run folder names of a ``--cohort`` analysis.
    cohort_tiles_per_tissue : tuple of int
        Tiles per tissue over the analysis.
    representatives : tuple of Representative
        ``tile`` indexes the kept tiles; ``tissue`` 0-based.
    patches : tuple of Patch
        One per representative.
    tissue_features : dict of int to dict of str to float
        Pooled ``TISSUE_FEATURES`` per tissue (0-based) with segmented nuclei.
    embedding : TileEmbedding
        What ``embeddings.fit_embedding`` returned for the analysis (method, encoder, history;
        ``vectors`` of all its slides: this slide's rows are ``latents``).
    cache_hit : bool
        The embeddings and model came from the cache.
    reconstructions : (tiles, reconstructed), two (m, p, p, 3) uint8 ndarrays, or None
        A few tiles and their autoencoder reconstructions (``tumls-ae`` only).
    embedding_colours : EmbeddingColours or None
        One row per kept tile; None with ``output.embedding_colours = "none"``.
    warnings : tuple of str
    timings_s : dict of str to float
        Seconds per stage so far (:meth:`RunStaging.commit` records the final ones).
    engine : EngineInfo
        Where the analysis ran (default: in the calling process).
    regions : RegionMap or None
        The tissue regions at the tissue level (:func:`tumls_qp.tissue.regions.refine_regions`); None: whole tiles.
    gland_features : dict of int to dict of str to float
        Pooled ``GLAND_TISSUE_FEATURES`` per tissue (0-based) with segmented glands (``glands.enabled``).
    gland_seconds : float
        Seconds spent segmenting and measuring the glands (part of the ``nuclei`` stage).
    """

    config: PipelineConfig
    created: datetime
    slide: SlideInfo
    tiles: TissueTiles
    latents: np.ndarray
    clustering: Clustering
    cohort: tuple[str, ...] | None
    cohort_tiles_per_tissue: tuple[int, ...]
    representatives: tuple[Representative, ...]
    patches: tuple[Patch, ...]
    tissue_features: dict[int, dict[str, float]]
    embedding: Any
    cache_hit: bool
    reconstructions: tuple[np.ndarray, np.ndarray] | None
    embedding_colours: EmbeddingColours | None
    warnings: tuple[str, ...]
    timings_s: dict[str, float] = field(default_factory=dict)
    engine: EngineInfo = LOCAL_ENGINE
    regions: RegionMap | None = None
    gland_features: dict[int, dict[str, float]] = field(default_factory=dict)
    gland_seconds: float = 0.0


@dataclass(frozen=True)
class DictionaryAnalysis:
    """A slide labelled by a dictionary: the input of :func:`write_run` for a dictionary run.

    Attributes
    ----------
    dictionary : DictionaryInfo
    class_colours : tuple of (r, g, b)
        One per ``dictionary.classes``.
    slide : SlideInfo
    boxes : (n, 4) int ndarray
        Tissue tiles in level-0 px.
    latents : (n, d) float ndarray
    dq, cq : QueryResult
        Direct-Query and Cluster-then-Query (:mod:`tumls_qp.interactive.prototypes`).
    query : {"cq", "dq"}
        The one the GeoJSON shows.
    gamma, seed : int
    tile_objects, gzip : bool
    device : str
        The torch device that embedded the tiles.
    created : datetime
    seconds : float
    config : PipelineConfig
        The dictionary's run configuration (tiling, encoder).
    """

    dictionary: DictionaryInfo
    class_colours: tuple[tuple[int, int, int], ...]
    slide: SlideInfo
    boxes: np.ndarray
    latents: np.ndarray
    dq: Any
    cq: Any
    query: str
    gamma: int
    seed: int
    tile_objects: bool
    gzip: bool
    device: str
    created: datetime
    seconds: float
    config: PipelineConfig


@dataclass(frozen=True)
class TileClustersAnalysis:
    """A folder of tile images embedded and clustered: the input of :func:`write_run` for ``cluster-tiles``.

    Attributes
    ----------
    folder : Path
        The tile folder.
    files : tuple of str
        Image paths relative to ``folder``, one per row.
    tiles : TileFolderInfo
    latents : (n, d) float ndarray
    clustering : Clustering
    representatives : tuple of Representative
    embedding : TileEmbedding
        What ``embeddings.fit_embedding`` returned (method, encoder, history).
    embedding_colours : EmbeddingColours
    created : datetime
    timings_s : dict of str to float
    config : PipelineConfig
    """

    folder: Path
    files: tuple[str, ...]
    tiles: TileFolderInfo
    latents: np.ndarray
    clustering: Clustering
    representatives: tuple[Representative, ...]
    embedding: Any
    embedding_colours: EmbeddingColours
    created: datetime
    timings_s: dict[str, float]
    config: PipelineConfig


_Analysis = Union[SlideAnalysis, DictionaryAnalysis, TileClustersAnalysis]


class StagedRun(NamedTuple):
    """A run folder written into its staging folder, not yet in place: where it is, where it goes, its manifest."""

    stage: Path
    target: Path
    manifest: Any


class RunStaging:
    """Run folders built in hidden staging folders and renamed into place together, or not at all.

    Use it as a context manager: :meth:`write` stages one run folder (the caller may add files
    rendered from it, e.g. the report), :meth:`commit` renames them all into place (an earlier
    folder of the same name goes only then); leaving the block without committing, or with an
    error, removes what was staged::

        with RunStaging(out_dir) as staging:
            for name, analysis in analyses:
                staged = staging.write(name, analysis)
                ...  # e.g. render a report from the staged files
            staging.commit()

    Run folders staged by other processes (the workers of a distributed cohort) are committed
    together by one of them: each hands its staged folders over (:meth:`release`), and the
    committing one takes them (:meth:`adopt`) before :meth:`commit`.

    Parameters
    ----------
    out_dir : path-like
        Where the run folders go.
    staging_in : path-like, optional
        Where they are built (default ``out_dir``); on the same file system as ``out_dir``, so that the
        final rename is atomic. A folder of its own lets a caller remove what a killed process left.
    """

    def __init__(self, out_dir: str | Path, staging_in: str | Path | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.staging_in = Path(staging_in) if staging_in is not None else self.out_dir
        self._staged: list[StagedRun] = []

    def __enter__(self) -> RunStaging:
        return self

    def __exit__(self, *exc: object) -> None:
        for staged in self._staged:
            shutil.rmtree(staged.stage, ignore_errors=True)
        self._staged.clear()

    def write(self, name: str, analysis: _Analysis) -> Path:
        """Write the run folder ``name`` of ``analysis`` into a new staging folder; returns that folder."""
        stage = staging_dir(self.staging_in, name)
        self._staged.append(StagedRun(stage, self.out_dir / name, None))
        if isinstance(analysis, SlideAnalysis):
            manifest: Any = _write_analysis(stage, analysis)
        elif isinstance(analysis, DictionaryAnalysis):
            manifest = _write_dictionary(stage, analysis)
        elif isinstance(analysis, TileClustersAnalysis):
            manifest = _write_tile_clusters(stage, analysis)
        else:
            raise TypeError(f"not an analysis result: {type(analysis).__name__}")
        self._staged[-1] = StagedRun(stage, self.out_dir / name, manifest)
        return stage

    def release(self) -> list[StagedRun]:
        """Hand the staged run folders over, uncommitted (to :meth:`adopt`); they are no longer removed on exit."""
        staged, self._staged = self._staged, []
        return staged

    def adopt(self, staged: Sequence[StagedRun]) -> None:
        """Take over run folders another :class:`RunStaging` released: committed, or removed, with this one's."""
        for run in staged:
            if run.target.parent != self.out_dir:
                raise ValueError(f"{run.target} does not go into {self.out_dir}")
            self._staged.append(run)

    def commit(self, timings_s: Mapping[str, float] | None = None) -> list[tuple[Path, Any]]:
        """Rename every staged folder into place; with ``timings_s``, record those (final) timings first.

        Returns
        -------
        list of (run folder, manifest)
            In the order they were written.
        """
        if timings_s is not None:
            rounded = {k: round(float(v), 3) for k, v in timings_s.items()}
            for i, (stage, target, manifest) in enumerate(self._staged):
                manifest = dataclasses.replace(manifest, timings_s=rounded)
                _write_manifest(stage, manifest)
                self._staged[i] = StagedRun(stage, target, manifest)
        for stage, target, _ in self._staged:
            replace_dir(stage, target)
        done = [(target, manifest) for _, target, manifest in self._staged]
        self._staged.clear()
        return done


def write_run(folder: str | Path, analysis: _Analysis) -> Any:
    """Write one run folder atomically (built in a hidden staging folder beside ``folder``, then renamed).

    Parameters
    ----------
    folder : path-like
        The run folder; an earlier one is replaced only once the new one is complete.
    analysis : SlideAnalysis, DictionaryAnalysis or TileClustersAnalysis

    Returns
    -------
    The manifest written (:class:`AnalysisManifest`, :class:`DictionaryManifest` or :class:`TileClustersManifest`).
    """
    folder = Path(folder)
    with RunStaging(folder.parent) as staging:
        staging.write(folder.name, analysis)
        [(_, manifest)] = staging.commit()
    return manifest


def _geojson_name(base: str, gzip: bool) -> str:
    return f"{base}.gz" if gzip else base


def _regions(a: SlideAnalysis) -> RegionMap:
    """The analysis's regions; whole tiles when it has none."""
    if a.regions is not None:
        return a.regions
    grid = a.tiles.grid
    labels = block_regions(grid.shape, grid.tile_px, a.tiles.selection.kept, a.clustering.labels)
    return RegionMap(labels=labels, downsample=grid.tile_size / grid.tile_px, method="blocks")


def _patch_box(a: SlideAnalysis, rep: Representative, patch: Patch) -> tuple[int, int, int, int]:
    return patch.box if patch.box is not None else tuple(int(v) for v in a.tiles.boxes[rep.tile])  # type: ignore


def _write_analysis(folder: Path, a: SlideAnalysis) -> AnalysisManifest:
    config, clustering = a.config, a.clustering
    boxes = a.tiles.boxes
    regions = _regions(a)
    detections, nuclei = _write_patches(folder, a)
    glands = _write_glands(folder, a)
    measurements = {t: {**a.tissue_features.get(t, {}), **a.gland_features.get(t, {})}
                    for t in sorted({*a.tissue_features, *a.gland_features})}
    features = tissue_features(boxes, clustering.labels, clustering.uncertainty, a.slide.mpp, a.representatives,
                               confidence=clustering.confidence,
                               regions=region_geometries(regions.labels, regions.downsample),
                               representative_boxes=[_patch_box(a, r, p) for r, p in zip(a.representatives, a.patches)],
                               tile_objects=config.output.tile_objects,
                               tissue_measurements=measurements) + detections + glands
    geojson = _geojson_name(TISSUE_GEOJSON, config.output.gzip)
    write_geojson(require_valid(feature_collection(features)), folder / geojson)
    _write_tiles(folder, a)
    write_csv(folder / REPRESENTATIVES_CSV, REPRESENTATIVE_COLUMNS,
              [[r.tissue + 1, r.rank, r.tile, *map(int, boxes[r.tile]), _fmt("uncertainty", r.uncertainty),
                _fmt("distance", r.distance), _fmt("confidence", r.confidence), *_patch_box(a, r, p)]
               for r, p in zip(a.representatives, a.patches)])
    _write_training(folder, a.embedding.history)
    Image.fromarray((regions.labels + 1).astype(np.uint16)).save(folder / REGIONS_PNG, optimize=True)

    # Arrays for re-rendering and for the label-efficient methods (seeded clustering, dictionaries).
    np.savez_compressed(folder / EMBEDDINGS_NPZ, latents=a.latents.astype(np.float32), boxes=boxes.astype(np.int64),
                        tile_index=a.tiles.selection.kept, labels=clustering.labels,
                        uncertainty=clustering.uncertainty, distance=clustering.distance,
                        centroids=clustering.centroids, confidence=clustering.confidence,
                        posterior=clustering.posterior)
    colours = None
    if a.embedding_colours is not None:
        colours = _write_colours(folder, boxes, a.embedding_colours, config.output.gzip)
    dendrogram = {"gaps_k": np.array(sorted(clustering.gaps), dtype=np.int64),
                  "gaps": np.array([clustering.gaps[k] for k in sorted(clustering.gaps)], dtype=np.float64)}
    if clustering.linkage is not None:
        dendrogram["linkage"] = clustering.linkage
    np.savez_compressed(folder / DENDROGRAM_NPZ, **dendrogram)
    if a.reconstructions is not None:
        np.savez_compressed(folder / RECONSTRUCTIONS_NPZ, tiles=a.reconstructions[0],
                            reconstructed=a.reconstructions[1])
    Image.fromarray(a.tiles.thumbnail).save(folder / THUMBNAIL_PNG, optimize=True)
    _write_model(folder, a.embedding, config)
    (folder / CONFIG_TOML).write_text(dump_config(config), encoding="utf-8")

    manifest = _analysis_manifest(a, OutputsInfo(geojson=geojson, geojson_features=len(features),
                                                 embedding_colours=colours), nuclei, regions)
    _write_manifest(folder, manifest)
    return manifest


def _write_patches(folder: Path, a: SlideAnalysis) -> tuple[list[dict[str, Any]], int]:
    """``patches/`` and the nucleus tables; returns the nuclei as QuPath detections, and how many there are."""
    (folder / PATCHES_DIR).mkdir()
    detections, nucleus_rows, roi_rows = [], [], []
    measured = [f.name for f in NUCLEUS_FEATURES if f.key not in ("label", "x", "y")]
    for rep, patch in zip(a.representatives, a.patches):
        Image.fromarray(patch.rgb).save(folder / _patch_name(rep.tissue + 1, rep.rank), quality=92)
        if patch.nuclei is None:
            continue
        n = patch.nuclei
        Image.fromarray(n.labels.astype(np.uint16)).save(folder / _patch_name(rep.tissue + 1, rep.rank, ".labels.png"))
        roi_rows.append([rep.tissue + 1, rep.rank, *(_fmt("feature", n.roi[f.name]) for f in TISSUE_FEATURES)])
        row_of = {int(label): k for k, label in enumerate(n.table["Label"])}
        for label, polygon in n.polygons:
            k = row_of[label]
            feature = make_feature(polygon, "detection", NUCLEUS_CLASS, NUCLEUS_COLOUR,
                                   {name: n.table[name][k] for name in measured})
            if feature is not None:
                detections.append(feature)
        for k in range(len(n.table["Label"])):
            nucleus_rows.append([rep.tissue + 1, rep.rank, int(n.table["Label"][k]),
                                 *(_fmt("feature", n.table[f.name][k]) for f in NUCLEUS_FEATURES if f.key != "label")])
    if a.config.nuclei.enabled:
        tissue_columns = [f.name for f in TISSUE_FEATURES]
        write_csv(folder / NUCLEI_CSV, [*NUCLEUS_ID_COLUMNS, *(f.name for f in NUCLEUS_FEATURES if f.key != "label")],
                  nucleus_rows)
        write_csv(folder / PATCH_FEATURES_CSV, [*PATCH_ID_COLUMNS, *tissue_columns], roi_rows)
    _write_features(folder, a)
    return detections, len(nucleus_rows)


def _write_features(folder: Path, a: SlideAnalysis) -> None:
    """``features.csv``: one row per tissue, the nucleus features (``nuclei.enabled``), then the gland features
    (``glands.enabled``); a tissue without one of them has empty cells there."""
    columns = ([f.name for f in TISSUE_FEATURES] if a.config.nuclei.enabled else []) + (
        [f.name for f in GLAND_TISSUE_FEATURES] if a.config.glands.enabled else [])
    if not columns:
        return
    rows = []
    for t in sorted({*a.tissue_features, *a.gland_features}):
        values = {**a.tissue_features.get(t, {}), **a.gland_features.get(t, {})}
        rows.append([t + 1, *(_fmt("feature", values[c]) if c in values else "" for c in columns)])
    write_csv(folder / FEATURES_CSV, ["tissue", *columns], rows)


def _write_glands(folder: Path, a: SlideAnalysis) -> list[dict[str, Any]]:
    """``glands.csv`` and the gland label images (``glands.enabled``); returns the glands as QuPath annotations."""
    if not a.config.glands.enabled:
        return []
    annotations, rows = [], []
    for rep, patch in zip(a.representatives, a.patches):
        if patch.glands is None:
            continue
        g = patch.glands
        Image.fromarray(g.labels.astype(np.uint16)).save(folder / _patch_name(rep.tissue + 1, rep.rank, ".glands.png"))
        row_of = {int(label): k for k, label in enumerate(g.table["label"])}
        for label, polygon in g.polygons:
            k = row_of[label]
            feature = make_feature(polygon, "annotation", GLAND_CLASS, GLAND_COLOUR,
                                   {GLAND_QUPATH_NAMES[m]: g.table[m][k] for m in GLAND_MEASUREMENTS},
                                   name=f"Gland {label} of tissue {rep.tissue + 1} representative {rep.rank}")
            if feature is not None:
                annotations.append(feature)
        for k in range(len(g.table["label"])):
            rows.append([rep.tissue + 1, rep.rank, int(g.table["label"][k]),
                         *(_fmt("feature", g.table[m][k]) for m in GLAND_MEASUREMENTS)])
    write_csv(folder / GLANDS_CSV, [*GLAND_ID_COLUMNS, *(GLAND_QUPATH_NAMES[m] for m in GLAND_MEASUREMENTS)], rows)
    return annotations


def _write_tiles(folder: Path, a: SlideAnalysis) -> None:
    """``tiles.csv``: ``TILE_COLUMNS``, one row per tissue tile."""
    c, selection = a.clustering, a.tiles.selection
    fraction = selection.tissue_fraction.ravel()[selection.kept]
    write_csv(folder / TILES_CSV, TILE_COLUMNS,
              [[*map(int, b), int(t) + 1, _fmt("uncertainty", u), _fmt("distance", d), _fmt("tissue_fraction", f),
                _fmt("confidence", q)]
               for b, t, u, d, f, q in zip(a.tiles.boxes, c.labels, c.uncertainty, c.distance, fraction,
                                           c.confidence)])


def _analysis_manifest(a: SlideAnalysis, outputs: OutputsInfo, nuclei: int, regions: RegionMap) -> AnalysisManifest:
    config, clustering, grid = a.config, a.clustering, a.tiles.grid
    px_um2 = (regions.downsample * a.slide.mpp) ** 2
    areas = regions.areas_px(clustering.k)
    counts = a.tiles.selection.counts()
    return AnalysisManifest(
        version=__version__,
        created=a.created.isoformat(timespec="seconds"),
        seed=config.seed,
        slide=a.slide,
        tiles=TilesInfo(tile_um=grid.tile_um, tile_size_px=grid.tile_size, tile_px=grid.tile_px,
                        lowres_mpp=grid.lowres_mpp, grid=tuple(grid.shape), total=grid.n_tiles, kept=counts["kept"],
                        dropped={"background": counts["background"], "artefact": counts["artefact"]}),
        embedding=_embedding_info(a.embedding, "hit" if a.cache_hit else "miss", config),
        clusters=ClustersInfo(k=clustering.k, k_source=clustering.k_source, gaps=dict(clustering.gaps),
                              split_statistic=clustering.split_statistic,
                              uncertainty_scale=clustering.uncertainty_scale,
                              tiles_per_tissue=tuple(np.bincount(clustering.labels, minlength=clustering.k).tolist()),
                              cohort_tiles_per_tissue=tuple(a.cohort_tiles_per_tissue), method=clustering.method,
                              k_votes=dict(clustering.k_votes), runner_up=clustering.runner_up),
        representatives=tuple(
            RepresentativeInfo(tissue=r.tissue + 1, rank=r.rank, tile=r.tile, distance=r.distance,
                               uncertainty=r.uncertainty, patch=_patch_name(r.tissue + 1, r.rank), patch_mpp=p.mpp,
                               confidence=r.confidence, confident=r.confident, patch_box=_patch_box(a, r, p))
            for r, p in zip(a.representatives, a.patches)),
        nuclei=NucleiInfo(enabled=config.nuclei.enabled,
                          representatives_segmented=sum(p.nuclei is not None for p in a.patches), nuclei=nuclei,
                          per_tissue={t + 1: int(v["Nuclei"]) for t, v in a.tissue_features.items()}),
        cohort=a.cohort,
        outputs=outputs,
        timings_s={name: round(seconds, 3) for name, seconds in a.timings_s.items()},
        engine=a.engine,
        environment=Environment.now(a.embedding.history.get("device", "cpu")),
        warnings=tuple(a.warnings),
        config=config,
        regions=RegionsInfo(method=regions.method, segments=tuple(regions.segments),
                            area_um2={t + 1: round(float(areas[t]) * px_um2, 3) for t in range(clustering.k)},
                            changed_fraction=round(float(regions.changed_fraction), 4)),
        glands=GlandsInfo(
            enabled=True, representatives_segmented=sum(p.glands is not None for p in a.patches),
            glands=sum(len(p.glands.table["label"]) for p in a.patches if p.glands is not None),
            per_tissue={t + 1: int(v["Glands"]) for t, v in a.gland_features.items()},
            seconds=round(a.gland_seconds, 3)) if config.glands.enabled else None,
    )


def _embedding_info(embedding: Any, cache: str, config: PipelineConfig) -> EmbeddingInfo:
    """The manifest's record of a ``TileEmbedding`` (its ``history`` dict: see ``embeddings.methods``)."""
    h = embedding.history
    losses = h.get("loss") or h.get("val_mse") or []
    views = embedding.view_mpp is not None
    return EmbeddingInfo(
        cache=cache, epochs=int(h.get("epochs", 0)), best_epoch=int(h.get("best_epoch", h.get("epochs", 0))),
        early_stopped=bool(h.get("early_stopped", False)), mse=dict(h.get("mse", {})),
        n_tiles=dict(h.get("n_tiles", {"train": len(embedding.vectors)})), initialised_from=h.get("initialised_from"),
        train_seconds=round(float(h.get("train_seconds", 0.0)), 3), method=embedding.method,
        dim=int(embedding.vectors.shape[1]), view_um=config.embedding.view_um if views else None,
        view_mpp=embedding.view_mpp, final_loss=float(losses[-1]) if len(losses) else None,
        bic={int(k): float(v) for k, v in h.get("bic", {}).items()}, architecture=h.get("architecture"),
        checkpoint=h.get("checkpoint"), checkpoint_sha256=h.get("checkpoint_sha256"))


def _write_training(folder: Path, history: dict[str, Any]) -> None:
    from ..tissue.embeddings import training_table

    write_csv(folder / TRAINING_CSV, *training_table(history))


def _write_model(folder: Path, embedding: Any, config: PipelineConfig) -> None:
    """``model.pt`` and ``model.json``: the fitted embedding method (``embeddings.load_encoder`` reads it back)."""
    embedding.encoder.save(folder, {"history": embedding.history, "embedding": config_to_dict(config.embedding),
                                    "tiles": config_to_dict(config.tiles), "seed": config.seed})


def _mixture_posterior(clustering: Clustering) -> dict[str, np.ndarray]:
    """``posterior`` for a tile folder's ``embeddings.npz`` when the embedding's mixture (``vade``) assigned the
    tiles: p(tissue | tile), (n, k)."""
    return {"posterior": clustering.posterior.astype(np.float32)} if clustering.method == "mixture" else {}


def _write_colours(folder: Path, boxes: np.ndarray, colours: EmbeddingColours, gzip: bool) -> str:
    """The embedding-colour layer (a separate file: it doubles the tile objects) and its arrays; returns its name."""
    name = _geojson_name(EMBEDDING_COLOURS_GEOJSON, gzip)
    collection = require_valid(feature_collection(embedding_colour_features(boxes, colours)),
                               "generated embedding-colour GeoJSON")
    write_geojson(collection, folder / name)
    np.savez_compressed(folder / EMBEDDING_COLOURS_NPZ, coords=colours.coords, rgb=colours.rgb,
                        method=np.array(colours.method))
    return name


def write_embedding_colours(run: RunFolder, colours: EmbeddingColours, title: str) -> tuple[Path, Path]:
    """Replace a run's embedding-colour layer, arrays and figure (``tumls-qp embedding-colours``).

    Each file is written atomically and the manifest's ``outputs.embedding_colours`` names the layer.

    Returns
    -------
    (GeoJSON path, PNG path)
    """
    boxes = run.embeddings.boxes
    name = _write_colours(run.path, boxes, colours, gzip=run.manifest.config.output.gzip)
    png = run.path / EMBEDDING_COLOURS_PNG
    data = figures.embedding_colours_figure(colours, boxes=boxes, title=title)
    with atomic_write(png) as tmp:
        tmp.write_bytes(data)
    manifest = run.manifest
    if manifest.outputs.embedding_colours != name:
        _write_manifest(run.path, dataclasses.replace(
            manifest, outputs=dataclasses.replace(manifest.outputs, embedding_colours=name)))
    return run.path / name, png


def _write_dictionary(folder: Path, a: DictionaryAnalysis) -> DictionaryManifest:
    classes = a.dictionary.classes
    shown = a.cq if a.query == "cq" else a.dq
    features = classified_features(a.boxes, shown.labels, shown.confidence, classes, a.class_colours, a.slide.mpp,
                                   score_name=DICTIONARY_SCORE, region_suffix="dictionary",
                                   tile_objects=a.tile_objects, tile_measurements={"Prototype distance": shown.distance})
    geojson = _geojson_name(DICTIONARY_GEOJSON, a.gzip)
    write_geojson(require_valid(feature_collection(features)), folder / geojson)
    write_csv(folder / TILES_CSV, DICTIONARY_TILE_COLUMNS,
              [[*map(int, b), classes[p], _fmt("confidence", cp), _fmt("confidence", dp), classes[c],
                _fmt("confidence", cc), int(g) + 1]
               for b, p, cp, dp, c, cc, g in zip(a.boxes, a.dq.labels, a.dq.confidence, a.dq.distance, a.cq.labels,
                                                 a.cq.confidence, a.cq.groups)])
    np.savez_compressed(folder / EMBEDDINGS_NPZ, latents=a.latents.astype(np.float32), boxes=a.boxes.astype(np.int64),
                        labels=shown.labels, confidence=shown.confidence)
    counts = {m: {n: int(v) for n, v in zip(classes, np.bincount(r.labels, minlength=len(classes)))}
              for m, r in (("dq", a.dq), ("cq", a.cq))}
    manifest = DictionaryManifest(
        version=__version__, created=a.created.isoformat(timespec="seconds"), dictionary=a.dictionary,
        slide=a.slide,
        tiles=DictionaryTilesInfo(kept=len(a.boxes), tile_um=a.config.tiles.tile_um, tile_px=a.config.tiles.tile_px),
        query=QueryInfo(shown=a.query, gamma=a.gamma, d=a.cq.d, groups=a.cq.n_groups, seed=a.seed,
                        tiles_per_class=counts, agreement_dq_cq=float(np.mean(a.dq.labels == a.cq.labels))),
        outputs=OutputsInfo(geojson=geojson, geojson_features=len(features)),
        seconds=round(a.seconds, 3), environment=Environment.now(a.device), config=a.config,
    )
    _write_manifest(folder, manifest)
    return manifest


def _write_tile_clusters(folder: Path, a: TileClustersAnalysis) -> TileClustersManifest:
    files, clustering = a.files, a.clustering
    write_csv(folder / CLUSTERS_CSV, CLUSTER_COLUMNS,
              [[f, int(t) + 1, _fmt("uncertainty", u), _fmt("distance", d)]
               for f, t, u, d in zip(files, clustering.labels, clustering.uncertainty, clustering.distance)])
    write_csv(folder / REPRESENTATIVES_CSV, TILE_REPRESENTATIVE_COLUMNS,
              [[r.tissue + 1, r.rank, files[r.tile], _fmt("uncertainty", r.uncertainty), _fmt("distance", r.distance)]
               for r in a.representatives])
    _write_training(folder, a.embedding.history)
    colours = a.embedding_colours
    np.savez_compressed(folder / EMBEDDINGS_NPZ, files=np.array(files), latents=a.latents.astype(np.float32),
                        labels=clustering.labels, uncertainty=clustering.uncertainty, distance=clustering.distance,
                        centroids=clustering.centroids, embedding_3d=colours.coords, embedding_rgb=colours.rgb,
                        **_mixture_posterior(clustering))
    names = [f"Cluster {j + 1}" for j in range(clustering.k)]
    (folder / EMBEDDING_COLOURS_PNG).write_bytes(figures.embedding_colours_figure(
        colours, labels=clustering.labels, label_names=names,
        title=f"{a.folder.name}: {len(files)} tiles, {clustering.k} cluster(s), {colours.method.upper()}"))
    config = a.config
    _write_model(folder, a.embedding, config)
    (folder / CONFIG_TOML).write_text(dump_config(config), encoding="utf-8")
    manifest = TileClustersManifest(
        version=__version__, created=a.created.isoformat(timespec="seconds"), seed=config.seed,
        folder=str(a.folder.resolve()), tiles=a.tiles, embedding=_embedding_info(a.embedding, "miss", config),
        clusters=TileClustersInfo(k=clustering.k, k_source=clustering.k_source, gaps=dict(clustering.gaps),
                                  split_statistic=clustering.split_statistic,
                                  uncertainty_scale=clustering.uncertainty_scale,
                                  tiles_per_cluster=tuple(clustering.sizes()), embedding_colours=colours.method,
                                  k_votes=dict(clustering.k_votes), runner_up=clustering.runner_up),
        timings_s={name: round(seconds, 3) for name, seconds in a.timings_s.items()},
        environment=Environment.now(a.embedding.history.get("device", "cpu")), config=config,
    )
    _write_manifest(folder, manifest)
    return manifest


# --- prototype clusters (a run's prototypes/ subfolder) ------------------------------------------------------------

@dataclass(frozen=True)
class PrototypeClusters:
    """A run's tiles over-clustered for naming (``tumls-qp prototypes``): the input of :func:`write_prototype_clusters`.

    Attributes
    ----------
    clusters : Overclustering
        :func:`tumls_qp.interactive.prototypes.over_cluster` of the run's latents.
    central : list of k int ndarrays
        The ``t`` central tiles of each cluster, closest first.
    t : int
    seed : int
    k_range : (int, int)
        The k the elbow rule considered.
    names_template : str
        ``names.toml`` to fill in.
    """

    clusters: Overclustering
    central: list[np.ndarray]
    t: int
    seed: int
    k_range: tuple[int, int]
    names_template: str


def write_prototype_clusters(run: RunFolder, prototypes: PrototypeClusters) -> Path:
    """Write (or replace) ``<run>/prototypes/`` atomically; returns the folder.

    It holds ``clusters.npz`` (``labels``, ``centroids``, ``distance``, ``central``: k × t tile
    indices padded with −1, ``elbow_k``, ``elbow_inertia`` when k came from the elbow rule),
    ``prototypes.geojson`` (see :func:`tumls_qp.outputs.classified.prototype_features`),
    ``names.toml`` and ``manifest.json`` (:class:`PrototypesManifest`).
    """
    over = prototypes.clusters
    embeddings = run.embeddings
    collection = require_valid(feature_collection(
        prototype_features(embeddings.boxes, over.labels, over.distance, prototypes.central, run.mpp)))
    padded = np.full((over.k, prototypes.t), -1, dtype=np.int64)
    for j, tiles in enumerate(prototypes.central):
        padded[j, : len(tiles)] = tiles
    stage = staging_dir(run.path, PROTOTYPES_DIR)
    try:
        arrays = {"labels": over.labels, "centroids": over.centroids, "distance": over.distance, "central": padded}
        if over.elbow is not None:
            arrays |= {"elbow_k": over.elbow.ks, "elbow_inertia": over.elbow.inertia}
        np.savez_compressed(stage / PROTOTYPE_CLUSTERS_NPZ, **arrays)
        write_geojson(collection, stage / PROTOTYPES_GEOJSON)
        (stage / NAMES_TOML).write_text(prototypes.names_template, encoding="utf-8")
        elbow = over.elbow
        _write_manifest(stage, PrototypesManifest(
            version=__version__, created=datetime.now(timezone.utc).isoformat(timespec="seconds"), k=over.k,
            k_source=over.k_source, k_range=prototypes.k_range, t=prototypes.t, seed=prototypes.seed,
            tiles_per_cluster=tuple(over.sizes()),
            elbow=None if elbow is None else ElbowInfo(n_tiles=elbow.n_tiles, k=elbow.k,
                                                       inertia=tuple(float(v) for v in elbow.inertia)),
            embeddings_sha256=run.embeddings_sha256))
        replace_dir(stage, run.path / PROTOTYPES_DIR)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return run.path / PROTOTYPES_DIR


def read_prototype_clusters(run: RunFolder) -> tuple[Overclustering, PrototypesManifest]:
    """The prototype clusters of a run (:func:`write_prototype_clusters`) and their manifest.

    Returns
    -------
    (Overclustering, PrototypesManifest)
        The overclustering's ``elbow`` is not restored (None).

    Raises
    ------
    InvalidInputError
        There are none, they are damaged, or they were made from other embeddings than the run's.
    """
    folder = run.path / PROTOTYPES_DIR
    if not (folder / PROTOTYPE_CLUSTERS_NPZ).is_file():
        raise InvalidInputError(f"{str(run.path)!r} has no prototype clusters yet: run `tumls-qp prototypes "
                                f"{run.path}` first, then name the clusters")
    manifest = read_manifest(folder, kinds=("prototypes",))
    try:
        with np.load(folder / PROTOTYPE_CLUSTERS_NPZ, allow_pickle=False) as data:
            labels, centroids, distance = data["labels"], data["centroids"], data["distance"]
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidInputError(f"the prototype clusters in {str(folder)!r} are damaged ({exc}); run "
                                f"`tumls-qp prototypes {run.path}` again") from exc
    if manifest.embeddings_sha256 != run.embeddings_sha256:
        raise InvalidInputError(f"the prototype clusters in {str(folder)!r} were made from other embeddings than "
                                f"the run's; run `tumls-qp prototypes {run.path}` again and name the new clusters")
    over = Overclustering(k=manifest.k, k_source=manifest.k_source, labels=labels.astype(np.int64),
                          centroids=centroids.astype(np.float32), distance=distance.astype(np.float32))
    return over, manifest


# --- reading --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Table:
    """A CSV table with numeric values: ``columns`` in file order, ``rows`` as dicts of floats (NaN when empty)."""

    columns: tuple[str, ...]
    rows: tuple[dict[str, float], ...]

    def column(self, name: str) -> np.ndarray:
        """Values of one column as a float array."""
        return np.array([r[name] for r in self.rows], dtype=np.float64)


@dataclass(frozen=True)
class TileTable:
    """``tiles.csv`` of an analysis.

    Attributes
    ----------
    boxes : (n, 4) int64 ndarray
        (x, y, width, height) in level-0 px.
    tissue : (n,) int64 ndarray
        1..k.
    uncertainty : (n,) float64 ndarray
        0-1.
    distance : (n,) float64 ndarray
        To the tissue's centroid in latent space.
    tissue_fraction : (n,) float64 ndarray
    confidence : (n,) float64 ndarray
        0-1.
    """

    boxes: np.ndarray
    tissue: np.ndarray
    uncertainty: np.ndarray
    distance: np.ndarray
    tissue_fraction: np.ndarray
    confidence: np.ndarray


@dataclass(frozen=True)
class AnalysisEmbeddings:
    """``embeddings.npz`` of an analysis: ``latents`` (n, d) float32, ``boxes`` (n, 4) int64, ``tile_index`` (row-major
    index in the grid), ``labels`` (0-based tissue), ``uncertainty``, ``distance`` (n,), ``centroids`` (k, d),
    ``confidence`` (n,), ``posterior`` (n, k) (each tile's soft assignment, ``Clustering.posterior``: p(tissue | tile)
    of the embedding's mixture for ``vade``)."""

    latents: np.ndarray
    boxes: np.ndarray
    tile_index: np.ndarray
    labels: np.ndarray
    uncertainty: np.ndarray
    distance: np.ndarray
    centroids: np.ndarray
    confidence: np.ndarray
    posterior: np.ndarray


@dataclass(frozen=True)
class DictionaryEmbeddings:
    """``embeddings.npz`` of a dictionary run: ``latents``, ``boxes``, and the shown query's ``labels`` (class index)
    and ``confidence``."""

    latents: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray


@dataclass(frozen=True)
class RepresentativeFiles:
    """A representative as the report draws it: ``tissue`` 1..k, ``rank`` 1..N, ``box`` (x, y, w, h) in level-0 px;
    its patch image, nucleus label image and gland label image when present in the folder."""

    tissue: int
    rank: int
    tile: int
    box: tuple[int, int, int, int]
    uncertainty: float
    distance: float
    patch: Path | None
    patch_mpp: float
    labels: Path | None
    confidence: float
    confident: bool
    #: The area the patch was read over, (x, y, width, height) in level-0 px.
    patch_box: tuple[int, int, int, int]
    glands: Path | None = None


def _damaged(folder: Path, name: str, problem: Any) -> InvalidInputError:
    return InvalidInputError(
        f"cannot read {name} in the run folder {str(folder)!r}: {problem}. Re-run the analysis "
        "(`tumls-qp analyze`) to write the run folder again."
    )


class RunFolder:
    """A run folder read back: the manifest when opened, every other file when first used.

    Missing optional files (training curve, dendrogram, reconstructions, patches) are listed in
    :attr:`notes` and read as None; a damaged file raises :class:`InvalidInputError` naming it.

    Attributes
    ----------
    path : Path
    manifest : AnalysisManifest or DictionaryManifest
    """

    def __init__(self, path: Path, manifest: AnalysisManifest | DictionaryManifest) -> None:
        self.path = path
        self.manifest = manifest

    @property
    def kind(self) -> str:
        return self.manifest.KIND

    def _analysis(self) -> AnalysisManifest:
        if not isinstance(self.manifest, AnalysisManifest):
            raise InvalidInputError(f"{str(self.path)!r} holds a {self.kind} result, not an analysis run folder")
        return self.manifest

    # --- manifest values -------------------------------------------------------------------------------------------

    @property
    def slide_name(self) -> str:
        """The slide's file name."""
        return self.manifest.slide.name

    @property
    def mpp(self) -> float:
        """Level-0 pixel size in µm/px."""
        return self.manifest.slide.mpp

    @property
    def config(self) -> PipelineConfig:
        """The effective configuration of the run."""
        return self.manifest.config

    @property
    def k(self) -> int:
        """Number of tissues."""
        return self._analysis().clusters.k

    @property
    def tile_size_px(self) -> int:
        """Tile side in level-0 px."""
        return self._analysis().tiles.tile_size_px

    @property
    def tile_px(self) -> int:
        """Tile side in pixels of the thumbnail (the tissue level)."""
        return self._analysis().tiles.tile_px

    @property
    def thumbnail_scale(self) -> float:
        """Thumbnail pixels per level-0 pixel."""
        return self.tile_px / self.tile_size_px

    @property
    def thumbnail_mpp(self) -> float:
        """Pixel size of the thumbnail in µm/px."""
        return self._analysis().tiles.lowres_mpp

    @property
    def tile_um(self) -> float:
        """Tile side in µm."""
        return self._analysis().tiles.tile_um

    @property
    def tile_area_um2(self) -> float:
        """Area of one tile in µm²."""
        return self.tile_um ** 2

    # --- files -------------------------------------------------------------------------------------------------------

    @cached_property
    def tiles(self) -> TileTable:
        """``tiles.csv``."""
        self._analysis()
        table = _read_csv(self.path, TILES_CSV, TILE_COLUMNS)
        n = len(table.rows)
        boxes = np.array([[r[c] for c in ("x", "y", "w", "h")] for r in table.rows], dtype=np.float64).reshape(n, 4)
        tissue = table.column("tissue")
        if not np.all(np.isfinite(boxes)) or not np.all(np.isfinite(tissue)) or np.any(tissue < 1):
            raise _damaged(self.path, TILES_CSV, "a box or tissue value is missing or not positive")
        return TileTable(boxes=boxes.astype(np.int64), tissue=tissue.astype(np.int64),
                         uncertainty=table.column("uncertainty"), distance=table.column("distance"),
                         tissue_fraction=table.column("tissue_fraction"), confidence=table.column("confidence"))

    @cached_property
    def embeddings(self) -> AnalysisEmbeddings | DictionaryEmbeddings:
        """``embeddings.npz`` (its arrays depend on the kind)."""
        kind = AnalysisEmbeddings if self.kind == "analysis" else DictionaryEmbeddings
        names = [f.name for f in fields(kind)]
        try:
            with np.load(self.path / EMBEDDINGS_NPZ, allow_pickle=False) as npz:
                arrays = {name: np.asarray(npz[name]) for name in names}
        except (OSError, ValueError, KeyError) as exc:
            raise _damaged(self.path, EMBEDDINGS_NPZ, exc) from exc
        latents, boxes = arrays["latents"], arrays["boxes"]
        if latents.ndim != 2 or boxes.shape != (len(latents), 4) or len(latents) < 2:
            raise _damaged(self.path, EMBEDDINGS_NPZ, f"latents {latents.shape} and boxes {boxes.shape} do not match")
        return kind(**arrays)

    @cached_property
    def embeddings_sha256(self) -> str:
        """SHA-256 of ``embeddings.npz``."""
        with open(self.path / EMBEDDINGS_NPZ, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()

    @cached_property
    def representatives(self) -> tuple[RepresentativeFiles, ...]:
        """The representatives, tissue by tissue, best first."""
        boxes = self.tiles.boxes
        out = []
        for r in self._analysis().representatives:
            patch = self.path / r.patch
            labels = self.path / _patch_name(r.tissue, r.rank, ".labels.png")
            glands = self.path / _patch_name(r.tissue, r.rank, ".glands.png")
            if not 0 <= r.tile < len(boxes):
                raise _damaged(self.path, MANIFEST, f"representative tile {r.tile} is not a row of {TILES_CSV}")
            out.append(RepresentativeFiles(
                tissue=r.tissue, rank=r.rank, tile=r.tile, box=tuple(int(v) for v in boxes[r.tile]),  # type: ignore
                uncertainty=r.uncertainty, distance=r.distance, patch=patch if patch.is_file() else None,
                patch_mpp=r.patch_mpp, labels=labels if labels.is_file() else None, confidence=r.confidence,
                confident=r.confident, patch_box=r.patch_box,
                glands=glands if glands.is_file() else None))
        return tuple(out)

    @cached_property
    def thumbnail(self) -> np.ndarray:
        """(H, W, 3) uint8: the tiled area at the tissue level."""
        try:
            with Image.open(self.path / THUMBNAIL_PNG) as image:
                return np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise _damaged(self.path, THUMBNAIL_PNG, exc) from exc

    @cached_property
    def regions(self) -> np.ndarray:
        """(H, W) int64 of the thumbnail's size: the tissue (1..k) of each pixel's region, 0 outside every region."""
        self._analysis()
        try:
            with Image.open(self.path / REGIONS_PNG) as image:
                regions = np.asarray(image).astype(np.int64)
        except (OSError, ValueError) as exc:
            raise _damaged(self.path, REGIONS_PNG, exc) from exc
        if regions.shape != self.thumbnail.shape[:2] or regions.max(initial=0) > self.k:
            raise _damaged(self.path, REGIONS_PNG, f"shape {regions.shape} or tissue {regions.max(initial=0)} does "
                           f"not fit the thumbnail {self.thumbnail.shape[:2]} and k = {self.k}")
        return regions

    @cached_property
    def training(self) -> Table | None:
        """``training.csv`` (``epoch`` and the method's loss columns, see ``TRAINING_COLUMNS``); None when missing."""
        return _read_csv(self.path, TRAINING_CSV, ("epoch",)) if (self.path / TRAINING_CSV).is_file() else None

    @cached_property
    def linkage(self) -> np.ndarray | None:
        """(m - 1, 4) Ward linkage of the clustered tiles (``dendrogram.npz``); None when k was given or missing."""
        if not (self.path / DENDROGRAM_NPZ).is_file():
            return None
        try:
            with np.load(self.path / DENDROGRAM_NPZ) as npz:
                return np.asarray(npz["linkage"], dtype=np.float64) if "linkage" in npz.files else None
        except (OSError, ValueError) as exc:
            raise _damaged(self.path, DENDROGRAM_NPZ, exc) from exc

    @cached_property
    def reconstructions(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(tiles, reconstructed): a few tiles and their autoencoder reconstructions; None when missing."""
        if not (self.path / RECONSTRUCTIONS_NPZ).is_file():
            return None
        try:
            with np.load(self.path / RECONSTRUCTIONS_NPZ) as npz:
                return np.asarray(npz["tiles"]), np.asarray(npz["reconstructed"])
        except (OSError, ValueError, KeyError) as exc:
            raise _damaged(self.path, RECONSTRUCTIONS_NPZ, exc) from exc

    @cached_property
    def config_text(self) -> str | None:
        """``config.toml``; None when missing."""
        path = self.path / CONFIG_TOML
        return path.read_text(encoding="utf-8") if path.is_file() else None

    @cached_property
    def features(self) -> Table | None:
        """``features.csv`` (one row per tissue with segmented nuclei or glands); None without either."""
        return _read_csv(self.path, FEATURES_CSV, ("tissue",)) if (self.path / FEATURES_CSV).is_file() else None

    @cached_property
    def glands(self) -> Table | None:
        """``glands.csv`` (one row per gland of the representatives); None without glands."""
        path = self.path / GLANDS_CSV
        return _read_csv(self.path, GLANDS_CSV, GLAND_ID_COLUMNS) if path.is_file() else None

    @cached_property
    def nuclei(self) -> Table | None:
        """``nuclei.csv`` (one row per nucleus); None without nuclei."""
        path = self.path / NUCLEI_CSV
        return _read_csv(self.path, NUCLEI_CSV, NUCLEUS_ID_COLUMNS) if path.is_file() else None

    @cached_property
    def patch_features(self) -> Table | None:
        """``patch_features.csv`` (one row per segmented representative); None without nuclei."""
        path = self.path / PATCH_FEATURES_CSV
        return _read_csv(self.path, PATCH_FEATURES_CSV, PATCH_ID_COLUMNS) if path.is_file() else None

    @cached_property
    def embedding_colours(self) -> EmbeddingColours | None:
        """``embedding_colours.npz``, one row per row of ``tiles.csv``; None when the run has no colour layer."""
        if not (self.path / EMBEDDING_COLOURS_NPZ).is_file():
            return None
        try:
            with np.load(self.path / EMBEDDING_COLOURS_NPZ, allow_pickle=False) as npz:
                colours = EmbeddingColours(coords=np.asarray(npz["coords"], dtype=np.float32),
                                           rgb=np.asarray(npz["rgb"], dtype=np.uint8), method=str(npz["method"]))
        except (OSError, ValueError, KeyError) as exc:
            raise _damaged(self.path, EMBEDDING_COLOURS_NPZ, exc) from exc
        n = len(self.tiles.boxes)
        if colours.coords.shape != (n, 3) or colours.rgb.shape != (n, 3):
            raise _damaged(self.path, EMBEDDING_COLOURS_NPZ, f"{len(colours.coords)} rows for {n} tiles in {TILES_CSV}")
        return colours

    @property
    def geojson_path(self) -> Path:
        """The QuPath objects of the run."""
        return self.path / self.manifest.outputs.geojson

    @property
    def embedding_colours_path(self) -> Path | None:
        """The embedding-colour tile layer; None when the run has none."""
        name = self.manifest.outputs.embedding_colours
        return self.path / name if name else None

    @property
    def report_path(self) -> Path:
        """Where the run's PDF report is (or would be)."""
        return self.path / REPORT_PDF

    def geojson(self) -> list[dict[str, Any]]:
        """The features of the run's QuPath objects."""
        try:
            data = read_geojson(self.geojson_path)
        except (OSError, ValueError) as exc:
            raise _damaged(self.path, self.manifest.outputs.geojson, exc) from exc
        return data["features"] if isinstance(data, dict) else data

    @property
    def prototypes_geojson_path(self) -> Path:
        """The prototype clusters to name (:func:`write_prototype_clusters`)."""
        return self.path / PROTOTYPES_DIR / PROTOTYPES_GEOJSON

    @property
    def names_path(self) -> Path:
        """The names file to fill in for the prototype clusters."""
        return self.path / PROTOTYPES_DIR / NAMES_TOML

    @property
    def notes(self) -> list[str]:
        """What is missing among the files the report can do without."""
        notes = []
        autoencoder = self.manifest.embedding.method == "tumls-ae"
        for name, what in ((TRAINING_CSV, "no training loss curve"), (DENDROGRAM_NPZ, "no dendrogram"),
                           (RECONSTRUCTIONS_NPZ, "no reconstruction examples")):
            if name == RECONSTRUCTIONS_NPZ and not autoencoder:
                continue  # only the autoencoder reconstructs tiles
            if not (self.path / name).is_file():
                notes.append(f"{name} is missing: {what}")
        absent = [f"tissue{r.tissue}-rank{r.rank}" for r in self.representatives if r.patch is None]
        if absent:
            notes.append(f"patch image(s) missing from {PATCHES_DIR}/: {', '.join(absent)}")
        return notes

    # --- derived -----------------------------------------------------------------------------------------------------

    def tiles_per_tissue(self) -> np.ndarray:
        """Tissue tiles per tissue, index 0 = tissue 1."""
        return np.bincount(self.tiles.tissue - 1, minlength=self.k)[: self.k]

    def tissue_areas_um2(self) -> np.ndarray:
        """Area of each tissue's region in µm² (``manifest.regions``), index 0 = tissue 1."""
        areas = self._analysis().regions.area_um2
        return np.array([areas.get(t, 0.0) for t in range(1, self.k + 1)], dtype=np.float64)

    def representatives_of(self, tissue: int) -> list[RepresentativeFiles]:
        """Representatives of tissue ``tissue`` (1..k), best first."""
        return sorted((r for r in self.representatives if r.tissue == tissue), key=lambda r: r.rank)

    def feature_row(self, tissue: int) -> dict[str, float] | None:
        """The ``features.csv`` row of tissue ``tissue`` (1..k)."""
        if self.features is None:
            return None
        return next((row for row in self.features.rows if row.get("tissue") == tissue), None)

    def nuclei_of(self, tissue: int, rank: int) -> list[dict[str, float]] | None:
        """``nuclei.csv`` rows of one representative; None when there is no ``nuclei.csv``."""
        if self.nuclei is None:
            return None
        return [r for r in self.nuclei.rows if r.get("tissue") == tissue and r.get("rank") == rank]


#: Files without which a folder is not an analysis run folder.
_REQUIRED = (MANIFEST, TILES_CSV, REPRESENTATIVES_CSV, THUMBNAIL_PNG, REGIONS_PNG)


def read_run(path: str | Path, kinds: Sequence[str] = ("analysis",)) -> RunFolder:
    """Open a run folder: its manifest is read and checked now, every other file when first used.

    Parameters
    ----------
    path : path-like
        A run folder (it holds ``manifest.json``).
    kinds : sequence of str
        ``("analysis",)`` (``tumls-qp analyze``), or with ``"dictionary"`` where a slide labelled
        by a dictionary will do too (its embeddings).

    Raises
    ------
    FormatVersionError
        The folder was written in another format version.
    InvalidInputError
        ``path`` is not a folder, is an output folder holding run folders, lacks a required file,
        or its manifest is damaged; the message names the file and what to do.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InvalidInputError(
            f"run folder not found: {str(folder)!r}. Give a folder written by `tumls-qp analyze` (one per slide, "
            "inside its --out folder)."
        )
    if not (folder / MANIFEST).is_file():
        inside = sorted(p.name for p in folder.iterdir() if (p / MANIFEST).is_file())
        if inside:
            raise InvalidInputError(
                f"{str(folder)!r} is an output folder, not a run folder: it holds the run folder(s) "
                f"{', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''}. Give those instead, e.g. "
                f"`tumls-qp report {folder / inside[0]}` (or all of them for a cohort report)."
            )
    manifest = read_manifest(folder, kinds)
    required = _REQUIRED if manifest.KIND == "analysis" else (MANIFEST, EMBEDDINGS_NPZ)
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise InvalidInputError(
            f"{str(folder)!r} is not a complete tumls-qp run folder: {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing. Re-run the analysis to write it again."
        )
    return RunFolder(folder, manifest)


def _read_csv(folder: Path, name: str, required: Sequence[str] = ()) -> Table:
    """Read a CSV of numbers; an empty cell is NaN; a missing required column is an error."""
    path = folder / name
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise _damaged(folder, name, "the file is empty")
            header = [h.strip() for h in header]
            missing = [c for c in required if c not in header]
            if missing:
                raise _damaged(folder, name, f"column(s) {', '.join(missing)} missing (found {', '.join(header)})")
            rows = []
            for line, values in enumerate(reader, start=2):
                if not values:
                    continue
                if len(values) != len(header):
                    raise _damaged(folder, name, f"line {line} has {len(values)} values for {len(header)} columns")
                rows.append({h: _number(v, name, line, h, folder) for h, v in zip(header, values)})
    except OSError as exc:
        raise _damaged(folder, name, exc.strerror or exc) from exc
    except UnicodeDecodeError as exc:
        raise _damaged(folder, name, "not a text file") from exc
    return Table(columns=tuple(header), rows=tuple(rows))


def _number(value: str, name: str, line: int, column: str, folder: Path) -> float:
    value = value.strip()
    if value == "" or value.lower() in ("nan", "na", "none"):
        return math.nan
    try:
        return float(value)
    except ValueError as exc:
        raise _damaged(folder, name, f"line {line}, column {column!r}: {value!r} is not a number") from exc


def display_name(column: str) -> str:
    """A feature column as people read it: ``um^2`` -> ``µm²``, ``um`` -> ``µm``, ``mm^2`` -> ``mm²``."""
    text = re.sub(r"\bum\^2\b", "µm²", column)
    text = re.sub(r"\bmm\^2\b", "mm²", text)
    return re.sub(r"\bum\b", "µm", text)


def load_labels(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """An instance label PNG as an int array of ``shape``; raises InvalidInputError when it does not fit."""
    try:
        with Image.open(path) as image:
            labels = np.asarray(image)
    except OSError as exc:
        raise _damaged(path.parent.parent, f"{PATCHES_DIR}/{path.name}", exc) from exc
    if labels.ndim != 2 or labels.shape != shape:
        raise _damaged(path.parent.parent, f"{PATCHES_DIR}/{path.name}",
                       f"a label image of shape {shape} was expected; got {labels.shape}")
    return labels.astype(np.int64)

