"""Synthetic pyramidal slides for tests and benchmarks (like ``numpy.testing``: not used by the pipeline).

The slides are generic tiled TIFFs with a SubIFD pyramid and the pixel size in the
resolution tags, which tiffslide reads like any generic TIFF. Pixels are drawn
tile by tile from a procedural scene defined in µm, at every level's own pixel size,
so a 40k x 40k px slide is written in bounded memory.

Scenes (``layout``):

- ``"two-tissues"``: an ellipse of tissue on white glass; the left part is stroma-like
  (pink, sparse elongated nuclei), the right part epithelium-like (purple, dense
  round nuclei); the boundary waves.
- ``"homogeneous"``: the whole slide is one stroma-like tissue.
- ``"blank"``: white glass only.
- ``"fluorescence"``: a dark field with blue DAPI-like nuclei.
- ``"dab"``: brown (DAB-like) tissue in an ellipse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

__all__ = ["write_synthetic_slide", "write_pyramidal_tiff", "render_scene", "LAYOUTS"]

LAYOUTS = ("two-tissues", "homogeneous", "blank", "fluorescence", "dab")

_GLASS = np.array([242, 240, 244], np.float32)
_STROMA = np.array([236, 160, 196], np.float32)
_EPITHELIUM = np.array([190, 120, 190], np.float32)
_NUCLEUS = np.array([70, 40, 130], np.float32)
_DAB = np.array([150, 100, 60], np.float32)


def _hash01(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic pseudo-random numbers in [0, 1) per integer cell."""
    h = (ix.astype(np.uint64) * np.uint64(0x9E3779B1) + iy.astype(np.uint64) * np.uint64(0x85EBCA77)
         + np.uint64(salt) * np.uint64(0xC2B2AE3D)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(15)
    h = (h * np.uint64(0x2C1B3C6D)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(12)
    return (h & np.uint64(0xFFFFFF)).astype(np.float32) / np.float32(1 << 24)


def _nuclei(x_um: np.ndarray, y_um: np.ndarray, cell_um: float, radius_um: float, elongation: float,
            salt: int) -> np.ndarray:
    """Boolean field: inside one nucleus per cell of ``cell_um``, at a random offset."""
    ix, iy = np.floor(x_um / cell_um), np.floor(y_um / cell_um)
    margin = radius_um * max(1.0, elongation)
    free = max(cell_um - 2 * margin, 0.0)
    cx = ix * cell_um + margin + _hash01(ix, iy, salt) * free
    cy = iy * cell_um + margin + _hash01(ix, iy, salt + 1) * free
    present = _hash01(ix, iy, salt + 2) < 0.8
    dx, dy = (x_um - cx) / elongation, y_um - cy
    return present & (dx * dx + dy * dy < radius_um * radius_um)


def render_scene(layout: str, x0_um: float, y0_um: float, width: int, height: int, mpp: float,
                 size_um: tuple[float, float], seed: int = 0) -> np.ndarray:
    """Pixels of a scene.

    Parameters
    ----------
    layout : str
        One of ``LAYOUTS``.
    x0_um, y0_um : float
        Top-left corner in µm.
    width, height : int
        Size of the result in pixels.
    mpp : float
        Pixel size of the result in µm/px.
    size_um : (float, float)
        (width, height) of the whole slide in µm.

    Returns
    -------
    rgb : (height, width, 3) uint8 ndarray
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}; got {layout!r}")
    xs = x0_um + (np.arange(width, dtype=np.float32) + 0.5) * mpp
    ys = y0_um + (np.arange(height, dtype=np.float32) + 0.5) * mpp
    x, y = np.meshgrid(xs, ys)
    w_um, h_um = size_um
    rng = np.random.default_rng((seed, int(x0_um * 10), int(y0_um * 10)))
    noise = rng.normal(0.0, 4.0, (height, width, 3)).astype(np.float32)
    if layout == "blank":
        return np.clip(_GLASS + noise, 0, 255).astype(np.uint8)
    inside = ((x - w_um / 2) / (0.42 * w_um)) ** 2 + ((y - h_um / 2) / (0.42 * h_um)) ** 2 < 1
    if layout == "fluorescence":
        rgb = np.zeros((height, width, 3), np.float32) + 4
        rgb[inside & _nuclei(x, y, 12.0, 4.0, 1.0, seed)] = (10, 10, 200)
        return np.clip(rgb + noise, 0, 255).astype(np.uint8)
    if layout == "dab":
        rgb = np.broadcast_to(_GLASS, (height, width, 3)).copy()
        rgb[inside] = _DAB
        rgb[inside & _nuclei(x, y, 14.0, 4.0, 1.0, seed)] = (90, 60, 40)
        return np.clip(rgb + noise, 0, 255).astype(np.uint8)
    stroma_nuclei = _nuclei(x, y, 28.0, 3.0, 2.0, seed + 10)
    if layout == "homogeneous":
        rgb = np.broadcast_to(_STROMA, (height, width, 3)).copy()
        rgb[stroma_nuclei] = _NUCLEUS
        return np.clip(rgb + noise, 0, 255).astype(np.uint8)
    boundary = w_um * (0.5 + 0.08 * np.sin(y / h_um * 2 * np.pi * 2))
    epithelium = inside & (x > boundary)
    stroma = inside & ~epithelium
    rgb = np.broadcast_to(_GLASS, (height, width, 3)).copy()
    rgb[stroma] = _STROMA
    rgb[epithelium] = _EPITHELIUM
    rgb[stroma & stroma_nuclei] = _NUCLEUS
    rgb[epithelium & _nuclei(x, y, 11.0, 3.5, 1.0, seed + 20)] = _NUCLEUS
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


def write_synthetic_slide(
    path: str | Path,
    width: int,
    height: int,
    mpp: float | None = 0.5,
    *,
    layout: str = "two-tissues",
    levels: int | None = None,
    tile: int = 256,
    seed: int = 0,
    compression: str = "jpeg",
) -> Path:
    """Write a tiled, pyramidal generic TIFF of a synthetic scene.

    Parameters
    ----------
    path : path-like
    width, height : int
        Level-0 size in pixels.
    mpp : float or None
        Level-0 pixel size in µm/px written to the resolution tags; None writes no pixel size.
    layout : str
        One of ``LAYOUTS``.
    levels : int, optional
        Pyramid levels, each half the previous; default: until the image fits in one tile.
    tile : int
        TIFF tile side in pixels (a multiple of 16).
    seed : int
    compression : str
        TIFF compression passed to tifffile (``jpeg``, ``zlib``, ``none``).
    """
    path = Path(path)
    scene_mpp = mpp or 0.5
    size_um = (width * scene_mpp, height * scene_mpp)
    levels = levels or _levels_to_fit(width, height, tile)

    def level_tile(level: int, tx: int, ty: int) -> np.ndarray:
        level_mpp = scene_mpp * (1 << level)
        return render_scene(layout, tx * level_mpp, ty * level_mpp, tile, tile, level_mpp, size_um, seed)

    _write_pyramid(path, width, height, levels, level_tile, mpp, tile, compression)
    return path


def write_pyramidal_tiff(path: str | Path, rgb: np.ndarray, mpp: float | None, *, tile: int = 256,
                         compression: str = "jpeg") -> Path:
    """Write an image as a tiled, pyramidal generic TIFF (levels by area averaging, each half the last).

    Parameters
    ----------
    path : path-like
    rgb : (H, W, 3) uint8 ndarray
        Level 0.
    mpp : float or None
        Level-0 pixel size in µm/px written to the resolution tags; None writes no pixel size.
    tile : int
        TIFF tile side in pixels (a multiple of 16).
    compression : str
        TIFF compression passed to tifffile (``jpeg``, ``zlib``, ``none``).
    """
    from PIL import Image

    path = Path(path)
    height, width = rgb.shape[:2]
    levels = _levels_to_fit(width, height, tile)
    images = [np.ascontiguousarray(rgb, dtype=np.uint8)]
    for level in range(1, levels):
        h, w = max(1, height >> level), max(1, width >> level)
        images.append(np.asarray(Image.fromarray(images[0]).resize((w, h), Image.Resampling.BOX)))

    def level_tile(level: int, tx: int, ty: int) -> np.ndarray:
        out = np.full((tile, tile, 3), 255, np.uint8)
        part = images[level][ty:ty + tile, tx:tx + tile]
        out[: part.shape[0], : part.shape[1]] = part
        return out

    _write_pyramid(path, width, height, levels, level_tile, mpp, tile, compression)
    return path


def _levels_to_fit(width: int, height: int, tile: int) -> int:
    """Pyramid levels, each half the previous, until the image fits in one tile."""
    levels = 1
    while max(width, height) >> levels > tile:
        levels += 1
    return levels


def _write_pyramid(path: Path, width: int, height: int, levels: int, level_tile: Callable[[int, int, int], np.ndarray],
                   mpp: float | None, tile: int, compression: str) -> None:
    """Write levels tile by tile: ``level_tile(level, x, y)`` gives the (tile, tile, 3) pixels at (x, y) of a level."""
    import tifffile

    shapes = [(max(1, height >> i), max(1, width >> i)) for i in range(levels)]

    def tiles(level: int) -> Iterator[np.ndarray]:
        h, w = shapes[level]
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                yield level_tile(level, tx, ty)

    options = dict(tile=(tile, tile), photometric="rgb", dtype=np.uint8,
                   compression=None if compression == "none" else compression)
    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2**31) as tw:
        for level, (h, w) in enumerate(shapes):
            extra: dict = {}
            if mpp is not None:
                px_per_cm = 1e4 / (mpp * (1 << level))
                extra = dict(resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER")
            if level == 0:
                extra["subifds"] = levels - 1
            else:
                extra["subfiletype"] = 1
            tw.write(tiles(level), shape=(h, w, 3), **options, **extra)
