"""Label-efficient methods on run folders and slides: where files meet ``seeded``, ``prototypes`` and the colours.

The algorithm modules take and return arrays; the functions here read run folders
(written by ``tumls-qp analyze``), slides and dictionary files, and hand their results to
:mod:`tumls_qp.outputs.run_folder`, which writes them. They are what the command line and
the server call:

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
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from .classes import check_class_names, check_colour, class_colour
from .errors import ConfigError, InvalidInputError, TumlsQpError
from .files import run_folder_names, writable_dir
from .interactive.embedding_colours import embedding_colours
from .interactive.prototypes import (
    DEFAULT_GAMMA,
    DEFAULT_T,
    K_RANGE,
    ClusterNaming,
    build_prototypes,
    central_tiles,
    cluster_then_query,
    direct_query,
    load_dictionary,
    load_names,
    names_template,
    over_cluster,
    save_dictionary,
)
from .interactive.seeded import seeded_iterative_clustering, seeds_to_tiles
from .outputs.classified import SIC_SCORE, classified_features
from .outputs.geojson import feature_collection, require_valid
from .outputs.run_folder import (
    DictionaryAnalysis,
    DictionaryInfo,
    DictionaryManifest,
    PrototypeClusters,
    PrototypesManifest,
    SlideInfo,
    read_prototype_clusters,
    read_run,
    write_prototype_clusters,
    write_run,
)
from .outputs.run_folder import write_embedding_colours as write_colour_layer
from .slide import open_slide, slide_quickhash
from .tissue.tiles import tissue_tiles

__all__ = [
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
]

log = logging.getLogger(__name__)

#: Folders whose embeddings seeded clustering and the embedding colours can use.
_EMBEDDING_KINDS = ("analysis", "dictionary")

#: A seed annotation: (class name, (r, g, b) or None for a default colour, shapely geometry in level-0 px).
Seed = tuple[str, Sequence[int] | None, BaseGeometry]


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
        A run folder of ``tumls-qp analyze`` or of ``tumls-qp apply-dictionary`` (its embeddings).
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
    started = time.perf_counter()
    run = read_run(run_dir, kinds=_EMBEDDING_KINDS)
    embeddings = run.embeddings
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
    seed_tiles = seeds_to_tiles(embeddings.boxes, pairs)
    result = seeded_iterative_clustering(embeddings.latents, seed_tiles.tiles, positive=positive,
                                         conventional_step=conventional_step, seed=seed)
    names = result.classes
    rgb = tuple(colours[n] or class_colour(i) for i, n in enumerate(names))
    features = classified_features(embeddings.boxes, result.labels, result.confidence, names, rgb, run.mpp,
                                   score_name=SIC_SCORE, region_suffix="SIC", tile_objects=tile_objects)
    warnings = []
    if len(seed_tiles.conflicts):
        warnings.append(f"{len(seed_tiles.conflicts)} tile(s) covered by seeds of different classes were not used "
                        "as seeds")
    return SeededClassification(
        feature_collection=require_valid(feature_collection(features)), result=result, seed_tiles=seed_tiles, classes=names, colours=rgb,
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

def write_prototypes(
    run_dir: str | os.PathLike[str],
    *,
    k: int | None = None,
    t: int | None = None,
    seed: int | None = None,
) -> Path:
    """Over-cluster a run's tiles for naming; write ``<run>/prototypes/`` atomically and return it.

    The folder (:func:`tumls_qp.outputs.run_folder.write_prototype_clusters`) holds the clusters,
    ``prototypes.geojson`` (per cluster an annotation "Prototype j" over its tiles and its t central
    tiles "Prototype j central r", each in the cluster's own colour and unclassified: assign them
    a class in QuPath) and ``names.toml``, a template to fill in for :func:`make_dictionary`.

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
    run = read_run(run_dir)
    t = DEFAULT_T if t is None else t
    seed = run.config.seed if seed is None else seed
    over = over_cluster(run.embeddings.latents, k=k, seed=seed)
    source = "elbow of the within-cluster distance" if over.k_source == "elbow" else "user"
    return write_prototype_clusters(run, PrototypeClusters(
        clusters=over, central=central_tiles(over.distance, over.labels, over.k, t), t=t, seed=seed,
        k_range=K_RANGE, names_template=names_template(over.k, run.slide_name, source)))


