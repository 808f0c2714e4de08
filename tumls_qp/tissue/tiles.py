"""The tile grid at the tissue level: tissue mask, background filtering, tile pixels.

A slide is cut into square tiles of ``tile_um`` µm on a grid anchored at level-0
pixel (0, 0); tiles that would cross the right or bottom edge are left out. Each
tile is seen at the tissue level as ``tile_px`` x ``tile_px`` pixels (TUMLS: a
1024 px tile at 0.25 µm/px seen as 16 x 16 px). Level-0 pixels are streamed chunk
by chunk (``Slide.iter_chunks``); only the tissue-level image of the slide, 4096x
smaller in area than level 0 with the defaults, is held in memory.

Background filtering (statistical thresholds, documented on ``TileConfig``):
a pixel is tissue when its saturation is above ``min(Otsu(saturation), 0.1)``
(at least 0.04) and it is not near-black; the mask is cleaned with a closing and
fragments smaller than ``min_fragment_um2`` are removed. A tile is kept when its
tissue fraction is at least ``min_tissue_fraction`` and its near-black fraction is
at most ``max_dark_fraction``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from ..config import TileConfig
from ..errors import InvalidInputError, NoTissueError, NotBrightfieldError
from ..slide import Slide

__all__ = [
    "TileGrid",
    "TileSelection",
    "plan_grid",
    "read_thumbnail",
    "check_brightfield_he",
    "tissue_mask",
    "select_tiles",
    "tile_pixels",
    "read_views",
    "require_tissue",
    "TissueTiles",
    "tissue_tiles",
    "DROP_REASONS",
]

log = logging.getLogger(__name__)

#: Saturation above which a pixel is always tissue-like, whatever Otsu says (pale stroma).
_SATURATION_CAP = 0.10
#: Saturation below which a pixel is never tissue (white background with JPEG noise).
_SATURATION_FLOOR = 0.04

#: Codes in ``TileSelection.reason``: 0 kept, then why a tile was dropped.
DROP_REASONS = {0: "kept", 1: "background", 2: "artefact"}


@dataclass(frozen=True)
class TileGrid:
    """A grid of square tiles over level 0 of a slide.

    Tile index ``i`` is row-major: row ``i // columns``, column ``i % columns``; its box
    is ``(column * tile_size, row * tile_size, tile_size, tile_size)`` in level-0 px.
    """

    #: Tile side in level-0 pixels.
    tile_size: int
    #: (columns, rows).
    shape: tuple[int, int]
    #: Tile side in pixels at the tissue level.
    tile_px: int
    #: Level-0 pixel size in µm/px.
    mpp: float

    @property
    def n_tiles(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def tile_um(self) -> float:
        """Actual tile side in µm (the asked size rounded to whole level-0 pixels)."""
        return self.tile_size * self.mpp

    @property
    def lowres_mpp(self) -> float:
        """Pixel size of the tissue level in µm/px."""
        return self.tile_um / self.tile_px

    def boxes(self, indices: np.ndarray) -> np.ndarray:
        """(n, 4) int64 boxes (x, y, width, height) in level-0 px of tile ``indices``."""
        indices = np.asarray(indices, dtype=np.int64)
        rows, cols = np.divmod(indices, self.shape[0])
        size = np.full_like(indices, self.tile_size)
        return np.stack([cols * self.tile_size, rows * self.tile_size, size, size], axis=1)


@dataclass(frozen=True)
class TileSelection:
    """Which tiles of a grid hold tissue."""

    #: (n_kept,) int64 row-major indices of the kept tiles, ascending.
    kept: np.ndarray
    #: (rows, columns) float32 fraction of tissue pixels per tile.
    tissue_fraction: np.ndarray
    #: (rows, columns) float32 fraction of near-black pixels per tile.
    dark_fraction: np.ndarray
    #: (rows, columns) uint8 code per tile, see ``DROP_REASONS``.
    reason: np.ndarray

    def counts(self) -> dict[str, int]:
        """Number of tiles per outcome: kept, background, artefact."""
        return {name: int((self.reason == code).sum()) for code, name in DROP_REASONS.items()}


def plan_grid(slide: Slide, cfg: TileConfig) -> TileGrid:
    """Lay the tile grid over a slide.

    Raises
    ------
    InvalidInputError
        The tile is larger than the slide, or smaller than 2 level-0 pixels.
    """
    tile_size = int(round(cfg.tile_um / slide.mpp))
    if tile_size < max(2, cfg.tile_px // 4):
        raise InvalidInputError(
            f"tile_um={cfg.tile_um:g} µm is {cfg.tile_um / slide.mpp:.2f} level-0 pixels at {slide.mpp:g} µm/px: "
            "too small to see anything. Use a larger --tile-um."
        )
    width, height = slide.dimensions
    shape = (width // tile_size, height // tile_size)
    if shape[0] < 1 or shape[1] < 1:
        raise InvalidInputError(
            f"tile_um={cfg.tile_um:g} µm ({tile_size} px at {slide.mpp:g} µm/px) is larger than the slide "
            f"({width}x{height} px = {slide.width_um:.0f}x{slide.height_um:.0f} µm). Use a smaller --tile-um, "
            f"e.g. --tile-um {max(1.0, min(slide.width_um, slide.height_um) / 8):.0f}."
        )
    return TileGrid(tile_size=tile_size, shape=shape, tile_px=cfg.tile_px, mpp=slide.mpp)


def read_thumbnail(
    slide: Slide, grid: TileGrid, progress: Callable[[int, int], None] | None = None
) -> np.ndarray:
    """The slide's tiled area at the tissue level, streamed chunk by chunk.

    Returns
    -------
    rgb : (rows * tile_px, columns * tile_px, 3) uint8 ndarray
        Pixel (r, c) covers level-0 box ``(c, r, 1, 1) * tile_size / tile_px``.
    """
    n_cols, n_rows = grid.shape
    px = grid.tile_px
    out = np.empty((n_rows * px, n_cols * px, 3), dtype=np.uint8)
    done = 0
    for row0, col0, rgb in slide.iter_chunks(grid.tile_size, px, grid.shape):
        h, w = rgb.shape[:2]
        out[row0 * px : row0 * px + h, col0 * px : col0 * px + w] = rgb
        done += (h // px) * (w // px)
        if progress is not None:
            progress(done, grid.n_tiles)
    return out


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _saturation(rgb: np.ndarray) -> np.ndarray:
    hi = rgb.max(axis=-1).astype(np.float32)
    lo = rgb.min(axis=-1).astype(np.float32)
    return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1.0), 0.0).astype(np.float32)


def check_brightfield_he(thumbnail: np.ndarray, mask: np.ndarray | None = None) -> None:
    """Refuse slides that are not brightfield H&E.

    A brightfield slide has a bright background: its 95th luminance percentile is at
    least 120 (fluorescence slides are dark: the DAPI NDPI of the test data reads 27).
    On H&E both stains absorb green most, so in tissue pixels blue is at least green;
    brown DAB (IHC) inverts that. H&E needs that in at least 60 % of the tissue pixels.

    Parameters
    ----------
    thumbnail : (H, W, 3) uint8 ndarray
        The slide at the tissue level.
    mask : (H, W) bool ndarray, optional
        Tissue mask; when given, the colour test runs on its pixels.

    Raises
    ------
    NotBrightfieldError
    """
    lum = _luminance(thumbnail)
    p95 = float(np.percentile(lum, 95))
    if p95 < 120:
        raise NotBrightfieldError(
            f"the slide looks like fluorescence or dark-field, not brightfield H&E: its background is dark "
            f"(95th percentile luminance {p95:.0f}/255, brightfield slides are above 120). TUMLS needs H&E; "
            "pass --allow-non-he (slide.allow_non_he) to analyse it anyway."
        )
    if mask is not None and mask.any():
        pixels = thumbnail[mask].astype(np.int16)
        he_like = float((pixels[:, 2] >= pixels[:, 1]).mean())
        if he_like < 0.6:
            raise NotBrightfieldError(
                f"the tissue does not look H&E-stained: only {he_like:.0%} of tissue pixels are pink/purple "
                "(blue >= green), H&E slides have most of them (brown DAB or unstained tissue has few). "
                "Pass --allow-non-he (slide.allow_non_he) to analyse it anyway."
            )


def tissue_mask(thumbnail: np.ndarray, mpp: float, cfg: TileConfig) -> np.ndarray:
    """Tissue pixels of a tissue-level image.

    Parameters
    ----------
    thumbnail : (H, W, 3) uint8 ndarray
    mpp : float
        Pixel size of ``thumbnail`` in µm/px.
    cfg : TileConfig

    Returns
    -------
    mask : (H, W) bool ndarray
    """
    sat = _saturation(thumbnail)
    not_dark = _luminance(thumbnail) >= cfg.dark_luminance
    candidates = sat[not_dark]
    if candidates.size == 0 or float(candidates.max() - candidates.min()) < 1e-6:
        threshold = _SATURATION_CAP
    else:
        threshold = float(threshold_otsu(candidates))
    threshold = min(max(threshold, _SATURATION_FLOOR), _SATURATION_CAP)
    mask = (sat > threshold) & not_dark
    # Close gaps of about 2 tissue-level pixels (cell-poor stroma seen at low resolution).
    mask = ndi.binary_closing(mask, structure=np.ones((3, 3), bool), iterations=1, border_value=0) | mask
    min_px = cfg.min_fragment_um2 / (mpp * mpp)
    if min_px > 1:
        labels, n = ndi.label(mask)
        if n:
            sizes = np.bincount(labels.ravel())
            small = sizes < min_px
            small[0] = False
            mask[small[labels]] = False
        holes, n_holes = ndi.label(~mask)
        if n_holes:
            sizes = np.bincount(holes.ravel())
            # Fill small enclosed holes only (not the background that touches the border).
            border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
            fill = sizes < min_px
            fill[0] = False
            fill[border] = False
            mask[fill[holes]] = True
    return mask


def select_tiles(thumbnail: np.ndarray, mask: np.ndarray, grid: TileGrid, cfg: TileConfig) -> TileSelection:
    """Keep the tiles that hold enough tissue and few near-black pixels.

    Parameters
    ----------
    thumbnail : (rows * tile_px, columns * tile_px, 3) uint8 ndarray
    mask : (rows * tile_px, columns * tile_px) bool ndarray
    grid : TileGrid
    cfg : TileConfig
    """
    n_cols, n_rows = grid.shape
    px = grid.tile_px

    def per_tile(values: np.ndarray) -> np.ndarray:
        return values.reshape(n_rows, px, n_cols, px).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)

    tissue = per_tile(mask)
    dark = per_tile(_luminance(thumbnail) < cfg.dark_luminance)
    reason = np.zeros((n_rows, n_cols), dtype=np.uint8)
    reason[dark > cfg.max_dark_fraction] = 2
    reason[(reason == 0) & (tissue < cfg.min_tissue_fraction)] = 1
    kept = np.flatnonzero(reason.ravel() == 0).astype(np.int64)
    return TileSelection(kept=kept, tissue_fraction=tissue, dark_fraction=dark, reason=reason)


def tile_pixels(thumbnail: np.ndarray, grid: TileGrid, indices: np.ndarray) -> np.ndarray:
    """Cut tiles out of the tissue-level image.

    Returns
    -------
    tiles : (n, tile_px, tile_px, 3) uint8 ndarray
    """
    n_cols, n_rows = grid.shape
    px = grid.tile_px
    blocks = thumbnail.reshape(n_rows, px, n_cols, px, 3).transpose(0, 2, 1, 3, 4).reshape(-1, px, px, 3)
    return np.ascontiguousarray(blocks[np.asarray(indices, dtype=np.int64)])


def read_views(
    slide: Slide,
    grid: TileGrid,
    indices: np.ndarray,
    view_um: float,
    view_px: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, float]:
    """Each tile seen in a square field of about ``view_um`` µm centred on it, ``view_px`` pixels a side.

    The grid is read once more, streamed, at the pixel size that gives each tile a whole
    number q = round(tile_um / (view_um / view_px)) of pixels (at least 1); the views are
    cut from that image, centred on their tiles; beyond the grid the image is mirrored (so that
    the edge of the grid does not look like glass). A field larger than the tile shows the tile
    with its surroundings; a smaller one, its centre.

    Returns
    -------
    views : (n, view_px, view_px, 3) uint8 ndarray
    mpp : float
        Pixel size of the views in µm/px (``grid.tile_um / q``).
    """
    n_cols, n_rows = grid.shape
    q = max(1, int(round(grid.tile_um / (view_um / view_px))))
    image = np.empty((n_rows * q, n_cols * q, 3), dtype=np.uint8)
    done = 0
    for row0, col0, rgb in slide.iter_chunks(grid.tile_size, q, grid.shape):
        h, w = rgb.shape[:2]
        image[row0 * q : row0 * q + h, col0 * q : col0 * q + w] = rgb
        done += (h // q) * (w // q)
        if progress is not None:
            progress(done, grid.n_tiles)
    pad = view_px  # more than half a view on every side
    image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    indices = np.asarray(indices, dtype=np.int64)
    rows, cols = np.divmod(indices, n_cols)
    # Top-left corner of each view: the tile's centre minus half a view, in the padded image.
    top = pad + rows * q + q // 2 - view_px // 2
    left = pad + cols * q + q // 2 - view_px // 2
    views = np.empty((len(indices), view_px, view_px, 3), dtype=np.uint8)
    for i, (t, l) in enumerate(zip(top, left)):
        views[i] = image[t : t + view_px, l : l + view_px]
    return views, grid.tile_um / q


def require_tissue(selection: TileSelection, grid: TileGrid, cfg: TileConfig, slide_name: str) -> None:
    """Raise NoTissueError when fewer than ``cfg.min_tiles`` tiles hold tissue."""
    n = len(selection.kept)
    if n == 0:
        raise NoTissueError(
            f"no tissue found in {slide_name!r}: all {grid.n_tiles} tiles of {grid.tile_um:.0f} µm are background "
            "or artefact. Check that this is the right slide; if the tissue is very pale, lower "
            "tiles.min_tissue_fraction in a config file."
        )
    if n < cfg.min_tiles:
        raise NoTissueError(
            f"only {n} tissue tiles of {grid.tile_um:.0f} µm in {slide_name!r} (at least {cfg.min_tiles} are "
            f"needed to learn and cluster tissues). Use a smaller --tile-um, e.g. --tile-um "
            f"{max(1.0, grid.tile_um / 4):.0f}."
        )


@dataclass(frozen=True)
class TissueTiles:
    """A slide's tissue level, read and filtered: what the embedding stage needs."""

    grid: TileGrid
    #: (rows * tile_px, columns * tile_px, 3) uint8: the tiled area at the tissue level.
    thumbnail: np.ndarray
    selection: TileSelection
    #: (n, tile_px, tile_px, 3) uint8 pixels of the kept tiles, in the order of ``selection.kept``.
    tiles: np.ndarray
    #: (rows * tile_px, columns * tile_px) bool: the tissue mask of ``thumbnail`` (None: not kept).
    mask: np.ndarray | None = None

    @property
    def boxes(self) -> np.ndarray:
        """(n, 4) int64 boxes (x, y, width, height) in level-0 px of the kept tiles."""
        return self.grid.boxes(self.selection.kept)


