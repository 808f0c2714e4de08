"""Classical nucleus segmentation of H&E tiles (TUMLS sections 3.2 and 4.2), and nucleus polygons.

No machine learning. The steps, each in physical units so that one configuration
serves every magnification:

1. **Denoising.** Achromatic pixels (black-ish regions and grey noise: dirt, pen ink,
   folds, scanner artefacts) absorb all wavelengths alike, unlike haematoxylin and eosin;
   they are found by their small colour range. Pixels whose optical density lies more
   than ``max_off_stain_deg`` off the plane of the two stain vectors (coloured inks and
   dyes that no mix of H and E makes) are noise too. Neither contributes haematoxylin.
   A Gaussian of ``smoothing_um`` then removes pixel noise and chromatin texture.
2. **Stain estimation and deconvolution.** Macenko et al. (2009): the haematoxylin and
   eosin optical-density (OD) vectors of the tile, from a subsample of its tissue pixels.
   Too little tissue, or vectors that do not look like H&E, fall back to reference vectors.
   The haematoxylin concentration of every pixel follows by least squares. The per-tile
   vectors play the role of Macenko's normalisation: the concentrations are in the units
   of a normalised image whatever the scanner's or the lab's colours.
3. **Thresholds.** Multi-class Otsu on the smoothed haematoxylin of tissue pixels: three
   classes (eosin-dominated tissue, tinted tissue, nuclei) give a floor; a two-class Otsu
   computed in blocks of ``threshold_block_um`` gives the nucleus threshold where a block
   holds a clear two-class split (Otsu's effectiveness >= 0.5), and the tile's elsewhere.
4. **Objects.** Holes no larger than a nucleus are filled (pale nucleus centres). A
   vesicular nucleus (dark membrane, pale chromatin) thresholds as a ring that is often open
   where the membrane is faint: a pale region that the ring encloses once gaps of up to
   1.5 µm are bridged, no larger than ``pale_interior_max_um2``, and with the nucleus'
   surround rather than other nuclei beyond the ring, is its interior and is filled too.
   Mask 1: closing then opening; objects smaller than ``min_area_um2``, or not darker
   than the ring around them (brightfield stains absorb light; bright objects on black
   are fluorescence or glare), are dropped.
5. **De-merging (mask 2).** One marker per nucleus: maxima of the scale-normalised
   Laplacian of Gaussian of the haematoxylin over space and over radii from
   ``nucleus_radius_min_um`` to ``nucleus_radius_max_um``, strongest first, a blob
   suppressing those centred within its radius. A marker-controlled watershed floods a
   relief made of the distance to the background (µm) and the haematoxylin (in units of
   its spread inside nuclei), so split lines follow necks and pale gaps; a vesicular nucleus'
   interior counts as dark as the darkest nuclei, so that it is the nucleus' centre and its
   pale chromatin no split line. Basins smaller than a nucleus, or less than 0.5 relief
   units deep below their lowest pass (a uniform band, e.g. a pen stroke), join their
   neighbour, unless shape keeps them apart: both
   at least a smallest nucleus in area, each nearer to an ellipse than the two together
   (touching nuclei make a waisted union), within an object no larger than two of the
   largest nuclei (beyond that, a sheet or a stroke, depth alone decides). Instances larger than
   ``max_area_um2`` are artefacts and leave every mask. Each outline then moves to the
   half-maximum between the nucleus' interior and its surround. Last, an object of twice the
   tile's typical (median) nucleus area or more, which the relief left whole, is cut along
   its distance transform when its parts are on average better ellipses than it is.
6. **Mask 3**: mask 1 smoothed by a median filter of ``median_um``.

Heavy pixel work uses OpenCV (single calls over the whole tile) with float32 arithmetic.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .. import stains
from ..config import NucleiConfig
from ..errors import InvalidInputError

__all__ = [
    "REFERENCE_STAINS",
    "NucleiResult",
    "StainEstimate",
    "check_rgb",
    "check_mpp",
    "estimate_stains",
    "haematoxylin_od",
    "segment_nuclei",
    "labels_to_polygons",
]

log = logging.getLogger(__name__)

#: Reference unit OD vectors of haematoxylin (row 0) and eosin (row 1) in R, G, B order,
#: from Macenko et al. (2009); used when a tile's own estimate is not trustworthy.
REFERENCE_STAINS: np.ndarray = stains.REFERENCE_STAINS.astype(np.float32)
REFERENCE_STAINS.setflags(write=False)

_OD_LUT = stains.OD_LUT
_OD_LUT3 = np.repeat(_OD_LUT[:, None], 3, axis=1).reshape(1, 256, 3)

# A tile's haematoxylin vector is trusted when it lies within this angle of the reference,
# and when the two vectors are at least _MIN_STAIN_ANGLE apart (else the estimate is one colour).
_MAX_STAIN_DEVIATION_DEG = 30.0
_MIN_STAIN_ANGLE_DEG = 10.0
# Pixels used for the tile statistics (stain vectors, Otsu): a regular subsample of about this many.
_STATS_PIXELS = 65536
# Otsu's effectiveness (between-class over total variance) above which a block has two clear classes.
_BIMODAL_EFFECTIVENESS = 0.5
# Macenko et al. (2009): stain vectors are estimated from pixels whose OD norm exceeds this.
_MACENKO_BETA = 0.15
# Depth (relief units: µm of neck, or standard deviations of haematoxylin of pale gap) that a
# watershed basin needs below its lowest pass to stand as a nucleus of its own.
_MIN_BASIN_DEPTH = 0.5
# White: brighter than this in every channel (0-255); achromatic white is background, not noise.
_WHITE_LEVEL = 200
# Outline refinement (_refine_outlines). Optical blur puts the edge of a stained step half-way
# between the levels on either side of it.
_OUTLINE_LEVEL = 0.5
# Interior pixels are those at least this far (µm) inside a nucleus' outline.
_CORE_UM = 0.5
# The surround is the ring from 1 to 2 µm outside the nuclei: past the blurred edge (optics and
# the 0.5 µm denoising), close enough to be the nucleus' own neighbourhood.
_RING_UM = (1.0, 2.0)
# The refined outline is searched within this distance (µm) outside the thresholded one.
_GROW_UM = 1.0
# Fewest samples (0.5 µm apart) for a per-nucleus median.
_MIN_SAMPLES = 5
# Oversized objects (_split_oversized): an object this many times the tile's typical (median)
# nucleus area may hold several nuclei; the typical area needs this many nuclei in the tile.
_OVERSIZED = 2.0
_TYPICAL_MIN_COUNT = 20
# Width (px) of the mosaic in which the oversized objects are flooded together.
_MOSAIC_WIDTH = 512
# Pale nucleus interiors (_rim_interiors): gaps up to twice this radius (µm) in a haematoxylin rim
# are bridged; a pale region so enclosed is an interior when less than _RIM_OUTER_MAX of the ring
# from _RIM_RING_UM[0] to _RIM_RING_UM[1] around it is nuclear (beyond one rim lies the nucleus'
# surround; a gap among crowded nuclei has nuclei all around it).
_RIM_GAP_UM = 0.75
_RIM_RING_UM = (1.5, 3.0)
_RIM_OUTER_MAX = 0.8
# The relief of the watershed sees an interior as dark as this quantile of the haematoxylin inside
# the nuclei: a nucleus centre.
_INTERIOR_QUANTILE = 0.99


@dataclass(frozen=True)
class StainEstimate:
    """Stain vectors of a tile.

    Attributes
    ----------
    matrix : (2, 3) float32 ndarray
        Unit OD vectors of haematoxylin (row 0) and eosin (row 1), R, G, B order.
    source : str
        ``"tile"`` when estimated from the tile (Macenko), ``"reference"`` when the
        reference vectors were used.
    n_pixels : int
        Tissue pixels the estimate was based on (of the subsample).
    """

    matrix: np.ndarray
    source: str
    n_pixels: int


@dataclass(frozen=True)
class NucleiResult:
    """The three nucleus masks of a tile and what they were made from.

    All arrays have the tile's height ``H`` and width ``W`` in pixels.

    Attributes
    ----------
    mask1 : (H, W) bool ndarray
        Nucleus pixels after closing then opening (TUMLS mask 1).
    mask2 : (H, W) int32 ndarray
        Instance labels after de-merging touching nuclei (TUMLS mask 2): 0 is background,
        nuclei are numbered 1..n without gaps. This is the instance output.
    mask3 : (H, W) bool ndarray
        Mask 1 smoothed by a median filter (TUMLS mask 3).
    haematoxylin : (H, W) float32 ndarray
        Haematoxylin concentration in OD units (the least-squares H&E deconvolution with the
        tile's stain vectors), 0 at artefact pixels; not smoothed.
    artefacts : (H, W) bool ndarray
        Pixels the denoising excluded: achromatic (black-ish or grey, not white) or of a
        colour off the plane of the stain vectors.
    stains : StainEstimate
        The stain vectors used.
    threshold : float
        The tile-wide Otsu nucleus threshold on the smoothed haematoxylin, OD units
        (NaN when the tile holds no tissue).
    mpp : float
        Pixel size of the tile in µm/px.
    """

    mask1: np.ndarray
    mask2: np.ndarray
    mask3: np.ndarray
    haematoxylin: np.ndarray
    artefacts: np.ndarray
    stains: StainEstimate
    threshold: float
    mpp: float

    @property
    def n_nuclei(self) -> int:
        """Number of nuclei in mask 2."""
        return int(self.mask2.max()) if self.mask2.size else 0


# --------------------------------------------------------------------------- checks


def check_rgb(rgb: Any, name: str = "rgb") -> np.ndarray:
    """Check that an argument is an (H, W, 3) uint8 image with H, W >= 1; return it C-contiguous.

    Raises
    ------
    InvalidInputError
        Naming ``name`` and the shape and dtype received.
    """
    if not isinstance(rgb, np.ndarray):
        raise InvalidInputError(f"{name} must be an (H, W, 3) uint8 numpy array; got {type(rgb).__name__}")
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise InvalidInputError(f"{name} must be an (H, W, 3) uint8 array with H, W >= 1; "
                                f"got shape {rgb.shape} dtype {rgb.dtype}")
    return np.ascontiguousarray(rgb)


def check_mpp(mpp: Any, name: str = "mpp") -> float:
    """Check that a pixel size is a finite number > 0 (µm/px); return it as float.

    Raises
    ------
    InvalidInputError
        Naming ``name`` and the value received.
    """
    if isinstance(mpp, (bool, np.bool_)) or not isinstance(mpp, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"{name} must be a pixel size in µm/px (a number > 0); got {mpp!r}")
    value = float(mpp)
    if not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"{name} must be a pixel size in µm/px (a finite number > 0); got {mpp!r}")
    return value


def _check_cfg(cfg: Any) -> NucleiConfig:
    """Check that ``cfg`` is a NucleiConfig."""
    if not isinstance(cfg, NucleiConfig):
        raise InvalidInputError(f"cfg must be a NucleiConfig; got {type(cfg).__name__}")
    return cfg


# --------------------------------------------------------------------------- stains


def _subsample_step(height: int, width: int) -> int:
    """Stride that leaves about _STATS_PIXELS pixels of a (height, width) image."""
    return max(1, math.ceil(math.sqrt(height * width / _STATS_PIXELS)))


def _achromatic(rgb: np.ndarray, max_range: float) -> np.ndarray:
    """Pixels whose colour range is below ``max_range`` and that are not white; (H, W) bool."""
    r, g, b = cv2.split(rgb)
    hi = cv2.max(cv2.max(r, g), b)
    lo = cv2.min(cv2.min(r, g), b)
    return (cv2.subtract(hi, lo) < max_range) & (lo < _WHITE_LEVEL)


def _od_norm(od: np.ndarray) -> np.ndarray:
    """Euclidean norm of (N, 3) OD vectors: the "OD intensity" Macenko et al. threshold."""
    return np.sqrt(np.einsum("ij,ij->i", od, od))


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two vectors in degrees."""
    cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def _macenko(od: np.ndarray, alpha: float, min_pixels: int,
             max_deviation_deg: float = _MAX_STAIN_DEVIATION_DEG) -> StainEstimate:
    """Macenko stain vectors from (N, 3) OD samples of tissue; reference vectors when unreliable."""
    n = len(od)
    if n < min_pixels:
        return StainEstimate(REFERENCE_STAINS.copy(), "reference", n)
    od64 = od.astype(np.float64)
    cov = np.cov(od64, rowvar=False)
    if not np.all(np.isfinite(cov)):
        return StainEstimate(REFERENCE_STAINS.copy(), "reference", n)
    _, vecs = np.linalg.eigh(cov)
    plane = vecs[:, [2, 1]]  # the two directions of largest variance
    plane[:, 0] *= np.sign(plane[:, 0].sum()) or 1.0  # OD vectors of stains are positive
    proj = od64 @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100.0 - alpha])
    v1 = plane @ np.array([math.cos(lo), math.sin(lo)])
    v2 = plane @ np.array([math.cos(hi), math.sin(hi)])
    # Haematoxylin absorbs red more than eosin does.
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)
    h = h / np.linalg.norm(h)
    e = e / np.linalg.norm(e)
    ok = (np.all(h > 0) and np.all(e > -0.05)
          and _angle_deg(h, REFERENCE_STAINS[0]) <= max_deviation_deg
          and _angle_deg(e, REFERENCE_STAINS[1]) <= max_deviation_deg
          and _angle_deg(h, e) >= _MIN_STAIN_ANGLE_DEG)
    if not ok:
        log.debug("stain estimate %s / %s does not look like H&E; using the reference vectors", h, e)
        return StainEstimate(REFERENCE_STAINS.copy(), "reference", n)
    return StainEstimate(np.stack([h, np.clip(e, 0, None) / np.linalg.norm(np.clip(e, 0, None))])
                         .astype(np.float32), "tile", n)


