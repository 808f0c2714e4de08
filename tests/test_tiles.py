import numpy as np
import pytest

from tumls_qp.config import TileConfig
from tumls_qp.errors import InvalidInputError, NoTissueError, NotBrightfieldError
from tumls_qp.slide import open_slide
from tumls_qp.tissue.tiles import (
    TileGrid,
    check_brightfield_he,
    plan_grid,
    read_thumbnail,
    read_views,
    require_tissue,
    select_tiles,
    tile_pixels,
    tissue_mask,
)

CFG = TileConfig(tile_um=64.0)


def _analyse(path, cfg=CFG):
    with open_slide(path) as slide:
        grid = plan_grid(slide, cfg)
        thumb = read_thumbnail(slide, grid)
    mask = tissue_mask(thumb, grid.lowres_mpp, cfg)
    return grid, thumb, mask, select_tiles(thumb, mask, grid, cfg)


def test_grid_in_level0_pixels(slides):
    with open_slide(slides["two-tissues"]) as slide:
        grid = plan_grid(slide, CFG)
    assert grid.tile_size == 128 and grid.shape == (24, 16) and grid.n_tiles == 384
    assert grid.tile_um == pytest.approx(64.0) and grid.lowres_mpp == pytest.approx(4.0)
    boxes = grid.boxes(np.array([0, 1, 24, 383]))
    assert boxes.tolist() == [[0, 0, 128, 128], [128, 0, 128, 128], [0, 128, 128, 128], [2944, 1920, 128, 128]]


def test_tile_larger_than_slide(slides):
    with open_slide(slides["two-tissues"]) as slide:
        with pytest.raises(InvalidInputError, match="larger than the slide .* Use a smaller --tile-um"):
            plan_grid(slide, TileConfig(tile_um=2000.0))


def test_thumbnail_matches_direct_read_and_progress(slides):
    seen = []
    with open_slide(slides["two-tissues"]) as slide:
        grid = plan_grid(slide, CFG)
        thumb = read_thumbnail(slide, grid, progress=lambda done, total: seen.append((done, total)))
        direct = slide.read_box((0, 0, 24 * 128, 16 * 128), mpp=4.0)
    assert thumb.shape == (16 * 16, 24 * 16, 3)
    assert np.abs(thumb.astype(int) - direct.astype(int)).mean() < 3
    assert seen[-1] == (384, 384)