def tissue_tiles(
    slide: Slide,
    cfg: TileConfig,
    *,
    allow_non_he: bool = False,
    thumbnail: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TissueTiles:
    """From a slide to its tissue tiles: grid, tissue-level image, H&E checks, tissue mask, selection, pixels.

    Parameters
    ----------
    slide : Slide
    cfg : TileConfig
    allow_non_he : bool
        Skip the brightfield H&E checks (``slide.allow_non_he``).
    thumbnail : (rows * tile_px, columns * tile_px, 3) uint8 ndarray, optional
        The tissue-level image when it is known already (from a cache); read from the slide otherwise.
    progress : callable(done, total), optional
        Tiles read so far, while the tissue-level image is read.

    Raises
    ------
    InvalidInputError
        The tile does not fit the slide (:func:`plan_grid`).
    NotBrightfieldError
        Unless ``allow_non_he``: the slide does not look like brightfield H&E.
    NoTissueError
        Fewer than ``cfg.min_tiles`` tissue tiles.
    """
    grid = plan_grid(slide, cfg)
    if thumbnail is None:
        thumbnail = read_thumbnail(slide, grid, progress=progress)
    if not allow_non_he:
        check_brightfield_he(thumbnail)
    mask = tissue_mask(thumbnail, grid.lowres_mpp, cfg)
    if not allow_non_he:
        check_brightfield_he(thumbnail, mask)
    selection = select_tiles(thumbnail, mask, grid, cfg)
    require_tissue(selection, grid, cfg, slide.path.name)
    return TissueTiles(grid=grid, thumbnail=thumbnail, selection=selection,
                       tiles=tile_pixels(thumbnail, grid, selection.kept), mask=mask)
