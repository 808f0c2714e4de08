"""A folder of tile images as input: embed and cluster them like a slide's tiles, minus the geometry.

How an image becomes an autoencoder tile
----------------------------------------
Each image (JPEG, PNG or TIFF; greyscale, RGBA and palette images are converted to RGB,
transparent pixels become white as on a slide) is centre-cropped to a square when it is not
one, then reduced to ``tiles.tile_px`` × ``tiles.tile_px`` pixels by area averaging
(Pillow's BOX filter: each output pixel is the mean of the input pixels it covers). That is
the filter the slide reader uses to bring level-0 pixels down to the tissue level
(``slide.resize_rgb``), so a folder tile enters the encoder the way a slide tile does.
Images smaller than the tile are enlarged bilinearly, as the slide reader does.

The view methods (``embedding.method`` other than ``tumls-ae``) read every image a second time
the same way at ``embedding.view_px``: the whole image is the tile's view.

``cluster_tile_folder`` then fits the embedding method on the tiles (``embeddings.fit_embedding``),
clusters them with the tool's automatic k (``clusters.cluster_embeddings``), and writes the
result folder (``outputs.run_folder``, kind ``cluster-tiles``; described in the README, "Tile folders").
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import PipelineConfig
from ..errors import InvalidInputError, NoTissueError, OutputError
from ..interactive.embedding_colours import embedding_colours
from ..outputs.run_folder import TileClustersAnalysis, TileClustersManifest, TileFolderInfo, folder_kind, write_run
from ..tissue.clusters import cluster_embeddings
from ..tissue.representatives import select_representatives

__all__ = ["TileFolder", "IMAGE_SUFFIXES", "read_tile_folder", "resample_tile", "cluster_tile_folder",
           "TileFolderResult"]

log = logging.getLogger(__name__)

#: File name endings read as tiles (case-insensitive); other files (CSV, Markdown, ...) are ignored.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


@dataclass(frozen=True)
class TileFolder:
    """The tiles of a folder.

    Attributes
    ----------
    folder : Path
    files : tuple of str
        Paths relative to ``folder`` (POSIX separators), sorted.
    tiles : (n, tile_px, tile_px, 3) uint8 ndarray
    source_sizes : (n, 2) int64 ndarray
        (width, height) of each image as read.
    cropped : int
        Images that were not square and were centre-cropped.
    """

    folder: Path
    files: tuple[str, ...]
    tiles: np.ndarray
    source_sizes: np.ndarray
    cropped: int


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "P", "PA"):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        return np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(1.0, float(values.max()))
        grey = np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def resample_tile(rgb: np.ndarray, tile_px: int) -> tuple[np.ndarray, bool]:
    """Centre-crop to a square and resample to ``tile_px`` a side (area averaging when shrinking).

    Parameters
    ----------
    rgb : (H, W, 3) uint8 ndarray
    tile_px : int

    Returns
    -------
    tile : (tile_px, tile_px, 3) uint8 ndarray
    cropped : bool
        Whether the image was not square.
    """
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = rgb[top : top + side, left : left + side]
    image = Image.fromarray(np.ascontiguousarray(square))
    if side != tile_px:
        image = image.resize((tile_px, tile_px),
                             Image.Resampling.BOX if side > tile_px else Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8), h != w


def read_tile_folder(folder: str | os.PathLike[str], tile_px: int, *, recursive: bool = False) -> TileFolder:
    """Read every image of a folder as a ``tile_px`` tile (see the module docstring).

    Parameters
    ----------
    folder : path-like
    tile_px : int
        Side of the resampled tiles, 8 to 512 px (the autoencoder takes 8, 16, 32 or 64; the
        view methods take ``embedding.view_px``).
    recursive : bool
        Also read images in subfolders.

    Raises
    ------
    InvalidInputError
        The folder does not exist, holds no image, or an image cannot be decoded (named).
    """
    folder = Path(folder)
    if not isinstance(tile_px, int) or not 8 <= tile_px <= 512:
        raise InvalidInputError(f"tile_px must be an integer in [8, 512]; got {tile_px!r}")
    if not folder.is_dir():
        raise InvalidInputError(f"tile folder not found: {str(folder)!r}")
    pattern = "**/*" if recursive else "*"
    paths = sorted((p for p in folder.glob(pattern)
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
                   key=lambda p: p.relative_to(folder).as_posix())
    if not paths:
        hint = "" if recursive else " (use --recursive for images in subfolders)"
        raise InvalidInputError(
            f"no tile images in {str(folder)!r}: expected files ending in {', '.join(IMAGE_SUFFIXES)}{hint}"
        )
    tiles = np.empty((len(paths), tile_px, tile_px, 3), dtype=np.uint8)
    sizes = np.empty((len(paths), 2), dtype=np.int64)
    cropped = 0
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                image.load()
                rgb = _to_rgb(image)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise InvalidInputError(
                f"cannot read the tile {str(path)!r} as an image: {exc}. Remove or replace the file."
            ) from exc
        sizes[i] = (rgb.shape[1], rgb.shape[0])
        tiles[i], was_cropped = resample_tile(rgb, tile_px)
        cropped += was_cropped
    if cropped:
        log.warning("%d of %d images were not square and were centre-cropped", cropped, len(paths))
    return TileFolder(folder=folder, files=tuple(p.relative_to(folder).as_posix() for p in paths), tiles=tiles,
                      source_sizes=sizes, cropped=cropped)


@dataclass
class TileFolderResult:
    """A finished ``cluster-tiles`` run: its folder and the manifest written there."""

    out_dir: Path
    manifest: TileClustersManifest


def _check_out(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier cluster-tiles result."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"--out {str(out)!r} is a file; give a folder name for the results")
    if any(out.iterdir()) and folder_kind(out) != "cluster-tiles":
        raise OutputError(
            f"--out {str(out)!r} exists and is not an earlier cluster-tiles result; choose a new or empty folder"
        )


def cluster_tile_folder(
    folder: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: PipelineConfig | None = None,
    *,
    recursive: bool = False,
    colour_method: str = "auto",
    mpp: float | None = None,
    progress: Callable[[str, float, str], None] | None = None,
) -> TileFolderResult:
    """Embed and cluster a folder of tiles; write the result folder ``out_dir`` atomically.

    Parameters
    ----------
    folder : path-like
        Tile images (see the module docstring).
    out_dir : path-like
        The result folder (:mod:`tumls_qp.outputs.run_folder`, kind ``cluster-tiles``): created, or
        replaced when it holds an earlier cluster-tiles result. Written in a hidden staging folder
        beside it and renamed into place when complete.
    config : PipelineConfig, optional
        ``tiles.tile_px`` (tile size for ``tumls-ae``), ``tiles.min_tiles``, ``embedding`` (the
        method and its training; ``embedding.view_px`` is the view size of the other methods),
        ``clusters`` (k), ``representatives.n`` and ``seed`` apply; the slide options do not.
    recursive : bool
        Also read images in subfolders.
    colour_method : {"auto", "umap", "pca"}
        Reduction for the embedding-colour figure.
    mpp : float, optional
        Pixel size of the images in µm/px. The view methods measure in µm (``handcrafted``);
        without it, each image is taken to span ``embedding.view_um`` µm.
    progress : callable(stage, fraction, message), optional

    Returns
    -------
    TileFolderResult

    Raises
    ------
    InvalidInputError
        No images, an unreadable image, a bad ``mpp``, or too few images for the method.
    """
    from ..tissue.embeddings import TileImages, check_tile_count, fit_embedding, needs_views

    config = config or PipelineConfig()
    method = config.embedding.method
    if mpp is not None and not (isinstance(mpp, (int, float)) and 0.01 <= mpp <= 100):
        raise InvalidInputError(f"--mpp must be a pixel size in µm/px between 0.01 and 100; got {mpp!r}")
    progress = progress or (lambda stage, fraction, message: None)
    out = Path(out_dir)
    _check_out(out)
    if method == "pretrained":  # timm, the architecture and the file: before the images are read
        from ..tissue.embeddings.pretrained import check_encoder

        check_encoder(config.embedding.encoder, config.embedding.checkpoint)
    started = datetime.now(timezone.utc)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    progress("tiles", 0.0, f"reading {folder}")
    data = read_tile_folder(folder, config.tiles.tile_px, recursive=recursive)
    if len(data.files) < config.tiles.min_tiles:
        raise NoTissueError(
            f"only {len(data.files)} tile images in {str(folder)!r}; at least {config.tiles.min_tiles} are needed to "
            "learn and cluster tissues (tiles.min_tiles)"
        )
    check_tile_count(method, len(data.files))
    images = TileImages(tiles=data.tiles)
    if needs_views(method):
        view_px = config.embedding.view_px
        side = float(np.median(np.minimum(data.source_sizes[:, 0], data.source_sizes[:, 1])))
        view_mpp = side * mpp / view_px if mpp is not None else config.embedding.view_um / view_px
        images = TileImages(tiles=data.tiles, views=read_tile_folder(folder, view_px, recursive=recursive).tiles,
                            view_mpp=view_mpp)
    timings["tiles"] = time.perf_counter() - clock
    progress("tiles", 1.0, f"{len(data.files)} tiles")

    clock = time.perf_counter()
    progress("train", 0.0, f"{method}: learning from {len(data.files)} tiles")
    embedding = fit_embedding(images, config.embedding, config.seed, clusters=config.clusters,
                              progress=lambda e, n: progress("train", e / n, f"{method}: {e}/{n}"))
    latents = embedding.vectors
    timings["train"] = time.perf_counter() - clock
    progress("embed", 1.0, f"{len(latents)} tiles embedded")

    clock = time.perf_counter()
    clustering = cluster_embeddings(latents, config.clusters, config.seed, posterior=embedding.posterior)
    reps = select_representatives(clustering, config.representatives.n)
    timings["cluster"] = time.perf_counter() - clock
    progress("cluster", 1.0, f"k = {clustering.k}")

    clock = time.perf_counter()
    colours = embedding_colours(latents, colour_method, config.seed)
    timings["colours"] = time.perf_counter() - clock

    tiles = TileFolderInfo(
        n=len(data.files), tile_px=config.tiles.tile_px,
        resampling="centre crop to a square, then area averaging (Pillow BOX) to tile_px", cropped=data.cropped,
        source_sizes=tuple(sorted({f"{w}x{h}" for w, h in data.source_sizes.tolist()})[:20]))
    manifest = write_run(out, TileClustersAnalysis(
        folder=Path(folder), files=data.files, tiles=tiles, latents=latents, clustering=clustering,
        representatives=tuple(reps), embedding=embedding, embedding_colours=colours,
        created=started, timings_s=timings, config=config))
    return TileFolderResult(out_dir=out, manifest=manifest)