def test_streaming_reads_in_chunks(slides, monkeypatch):
    """Pixels never sit in memory all at once: chunks of at most CHUNK_PX² pixels of the read level."""
    import tumls_qp.slide as slide_module

    monkeypatch.setattr(slide_module, "CHUNK_PX", 64)
    sizes = []
    with open_slide(slides["two-tissues"]) as slide:
        original = slide.read_box
        grid = plan_grid(slide, TileConfig(tile_um=64.0))
        object.__setattr__(slide, "read_box", lambda box, mpp: sizes.append(box) or original(box, mpp))
        thumb = read_thumbnail(slide, grid)
    # 4 µm/px is read from level 3 (downsample 8), where a 128 px tile is 16 px: 4 x 4 tiles per chunk.
    assert len(sizes) == (24 // 4) * (16 // 4)
    assert max(b[2] * b[3] for b in sizes) == (4 * 128) ** 2
    assert thumb.shape == (256, 384, 3)


def test_tissue_mask_and_selection_on_two_tissues(slides):
    grid, thumb, mask, selection = _analyse(slides["two-tissues"])
    # The scene is an ellipse with semi-axes 0.42 of the slide: pi * 0.42² ≈ 55 % tissue.
    assert 0.45 < mask.mean() < 0.65
    counts = selection.counts()
    assert counts["kept"] + counts["background"] + counts["artefact"] == 384
    assert 150 < counts["kept"] < 260 and counts["artefact"] == 0
    tiles = tile_pixels(thumb, grid, selection.kept)
    assert tiles.shape == (counts["kept"], 16, 16, 3) and tiles.dtype == np.uint8
    # Tile i is the thumbnail block at its grid position.
    i = int(selection.kept[0])
    r, c = divmod(i, 24)
    assert np.array_equal(tiles[0], thumb[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16])


def test_dark_tiles_are_artefacts():
    thumb = np.full((32, 64, 3), 240, np.uint8)
    thumb[:, 16:] = (200, 120, 190)  # tissue
    thumb[:16, 32:48] = 5  # a pen mark covering one tile
    from tumls_qp.tissue.tiles import TileGrid

    grid = TileGrid(tile_size=32, shape=(4, 2), tile_px=16, mpp=0.5)
    cfg = TileConfig(tile_um=16.0, min_fragment_um2=0)
    mask = tissue_mask(thumb, grid.lowres_mpp, cfg)
    selection = select_tiles(thumb, mask, grid, cfg)
    assert selection.reason.tolist() == [[1, 0, 2, 0], [1, 0, 0, 0]]


def test_all_background_slide_has_no_tissue(slides):
    grid, thumb, mask, selection = _analyse(slides["blank"])
    assert mask.mean() < 0.01
    with pytest.raises(NoTissueError, match="no tissue found"):
        require_tissue(selection, grid, CFG, "blank.tif")


def test_too_few_tiles_suggests_smaller_tiles(slides):
    cfg = TileConfig(tile_um=512.0)
    grid, thumb, mask, selection = _analyse(slides["two-tissues"], cfg)
    with pytest.raises(NoTissueError, match="Use a smaller --tile-um"):
        require_tissue(selection, grid, cfg, "two-tissues.tif")


def test_fluorescence_is_refused(slides):
    grid, thumb, mask, selection = _analyse(slides["fluorescence"])
    with pytest.raises(NotBrightfieldError, match="fluorescence .* --allow-non-he"):
        check_brightfield_he(thumb)


def test_dab_is_refused(slides):
    grid, thumb, mask, selection = _analyse(slides["dab"])
    check_brightfield_he(thumb)  # bright background: passes the first test
    with pytest.raises(NotBrightfieldError, match="does not look H&E-stained"):
        check_brightfield_he(thumb, mask)


def test_he_passes(slides):
    grid, thumb, mask, selection = _analyse(slides["two-tissues"])
    check_brightfield_he(thumb, mask)


@pytest.mark.realdata
@pytest.mark.parametrize("name, mpp", [("CMU-1-Small-Region.svs", None), ("tcga-cr-7395-01a-01-ts1.svs", 1.0)])
def test_real_he_slides_pass_the_stain_check(wsi, name, mpp):
    with open_slide(wsi / name, mpp=mpp) as slide:
        grid = plan_grid(slide, TileConfig(tile_um=64.0))
        thumb = read_thumbnail(slide, grid)
    mask = tissue_mask(thumb, grid.lowres_mpp, TileConfig(tile_um=64.0))
    check_brightfield_he(thumb, mask)
    assert 0.2 < mask.mean() < 0.9


@pytest.mark.realdata
def test_real_fluorescence_ndpi_is_refused(wsi):
    with open_slide(wsi / "test3-DAPI-2-387.ndpi") as slide:
        grid = plan_grid(slide, TileConfig())
        thumb = read_thumbnail(slide, grid)
    with pytest.raises(NotBrightfieldError, match="fluorescence"):
        check_brightfield_he(thumb)


def test_views_centred_on_their_tiles(slides):
    with open_slide(slides["two-tissues"]) as slide:
        grid = plan_grid(slide, CFG)  # 64 µm tiles at 0.5 µm/px
        idx = np.array([0, 25, 200, 383])
        # A field the size of the tile: the view is the tile, as the thumbnail reads it at that resolution.
        same, mpp = read_views(slide, grid, idx, 64.0, 32)
        assert mpp == pytest.approx(2.0) and same.shape == (4, 32, 32, 3)
        thumb = read_thumbnail(slide, TileGrid(grid.tile_size, grid.shape, 32, grid.mpp))
        np.testing.assert_array_equal(same, tile_pixels(thumb, TileGrid(grid.tile_size, grid.shape, 32, grid.mpp), idx))
        # A field four tiles wide: the tile in the middle, its neighbours around it, white beyond the grid.
        calls = []
        wide, mpp = read_views(slide, grid, idx, 256.0, 64, progress=lambda d, t: calls.append((d, t)))
        assert mpp == pytest.approx(4.0) and wide.shape == (4, 64, 64, 3)
        assert calls[-1] == (grid.n_tiles, grid.n_tiles)
        small = TileGrid(grid.tile_size, grid.shape, 16, grid.mpp)
        centre = tile_pixels(read_thumbnail(slide, small), small, idx)
        np.testing.assert_array_equal(wide[:, 24:40, 24:40], centre)
        # The corner tile's view reaches beyond the grid, where the image is mirrored.
        np.testing.assert_array_equal(wide[0, :24, 24:], wide[0, 24:48, 24:][::-1])
