"""Run folders for the tests: a small analysis made of the stages' own types, and what a cohort promises."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import tumls_qp.outputs.run_folder as rf
from tumls_qp.cells.features import combine_rois, measure_nuclei, measure_tissue
from tumls_qp.cells.nuclei import labels_to_polygons
from tumls_qp.config import PipelineConfig, replace_in
from tumls_qp.interactive.embedding_colours import embedding_colours
from tumls_qp.tissue.clusters import Clustering
from tumls_qp.tissue.regions import RegionMap, block_regions
from tumls_qp.tissue.representatives import select_representatives
from tumls_qp.tissue.tiles import TileGrid, TileSelection, TissueTiles, tile_pixels


def _disks(size: int, centres: list[tuple[int, int]], radius: int) -> tuple[np.ndarray, np.ndarray]:
    """A pink patch with purple disks, and their instance labels."""
    yy, xx = np.mgrid[:size, :size]
    rgb = np.full((size, size, 3), (230, 180, 210), np.uint8)
    labels = np.zeros((size, size), np.int32)
    for i, (cx, cy) in enumerate(centres, start=1):
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2
        rgb[inside] = (90, 50, 140)
        labels[inside] = i
    return rgb, labels


def synthetic_analysis() -> rf.SlideAnalysis:
    """A small analysis made of the stages' own types, every optional part present."""
    rng = np.random.default_rng(0)
    grid = TileGrid(tile_size=64, shape=(6, 4), tile_px=16, mpp=0.5)
    thumbnail = rng.integers(0, 256, (4 * 16, 6 * 16, 3), dtype=np.uint8)
    reason = np.zeros((4, 6), np.uint8)
    reason[0, 0], reason[0, 1] = 1, 2
    kept = np.flatnonzero(reason.ravel() == 0)
    selection = TileSelection(kept=kept, tissue_fraction=rng.random((4, 6)).astype(np.float32),
                              dark_fraction=np.zeros((4, 6), np.float32), reason=reason)
    tiles = TissueTiles(grid=grid, thumbnail=thumbnail, selection=selection,
                        tiles=tile_pixels(thumbnail, grid, kept))
    n = len(kept)
    latents = rng.normal(size=(n, 256)).astype(np.float32)
    clustering = Clustering(
        k=2, k_source="dendrogram", labels=np.arange(n) % 2, centroids=rng.normal(size=(2, 256)).astype(np.float32),
        distance=rng.random(n).astype(np.float32), uncertainty=rng.random(n).astype(np.float32),
        uncertainty_scale=1.25, gaps={2: 3.5, 3: 0.75}, split_statistic=4.2,
        linkage=np.column_stack([np.arange(n - 1), np.arange(1, n), np.linspace(0.1, 2, n - 1), np.full(n - 1, 2)]),
        linkage_indices=None, method="graph", k_votes={2: 7, 3: 3},
        posterior=np.where((np.arange(n) % 2 == 0)[:, None], [0.75, 0.25], [0.25, 0.75]).astype(np.float32),
        confidence=np.linspace(0.05, 0.95, n).astype(np.float32), warnings=("graph warning",))
    reps = select_representatives(clustering, 2, min_confidence=0.85)
    # Regions: whole tiles, then one corner tile half left out (glass) and half given to the other tissue.
    blocks = block_regions(grid.shape, grid.tile_px, kept, clustering.labels)
    labels = blocks.copy()
    labels[16:24, 32:48] = -1
    labels[24:32, 32:48] = 1 - labels[24:32, 32:48]
    regions = RegionMap(labels=labels, downsample=4.0, method="felzenszwalb", segments=(40, 12, 3),
                        changed_fraction=float((labels != blocks)[blocks >= 0].mean()))
    patches = []
    for i, rep in enumerate(reps):
        rgb, labels = _disks(64, [(16, 16), (44, 40)], 6 + i)
        x, y = (int(v) for v in tiles.boxes[rep.tile][:2])
        box = (x - 16, y - 16, 64, 64)
        if i == 1:  # one representative without nuclei (nuclei.representatives)
            patches.append(rf.Patch(rgb=rgb, mpp=0.5, nuclei=None, box=box))
            continue
        table = measure_nuclei(labels, rgb, 0.5)
        roi = measure_tissue(labels, rgb, 0.5, nuclei=table)
        patches.append(rf.Patch(rgb=rgb, mpp=0.5, nuclei=rf.PatchNuclei(
            labels=labels, table=table, roi=roi, polygons=labels_to_polygons(labels, offset=box[:2])), box=box))
    rois = {}
    for rep, patch in zip(reps, patches):
        if patch.nuclei is not None:
            rois.setdefault(rep.tissue, []).append(patch.nuclei.roi)
    from dataclasses import asdict

    from tumls_qp.tissue.embeddings import Autoencoder, TileEmbedding, TrainingHistory
    from tumls_qp.tissue.embeddings.methods import AutoencoderEncoder

    history = TrainingHistory(train_mse=[0.1, 0.05], val_mse=[0.12, 0.06], best_epoch=2,
                              mse={"train": 0.05, "val": 0.06, "test": 0.07}, n_tiles={"train": 15, "val": 3, "test": 4},
                              early_stopped=True, seconds=1.5, device="cpu", initialised_from=None)
    embedding = TileEmbedding(method="tumls-ae", vectors=latents, posterior=None, encoder=AutoencoderEncoder(Autoencoder(16)),
                              history=asdict(history) | {"epochs": 2, "train_seconds": 1.5})
    config = replace_in(PipelineConfig(), **{"tiles.tile_um": 32.0, "representatives.n": 2})
    return rf.SlideAnalysis(
        config=config, created=datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        slide=rf.SlideInfo(path="/slides/s.svs", name="s.svs", quickhash="ab" * 32, vendor="aperio", width_px=384,
                           height_px=256, levels=((384, 256), (96, 64)), mpp=0.5, mpp_source="file",
                           objective_power=20.0),
        tiles=tiles, latents=latents, clustering=clustering, cohort=("s", "t"), cohort_tiles_per_tissue=(30, 12),
        representatives=tuple(reps), patches=tuple(patches),
        tissue_features={t: combine_rois(r) for t, r in sorted(rois.items())}, embedding=embedding, cache_hit=False,
        reconstructions=(tiles.tiles[:2], tiles.tiles[:2][::-1].copy()),
        embedding_colours=embedding_colours(latents, "pca"), warnings=("a warning",),
        timings_s={"tiles": 0.5, "train": 1.25}, regions=regions,
        engine=rf.EngineInfo(engine="dask", scheduler="tcp://10.0.0.1:8786", worker="tcp://10.0.0.2:40001",
                             model_worker="tcp://10.0.0.3:40002"),
    )




