"""Slide access: the only module that imports tiffslide.

Coordinates follow openslide's vocabulary: ``location`` is (x, y) in level-0 pixels,
boxes are ``(x, y, width, height)`` in level-0 pixels, ``mpp`` is µm per level-0 pixel.
SVS, NDPI, generic and OME TIFF are read through tiffslide; JPEG 2000 tiles (Aperio
33003/33005) decode through imagecodecs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from .errors import InvalidInputError, MissingMppError, SlideOpenError

__all__ = ["Slide", "open_slide", "slide_quickhash"]

log = logging.getLogger(__name__)

#: Largest side, in pixels at the read level, of one chunk read into memory at a time.
CHUNK_PX = 4096


@dataclass(frozen=True)
class Slide:
    """An open slide with a known pixel size.

    Attributes
    ----------
    path : Path
        The slide file.
    dimensions : (int, int)
        (width, height) of level 0 in pixels.
    level_dimensions : tuple of (int, int)
        (width, height) of every pyramid level, level 0 first.
    level_downsamples : tuple of float
        Downsample factor of every level relative to level 0.
    mpp : float
        Pixel size of level 0 in µm/px.
    mpp_source : str
        ``"file"`` when the slide states its pixel size, ``"caller"`` when it was given.
    vendor : str or None
        Format vendor as tiffslide reports it (``aperio``, ``hamamatsu``, ``generic``, ...).
    """

    path: Path
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float
    mpp_source: str
    vendor: str | None
    objective_power: float | None
    _handle: object

    @property
    def width_um(self) -> float:
        return self.dimensions[0] * self.mpp

    @property
    def height_um(self) -> float:
        return self.dimensions[1] * self.mpp

    def close(self) -> None:
        self._handle.close()  # type: ignore[attr-defined]

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read pixels of one pyramid level.

        Parameters
        ----------
        location : (int, int)
            (x, y) of the top-left corner in level-0 pixels.
        level : int
            Pyramid level to read.
        size : (int, int)
            (width, height) in pixels of ``level``.

        Returns
        -------
        rgb : (height, width, 3) uint8 ndarray
            Pixels outside the slide are white.
        """
        width, height = int(size[0]), int(size[1])
        downsample = self.level_downsamples[level]
        level_w, level_h = self.level_dimensions[level]
        # Clip to the level (tiffslide pads with black, which would read as an artefact), pad with white.
        x_l, y_l = location[0] / downsample, location[1] / downsample
        left, top = max(0, -int(np.floor(x_l))), max(0, -int(np.floor(y_l)))
        right = max(0, min(width, int(np.floor(level_w - x_l))))
        bottom = max(0, min(height, int(np.floor(level_h - y_l))))
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        if right <= left or bottom <= top:
            return out
        origin = (int(round(location[0] + left * downsample)), int(round(location[1] + top * downsample)))
        try:
            region = self._handle.read_region(  # type: ignore[attr-defined]
                origin, level, (right - left, bottom - top), as_array=True
            )
        except Exception as exc:  # tifffile/imagecodecs raise many types on damaged data
            raise SlideOpenError(
                f"cannot decode pixels of {self.path.name!r} at level {level}, location {location}, size {size}: "
                f"{exc}. The file may be truncated or damaged; re-export or re-copy it."
            ) from exc
        out[top:bottom, left:right] = _to_rgb(np.asarray(region))
        return out

    def best_level_for_mpp(self, mpp: float) -> int:
        """The coarsest level whose pixels are no larger than ``mpp`` µm/px (level 0 if none is)."""
        best = 0
        for level, downsample in enumerate(self.level_downsamples):
            if self.mpp * downsample <= mpp * 1.001:
                best = level
        return best

    def read_box(self, box: tuple[float, float, float, float], mpp: float) -> np.ndarray:
        """Read a box of the slide resampled to a pixel size.

        Parameters
        ----------
        box : (x, y, width, height)
            Box in level-0 pixels.
        mpp : float
            Pixel size of the result in µm/px.

        Returns
        -------
        rgb : (round(height * self.mpp / mpp), round(width * self.mpp / mpp), 3) uint8 ndarray
            Pixels outside the slide are white.
        """
        x, y, width, height = box
        out_w = max(1, round(width * self.mpp / mpp))
        out_h = max(1, round(height * self.mpp / mpp))
        level = self.best_level_for_mpp(mpp)
        downsample = self.level_downsamples[level]
        read_w = max(1, math.ceil(width / downsample))
        read_h = max(1, math.ceil(height / downsample))
        pixels = self.read_region((int(round(x)), int(round(y))), level, (read_w, read_h))
        if (read_w, read_h) == (out_w, out_h):
            return pixels
        return resize_rgb(pixels, (out_w, out_h))

    def iter_chunks(
        self, tile_size: int, tile_px: int, grid: tuple[int, int], rows: Iterator[int] | None = None
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Stream a grid of square tiles as resampled chunks, a few tile rows at a time.

        Parameters
        ----------
        tile_size : int
            Tile side in level-0 pixels; tile (row r, column c) is the box
            ``(c * tile_size, r * tile_size, tile_size, tile_size)``.
        tile_px : int
            Tile side in pixels of the output.
        grid : (int, int)
            (columns, rows) of the grid.

        Yields
        ------
        row0, col0 : int
            Grid position of the chunk's top-left tile.
        rgb : (rows * tile_px, cols * tile_px, 3) uint8 ndarray
            The chunk, each tile resampled to ``tile_px`` pixels.

        Memory holds one chunk (at most ``CHUNK_PX`` squared pixels of the read level)
        at a time, whatever the size of the slide.
        """
        n_cols, n_rows = grid
        out_mpp = tile_size * self.mpp / tile_px
        level = self.best_level_for_mpp(out_mpp)
        tile_at_level = tile_size / self.level_downsamples[level]
        per_chunk = max(1, int(CHUNK_PX // max(tile_at_level, 1)))
        for row0 in range(0, n_rows, per_chunk):
            nr = min(per_chunk, n_rows - row0)
            for col0 in range(0, n_cols, per_chunk):
                nc = min(per_chunk, n_cols - col0)
                box = (col0 * tile_size, row0 * tile_size, nc * tile_size, nr * tile_size)
                rgb = self.read_box(box, out_mpp)
                if rgb.shape[:2] != (nr * tile_px, nc * tile_px):
                    rgb = resize_rgb(rgb, (nc * tile_px, nr * tile_px))
                yield row0, col0, rgb


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resample an (H, W, 3) uint8 image to ``size`` = (width, height); area averaging when shrinking."""
    shrinking = size[0] < rgb.shape[1] or size[1] < rgb.shape[0]
    image = Image.fromarray(rgb).resize(size, Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR)
    return np.asarray(image)


def _to_rgb(region: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 from what tiffslide returns (RGB, RGBA, greyscale, 16-bit)."""
    if region.dtype != np.uint8:
        if np.issubdtype(region.dtype, np.integer):
            top = max(1, int(np.iinfo(region.dtype).max))
            region = (region.astype(np.float64) * (255.0 / top)).round().astype(np.uint8)
        else:
            region = np.clip(region * 255.0, 0, 255).astype(np.uint8)
    if region.ndim == 2:
        region = region[..., None]
    if region.shape[2] == 1:
        return np.repeat(region, 3, axis=2)
    if region.shape[2] == 4:
        # Transparent pixels (outside the scanned area) read as white, like background.
        alpha = region[..., 3:4].astype(np.float32) / 255.0
        rgb = region[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return rgb.round().astype(np.uint8)
    return np.ascontiguousarray(region[..., :3])


def slide_quickhash(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a slide's size and its first and last MiB: cheap, and changes when the file does."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        digest.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            digest.update(fh.read(1 << 20))
    return digest.hexdigest()


def open_slide(path: str | os.PathLike[str], *, mpp: float | None = None, mpp_override: bool = False) -> Slide:
    """Open a whole slide image.

    Parameters
    ----------
    path : path-like
        SVS, NDPI, generic/OME TIFF (JPEG, JPEG 2000, LZW, deflate tiles).
    mpp : float, optional
        Pixel size of level 0 in µm/px, used when the file does not state one
        (or always, with ``mpp_override``).
    mpp_override : bool
        Use ``mpp`` even when the file states a pixel size.

    Raises
    ------
    SlideOpenError
        The file is missing, not a slide, or cannot be decoded.
    MissingMppError
        Neither the file nor the caller gives a pixel size.
    """
    import tiffslide

    if mpp is not None and not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
        raise InvalidInputError(f"mpp must be a positive pixel size in µm/px; got {mpp!r}")
    path = Path(path)
    if not path.exists():
        raise SlideOpenError(f"slide file not found: {str(path)!r}. Check the path (and that the drive is mounted).")
    if not path.is_file():
        raise SlideOpenError(f"not a file: {str(path)!r}. Give the path of a slide file (.svs, .ndpi, .tif, ...).")
    try:
        with warnings.catch_warnings():
            # tiffslide warns that its NDPI metadata parsing is partial; the fields we use are read fine.
            warnings.filterwarnings("ignore", message="hamamatsu-format metadata", category=UserWarning)
            handle = tiffslide.TiffSlide(path)
            props = dict(handle.properties)
            level_dimensions = tuple((int(w), int(h)) for w, h in handle.level_dimensions)
            level_downsamples = tuple(float(d) for d in handle.level_downsamples)
    except Exception as exc:
        raise SlideOpenError(
            f"cannot open {str(path)!r} as a slide: {exc}. Supported: Aperio SVS, Hamamatsu NDPI, "
            "generic/OME TIFF; the file may also be truncated or damaged."
        ) from exc
    try:
        file_mpp = _mpp_from_properties(props) or _ome_mpp(handle)
        if mpp is not None and (mpp_override or file_mpp is None):
            use_mpp, source = float(mpp), "caller"
        elif file_mpp is not None:
            use_mpp, source = file_mpp, "file"
        else:
            raise MissingMppError(
                f"{path.name!r} does not state its pixel size (µm/px). Give it with --mpp (e.g. --mpp 0.25 "
                "for 40x, 0.5 for 20x scans), as slide.mpp in the config file, or let QuPath send its "
                "pixel calibration."
            )
        width, height = level_dimensions[0]
        if width < 1 or height < 1:
            raise SlideOpenError(f"{path.name!r} has an empty level 0 ({width}x{height} px)")
        slide = Slide(
            path=path,
            dimensions=(width, height),
            level_dimensions=level_dimensions,
            level_downsamples=level_downsamples,
            mpp=use_mpp,
            mpp_source=source,
            vendor=props.get("tiffslide.vendor"),
            objective_power=_float_or_none(props.get("tiffslide.objective-power")),
            _handle=handle,
        )
        # Decode one small region now, so a damaged file fails here with a clear message.
        slide.read_region((width // 2, height // 2), len(level_dimensions) - 1, (1, 1))
        return slide
    except BaseException:
        handle.close()
        raise


def _float_or_none(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


_OME_UNITS_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def _ome_mpp(handle: object) -> float | None:
    """Pixel size of the first image of an OME-TIFF (tiffslide reads OME-TIFF as generic TIFF and ignores it)."""
    import xml.etree.ElementTree as ET

    tif = getattr(handle, "ts_tifffile", None)
    if tif is None or not getattr(tif, "is_ome", False):
        return None
    try:
        root = ET.fromstring(tif.ome_metadata)
    except (ET.ParseError, TypeError):
        return None
    for element in root.iter():
        if element.tag.endswith("}Pixels") or element.tag == "Pixels":
            sizes = []
            for axis in ("X", "Y"):
                value = _float_or_none(element.get(f"PhysicalSize{axis}"))
                scale = _OME_UNITS_UM.get(element.get(f"PhysicalSize{axis}Unit", "µm"))
                if value is None or scale is None:
                    return None
                sizes.append(value * scale)
            return sum(sizes) / 2
    return None


def _mpp_from_properties(props: dict) -> float | None:
    mpp_x = _float_or_none(props.get("tiffslide.mpp-x"))
    mpp_y = _float_or_none(props.get("tiffslide.mpp-y"))
    if mpp_x and mpp_y:
        if abs(mpp_x - mpp_y) > 0.01 * max(mpp_x, mpp_y):
            log.warning("non-square pixels (%.4f x %.4f µm); using their mean", mpp_x, mpp_y)
        return (mpp_x + mpp_y) / 2
    return mpp_x or mpp_y
