"""The only place where all stages meet: slides in, one run folder per slide out.

A run folder (named after the slide) holds everything needed to reproduce and
re-render the analysis; see the README's "Outputs" for every file. It is built in a
hidden staging folder next to it and renamed into place at the very end, so a failed
or cancelled run leaves no half-written outputs (an earlier run folder of the same
name stays untouched until the new one is complete).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import resource
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from . import __version__
from .tissue.clusters import Clustering, cluster_embeddings
from .config import PipelineConfig, config_to_dict, dump_config
from .errors import ConfigError, OutputError, TumlsQpError
from .provenance import package_versions
from .files import replace_dir, run_folder_names, write_csv, write_json
from .classes import NUCLEUS_CLASS, NUCLEUS_COLOUR
from .outputs.geojson import feature_collection, make_feature, tissue_features, validate_geojson, write_geojson
from .tissue.representatives import Representative, select_representatives
from .slide import Slide, open_slide, slide_quickhash
from .tissue.tiles import (
    TileGrid,
    TileSelection,
    check_brightfield_he,
    plan_grid,
    read_thumbnail,
    require_tissue,
    select_tiles,
    tile_pixels,
    tissue_mask,
)

__all__ = ["analyze", "RunResult", "ProgressFn", "STAGES", "default_cache_dir"]

log = logging.getLogger(__name__)

#: Stages in the order they run; progress callbacks name one of them.
STAGES = ("tiles", "train", "embed", "cluster", "nuclei", "outputs")
#: progress(stage, fraction of that stage done in [0, 1], message).
ProgressFn = Callable[[str, float, str], None]

_DEPENDENCIES = ("numpy", "scipy", "scikit-image", "scikit-learn", "shapely", "tiffslide", "tifffile",
                 "imagecodecs", "pillow", "torch", "matplotlib", "reportlab")
_CACHE_FORMAT = 1
#: Largest side in pixels of a saved representative patch (larger tiles are saved downsampled).
PATCH_MAX_PX = 2048


@dataclass
class RunResult:
    """One slide's finished run."""

    slide: Path
    run_dir: Path
    manifest: dict[str, Any]


@dataclass
class _SlideData:
    """A slide's tissue level, read and filtered."""

    slide: Slide
    name: str
    quickhash: str
    grid: TileGrid
    thumbnail: np.ndarray
    selection: TileSelection
    tiles: np.ndarray
    warnings: list[str] = field(default_factory=list)


