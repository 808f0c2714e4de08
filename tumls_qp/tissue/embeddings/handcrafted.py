"""Hand-crafted tile descriptors: stain-separated colour, texture at two scales, nucleus density.

No training. Each view (an RGB image of a known pixel size) becomes a vector of
interpretable measurements, standardised over the tiles of the run:

- **stain statistics**: each pixel's optical density (OD = -log10((I + 1) / 256)) is
  separated into haematoxylin and eosin concentrations with the reference H&E vectors
  (``tumls_qp.stains.REFERENCE_STAINS``, least squares); per tile, the mean, standard
  deviation and 90th percentile of each stain over tissue pixels, the haematoxylin share
  H / (H + E), and the fraction of white pixels (lumina, alveolar spaces, fat);
- **texture at two scales**: the mean magnitude, over tissue pixels, of difference-of-Gaussians
  band-pass responses of the haematoxylin and eosin images at a cell scale (σ = 2 µm) and a
  tissue architecture scale (σ = 8 µm); the mean size of white spaces and the number of
  small ones (20-400 µm²: goblet-cell mucin, alveoli, small lumina) per mm²;
- **nucleus density**: haematoxylin blobs per mm² of tissue, counted as local maxima of
  the negative Laplacian of Gaussian (σ = 3 µm) that are darker than the tile's median
  haematoxylin by a fixed margin.

The descriptors are centred on their median and divided by a robust standard deviation
(``robust_scale``) over the run's tiles, then clipped at ±5.

All lengths are in µm and are converted with the view's pixel size, so a descriptor
means the same at every magnification.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ...stains import OD_LUT, REFERENCE_UNMIX

__all__ = ["FEATURE_NAMES", "describe_views", "robust_scale"]

#: A pixel is tissue when its mean optical density exceeds this (white glass is below 0.05).
_TISSUE_OD = 0.1
_CELL_SIGMA_UM = 2.0
_TISSUE_SIGMA_UM = 8.0
_NUCLEUS_SIGMA_UM = 3.0
#: Haematoxylin (OD units) by which a blob must exceed the tile's median to count as a nucleus.
_NUCLEUS_MARGIN_OD = 0.15

#: White spaces between these areas (µm²) are counted as small lumina: goblet-cell mucin, alveoli, small glands.
_LUMEN_UM2 = (20.0, 400.0)

FEATURE_NAMES = (
    "H mean", "H sd", "H p90", "E mean", "E sd", "E p90", "H share", "white fraction",
    "H band 2 um", "H band 8 um", "E band 2 um", "E band 8 um", "white space size um", "small lumina per mm2",
    "nuclei per mm2",
)


def _describe(rgb: np.ndarray, mpp: float) -> np.ndarray:
    od = OD_LUT[rgb]
    conc = np.clip(od.reshape(-1, 3) @ REFERENCE_UNMIX, 0.0, None).reshape(rgb.shape[0], rgb.shape[1], 2)
    h, e = conc[..., 0], conc[..., 1]
    tissue = od.mean(axis=2) > _TISSUE_OD
    n_tissue = int(tissue.sum())
    white = ~tissue
    out = np.zeros(len(FEATURE_NAMES), dtype=np.float64)
    if n_tissue:
        ht, et = h[tissue], e[tissue]
        out[0:3] = ht.mean(), ht.std(), np.percentile(ht, 90)
        out[3:6] = et.mean(), et.std(), np.percentile(et, 90)
        out[6] = ht.sum() / max(float(ht.sum() + et.sum()), 1e-6)
        for j, image in enumerate((h, e)):
            for s, sigma_um in enumerate((_CELL_SIGMA_UM, _TISSUE_SIGMA_UM)):
                sigma = sigma_um / mpp
                band = ndi.gaussian_filter(image, sigma / 1.6) - ndi.gaussian_filter(image, sigma * 1.6)
                out[8 + 2 * j + s] = np.abs(band)[tissue].mean()
    out[7] = white.mean()
    labels, n = ndi.label(white)
    if n:
        out[12] = np.sqrt(white.sum() / n) * mpp
        areas = np.bincount(labels.ravel())[1:] * mpp * mpp
        lumina = int(((areas >= _LUMEN_UM2[0]) & (areas <= _LUMEN_UM2[1])).sum())
        out[13] = lumina / (rgb.shape[0] * rgb.shape[1] * (mpp / 1000.0) ** 2)
    log = -ndi.gaussian_laplace(h, _NUCLEUS_SIGMA_UM / mpp)
    peaks = (log == ndi.maximum_filter(log, size=max(3, int(round(2 * _NUCLEUS_SIGMA_UM / mpp)) | 1))) & tissue
    level = float(np.median(h[tissue])) if n_tissue else 0.0
    smooth = ndi.gaussian_filter(h, _NUCLEUS_SIGMA_UM / mpp / 2)
    count = int((peaks & (smooth > level + _NUCLEUS_MARGIN_OD)).sum())
    out[14] = count / max(n_tissue * (mpp / 1000.0) ** 2, 1e-9)
    return out


def describe_views(views: np.ndarray, mpp: float) -> np.ndarray:
    """Raw descriptors of views.

    Parameters
    ----------
    views : (n, p, p, 3) uint8 ndarray
    mpp : float
        Pixel size of the views in µm/px.

    Returns
    -------
    (n, len(FEATURE_NAMES)) float64 ndarray
    """
    return np.stack([_describe(v, mpp) for v in views]) if len(views) else \
        np.zeros((0, len(FEATURE_NAMES)))


def robust_scale(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the median and the interquartile range / 1.349 (a robust standard deviation).

    A column with no interquartile spread falls back to its standard deviation, then to 1.
    """
    x = np.asarray(features, dtype=np.float64)
    centre = np.median(x, axis=0)
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    scale = (q75 - q25) / 1.349
    sd = x.std(axis=0)
    scale = np.where(scale > 1e-12, scale, np.where(sd > 1e-12, sd, 1.0))
    return centre, scale
