"""Nucleus and tissue features (TUMLS section 3.5), as tidy columns with QuPath-safe names.

Every column is described once, in :data:`NUCLEUS_FEATURES` and :data:`TISSUE_FEATURES`
(name, unit, definition); the functions build their column names from these tables
and the tables below are generated from them, so the documentation and the code
cannot diverge. Names are QuPath measurement names: no ``:``, units spelled ``um``
and ``um^2``.

Conventions: lengths are in µm and areas in µm² (pixel counts times ``mpp``²);
positions are in the tile's pixel frame (x right, y down, pixel ``(r, c)`` covers
``[c, c + 1] x [r, r + 1]``). Intensities: luminance is Rec. 601 luma of the 8-bit RGB
(0 black, 255 white); haematoxylin is the concentration of the H&E colour deconvolution
in optical-density (OD) units (:func:`tumls_qp.cells.nuclei.haematoxylin_od`).

Edge cases: with no nucleus, ``Nuclei`` is 0, ``Nuclei per mm^2`` is 0 and every
per-nucleus statistic (means, spread) is NaN; with one nucleus ``Spread um`` is NaN.
NaN marks "not defined"; QuPath writers should leave such measurements out.

"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from .nuclei import check_mpp, check_rgb, estimate_stains, haematoxylin_od

__all__ = [
    "Feature",
    "NUCLEUS_FEATURES",
    "TISSUE_FEATURES",
    "GLCM_LEVELS",
    "GLCM_DISTANCE_UM",
    "measure_nuclei",
    "measure_tissue",
    "tissue_roi",
    "combine_rois",
    "FEW_NUCLEI",
    "POOLING",
]

log = logging.getLogger(__name__)

#: Grey levels the luminance is quantised to for the co-occurrence matrix.
GLCM_LEVELS = 32
#: Distance between the two pixels of a co-occurrence pair, in µm (at least 1 px).
GLCM_DISTANCE_UM = 1.0

# Rec. 601 luma weights (R, G, B).
_LUMA = np.array([0.299, 0.587, 0.114])
# Pairwise distances are accumulated in blocks of this many rows (bounded memory).
_PAIR_BLOCK = 1024


@dataclass(frozen=True)
class Feature:
    """One output column.

    Attributes
    ----------
    key : str
        Identifier used in the code.
    name : str
        Column name, a valid QuPath measurement name.
    unit : str
        Unit, ``""`` when unit-free.
    definition : str
        What the value is.
    """

    key: str
    name: str
    unit: str
    definition: str


#: Columns of :func:`measure_nuclei`, one value per nucleus.
NUCLEUS_FEATURES: tuple[Feature, ...] = (
    Feature("label", "Label", "", "instance label of the nucleus in the label image"),
    Feature("x", "Centroid X px", "px", "x of the centroid of the nucleus' pixels, tile frame"),
    Feature("y", "Centroid Y px", "px", "y of the centroid of the nucleus' pixels, tile frame"),
    Feature("area", "Area um^2", "µm²", "pixel count × mpp²"),
    Feature("perimeter", "Perimeter um", "µm",
            "Crofton perimeter (4 directions) × mpp; within a few % of 2πr for a disk"),
    Feature("circularity", "Circularity", "",
            "4π area / perimeter²; 1 for a disk, smaller for elongated or ragged outlines "
            "(digital estimates of small disks may exceed 1 by a few %)"),
    Feature("eccentricity", "Eccentricity", "",
            "eccentricity of the ellipse with the same second moments, √(1 - (b/a)²); 0 for a disk"),
    Feature("major", "Major axis um", "µm", "major axis length of that ellipse × mpp"),
    Feature("minor", "Minor axis um", "µm", "minor axis length of that ellipse × mpp"),
    Feature("solidity", "Solidity", "", "pixel area / area of the convex hull of the nucleus' pixel squares"),
    Feature("luminance", "Luminance mean", "0-255", "mean luma of the nucleus' pixels (intensity)"),
    Feature("haematoxylin", "Haematoxylin OD mean", "OD",
            "mean haematoxylin concentration of the nucleus' pixels (staining intensity)"),
    Feature("haematoxylin_std", "Haematoxylin OD std", "OD",
            "standard deviation of the haematoxylin concentration (chromatin texture)"),
)

#: Entries of :func:`measure_tissue`, one value per region of interest (ROI).
TISSUE_FEATURES: tuple[Feature, ...] = (
    Feature("glcm_contrast", "GLCM contrast", "",
            f"grey-level co-occurrence contrast Σ p(i, j) (i - j)² of the ROI's luma quantised to "
            f"{GLCM_LEVELS} levels, pairs {GLCM_DISTANCE_UM:g} µm apart in 4 directions (0°, 45°, 90°, 135°), "
            f"symmetric, normalised, averaged over directions"),
    Feature("glcm_homogeneity", "GLCM homogeneity", "",
            "co-occurrence homogeneity Σ p(i, j) / (1 + (i - j)²), same matrix"),
    Feature("luminance", "Nucleus luminance mean", "0-255",
            "mean luma of all nucleus pixels in the ROI (intensity)"),
    Feature("haematoxylin", "Nucleus haematoxylin OD mean", "OD",
            "mean haematoxylin concentration of all nucleus pixels in the ROI (staining intensity)"),
    Feature("count", "Nuclei", "", "number of nuclei whose centroid lies in the ROI"),
    Feature("area_mean", "Nucleus area mean um^2", "µm²", "mean nucleus area (size)"),
    Feature("circularity_mean", "Nucleus circularity mean", "", "mean nucleus circularity"),
    Feature("eccentricity_mean", "Nucleus eccentricity mean", "", "mean nucleus eccentricity"),
    Feature("density", "Nuclei per mm^2", "1/mm²", "number of nuclei / ROI area"),
    Feature("spread", "Spread um", "µm",
            "standard deviation of the Euclidean distances between all pairs of nucleus centroids"),
    Feature("roi_area", "ROI area um^2", "µm²", "ROI pixel count × mpp²"),
)

_NUCLEUS = {f.key: f.name for f in NUCLEUS_FEATURES}


def _table(features: tuple[Feature, ...]) -> str:
    """reStructuredText table of features (for the module docstring)."""
    rows = [(f"``{f.name}``", f.unit or "-", f.definition) for f in features]
    widths = [max(len(r[i]) for r in rows + [("column", "unit", "definition")]) for i in range(3)]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(h.ljust(w) for h, w in zip(("column", "unit", "definition"), widths)), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines + [rule])


__doc__ = (__doc__ or "") + (
    "Per nucleus (:func:`measure_nuclei`)\n-----------------------------------\n\n" + _table(NUCLEUS_FEATURES)
    + "\n\nPer region of interest (:func:`measure_tissue`)\n-----------------------------------------------\n\n"
    + _table(TISSUE_FEATURES) + "\n"
)


def _check_labels(labels: Any, shape: tuple[int, int]) -> np.ndarray:
    """Check an instance label image of the given shape."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidInputError(f"labels must be a 2-D integer array; got shape {labels.shape} dtype {labels.dtype}")
    if labels.shape != shape:
        raise InvalidInputError(f"labels must have the shape of rgb {shape}; got {labels.shape}")
    if labels.size and labels.min() < 0:
        raise InvalidInputError(f"labels must be >= 0 (0 = background); got a minimum of {labels.min()}")
    return labels


