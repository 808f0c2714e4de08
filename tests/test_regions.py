"""Tests of tumls_qp.tissue.regions: borders below the tile size, small foci, fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from tumls_qp.config import ClusterConfig, RegionConfig
from tumls_qp.errors import ConfigError, InvalidInputError
from tumls_qp.tissue.clusters import cluster_embeddings
from tumls_qp.tissue.regions import block_regions, project_to_simplex, refine_regions, region_geometries

PX = 16  # tissue-level pixels per tile side
PINK, PURPLE = (225, 150, 190), (140, 80, 170)


def _draw(truth: np.ndarray, seed: int = 0) -> np.ndarray:
    """An H&E-like texture: each class its colour, with blotchy noise that is not aligned to any grid."""
    rng = np.random.default_rng(seed)
    colours = np.array([PINK, PURPLE], dtype=np.float64)
    noise = ndi.gaussian_filter(rng.normal(0, 18, truth.shape + (3,)), (1.2, 1.2, 0))
    return np.clip(colours[truth] + noise, 0, 255).astype(np.uint8)


def _tiles(image: np.ndarray, cols: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """All tiles of the grid and a simple embedding of each (mean and spread of its colour)."""
    blocks = image.reshape(rows, PX, cols, PX, 3).transpose(0, 2, 1, 3, 4).reshape(-1, PX * PX, 3).astype(float)
    return np.arange(rows * cols), np.concatenate([blocks.mean(axis=1), blocks.std(axis=1)], axis=1)


def _refine(truth: np.ndarray, cfg: RegionConfig = RegionConfig(), k: int = 2, **kwargs):
    rows, cols = truth.shape[0] // PX, truth.shape[1] // PX
    image = _draw(truth)
    tiles, latents = _tiles(image, cols, rows)
    clustering = cluster_embeddings(latents, ClusterConfig(k=k), 0)
    regions = refine_regions(image, (cols, rows), PX, tiles, clustering.labels, clustering.posterior, cfg,
                             downsample=4.0, **kwargs)
    return regions, clustering


def _same_partition(found: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of pixels right under the best one-to-one matching of two 2-class maps."""
    agree = float((found == truth).mean())
    return max(agree, 1 - agree)


def test_border_inside_tiles_is_found_to_a_quarter_tile():
    # Two tissues whose border runs through the middle of a column of tiles and then bends.
    rows, cols = 10, 12
    truth = np.zeros((rows * PX, cols * PX), dtype=np.int64)
    border = (5.5 + 1.3 * np.sin(np.arange(rows * PX) / (rows * PX) * np.pi)) * PX  # wavy, never on the grid
    truth[np.arange(cols * PX)[None, :] >= border[:, None]] = 1
    regions, clustering = _refine(truth)
    blocks = block_regions((cols, rows), PX, np.arange(rows * cols), clustering.labels)
    assert regions.method == "felzenszwalb" and regions.warnings == ()
    found = regions.labels
    assert (found >= 0).all()
    # Along every row, the first pixel of the other tissue lies within a quarter tile of the true border.
    def border_of(labels: np.ndarray) -> np.ndarray:
        return np.array([np.argmax(row == row[-1]) for row in labels])

    assert np.abs(border_of(found) - border).max() <= PX / 4
    # Whole tiles cannot do that: their border sits on the grid, up to half a tile off.
    assert np.abs(border_of(blocks) - border).max() > PX / 2 - 1
    assert 1 - _same_partition(found, truth) < (1 - _same_partition(blocks, truth)) / 2


