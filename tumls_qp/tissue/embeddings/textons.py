"""Texton histograms: the slide's own vocabulary of local H&E structure, counted per tile.

The classic unsupervised texture descriptor (Leung & Malik 2001; Varma & Zisserman 2005),
learned at run time from the slide's own pixels, with no labels and no shipped weights:

1. **Stains.** Each pixel's optical density (OD = -log10((I + 1) / 256)) is separated into
   haematoxylin and eosin concentrations with the reference H&E vectors (least squares, as in
   ``handcrafted``).
2. **Filter bank.** On each stain image, at the scales σ = 2, 4, 8 and 16 µm (nuclei, cell
   groups, glands and crypts, their arrangement): the gradient magnitude and the two
   eigenvalues of the Hessian of Gaussian, each multiplied by σ (resp. σ²) so that scales
   compare. These are the maximum and minimum over orientations of the oriented edge and bar
   filters of the MR8 bank, so the responses do not change when the tissue is rotated. Plus
   the stain image smoothed at the smallest scale (how much haematoxylin and eosin is there).
   26 responses per pixel; every length is in µm and converted with the view's pixel size.
3. **Contrast normalisation** of each pixel's response vector F (Varma & Zisserman):
   F ← F · log(1 + ‖F‖ / 0.03) / ‖F‖, then each response standardised over the run.
4. **Dictionary.** k-means (``N_TEXTONS`` centres) on ``PIXELS_PER_TILE`` random pixels of
   each of at most ``DICTIONARY_TILES`` random tiles of the run: the textons.
5. **Histogram.** Every pixel of a view is assigned to its nearest texton; the tile's vector
   is the square root of the normalised histogram (so that Euclidean distance between tiles
   is the Hellinger distance between their histograms; every vector has unit length).

The design half of the LC25000 tiles chose the scales, the number of textons and the
Hellinger form (``reports/embeddings.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from ...stains import OD_LUT, REFERENCE_UNMIX

__all__ = ["SCALES_UM", "N_TEXTONS", "RESPONSES", "Textons", "fit_textons", "texton_histograms", "pixel_responses"]


#: Filter scales (Gaussian σ) in µm.
SCALES_UM = (2.0, 4.0, 8.0, 16.0)
#: Responses per pixel: per stain, three per scale and the smoothed stain image.
RESPONSES = 2 * (3 * len(SCALES_UM) + 1)
#: Size of the dictionary.
N_TEXTONS = 32
#: Random pixels of each tile that the dictionary learns from.
PIXELS_PER_TILE = 200
#: The dictionary learns from at most this many random tiles of the run (all are described).
DICTIONARY_TILES = 500
#: Contrast normalisation constant (OD units): responses much weaker than this are damped.
_CONTRAST = 0.03
#: Views filtered at once.
_BATCH = 64


@dataclass(frozen=True)
class Textons:
    """A fitted dictionary.

    Attributes
    ----------
    mean, scale : (f,) float32 ndarray
        Standardisation of the contrast-normalised responses (over the run's sampled pixels).
    centres : (N_TEXTONS, f) float32 ndarray
        The textons, in standardised response space.
    """

    mean: np.ndarray
    scale: np.ndarray
    centres: np.ndarray


def _stain_images(views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    od = OD_LUT[views]
    conc = np.clip(od @ REFERENCE_UNMIX, 0.0, None)
    return conc[..., 0], conc[..., 1]


def _bank(images: np.ndarray, mpp: float) -> list[np.ndarray]:
    """The rotation-invariant responses of a (b, p, p) stack of stain images."""
    out = []
    for sigma_um in SCALES_UM:
        s = sigma_um / mpp
        sig = (0.0, s, s)
        gx = ndi.gaussian_filter(images, sig, order=(0, 0, 1))
        gy = ndi.gaussian_filter(images, sig, order=(0, 1, 0))
        gxx = ndi.gaussian_filter(images, sig, order=(0, 0, 2))
        gyy = ndi.gaussian_filter(images, sig, order=(0, 2, 0))
        gxy = ndi.gaussian_filter(images, sig, order=(0, 1, 1))
        mean = (gxx + gyy) / 2
        spread = np.sqrt(((gxx - gyy) / 2) ** 2 + gxy ** 2)
        out += [s * np.hypot(gx, gy), s * s * (mean + spread), s * s * (mean - spread)]
    out.append(ndi.gaussian_filter(images, (0.0, SCALES_UM[0] / mpp, SCALES_UM[0] / mpp)))
    return out


def pixel_responses(views: np.ndarray, mpp: float) -> np.ndarray:
    """Contrast-normalised filter responses of every pixel.

    Parameters
    ----------
    views : (b, p, p, 3) uint8 ndarray
    mpp : float
        Pixel size of the views in µm/px.

    Returns
    -------
    (b, p * p, RESPONSES) float32 ndarray
    """
    h, e = _stain_images(views)
    f = np.stack(_bank(h, mpp) + _bank(e, mpp), axis=-1).reshape(len(views), -1, RESPONSES)
    norm = np.linalg.norm(f, axis=-1, keepdims=True) + 1e-9
    return (f * (np.log1p(norm / _CONTRAST) / norm)).astype(np.float32)


def fit_textons(views: np.ndarray, mpp: float, seed: int) -> Textons:
    """Learn the dictionary from a random sample of the views' pixels (see the module docstring)."""
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    tiles = np.sort(rng.choice(len(views), min(len(views), DICTIONARY_TILES), replace=False))
    samples = []
    for start in range(0, len(tiles), _BATCH):
        for r in pixel_responses(views[tiles[start:start + _BATCH]], mpp):
            samples.append(r[rng.choice(len(r), min(len(r), PIXELS_PER_TILE), replace=False)])
    x = np.concatenate(samples).astype(np.float64)
    mean, sd = x.mean(axis=0), x.std(axis=0)
    scale = np.where(sd > 1e-9, sd, 1.0)
    z = (x - mean) / scale
    n_textons = min(N_TEXTONS, len(np.unique(z.round(6), axis=0)))
    km = KMeans(n_clusters=n_textons, n_init=1, random_state=seed).fit(z)
    centres = np.zeros((N_TEXTONS, z.shape[1]))
    centres[:n_textons] = km.cluster_centers_
    centres[n_textons:] = np.inf  # unused words of a degenerate input: never the nearest
    return Textons(mean.astype(np.float32), scale.astype(np.float32), centres.astype(np.float32))


def texton_histograms(views: np.ndarray, mpp: float, textons: Textons,
                      progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(n, N_TEXTONS) float32 square-root texton frequencies of each view (unit length)."""
    centres = textons.centres.astype(np.float32)
    finite = np.isfinite(centres).all(axis=1)
    c = np.where(finite[:, None], centres, 0.0)
    c_sq = np.where(finite, (c ** 2).sum(axis=1), np.inf)
    out = np.zeros((len(views), len(centres)), np.float32)
    for start in range(0, len(views), _BATCH):
        z = (pixel_responses(views[start:start + _BATCH], mpp) - textons.mean) / textons.scale
        nearest = np.argmin(c_sq - 2.0 * (z @ c.T), axis=-1)
        for i, words in enumerate(nearest):
            out[start + i] = np.bincount(words, minlength=len(centres)) / len(words)
        if progress is not None:
            progress(min(start + _BATCH, len(views)), len(views))
    return np.sqrt(out)