def estimate_stains(rgb: np.ndarray, cfg: NucleiConfig = NucleiConfig(),
                    max_deviation_deg: float = _MAX_STAIN_DEVIATION_DEG) -> StainEstimate:
    """Estimate the haematoxylin and eosin OD vectors of a tile (Macenko et al. 2009).

    Parameters
    ----------
    rgb : (H, W, 3) uint8 ndarray
        Brightfield H&E tile.
    cfg : NucleiConfig
        ``achromatic_range``, ``macenko_alpha`` and ``macenko_min_pixels`` are used.
    max_deviation_deg : float
        Largest angle (degrees) between an estimated vector and its reference vector
        for the estimate to be used (30 by default).

    Returns
    -------
    StainEstimate
        Estimated from a regular subsample of about 65,000 pixels, of which the stained
        pixels (OD norm above Macenko's 0.15, not achromatic) count. With fewer than
        ``macenko_min_pixels`` of them, or an estimate more than ``max_deviation_deg``
        from the reference vectors, the reference vectors (:data:`REFERENCE_STAINS`).

    Raises
    ------
    InvalidInputError
        When ``rgb`` is not an (H, W, 3) uint8 array, or ``max_deviation_deg`` is not an
        angle in (0, 90].
    """
    rgb = check_rgb(rgb)
    cfg = _check_cfg(cfg)
    if isinstance(max_deviation_deg, bool) or not isinstance(max_deviation_deg, (int, float)) \
            or not 0 < max_deviation_deg <= 90:
        raise InvalidInputError(f"max_deviation_deg must be an angle in (0, 90] degrees; got {max_deviation_deg!r}")
    step = _subsample_step(*rgb.shape[:2])
    sub = np.ascontiguousarray(rgb[::step, ::step])
    od = _OD_LUT[sub.reshape(-1, 3)]
    keep = (_od_norm(od) > _MACENKO_BETA) & ~_achromatic(sub, cfg.achromatic_range).ravel()
    return _macenko(od[keep], cfg.macenko_alpha, cfg.macenko_min_pixels, max_deviation_deg)


def haematoxylin_od(rgb: np.ndarray, stains: np.ndarray = REFERENCE_STAINS) -> np.ndarray:
    """Haematoxylin concentration of every pixel, by H&E colour deconvolution.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 ndarray
    stains : (2, 3) ndarray
        Unit OD vectors of haematoxylin (row 0) and eosin (row 1), e.g. from
        :func:`estimate_stains`.

    Returns
    -------
    (H, W) float32 ndarray
        Least-squares haematoxylin concentration in OD units, clipped at 0.
    """
    rgb = check_rgb(rgb)
    stains = np.asarray(stains, dtype=np.float64)
    if stains.shape != (2, 3) or not np.all(np.isfinite(stains)):
        raise InvalidInputError(f"stains must be a finite (2, 3) array; got shape {stains.shape}")
    return _deconvolve(rgb, stains, None, 1)[0]


