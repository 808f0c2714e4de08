"""The only place where all stages meet: slides in, one run folder per slide out.

The pipeline calls the stages in order (tiles, and the views when the embedding method
looks at them; the embedding method's training; embeddings; clusters; regions;
representatives; nuclei) and hands each slide's results, one :class:`SlideAnalysis`, to
:mod:`tumls_qp.outputs.run_folder`, which writes the run folder (see the README's
"Outputs"). Run folders are built in hidden staging folders and renamed into place at the
very end, together for a cohort, so a failed or cancelled run leaves no half-written
outputs (an earlier run folder of the same name stays untouched until the new one is
complete). The pipeline itself writes no file.

:func:`analyze` runs everything in the calling process. A slide group (one slide, or a
cohort) goes through four pieces, which :mod:`tumls_qp.dask_engine` runs as tasks on a Dask
cluster instead: :func:`read_slide_tiles` per slide, :func:`fit_group` once for the group,
:func:`analyse_slide` and :func:`stage_run` per slide; then the staged run folders are
committed together. What passes between the pieces (:class:`SlideTiles`,
:class:`GroupModel`) holds arrays, never an open file, so that it can travel between processes.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .cells.features import FEW_NUCLEI, combine_rois, measure_nuclei, measure_tissue, tissue_roi
from .cells.glands import gland_tissue_features, measure_glands, segment_glands
from .cells.nuclei import labels_to_polygons, segment_nuclei
from .config import PipelineConfig
from .errors import ConfigError, TumlsQpError
from .files import run_folder_names, writable_dir
from .interactive.embedding_colours import EmbeddingColours, embedding_colours, umap_available
from .outputs.pdf_report import COHORT_REPORT_NAME, REPORT_NAME, render_report
from .outputs.run_folder import (
    LOCAL_ENGINE,
    AnalysisManifest,
    EngineInfo,
    Patch,
    PatchGlands,
    PatchNuclei,
    RunStaging,
    SlideAnalysis,
    SlideInfo,
)
from .slide import Slide, open_slide, slide_quickhash
from .tissue.cache import CachedEmbeddings, cache_key, load_cached, store_cached
from .tissue.clusters import Clustering, cluster_embeddings
from .tissue.regions import RegionMap, refine_regions
from .tissue.representatives import Representative, patch_box, select_representatives
from .tissue.tiles import TissueTiles, read_views, tissue_tiles

__all__ = ["analyze", "analyze_group", "RunResult", "ProgressFn", "STAGES", "PATCH_MAX_PX", "plan_runs",
           "write_cohort_report", "SlideTiles", "GroupModel", "StageTimer", "group_cache_key", "read_slide_tiles", "fit_group",
           "analyse_slide", "stage_run"]

log = logging.getLogger(__name__)

#: Stages in the order they run; progress callbacks name one of them.
STAGES = ("tiles", "train", "embed", "cluster", "regions", "nuclei", "outputs")
#: progress(stage, fraction of that stage done in [0, 1], message).
ProgressFn = Callable[[str, float, str], None]
#: Largest side in pixels of a saved representative patch (larger tiles are saved downsampled).
PATCH_MAX_PX = 2048
#: Tiles of each slide whose autoencoder reconstructions the run folder keeps (for the report).
_RECONSTRUCTION_EXAMPLES = 8


@dataclass
class RunResult:
    """One slide's finished run: the slide, its run folder and the manifest written there."""

    slide: Path
    run_dir: Path
    manifest: AnalysisManifest


@dataclass
class SlideTiles:
    """A slide's tissue level, read and filtered, and what was noticed on the way.

    ``views`` (one field of ``embedding.view_um`` around each tile, ``embedding.view_px`` a side) and their
    pixel size ``view_mpp``: read only for an embedding method that looks at them, and not from the cache.
    """

    info: SlideInfo
    tiles: TissueTiles
    warnings: list[str]
    views: np.ndarray | None = None
    view_mpp: float | None = None


@dataclass
class GroupModel:
    """The model of a slide group: the fitted embedding of all its tiles (slide after slide), and the clustering.

    ``offsets[i]:offsets[i + 1]`` are the rows of slide ``i``.
    """

    embedding: Any  # tumls_qp.tissue.embeddings.TileEmbedding (imported lazily: torch)
    cache_hit: bool
    clustering: Clustering
    offsets: tuple[int, ...]

    @property
    def latents(self) -> np.ndarray:
        return self.embedding.vectors