def _check_image(name: str, image: Any, shape: tuple[int, int], kind: str) -> np.ndarray:
    """Check a per-pixel float (``kind='float'``) or bool (``kind='bool'``) image of the given shape."""
    image = np.asarray(image)
    if image.shape != shape:
        raise InvalidInputError(f"{name} must have the shape of rgb {shape}; got {image.shape}")
    if kind == "bool":
        if image.dtype != bool:
            raise InvalidInputError(f"{name} must be a bool mask; got dtype {image.dtype}")
        return image
    if not np.issubdtype(image.dtype, np.floating) and not np.issubdtype(image.dtype, np.integer):
        raise InvalidInputError(f"{name} must be a numeric image; got dtype {image.dtype}")
    return image.astype(np.float32, copy=False)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of an (H, W, 3) uint8 image, float32 0-255."""
    return (rgb.astype(np.float32) @ _LUMA.astype(np.float32)).astype(np.float32)


def _haematoxylin(rgb: np.ndarray, haematoxylin: Any) -> np.ndarray:
    """The given haematoxylin image, or one from the tile's own stain vectors."""
    if haematoxylin is None:
        return haematoxylin_od(rgb, estimate_stains(rgb).matrix)
    return _check_image("haematoxylin", haematoxylin, rgb.shape[:2], "float")