class _Timer:
    """Seconds per stage, summed over slides."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def default_cache_dir() -> Path:
    """``$TUMLS_QP_CACHE``, else ``$XDG_CACHE_HOME/tumls-qp``, else ``~/.cache/tumls-qp``."""
    if os.environ.get("TUMLS_QP_CACHE"):
        return Path(os.environ["TUMLS_QP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tumls-qp"


def _no_progress(stage: str, fraction: float, message: str) -> None:
    return None


def analyze(
    slides: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: PipelineConfig | None = None,
    *,
    cohort: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: ProgressFn | None = None,
    run_names: Sequence[str] | None = None,
) -> list[RunResult]:
    """Analyse slides and write one run folder per slide into ``out_dir``.

    Parameters
    ----------
    slides : sequence of path-like
        Slide files.
    out_dir : path-like
        Created if missing; run folders are named after the slides (or ``run_names``).
    config : PipelineConfig, optional
    cohort : bool
        One autoencoder and one clustering for all slides, so a tissue number means
        the same on every slide (and, with ``output.report``, ``cohort-report.pdf`` in
        ``out_dir``). Otherwise each slide is analysed on its own.
    cache_dir : path-like, optional
        Reuse (and store) tiles, embeddings and the trained model for the same slides
        and parameters. None: no cache.
    progress : callable(stage, fraction, message), optional
    run_names : sequence of str, optional
        Run folder names instead of the slide file names.

    Returns
    -------
    list of RunResult
        In the order of ``slides``. Without ``cohort``, the first failing slide's
        error is raised after the other slides have been analysed.
    """
    config = config or PipelineConfig()
    progress = progress or _no_progress
    if config.output.embedding_colours == "umap":
        from .interactive.embedding_colours import umap_available

        if not umap_available():  # say so now rather than after the training
            raise ConfigError("output.embedding_colours = 'umap' needs umap-learn: pip install 'tumls-qp[umap]' "
                              "(or use 'auto' or 'pca')")
    slides = [Path(s) for s in slides]
    if not slides:
        raise TumlsQpError("no slide given")
    names = list(run_names) if run_names is not None else run_folder_names(slides)
    if len(names) != len(slides) or len(set(names)) != len(names):
        raise TumlsQpError(f"run_names must give one distinct name per slide; got {names!r}")
    out = _prepare_out_dir(Path(out_dir))
    cache = Path(cache_dir) if cache_dir is not None else None
    if cohort:
        results = _analyze_group(slides, names, out, config, cache, progress, cohort=True)
        if config.output.report and len(results) > 1:
            from .outputs.pdf_report import COHORT_REPORT_NAME, render_report

            render_report([r.run_dir for r in results], out / COHORT_REPORT_NAME)
        return results
    results, first_error = [], None
    for slide, name in zip(slides, names):
        try:
            results += _analyze_group([slide], [name], out, config, cache, progress, cohort=False)
        except TumlsQpError as exc:
            if len(slides) > 1:
                log.error("%s: %s", slide.name, exc)
            first_error = first_error or exc
    if first_error is not None:
        if len(slides) > 1:
            first_error.add_note(f"{len(results)} of {len(slides)} slides were analysed")
        raise first_error
    return results


def _prepare_out_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".tumls-write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write into the output folder {str(out)!r}: {exc.strerror or exc}. Choose a folder you can "
            "write to with --out."
        ) from exc
    return out


def _analyze_group(
    paths: list[Path],
    names: list[str],
    out: Path,
    config: PipelineConfig,
    cache: Path | None,
    progress: ProgressFn,
    cohort: bool,
) -> list[RunResult]:
    timer = _Timer()
    started = datetime.now(timezone.utc)
    slides: list[Slide] = []
    staging: list[Path] = []
    try:
        for path in paths:
            slides.append(open_slide(path, mpp=config.slide.mpp, mpp_override=config.slide.mpp_override))
        hashes = [slide_quickhash(s.path) for s in slides]
        key = _cache_key(slides, hashes, config)
        cached = _cache_load(cache, key) if cache else None

        with timer.stage("tiles"):
            data = [_read_tiles(s, h, config, progress, i, len(slides), cached)
                    for i, (s, h) in enumerate(zip(slides, hashes))]
        all_tiles = np.concatenate([d.tiles for d in data])

        if cached is not None:
            latents, history, model = cached["latents"], cached["history"], cached["model"]
            progress("train", 1.0, "reused the cached model")
            progress("embed", 1.0, "reused the cached embeddings")
        else:
            from .tissue.embeddings import embed_tiles, train_autoencoder

            with timer.stage("train"):
                progress("train", 0.0, f"training the autoencoder on {len(all_tiles)} tiles")
                trained = train_autoencoder(
                    all_tiles, config.embedding, config.seed,
                    progress=lambda e, n: progress("train", e / n, f"epoch {e}"),
                )
            with timer.stage("embed"):
                progress("embed", 0.0, "embedding tiles")
                latents = embed_tiles(trained, all_tiles)
                progress("embed", 1.0, f"{len(latents)} tiles embedded")
            history, model = trained.history, trained.model
            if cache:
                _cache_store(cache, key, data, latents, history, model)

        with timer.stage("cluster"):
            progress("cluster", 0.0, "clustering")
            clustering = cluster_embeddings(latents, config.clusters, config.seed)
            progress("cluster", 1.0, f"k = {clustering.k}")

        results = []
        offsets = np.cumsum([0] + [len(d.tiles) for d in data])
        for i, (d, name) in enumerate(zip(data, names)):
            part = slice(int(offsets[i]), int(offsets[i + 1]))
            local = clustering.select(part)
            reps = select_representatives(local, config.representatives.n)
            stage_dir = out / f".tumls-{name}-{uuid.uuid4().hex[:8]}.partial"
            stage_dir.mkdir()
            staging.append(stage_dir)
            with timer.stage("nuclei"):
                low = _low_level(stage_dir, d.slide, d.grid.boxes(d.selection.kept), reps, config,
                                 lambda f, m, i=i: progress("nuclei", (i + f) / len(data), m))
            with timer.stage("outputs"):
                progress("outputs", i / len(data), f"writing {name}")
                manifest = _write_run(
                    stage_dir, d, config, clustering, local, reps, low, latents[part], history, model,
                    cached is not None, timer, started, cohort=list(names) if cohort else None,
                )
            results.append(RunResult(slide=d.slide.path, run_dir=out / name, manifest=manifest))
        progress("outputs", 1.0, "run folders written")
        for stage_dir, result in zip(staging, results):
            replace_dir(stage_dir, result.run_dir)
            # Timings are final only now; the manifest is rewritten in place, atomically.
            result.manifest["timings_s"] = {k: round(v, 3) for k, v in timer.seconds.items()}
            write_json(result.run_dir / "manifest.json", result.manifest)
        staging.clear()
        return results
    finally:
        for stage_dir in staging:
            shutil.rmtree(stage_dir, ignore_errors=True)
        for slide in slides:
            slide.close()


def _read_tiles(
    slide: Slide,
    quickhash: str,
    config: PipelineConfig,
    progress: ProgressFn,
    index: int,
    count: int,
    cached: dict | None,
) -> _SlideData:
    cfg = config.tiles
    grid = plan_grid(slide, cfg)
    label = slide.path.name if count == 1 else f"{slide.path.name} ({index + 1}/{count})"
    warnings = []
    if slide.mpp_source == "caller":
        warnings.append(f"pixel size {slide.mpp:g} µm/px was given by the caller, not read from the file")
    if cached is not None:
        thumbnail = cached["thumbnails"][index]
        progress("tiles", (index + 1) / count, f"{label}: reused cached tiles")
    else:
        thumbnail = read_thumbnail(
            slide, grid,
            progress=lambda done, total: progress("tiles", (index + done / total) / count, f"reading {label}"),
        )
    if not config.slide.allow_non_he:
        check_brightfield_he(thumbnail)
    mask = tissue_mask(thumbnail, grid.lowres_mpp, cfg)
    if not config.slide.allow_non_he:
        check_brightfield_he(thumbnail, mask)
    selection = select_tiles(thumbnail, mask, grid, cfg)
    require_tissue(selection, grid, cfg, slide.path.name)
    counts = selection.counts()
    if counts["artefact"] > 0.1 * grid.n_tiles:
        warnings.append(f"{counts['artefact']} tiles dropped as near-black artefacts (pen, folds, borders)")
    return _SlideData(
        slide=slide,
        name=slide.path.name,
        quickhash=quickhash,
        grid=grid,
        thumbnail=thumbnail,
        selection=selection,
        tiles=tile_pixels(thumbnail, grid, selection.kept),
        warnings=warnings,
    )


# --- cache ----------------------------------------------------------------------------------------------------------

def _cache_key(slides: list[Slide], hashes: list[str], config: PipelineConfig) -> str:
    from dataclasses import asdict

    embedding = {k: v for k, v in asdict(config.embedding).items() if k != "num_threads"}
    payload = {
        "format": _CACHE_FORMAT,
        "version": __version__,
        "slides": [[h, round(s.mpp, 6), s.dimensions] for s, h in zip(slides, hashes)],
        "tiles": asdict(config.tiles),
        "allow_non_he": config.slide.allow_non_he,
        "embedding": embedding,
        "seed": config.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _cache_load(cache: Path, key: str) -> dict | None:
    folder = cache / key
    if not (folder / "complete").exists():
        return None
    try:
        from .tissue.embeddings import TrainingHistory, load_checkpoint

        with np.load(folder / "tiles.npz") as npz:
            latents = npz["latents"]
            thumbnails = [npz[f"thumbnail_{i}"] for i in range(int(npz["n_slides"]))]
        history = TrainingHistory(**json.loads((folder / "history.json").read_text()))
        model, _ = load_checkpoint(folder)
    except (OSError, ValueError, KeyError, TypeError, TumlsQpError) as exc:
        log.warning("ignoring the damaged cache entry %s: %s", folder, exc)
        return None
    log.info("reusing cached embeddings %s", folder)
    return {"latents": latents, "thumbnails": thumbnails, "history": history, "model": model}


def _cache_store(cache: Path, key: str, data: list[_SlideData], latents: np.ndarray, history: Any, model: Any) -> None:
    from dataclasses import asdict

    from .tissue.embeddings import save_checkpoint

    folder = cache / key
    tmp = cache / f".{key}.{uuid.uuid4().hex[:8]}.partial"
    try:
        tmp.mkdir(parents=True)
        arrays = {f"thumbnail_{i}": d.thumbnail for i, d in enumerate(data)}
        np.savez_compressed(tmp / "tiles.npz", latents=latents, n_slides=len(data), **arrays)
        (tmp / "history.json").write_text(json.dumps(asdict(history)))
        save_checkpoint(model, tmp, {})
        (tmp / "complete").write_text("")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError as exc:
        log.warning("could not store the embedding cache in %s: %s", cache, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- run folder -----------------------------------------------------------------------------------------------------

@dataclass
class _LowLevel:
    """The representatives at full resolution and their nuclei (TUMLS's low level)."""

    #: (file in the run folder, µm/px) per representative.
    patches: list[tuple[str, float]]
    #: QuPath detections, one per nucleus, in level-0 px.
    detections: list[dict[str, Any]]
    #: Rows of nuclei.csv and patch_features.csv.
    nucleus_rows: list[list[Any]]
    roi_rows: list[list[Any]]
    #: Pooled features per tissue (0-based), for features.csv and the tissue annotations.
    tissue_features: dict[int, dict[str, float]]
    segmented: int


def _fmt(value: Any) -> str:
    return f"{float(value):.6g}"


def _low_level(
    folder: Path,
    slide: Slide,
    boxes: np.ndarray,
    reps: list[Representative],
    config: PipelineConfig,
    progress: Callable[[float, str], None],
) -> _LowLevel:
    """Read each representative at full resolution into ``patches/``; segment and measure its nuclei.

    A patch is level 0 of the tile, downsampled only when its side exceeds ``PATCH_MAX_PX``.
    Nuclei are segmented in the ``nuclei.representatives`` best representatives of each tissue.
    """
    cfg = config.nuclei
    (folder / "patches").mkdir()
    low = _LowLevel(patches=[], detections=[], nucleus_rows=[], roi_rows=[], tissue_features={}, segmented=0)
    per_tissue: dict[int, list[dict[str, float]]] = {}
    if cfg.enabled:
        from .cells.features import NUCLEUS_FEATURES, TISSUE_FEATURES, combine_rois, measure_nuclei, measure_tissue
        from .cells.nuclei import labels_to_polygons, segment_nuclei

        measured = [f.name for f in NUCLEUS_FEATURES if f.key not in ("label", "x", "y")]
    for j, rep in enumerate(reps):
        progress(j / max(len(reps), 1), f"tissue {rep.tissue + 1}, representative {rep.rank}")
        box = tuple(int(v) for v in boxes[rep.tile])
        mpp = slide.mpp * max(1.0, max(box[2], box[3]) / PATCH_MAX_PX)
        rgb = slide.read_box(box, mpp)
        stem = f"patches/tissue{rep.tissue + 1}-rank{rep.rank}"
        Image.fromarray(rgb).save(folder / f"{stem}.jpg", quality=92)
        low.patches.append((f"{stem}.jpg", mpp))
        if not cfg.enabled or (cfg.representatives is not None and rep.rank > cfg.representatives):
            continue
        result = segment_nuclei(rgb, mpp, cfg)
        labels = result.mask2
        Image.fromarray(labels.astype(np.uint16)).save(folder / f"{stem}.labels.png")
        table = measure_nuclei(labels, rgb, mpp, haematoxylin=result.haematoxylin)
        roi = measure_tissue(labels, rgb, mpp, haematoxylin=result.haematoxylin, nuclei=table)
        per_tissue.setdefault(rep.tissue, []).append(roi)
        low.segmented += 1
        low.roi_rows.append([rep.tissue + 1, rep.rank, *(_fmt(roi[f.name]) for f in TISSUE_FEATURES)])
        row_of = {int(label): k for k, label in enumerate(table["Label"])}
        for label, polygon in labels_to_polygons(labels, offset=(box[0], box[1]), scale=mpp / slide.mpp):
            k = row_of[label]
            feature = make_feature(polygon, "detection", NUCLEUS_CLASS, NUCLEUS_COLOUR,
                                   {name: table[name][k] for name in measured})
            if feature is not None:
                low.detections.append(feature)
        for k in range(len(table["Label"])):
            low.nucleus_rows.append([rep.tissue + 1, rep.rank, int(table["Label"][k]),
                                     *(_fmt(table[f.name][k]) for f in NUCLEUS_FEATURES if f.key != "label")])
    if cfg.enabled:
        low.tissue_features = {t: combine_rois(rois) for t, rois in sorted(per_tissue.items())}
    progress(1.0, f"{len(low.nucleus_rows)} nuclei in {low.segmented} representatives")
    return low


def _write_run(
    folder: Path,
    d: _SlideData,
    config: PipelineConfig,
    clustering: Clustering,
    local: Clustering,
    reps: list[Representative],
    low: _LowLevel,
    latents: np.ndarray,
    history: Any,
    model: Any,
    cache_hit: bool,
    timer: _Timer,
    started: datetime,
    cohort: list[str] | None,
) -> dict[str, Any]:
    from dataclasses import asdict

    from .tissue.embeddings import reconstruct, save_checkpoint

    labels, uncertainty, distance = local.labels, local.uncertainty, local.distance
    boxes = d.grid.boxes(d.selection.kept)
    warnings = list(d.warnings)
    if clustering.k == 1:
        warnings.append(f"one tissue only (k = 1, {clustering.k_source})")
    if not history.early_stopped:
        warnings.append(f"autoencoder training stopped at max_epochs ({config.embedding.max_epochs}) before "
                        "early stopping; the model may be under-trained")
    present = sorted(set(labels.tolist()))
    if cohort and len(present) < clustering.k:
        absent = [t + 1 for t in range(clustering.k) if t not in present]
        warnings.append(f"tissue(s) {absent} of the cohort do not occur on this slide")

    # GeoJSON
    features = tissue_features(boxes, labels, uncertainty, d.slide.mpp, reps, tile_objects=config.output.tile_objects,
                               tissue_measurements=low.tissue_features) + low.detections
    collection = feature_collection(features)
    problems = validate_geojson(collection)
    if problems:  # a bug, not bad input: never hand QuPath a file it would refuse
        raise RuntimeError("generated GeoJSON breaks QuPath's rules: " + "; ".join(problems[:5]))
    geojson_name = "tissue.geojson.gz" if config.output.gzip else "tissue.geojson"
    write_geojson(collection, folder / geojson_name)

    # Tables
    write_csv(
        folder / "tiles.csv",
        ["x", "y", "w", "h", "tissue", "uncertainty", "distance", "tissue_fraction"],
        [
            [*map(int, b), int(t) + 1, f"{u:.5f}", f"{dist:.5f}", f"{tf:.3f}"]
            for b, t, u, dist, tf in zip(boxes, labels, uncertainty, distance,
                                          d.selection.tissue_fraction.ravel()[d.selection.kept])
        ],
    )
    write_csv(
        folder / "representatives.csv",
        ["tissue", "rank", "tile", "x", "y", "w", "h", "uncertainty", "distance"],
        [[r.tissue + 1, r.rank, r.tile, *map(int, boxes[r.tile]), f"{r.uncertainty:.5f}", f"{r.distance:.5f}"]
         for r in reps],
    )
    write_csv(
        folder / "training.csv",
        ["epoch", "train_mse", "val_mse"],
        [[i + 1, f"{t:.6g}", f"{v:.6g}"] for i, (t, v) in enumerate(zip(history.train_mse, history.val_mse))],
    )
    if config.nuclei.enabled:
        from .cells.features import NUCLEUS_FEATURES, TISSUE_FEATURES

        tissue_columns = [f.name for f in TISSUE_FEATURES]
        write_csv(folder / "nuclei.csv",
                   ["tissue", "rank", "label", *(f.name for f in NUCLEUS_FEATURES if f.key != "label")],
                   low.nucleus_rows)
        write_csv(folder / "patch_features.csv", ["tissue", "rank", *tissue_columns], low.roi_rows)
        write_csv(folder / "features.csv", ["tissue", *tissue_columns],
                   [[t + 1, *(_fmt(values[c]) for c in tissue_columns)] for t, values in low.tissue_features.items()])

    # Arrays for re-rendering and for the label-efficient methods (seeded clustering, dictionaries).
    np.savez_compressed(
        folder / "embeddings.npz",
        latents=latents.astype(np.float32),
        boxes=boxes.astype(np.int64),
        tile_index=d.selection.kept,
        labels=labels,
        uncertainty=uncertainty,
        distance=distance,
        centroids=clustering.centroids,
    )
    colours_name = _write_embedding_colours(folder, config, boxes, latents)
    dendrogram = {"gaps_k": np.array(sorted(clustering.gaps), dtype=np.int64),
                  "gaps": np.array([clustering.gaps[k] for k in sorted(clustering.gaps)], dtype=np.float64)}
    if clustering.linkage is not None:
        dendrogram["linkage"] = clustering.linkage
    np.savez_compressed(folder / "dendrogram.npz", **dendrogram)
    examples = d.tiles[np.linspace(0, len(d.tiles) - 1, num=min(8, len(d.tiles))).astype(int)]
    np.savez_compressed(folder / "reconstructions.npz", tiles=examples, reconstructed=reconstruct(model, examples))
    Image.fromarray(d.thumbnail).save(folder / "thumbnail.png", optimize=True)
    save_checkpoint(model, folder, {"history": asdict(history), "embedding": config_to_dict(config.embedding),
                                    "tiles": config_to_dict(config.tiles), "seed": config.seed})

    (folder / "config.toml").write_text(dump_config(config), encoding="utf-8")
    manifest = _manifest(d, config, clustering, labels, reps, low, history, cache_hit, timer, started, cohort,
                         geojson_name, len(features), warnings)
    manifest["outputs"]["embedding_colours"] = colours_name
    write_json(folder / "manifest.json", manifest)
    if config.output.report:
        # Last, from the staging folder's own files: a report that fails to render leaves no run folder behind.
        from .outputs.pdf_report import REPORT_NAME, render_report

        render_report(folder, folder / REPORT_NAME)
    return manifest


#: The embedding colours of the tiles, for the report (``coords``, ``rgb``, ``method``).
EMBEDDING_COLOURS_NPZ = "embedding_colours.npz"


def _write_embedding_colours(folder: Path, config: PipelineConfig, boxes: np.ndarray,
                             latents: np.ndarray) -> str | None:
    """The embedding-colour tile layer (``embedding_colours.geojson``) and its colours; returns the GeoJSON's name.

    A separate file so that ``tissue.geojson`` stays lean: the layer doubles the tile objects.
    """
    if config.output.embedding_colours == "none":
        return None
    from .interactive.embedding_colours import embedding_colour_features, embedding_colours

    colours = embedding_colours(latents, config.output.embedding_colours, config.seed)
    collection = feature_collection(embedding_colour_features(boxes, colours))
    problems = validate_geojson(collection)
    if problems:  # a bug, not bad input
        raise RuntimeError("generated embedding-colour GeoJSON breaks QuPath's rules: " + "; ".join(problems[:5]))
    name = "embedding_colours.geojson.gz" if config.output.gzip else "embedding_colours.geojson"
    write_geojson(collection, folder / name)
    np.savez_compressed(folder / EMBEDDING_COLOURS_NPZ, coords=colours.coords, rgb=colours.rgb,
                        method=np.array(colours.method))
    return name


def _manifest(
    d: _SlideData,
    config: PipelineConfig,
    clustering: Clustering,
    labels: np.ndarray,
    reps: list[Representative],
    low: _LowLevel,
    history: Any,
    cache_hit: bool,
    timer: _Timer,
    started: datetime,
    cohort: list[str] | None,
    geojson_name: str,
    n_features: int,
    warnings: list[str],
) -> dict[str, Any]:
    from dataclasses import asdict

    slide, grid = d.slide, d.grid
    counts = d.selection.counts()
    return {
        "tool": "tumls-qp",
        "version": __version__,
        "created": started.isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dependencies": package_versions(_DEPENDENCIES),
        "seed": config.seed,
        "device": history.device,
        "slide": {
            "path": str(slide.path.resolve()),
            "name": slide.path.name,
            "quickhash": d.quickhash,
            "vendor": slide.vendor,
            "width_px": slide.dimensions[0],
            "height_px": slide.dimensions[1],
            "levels": [list(s) for s in slide.level_dimensions],
            "mpp": slide.mpp,
            "mpp_source": slide.mpp_source,
            "objective_power": slide.objective_power,
        },
        "tiles": {
            "tile_um": grid.tile_um,
            "tile_size_px": grid.tile_size,
            "tile_px": grid.tile_px,
            "lowres_mpp": grid.lowres_mpp,
            "grid": list(grid.shape),
            "total": grid.n_tiles,
            "kept": counts["kept"],
            "dropped": {"background": counts["background"], "artefact": counts["artefact"]},
        },
        "embedding": {
            "cache": "hit" if cache_hit else "miss",
            "epochs": len(history.train_mse),
            "best_epoch": history.best_epoch,
            "early_stopped": history.early_stopped,
            "mse": history.mse,
            "n_tiles": history.n_tiles,
            "initialised_from": history.initialised_from,
            "train_seconds": round(history.seconds, 3),
        },
        "clusters": {
            "k": clustering.k,
            "k_source": clustering.k_source,
            "gaps": {str(k): v for k, v in clustering.gaps.items()},
            "split_statistic": clustering.split_statistic,
            "uncertainty_scale": clustering.uncertainty_scale,
            "tiles_per_tissue": np.bincount(labels, minlength=clustering.k).tolist(),
            "cohort_tiles_per_tissue": clustering.sizes(),
        },
        "representatives": [asdict(r) | {"tissue": r.tissue + 1, "patch": patch, "patch_mpp": patch_mpp}
                            for r, (patch, patch_mpp) in zip(reps, low.patches)],
        "nuclei": {
            "enabled": config.nuclei.enabled,
            "representatives_segmented": low.segmented,
            "nuclei": len(low.nucleus_rows),
            "per_tissue": {str(t + 1): int(v["Nuclei"]) for t, v in low.tissue_features.items()},
        },
        "cohort": cohort,
        "outputs": {"geojson": geojson_name, "geojson_features": n_features},
        "timings_s": {k: round(v, 3) for k, v in timer.seconds.items()},
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "warnings": warnings,
        "config": config_to_dict(config),
    }


def _peak_rss_mb() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / 1024 if sys.platform != "darwin" else usage / (1024 * 1024)