def load_overclustering(run_dir: str | os.PathLike[str]) -> tuple[Any, PrototypesManifest]:
    """The prototype clusters written by :func:`write_prototypes` and their manifest.

    Raises
    ------
    InvalidInputError
        There are none, or they belong to other embeddings than the run's.
    """
    return read_prototype_clusters(read_run(run_dir))


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
    run = read_run(run_dir)
    over, proto_manifest = read_prototype_clusters(run)
    if not isinstance(naming, ClusterNaming):
        naming = load_names(naming, over.k)
    prototypes, prototype_class, clusters = build_prototypes(over, naming)
    slide = run.manifest.slide
    provenance = {
        "run": str(run.path.resolve()),
        "slide": {"name": slide.name, "path": slide.path, "quickhash": slide.quickhash, "mpp": slide.mpp},
        "run_created": run.manifest.created,
        "run_version": run.manifest.version,
        "prototype_clusters": {"k": over.k, "k_source": over.k_source, "t": proto_manifest.t,
                               "seed": proto_manifest.seed, "tiles_per_cluster": over.sizes()},
        "naming": naming.summary(over.k),
        **dict(extra_provenance or {}),
    }
    return save_dictionary(out_path, prototypes, prototype_class, naming.classes, naming.colours, run.path,
                           run.config, provenance, prototype_cluster=clusters + 1)


@dataclass
class DictionaryRun:
    """One slide labelled by a dictionary: the slide, its result folder and the manifest written there."""

    slide: Path
    out_dir: Path
    manifest: DictionaryManifest


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
    ``<out_dir>/<slide>/`` (a run folder of the kind ``dictionary``, written atomically) holds
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
    from .tissue.embeddings import TileImages, needs_views, resolve_device
    from .tissue.tiles import read_views

    if query not in ("cq", "dq"):
        raise ConfigError(f"query must be 'cq' (Cluster-then-Query) or 'dq' (Direct-Query); got {query!r}")
    progress = progress or (lambda stage, fraction, message: None)
    book = load_dictionary(dictionary)
    gamma = DEFAULT_GAMMA if gamma is None else gamma
    seed = book.config.seed if seed is None else seed
    torch_device = resolve_device(device)
    encoder = book.load_encoder().to(torch_device)
    embedding_cfg = book.config.embedding
    with open(book.path, "rb") as fh:
        dictionary_sha = hashlib.file_digest(fh, "sha256").hexdigest()
    info = DictionaryInfo(path=str(book.path.resolve()), sha256=dictionary_sha, classes=tuple(book.classes),
                          prototypes=len(book.prototypes), source_run=book.provenance.get("run"))
    out = writable_dir(Path(out_dir))
    paths = [Path(s) for s in slides]
    if not paths:
        raise InvalidInputError("no slide given")
    names = run_folder_names(paths)
    results: list[DictionaryRun] = []
    first_error: TumlsQpError | None = None
    for index, (path, name) in enumerate(zip(paths, names)):
        try:
            started = time.perf_counter()
            created = datetime.now(timezone.utc)
            progress("tiles", index / len(paths), f"reading {path.name}")
            slide_cfg = book.config.slide
            with open_slide(path, mpp=mpp if mpp is not None else slide_cfg.mpp,
                            mpp_override=slide_cfg.mpp_override and mpp is None) as slide:
                tiles = tissue_tiles(slide, book.config.tiles, allow_non_he=slide_cfg.allow_non_he)
                slide_info = SlideInfo.of(slide, slide_quickhash(slide.path))
                images = TileImages(tiles=tiles.tiles)
                if needs_views(encoder.method):
                    views, view_mpp = read_views(slide, tiles.grid, tiles.selection.kept, embedding_cfg.view_um,
                                                 embedding_cfg.view_px)
                    images = TileImages(tiles=tiles.tiles, views=views, view_mpp=view_mpp)
            progress("embed", index / len(paths), f"embedding {len(tiles.tiles)} tiles of {path.name}")
            latents = encoder.embed(images)
            dq = direct_query(latents, book.prototypes, book.prototype_class)
            cq = cluster_then_query(latents, book.prototypes, book.prototype_class, gamma=gamma, seed=seed)
            manifest = write_run(out / name, DictionaryAnalysis(
                dictionary=info, class_colours=tuple(book.colours), slide=slide_info, boxes=tiles.boxes,
                latents=latents, dq=dq, cq=cq, query=query, gamma=gamma, seed=seed, tile_objects=tile_objects,
                gzip=gzip, device=str(torch_device), created=created, seconds=time.perf_counter() - started,
                config=book.config))
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
    """Write (or replace) a run's embedding-colour layer, its arrays and its figure (``embedding_colours.png``).

    Each file goes into the run folder atomically, and the run's manifest names the layer. See
    :mod:`tumls_qp.interactive.embedding_colours`.

    Returns
    -------
    (GeoJSON path, PNG path, method used)
    """
    run = read_run(run_dir, kinds=_EMBEDDING_KINDS)
    seed = run.config.seed if seed is None else seed
    colours = embedding_colours(run.embeddings.latents, method, seed)
    geojson, png = write_colour_layer(run, colours, title=f"{run.slide_name}: embedding colours ({colours.method.upper()})")
    return geojson, png, colours.method
