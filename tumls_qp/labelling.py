"""Label-efficient methods on run folders and slides: where files meet ``seeded``, ``prototypes`` and the colours.

The algorithm modules take and return arrays; the functions here read run folders
(written by ``tumls-qp analyze``), slides and dictionary files, and write QuPath GeoJSON
and result folders. They are what the command line and the server call:

- :func:`seeded_classification` — the whole seeded-clustering request (``POST /jobs/{id}/seeded``):
  a run folder and seed annotations in, a validated GeoJSON FeatureCollection out, in
  seconds and without retraining.
- :func:`parse_seed_request` / :func:`seeds_from_geojson` — seeds from a request body or a
  QuPath annotation export.
- :func:`write_prototypes`, :func:`make_dictionary`, :func:`apply_dictionary` — the prototype
  dictionary from clustering to naming to new slides.
- :func:`write_embedding_colours` — the embedding-colour layer and figure of a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import shapely
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from . import __version__
from .config import PipelineConfig, config_from_dict, config_to_dict
from .errors import ConfigError, InvalidInputError, OutputError, TumlsQpError
from .files import replace_dir, run_folder_names, staging_dir, write_csv, write_json
from .outputs.classified import check_class_names, check_colour, classified_features
from .outputs.geojson import feature_collection, make_feature, validate_geojson, write_geojson

__all__ = [
    "RunData",
    "load_run",
    "Seed",
    "SeededClassification",
    "seeded_classification",
    "parse_seed_request",
    "seeds_from_geojson",
    "write_prototypes",
    "load_overclustering",
    "make_dictionary",
    "apply_dictionary",
    "DictionaryRun",
    "write_embedding_colours",
    "SIC_SCORE",
    "DICTIONARY_SCORE",
    "PROTOTYPES_DIR",
]

log = logging.getLogger(__name__)

#: Tile measurement of seeded clustering (also tags its objects for replacement on a re-run).
SIC_SCORE = "SIC confidence"
#: Tile measurement of dictionary queries.
DICTIONARY_SCORE = "Dictionary confidence"
#: Folder inside a run folder that holds its prototype clusters (``tumls-qp prototypes``).
PROTOTYPES_DIR = "prototypes"

#: A seed annotation: (class name, (r, g, b) or None for a default colour, shapely geometry in level-0 px).
Seed = tuple[str, Sequence[int] | None, BaseGeometry]


# --- run folders --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunData:
    """What the label-efficient methods need from a run folder.

    Attributes
    ----------
    run_dir : Path
    latents : (n, d) float32 ndarray
    boxes : (n, 4) int64 ndarray
        (x, y, width, height) in level-0 px.
    mpp : float
        Level-0 pixel size in µm/px.
    slide_name : str
    manifest : dict
    """

    run_dir: Path
    latents: np.ndarray
    boxes: np.ndarray
    mpp: float
    slide_name: str
    manifest: dict[str, Any]

    @property
    def config(self) -> PipelineConfig:
        """The run's effective configuration."""
        return config_from_dict(self.manifest.get("config", {}))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_run(run_dir: str | os.PathLike[str]) -> RunData:
    """Read a run folder's embeddings, tile boxes and pixel size.

    Raises
    ------
    InvalidInputError
        The folder is missing, is not a run folder, or its files are damaged.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise InvalidInputError(f"run folder not found: {str(run)!r}")
    npz, manifest_path = run / "embeddings.npz", run / "manifest.json"
    if not npz.is_file() or not manifest_path.is_file():
        raise InvalidInputError(
            f"{str(run)!r} is not a tumls-qp run folder (no embeddings.npz or manifest.json); run "
            "`tumls-qp analyze SLIDE --out DIR` and pass DIR/<slide name>"
        )
    try:
        with np.load(npz, allow_pickle=False) as data:
            latents = np.asarray(data["latents"], dtype=np.float32)
            boxes = np.asarray(data["boxes"], dtype=np.int64)
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        mpp = float(manifest["slide"]["mpp"])
        name = str(manifest["slide"].get("name", run.name))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"the run folder {str(run)!r} is damaged ({type(exc).__name__}: {exc}); "
                                "run the analysis again") from exc
    if latents.ndim != 2 or boxes.shape != (len(latents), 4) or len(latents) < 2:
        raise InvalidInputError(f"the run folder {str(run)!r} is damaged: latents {latents.shape} and boxes "
                                f"{boxes.shape} do not match")
    return RunData(run_dir=run, latents=latents, boxes=boxes, mpp=mpp, slide_name=name, manifest=manifest)


def _validated(features: list[dict[str, Any]]) -> dict[str, Any]:
    collection = feature_collection(features)
    problems = validate_geojson(collection)
    if problems:  # a bug, not bad input: never hand QuPath a file it would refuse
        raise RuntimeError("generated GeoJSON breaks QuPath's rules: " + "; ".join(problems[:5]))
    return collection


# --- seeded clustering --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SeededClassification:
    """The answer to a seeded-clustering request.

    Attributes
    ----------
    feature_collection : dict
        QuPath GeoJSON, validated: one annotation per class (the union of its tiles, named
        "<class> (SIC)", measurements ``Area um^2``, ``Tile count``, ``Mean SIC confidence``),
        then one ``tile`` per tile with its class and ``SIC confidence``.
    result : SeededResult
    seed_tiles : SeedTiles
    classes : tuple of str
    colours : tuple of (r, g, b)
    seconds : float
        Time the request took.
    warnings : list of str
    """

    feature_collection: dict[str, Any]
    result: Any
    seed_tiles: Any
    classes: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Numbers for a response body or a log line."""
        return {
            "mode": self.result.mode,
            "positive": self.result.positive,
            "classes": [{"name": n, "color": list(c), "tiles": self.result.counts()[n],
                         "seed_tiles": int(len(self.seed_tiles.tiles[n]))}
                        for n, c in zip(self.classes, self.colours)],
            "seed_f1": round(self.result.seed_f1, 4),
            "accepted_splits": sum(1 for s in self.result.steps[1:] if s.accepted),
            "conflicting_tiles": int(len(self.seed_tiles.conflicts)),
            "seconds": round(self.seconds, 3),
            "warnings": self.warnings,
        }


