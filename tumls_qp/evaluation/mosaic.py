"""Slides with known tissue regions, assembled from labelled tiles, and scores of a tissue map against them.

A labelled tile folder (``labels.csv`` with ``file,label``; e.g. ``../shared/data/lc25000_224``)
becomes a pyramidal TIFF slide whose regions have known classes:

- the slide is a grid of ``regions`` (rows × columns); each region is ``region_cells`` ×
  ``region_cells`` cells; each cell is one tile image (``cell_px`` px, a different image per cell,
  so a region's texture varies as real tissue does);
- the classes are spread evenly over the regions in a random order (``seed``): neighbouring
  regions may share a class, so a class forms patches of varying shape;
- ``offset_cells`` (default one half) is cut from every side, so that an analysis grid anchored at
  level-0 pixel (0, 0) with tiles of ``cell_px`` px straddles every region border, as it always
  does on a real slide, and still covers the whole slide.

:func:`score_tissue_map` compares a run's tissue annotations (``tissue.geojson``) with the truth:
the pixel adjusted Rand index over the slide (pixels outside every tissue annotation count as
one more label, so a map that leaves tissue out is penalised), a boundary F-score, the number of
tissues, and the fraction of the slide covered.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import InvalidInputError

__all__ = ["Mosaic", "build_mosaic", "read_truth", "rasterise_tissue_map", "score_tissue_map", "MosaicScore"]

_TISSUE_CLASS = re.compile(r"^Tissue (\d+)$")


@dataclass(frozen=True)
class Mosaic:
    """A written mosaic slide.

    Attributes
    ----------
    slide : Path
        Pyramidal TIFF with the pixel size in its resolution tags.
    truth : Path
        PNG beside it: the class index of every level-0 pixel, 1..len(classes).
    classes : tuple of str
        Class names; class ``i`` (1-based) of ``truth`` is ``classes[i - 1]``.
    mpp : float
        Level-0 pixel size in µm/px.
    cell_px : int
        Side of one tile image in level-0 px (the analysis tile that straddles the borders).
    """

    slide: Path
    truth: Path
    classes: tuple[str, ...]
    mpp: float
    cell_px: int

    @property
    def cell_um(self) -> float:
        """Side of one cell in µm (pass it as ``--tile-um`` to analyse on the straddling grid)."""
        return self.cell_px * self.mpp


def _read_labels(folder: Path) -> dict[str, list[str]]:
    table = folder / "labels.csv"
    if not table.is_file():
        raise InvalidInputError(f"{folder} has no labels.csv (columns file,label); a mosaic needs labelled tiles")
    by_class: dict[str, list[str]] = {}
    with table.open(newline="") as f:
        for row in csv.DictReader(f):
            by_class.setdefault(row["label"], []).append(row["file"])
    return by_class


def build_mosaic(
    folder: str | Path,
    classes: Sequence[str],
    out: str | Path,
    *,
    regions: tuple[int, int] = (4, 4),
    region_cells: int = 3,
    cell_px: int = 224,
    mpp: float = 1.0,
    offset_cells: float = 0.5,
    seed: int = 0,
) -> Mosaic:
    """Assemble labelled tiles into a slide with known regions.

    Parameters
    ----------
    folder : path-like
        Tile images and ``labels.csv`` (``file,label``).
    classes : sequence of str
        The labels to use (at least 2).
    out : path-like
        The slide to write (``.tif``); the truth goes beside it as ``<stem>.truth.png`` and the class
        names as ``<stem>.truth.json``.
    regions : (int, int)
        Regions per (row, column).
    region_cells : int
        Cells per region side.
    cell_px : int
        Each tile image is resized to ``cell_px`` × ``cell_px`` level-0 px.
    mpp : float
        Level-0 pixel size written into the slide, µm/px.
    offset_cells : float
        Cut from every side, in cells (0 to 1): the offset between the mosaic's cells and a grid
        anchored at (0, 0).
    seed : int
        Chooses the region classes, the images and their 90° rotations.

    Returns
    -------
    Mosaic
    """
    from ..testing import write_pyramidal_tiff

    folder, out = Path(folder), Path(out)
    rows, cols = regions
    if len(classes) < 2 or rows < 1 or cols < 1 or region_cells < 1 or not 0 <= offset_cells < 1:
        raise InvalidInputError(f"a mosaic needs >= 2 classes, >= 1 region and 0 <= offset_cells < 1; got "
                                f"classes={list(classes)}, regions={regions}, offset_cells={offset_cells}")
    by_class = _read_labels(folder)
    missing = [c for c in classes if c not in by_class]
    if missing:
        raise InvalidInputError(f"classes {missing} are not in {folder}/labels.csv (it has {sorted(by_class)})")
    rng = np.random.default_rng(seed)
    n_regions = rows * cols
    region_class = np.resize(np.arange(len(classes)), n_regions)
    rng.shuffle(region_class)
    cells_per_class = np.bincount(region_class, minlength=len(classes)) * region_cells**2
    pools = {}
    for i, name in enumerate(classes):
        files = list(by_class[name])
        if len(files) < cells_per_class[i]:
            raise InvalidInputError(f"class {name!r} has {len(files)} tiles; the mosaic needs "
                                    f"{cells_per_class[i]}: use fewer or smaller regions")
        pools[i] = list(rng.permutation(files)[: cells_per_class[i]])
    n_rows, n_cols = rows * region_cells, cols * region_cells
    rgb = np.empty((n_rows * cell_px, n_cols * cell_px, 3), np.uint8)
    truth = np.empty((n_rows * cell_px, n_cols * cell_px), np.uint8)
    for r in range(n_rows):
        for c in range(n_cols):
            cls = int(region_class[(r // region_cells) * cols + c // region_cells])
            with Image.open(folder / pools[cls].pop()) as image:
                tile = np.asarray(image.convert("RGB").resize((cell_px, cell_px), Image.Resampling.BOX))
            tile = np.rot90(tile, int(rng.integers(4)))
            rgb[r * cell_px:(r + 1) * cell_px, c * cell_px:(c + 1) * cell_px] = tile
            truth[r * cell_px:(r + 1) * cell_px, c * cell_px:(c + 1) * cell_px] = cls + 1
    cut = int(round(offset_cells * cell_px))
    if cut:
        rgb, truth = rgb[cut:-cut, cut:-cut], truth[cut:-cut, cut:-cut]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_pyramidal_tiff(out, rgb, mpp)
    truth_png = out.with_name(out.stem + ".truth.png")
    Image.fromarray(truth).save(truth_png)
    out.with_name(out.stem + ".truth.json").write_text(json.dumps(
        {"classes": list(classes), "mpp": mpp, "cell_px": cell_px, "offset_px": cut, "seed": seed}, indent=1))
    return Mosaic(out, truth_png, tuple(classes), float(mpp), int(cell_px))


def read_truth(mosaic_slide: str | Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """The truth of a mosaic slide written by :func:`build_mosaic`: (H, W) uint8 class indices and the names."""
    slide = Path(mosaic_slide)
    truth = np.asarray(Image.open(slide.with_name(slide.stem + ".truth.png")))
    meta = json.loads(slide.with_name(slide.stem + ".truth.json").read_text())
    return truth, tuple(meta["classes"])


def _tissue_polygons(features: Sequence[dict[str, Any]]) -> dict[int, list[Any]]:
    """Polygons (shell, holes) per tissue number, from the tissue annotations among ``features``."""
    out: dict[int, list[Any]] = {}
    for f in features:
        props = f.get("properties", {})
        if props.get("objectType") != "annotation" or "representative" in str(props.get("name", "")):
            continue
        match = _TISSUE_CLASS.match(str((props.get("classification") or {}).get("name", "")))
        if not match:
            continue
        geometry = f["geometry"]
        polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        out.setdefault(int(match.group(1)), []).extend(polygons)
    return out


def rasterise_tissue_map(features: Sequence[dict[str, Any]], shape: tuple[int, int], downsample: int = 4) -> np.ndarray:
    """The tissue annotations as a label image.

    Parameters
    ----------
    features : sequence of GeoJSON Feature dicts
        E.g. the features of ``tissue.geojson``; annotations classed "Tissue k" that are not
        representatives are the tissue map.
    shape : (int, int)
        Level-0 (height, width).
    downsample : int
        Level-0 px per output pixel.

    Returns
    -------
    labels : (ceil(height / downsample), ceil(width / downsample)) int32 ndarray
        Tissue number k, 0 where no tissue annotation lies.
    """
    from matplotlib.path import Path as PolygonPath

    h, w = -(-shape[0] // downsample), -(-shape[1] // downsample)
    # A pixel belongs to a polygon when its centre does (level-0 centre at (i + 0.5) * downsample).
    ys, xs = np.mgrid[0:h, 0:w]
    centres = np.column_stack([(xs.ravel() + 0.5) * downsample, (ys.ravel() + 0.5) * downsample])
    labels = np.zeros(h * w, np.int32)
    for k, polygons in sorted(_tissue_polygons(features).items()):
        for rings in polygons:
            inside = PolygonPath(rings[0]).contains_points(centres)
            for hole in rings[1:]:
                inside &= ~PolygonPath(hole).contains_points(centres)
            labels[inside] = k
    labels = labels.reshape(h, w)
    return labels


@dataclass(frozen=True)
class MosaicScore:
    """How a tissue map agrees with a mosaic's truth.

    Attributes
    ----------
    ari : float
        Pixel adjusted Rand index over the whole slide (unannotated pixels form one more label).
    boundary_f : float
        Boundary F-score: predicted tissue borders within ``tolerance_px`` of a true class border and back.
    n_tissues : int
        Tissues in the map.
    n_classes : int
        Classes in the truth.
    coverage : float
        Fraction of the slide inside a tissue annotation.
    """

    ari: float
    boundary_f: float
    n_tissues: int
    n_classes: int
    coverage: float


def _borders(labels: np.ndarray) -> np.ndarray:
    border = np.zeros(labels.shape, bool)
    border[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    border[1:, :] |= labels[1:, :] != labels[:-1, :]
    return border


def score_tissue_map(features: Sequence[dict[str, Any]], truth: np.ndarray, *, downsample: int = 4,
                     tolerance_px: float = 56.0) -> MosaicScore:
    """Score tissue annotations against a mosaic's truth.

    Parameters
    ----------
    features : sequence of GeoJSON Feature dicts
        The run's ``tissue.geojson`` features (level-0 px).
    truth : (H, W) integer ndarray
        Class of every level-0 pixel (:func:`read_truth`).
    downsample : int
        Both maps are compared at this many level-0 px per pixel.
    tolerance_px : float
        Level-0 px within which a border counts as found (default a quarter of a 224 px cell).

    Returns
    -------
    MosaicScore
    """
    from scipy import ndimage
    from sklearn.metrics import adjusted_rand_score

    predicted = rasterise_tissue_map(features, truth.shape, downsample)
    reference = truth[downsample // 2::downsample, downsample // 2::downsample][: predicted.shape[0], : predicted.shape[1]]
    predicted = predicted[: reference.shape[0], : reference.shape[1]]
    ari = float(adjusted_rand_score(reference.ravel(), predicted.ravel()))
    tol = tolerance_px / downsample
    true_border, found_border = _borders(reference), _borders(predicted)
    if true_border.any() and found_border.any():
        to_true = ndimage.distance_transform_edt(~true_border)
        to_found = ndimage.distance_transform_edt(~found_border)
        precision = float((to_true[found_border] <= tol).mean())
        recall = float((to_found[true_border] <= tol).mean())
        boundary_f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    else:
        boundary_f = float(true_border.any() == found_border.any())
    return MosaicScore(ari=ari, boundary_f=boundary_f, n_tissues=len(set(np.unique(predicted)) - {0}),
                       n_classes=len(set(np.unique(reference))), coverage=float((predicted > 0).mean()))
