"""The only place where all stages meet: slides in, one run folder per slide out.

The pipeline calls the stages in order (tiles, and the views when the embedding method
looks at them; the embedding method's training; embeddings; clusters; representatives;
nuclei) and hands each slide's results, one :class:`SlideAnalysis`, to
:mod:`tumls_qp.outputs.run_folder`, which writes the run folder (see the README's
"Outputs"). Run folders are built in hidden staging folders and renamed into place at the
very end, together for a cohort, so a failed or cancelled run leaves no half-written
outputs (an earlier run folder of the same name stays untouched until the new one is
complete). The pipeline itself writes no file.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .cells.features import combine_rois, measure_nuclei, measure_tissue
from .cells.nuclei import labels_to_polygons, segment_nuclei
from .config import PipelineConfig
from .errors import ConfigError, TumlsQpError
from .files import run_folder_names, writable_dir
from .interactive.embedding_colours import EmbeddingColours, embedding_colours, umap_available
from .outputs.pdf_report import COHORT_REPORT_NAME, REPORT_NAME, render_report
from .outputs.run_folder import AnalysisManifest, Patch, PatchNuclei, RunStaging, SlideAnalysis, SlideInfo
from .slide import Slide, open_slide, slide_quickhash
from .tissue.cache import CachedEmbeddings, cache_key, load_cached, store_cached
from .tissue.clusters import Clustering, cluster_embeddings
from .tissue.representatives import Representative, select_representatives
from .tissue.tiles import TissueTiles, tissue_tiles

__all__ = ["analyze", "RunResult", "ProgressFn", "STAGES", "PATCH_MAX_PX"]

log = logging.getLogger(__name__)

#: Stages in the order they run; progress callbacks name one of them.
STAGES = ("tiles", "train", "embed", "cluster", "nuclei", "outputs")
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
class _SlideTiles:
    """A slide's tissue level, read and filtered, and what was noticed on the way."""

    slide: Slide
    quickhash: str
    tiles: TissueTiles
    warnings: list[str]


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
        if not umap_available():  # say so now rather than after the training
            raise ConfigError("output.embedding_colours = 'umap' needs umap-learn: pip install 'tumls-qp[umap]' "
                              "(or use 'auto' or 'pca')")
    slides = [Path(s) for s in slides]
    if not slides:
        raise TumlsQpError("no slide given")
    names = list(run_names) if run_names is not None else run_folder_names(slides)
    if len(names) != len(slides) or len(set(names)) != len(names):
        raise TumlsQpError(f"run_names must give one distinct name per slide; got {names!r}")
    out = writable_dir(Path(out_dir))
    cache = Path(cache_dir) if cache_dir is not None else None
    if cohort:
        results = _analyze_group(slides, names, out, config, cache, progress, cohort=True)
        if config.output.report and len(results) > 1:
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
    try:
        for path in paths:
            slides.append(open_slide(path, mpp=config.slide.mpp, mpp_override=config.slide.mpp_override))
        hashes = [slide_quickhash(s.path) for s in slides]
        key = cache_key([(h, s.mpp, s.dimensions) for s, h in zip(slides, hashes)], config)
        cached = load_cached(cache, key) if cache else None

        with timer.stage("tiles"):
            data = [_read_tiles(s, h, config, progress, i, len(slides), cached)
                    for i, (s, h) in enumerate(zip(slides, hashes))]
        all_tiles = np.concatenate([d.tiles.tiles for d in data])

        if cached is not None:
            embedding = cached.embedding
            progress("train", 1.0, "reused the cached model")
            progress("embed", 1.0, "reused the cached embeddings")
        else:
            embedding = _embed(data, all_tiles, config, timer, progress)
            if cache:
                store_cached(cache, key, CachedEmbeddings(thumbnails=[d.tiles.thumbnail for d in data],
                                                          embedding=embedding))
        latents = embedding.vectors

        with timer.stage("cluster"):
            progress("cluster", 0.0, "clustering")
            clustering = cluster_embeddings(latents, config.clusters, config.seed, posterior=embedding.posterior)
            progress("cluster", 1.0, f"k = {clustering.k}")

        offsets = np.cumsum([0] + [len(d.tiles.tiles) for d in data])
        with RunStaging(out) as staging:
            for i, (d, name) in enumerate(zip(data, names)):
                part = slice(int(offsets[i]), int(offsets[i + 1]))
                local = _slide_clustering(clustering, part)
                reps = select_representatives(local, config.representatives.n)
                with timer.stage("nuclei"):
                    patches, tissue_features = _low_level(
                        d.slide, d.tiles.boxes, reps, config,
                        lambda f, m, i=i: progress("nuclei", (i + f) / len(data), m))
                with timer.stage("outputs"):
                    progress("outputs", i / len(data), f"writing {name}")
                    analysis = SlideAnalysis(
                        config=config, created=started, slide=SlideInfo.of(d.slide, d.quickhash), tiles=d.tiles,
                        latents=latents[part], clustering=local, cohort=tuple(names) if cohort else None,
                        cohort_tiles_per_tissue=tuple(clustering.sizes()), representatives=tuple(reps),
                        patches=patches, tissue_features=tissue_features, embedding=embedding,
                        cache_hit=cached is not None, reconstructions=_reconstructions(embedding, d.tiles.tiles),
                        embedding_colours=_embedding_colours(latents[part], config),
                        warnings=tuple(_warnings(d, config, clustering, local, embedding, cohort)),
                        timings_s=dict(timer.seconds),
                    )
                    staged = staging.write(name, analysis)
                    if config.output.report:
                        # From the staging folder's own files: a report that fails to render leaves no run folder.
                        render_report(staged, staged / REPORT_NAME)
            progress("outputs", 1.0, "run folders written")
            written = staging.commit(timer.seconds)
        return [RunResult(slide=d.slide.path, run_dir=run_dir, manifest=manifest)
                for d, (run_dir, manifest) in zip(data, written)]
    finally:
        for slide in slides:
            slide.close()