def seeded_classification(
    run_dir: str | os.PathLike[str],
    seeds: Sequence[Seed],
    *,
    positive: str | None = None,
    conventional_step: bool = True,
    tile_objects: bool = True,
    seed: int = 0,
) -> SeededClassification:
    """Seeded iterative clustering of a run's cached embeddings from seed annotations (no retraining).

    This is the function behind ``POST /jobs/{id}/seeded``: the server passes the job's run
    folder and the seeds of the request (see :func:`parse_seed_request`) and returns
    ``.feature_collection``. About 1.2 s for 10,000 tiles on two shared CPU cores, most of it
    building the tile objects (``reports/label_efficient.md``).

    Parameters
    ----------
    run_dir : path-like
        A run folder of ``tumls-qp analyze`` (its ``embeddings.npz`` and ``manifest.json``).
    seeds : sequence of (class name, colour, geometry)
        The user's classified annotations: class name (no ':'), colour ``(r, g, b)`` or None
        (a default), and a shapely geometry in level-0 px of the slide (QuPath's frame).
        Points, lines (scribbles) and polygons; see :func:`tumls_qp.interactive.seeded.seeds_to_tiles`.
        The first colour given for a class is used.
    positive : str, optional
        With exactly two classes, the class to treat as Algorithm 1's positive class; default
        the multi-class scheme (see :mod:`tumls_qp.interactive.seeded`).
    conventional_step : bool
        Binary mode: allow Algorithm 1's extra plain 2-means step.
    tile_objects : bool
        Include one ``tile`` object per tile (the per-tile confidence map).
    seed : int

    Returns
    -------
    SeededClassification

    Raises
    ------
    InvalidInputError
        Not a run folder; no seeds; seeds of one class only; a seed outside the analysed tissue
        (named in the message); bad class names or colours.
    """
    from .interactive.seeded import seeded_iterative_clustering, seeds_to_tiles

    started = time.perf_counter()
    run = load_run(run_dir)
    if not seeds:
        raise InvalidInputError(
            "no seeds were given: draw a few annotations of at least two classes (e.g. 'Tumor' and 'Benign') "
            "on the tissue and send them"
        )
    colours: dict[str, tuple[int, int, int] | None] = {}
    pairs = []
    for i, item in enumerate(seeds):
        try:
            name, colour, geometry = item
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"seed {i + 1} must be (class name, colour, geometry); got {item!r}") from exc
        if isinstance(name, str) and name not in colours:
            colours[name] = None if colour is None else check_colour(colour, f"the colour of class {name!r}")
        elif isinstance(name, str) and colours[name] is None and colour is not None:
            colours[name] = check_colour(colour, f"the colour of class {name!r}")
        pairs.append((name, geometry))
    check_class_names([n for n in colours])
    seed_tiles = seeds_to_tiles(run.boxes, pairs)
    result = seeded_iterative_clustering(run.latents, seed_tiles.tiles, positive=positive,
                                         conventional_step=conventional_step, seed=seed)
    from .interactive.prototypes import class_colour

    names = result.classes
    rgb = tuple(colours[n] or class_colour(i) for i, n in enumerate(names))
    features = classified_features(run.boxes, result.labels, result.confidence, names, rgb, run.mpp,
                                   score_name=SIC_SCORE, region_suffix="SIC", tile_objects=tile_objects)
    warnings = []
    if len(seed_tiles.conflicts):
        warnings.append(f"{len(seed_tiles.conflicts)} tile(s) covered by seeds of different classes were not used "
                        "as seeds")
    return SeededClassification(
        feature_collection=_validated(features), result=result, seed_tiles=seed_tiles, classes=names, colours=rgb,
        seconds=time.perf_counter() - started, warnings=warnings,
    )