def _tissue_level_tiles(run) -> np.ndarray:
    """Each tile's pixels at the tissue level, cut from the run's thumbnail (what the autoencoder saw)."""
    scale, px = run.thumbnail_scale, run.tile_px
    out = []
    for x, y, _, _ in run.tiles.boxes:
        r, c = int(round(y * scale)), int(round(x * scale))
        out.append(run.thumbnail[r: r + px, c: c + px])
    return np.stack(out)


def assert_one_cohort(run_dirs: list[Path]) -> None:
    """One autoencoder, one clustering, one uncertainty scale for every slide, so that a tissue number means the same
    tissue everywhere: the tiles of each slide, embedded with the *first* slide's encoder and assigned to the first
    slide's centroids, get the tissues their own run folder gives them."""
    from tumls_qp.tissue.embeddings import embed_tiles, load_checkpoint

    runs = [rf.read_run(d) for d in run_dirs]
    first = runs[0]
    model, _ = load_checkpoint(first.path)
    centroids = first.embeddings.centroids.astype(np.float64)
    scale = first.manifest.clusters.uncertainty_scale
    total = np.zeros(first.k, dtype=np.int64)
    for run in runs:
        m = run.manifest
        assert m.cohort == first.manifest.cohort and sorted(m.cohort) == sorted(r.path.name for r in runs)
        assert m.clusters.k == first.k and m.clusters.uncertainty_scale == scale
        assert np.array_equal(run.embeddings.centroids, first.embeddings.centroids)
        assert m.clusters.cohort_tiles_per_tissue == first.manifest.clusters.cohort_tiles_per_tissue
        # The same tile content gets the same tissue on every slide: embed this slide's tiles with the first
        # slide's encoder, assign them to the first slide's centroids.
        latents = embed_tiles(model, _tissue_level_tiles(run))
        np.testing.assert_allclose(latents, run.embeddings.latents, atol=1e-3, rtol=1e-3)
        d = np.linalg.norm(latents[:, None, :].astype(np.float64) - centroids[None], axis=2)
        agree = (d.argmin(axis=1) == run.tiles.tissue - 1).mean()
        assert agree > 0.99, f"{run.path.name}: {agree:.3f} of its tiles are in the tissue of the nearest centroid"
        own = d[np.arange(len(d)), run.tiles.tissue - 1]
        np.testing.assert_allclose(run.tiles.uncertainty, np.clip(own / scale, 0, 1), atol=2e-3)
        total += run.tiles_per_tissue()
    # The cohort's counts are the slides' counts added up.
    assert total.tolist() == list(first.manifest.clusters.cohort_tiles_per_tissue)