def _read_tiles(
    slide: Slide,
    quickhash: str,
    config: PipelineConfig,
    progress: ProgressFn,
    index: int,
    count: int,
    cached: CachedEmbeddings | None,
) -> _SlideTiles:
    label = slide.path.name if count == 1 else f"{slide.path.name} ({index + 1}/{count})"
    warnings = []
    if slide.mpp_source == "caller":
        warnings.append(f"pixel size {slide.mpp:g} µm/px was given by the caller, not read from the file")
    if cached is not None:
        progress("tiles", (index + 1) / count, f"{label}: reused cached tiles")
    tiles = tissue_tiles(
        slide, config.tiles, allow_non_he=config.slide.allow_non_he,
        thumbnail=cached.thumbnails[index] if cached is not None else None,
        progress=lambda done, total: progress("tiles", (index + done / total) / count, f"reading {label}"),
    )
    counts = tiles.selection.counts()
    if counts["artefact"] > 0.1 * tiles.grid.n_tiles:
        warnings.append(f"{counts['artefact']} tiles dropped as near-black artefacts (pen, folds, borders)")
    return _SlideTiles(slide=slide, quickhash=quickhash, tiles=tiles, warnings=warnings)


def _embed(data: list[_SlideTiles], all_tiles: np.ndarray, config: PipelineConfig, timer: _Timer,
           progress: ProgressFn) -> object:
    """Fit ``embedding.method`` on the tiles of all slides (reading their views first when it needs them)."""
    from .tissue.embeddings import TileImages, check_tile_count, fit_embedding, needs_views
    from .tissue.tiles import read_views

    cfg = config.embedding
    check_tile_count(cfg.method, len(all_tiles))
    images = TileImages(tiles=all_tiles)
    if needs_views(cfg.method):
        with timer.stage("tiles"):
            views, mpps = [], []
            for i, d in enumerate(data):
                v, mpp = read_views(d.slide, d.tiles.grid, d.tiles.selection.kept, cfg.view_um, cfg.view_px,
                                    progress=lambda done, total, i=i: progress(
                                        "tiles", (i + done / total) / len(data), f"reading views of {d.slide.path.name}"))
                views.append(v)
                mpps.append(mpp)
            images = TileImages(tiles=all_tiles, views=np.concatenate(views), view_mpp=float(np.mean(mpps)))
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


def _slide_clustering(clustering: Clustering, part: slice) -> Clustering:
    """The part of a (cohort) clustering that covers one slide's tiles; centroids, gaps and linkage stay the whole's."""
    return Clustering(
        k=clustering.k, k_source=clustering.k_source, labels=clustering.labels[part],
        centroids=clustering.centroids, distance=clustering.distance[part],
        uncertainty=clustering.uncertainty[part], uncertainty_scale=clustering.uncertainty_scale,
        gaps=clustering.gaps, split_statistic=clustering.split_statistic, linkage=clustering.linkage,
        linkage_indices=None, k_votes=clustering.k_votes,
        posterior=None if clustering.posterior is None else clustering.posterior[part],
    )


def _warnings(d: _SlideTiles, config: PipelineConfig, clustering: Clustering, local: Clustering, embedding: object,
              cohort: bool) -> list[str]:
    warnings = list(d.warnings)
    if clustering.k == 1:
        warnings.append(f"one tissue only (k = 1, {clustering.k_source})")
    runner = clustering.runner_up
    if runner is not None and 2 * runner[1] >= clustering.k_votes.get(clustering.k, 0):  # at least half the winner's
        warnings.append(f"k = {clustering.k} won only narrowly: k = {runner[0]} was chosen in {runner[1]} of "
                        f"{sum(clustering.k_votes.values())} resamples of the tiles; consider --k {runner[0]}")
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

    A patch is level 0 of the tile, downsampled only when its side exceeds ``PATCH_MAX_PX``.
    Nuclei are segmented in the ``nuclei.representatives`` best representatives of each tissue.

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
        box = tuple(int(v) for v in boxes[rep.tile])
        mpp = slide.mpp * max(1.0, max(box[2], box[3]) / PATCH_MAX_PX)
        rgb = slide.read_box(box, mpp)
        if not cfg.enabled or (cfg.representatives is not None and rep.rank > cfg.representatives):
            patches.append(Patch(rgb=rgb, mpp=mpp, nuclei=None))
            continue
        result = segment_nuclei(rgb, mpp, cfg)
        labels = result.mask2
        table = measure_nuclei(labels, rgb, mpp, haematoxylin=result.haematoxylin)
        roi = measure_tissue(labels, rgb, mpp, haematoxylin=result.haematoxylin, nuclei=table)
        per_tissue.setdefault(rep.tissue, []).append(roi)
        polygons = labels_to_polygons(labels, offset=(box[0], box[1]), scale=mpp / slide.mpp)
        patches.append(Patch(rgb=rgb, mpp=mpp, nuclei=PatchNuclei(labels=labels, table=table, roi=roi,
                                                                  polygons=polygons)))
    tissue_features = {t: combine_rois(rois) for t, rois in sorted(per_tissue.items())} if cfg.enabled else {}
    nuclei = sum(len(p.nuclei.table["Label"]) for p in patches if p.nuclei is not None)
    progress(1.0, f"{nuclei} nuclei in {sum(p.nuclei is not None for p in patches)} representatives")
    return tuple(patches), tissue_features