class StageTimer:
    """Seconds per stage, summed over slides."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the time spent in the block to stage ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add({name: time.perf_counter() - start})

    def add(self, seconds: dict[str, float]) -> None:
        """Add the seconds per stage measured elsewhere (another process)."""
        for name, value in seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + value


def _no_progress(stage: str, fraction: float, message: str) -> None:
    return None


def plan_runs(slides: Sequence[str | os.PathLike[str]], config: PipelineConfig,
              run_names: Sequence[str] | None = None) -> tuple[list[Path], list[str]]:
    """The slides as paths and their run folder names, after the checks that need no slide; raises what is wrong."""
    if config.output.embedding_colours == "umap":
        if not umap_available():  # say so now rather than after the training
            raise ConfigError("output.embedding_colours = 'umap' needs umap-learn: pip install 'tumls-qp[umap]' "
                              "(or use 'auto' or 'pca')")
    if config.embedding.method == "pretrained":  # timm, the architecture and the file: before any slide is read
        from .tissue.embeddings.pretrained import check_encoder

        check_encoder(config.embedding.encoder, config.embedding.checkpoint)
    paths = [Path(s) for s in slides]
    if not paths:
        raise TumlsQpError("no slide given")
    names = list(run_names) if run_names is not None else run_folder_names(paths)
    if len(names) != len(paths) or len(set(names)) != len(names):
        raise TumlsQpError(f"run_names must give one distinct name per slide; got {names!r}")
    return paths, names


def write_cohort_report(run_dirs: Sequence[Path], out: Path, config: PipelineConfig) -> None:
    """``cohort-report.pdf`` in ``out`` for the run folders of a cohort (with ``output.report``, two slides or more)."""
    if config.output.report and len(run_dirs) > 1:
        render_report(list(run_dirs), out / COHORT_REPORT_NAME)


def analyze(
    slides: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: PipelineConfig | None = None,
    *,
    cohort: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: ProgressFn | None = None,
    run_names: Sequence[str] | None = None,
    engine: EngineInfo = LOCAL_ENGINE,
) -> list[RunResult]:
    """Analyse slides in this process and write one run folder per slide into ``out_dir``.

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
    engine : EngineInfo
        What the manifests record as the engine (a server's Dask worker passes its own).

    Returns
    -------
    list of RunResult
        In the order of ``slides``. Without ``cohort``, the first failing slide's
        error is raised after the other slides have been analysed.

    See Also
    --------
    tumls_qp.dask_engine.analyze_on_dask : the same on a Dask cluster.
    """
    config = config or PipelineConfig()
    progress = progress or _no_progress
    slides, names = plan_runs(slides, config, run_names)
    out = writable_dir(Path(out_dir))
    cache = Path(cache_dir) if cache_dir is not None else None
    if cohort:
        results = analyze_group(slides, names, out, config, cache, progress, cohort=True, engine=engine)
        write_cohort_report([r.run_dir for r in results], out, config)
        return results
    results, first_error = [], None
    for slide, name in zip(slides, names):
        try:
            results += analyze_group([slide], [name], out, config, cache, progress, cohort=False, engine=engine)
        except TumlsQpError as exc:
            if len(slides) > 1:
                log.error("%s: %s", slide.name, exc)
            first_error = first_error or exc
    if first_error is not None:
        if len(slides) > 1:
            first_error.add_note(f"{len(results)} of {len(slides)} slides were analysed")
        raise first_error
    return results


def analyze_group(
    paths: list[Path],
    names: list[str],
    out: Path,
    config: PipelineConfig,
    cache: Path | None,
    progress: ProgressFn,
    cohort: bool,
    *,
    engine: EngineInfo = LOCAL_ENGINE,
    staging_in: Path | None = None,
) -> list[RunResult]:
    """Analyse a slide group in this process: one model for ``paths`` (one slide, or a cohort), run folders
    committed together. ``engine`` and ``staging_in``: see :class:`EngineInfo` and :class:`RunStaging` (a Dask
    worker analysing one slide passes them)."""
    timer = StageTimer()
    started = datetime.now(timezone.utc)
    slides: list[Slide] = []
    try:
        for path in paths:
            slides.append(open_slide(path, mpp=config.slide.mpp, mpp_override=config.slide.mpp_override))
        infos = [SlideInfo.of(s, slide_quickhash(s.path)) for s in slides]
        cached = load_cached(cache, group_cache_key(infos, config)) if cache else None
        parts = [read_slide_tiles(s, info, config, progress, timer, index=i, count=len(slides),
                                  thumbnail=cached.thumbnails[i] if cached is not None else None)
                 for i, (s, info) in enumerate(zip(slides, infos))]
        group = fit_group(parts, config, progress, timer, cache=cache, cached=cached)
        with RunStaging(out, staging_in) as staging:
            for i, (slide, part, name) in enumerate(zip(slides, parts, names)):
                analysis = analyse_slide(slide, part, group, i, config, started, progress, timer,
                                         cohort=tuple(names) if cohort else None, engine=engine)
                stage_run(staging, name, analysis, progress, timer, index=i, count=len(parts))
            progress("outputs", 1.0, "run folders written")
            written = staging.commit(timer.seconds)
        return [RunResult(slide=s.path, run_dir=run_dir, manifest=manifest)
                for s, (run_dir, manifest) in zip(slides, written)]
    finally:
        for slide in slides:
            slide.close()


# --- the pieces of a group's analysis, which an engine may run in different processes ------------------------------

def group_cache_key(infos: Sequence[SlideInfo], config: PipelineConfig) -> str:
    """The embedding cache key of a slide group (:func:`tumls_qp.tissue.cache.cache_key`)."""
    return cache_key([(i.quickhash, i.mpp, (i.width_px, i.height_px)) for i in infos], config)


def read_slide_tiles(
    slide: Slide,
    info: SlideInfo,
    config: PipelineConfig,
    progress: ProgressFn,
    timer: StageTimer,
    *,
    index: int = 0,
    count: int = 1,
    thumbnail: np.ndarray | None = None,
) -> SlideTiles:
    """Stage ``tiles`` of slide ``index`` of ``count``: its tissue level, read and filtered (and its views, when the
    embedding method needs them).

    ``thumbnail``: the slide's tissue-level image from the embedding cache, instead of reading it.
    """
    label = slide.path.name if count == 1 else f"{slide.path.name} ({index + 1}/{count})"
    warnings = []
    if slide.mpp_source == "caller":
        warnings.append(f"pixel size {slide.mpp:g} µm/px was given by the caller, not read from the file")
    if thumbnail is not None:
        progress("tiles", (index + 1) / count, f"{label}: reused cached tiles")
    with timer.stage("tiles"):
        tiles = tissue_tiles(
            slide, config.tiles, allow_non_he=config.slide.allow_non_he, thumbnail=thumbnail,
            progress=lambda done, total: progress("tiles", (index + done / total) / count, f"reading {label}"),
        )
        views, view_mpp = None, None
        from .tissue.embeddings import needs_views  # torch: imported when a slide is analysed

        if thumbnail is None and needs_views(config.embedding.method):
            views, view_mpp = read_views(
                slide, tiles.grid, tiles.selection.kept, config.embedding.view_um, config.embedding.view_px,
                progress=lambda done, total: progress("tiles", (index + done / total) / count,
                                                      f"reading views of {label}"))
    counts = tiles.selection.counts()
    if counts["artefact"] > 0.1 * tiles.grid.n_tiles:
        warnings.append(f"{counts['artefact']} tiles dropped as near-black artefacts (pen, folds, borders)")
    return SlideTiles(info=info, tiles=tiles, warnings=warnings, views=views, view_mpp=view_mpp)


def fit_group(
    parts: Sequence[SlideTiles],
    config: PipelineConfig,
    progress: ProgressFn,
    timer: StageTimer,
    *,
    cache: Path | None = None,
    cached: CachedEmbeddings | None = None,
) -> GroupModel:
    """Stages ``train``, ``embed`` and ``cluster``: one model and one clustering for the tiles of all ``parts``.

    ``cached`` (the cache entry of :func:`group_cache_key`) replaces training and embedding;
    otherwise the new model is stored in ``cache`` when one is given.
    """
    if cached is not None:
        embedding = cached.embedding
        progress("train", 1.0, "reused the cached model")
        progress("embed", 1.0, "reused the cached embeddings")
    else:
        embedding = _fit_embedding(parts, config, progress, timer)
        if cache:
            store_cached(cache, group_cache_key([p.info for p in parts], config),
                         CachedEmbeddings(thumbnails=[p.tiles.thumbnail for p in parts], embedding=embedding))
    with timer.stage("cluster"):
        progress("cluster", 0.0, "clustering")
        # Tile positions (grid column, row) for graph clustering; tiles of different slides are never joined.
        positions = np.concatenate([np.column_stack(np.divmod(p.tiles.selection.kept, p.tiles.grid.shape[0])[::-1])
                                    for p in parts]).astype(np.float64)
        groups = np.concatenate([np.full(len(p.tiles.tiles), i) for i, p in enumerate(parts)])
        clustering = cluster_embeddings(embedding.vectors, config.clusters, config.seed, positions=positions,
                                        groups=groups, posterior=embedding.posterior)
        progress("cluster", 1.0, f"k = {clustering.k}")
    offsets = np.cumsum([0] + [len(p.tiles.tiles) for p in parts])
    return GroupModel(embedding=embedding, cache_hit=cached is not None,
                      clustering=clustering, offsets=tuple(int(o) for o in offsets))


def analyse_slide(
    slide: Slide,
    part: SlideTiles,
    group: GroupModel,
    index: int,
    config: PipelineConfig,
    started: datetime,
    progress: ProgressFn,
    timer: StageTimer,
    *,
    cohort: tuple[str, ...] | None,
    engine: EngineInfo = LOCAL_ENGINE,
) -> SlideAnalysis:
    """Stage ``nuclei`` of slide ``index`` of the group, and everything its run folder will hold.

    ``cohort``: the run folder names of the cohort, None for a slide analysed alone.
    """
    count = len(group.offsets) - 1
    own = slice(group.offsets[index], group.offsets[index + 1])
    local = group.clustering.select(own)
    with timer.stage("regions"):
        progress("regions", index / count, f"{config.regions.method} regions of {slide.path.name}")
        grid = part.tiles.grid
        regions = refine_regions(part.tiles.thumbnail, grid.shape, grid.tile_px, part.tiles.selection.kept,
                                 local.labels, local.posterior, config.regions, tissue=part.tiles.mask,
                                 downsample=grid.tile_size / grid.tile_px)
        progress("regions", (index + 1) / count, f"{regions.method} regions of {slide.path.name}")
    reps = select_representatives(local, config.representatives.n, config.representatives.min_confidence)
    with timer.stage("nuclei"):
        patches, tissue_features = _low_level(
            slide, part.tiles.boxes, reps, config, lambda f, m: progress("nuclei", (index + f) / count, m))
        gland_start = time.perf_counter()
        patches, gland_features, gland_notes = _glands(slide, part.tiles.boxes, reps, patches, config)
        gland_seconds = time.perf_counter() - gland_start
    with timer.stage("outputs"):
        return SlideAnalysis(
            config=config, created=started, slide=part.info, tiles=part.tiles, latents=group.latents[own],
            clustering=local, cohort=cohort, cohort_tiles_per_tissue=tuple(group.clustering.sizes()),
            representatives=tuple(reps), patches=patches, tissue_features=tissue_features,
            embedding=group.embedding, cache_hit=group.cache_hit,
            reconstructions=_reconstructions(group.embedding, part.tiles.tiles),
            embedding_colours=_embedding_colours(group.latents[own], config),
            warnings=tuple(_warnings(part, config, group.clustering, local, group.embedding, cohort is not None,
                                     regions, reps, tissue_features) + gland_notes),
            timings_s=dict(timer.seconds), engine=engine, regions=regions, gland_features=gland_features,
            gland_seconds=gland_seconds,
        )


def stage_run(staging: RunStaging, name: str, analysis: SlideAnalysis, progress: ProgressFn, timer: StageTimer,
              *, index: int = 0, count: int = 1) -> Path:
    """Stage ``outputs`` of slide ``index`` of ``count``: its run folder (and report) in a staging folder; returns it."""
    with timer.stage("outputs"):
        progress("outputs", index / count, f"writing {name}")
        staged = staging.write(name, analysis)
        if analysis.config.output.report:
            # From the staging folder's own files: a report that fails to render leaves no run folder.
            render_report(staged, staged / REPORT_NAME)
    return staged


def _fit_embedding(parts: Sequence[SlideTiles], config: PipelineConfig, progress: ProgressFn,
                   timer: StageTimer) -> Any:
    """Stages ``train`` and ``embed``: ``embedding.method`` fitted on the tiles (and views) of all parts."""
    from .tissue.embeddings import TileImages, check_tile_count, fit_embedding

    cfg = config.embedding
    all_tiles = np.concatenate([p.tiles.tiles for p in parts])
    check_tile_count(cfg.method, len(all_tiles))
    images = TileImages(tiles=all_tiles)
    if parts[0].views is not None:
        images = TileImages(tiles=all_tiles, views=np.concatenate([p.views for p in parts]),
                            view_mpp=float(np.mean([p.view_mpp for p in parts])))
    with timer.stage("train"):
        progress("train", 0.0, f"{cfg.method}: learning from {len(all_tiles)} tiles")
        embedding = fit_embedding(images, cfg, config.seed, clusters=config.clusters,
                                  progress=lambda e, n: progress("train", e / n, f"{cfg.method}: {e}/{n}"))
    # fit_embedding trains, then embeds: the second part is the "embed" stage.
    embed_seconds = float(embedding.history.get("embed_seconds", 0.0))
    timer.seconds["train"] -= embed_seconds
    timer.seconds["embed"] = timer.seconds.get("embed", 0.0) + embed_seconds
    progress("embed", 1.0, f"{len(embedding.vectors)} tiles embedded")
    return embedding


def _warnings(d: SlideTiles, config: PipelineConfig, clustering: Clustering, local: Clustering, embedding: object,
              cohort: bool, regions: RegionMap, reps: list[Representative],
              tissue_features: dict[int, dict[str, float]]) -> list[str]:
    warnings = list(d.warnings) + list(clustering.warnings) + list(regions.warnings)
    if clustering.k == 1:
        warnings.append(f"one tissue only (k = 1, {clustering.k_source})")
    runner = clustering.runner_up
    if runner is not None and 2 * runner[1] >= clustering.k_votes.get(clustering.k, 0):  # at least half the winner's
        warnings.append(f"k = {clustering.k} won only narrowly: k = {runner[0]} was chosen in {runner[1]} of "
                        f"{sum(clustering.k_votes.values())} resamples of the tiles; consider --k {runner[0]}")
    for t in range(clustering.k):
        mine = [r for r in reps if r.tissue == t]
        unsure = [r for r in mine if not r.confident]
        if unsure:
            warnings.append(f"tissue {t + 1}: {len(unsure)} of its {len(mine)} representatives have a confidence "
                            f"below representatives.min_confidence ({config.representatives.min_confidence:g}): it "
                            "has too few tiles the tool is sure of")
    for t, values in tissue_features.items():
        count = int(values["Nuclei"])
        if count < FEW_NUCLEI:
            warnings.append(f"tissue {t + 1}: its nucleus features rest on {count} nuclei (fewer than {FEW_NUCLEI}); "
                            "read them as an anecdote, not a measurement")
    history = embedding.history  # type: ignore[attr-defined]
    if embedding.method == "tumls-ae" and not history.get("early_stopped", True):  # type: ignore[attr-defined]
        warnings.append(f"autoencoder training stopped at max_epochs ({config.embedding.max_epochs}) before "
                        "early stopping; the model may be under-trained")
    present = set(local.labels.tolist())
    if cohort and len(present) < clustering.k:
        absent = [t + 1 for t in range(clustering.k) if t not in present]
        warnings.append(f"tissue(s) {absent} of the cohort do not occur on this slide")
    return warnings


def _reconstructions(embedding: object, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """A few of the slide's tiles, evenly spaced, and the autoencoder's reconstructions of them (``tumls-ae`` only)."""
    from .tissue.embeddings import reconstruct

    if embedding.method != "tumls-ae":  # type: ignore[attr-defined]
        return None
    model = embedding.encoder.model  # type: ignore[attr-defined]
    examples = tiles[np.linspace(0, len(tiles) - 1, num=min(_RECONSTRUCTION_EXAMPLES, len(tiles))).astype(int)]
    return examples, reconstruct(model, examples)


def _embedding_colours(latents: np.ndarray, config: PipelineConfig) -> EmbeddingColours | None:
    if config.output.embedding_colours == "none":
        return None
    return embedding_colours(latents, config.output.embedding_colours, config.seed)


def _low_level(
    slide: Slide,
    boxes: np.ndarray,
    reps: list[Representative],
    config: PipelineConfig,
    progress: Callable[[float, str], None],
) -> tuple[tuple[Patch, ...], dict[int, dict[str, float]]]:
    """Read each representative at full resolution; segment and measure its nuclei (TUMLS's low level).

    A patch is level 0 over ``representatives.patch_um`` centred on the tile (whatever the tile size),
    downsampled only when its side exceeds ``PATCH_MAX_PX``. Nuclei are segmented in the
    ``nuclei.representatives`` best representatives of each tissue; the tissue features are
    measured over the patch's tissue only (glass left out, ``cells.features.tissue_roi``).

    Returns
    -------
    patches : tuple of Patch
        One per representative.
    tissue_features : dict of int to dict
        The features of each tissue (0-based) with segmented nuclei, pooled over its representatives.
    """
    cfg = config.nuclei
    patches = []
    per_tissue: dict[int, list[dict[str, float]]] = {}
    for j, rep in enumerate(reps):
        progress(j / max(len(reps), 1), f"tissue {rep.tissue + 1}, representative {rep.rank}")
        box = patch_box(boxes[rep.tile], config.representatives.patch_um, slide.mpp, slide.dimensions)
        mpp = slide.mpp * max(1.0, max(box[2], box[3]) / PATCH_MAX_PX)
        rgb = slide.read_box(box, mpp)
        if not cfg.enabled or (cfg.representatives is not None and rep.rank > cfg.representatives):
            patches.append(Patch(rgb=rgb, mpp=mpp, nuclei=None, box=box))
            continue
        result = segment_nuclei(rgb, mpp, cfg)
        labels = result.mask2
        table = measure_nuclei(labels, rgb, mpp, haematoxylin=result.haematoxylin)
        roi = measure_tissue(labels, rgb, mpp, roi=tissue_roi(rgb, mpp, cfg.tissue_od),
                             haematoxylin=result.haematoxylin, nuclei=table)
        per_tissue.setdefault(rep.tissue, []).append(roi)
        polygons = labels_to_polygons(labels, offset=(box[0], box[1]), scale=mpp / slide.mpp)
        patches.append(Patch(rgb=rgb, mpp=mpp, nuclei=PatchNuclei(labels=labels, table=table, roi=roi,
                                                                  polygons=polygons), box=box))
    tissue_features = {t: combine_rois(rois) for t, rois in sorted(per_tissue.items())} if cfg.enabled else {}
    nuclei = sum(len(p.nuclei.table["Label"]) for p in patches if p.nuclei is not None)
    progress(1.0, f"{nuclei} nuclei in {sum(p.nuclei is not None for p in patches)} representatives")
    return tuple(patches), tissue_features


def _glands(
    slide: Slide,
    boxes: np.ndarray,
    reps: list[Representative],
    patches: tuple[Patch, ...],
    config: PipelineConfig,
) -> tuple[tuple[Patch, ...], dict[int, dict[str, float]], list[str]]:
    """Segment and measure the glands of every representative patch (with ``glands.enabled``).

    Returns
    -------
    patches : tuple of Patch
        The same patches, with their glands.
    gland_features : dict of int to dict
        ``GLAND_TISSUE_FEATURES`` of each tissue (0-based), pooled over its representatives; empty when off.
    notes : list of str
        What the gland method said about the patches (resampled, not H&E, too small), once each, for the warnings.
    """
    if not config.glands.enabled:
        return patches, {}, []
    out, tables, areas, notes = [], {}, {}, {}
    for rep, patch in zip(reps, patches):
        result = segment_glands(patch.rgb, patch.mpp, config.glands)
        for note in result.notes:
            notes.setdefault(f"glands: {note}", None)
        table = measure_glands(result)
        x, y = (int(v) for v in (patch.box if patch.box is not None else boxes[rep.tile])[:2])
        polygons = labels_to_polygons(result.labels, offset=(x, y), scale=patch.mpp / slide.mpp, simplify_px=1.0)
        out.append(replace(patch, glands=PatchGlands(labels=result.labels, table=table, polygons=polygons)))
        tables.setdefault(rep.tissue, []).append(table)
        areas.setdefault(rep.tissue, []).append(patch.rgb.shape[0] * patch.rgb.shape[1] * patch.mpp ** 2)
    return tuple(out), {t: gland_tissue_features(tables[t], areas[t]) for t in sorted(tables)}, list(notes)