def test_small_focus_survives_as_its_own_region():
    # A one-tile focus on the grid and a two-tile focus straddling four tiles, in a field of the other tissue.
    rows, cols = 10, 12
    truth = np.zeros((rows * PX, cols * PX), dtype=np.int64)
    truth[2 * PX:3 * PX, 2 * PX:3 * PX] = 1
    truth[6 * PX + PX // 2:7 * PX + PX // 2, 7 * PX + PX // 2:9 * PX + PX // 2] = 1
    regions, _ = _refine(truth)
    labels = regions.labels
    focus_label = int(np.bincount(labels[truth == 1]).argmax())
    parts, n = ndi.label(labels == focus_label)
    assert n == 2
    # Each focus is its own region where it is: it covers most of the focus, and little else.
    # (The class of the straddling tiles is made mostly of them, so their evidence leans to the focus
    # and its region may bulge into them; the border test above measures precision.)
    for y0, y1, x0, x1 in [(2 * PX, 3 * PX, 2 * PX, 3 * PX),
                           (6 * PX + PX // 2, 7 * PX + PX // 2, 7 * PX + PX // 2, 9 * PX + PX // 2)]:
        inside = np.zeros(truth.shape, bool)
        inside[y0:y1, x0:x1] = True
        part = parts == parts[(y0 + y1) // 2, (x0 + x1) // 2]
        assert (part & inside).sum() / inside.sum() > 0.9 and (part & ~inside).sum() / inside.sum() < 0.5


def test_focus_smaller_than_min_region_joins_its_neighbour():
    rows, cols = 8, 8
    truth = np.zeros((rows * PX, cols * PX), dtype=np.int64)
    truth[3 * PX:4 * PX, 3 * PX:4 * PX] = 1
    kept, _ = _refine(truth, RegionConfig(min_region_tiles=1.5))
    assert kept.labels.max() == kept.labels.min()


def test_blocks_method_and_geometries():
    rows, cols = 4, 5
    truth = np.zeros((rows * PX, cols * PX), dtype=np.int64)
    truth[:, 3 * PX:] = 1
    regions, clustering = _refine(truth, RegionConfig(method="blocks"))
    assert regions.method == "blocks" and regions.segments == ()
    grid = regions.labels[::PX, ::PX]
    assert (grid == clustering.labels.reshape(rows, cols)).all()
    geometries = region_geometries(regions.labels, regions.downsample, offset=(10.0, 20.0))
    for tissue, geometry in geometries.items():
        assert geometry.is_valid
        assert geometry.area == pytest.approx((regions.labels == tissue).sum() * 16.0)
    assert min(g.bounds[0] for g in geometries.values()) == 10.0
    assert max(g.bounds[2] for g in geometries.values()) == 10.0 + cols * PX * 4


def test_geometries_keep_holes_and_separate_parts():
    labels = np.full((20, 20), -1, dtype=np.int64)
    labels[2:18, 2:18] = 0
    labels[8:12, 8:12] = 1  # a hole in tissue 0, filled by tissue 1
    labels[0, 19] = 0  # a separate part (diagonal contact only)
    geometries = region_geometries(labels)
    assert geometries[0].geom_type == "MultiPolygon" and geometries[0].area == 16 * 16 - 16 + 1
    assert len(geometries[0].geoms[0].interiors) + len(geometries[0].geoms[1].interiors) == 1
    assert geometries[1].area == 16


def test_tissue_mask_restricts_regions_and_glass_between_tiles():
    # Every tile is its own tissue fragment (glass around each): regions keep each tile's tissue, inside the mask.
    rows, cols = 6, 6
    truth = np.zeros((rows * PX, cols * PX), dtype=np.int64)
    truth[:, 3 * PX:] = 1
    mask = np.zeros(truth.shape, bool)
    for r in range(rows):
        for c in range(cols):
            mask[r * PX + 3:(r + 1) * PX - 3, c * PX + 3:(c + 1) * PX - 3] = True
    regions, clustering = _refine(truth, tissue=mask)
    assert regions.method == "felzenszwalb"
    assert ((regions.labels >= 0) == mask).all()
    tile_of_pixel = block_regions((cols, rows), PX, np.arange(rows * cols), clustering.labels)
    assert (regions.labels[mask] == tile_of_pixel[mask]).all()


def test_fallbacks_to_blocks_are_warned():
    rows, cols = 3, 3
    image = _draw(np.zeros((rows * PX, cols * PX), dtype=np.int64))
    one = refine_regions(image, (cols, rows), PX, np.array([4]), np.array([0]), None, RegionConfig())
    assert one.method == "blocks" and "at least 2" in one.warnings[0]
    assert (one.labels >= 0).sum() == PX * PX
    no_tissue = refine_regions(image, (cols, rows), PX, np.arange(9), np.zeros(9, dtype=np.int64), None,
                               RegionConfig(), tissue=np.zeros(image.shape[:2], bool))
    assert no_tissue.method == "blocks" and "tissue mask" in no_tissue.warnings[0]


def test_one_tissue_follows_the_mask_only():
    rows, cols = 4, 4
    image = _draw(np.zeros((rows * PX, cols * PX), dtype=np.int64))
    mask = np.ones(image.shape[:2], bool)
    mask[:, :10] = False
    regions = refine_regions(image, (cols, rows), PX, np.arange(16), np.zeros(16, dtype=np.int64), None,
                             RegionConfig(), tissue=mask)
    assert set(np.unique(regions.labels)) == {-1, 0} and ((regions.labels == 0) == mask).all()


@pytest.mark.parametrize("change, message", [
    ({"method": "superpixels"}, "regions.method"),
    ({"scales": ()}, "regions.scales"),
    ({"scales": (1.0, -2.0)}, "regions.scales"),
    ({"sigma_tiles": 2.0}, "regions.sigma_tiles"),
    ({"min_segment_tiles": 0.0}, "regions.min_segment_tiles"),
    ({"prior_weight": -1.0}, "regions.prior_weight"),
    ({"min_region_tiles": float("nan")}, "regions.min_region_tiles"),
])
def test_region_parameters_out_of_range(change, message):
    with pytest.raises(ConfigError, match=message):
        RegionConfig(**change)


def test_bad_arrays_name_the_argument():
    image = np.zeros((2 * PX, 3 * PX, 3), np.uint8)
    cfg = RegionConfig()
    with pytest.raises(InvalidInputError, match="image"):
        refine_regions(image[:-1], (3, 2), PX, np.arange(6), np.zeros(6, dtype=np.int64), None, cfg)
    with pytest.raises(InvalidInputError, match="tiles"):
        refine_regions(image, (3, 2), PX, np.array([0, 6]), np.zeros(2, dtype=np.int64), None, cfg)
    with pytest.raises(InvalidInputError, match="labels"):
        refine_regions(image, (3, 2), PX, np.arange(6), np.zeros(5, dtype=np.int64), None, cfg)
    with pytest.raises(InvalidInputError, match="posterior"):
        refine_regions(image, (3, 2), PX, np.arange(6), np.ones(6, dtype=np.int64), np.ones((6, 1)), cfg)
    with pytest.raises(InvalidInputError, match="tissue"):
        refine_regions(image, (3, 2), PX, np.arange(6), np.zeros(6, dtype=np.int64), None, cfg,
                       tissue=np.ones((2, 2), bool))


def test_simplex_projection():
    v = np.array([[0.2, 0.3, 0.5], [2.0, 0.0, 0.0], [-1.0, 0.5, 0.6], [0.0, 0.0, 0.0]])
    p = project_to_simplex(v)
    assert np.allclose(p.sum(axis=1), 1) and (p >= 0).all()
    assert np.allclose(p[0], v[0]) and np.allclose(p[1], [1, 0, 0]) and np.allclose(p[2], [0, 0.45, 0.55])
    assert np.allclose(p[3], 1 / 3)


# --- through the pipeline --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def focus_slide(tmp_path_factory):
    """A 1 x 1 mm slide of stroma (0.5 µm/px, 64 µm tiles: 16 x 16) with an epithelium focus of 1.5 x 1.5 tiles
    straddling 4 tiles (its corner half a tile off the grid). Returns the slide and the focus box in level-0 px."""
    from tumls_qp.testing import render_scene, write_pyramidal_tiff

    size, mpp = 2048, 0.5
    rgb = render_scene("homogeneous", 0.0, 0.0, size, size, mpp, (size * mpp, size * mpp))
    x0, y0, side = 704, 704, 192  # 5.5 tiles from the corner, 1.5 tiles wide
    rgb[y0:y0 + side, x0:x0 + side] = render_scene("two-tissues", 1900.0, 1400.0, side, side, mpp, (3000.0, 3000.0))
    path = tmp_path_factory.mktemp("focus") / "focus.tif"
    write_pyramidal_tiff(path, rgb, mpp)
    return path, (x0, y0, side, side)


def _focus_config(**changes):
    from tumls_qp.config import PipelineConfig, replace_in

    return replace_in(PipelineConfig(), **{"tiles.tile_um": 64.0, "embedding.max_epochs": 4, "embedding.device": "cpu",
                                           "output.report": False, "nuclei.enabled": False, "clusters.k": 2,
                                           "output.embedding_colours": "none", **changes})


def test_a_focus_of_one_and_a_half_tiles_survives_the_pipeline(focus_slide, tmp_path):
    from tumls_qp.outputs.geojson import validate_geojson_file
    from tumls_qp.outputs.run_folder import read_run
    from tumls_qp.pipeline import analyze

    slide, (x0, y0, w, h) = focus_slide
    [result] = analyze([slide], tmp_path, _focus_config())
    run = read_run(result.run_dir)
    assert validate_geojson_file(run.geojson_path) == [] and run.manifest.regions.method == "felzenszwalb"
    scale = run.thumbnail_scale  # thumbnail px per level-0 px
    regions = run.regions
    truth = np.zeros(regions.shape, bool)
    truth[int(y0 * scale):int((y0 + h) * scale), int(x0 * scale):int((x0 + w) * scale)] = True
    focus = int(np.bincount(regions[truth]).argmax())
    parts, _ = ndi.label(regions == focus)
    part = parts == np.bincount(parts[truth]).argmax()
    # The focus is a region of its own, where it is: most of it found, little beyond it.
    assert (part & truth).sum() / truth.sum() > 0.8 and (part & ~truth).sum() / truth.sum() < 0.5
    assert part.sum() < 0.1 * (regions > 0).sum()
    annotation = next(f for f in run.geojson() if f["properties"].get("name") == f"Tissue {focus}")
    area_um2 = (w * h) * run.mpp ** 2
    assert 0.7 * area_um2 < annotation["properties"]["measurements"]["Area um^2"] < 1.6 * area_um2
    # Whole tiles would have made it 4 tiles (the 4 it straddles) or nothing.
    assert run.manifest.regions.changed_fraction > 0


def test_graph_clustering_without_edges_falls_back_in_the_manifest(focus_slide, tmp_path):
    from tumls_qp.pipeline import analyze

    slide, _ = focus_slide
    [result] = analyze([slide], tmp_path, _focus_config(**{"clusters.method": "graph", "clusters.graph_similarity": 0.999}))
    m = result.manifest
    assert m.clusters.method == "kmeans" and m.config.clusters.method == "graph"
    assert any("graph clustering fell back to k-means" in w for w in m.warnings)