def _deconvolve(rgb: np.ndarray, stains: np.ndarray, max_off_deg: float | None,
                stride: int) -> tuple[np.ndarray, Any]:
    """Haematoxylin (H, W) float32 >= 0, and the pixels whose OD lies more than ``max_off_deg`` off the stains' plane.

    The off-plane test runs on every ``stride``-th pixel and is carried back by nearest
    neighbour: the inks it finds are strokes, far wider than a pixel.
    """
    od = cv2.LUT(rgb, _OD_LUT3)  # (H, W, 3) float32 optical densities
    weights = np.linalg.pinv(stains)[:, 0].astype(np.float32)  # (3,): OD -> haematoxylin
    h = np.maximum(cv2.transform(od, weights[None, :]).reshape(rgb.shape[:2]), 0, dtype=np.float32)
    if max_off_deg is None:
        return h, None
    sampled = np.ascontiguousarray(od[::stride, ::stride])
    normal = np.cross(stains[0], stains[1])
    normal = (normal / np.linalg.norm(normal)).astype(np.float32)
    off = cv2.transform(sampled, normal[None, :]).reshape(sampled.shape[:2])
    norm2 = cv2.transform(cv2.multiply(sampled, sampled), np.ones((1, 3), dtype=np.float32)).reshape(off.shape)
    sin2 = np.float32(math.sin(math.radians(max_off_deg)) ** 2)
    # Stained pixels only (OD norm above Macenko's beta): the colour of glass is noise.
    mask = (off * off > sin2 * norm2) & (norm2 > np.float32(_MACENKO_BETA ** 2))
    if stride > 1:
        mask = cv2.resize(mask.view(np.uint8), (mask.shape[1] * stride, mask.shape[0] * stride),
                          interpolation=cv2.INTER_NEAREST)[: rgb.shape[0], : rgb.shape[1]].view(bool)
    return h, mask


# --------------------------------------------------------------------------- thresholds


def _otsu(values: np.ndarray, bins: int = 256) -> tuple[float, float]:
    """Otsu threshold of 1-D values and its effectiveness (between-class / total variance)."""
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return hi, 0.0
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return _otsu_hist(hist, edges)


def _otsu_hist(hist: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """Otsu threshold (an edge) of a histogram and its effectiveness; (edges[-1], 0) if degenerate."""
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist, dtype=np.float64)
    m0 = np.cumsum(hist * centres, dtype=np.float64)
    total, mean_total = w0[-1], m0[-1]
    if total <= 0:
        return float(edges[-1]), 0.0
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_total * w0 - m0 * total) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0
    k = int(np.argmax(between[:-1]))
    variance = float(np.dot(hist, (centres - mean_total / total) ** 2)) / total
    effectiveness = float(between[k] / (total * total * variance)) if variance > 0 else 0.0
    return float(edges[k + 1]), effectiveness


def _multiotsu_floor(values: np.ndarray) -> float:
    """Lower threshold of a three-class Otsu of the values (tissue classes: eosin, tinted, nuclei)."""
    from skimage.filters import threshold_multiotsu

    if len(np.unique(values[: 4096])) < 3 and len(np.unique(values)) < 3:
        return float(values.min())
    return float(threshold_multiotsu(values, classes=3)[0])


