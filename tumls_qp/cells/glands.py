"""Unsupervised gland segmentation of H&E patches, and gland measurements.

No annotation, no training data and no shipped weights: every quantity is measured on the
image itself, relative to its own nuclei, so the method adapts to each image's staining.
The idea is the one of the gland-segmentation proposal the project comes from (a gland is
an exterior of epithelium around an interior of lumen and cytoplasm, and the interior is
filled): the epithelium is found first, the interior it encloses is then added.

1. **Resampling.** The image is resampled to ``working_mpp`` (1.24 µm/px by default); an
   input pixel size far from the range the method was designed for is resampled all the
   same and said so in :attr:`GlandResult.notes`.
2. **Haematoxylin.** Tissue is where the mean optical density exceeds ``tissue_od`` scaled
   by the image's median tissue optical density over ``tissue_reference_od`` (bounded to
   0.5-2×), so that the tissue mask follows the stain strength. Macenko stain vectors of the
   image (the reference vectors when one lies more than ``max_stain_deviation_deg``, 45° by
   default, from them), then the
   haematoxylin and eosin concentrations of every pixel (as for the nuclei,
   :mod:`tumls_qp.cells.nuclei`). The image's nuclear level is the 99th percentile of
   haematoxylin in tissue.
3. **Epithelium.** Glandular epithelium is a layer of nuclei with basophilic cytoplasm,
   mucin or goblet cells, evenly coloured: haematoxylin smoothed over a few µm stays high
   across it, or its colour varies little from pixel to pixel. Stroma and lamina propria are
   nuclei scattered on pink: their haematoxylin varies on the scale of a nucleus. The score
   is the smoothed haematoxylin (relative to the nuclear level), less ``texture_weight``
   times its local standard deviation, less a lymphocyte penalty (the share of nuclear
   pixels in clumps smaller than ``lymphocyte_area_um2``). Epithelium is tissue where the
   score exceeds ``threshold`` (below zero, so that pale, evenly coloured goblet cells
   count), where nuclei are near (the share of nuclear pixels within
   ``nuclear_density_um`` above ``min_nuclear_density``: pale stroma, alveolar walls and a
   tinted background stay out) and where the colour is not eosin alone (haematoxylin share
   above ``min_haematoxylin_share``). Fragments smaller than ``min_epithelium_um2`` are dropped.
4. **Filled interior.** What the epithelium encloses (lumen, mucin, goblet cells,
   secretions) belongs to the gland: holes are filled, and so are regions that the
   image border cuts open, when less than ``max_open_share`` of their outline lies on
   the border and they are smaller than ``max_open_lumen_um2``. A region is filled only
   when its mean haematoxylin is below ``max_lumen_haematoxylin`` times the nuclear
   level: lumens hold few nuclei, stroma caught between glands holds many.
   **Crypts** are found whole even where their ring of epithelium is broken: pale
   interiors (haematoxylin smoothed over ``crypt_smoothing_um`` below
   ``crypt_haematoxylin``) that are compact (solidity at least ``crypt_min_solidity``),
   evenly coloured (mean texture below ``crypt_max_texture``) and lined by epithelium (at
   least ``crypt_min_lining`` of a 5 µm band around them), grown by ``crypt_wall_um`` into
   the tissue around them; the holes are then filled again.
5. **Glands.** The 8-connected components of the result, at the input's resolution.
   Glands that touch are one object; glands smaller than ``min_gland_um2`` are dropped
   (stroma and lymphocyte clusters leave small dark specks). Pixels of a gland that are
   not epithelium are its lumen (:attr:`GlandResult.lumen`).

An image without tissue or too small to hold a gland gives an empty result. Every
parameter is in :class:`~tumls_qp.config.GlandConfig`; how each was chosen on the GlaS
training images, and what it scores, is in ``reports/glands.md``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..config import GlandConfig
from ..errors import InvalidInputError
from .features import Feature
from .nuclei import check_mpp, check_rgb, estimate_stains, haematoxylin_od

__all__ = [
    "MPP_RANGE",
    "GLAND_MEASUREMENTS",
    "GlandResult",
    "segment_glands",
    "gland_scores",
    "measure_glands",
    "GLAND_QUPATH_NAMES",
    "GLAND_TISSUE_FEATURES",
    "gland_tissue_features",
]

log = logging.getLogger(__name__)

#: Input pixel sizes (µm/px) the method was designed for: 0.62 µm/px (GlaS, 20x) and
#: 0.25-0.5 µm/px slides. Outside, the image is resampled all the same and a note says so.
MPP_RANGE: tuple[float, float] = (0.1, 2.0)
#: Names of the per-gland measurements of :func:`measure_glands`, in order.
GLAND_MEASUREMENTS: tuple[str, ...] = ("area_um2", "perimeter_um", "circularity", "lumen_fraction")
#: The QuPath measurement (and ``glands.csv`` column) name of each of :data:`GLAND_MEASUREMENTS`.
GLAND_QUPATH_NAMES: dict[str, str] = {"area_um2": "Area um^2", "perimeter_um": "Perimeter um",
                                      "circularity": "Circularity", "lumen_fraction": "Lumen fraction"}
#: Per-tissue gland features (:func:`gland_tissue_features`), pooled over the tissue's representatives.
GLAND_TISSUE_FEATURES: tuple[Feature, ...] = (
    Feature("count", "Glands", "", "number of glands in the tissue's representatives"),
    Feature("density", "Glands per mm^2", "1/mm²", "glands / total area of the representatives in mm²"),
    Feature("area_fraction", "Gland area fraction", "", "share of the representatives' area that is gland"),
    Feature("area_mean", "Gland area mean um^2", "µm²", "mean gland area"),
    Feature("circularity_mean", "Gland circularity mean", "",
            "mean gland circularity (4π area / perimeter²): the shape irregularity, lower for ragged, "
            "elongated or fused glands"),
    Feature("lumen_fraction_mean", "Gland lumen fraction mean", "", "mean share of a gland's area that is lumen"),
)

# An image smaller than this (µm) on either side at the working resolution cannot hold a gland.
_MIN_SIDE_UM = 20.0
# Fewest tissue pixels (at the working resolution) for the image statistics.
_MIN_TISSUE_PX = 64
# Standard deviation (µm) of the light smoothing before the tissue and nucleus thresholds.
_FINE_UM = 0.93
# Width (µm) of the band just outside a crypt interior in which its epithelial lining is measured.
_LINING_UM = 5.0
# Bounds of the factor by which the image's median tissue optical density scales the tissue threshold.
_TISSUE_RATIO = (0.5, 2.0)
# Brightfield: the 95th percentile of luminance is at least this (fluorescence images are dark).
_MIN_BRIGHT_P95 = 120.0
# H&E: both stains absorb green most, so blue >= green in most tissue pixels; brown DAB (IHC)
# inverts that. Below this share of tissue pixels the image is not H&E (real H&E tiles rich in
# red blood cells come down to about 0.4).
_MIN_HE_SHARE = 0.25


@dataclass(frozen=True)
class GlandResult:
    """Glands of a patch and what they were made from.

    Arrays have the input image's height ``H`` and width ``W``.

    Attributes
    ----------
    labels : (H, W) int32 ndarray
        Instance labels: 0 is not gland, glands are numbered 1..n without gaps.
    lumen : (H, W) bool ndarray
        Gland pixels that are not epithelium: lumen, mucin, goblet cells, secretions.
    epithelium : (H, W) bool ndarray
        Pixels of the epithelium found in step 3 (before the interior is filled).
    mpp : float
        Pixel size of the input in µm/px.
    working_mpp : float
        Pixel size the method worked at.
    notes : tuple of str
        What the caller should know: a resampling far from the designed range, an image
        too small or without tissue.
    """

    labels: np.ndarray
    lumen: np.ndarray
    epithelium: np.ndarray
    mpp: float
    working_mpp: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def n_glands(self) -> int:
        """Number of glands."""
        return int(self.labels.max()) if self.labels.size else 0


def _check_cfg(cfg: Any) -> GlandConfig:
    """Check that ``cfg`` is a GlandConfig."""
    if not isinstance(cfg, GlandConfig):
        raise InvalidInputError(f"cfg must be a GlandConfig; got {type(cfg).__name__}")
    return cfg


def _resample_notes(mpp: float, cfg: GlandConfig) -> list[str]:
    """Notes about resampling an image of pixel size ``mpp``."""
    lo, hi = MPP_RANGE
    if mpp > hi:
        return [f"mpp {mpp:g} µm/px is coarser than the {lo:g}-{hi:g} µm/px the method was designed for: the image "
                f"was upsampled to {cfg.working_mpp:g} µm/px, nuclei are not resolved and the glands are unreliable"]
    if mpp < lo:
        return [f"mpp {mpp:g} µm/px is finer than the {lo:g}-{hi:g} µm/px the method was designed for: the image "
                f"was downsampled {cfg.working_mpp / mpp:.0f}x to {cfg.working_mpp:g} µm/px; check that mpp is right"]
    return []


def _not_he(rgb: np.ndarray, tissue: np.ndarray) -> str | None:
    """Why an image does not look like brightfield H&E, or None when it does."""
    luminance = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    p95 = float(np.percentile(luminance, 95))
    if p95 < _MIN_BRIGHT_P95:
        return (f"the image is dark (95th percentile luminance {p95:.0f}/255; brightfield images are above "
                f"{_MIN_BRIGHT_P95:.0f}): it looks like fluorescence or dark-field, not H&E; no gland segmented")
    pixels = rgb[tissue].astype(np.int16)
    share = float((pixels[:, 2] >= pixels[:, 1]).mean()) if len(pixels) else 1.0
    if share < _MIN_HE_SHARE:
        return (f"only {share:.0%} of the tissue pixels are pink or purple (blue >= green; H&E has most of them): "
                "the image does not look H&E-stained (e.g. brown DAB); no gland segmented")
    return None


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area-averaged when shrinking, bilinear when enlarging."""
    shrink = width * height < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _gaussian(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of a float32 image (reflected borders)."""
    return cv2.GaussianBlur(image, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)


def _otsu(values: np.ndarray) -> float:
    """Otsu threshold of 1-D values (their mean when they are all alike)."""
    from skimage.filters import threshold_otsu

    if values.size == 0:
        return 0.0
    return float(threshold_otsu(values)) if np.ptp(values) > 0 else float(values.mean())


def _remove_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Drop 8-connected components of fewer than ``min_px`` pixels."""
    if min_px <= 1 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_px
    keep[0] = False
    return keep[labels]


def gland_scores(rgb: np.ndarray, mpp: float, cfg: GlandConfig = GlandConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Epithelium score and tissue mask of an image at the working resolution (steps 1-3).

    Parameters
    ----------
    rgb : (H, W, 3) uint8 ndarray
        Brightfield H&E image.
    mpp : float
        Its pixel size in µm/px.
    cfg : GlandConfig

    Returns
    -------
    score : (h, w) float32 ndarray
        Smoothed haematoxylin over the image's nuclear level, minus the lymphocyte and
        texture penalties, at ``cfg.working_mpp`` (``h = round(H * mpp / working_mpp)``,
        likewise ``w``). Epithelium is tissue where ``score > cfg.threshold``, near nuclei and
        not eosin alone (module docstring, step 3). All zeros where the image has too little tissue.
    tissue : (h, w) bool ndarray
        Pixels whose mean optical density exceeds the tissue threshold (``cfg.tissue_od``, scaled
        with ``cfg.tissue_reference_od``: module docstring, step 2).
    """
    rgb = check_rgb(rgb)
    mpp = check_mpp(mpp)
    cfg = _check_cfg(cfg)
    scale = mpp / cfg.working_mpp
    height = max(1, int(round(rgb.shape[0] * scale)))
    width = max(1, int(round(rgb.shape[1] * scale)))
    small = _resize(rgb, width, height) if (height, width) != rgb.shape[:2] else rgb
    maps = _scores(small, cfg)
    return maps.score, maps.tissue


@dataclass(frozen=True)
class _Maps:
    """Per-pixel maps of an image at the working resolution (steps 2-3)."""

    score: np.ndarray    # epithelium score: Gaussian haematoxylin less the lymphocyte and texture penalties
    tissue: np.ndarray   # bool: mean optical density above the tissue threshold (_tissue_threshold)
    h: np.ndarray        # haematoxylin over the image's nuclear level
    texture: np.ndarray  # local standard deviation of h
    nuclear_density: np.ndarray  # share of nuclear pixels within cfg.nuclear_density_um
    haematoxylin_share: np.ndarray  # H / (H + E), both smoothed over cfg.smoothing_um


def _tissue_threshold(mean_od: np.ndarray, cfg: GlandConfig) -> float:
    """``cfg.tissue_od`` scaled by the image's median tissue optical density over ``cfg.tissue_reference_od``."""
    inside = mean_od[mean_od > cfg.tissue_od]
    if not cfg.tissue_reference_od or inside.size < _MIN_TISSUE_PX:
        return cfg.tissue_od
    ratio = float(np.median(inside)) / cfg.tissue_reference_od
    return cfg.tissue_od * min(max(ratio, _TISSUE_RATIO[0]), _TISSUE_RATIO[1])


def _scores(rgb: np.ndarray, cfg: GlandConfig) -> _Maps:
    """The maps of steps 2-3 at the working resolution (all zeros where there is too little tissue)."""
    px_per_um = 1.0 / cfg.working_mpp
    od = -np.log10((rgb.astype(np.float32) + 1.0) / 256.0)
    mean_od = _gaussian(od.mean(axis=2), _FINE_UM * px_per_um)
    tissue = mean_od > _tissue_threshold(mean_od, cfg)
    zeros = np.zeros(rgb.shape[:2], dtype=np.float32)
    if np.count_nonzero(tissue) < _MIN_TISSUE_PX:
        return _Maps(zeros, tissue, zeros, zeros, zeros, zeros)
    stains = estimate_stains(rgb, max_deviation_deg=cfg.max_stain_deviation_deg).matrix
    h = haematoxylin_od(rgb, stains)
    level = float(np.percentile(h[tissue], 99))
    if not level > 0:
        return _Maps(zeros, tissue, zeros, zeros, zeros, zeros)
    sigma = cfg.smoothing_um * px_per_um
    h_smooth = _gaussian(h, sigma)
    eosin_smooth = _gaussian(haematoxylin_od(rgb, stains[::-1]), sigma)  # stains swapped: eosin first
    share = h_smooth / (h_smooth + eosin_smooth + 1e-3)
    h /= level
    # Nuclei: Otsu on lightly smoothed haematoxylin of tissue pixels.
    h_fine = _gaussian(h, _FINE_UM * px_per_um)
    nuclei = (h_fine > _otsu(h_fine[tissue][::3])) & tissue
    _, clumps, stats, _ = cv2.connectedComponentsWithStats(nuclei.view(np.uint8), connectivity=8)
    area_um2 = stats[:, cv2.CC_STAT_AREA].astype(np.float32) * cfg.working_mpp ** 2
    small_clump = area_um2 < cfg.lymphocyte_area_um2
    small_clump[0] = False
    window = cfg.lymphocyte_window_um * px_per_um
    share_small = _gaussian(small_clump[clumps].astype(np.float32), window) / (
        _gaussian(nuclei.astype(np.float32), window) + 1e-3)
    # Texture: nuclei scattered on pink stroma or lamina propria make haematoxylin vary on the scale of a
    # nucleus; epithelium (nuclei in a row, basophilic cytoplasm, mucin) is evenly coloured.
    detail = h - _gaussian(h, cfg.texture_detail_um * px_per_um)
    texture = np.sqrt(_gaussian(detail * detail, cfg.texture_window_um * px_per_um))
    score = (_gaussian(h, cfg.smoothing_um * px_per_um) - cfg.lymphocyte_weight * share_small
             - cfg.texture_weight * texture)
    density = _gaussian(nuclei.astype(np.float32), cfg.nuclear_density_um * px_per_um)
    return _Maps(score.astype(np.float32), tissue, h, texture.astype(np.float32), density, share)


def _fill_interior(epithelium: np.ndarray, h: np.ndarray, cfg: GlandConfig) -> np.ndarray:
    """Epithelium plus the pale regions it encloses, alone or with the image border (cut lumens)."""
    max_open_px = cfg.max_open_lumen_um2 / cfg.working_mpp ** 2
    background = ~epithelium
    n, regions = cv2.connectedComponents(background.view(np.uint8), connectivity=4)
    if n <= 1:
        return epithelium.copy()
    edge = np.zeros(epithelium.shape, dtype=bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    on_border = np.bincount(regions[edge & background], minlength=n)
    touching = cv2.dilate(epithelium.view(np.uint8), np.ones((3, 3), np.uint8)).view(bool) & background
    on_epithelium = np.bincount(regions[touching], minlength=n)
    area = np.bincount(regions.ravel(), minlength=n)
    mean_h = np.bincount(regions.ravel(), weights=h.ravel(), minlength=n) / np.maximum(area, 1)
    fill = np.where(on_border > 0,
                    (on_border < cfg.max_open_share * (on_border + on_epithelium)) & (area < max_open_px),
                    on_epithelium > 0) & (mean_h < cfg.max_lumen_haematoxylin)
    fill[0] = False
    return epithelium | fill[regions]


def _crypts(maps: _Maps, epithelium: np.ndarray, cfg: GlandConfig) -> np.ndarray:
    """Crypt interiors lined by epithelium, with a wall of ``crypt_wall_um`` around them."""
    from skimage.measure import regionprops

    px_per_um = 1.0 / cfg.working_mpp
    pale = _gaussian(maps.h, cfg.crypt_smoothing_um * px_per_um) < cfg.crypt_haematoxylin
    n, regions = cv2.connectedComponents(pale.view(np.uint8), connectivity=4)
    keep = np.zeros(n, dtype=bool)
    px_area_um2 = cfg.working_mpp ** 2
    r = max(1, int(round(_LINING_UM * px_per_um)))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    for region in regionprops(regions, intensity_image=maps.texture):
        if not cfg.crypt_min_um2 <= region.area * px_area_um2 <= cfg.crypt_max_um2:
            continue
        if region.solidity < cfg.crypt_min_solidity or region.intensity_mean >= cfg.crypt_max_texture:
            continue
        y0, x0, y1, x1 = region.bbox
        y0, x0 = max(0, y0 - r), max(0, x0 - r)
        y1, x1 = min(regions.shape[0], y1 + r), min(regions.shape[1], x1 + r)
        inside = regions[y0:y1, x0:x1] == region.label
        lining = cv2.dilate(inside.view(np.uint8), disk).view(bool) & ~inside
        if lining.any() and epithelium[y0:y1, x0:x1][lining].mean() >= cfg.crypt_min_lining:
            keep[region.label] = True
    interior = keep[regions]
    if not interior.any():
        return interior
    w = max(1, int(round(cfg.crypt_wall_um * px_per_um)))
    wall = cv2.dilate(interior.view(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * w + 1, 2 * w + 1)))
    return interior | (wall.view(bool) & maps.tissue)


def _back_to_input(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A working-resolution mask at the input's size; bilinear then halved, so outlines are not staircases."""
    return cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) > 0.5


def segment_glands(rgb: np.ndarray, mpp: float, cfg: GlandConfig = GlandConfig()) -> GlandResult:
    """Segment the glands of an H&E image without annotation or training data.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 ndarray
        Brightfield H&E image of any size (e.g. a representative patch, or a GlaS image).
    mpp : float
        Its pixel size in µm/px (0.62 for GlaS; 0.25 at 40x). The image is resampled to
        ``cfg.working_mpp``; outside :data:`MPP_RANGE` a note says so.
    cfg : GlandConfig
        Parameters; see :class:`~tumls_qp.config.GlandConfig`.

    Returns
    -------
    GlandResult
        Instance labels, lumen and epithelium masks at the input's size, and notes. An
        image without tissue, smaller than 20 µm on a side, or that does not look like
        brightfield H&E (dark like fluorescence, or brown like DAB) gives no gland and a
        note that says why.

    Raises
    ------
    InvalidInputError
        When ``rgb`` is not an (H, W, 3) uint8 array, ``mpp`` is not a finite number > 0,
        or ``cfg`` is not a GlandConfig; the message names the parameter and the value.

    Notes
    -----
    The method (module docstring) is deterministic. It assumes brightfield H&E: on other
    stains the haematoxylin it measures, and so the glands, would mean nothing, hence the
    check above.
    """
    rgb = check_rgb(rgb)
    mpp = check_mpp(mpp)
    cfg = _check_cfg(cfg)
    height, width = rgb.shape[:2]
    notes = _resample_notes(mpp, cfg)
    scale = mpp / cfg.working_mpp
    work_h, work_w = max(1, int(round(height * scale))), max(1, int(round(width * scale)))

    def empty(note: str) -> GlandResult:
        blank = np.zeros((height, width), dtype=bool)
        return GlandResult(np.zeros((height, width), dtype=np.int32), blank, blank.copy(), mpp, cfg.working_mpp,
                           tuple(notes + [note]))

    if min(work_h, work_w) * cfg.working_mpp < _MIN_SIDE_UM:
        return empty(f"the image ({width} x {height} px at {mpp:g} µm/px) is smaller than {_MIN_SIDE_UM:g} µm on "
                     "a side: too small to hold a gland")
    small = _resize(rgb, work_w, work_h) if (work_h, work_w) != (height, width) else rgb
    maps = _scores(small, cfg)
    not_he = _not_he(small, maps.tissue)
    if not_he is not None:
        return empty(not_he)
    if np.count_nonzero(maps.tissue) < _MIN_TISSUE_PX:
        return empty("no tissue in the image")

    px_area_um2 = cfg.working_mpp ** 2
    epithelium = ((maps.score > cfg.threshold) & maps.tissue & (maps.nuclear_density > cfg.min_nuclear_density)
                  & (maps.haematoxylin_share > cfg.min_haematoxylin_share))
    epithelium = _remove_small(epithelium, cfg.min_epithelium_um2 / px_area_um2)
    glands = _fill_interior(epithelium, maps.h, cfg)
    glands = _fill_interior(glands | _crypts(maps, epithelium, cfg), maps.h, cfg)
    glands = _remove_small(glands, cfg.min_gland_um2 / px_area_um2)
    epithelium &= glands

    if (work_h, work_w) != (height, width):
        glands = _back_to_input(glands, width, height)
        epithelium = _back_to_input(epithelium, width, height)
    _, labels = cv2.connectedComponents(glands.view(np.uint8), connectivity=8)
    labels = labels.astype(np.int32)
    epithelium &= glands
    return GlandResult(labels, glands & ~epithelium, epithelium, mpp, cfg.working_mpp, tuple(notes))


def measure_glands(result: GlandResult) -> dict[str, np.ndarray]:
    """Area, perimeter, circularity and lumen fraction of every gland.

    Parameters
    ----------
    result : GlandResult
        From :func:`segment_glands`.

    Returns
    -------
    dict of str to (n,) float64 ndarray
        ``label`` (1..n) and the entries of :data:`GLAND_MEASUREMENTS`, one value per gland:

        ==================  ==========================================================
        ``area_um2``        area in µm²
        ``perimeter_um``    outline length in µm (scikit-image's ``perimeter``: a
                            4-connected boundary walk with diagonal steps counted √2)
        ``circularity``     4π area / perimeter², 1 for a disk, lower for elongated or
                            ragged glands; clipped to at most 1 (small objects)
        ``lumen_fraction``  share of the gland's area that is lumen (not epithelium)
        ==================  ==========================================================
    """
    from skimage.measure import regionprops_table

    if not isinstance(result, GlandResult):
        raise InvalidInputError(f"result must be a GlandResult; got {type(result).__name__}")
    n = result.n_glands
    if n == 0:
        return {name: np.zeros(0) for name in ("label",) + GLAND_MEASUREMENTS}
    props = regionprops_table(result.labels, intensity_image=result.lumen.astype(np.float32),
                              properties=("label", "area", "perimeter", "intensity_mean"))
    area_um2 = props["area"] * result.mpp ** 2
    perimeter_um = props["perimeter"] * result.mpp
    with np.errstate(divide="ignore", invalid="ignore"):
        circularity = np.where(perimeter_um > 0, 4 * math.pi * area_um2 / perimeter_um ** 2, 1.0)
    return {
        "label": props["label"].astype(np.float64),
        "area_um2": area_um2.astype(np.float64),
        "perimeter_um": perimeter_um.astype(np.float64),
        "circularity": np.minimum(circularity, 1.0).astype(np.float64),
        "lumen_fraction": props["intensity_mean"].astype(np.float64),
    }


def gland_tissue_features(tables: list[dict[str, np.ndarray]], areas_um2: list[float]) -> dict[str, float]:
    """Pool the glands of a tissue's representatives into the :data:`GLAND_TISSUE_FEATURES`.

    Parameters
    ----------
    tables : list of dict
        One :func:`measure_glands` result per representative.
    areas_um2 : list of float
        The area of each representative in µm² (same order).

    Returns
    -------
    dict of str to float
        One value per :data:`GLAND_TISSUE_FEATURES` name. Without any gland, ``Glands``, the
        density and the area fraction are 0 and the means are NaN.

    Raises
    ------
    InvalidInputError
        When the lists differ in length, are empty, or an area is not > 0.
    """
    if not tables or len(tables) != len(areas_um2):
        raise InvalidInputError(f"tables and areas_um2 must be two lists of the same length >= 1; got "
                                f"{len(tables)} and {len(areas_um2)}")
    if not all(math.isfinite(a) and a > 0 for a in areas_um2):
        raise InvalidInputError(f"areas_um2 must be areas > 0; got {areas_um2!r}")
    column = {name: np.concatenate([np.asarray(t[name], dtype=np.float64) for t in tables])
              for name in GLAND_MEASUREMENTS}
    total = float(sum(areas_um2))
    n = len(column["area_um2"])
    values = {
        "count": float(n),
        "density": n / (total / 1e6),
        "area_fraction": float(column["area_um2"].sum()) / total,
        "area_mean": float(column["area_um2"].mean()) if n else math.nan,
        "circularity_mean": float(column["circularity"].mean()) if n else math.nan,
        "lumen_fraction_mean": float(column["lumen_fraction"].mean()) if n else math.nan,
    }
    return {f.name: values[f.key] for f in GLAND_TISSUE_FEATURES}