def measure_nuclei(labels: np.ndarray, rgb: np.ndarray, mpp: float, *,
                   haematoxylin: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Shape and stain features of every nucleus.

    Parameters
    ----------
    labels : (H, W) integer ndarray
        Instance labels, 0 = background (e.g. ``NucleiResult.mask2``).
    rgb : (H, W, 3) uint8 ndarray
        The tile the labels belong to.
    mpp : float
        Pixel size in µm/px.
    haematoxylin : (H, W) float ndarray, optional
        Haematoxylin concentration in OD units (e.g. ``NucleiResult.haematoxylin``). When
        None it is computed with the tile's own stain vectors.

    Returns
    -------
    dict of str to (n,) ndarray
        One entry per row of :data:`NUCLEUS_FEATURES`, keyed by its ``name``, in that
        order; one value per nucleus (label present in ``labels``), sorted by label. No
        nucleus: arrays of length 0.

    Raises
    ------
    InvalidInputError
        When an argument has the wrong type, shape or value (named in the message).

    Notes
    -----
    Everything but the solidity is computed for all nuclei at once from per-label sums
    (moments, intensities) and from label transitions between neighbouring pixels
    (Crofton perimeter); the ellipse follows scikit-image's ``regionprops`` conventions.
    """
    rgb = check_rgb(rgb)
    mpp = check_mpp(mpp)
    labels = _check_labels(labels, rgb.shape[:2])
    if labels.size == 0 or labels.max() == 0:
        columns = {f.name: np.zeros(0, dtype=np.float64) for f in NUCLEUS_FEATURES}
        columns[_NUCLEUS["label"]] = np.zeros(0, dtype=np.int64)
        return columns
    h = _haematoxylin(rgb, haematoxylin)
    flat = labels.ravel()
    pixels = np.flatnonzero(flat)
    lab = flat[pixels].astype(np.intp)
    n = int(lab.max()) + 1
    rows, cols = np.divmod(pixels, labels.shape[1])
    count = np.bincount(lab, minlength=n).astype(np.float64)
    present = np.flatnonzero(count)
    present = present[present > 0]

    def per_label(values: np.ndarray) -> np.ndarray:
        return np.bincount(lab, weights=values, minlength=n)[present] / count[present]

    x, y = cols.astype(np.float64), rows.astype(np.float64)
    mean_x, mean_y = per_label(x), per_label(y)
    # Central second moments (population), as regionprops' inertia tensor.
    var_x = np.maximum(per_label(x * x) - mean_x ** 2, 0)
    var_y = np.maximum(per_label(y * y) - mean_y ** 2, 0)
    cov_xy = per_label(x * y) - mean_x * mean_y
    half_trace = (var_x + var_y) / 2
    root = np.sqrt(((var_x - var_y) / 2) ** 2 + cov_xy ** 2)
    major_var, minor_var = half_trace + root, np.maximum(half_trace - root, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        eccentricity = np.where(major_var > 0, np.sqrt(np.maximum(1 - minor_var / major_var, 0)), 0.0)
    area_px = count[present]
    perimeter_px = _crofton_perimeter(labels, n)[present]
    with np.errstate(divide="ignore", invalid="ignore"):
        circularity = np.where(perimeter_px > 0, 4 * np.pi * area_px / perimeter_px ** 2, np.nan)
    luma = _luma(rgb).ravel()[pixels].astype(np.float64)
    stain = h.ravel()[pixels].astype(np.float64)
    stain_mean = per_label(stain)
    values = {
        "label": present.astype(np.int64),
        "x": mean_x + 0.5,
        "y": mean_y + 0.5,
        "area": area_px * mpp * mpp,
        "perimeter": perimeter_px * mpp,
        "circularity": circularity,
        "eccentricity": eccentricity,
        "major": 4 * np.sqrt(major_var) * mpp,
        "minor": 4 * np.sqrt(minor_var) * mpp,
        "solidity": _solidity(labels, present, area_px),
        "luminance": per_label(luma),
        "haematoxylin": stain_mean,
        "haematoxylin_std": np.sqrt(np.maximum(per_label(stain * stain) - stain_mean ** 2, 0)),
    }
    return {f.name: np.asarray(values[f.key]) for f in NUCLEUS_FEATURES}


def _crofton_perimeter(labels: np.ndarray, n: int) -> np.ndarray:
    """(n,) perimeter in px of every label by the Crofton formula with 4 line directions.

    Lines through pixel centres in directions 0°, 90° (1 px apart) and 45°, 135° (1/√2 px
    apart) cross a label's outline N times; perimeter = (π/8) (N0 + N90 + (N45 + N135)/√2).
    """
    padded = np.pad(labels, 1).astype(np.intp, copy=False)
    crossings = np.zeros((4, n), dtype=np.float64)
    pairs = ((padded[:, :-1], padded[:, 1:]), (padded[:-1, :], padded[1:, :]),
             (padded[:-1, :-1], padded[1:, 1:]), (padded[:-1, 1:], padded[1:, :-1]))
    for k, (a, b) in enumerate(pairs):
        edge = a != b
        crossings[k] = np.bincount(a[edge], minlength=n)[:n] + np.bincount(b[edge], minlength=n)[:n]
    return (np.pi / 8) * (crossings[0] + crossings[1] + (crossings[2] + crossings[3]) / np.sqrt(2))


def _solidity(labels: np.ndarray, present: np.ndarray, area_px: np.ndarray) -> np.ndarray:
    """Pixel area over the area of the convex hull of the pixel squares, per label in ``present``."""
    import cv2

    # Only outline pixels (a 4-neighbour with another label) can carry hull vertices.
    padded = np.pad(labels, 1)
    centre = padded[1:-1, 1:-1]
    outline = ((centre != padded[:-2, 1:-1]) | (centre != padded[2:, 1:-1])
               | (centre != padded[1:-1, :-2]) | (centre != padded[1:-1, 2:])) & (centre > 0)
    rows, cols = np.nonzero(outline)
    lab = labels[rows, cols]
    order = np.argsort(lab, kind="stable")
    lab = lab[order]
    starts = np.searchsorted(lab, present)
    ends = np.searchsorted(lab, present, side="right")
    corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    points = np.column_stack([cols[order], rows[order]]).astype(np.float32)
    out = np.empty(len(present), dtype=np.float64)
    for k, (start, end) in enumerate(zip(starts, ends)):  # one C call per nucleus
        squares = (points[start:end, None, :] + corners[None]).reshape(-1, 1, 2)
        out[k] = area_px[k] / max(cv2.contourArea(cv2.convexHull(squares)), area_px[k])
    return out


def _glcm(luma: np.ndarray, roi: np.ndarray | None, mpp: float) -> tuple[float, float]:
    """GLCM contrast and homogeneity of the luma inside the ROI (NaN when it has no pixel pair)."""
    from skimage.feature import graycomatrix, graycoprops

    distance = max(1, int(round(GLCM_DISTANCE_UM / mpp)))
    if min(luma.shape) <= distance:
        return math.nan, math.nan
    # Level 0 marks pixels outside the ROI; its row and column are dropped from the matrix.
    levels = (np.minimum(luma, 255.0) * (GLCM_LEVELS / 256.0)).astype(np.uint8) + 1
    if roi is not None:
        levels[~roi] = 0
    matrix = graycomatrix(levels, [distance], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
                          levels=GLCM_LEVELS + 1, symmetric=True, normed=False)[1:, 1:].astype(np.float64)
    totals = matrix.sum(axis=(0, 1), keepdims=True)
    if not np.all(totals > 0):
        return math.nan, math.nan
    matrix /= totals
    contrast = float(graycoprops(matrix, "contrast").mean())
    homogeneity = float(graycoprops(matrix, "homogeneity").mean())
    return contrast, homogeneity


def _pairwise_distance_std(points: np.ndarray) -> float:
    """Population std of the distances between all pairs of (n, 2) points (NaN when n < 2)."""
    n = len(points)
    if n < 2:
        return math.nan
    total = total_sq = 0.0
    count = 0
    for start in range(0, n - 1, _PAIR_BLOCK):
        block = points[start:start + _PAIR_BLOCK]
        diff = block[:, None, :] - points[None, start + 1:, :]
        dist = np.sqrt((diff ** 2).sum(axis=-1))
        # Row i of the block pairs with points after it only: keep j > start + i.
        keep = np.arange(start + 1, n)[None, :] > (start + np.arange(len(block)))[:, None]
        d = dist[keep]
        total += float(d.sum())
        total_sq += float((d * d).sum())
        count += d.size
    mean = total / count
    return math.sqrt(max(total_sq / count - mean * mean, 0.0))


def _finite_mean(values: np.ndarray) -> float:
    """Mean of the finite values; NaN when there is none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def measure_tissue(labels: np.ndarray, rgb: np.ndarray, mpp: float, *, roi: np.ndarray | None = None,
                   haematoxylin: np.ndarray | None = None,
                   nuclei: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Texture and nucleus-population features of one region of interest (TUMLS section 3.5).

    Parameters
    ----------
    labels : (H, W) integer ndarray
        Instance labels of the nuclei, 0 = background.
    rgb : (H, W, 3) uint8 ndarray
        The tile.
    mpp : float
        Pixel size in µm/px.
    roi : (H, W) bool ndarray, optional
        The region of interest (e.g. the tissue part of a tile). None: the whole tile.
        Nuclei count when their centroid lies in it; texture uses its pixels only.
    haematoxylin : (H, W) float ndarray, optional
        Haematoxylin concentration in OD units; computed from the tile when None.
    nuclei : dict, optional
        The output of :func:`measure_nuclei` for these labels, to avoid computing it twice.

    Returns
    -------
    dict of str to float
        One entry per row of :data:`TISSUE_FEATURES`, keyed by its ``name``, in that order.
        No nucleus: ``Nuclei`` and ``Nuclei per mm^2`` are 0, the nucleus statistics NaN;
        one nucleus: ``Spread um`` is NaN. An empty ROI gives NaN texture and density.

    Raises
    ------
    InvalidInputError
        When an argument has the wrong type, shape or value (named in the message).
    """
    rgb = check_rgb(rgb)
    mpp = check_mpp(mpp)
    shape = rgb.shape[:2]
    labels = _check_labels(labels, shape)
    if roi is not None:
        roi = _check_image("roi", roi, shape, "bool")
    h = _haematoxylin(rgb, haematoxylin)
    if nuclei is None:
        nuclei = measure_nuclei(labels, rgb, mpp, haematoxylin=h)
    elif not isinstance(nuclei, dict) or _NUCLEUS["label"] not in nuclei:
        raise InvalidInputError("nuclei must be the dict that measure_nuclei returns; "
                                f"got {type(nuclei).__name__}")

    luma = _luma(rgb)
    contrast, homogeneity = _glcm(luma, roi, mpp)
    roi_px = int(roi.sum()) if roi is not None else int(labels.size)
    roi_area_um2 = roi_px * mpp * mpp

    x, y = nuclei[_NUCLEUS["x"]], nuclei[_NUCLEUS["y"]]
    inside = np.ones(len(x), dtype=bool)
    if roi is not None and len(x):
        rows = np.clip(np.floor(y).astype(int), 0, shape[0] - 1)
        cols = np.clip(np.floor(x).astype(int), 0, shape[1] - 1)
        inside = roi[rows, cols]
    count = int(inside.sum())
    chosen = nuclei[_NUCLEUS["label"]][inside]
    chosen_lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=bool)
    chosen_lut[chosen] = True
    pixels = chosen_lut[labels]

    def mean_of(key: str) -> float:
        return float(np.mean(nuclei[_NUCLEUS[key]][inside])) if count else math.nan

    values = {
        "glcm_contrast": contrast,
        "glcm_homogeneity": homogeneity,
        "luminance": float(luma[pixels].mean()) if count else math.nan,
        "haematoxylin": float(h[pixels].mean()) if count else math.nan,
        "count": float(count),
        "area_mean": mean_of("area"),
        "circularity_mean": _finite_mean(nuclei[_NUCLEUS["circularity"]][inside]),
        "eccentricity_mean": mean_of("eccentricity"),
        "density": count / (roi_area_um2 / 1e6) if roi_area_um2 > 0 else math.nan,
        "spread": _pairwise_distance_std(np.column_stack([x[inside], y[inside]]) * mpp),
        "roi_area": roi_area_um2,
    }
    return {f.name: float(values[f.key]) for f in TISSUE_FEATURES}


#: A tissue whose pooled features rest on fewer nuclei than this is flagged (manifest warning, report): its
#: means and spread are too noisy to compare tissues by.
FEW_NUCLEI = 30
#: Glass-coloured gaps inside the tissue smaller than this (µm²) are tissue (spaces between cells, small
#: vessels); larger ones are glass (e.g. an empty corner of the patch, the slide edge, a tear).
TISSUE_HOLE_UM2 = 2000.0
#: Tissue specks smaller than this (µm²) are dust, not tissue.
TISSUE_SPECK_UM2 = 50.0


def tissue_roi(rgb: np.ndarray, mpp: float, min_od: float = 0.1) -> np.ndarray:
    """The tissue of a patch, without the glass: the region of interest for :func:`measure_tissue`.

    A pixel is tissue when its optical density averaged over R, G and B, OD = −log10((I + 1) / 256),
    exceeds ``min_od`` (the ``nuclei.tissue_od`` of the segmentation; glass is below 0.05). Gaps
    smaller than ``TISSUE_HOLE_UM2`` inside the tissue are filled; specks smaller than
    ``TISSUE_SPECK_UM2`` are dropped.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 ndarray
    mpp : float
        Pixel size in µm/px.
    min_od : float
        Mean optical density above which a pixel is tissue.

    Returns
    -------
    (H, W) bool ndarray
    """
    from scipy import ndimage as ndi

    rgb = check_rgb(rgb)
    mpp = check_mpp(mpp)
    od = np.log10(256.0 / (rgb.astype(np.float32) + 1.0)).mean(axis=2)
    tissue = od > min_od
    px_area = mpp * mpp
    for value, limit in ((False, TISSUE_HOLE_UM2), (True, TISSUE_SPECK_UM2)):
        parts, n = ndi.label(tissue == value)
        if n:
            small = np.bincount(parts.ravel()) * px_area < limit
            small[0] = False
            tissue[small[parts]] = not value
    return tissue


#: How :func:`combine_rois` pools each per-ROI feature into one value per tissue.
POOLING: dict[str, str] = {
    "count": "sum",
    "roi_area": "sum",
    "density": "total nuclei / total ROI area",
    "area_mean": "mean over the tissue's nuclei (per-ROI means weighted by their nucleus counts)",
    "circularity_mean": "mean over the tissue's nuclei (weighted by nucleus counts)",
    "eccentricity_mean": "mean over the tissue's nuclei (weighted by nucleus counts)",
    "luminance": "mean over the tissue's nucleus pixels (weighted by each ROI's total nucleus area)",
    "haematoxylin": "mean over the tissue's nucleus pixels (weighted by each ROI's total nucleus area)",
    "glcm_contrast": "mean over ROIs weighted by ROI area",
    "glcm_homogeneity": "mean over ROIs weighted by ROI area",
    "spread": "mean of the per-ROI spreads weighted by ROI area (pairs across separate ROIs have no spatial meaning)",
}


def combine_rois(rois: list[dict[str, float]]) -> dict[str, float]:
    """Pool the :func:`measure_tissue` results of several ROIs of one tissue (its representatives).

    Parameters
    ----------
    rois : list of dict
        One :func:`measure_tissue` result per ROI.

    Returns
    -------
    dict of str to float
        The same columns, pooled as :data:`POOLING` says; NaN values are left out of
        weighted means, and a mean with no finite value is NaN.
    """
    if not rois:
        raise InvalidInputError("rois must hold at least one measure_tissue result; got none")
    column = {f.key: np.array([r[f.name] for r in rois], dtype=np.float64) for f in TISSUE_FEATURES}
    count, area = column["count"], column["roi_area"]
    nucleus_area = count * np.nan_to_num(column["area_mean"])

    def weighted(values: np.ndarray, weights: np.ndarray) -> float:
        ok = np.isfinite(values) & (weights > 0)
        return float(np.average(values[ok], weights=weights[ok])) if ok.any() else math.nan

    total_area = float(area.sum())
    pooled = {
        "count": float(count.sum()),
        "roi_area": total_area,
        "density": float(count.sum()) / (total_area / 1e6) if total_area > 0 else math.nan,
        "luminance": weighted(column["luminance"], nucleus_area),
        "haematoxylin": weighted(column["haematoxylin"], nucleus_area),
    }
    for key in ("area_mean", "circularity_mean", "eccentricity_mean"):
        pooled[key] = weighted(column[key], count)
    for key in ("glcm_contrast", "glcm_homogeneity", "spread"):
        pooled[key] = weighted(column[key], area)
    return {f.name: pooled[f.key] for f in TISSUE_FEATURES}