def _threshold_map(smooth: np.ndarray, tissue: np.ndarray, step: int, block_px: int, global_t: float,
                   floor: float) -> np.ndarray | float:
    """Nucleus threshold per pixel: Otsu in blocks where bimodal, ``global_t`` elsewhere, >= ``floor``."""
    height, width = smooth.shape
    if block_px <= 0 or (height <= block_px and width <= block_px):
        return max(global_t, floor)
    ny, nx = max(1, round(height / block_px)), max(1, round(width / block_px))
    ys = np.linspace(0, height, ny + 1).astype(int)
    xs = np.linspace(0, width, nx + 1).astype(int)
    grid = np.full((ny, nx), global_t, dtype=np.float32)
    sub = smooth[::step, ::step]
    # One quantisation of the subsample (128 bins over the tissue's range), one bincount per block.
    lo, hi = float(sub[tissue].min()), float(sub[tissue].max())
    if not hi > lo:
        return max(global_t, floor)
    bins = 128
    edges = np.linspace(lo, hi, bins + 1)
    quantised = np.clip(((sub - lo) * (bins / (hi - lo))).astype(np.int32), 0, bins - 1)
    for i in range(ny):
        r0, r1 = -(-ys[i] // step), -(-ys[i + 1] // step)
        for j in range(nx):
            c0, c1 = -(-xs[j] // step), -(-xs[j + 1] // step)
            block_tissue = tissue[r0:r1, c0:c1]
            count = int(block_tissue.sum())
            if count < 0.2 * block_tissue.size or count < 64:
                continue  # mostly background: no reliable local statistics
            hist = np.bincount(quantised[r0:r1, c0:c1][block_tissue], minlength=bins)
            t, eff = _otsu_hist(hist, edges)
            if eff >= _BIMODAL_EFFECTIVENESS:
                grid[i, j] = t
    grid = np.maximum(grid, floor)
    if ny == 1 and nx == 1:
        return float(grid[0, 0])
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR)


# --------------------------------------------------------------------------- morphology


def _disk(radius_px: float) -> np.ndarray | None:
    """Elliptic structuring element of the given radius in px; None when it would be a single pixel."""
    r = int(round(radius_px))
    if r < 1:
        return None
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _fill_holes(mask: np.ndarray, max_area_px: float) -> np.ndarray:
    """Fill background regions enclosed by ``mask`` that are at most ``max_area_px`` large."""
    # Labels and areas only: OpenCV's bounding-box statistics would cost several times the labelling.
    n, labels = cv2.connectedComponents((~mask).view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    if n <= 1:
        return mask
    fill = np.bincount(labels.ravel(), minlength=n) <= max_area_px
    # Regions that touch the tile's edge may continue beyond it: not holes.
    fill[labels[0]] = fill[labels[-1]] = fill[labels[:, 0]] = fill[labels[:, -1]] = False
    fill[0] = False  # label 0 is the mask itself
    return mask | np.take(fill, labels)


def _rim_interiors(nuclear: np.ndarray, px_per_um: float, max_area_px: float) -> np.ndarray:
    """Pale nucleus interiors: background regions enclosed by one haematoxylin rim; (H, W) bool.

    A vesicular nucleus (dark membrane, pale chromatin, a nucleolus) thresholds as a ring,
    often open where its membrane is faint: the pale interior then leaks into the
    background and the nucleus comes out as fragments of its rim. Here the rim's gaps are
    bridged (a closing of radius ``_RIM_GAP_UM``), and a background region the bridged
    mask encloses is an interior when it is at most ``max_area_px`` large and when less
    than ``_RIM_OUTER_MAX`` of the ring ``_RIM_RING_UM`` around it is nuclear: beyond a
    nucleus' rim lies its surround, whereas a gap among crowded nuclei has nuclei all
    around it. Only the interiors are returned, not the bridges: a gap between two
    neighbouring nuclei stays background. The ring statistics use a grid of samples
    0.5 µm apart.
    """
    gap = _disk(_RIM_GAP_UM * px_per_um)
    closed = cv2.morphologyEx(nuclear.view(np.uint8), cv2.MORPH_CLOSE, gap).view(bool) if gap is not None \
        else nuclear
    # Labels and areas only, as in _fill_holes.
    n, labels = cv2.connectedComponents((~closed).view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    candidate = np.bincount(labels.ravel(), minlength=n) <= max_area_px
    candidate[labels[0]] = candidate[labels[-1]] = candidate[labels[:, 0]] = candidate[labels[:, -1]] = False
    candidate[0] = False  # label 0 is the bridged mask itself
    if not candidate.any():
        return np.zeros_like(nuclear)
    stride = max(1, int(round(0.5 * px_per_um)))
    s_lab = np.ascontiguousarray(labels[::stride, ::stride])
    s_hole = np.take(candidate, s_lab)
    # Each sample's distance to the nearest candidate interior, and which one it is.
    dist, nearest = cv2.distanceTransformWithLabels((~s_hole).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5,
                                                    labelType=cv2.DIST_LABEL_PIXEL)
    owner = np.zeros(int(nearest.max()) + 1, dtype=np.int64)
    owner[nearest[s_hole]] = s_lab[s_hole]
    ring = (dist > _RIM_RING_UM[0] * px_per_um / stride) & (dist <= _RIM_RING_UM[1] * px_per_um / stride)
    of = np.take(owner, nearest[ring])
    total = np.bincount(of, minlength=n)
    inner = np.bincount(of, weights=nuclear[::stride, ::stride][ring], minlength=n)
    candidate &= (total > 0) & (inner < _RIM_OUTER_MAX * total)
    return np.take(candidate, labels)


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected components of a bool mask: count (with background), labels, area of each label (0: 0)."""
    n, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    area = np.bincount(labels.ravel(), minlength=n)
    area[0] = 0
    return n, labels, area


def _absorbs(rgb: np.ndarray, components: np.ndarray, n: int, px_per_um: float) -> np.ndarray:
    """(n,) bool: component darker than the 1 µm ring around it (brightfield stains absorb light).

    Fluorescence-like images (bright objects on black) and objects inside dark artefacts
    fail this. Means are taken on every ``stride``-th pixel: plenty for objects of nucleus size.
    """
    stride = max(1, int(round(0.5 * px_per_um)))
    width = max(1, int(round(px_per_um)))
    sampled = np.ascontiguousarray(components[::stride, ::stride])
    reach = max(1, int(round(width / stride)))
    # Labels up to 2**24 are exact in float32; a ring pixel takes the largest label next to it.
    grown = cv2.dilate(sampled.astype(np.float32), np.ones((2 * reach + 1, 2 * reach + 1), np.uint8))
    comp = sampled.ravel()
    ring = grown.ravel()
    y = cv2.cvtColor(np.ascontiguousarray(rgb[::stride, ::stride]), cv2.COLOR_RGB2GRAY).ravel()
    # Only the pixels of objects and of rings count: a quarter of the image or less.
    in_obj = np.flatnonzero(comp)
    in_ring = np.flatnonzero((ring > 0) & (comp == 0))
    obj_label, ring_label = comp[in_obj], ring[in_ring].astype(np.intp)
    inside_n = np.bincount(obj_label, minlength=n)
    ring_n = np.bincount(ring_label, minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = np.bincount(obj_label, weights=y[in_obj], minlength=n) / inside_n
        around = np.bincount(ring_label, weights=y[in_ring], minlength=n) / ring_n
    # No ring (the object fills the tile) or too small to sample: no evidence against it.
    return ~((inside_n > 0) & (ring_n > 0) & (inside >= around))


def _markers(h_raw: np.ndarray, components: np.ndarray, distance: np.ndarray, r_min_px: float,
             r_max_px: float) -> np.ndarray:
    """(K, 2) row, col of nucleus centres: scale-space LoG blobs of the haematoxylin inside components.

    Blobs are maxima of the scale-normalised Laplacian of Gaussian over space and over
    radii from ``r_min_px`` to ``r_max_px`` (Lindeberg 1998). Strongest first, a blob is kept
    unless its centre lies within the radius of a kept blob (or that blob's centre within
    its own), so two small touching nuclei beat the one large blob that covers both,
    and one large nucleus beats the chromatin spots inside it. A centre must lie deeper
    than ``r_min_px / 2`` inside its component.
    """
    from scipy.spatial import cKDTree

    height, width = h_raw.shape
    sigma_min = max(r_min_px / math.sqrt(2.0), 0.5)
    # Blobs are well sampled with 2.5 px per sigma: work on a reduced image when possible.
    factor = max(1, int(sigma_min // 2.5))
    if height // factor < 3 or width // factor < 3:
        factor = 1
    small = h_raw if factor == 1 else cv2.resize(h_raw, (width // factor, height // factor),
                                                 interpolation=cv2.INTER_AREA)
    n_scales = max(2, int(round(math.log(max(r_max_px / r_min_px, 1.0)) / math.log(math.sqrt(2.0)))) + 1)
    radii = np.geomspace(r_min_px, max(r_max_px, r_min_px), n_scales)
    stack = np.empty((n_scales,) + small.shape, dtype=np.float32)
    blurred, done = small, 0.0
    for k, radius in enumerate(radii):
        s = max(radius / math.sqrt(2.0) / factor, 0.5)
        # Gaussians compose (variances add): each scale blurs the previous one by what is missing.
        step = math.sqrt(max(s * s - done * done, 0.0))
        if step >= 0.3:
            blurred = cv2.GaussianBlur(blurred, (0, 0), step)
        done = s
        stack[k] = cv2.Laplacian(blurred, cv2.CV_32F)
        stack[k] *= -s * s  # scale-normalised, positive on dark-stained (high haematoxylin) blobs
    kernel = np.ones((3, 3), np.uint8)
    spatial = np.stack([cv2.dilate(layer, kernel) for layer in stack])
    neighbourhood = spatial.copy()
    neighbourhood[1:] = np.maximum(neighbourhood[1:], spatial[:-1])
    neighbourhood[:-1] = np.maximum(neighbourhood[:-1], spatial[1:])
    ks, ys, xs = np.unravel_index(np.flatnonzero((stack >= neighbourhood) & (stack > 0)), stack.shape)
    rows = np.minimum(ys * factor + factor // 2, height - 1)
    cols = np.minimum(xs * factor + factor // 2, width - 1)
    deep = (components[rows, cols] > 0) & (distance[rows, cols] >= r_min_px / 2.0)
    ks, rows, cols, response = ks[deep], rows[deep], cols[deep], stack[ks[deep], ys[deep], xs[deep]]
    if len(ks) == 0:
        return np.zeros((0, 2), dtype=np.intp)
    order = np.argsort(-response, kind="stable")
    rows, cols, radius = rows[order], cols[order], radii[ks[order]]
    points = np.column_stack([rows, cols]).astype(np.float64)
    neighbours: list[list[int]] = [[] for _ in range(len(points))]
    for i, j in cKDTree(points).query_pairs(float(radii[-1])):
        neighbours[i].append(j)
        neighbours[j].append(i)
    kept = np.zeros(len(points), dtype=bool)
    suppressed = np.zeros(len(points), dtype=bool)
    for i in range(len(points)):  # greedy, strongest first; candidates are sorted
        if suppressed[i]:
            continue
        kept[i] = True
        for j in neighbours[i]:
            if not kept[j] and math.dist(points[i], points[j]) < max(radius[i], radius[j]):
                suppressed[j] = True
    return np.column_stack([rows[kept], cols[kept]])


def _split(components: np.ndarray, area: np.ndarray, markers: np.ndarray, distance: np.ndarray,
           h_raw: np.ndarray, spread: float, px_per_um: float, min_px: float, factor: int,
           r_min_px: float, max_px: float = math.inf) -> np.ndarray:
    """Instance labels: every component flooded from its candidate nucleus centres, shallow basins merged.

    The relief to flood is low at nucleus centres (far from the background, much
    haematoxylin) and high on necks and pale gaps between touching nuclei: minus the
    distance to the background in µm, minus the haematoxylin (Gaussian of 1 µm) in units
    of its spread inside nuclei. The seeds are the candidate centres of two kinds of
    evidence: the LoG blobs (``markers``: nucleus-sized dark spots) and the regional minima
    of the relief itself (the centres its necks and pale gaps enclose, wherever the blob
    detector put its marker). A blob next to a darker or larger nucleus sits in that
    nucleus' negative LoG surround, which pushes its maximum to its far edge; a seed there
    alone floods only a sliver, and the neighbour takes the rest across the neck. Every
    component is flooded, so that a nucleus whose blob was missed still gets its basin. The
    watershed runs once for all the components, on the image reduced ``factor`` times (a
    split line needs no finer than about 0.5 µm), and the result is carried back to every
    pixel. Then the dynamics decide (``_merge_basins``): a basin smaller than ``min_px`` or
    less than ``_MIN_BASIN_DEPTH`` deep below its lowest pass joins its neighbour, so that
    the many minima of one nucleus' chromatin texture make one nucleus again, unless shape
    keeps the two apart; shape counts only in components of at most ``2 * max_px`` pixels
    (two of the largest nuclei).
    """
    from skimage.morphology import local_minima
    from skimage.segmentation import watershed

    n = len(area)
    if n <= 1:
        return components.copy()
    height, width = components.shape
    small_comp = components[::factor, ::factor]
    h, w = small_comp.shape
    relief = distance[::factor, ::factor] * np.float32(-1.0 / px_per_um)
    if spread > 0:
        h_small = h_raw if factor == 1 else cv2.resize(h_raw, (w, h), interpolation=cv2.INTER_AREA)
        relief -= cv2.GaussianBlur(h_small, (0, 0), max(px_per_um / factor, 0.5)) / np.float32(spread)
    # Seeds of the first kind: the blob markers that stay inside their component once reduced.
    rows, cols = markers[:, 0] // factor, markers[:, 1] // factor
    owner = components[markers[:, 0], markers[:, 1]] if len(markers) else np.zeros(0, np.int32)
    on_own = (owner > 0) & (small_comp[rows, cols] == owner)
    rows, cols, owner = rows[on_own], cols[on_own], owner[on_own]
    # Of the second kind: regional minima of the relief (a plateau is one), unless under a marker.
    minima = local_minima(relief, connectivity=2, allow_borders=True) & (small_comp > 0)
    n_min, minima_labels = cv2.connectedComponents(minima.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    flat = minima_labels.ravel()
    where = np.flatnonzero(flat)
    first = np.zeros(n_min, dtype=np.int64)
    first[flat[where][::-1]] = where[::-1]  # a pixel of each minimum
    free = np.ones(n_min, dtype=bool)
    free[minima_labels[rows, cols]] = False
    free[0] = False
    owner_all = np.concatenate([owner, small_comp.ravel()[first[free]]]).astype(np.int64)
    # Only components with two seeds or more, and room for two of the smallest nuclei to separate, are flooded.
    multi = (np.bincount(owner_all, minlength=n) >= 2) & (area >= 2 * math.pi * r_min_px ** 2)
    multi[0] = False
    if not multi.any():
        return components.copy()
    flooded = multi[owner_all]
    seed_id = np.zeros(len(owner_all), dtype=np.int32)
    seed_id[flooded] = np.arange(1, int(flooded.sum()) + 1, dtype=np.int32)
    seeds = np.zeros((h, w), dtype=np.int32)
    seeds[rows, cols] = seed_id[: len(rows)]
    minimum_id = np.zeros(n_min, dtype=np.int32)
    minimum_id[free] = seed_id[len(rows):]
    at_minima = np.take(minimum_id, minima_labels)
    np.copyto(seeds, at_minima, where=at_minima > 0)
    to_split = multi[small_comp]
    split = watershed(relief, seeds, mask=to_split)
    owner_of = np.concatenate([[0], owner_all[flooded]]).astype(np.int32)
    by_shape = (area <= 2.0 * max_px)[owner_of]
    by_shape[0] = False
    split = _merge_basins(split, relief, owner_of, min_px / (factor * factor), _MIN_BASIN_DEPTH,
                          math.pi * (r_min_px / factor) ** 2, by_shape)

    # Back to full resolution: each pixel takes the basin of its sample, where that basin lies in its component.
    def upsample(a: np.ndarray) -> np.ndarray:
        if factor == 1:
            return a.copy()
        return np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)[:height, :width]

    up = upsample(split)
    # A pixel keeps its sample's basin when that basin lies in the pixel's component.
    matched = (upsample(np.take(owner_of, split)) == components) & (components > 0)
    out = np.where(matched, up + np.int32(n - 1), components)
    # The others: pixels of components not flooded (they keep the component's label), and pixels of
    # flooded components whose sample the reduction put outside it: they take a basin of their
    # sample's 3x3 neighbourhood in the same component (else keep the component's label).
    flat_out = out.ravel()
    idx = np.flatnonzero(~matched & (components > 0))
    comp = components.ravel()[idx]
    idx, comp = idx[np.take(multi, comp)], comp[np.take(multi, comp)]
    if len(idx):
        sr, sc = (idx // width) // factor, (idx % width) // factor
        todo = np.ones(len(idx), dtype=bool)
        for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1)):
            pending = np.flatnonzero(todo)
            if len(pending) == 0:
                break
            candidate = split[np.clip(sr[pending] + dr, 0, h - 1), np.clip(sc[pending] + dc, 0, w - 1)]
            ok = owner_of[candidate] == comp[pending]
            flat_out[idx[pending[ok]]] = candidate[ok] + (n - 1)
            todo[pending[ok]] = False
    return out


def _merge_basins(split: np.ndarray, relief: np.ndarray, owner_of: np.ndarray, min_px: float,
                  min_depth: float, min_part_px: float = math.inf,
                  by_shape: np.ndarray | None = None) -> np.ndarray:
    """Merge watershed basins that are too small or too shallow into a neighbour of the same component.

    A basin's depth is the height of the lowest pass (saddle) on its border above its
    lowest point: two touching nuclei are separated by a neck or a pale gap, a uniform
    band (a pen stroke, a fold) is not. A basin under ``min_px`` pixels or ``min_depth``
    deep joins the neighbour across its lowest pass; where two such basins face each
    other, the shallower (then smaller) one joins the other, and the merged basin is
    judged again in the next round. The pixels are visited once: the rounds work on the
    table of basins and passes.

    Shape is the other evidence (nuclei are near-elliptic): a shallow basin and its
    neighbour stay apart when each is a better ellipse than their union (see
    :func:`_ellipticity`) and both hold at least ``min_part_px`` pixels (the smallest
    nucleus). Two touching nuclei make a waisted union, less elliptic than either; the
    pieces that chromatin texture cuts one nucleus into are less elliptic than the nucleus
    they make together. ``by_shape`` (per basin label, default all) says where shape counts.
    The moments that decide it add up as basins merge.
    """
    n = len(owner_of)
    by_shape = np.ones(n, dtype=bool) if by_shape is None else np.asarray(by_shape, dtype=bool)
    flat = split.ravel()
    inside = np.flatnonzero(flat)
    labels_in = flat[inside]
    area = np.bincount(labels_in, minlength=n).astype(np.float64)
    rows, cols = np.divmod(inside, split.shape[1])
    rows, cols = rows.astype(np.float64), cols.astype(np.float64)
    # Raw moments (1, r, c, r², rc, c²) per basin.
    moments = np.stack([area] + [np.bincount(labels_in, weights=w, minlength=n)
                                 for w in (rows, cols, rows * rows, rows * cols, cols * cols)], axis=1)
    lowest = np.full(n, np.inf)
    # Matching dtypes (intp, float64) keep ufunc.at on its fast path.
    np.minimum.at(lowest, flat[inside].astype(np.intp), relief.ravel()[inside].astype(np.float64))
    sources, targets, heights = [], [], []
    for a, b, ra, rb in ((split[:, :-1], split[:, 1:], relief[:, :-1], relief[:, 1:]),
                         (split[:-1, :], split[1:, :], relief[:-1, :], relief[1:, :])):
        touch = (a != b) & (a > 0) & (b > 0)
        sa, sb = a[touch], b[touch]
        same = owner_of[sa] == owner_of[sb]
        pass_height = np.maximum(ra[touch], rb[touch])[same]
        sources += [sa[same], sb[same]]
        targets += [sb[same], sa[same]]
        heights += [pass_height, pass_height]
    source = np.concatenate(sources).astype(np.int64)
    target = np.concatenate(targets).astype(np.int64)
    height = np.concatenate(heights).astype(np.float64)
    remap = np.arange(n, dtype=np.int64)
    for _ in range(8):
        keep = source != target
        source, target, height = source[keep], target[keep], height[keep]
        if len(source) == 0:
            break
        # The lowest pass of each basin, and the neighbour beyond it.
        order = np.lexsort((height, source))
        first = np.ones(len(order), dtype=bool)
        first[1:] = source[order][1:] != source[order][:-1]
        basin, into, pass_height = source[order][first], target[order][first], height[order][first]
        depth = pass_height - lowest[basin]
        union = _ellipticity(moments[basin] + moments[into])
        apart = (by_shape[basin]
                 & (union < np.minimum(_ellipticity(moments[basin]), _ellipticity(moments[into])))
                 & (np.minimum(area[basin], area[into]) >= min_part_px))
        weak = (area[basin] < min_px) | ((depth < min_depth) & ~apart)
        # A basin only joins a neighbour with a larger (depth, area, label): no cycles.
        key_depth = np.full(n, np.inf)
        key_depth[basin] = depth
        larger = ((key_depth[into] > depth)
                  | ((key_depth[into] == depth) & ((area[into] > area[basin])
                                                   | ((area[into] == area[basin]) & (into > basin)))))
        merge = weak & larger
        if not merge.any():
            break
        step = np.arange(n, dtype=np.int64)
        step[basin[merge]] = into[merge]
        for _ in range(int(math.ceil(math.log2(max(n, 2)))) + 1):  # pointer jumping to the final label
            step = step[step]
        remap = step[remap]
        np.add.at(area, step[basin[merge]], area[basin[merge]])
        np.add.at(moments, step[basin[merge]], moments[basin[merge]])
        np.minimum.at(lowest, step[basin[merge]], lowest[basin[merge]])  # small arrays
        source, target = step[source], step[target]
    return np.take(remap.astype(split.dtype), split)


def _ellipticity(moments: np.ndarray) -> np.ndarray:
    """(K,) how near to a filled ellipse each of K pixel regions is, from its (K, 6) raw moments.

    Area over ``4 pi sqrt(det C)``, C the covariance of the pixel positions (each pixel a
    unit square): 1 for a filled ellipse, the shape of least spread for its area, and
    less for any other shape (two touching equal disks: 0.89; half an ellipse: 0.95).
    """
    m0 = np.maximum(moments[:, 0], 1.0)
    mean_r, mean_c = moments[:, 1] / m0, moments[:, 2] / m0
    var_r = moments[:, 3] / m0 - mean_r * mean_r + 1.0 / 12.0
    var_c = moments[:, 5] / m0 - mean_c * mean_c + 1.0 / 12.0
    cov = moments[:, 4] / m0 - mean_r * mean_c
    return m0 / (4.0 * math.pi * np.sqrt(np.maximum(var_r * var_c - cov * cov, 1e-12)))


def _label_medians(labels: np.ndarray, values: np.ndarray, n: int, lo: float, hi: float,
                   bins: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(n,) median of ``values`` per label, to 1/``bins`` of [lo, hi] (NaN where none), and (n,) count.

    1-D inputs, labels in [0, n). One bincount of (label, bin): no sort.
    """
    count = np.bincount(labels, minlength=n)
    median = np.full(n, np.nan)
    if not hi > lo or len(labels) == 0:
        median[count > 0] = lo
        return median, count
    q = np.clip(((values - lo) * (bins / (hi - lo))).astype(np.int64), 0, bins - 1)
    hist = np.bincount(labels.astype(np.int64) * bins + q, minlength=n * bins).reshape(n, bins)
    below = np.cumsum(hist, axis=1)
    has = count > 0
    k = np.argmax(below >= ((count + 1) // 2)[:, None], axis=1)
    median[has] = lo + (k[has] + 0.5) * ((hi - lo) / bins)
    return median, count


def _refine_outlines(labels: np.ndarray, valid: np.ndarray, h: np.ndarray, artefacts: np.ndarray,
                     px_per_um: float) -> np.ndarray:
    """Move each nucleus' outline to the half-maximum between its interior and its surround.

    A step of stain seen through the microscope is blurred by the optics (and by the
    denoising Gaussian) symmetrically: the true edge of the step is where the blurred
    profile crosses half-way between the levels on either side. A tile-wide threshold
    instead puts the outline of a dark nucleus outside its edge and that of a pale one
    inside. Per nucleus: the interior level is the median haematoxylin at least
    ``_CORE_UM`` inside its outline, the surround level the median in the ring from
    ``_RING_UM[0]`` to ``_RING_UM[1]`` outside every nucleus (the samples nearest to it;
    the tile's ring median where it has too few), and the outline moves to the
    ``_OUTLINE_LEVEL`` crossing: pixels of the nucleus less than ``_CORE_UM`` deep leave it
    when below that level, background pixels within ``_GROW_UM`` of it (and nearer to it
    than to any other nucleus) join it when above. The interior stays whatever its
    level: the pale chromatin of a vesicular nucleus is nuclear. A nucleus not darker than
    its surround keeps its outline. The statistics use a grid of samples 0.5 µm apart.
    """
    n = int(labels.max()) + 1
    if n <= 1:
        return labels
    height, width = labels.shape
    fg = labels > 0
    # Statistics on the sample grid.
    stride = max(1, int(round(0.5 * px_per_um)))
    s_lab = np.ascontiguousarray(labels[::stride, ::stride])
    s_h = np.ascontiguousarray(h[::stride, ::stride])
    s_fg = s_lab > 0
    s_dist, s_px = cv2.distanceTransformWithLabels((~s_fg).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_3,
                                                   labelType=cv2.DIST_LABEL_PIXEL)
    owner = np.zeros(int(s_px.max()) + 1, dtype=np.int32)
    owner[s_px[s_fg]] = s_lab[s_fg]
    s_near = np.take(owner, s_px)
    # The interior: pixels at least _CORE_UM from the background. It stays as it is, split lines
    # between touching nuclei included (the watershed drew those; the background is not there).
    core_disk = _disk(_CORE_UM * px_per_um)
    deep = cv2.erode(fg.view(np.uint8), core_disk).view(bool) if core_disk is not None else fg
    # Interior samples for the statistics: the disk holds their own nucleus only.
    s_disk = _disk(_CORE_UM * px_per_um / stride)
    if s_disk is not None:
        as_float = s_lab.astype(np.float32)  # labels up to 2**24 are exact
        s_deep = (cv2.dilate(as_float, s_disk) == cv2.erode(as_float, s_disk)) & s_fg
    else:
        s_deep = s_fg
    # Per-nucleus statistics on compact ids (the kept nuclei only): 1..m-1, 0 for the rest.
    kept = np.flatnonzero(valid[:n])
    compact = np.zeros(n, dtype=np.int32)
    compact[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    m = len(kept) + 1
    c_lab = np.take(compact, s_lab)
    lo, hi = float(s_h.min()), float(s_h.max())
    core, core_n = _label_medians(c_lab[s_deep], s_h[s_deep], m, lo, hi)
    # A nucleus too small for an interior: the median of all its samples.
    few = core_n < _MIN_SAMPLES
    few[0] = False
    if few.any():
        sel = np.take(few, c_lab)
        whole, _ = _label_medians(c_lab[sel], s_h[sel], m, lo, hi)
        core = np.where(few, whole, core)
    ring_sel = ((s_dist >= _RING_UM[0] * px_per_um / stride) & (s_dist <= _RING_UM[1] * px_per_um / stride)
                & ~artefacts[::stride, ::stride])
    surround, ring_n = _label_medians(np.take(compact, s_near[ring_sel]), s_h[ring_sel], m, lo, hi)
    enough = ring_n >= _MIN_SAMPLES
    enough[0] = False
    # Where a nucleus has too little ring of its own (inside a cluster): the tile's typical surround.
    tile_ring = float(np.median(surround[enough])) if enough.any() else 0.0
    surround = np.where(enough, surround, tile_ring)
    contrast = core - surround
    refine = np.isfinite(contrast) & (contrast > 0)
    level_c = np.where(refine, surround + _OUTLINE_LEVEL * np.where(refine, contrast, 0.0), -np.inf)
    # Unrefined nuclei keep every pixel (-inf); objects to be dropped, and the background, get none (+inf).
    level = np.full(n, np.inf, dtype=np.float32)
    level[kept] = level_c[1:]
    # Candidates: the rim of each nucleus and the band of _GROW_UM around it (to the nearest nucleus).
    grow_disk = _disk(_GROW_UM * px_per_um)
    band = cv2.dilate(fg.view(np.uint8), grow_disk).view(bool) if grow_disk is not None else fg
    idx = np.flatnonzero(band & ~deep)
    out = np.where(deep, labels, 0)
    zone = labels.ravel()[idx]
    outside = np.flatnonzero(zone == 0)
    if len(outside):
        where = idx[outside]
        zone[outside] = s_near[(where // width) // stride, (where % width) // stride]
    out.ravel()[idx] = np.where(h.ravel()[idx] > level[zone], zone, 0)
    return out


def _split_oversized(labels: np.ndarray, area: np.ndarray, min_px: float) -> np.ndarray:
    """Split objects much larger than the tile's typical nucleus where their parts are better ellipses.

    Touching nuclei whose split line the watershed relief did not show (no pale gap, no
    neck deep enough) come out as one object several times the size of the tile's other
    nuclei. The typical size is the median area of the tile's nuclei (with at least
    ``_TYPICAL_MIN_COUNT`` of them), so it adapts to the tissue: large tumour nuclei and
    small lymphocytes alike. An object of at least ``_OVERSIZED`` typical areas is cut
    into ``round(area / typical)`` parts or fewer, by a watershed of its distance
    transform from its deepest points (each the deepest within half a typical radius).
    The cut stands when every part holds at least ``min_px`` pixels and the parts are on
    average nearer to an ellipse than the whole (see :func:`_ellipticity`): touching
    nuclei make a waisted whole, a large single nucleus does not. The new parts take
    the labels after the last one, so labels stay 1..n without gaps. ``area`` holds the
    pixel count of each label (index 0: background).

    The objects to cut are laid side by side in one image and flooded in one watershed
    call (their one-pixel margins keep them apart).
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    nuclei = area[1:][area[1:] > 0]
    if len(nuclei) < _TYPICAL_MIN_COUNT:
        return labels
    typical = float(np.median(nuclei))
    oversized = np.flatnonzero(area >= _OVERSIZED * typical)
    oversized = oversized[oversized > 0]
    if len(oversized) == 0:
        return labels
    separation = max(2, int(round(0.5 * math.sqrt(typical / math.pi))))
    window = np.ones((2 * separation + 1, 2 * separation + 1), np.uint8)
    boxes = ndi.find_objects(labels)
    jobs = []  # (label, box, object with a one-pixel margin, its distance transform, seed rows, seed cols)
    for label in oversized:
        box = boxes[label - 1]
        crop = labels[box]
        obj = np.zeros((crop.shape[0] + 2, crop.shape[1] + 2), dtype=bool)
        obj[1:-1, 1:-1] = crop == label
        depth = cv2.distanceTransform(obj.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
        rows, cols = np.nonzero((depth >= cv2.dilate(depth, window)) & obj)
        order = np.argsort(-depth[rows, cols], kind="stable")
        rows, cols = rows[order], cols[order]
        wanted = int(round(area[label] / typical))
        chosen: list[int] = []
        free = np.ones(len(rows), dtype=bool)
        while len(chosen) < wanted and free.any():  # deepest first, apart from the chosen
            i = int(np.argmax(free))
            chosen.append(i)
            free &= (rows - rows[i]) ** 2 + (cols - cols[i]) ** 2 >= separation ** 2
        if len(chosen) >= 2:
            jobs.append((label, box, obj, depth, rows[chosen], cols[chosen]))
    if not jobs:
        return labels
    # One mosaic of the objects (shelves of up to _MOSAIC_WIDTH px, tallest first), one watershed,
    # one table of part moments.
    at = np.zeros((len(jobs), 2), dtype=np.int64)  # top-left corner of each job in the mosaic
    shelf_top = shelf_height = x = width = 0
    for j in sorted(range(len(jobs)), key=lambda j: -jobs[j][2].shape[0]):
        h, w = jobs[j][2].shape
        if x > 0 and x + w > _MOSAIC_WIDTH:
            shelf_top, x, shelf_height = shelf_top + shelf_height, 0, 0
        at[j] = shelf_top, x
        x += w
        shelf_height, width = max(shelf_height, h), max(width, x)
    relief = np.zeros((shelf_top + shelf_height, width), dtype=np.float32)
    inside = np.zeros(relief.shape, dtype=bool)
    seeds = np.zeros(relief.shape, dtype=np.int32)
    owner = [0]  # the job of each seed (seed 0: none)
    for j, (_, _, obj, depth, rows, cols) in enumerate(jobs):
        (y0, x0), (h, w) = at[j], obj.shape
        relief[y0:y0 + h, x0:x0 + w] = -depth
        inside[y0:y0 + h, x0:x0 + w] = obj
        seeds[rows + y0, cols + x0] = np.arange(len(owner), len(owner) + len(rows), dtype=np.int32)
        owner += [j] * len(rows)
    parts = watershed(relief, seeds, mask=inside)
    k = len(owner)
    flat = parts.ravel()
    where = np.flatnonzero(flat)
    part = flat[where]
    r, c = np.divmod(where, parts.shape[1])
    r, c = r.astype(np.float64), c.astype(np.float64)
    moments = np.stack([np.bincount(part, minlength=k).astype(np.float64)]
                       + [np.bincount(part, weights=v, minlength=k) for v in (r, c, r * r, r * c, c * c)], axis=1)[1:]
    owner_of = np.asarray(owner[1:])
    whole = np.zeros((len(jobs), 6))
    np.add.at(whole, owner_of, moments)
    mean_part = np.bincount(owner_of, weights=_ellipticity(moments)) / np.bincount(owner_of)
    smallest = np.full(len(jobs), np.inf)
    np.minimum.at(smallest, owner_of, moments[:, 0])
    accept = (smallest >= min_px) & (mean_part > _ellipticity(whole))
    if not accept.any():
        return labels
    out = labels.copy()
    next_label = len(area)
    for j in np.flatnonzero(accept):
        _, box, obj, _, rows, _ = jobs[j]
        (y0, x0), (h, w) = at[j], obj.shape
        piece = parts[y0 + 1:y0 + h - 1, x0 + 1:x0 + w - 1]
        first = int(np.flatnonzero(owner_of == j)[0]) + 1  # the job's first seed keeps the label
        target = out[box]
        for seed in range(first + 1, first + len(rows)):
            target[piece == seed] = next_label
            next_label += 1
    return out


def _relabel_by_area(labels: np.ndarray, min_px: float, max_px: float,
                     valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop labels whose area is outside [min_px, max_px] or that are not ``valid``; renumber the rest 1..n.

    Returns the (H, W) int32 labels, the (max label + 1,) bool array of the labels kept, and
    the (n + 1,) area in pixels of each new label (0 for the background).
    """
    area = np.bincount(labels.ravel(), minlength=len(valid))
    keep = (area >= min_px) & (area <= max_px)
    keep[: len(valid)] &= valid[: len(keep)]
    keep[len(valid):] = False
    keep[0] = False
    remap = np.zeros(len(keep), dtype=np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return np.take(remap, labels), keep, np.concatenate([[0], area[keep]])


# --------------------------------------------------------------------------- segmentation


def segment_nuclei(rgb: np.ndarray, mpp: float, cfg: NucleiConfig = NucleiConfig()) -> NucleiResult:
    """Segment the nuclei of an H&E tile without machine learning (TUMLS' three masks).

    Parameters
    ----------
    rgb : (H, W, 3) uint8 ndarray
        Brightfield H&E tile, any size (a tile smaller than a nucleus gives no nuclei).
    mpp : float
        Pixel size of the tile in µm/px (e.g. 0.25 at 40x). Every size in ``cfg`` is in
        µm and is converted with it.
    cfg : NucleiConfig
        Parameters; see :class:`~tumls_qp.config.NucleiConfig`.

    Returns
    -------
    NucleiResult
        ``mask1`` (bool), ``mask2`` (int32 instance labels, the instance output), ``mask3``
        (bool), the haematoxylin channel, the artefact mask and the stain vectors. A tile
        without tissue (blank, white) gives empty masks.

    Raises
    ------
    InvalidInputError
        When ``rgb`` is not an (H, W, 3) uint8 array, ``mpp`` is not a finite number > 0,
        or ``cfg`` is not a NucleiConfig; the message names the parameter and the value.

    Notes
    -----
    The steps are described in the module docstring. The result is deterministic: the
    statistics use a regular subsample of the pixels, not a random one.
    """
    rgb = check_rgb(rgb)
    mpp = check_mpp(mpp)
    cfg = _check_cfg(cfg)
    height, width = rgb.shape[:2]
    px_per_um = 1.0 / mpp
    px_area_um2 = mpp * mpp

    # 1. Denoising: achromatic pixels carry no stain.
    artefacts = _achromatic(rgb, cfg.achromatic_range)

    # 2. Stain vectors from a subsample, then the haematoxylin of every pixel.
    step = _subsample_step(height, width)
    sub = np.ascontiguousarray(rgb[::step, ::step])
    od_sub = _OD_LUT[sub.reshape(-1, 3)]
    clean_sub = ~artefacts[::step, ::step].ravel()
    stains = _macenko(od_sub[(_od_norm(od_sub) > _MACENKO_BETA) & clean_sub], cfg.macenko_alpha,
                      cfg.macenko_min_pixels)
    tissue_sub = (od_sub.mean(axis=1) > cfg.tissue_od) & clean_sub
    h_raw, off_stain = _deconvolve(rgb, stains.matrix.astype(np.float64), cfg.max_off_stain_deg,
                                   max(1, int(round(0.5 * px_per_um))))
    # Colours that no mix of haematoxylin and eosin makes (coloured ink, dyes) are noise too.
    artefacts |= off_stain
    np.copyto(h_raw, 0.0, where=artefacts)
    sigma = cfg.smoothing_um * px_per_um
    h_smooth = cv2.GaussianBlur(h_raw, (0, 0), sigma) if sigma >= 0.3 else h_raw

    empty = NucleiResult(
        mask1=np.zeros((height, width), dtype=bool), mask2=np.zeros((height, width), dtype=np.int32),
        mask3=np.zeros((height, width), dtype=bool), haematoxylin=h_raw, artefacts=artefacts,
        stains=stains, threshold=math.nan, mpp=mpp)
    min_nucleus_px = cfg.min_area_um2 / px_area_um2
    tissue_grid = tissue_sub.reshape(sub.shape[:2])
    # Too little tissue to hold even one nucleus, or nothing to threshold.
    if tissue_grid.sum() * step * step < max(min_nucleus_px, 1.0) or max(height, width) < 3:
        return empty

    # 3. Thresholds on the smoothed haematoxylin of tissue pixels.
    values = h_smooth[::step, ::step][tissue_grid]
    global_t, _ = _otsu(values)
    floor = _multiotsu_floor(values)
    block_px = int(round(cfg.threshold_block_um * px_per_um))
    threshold = _threshold_map(h_smooth, tissue_grid, step, block_px, global_t, floor)
    nuclear = h_smooth > threshold

    # 4. Masks.
    max_nucleus_px = cfg.max_area_um2 / px_area_um2
    # Pale interiors of vesicular nuclei: the interior joins the nucleus, and the watershed
    # below does not cut the nucleus along it.
    interiors = (_rim_interiors(nuclear, px_per_um, cfg.pale_interior_max_um2 / px_area_um2)
                 if cfg.pale_interior_max_um2 > 0 else None)
    nuclear = _fill_holes(nuclear, max_nucleus_px)
    if interiors is not None:
        nuclear |= interiors
    mask = nuclear.view(np.uint8)
    close_k, open_k = _disk(cfg.closing_um * px_per_um), _disk(cfg.opening_um * px_per_um)
    if close_k is not None:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, close_k)
    if open_k is not None:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, open_k)
    n, components, component_area = _components(mask.view(bool))
    # The minimum area applies to the delineated nucleus (below): a small dark nucleus can be
    # smaller than it as thresholded. What the opening leaves is an object to delineate.
    keep = _absorbs(rgb, components, n, px_per_um)
    keep[0] = False
    if not keep[1:].all():
        components = np.take(np.where(keep, np.arange(n, dtype=np.int32), 0), components)
    mask1 = components > 0

    distance = cv2.distanceTransform(mask1.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    markers = _markers(h_raw, components, distance, cfg.nucleus_radius_min_um * px_per_um,
                       cfg.nucleus_radius_max_um * px_per_um)
    inside = h_smooth[::step, ::step][mask1[::step, ::step]]
    spread = float(inside.std()) if inside.size > 1 else 0.0
    # Split lines need no finer than ~0.5 µm: the watershed may run on a reduced image.
    split_factor = max(1, int(round(0.5 * px_per_um)))
    # An interior is a nucleus' centre: the relief sees it as dark as the darkest nuclei, so
    # that it is a basin of its own and the split lines run along the rims around it.
    h_relief = h_raw
    if interiors is not None and interiors.any() and inside.size:
        darkest = np.float32(np.quantile(inside, _INTERIOR_QUANTILE))
        h_relief = np.where(interiors & mask1, np.maximum(h_raw, darkest), h_raw)
    instances = _split(components, component_area, markers, distance, h_relief, spread, px_per_um, min_nucleus_px,
                       split_factor, cfg.nucleus_radius_min_um * px_per_um, max_nucleus_px)
    # Instances larger than a nucleus are artefacts; they are not delineated.
    valid = np.bincount(instances.ravel()) <= max_nucleus_px
    valid[0] = False
    # Mask 2's outlines at the half-maximum of each nucleus' own contrast, then the size limits.
    refined = _refine_outlines(instances, valid, h_smooth, artefacts, px_per_um)
    mask2, survivors, mask2_area = _relabel_by_area(refined, min_nucleus_px, max_nucleus_px, valid)
    mask2 = _split_oversized(mask2, mask2_area, min_nucleus_px)
    mask1 &= np.take(survivors, instances)  # objects that mask 2 drops leave every mask

    median = int(round(cfg.median_um * px_per_um)) | 1
    # The median of a binary image is a majority vote in the window: a box filter does it
    # at any window size. It moves outlines by at most half the window: no new large objects.
    if median >= 3:
        mask3 = cv2.blur(mask1.view(np.uint8) * np.uint8(255), (median, median),
                         borderType=cv2.BORDER_REPLICATE) > 127
    else:
        mask3 = mask1.copy()
    return NucleiResult(mask1=mask1, mask2=mask2, mask3=mask3, haematoxylin=h_raw, artefacts=artefacts,
                        stains=stains, threshold=float(global_t), mpp=mpp)


# --------------------------------------------------------------------------- polygons


def labels_to_polygons(
    labels: np.ndarray,
    *,
    offset: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
    simplify_px: float = 0.5,
) -> list[tuple[int, Any]]:
    """One valid shapely Polygon per labelled object, in the tile's or the slide's pixel frame.

    Parameters
    ----------
    labels : (H, W) integer ndarray
        Instance labels, 0 = background (e.g. ``NucleiResult.mask2``).
    offset : (float, float)
        ``(x0, y0)``: where the tile's top-left corner lies in the output frame, e.g. the
        tile's position in level-0 slide pixels.
    scale : float
        Output pixels per tile pixel, e.g. the downsample of the level the tile was read at
        (2.0 for a tile read at half resolution); > 0.
    simplify_px : float
        Douglas-Peucker tolerance in tile pixels (0: no simplification). The tolerance is
        halved for an object whose area it would change by more than 2%. Half a pixel
        leaves 10-40 vertices per nucleus.

    Returns
    -------
    list of (int, shapely.Polygon)
        ``(label, polygon)`` sorted by label; labels whose polygon is empty after snapping
        (objects smaller than the 0.01 grid) are left out.

    Notes
    -----
    Frame: x to the right, y down, pixel corners at integers, so tile pixel ``(r, c)`` covers
    the square ``[c, c + 1] x [r, r + 1]``; a point ``(x, y)`` of the tile maps to
    ``(x0 + scale * x, y0 + scale * y)``. The outline follows the pixel edges (before
    simplification the area equals the pixel count up to 1/32 px² per corner). Each polygon is
    made valid the way QuPath 0.6/0.7 needs: snapped to a 0.01 grid (``set_precision``),
    ``make_valid``, polygonal parts only, the largest part kept if it split, and checked
    with ``is_valid``.

    Raises
    ------
    InvalidInputError
        When ``labels`` is not a 2-D integer array, or ``offset``, ``scale`` or
        ``simplify_px`` is not finite (``scale`` > 0, ``simplify_px`` >= 0).
    """
    import shapely
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidInputError(f"labels must be a 2-D integer array; got shape {labels.shape} dtype {labels.dtype}")
    try:
        x0, y0 = (float(v) for v in offset)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"offset must be two numbers (x0, y0); got {offset!r}") from exc
    if not (math.isfinite(x0) and math.isfinite(y0)):
        raise InvalidInputError(f"offset must be two finite numbers (x0, y0); got {offset!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)) or not (
            math.isfinite(float(scale)) and float(scale) > 0):
        raise InvalidInputError(f"scale must be a finite number > 0; got {scale!r}")
    if isinstance(simplify_px, bool) or not isinstance(simplify_px, (int, float, np.number)) or not (
            math.isfinite(float(simplify_px)) and float(simplify_px) >= 0):
        raise InvalidInputError(f"simplify_px must be a finite number >= 0; got {simplify_px!r}")
    scale = float(scale)
    if labels.size == 0 or labels.max() <= 0:
        return []

    out: list[tuple[int, Any]] = []
    for index, box in enumerate(ndi.find_objects(np.maximum(labels, 0))):
        if box is None:
            continue
        label = index + 1
        geom = _pixel_outline(labels[box] == label, box[1].start, box[0].start)
        if geom is None:
            continue
        geom = _simplify(geom, simplify_px)
        if scale != 1.0 or x0 != 0.0 or y0 != 0.0:
            geom = shapely.transform(geom, lambda xy: xy * scale + np.array([x0, y0]))
        polygon = _qupath_polygon(geom)
        if polygon is not None:
            out.append((label, polygon))
    return out


def _pixel_outline(mask: np.ndarray, col0: int, row0: int) -> Any:
    """Polygon (with holes) of the pixel squares of a bool crop whose corner is at (col0, row0)."""
    import shapely
    from shapely.geometry import Polygon
    from skimage.measure import find_contours

    # On a twice-upsampled mask the half-height contour runs exactly along the pixel edges,
    # cutting each corner by 1/32 px² only.
    up = np.pad(np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1), 1).astype(np.float32)
    rings = []
    # fully_connected="high": diagonal neighbours belong together, as in 8-connected labels.
    for contour in find_contours(up, 0.5, fully_connected="high"):
        if len(contour) < 4:
            continue
        xs = (contour[:, 1] - 1.0) / 2.0 + 0.25 + col0
        ys = (contour[:, 0] - 1.0) / 2.0 + 0.25 + row0
        ring = Polygon(np.column_stack([xs, ys]))
        if ring.area > 0:
            rings.append(ring)
    if not rings:
        return None
    geom = rings[0]
    for ring in rings[1:]:  # nested rings are holes: the even-odd rule gives the object
        geom = shapely.symmetric_difference(geom, ring)
    return geom


def _simplify(geom: Any, tolerance: float) -> Any:
    """Douglas-Peucker simplification that changes the area by at most 2% (halving the tolerance if needed)."""
    import shapely

    area = geom.area
    while tolerance >= 0.05:
        simple = shapely.simplify(geom, tolerance, preserve_topology=True)
        if abs(simple.area - area) <= 0.02 * area:
            return simple
        tolerance /= 2
    return geom


def _qupath_polygon(geom: Any) -> Any:
    """Snap to 0.01, make valid, keep the largest polygonal part; None when nothing is left."""
    import shapely
    from shapely.geometry import MultiPolygon, Polygon

    geom = shapely.make_valid(shapely.set_precision(geom, 0.01))
    parts = [g for g in shapely.get_parts(geom) if isinstance(g, (Polygon, MultiPolygon)) and not g.is_empty]
    polygons = [p for g in parts for p in shapely.get_parts(g)]
    if not polygons:
        return None
    polygon = max(polygons, key=lambda p: p.area)
    if polygon.is_empty or polygon.area <= 0:
        return None
    assert polygon.is_valid, "a snapped, made-valid polygon must be valid"
    return polygon
