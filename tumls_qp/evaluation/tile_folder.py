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
result folder described in the README ("cluster-tiles").
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from .. import __version__
from ..config import PipelineConfig, config_to_dict, dump_config
from ..errors import InvalidInputError, NoTissueError, OutputError
from ..provenance import package_versions
from ..files import replace_dir, staging_dir, write_csv, write_json

__all__ = ["TileFolder", "IMAGE_SUFFIXES", "read_tile_folder", "resample_tile", "cluster_tile_folder",
           "TileFolderResult"]

log = logging.getLogger(__name__)

#: File name endings read as tiles (case-insensitive); other files (CSV, Markdown, ...) are ignored.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
_DEPENDENCIES = ("numpy", "scipy", "scikit-learn", "pillow", "torch", "matplotlib", "umap-learn")


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
    """A finished ``cluster-tiles`` run."""

    out_dir: Path
    manifest: dict[str, Any]


def _check_out(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier tumls-qp result."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"--out {str(out)!r} is a file; give a folder name for the results")
    if any(out.iterdir()):
        try:
            manifest = json.loads((out / "manifest.json").read_text())
            ours = manifest.get("tool") == "tumls-qp" and manifest.get("command") == "cluster-tiles"
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
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
        The result folder: created, or replaced when it holds an earlier cluster-tiles result.
        Written in a hidden staging folder beside it and renamed into place when complete.
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
    """
    from ..tissue.clusters import cluster_embeddings, clustering_summary
    from ..interactive.embedding_colours import draw_embedding_colours, embedding_colours
    from ..tissue.embeddings import (TileImages, check_tile_count, embedding_summary, fit_embedding, needs_views,
                                     training_table)
    from ..tissue.representatives import select_representatives

    config = config or PipelineConfig()
    method = config.embedding.method
    if mpp is not None and not (isinstance(mpp, (int, float)) and 0.01 <= mpp <= 100):
        raise InvalidInputError(f"mpp must be a pixel size in µm/px between 0.01 and 100; got {mpp!r}")
    progress = progress or (lambda stage, fraction, message: None)
    out = Path(out_dir)
    _check_out(out)
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
    view_mpp = None
    if needs_views(method):
        view_px = config.embedding.view_px
        views = read_tile_folder(folder, view_px, recursive=recursive).tiles
        side = np.minimum(data.source_sizes[:, 0], data.source_sizes[:, 1]).astype(np.float64)
        view_mpp = float(np.median(side) * mpp / view_px) if mpp is not None else config.embedding.view_um / view_px
        images = TileImages(tiles=data.tiles, views=views, view_mpp=view_mpp)
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
    clustering = cluster_embeddings(latents, config.clusters, config.seed, posterior=embedding.posterior,
                                    posterior_source="VaDE mixture (lowest BIC)")
    reps = select_representatives(clustering, config.representatives.n)
    timings["cluster"] = time.perf_counter() - clock
    progress("cluster", 1.0, f"k = {clustering.k}")

    clock = time.perf_counter()
    colours = embedding_colours(latents, colour_method, config.seed)
    timings["colours"] = time.perf_counter() - clock

    stage = staging_dir(out.parent, out.name)
    try:
        files = data.files
        write_csv(stage / "clusters.csv", ["file", "cluster", "uncertainty", "distance"],
                   [[f, int(t) + 1, f"{u:.5f}", f"{d:.5f}"]
                    for f, t, u, d in zip(files, clustering.labels, clustering.uncertainty, clustering.distance)])
        write_csv(stage / "representatives.csv", ["cluster", "rank", "file", "uncertainty", "distance"],
                   [[r.tissue + 1, r.rank, files[r.tile], f"{r.uncertainty:.5f}", f"{r.distance:.5f}"] for r in reps])
        header, rows = training_table(embedding.history)
        write_csv(stage / "training.csv", header, rows)
        arrays = dict(files=np.array(files), latents=latents.astype(np.float32), labels=clustering.labels,
                      uncertainty=clustering.uncertainty, distance=clustering.distance,
                      centroids=clustering.centroids, embedding_3d=colours.coords, embedding_rgb=colours.rgb)
        if clustering.posterior is not None:
            arrays["posterior"] = clustering.posterior
        np.savez_compressed(stage / "embeddings.npz", **arrays)
        names = [f"Cluster {j + 1}" for j in range(clustering.k)]
        draw_embedding_colours(colours, stage / "embedding_colours.png", labels=clustering.labels, label_names=names,
                               title=f"{Path(folder).name}: {len(files)} tiles, {clustering.k} cluster(s), "
                                     f"{colours.method.upper()}")
        embedding.encoder.save(stage, {"history": embedding.history,
                                       "embedding": config_to_dict(config.embedding),
                                       "tiles": config_to_dict(config.tiles), "seed": config.seed})
        (stage / "config.toml").write_text(dump_config(config), encoding="utf-8")
        manifest = {
            "tool": "tumls-qp",
            "command": "cluster-tiles",
            "version": __version__,
            "created": started.isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "dependencies": package_versions(_DEPENDENCIES),
            "seed": config.seed,
            "device": embedding.history.get("device", "cpu"),
            "folder": str(Path(folder).resolve()),
            "tiles": {"n": len(files), "tile_px": config.tiles.tile_px,
                      "resampling": "centre crop to a square, then area averaging (Pillow BOX) to tile_px",
                      "cropped": data.cropped,
                      "source_sizes": sorted({f"{w}x{h}" for w, h in data.source_sizes.tolist()})[:20]},
            "embedding": embedding_summary(embedding, view_mpp),
            "clusters": clustering_summary(clustering),
            "embedding_colours": {"method": colours.method, "figure": "embedding_colours.png"},
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "config": config_to_dict(config),
        }
        write_json(stage / "manifest.json", manifest)
        replace_dir(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return TileFolderResult(out_dir=out, manifest=manifest)
