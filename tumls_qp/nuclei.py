"""Classical nucleus segmentation of H&E tiles (TUMLS sections 3.2 and 4.2), and nucleus polygons.

No machine learning. The steps, each in physical units so that one configuration
serves every magnification:

1. **Denoising.** Achromatic pixels (black-ish regions and grey noise: dirt, pen ink,
   folds, scanner artefacts) absorb all wavelengths alike, unlike haematoxylin and eosin;
   they are found by their small colour range and contribute no haematoxylin. A Gaussian
   of ``smoothing_um`` then removes pixel noise and chromatin texture.
2. **Stain estimation and deconvolution.** Macenko et al. (2009): the haematoxylin and
   eosin optical-density (OD) vectors of the tile, from a subsample of its tissue pixels.
   Too little tissue, or vectors that do not look like H&E, fall back to reference vectors.
   The haematoxylin concentration of every pixel follows by least squares. The per-tile
   vectors play the role of Macenko's normalisation: the concentrations are in the units
   of a normalised image whatever the scanner's or the lab's colours.
3. **Thresholds.** Multi-class Otsu on the haematoxylin of tissue pixels: three classes
   (eosin-dominated tissue, tinted tissue, nuclei) give a floor; a two-class Otsu
   computed in blocks of ``threshold_block_um`` gives the nucleus threshold where a block
   holds a clear two-class split (Otsu's effectiveness >= 0.5), and the tile's otherwise.
4. **Masks.** Holes no larger than a nucleus are filled (pale nucleus centres).
   Mask 1: closing then opening. Mask 2: de-merging of touching nuclei by a
   marker-controlled watershed; one marker per haematoxylin blob (Laplacian of Gaussian
   at the nucleus radius, markers at least ``min_spacing_um`` apart), flooding a relief
   that combines the distance to the background and the haematoxylin. Mask 3: median
   filter of mask 1. Objects outside ``[min_area_um2, max_area_um2]`` are dropped from
   all three masks: a larger "nucleus" is an artefact.

Heavy pixel work uses OpenCV (single calls over the whole tile) with float32 arithmetic.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .config import NucleiConfig
from .errors import InvalidInputError

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
REFERENCE_STAINS: np.ndarray = np.array([[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]], dtype=np.float32)
REFERENCE_STAINS.setflags(write=False)

# Optical density of 8-bit intensities: OD = -log10((I + 1) / 256), so 255 -> 0 and 0 -> 2.41.
_OD_LUT = np.log10(256.0 / (np.arange(256, dtype=np.float64) + 1.0)).astype(np.float32)

# A tile's haematoxylin vector is trusted when it lies within this angle of the reference,
# and when the two vectors are at least _MIN_STAIN_ANGLE apart (else the estimate is one colour).
_MAX_STAIN_DEVIATION_DEG = 30.0
_MIN_STAIN_ANGLE_DEG = 10.0
# Pixels used for the tile statistics (stain vectors, Otsu): a regular subsample of about this many.
_STATS_PIXELS = 65536
# Otsu's effectiveness (between-class over total variance) above which a block has two clear classes.
_BIMODAL_EFFECTIVENESS = 0.5
# Macenko et al. (2009): stain vectors are estimated from pixels whose OD exceeds this in every channel.
_MACENKO_BETA = 0.15
# White: brighter than this in every channel (0-255); achromatic white is background, not noise.
_WHITE_LEVEL = 200


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
        tile's stain vectors), 0 at achromatic (artefact) pixels; not smoothed.
    artefacts : (H, W) bool ndarray
        Achromatic pixels (black-ish or grey, not white) that the denoising excluded.
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
    return max(1, int(math.sqrt(height * width / _STATS_PIXELS)))


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


def _macenko(od: np.ndarray, alpha: float, min_pixels: int) -> StainEstimate:
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
          and _angle_deg(h, REFERENCE_STAINS[0]) <= _MAX_STAIN_DEVIATION_DEG
          and _angle_deg(e, REFERENCE_STAINS[1]) <= _MAX_STAIN_DEVIATION_DEG
          and _angle_deg(h, e) >= _MIN_STAIN_ANGLE_DEG)
    if not ok:
        log.debug("stain estimate %s / %s does not look like H&E; using the reference vectors", h, e)
        return StainEstimate(REFERENCE_STAINS.copy(), "reference", n)
    return StainEstimate(np.stack([h, np.clip(e, 0, None) / np.linalg.norm(np.clip(e, 0, None))])
                         .astype(np.float32), "tile", n)


def estimate_stains(rgb: np.ndarray, cfg: NucleiConfig = NucleiConfig()) -> StainEstimate:
    """Estimate the haematoxylin and eosin OD vectors of a tile (Macenko et al. 2009).

    Parameters
    ----------
    rgb : (H, W, 3) uint8 ndarray
        Brightfield H&E tile.
    cfg : NucleiConfig
        ``achromatic_range``, ``macenko_alpha`` and ``macenko_min_pixels`` are used.

    Returns
    -------
    StainEstimate
        Estimated from a regular subsample of about 65,000 pixels, of which the stained
        pixels (OD above 0.15 in every channel, as Macenko et al., and not achromatic) count. With fewer
        than ``macenko_min_pixels`` of them, or an estimate more than 30° from the
        reference vectors, the reference vectors (:data:`REFERENCE_STAINS`).

    Raises
    ------
    InvalidInputError
        When ``rgb`` is not an (H, W, 3) uint8 array.
    """
    rgb = check_rgb(rgb)
    cfg = _check_cfg(cfg)
    step = _subsample_step(*rgb.shape[:2])
    sub = np.ascontiguousarray(rgb[::step, ::step])
    od = _OD_LUT[sub.reshape(-1, 3)]
    keep = (_od_norm(od) > _MACENKO_BETA) & ~_achromatic(sub, cfg.achromatic_range).ravel()
    return _macenko(od[keep], cfg.macenko_alpha, cfg.macenko_min_pixels)


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
    weights = np.linalg.pinv(stains)[:, 0]  # (3,): OD -> haematoxylin
    # One pass: a float LUT per channel already multiplied by its weight, then a channel sum.
    lut = (_OD_LUT[:, None] * weights[None, :].astype(np.float32)).reshape(1, 256, 3)
    weighted = cv2.LUT(rgb, lut)
    h = cv2.transform(weighted, np.ones((1, 3), dtype=np.float32))
    return np.maximum(h.reshape(rgb.shape[:2]), 0, dtype=np.float32)


# --------------------------------------------------------------------------- thresholds


def _otsu(values: np.ndarray, bins: int = 256) -> tuple[float, float]:
    """Otsu threshold of 1-D values and its effectiveness (between-class / total variance)."""
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return hi, 0.0
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist, dtype=np.float64)
    m0 = np.cumsum(hist * centres, dtype=np.float64)
    total, mean_total = w0[-1], m0[-1]
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_total * w0 - m0 * total) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0
    k = int(np.argmax(between[:-1]))
    variance = float(np.average((centres - mean_total / total) ** 2, weights=hist))
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
    sub, sub_tissue = smooth[::step, ::step], tissue
    for i in range(ny):
        r0, r1 = -(-ys[i] // step), -(-ys[i + 1] // step)
        for j in range(nx):
            c0, c1 = -(-xs[j] // step), -(-xs[j + 1] // step)
            block_tissue = sub_tissue[r0:r1, c0:c1]
            if block_tissue.sum() < 0.2 * block_tissue.size or block_tissue.sum() < 64:
                continue  # mostly background: no reliable local statistics
            t, eff = _otsu(sub[r0:r1, c0:c1][block_tissue], bins=128)
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
    n, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).view(np.uint8), connectivity=4,
                                                           ltype=cv2.CV_32S)
    if n <= 1:
        return mask
    height, width = mask.shape
    x, y, w, h, area = (stats[:, i] for i in range(5))
    inside = (x > 0) & (y > 0) & (x + w < width) & (y + h < height)
    fill = inside & (area <= max_area_px)
    fill[0] = False  # label 0 is the mask itself
    return mask | fill[labels]


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected components of a bool mask: count (with background), labels, stats."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8,
                                                           ltype=cv2.CV_32S)
    return n, labels, stats


def _absorbs(rgb: np.ndarray, components: np.ndarray, n: int, px_per_um: float) -> np.ndarray:
    """(n,) bool: component darker than the 1 µm ring around it (brightfield stains absorb light).

    Fluorescence-like images (bright objects on black) and objects inside dark artefacts
    fail this. Means are taken on every ``stride``-th pixel: plenty for objects of nucleus size.
    """
    stride = max(1, int(px_per_um // 2))
    width = max(1, int(round(px_per_um)))
    luma = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    # Labels up to 2**24 are exact in float32; the ring pixel takes the largest label next to it.
    grown = cv2.dilate(components.astype(np.float32), np.ones((2 * width + 1, 2 * width + 1), np.uint8))
    comp = components[::stride, ::stride].ravel()
    ring = grown[::stride, ::stride].ravel().astype(np.int32)
    ring[comp > 0] = 0
    y = luma[::stride, ::stride].ravel().astype(np.float64)
    inside_n = np.bincount(comp, minlength=n)
    ring_n = np.bincount(ring, minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = np.bincount(comp, weights=y, minlength=n) / inside_n
        around = np.bincount(ring, weights=y, minlength=n) / ring_n
    # No ring (the object fills the tile) or too small to sample: no evidence against it.
    return ~((inside_n > 0) & (ring_n > 0) & (inside >= around))


def _markers(h_raw: np.ndarray, components: np.ndarray, radius_px: float, spacing_px: float) -> np.ndarray:
    """(K, 2) row, col of haematoxylin blob centres inside components (LoG maxima at the nucleus scale)."""
    sigma = max(radius_px / math.sqrt(2.0), 0.5)
    height, width = h_raw.shape
    # A blob of this scale is well sampled with 3 px per sigma: work on a reduced image when possible.
    factor = max(1, int(sigma // 3))
    if height // factor < 3 or width // factor < 3:
        factor = 1
    small = h_raw if factor == 1 else cv2.resize(h_raw, (width // factor, height // factor),
                                                 interpolation=cv2.INTER_AREA)
    blob = -cv2.Laplacian(cv2.GaussianBlur(small, (0, 0), sigma / factor), cv2.CV_32F)
    size = 2 * max(1, int(round(spacing_px / factor))) + 1
    peaks = (blob >= cv2.dilate(blob, np.ones((size, size), np.uint8))) & (blob > 0)
    rows, cols = np.nonzero(peaks)
    if len(rows) == 0:
        return np.zeros((0, 2), dtype=np.intp)
    # A plateau gives several equal maxima side by side: keep one per 8-connected group.
    _, groups = cv2.connectedComponents(peaks.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    _, first = np.unique(groups[rows, cols], return_index=True)
    rows = np.minimum(rows[first] * factor + factor // 2, height - 1)
    cols = np.minimum(cols[first] * factor + factor // 2, width - 1)
    inside = components[rows, cols] > 0
    return np.stack([rows[inside], cols[inside]], axis=1)


def _split(components: np.ndarray, stats: np.ndarray, markers: np.ndarray, relief: np.ndarray) -> np.ndarray:
    """Instance labels: components with >= 2 markers split by a marker-controlled watershed."""
    from skimage.segmentation import watershed

    n = len(stats)
    comp_of_marker = components[markers[:, 0], markers[:, 1]] if len(markers) else np.zeros(0, np.int32)
    counts = np.bincount(comp_of_marker, minlength=n)
    labels = components.copy()
    next_label = n
    for comp in np.nonzero(counts >= 2)[0]:
        if comp == 0:
            continue
        x, y, w, h = (int(v) for v in stats[comp, :4])
        window = components[y:y + h, x:x + w] == comp
        seeds = np.zeros((h, w), dtype=np.int32)
        own = markers[comp_of_marker == comp]
        seeds[own[:, 0] - y, own[:, 1] - x] = np.arange(next_label, next_label + len(own), dtype=np.int32)
        split = watershed(relief[y:y + h, x:x + w], seeds, mask=window)
        target = labels[y:y + h, x:x + w]
        target[window] = split[window]
        next_label += len(own)
    return labels


def _relabel_by_area(labels: np.ndarray, min_px: float, max_px: float) -> np.ndarray:
    """Drop labels whose area is outside [min_px, max_px]; renumber the rest 1..n (int32)."""
    if labels.size == 0:
        return labels.astype(np.int32)
    area = np.bincount(labels.ravel())
    keep = (area >= min_px) & (area <= max_px)
    keep[0] = False
    remap = np.zeros(len(area), dtype=np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return remap[labels]


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
    h_raw = haematoxylin_od(rgb, stains.matrix)
    h_raw[artefacts] = 0.0
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
    nuclear = _fill_holes(nuclear, max_nucleus_px)
    mask = nuclear.view(np.uint8)
    close_k, open_k = _disk(cfg.closing_um * px_per_um), _disk(cfg.opening_um * px_per_um)
    if close_k is not None:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, close_k)
    if open_k is not None:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, open_k)
    n, components, stats = _components(mask.view(bool))
    keep = stats[:, cv2.CC_STAT_AREA] >= min_nucleus_px
    keep &= _absorbs(rgb, components, n, px_per_um)
    keep[0] = False
    mask1 = keep[components]
    components = np.where(mask1, components, 0)

    markers = _markers(h_raw, components, cfg.nucleus_radius_um * px_per_um, cfg.min_spacing_um * px_per_um)
    distance = cv2.distanceTransform(mask1.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    inside = h_smooth[mask1]
    spread = float(inside.std()) if inside.size > 1 else 0.0
    # Relief to flood: low at nucleus centres (far from background, much haematoxylin),
    # high on necks and pale gaps between touching nuclei. Both terms are unit-free.
    relief = -distance * np.float32(mpp)
    if spread > 0:
        relief -= cv2.GaussianBlur(h_raw, (0, 0), max(px_per_um, 0.5)) / np.float32(spread)
    mask2 = _relabel_by_area(_split(components, stats, markers, relief), min_nucleus_px, max_nucleus_px)
    mask1 &= mask2 > 0  # objects dropped as too small or too large leave every mask

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