def _geometry(obj: Any, where: str) -> BaseGeometry:
    if not isinstance(obj, Mapping) or "type" not in obj:
        raise InvalidInputError(f"{where}: 'geometry' must be a GeoJSON geometry object; got {obj!r}")
    try:
        geometry = shape(obj)
    except Exception as exc:  # shapely raises several types on malformed input
        raise InvalidInputError(f"{where}: unreadable GeoJSON geometry ({exc})") from exc
    if geometry.is_empty:
        raise InvalidInputError(f"{where}: the geometry is empty")
    return geometry


def parse_seed_request(body: Any) -> list[Seed]:
    """Seeds from a request body ``{"seeds": [{"class": name, "color": [r, g, b], "geometry": {...}}]}``.

    ``color`` is optional; ``geometry`` is GeoJSON in level-0 px.

    Raises
    ------
    InvalidInputError
        The body does not have that shape (the message names the seed and the field).
    """
    if not isinstance(body, Mapping) or not isinstance(body.get("seeds"), list):
        raise InvalidInputError('the request must be {"seeds": [{"class": ..., "color": [r, g, b], "geometry": ...}]}')
    out: list[Seed] = []
    for i, item in enumerate(body["seeds"]):
        where = f"seeds[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidInputError(f"{where} must be an object with class, color and geometry")
        name = item.get("class")
        if not isinstance(name, str) or not name.strip():
            raise InvalidInputError(f"{where}: 'class' must be a non-empty class name; got {name!r}")
        colour = item.get("color")
        out.append((name, None if colour is None else check_colour(colour, f"{where}.color"),
                    _geometry(item.get("geometry"), where)))
    return out


def seeds_from_geojson(data: Any) -> list[Seed]:
    """Seeds from QuPath GeoJSON (an export of classified annotations): class, colour and geometry of each.

    Unclassified features are skipped.

    Raises
    ------
    InvalidInputError
        Not GeoJSON features, or no classified feature.
    """
    if isinstance(data, Mapping) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, Mapping) and data.get("type") == "Feature":
        features = [data]
    else:
        features = data
    if not isinstance(features, list):
        raise InvalidInputError("seeds must be a GeoJSON FeatureCollection, a Feature or a list of Features")
    out: list[Seed] = []
    for i, feature in enumerate(features):
        if not isinstance(feature, Mapping):
            raise InvalidInputError(f"feature {i} is not a GeoJSON Feature")
        classification = (feature.get("properties") or {}).get("classification")
        if not isinstance(classification, Mapping) or not classification.get("name"):
            continue
        colour = classification.get("color")
        if isinstance(colour, int) and not isinstance(colour, bool):  # packed RGB, as some exporters write
            colour = ((colour >> 16) & 255, (colour >> 8) & 255, colour & 255)
        out.append((str(classification["name"]),
                    None if colour is None else check_colour(colour, f"feature {i} colour"),
                    _geometry(feature.get("geometry"), f"feature {i}")))
    if not out:
        raise InvalidInputError("no classified annotation among the seeds: give each seed a class (e.g. Tumor)")
    return out


# --- prototype dictionary -----------------------------------------------------------------------------------------------

def _prototype_colour(j: int) -> tuple[int, int, int]:
    """A distinct colour per prototype cluster: the tissue palette, then golden-angle hues."""
    import colorsys

    from .classes import tissue_colour

    if j < 12:
        return tissue_colour(j)
    r, g, b = colorsys.hsv_to_rgb((j * 0.618033988749895) % 1.0, 0.65, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


def write_prototypes(
    run_dir: str | os.PathLike[str],
    *,
    k: int | None = None,
    t: int | None = None,
    seed: int | None = None,
) -> Path:
    """Over-cluster a run's tiles for naming; write ``<run>/prototypes/`` atomically.

    The folder holds ``clusters.npz`` (``labels``, ``centroids``, ``distance``, ``central``:
    k × t tile indices padded with −1, ``elbow_k``, ``elbow_inertia``), ``prototypes.geojson``
    (per cluster an annotation "Prototype j" over its tiles and its t central tiles as
    annotations "Prototype j central r", each in the cluster's own colour and unclassified, with
    measurements ``Prototype`` and ``Rank``: assign them a class in QuPath), ``names.toml`` (a
    template to fill in for :func:`make_dictionary`) and ``manifest.json``.

    Parameters
    ----------
    run_dir : path-like
    k : int, optional
        Number of clusters; default from the elbow rule.
    t : int, optional
        Central tiles per cluster (default 10, the paper's).
    seed : int, optional
        Default: the run's seed.
    """
    from .interactive.prototypes import DEFAULT_T, K_RANGE, central_tiles, names_template, over_cluster

    run = load_run(run_dir)
    t = DEFAULT_T if t is None else t
    seed = run.config.seed if seed is None else seed
    over = over_cluster(run.latents, k=k, seed=seed)
    central = central_tiles(over.distance, over.labels, over.k, t)
    features = []
    for j in range(over.k):
        members = np.flatnonzero(over.labels == j)
        if len(members) == 0:
            continue
        union = shapely.unary_union([box(x, y, x + w, y + h) for x, y, w, h in run.boxes[members]])
        feature = make_feature(union, "annotation", None, None,
                               {"Prototype": j + 1, "Tile count": len(members),
                                "Area um^2": union.area * run.mpp ** 2}, name=f"Prototype {j + 1}")
        if feature is not None:
            feature["properties"]["color"] = list(_prototype_colour(j))
            features.append(feature)
        for rank, tile in enumerate(central[j], start=1):
            x, y, w, h = run.boxes[tile]
            feature = make_feature(box(x, y, x + w, y + h), "annotation", None, None,
                                   {"Prototype": j + 1, "Rank": rank, "Distance": float(over.distance[tile])},
                                   name=f"Prototype {j + 1} central {rank}")
            if feature is not None:
                feature["properties"]["color"] = list(_prototype_colour(j))
                features.append(feature)
    collection = _validated(features)
    padded = np.full((over.k, t), -1, dtype=np.int64)
    for j, tiles in enumerate(central):
        padded[j, : len(tiles)] = tiles
    stage = staging_dir(run.run_dir, PROTOTYPES_DIR)
    try:
        arrays = {"labels": over.labels, "centroids": over.centroids, "distance": over.distance, "central": padded}
        if over.elbow is not None:
            arrays |= {"elbow_k": over.elbow.ks, "elbow_inertia": over.elbow.inertia}
        np.savez_compressed(stage / "clusters.npz", **arrays)
        write_geojson(collection, stage / "prototypes.geojson")
        source = "elbow of the within-cluster distance" if over.k_source == "elbow" else "user"
        (stage / "names.toml").write_text(names_template(over.k, run.slide_name, source), encoding="utf-8")
        write_json(stage / "manifest.json", {
            "tool": "tumls-qp", "command": "prototypes", "version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "k": over.k, "k_source": over.k_source, "k_range": list(K_RANGE), "t": t, "seed": seed,
            "tiles_per_cluster": over.sizes(),
            "elbow": None if over.elbow is None else {
                "n_tiles": over.elbow.n_tiles, "k": over.elbow.k,
                "inertia": [float(v) for v in over.elbow.inertia]},
            "embeddings_sha256": _sha256_file(run.run_dir / "embeddings.npz"),
        })
        replace_dir(stage, run.run_dir / PROTOTYPES_DIR)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return run.run_dir / PROTOTYPES_DIR


def load_overclustering(run_dir: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """The prototype clusters written by :func:`write_prototypes` and their manifest.

    Raises
    ------
    InvalidInputError
        There are none, or they belong to other embeddings than the run's.
    """
    from .interactive.prototypes import Overclustering

    run = Path(run_dir)
    folder = run / PROTOTYPES_DIR
    if not (folder / "clusters.npz").is_file():
        raise InvalidInputError(f"{str(run)!r} has no prototype clusters yet: run `tumls-qp prototypes {run}` "
                                "first, then name the clusters")
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        with np.load(folder / "clusters.npz", allow_pickle=False) as data:
            labels, centroids, distance = data["labels"], data["centroids"], data["distance"]
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidInputError(f"the prototype clusters in {str(folder)!r} are damaged ({exc}); run "
                                f"`tumls-qp prototypes {run}` again") from exc
    if manifest.get("embeddings_sha256") != _sha256_file(run / "embeddings.npz"):
        raise InvalidInputError(f"the prototype clusters in {str(folder)!r} were made from other embeddings than "
                                f"the run's; run `tumls-qp prototypes {run}` again and name the new clusters")
    over = Overclustering(k=int(manifest["k"]), k_source=str(manifest["k_source"]), labels=labels.astype(np.int64),
                          centroids=centroids.astype(np.float32), distance=distance.astype(np.float32))
    return over, manifest


def make_dictionary(
    run_dir: str | os.PathLike[str],
    naming: Any,
    out_path: str | os.PathLike[str],
    *,
    extra_provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Save the named prototype clusters of a run as a dictionary file.

    Parameters
    ----------
    run_dir : path-like
        A run folder with prototype clusters (:func:`write_prototypes`).
    naming : ClusterNaming or path-like
        The names (:func:`tumls_qp.interactive.prototypes.naming_from_mapping`, as a server builds from a
        QuPath script's mapping), or a names file (:func:`tumls_qp.interactive.prototypes.load_names`).
    out_path : path-like
        The dictionary file (``.tumlsdict`` by convention), written atomically.
    extra_provenance : mapping, optional
        More provenance entries (JSON-safe), e.g. the server job and a name the user gave.
    """
    from .interactive.prototypes import ClusterNaming, build_prototypes, load_names, save_dictionary

    run = load_run(run_dir)
    over, proto_manifest = load_overclustering(run.run_dir)
    if not isinstance(naming, ClusterNaming):
        naming = load_names(naming, over.k)
    prototypes, prototype_class, clusters = build_prototypes(over, naming)
    provenance = {
        "run": str(run.run_dir.resolve()),
        "slide": {k: run.manifest["slide"].get(k) for k in ("name", "path", "quickhash", "mpp")},
        "run_created": run.manifest.get("created"),
        "run_version": run.manifest.get("version"),
        "prototype_clusters": {"k": over.k, "k_source": over.k_source, "t": proto_manifest.get("t"),
                               "seed": proto_manifest.get("seed"), "tiles_per_cluster": over.sizes()},
        "naming": naming.summary(over.k),
        **dict(extra_provenance or {}),
    }
    return save_dictionary(out_path, prototypes, prototype_class, naming.classes, naming.colours, run.run_dir,
                           run.config, provenance, prototype_cluster=clusters + 1)


@dataclass
class DictionaryRun:
    """One slide labelled by a dictionary."""

    slide: Path
    out_dir: Path
    manifest: dict[str, Any]


def _slide_tiles(path: Path, config: PipelineConfig, mpp: float | None) -> tuple[Any, np.ndarray, np.ndarray]:
    """Open a slide and cut its tissue tiles as the dictionary's run did; returns (slide, boxes, tiles)."""
    from .slide import open_slide
    from .tissue.tiles import (check_brightfield_he, plan_grid, read_thumbnail, require_tissue, select_tiles,
                               tile_pixels, tissue_mask)

    slide_cfg = config.slide
    given = mpp if mpp is not None else slide_cfg.mpp
    slide = open_slide(path, mpp=given, mpp_override=slide_cfg.mpp_override and mpp is None)
    try:
        grid = plan_grid(slide, config.tiles)
        thumbnail = read_thumbnail(slide, grid)
        if not slide_cfg.allow_non_he:
            check_brightfield_he(thumbnail)
        mask = tissue_mask(thumbnail, grid.lowres_mpp, config.tiles)
        if not slide_cfg.allow_non_he:
            check_brightfield_he(thumbnail, mask)
        selection = select_tiles(thumbnail, mask, grid, config.tiles)
        require_tissue(selection, grid, config.tiles, path.name)
        return slide, grid.boxes(selection.kept), tile_pixels(thumbnail, grid, selection.kept)
    except BaseException:
        slide.close()
        raise


def apply_dictionary(
    dictionary: str | os.PathLike[str],
    slides: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    query: str = "cq",
    gamma: int | None = None,
    seed: int | None = None,
    device: str = "auto",
    mpp: float | None = None,
    gzip: bool = False,
    tile_objects: bool = True,
    progress: Callable[[str, float, str], None] | None = None,
) -> list[DictionaryRun]:
    """Label new slides with a dictionary: one result folder per slide in ``out_dir``.

    Each slide is tiled, filtered and embedded as the dictionary's source run was (its
    configuration and encoder), then queried with Direct-Query and Cluster-then-Query.
    ``<out_dir>/<slide>/`` (built in a staging folder and renamed into place) holds
    ``dictionary.geojson`` (the ``query`` result: one annotation per class, named
    "<class> (dictionary)", with ``Area um^2``, ``Tile count``, ``Mean Dictionary confidence``,
    then one ``tile`` per tile with ``Dictionary confidence`` and ``Prototype distance``),
    ``tiles.csv`` (both queries per tile), ``embeddings.npz`` (``latents``, ``boxes``, so that
    seeded clustering can run on the slide too) and ``manifest.json``.

    Parameters
    ----------
    dictionary : path-like
        A dictionary file (:func:`make_dictionary`).
    slides : sequence of path-like
    out_dir : path-like
    query : {"cq", "dq"}
        Which query the GeoJSON shows (``tiles.csv`` has both).
    gamma : int, optional
        Cluster-then-Query's γ (default 5).
    seed : int, optional
        Default: the dictionary's run seed.
    device : str
        For the encoder: ``auto``, ``cpu``, ``cuda`` or ``mps``.
    mpp : float, optional
        Level-0 pixel size for slides that do not state one.
    gzip : bool
        Write ``dictionary.geojson.gz``.
    tile_objects : bool
    progress : callable(stage, fraction, message), optional

    Returns
    -------
    list of DictionaryRun
        In the order of ``slides``; when a slide fails, the others are still labelled and the
        first error is raised at the end.
    """
    from .tissue.embeddings import embed_tiles, resolve_device
    from .interactive.prototypes import DEFAULT_GAMMA, cluster_then_query, direct_query, load_dictionary
    from .slide import slide_quickhash

    if query not in ("cq", "dq"):
        raise ConfigError(f"query must be 'cq' (Cluster-then-Query) or 'dq' (Direct-Query); got {query!r}")
    progress = progress or (lambda stage, fraction, message: None)
    book = load_dictionary(dictionary)
    gamma = DEFAULT_GAMMA if gamma is None else gamma
    seed = book.config.seed if seed is None else seed
    torch_device = resolve_device(device)
    model = book.load_encoder()
    dictionary_sha = _sha256_file(book.path)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write into the output folder {str(out)!r}: {exc.strerror or exc}") from exc
    paths = [Path(s) for s in slides]
    if not paths:
        raise InvalidInputError("no slide given")
    names = run_folder_names(paths)
    results: list[DictionaryRun] = []
    first_error: TumlsQpError | None = None
    for index, (path, name) in enumerate(zip(paths, names)):
        try:
            started = time.perf_counter()
            progress("tiles", index / len(paths), f"reading {path.name}")
            slide, boxes, tiles = _slide_tiles(path, book.config, mpp)
            try:
                slide_info = {"path": str(slide.path.resolve()), "name": slide.path.name,
                              "quickhash": slide_quickhash(slide.path), "width_px": slide.dimensions[0],
                              "height_px": slide.dimensions[1], "mpp": slide.mpp, "mpp_source": slide.mpp_source}
            finally:
                slide.close()
            progress("embed", index / len(paths), f"embedding {len(tiles)} tiles of {path.name}")
            latents = embed_tiles(model, tiles, device=torch_device)
            dq = direct_query(latents, book.prototypes, book.prototype_class)
            cq = cluster_then_query(latents, book.prototypes, book.prototype_class, gamma=gamma, seed=seed)
            shown = cq if query == "cq" else dq
            features = classified_features(
                boxes, shown.labels, shown.confidence, book.classes, book.colours, slide_info["mpp"],
                score_name=DICTIONARY_SCORE, region_suffix="dictionary", tile_objects=tile_objects,
                tile_measurements={"Prototype distance": shown.distance},
            )
            collection = _validated(features)
            stage = staging_dir(out, name)
            try:
                geojson_name = "dictionary.geojson.gz" if gzip else "dictionary.geojson"
                write_geojson(collection, stage / geojson_name)
                write_csv(stage / "tiles.csv",
                           ["x", "y", "w", "h", "class_dq", "confidence_dq", "distance_dq", "class_cq",
                            "confidence_cq", "group_cq"],
                           [[*map(int, b), book.classes[a], f"{ca:.4f}", f"{da:.4f}", book.classes[c], f"{cc:.4f}",
                             int(g) + 1]
                            for b, a, ca, da, c, cc, g in zip(boxes, dq.labels, dq.confidence, dq.distance,
                                                              cq.labels, cq.confidence, cq.groups)])
                np.savez_compressed(stage / "embeddings.npz", latents=latents.astype(np.float32),
                                    boxes=boxes.astype(np.int64), labels=shown.labels,
                                    confidence=shown.confidence)
                counts = {m: {n: int(v) for n, v in zip(book.classes, np.bincount(r.labels, minlength=len(book.classes)))}
                          for m, r in (("dq", dq), ("cq", cq))}
                manifest = {
                    "tool": "tumls-qp", "command": "apply-dictionary", "version": __version__,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "dictionary": {"path": str(book.path.resolve()), "sha256": dictionary_sha,
                                   "classes": list(book.classes), "prototypes": len(book.prototypes),
                                   "source_run": book.provenance.get("run")},
                    "slide": slide_info,
                    "tiles": {"kept": len(boxes), "tile_um": book.config.tiles.tile_um,
                              "tile_px": book.config.tiles.tile_px},
                    "query": {"shown": query, "gamma": gamma, "d": cq.d, "groups": cq.n_groups, "seed": seed,
                              "tiles_per_class": counts,
                              "agreement_dq_cq": float(np.mean(dq.labels == cq.labels))},
                    "outputs": {"geojson": geojson_name, "geojson_features": len(features)},
                    "seconds": round(time.perf_counter() - started, 3),
                    "config": config_to_dict(book.config),
                }
                write_json(stage / "manifest.json", manifest)
                replace_dir(stage, out / name)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
            results.append(DictionaryRun(slide=path, out_dir=out / name, manifest=manifest))
        except TumlsQpError as exc:
            if len(paths) > 1:
                log.error("%s: %s", path.name, exc)
            first_error = first_error or exc
    progress("outputs", 1.0, f"{len(results)} slide(s) labelled")
    if first_error is not None:
        if len(paths) > 1:
            first_error.add_note(f"{len(results)} of {len(paths)} slides were labelled")
        raise first_error
    return results


# --- embedding colours --------------------------------------------------------------------------------------------------

def write_embedding_colours(
    run_dir: str | os.PathLike[str], *, method: str = "auto", seed: int | None = None
) -> tuple[Path, Path, str]:
    """Write a run's embedding-colour layer (``embedding_colours.geojson``) and figure (``embedding_colours.png``).

    Both go into the run folder, each written atomically. See :mod:`tumls_qp.interactive.embedding_colours`.

    Returns
    -------
    (geojson path, png path, method used)
    """
    from .interactive.embedding_colours import draw_embedding_colours, embedding_colour_features, embedding_colours

    run = load_run(run_dir)
    seed = run.config.seed if seed is None else seed
    colours = embedding_colours(run.latents, method, seed)
    collection = _validated(embedding_colour_features(run.boxes, colours))
    geojson = write_geojson(collection, run.run_dir / "embedding_colours.geojson")
    png = draw_embedding_colours(colours, run.run_dir / "embedding_colours.png", boxes=run.boxes,
                                 title=f"{run.slide_name}: embedding colours ({colours.method.upper()})")
    return geojson, png, colours.method
