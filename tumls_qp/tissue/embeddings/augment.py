"""Histology augmentations on batches of views, in plain torch (no torchvision).

Each call draws, per image, an independent random view of it (the two views of a tile
in contrastive learning are two calls):

- **geometry**: a crop of ``crop_scale`` of the view's side (scale jitter), rotated by a
  multiple of 90° and mirrored with probability 1/2, resampled to ``out_px`` with bilinear
  interpolation (``grid_sample`` with reflection at the borders);
- **stain jitter in optical-density space** (Tellez et al., 2018): OD = -log10((I + 1) / 256)
  is separated into haematoxylin, eosin and a residual with the reference H&E vectors; each
  stain's concentration is scaled by ``1 + U(-stain_scale, stain_scale)`` and shifted by
  ``U(-stain_shift, stain_shift)`` OD, then the image is rebuilt. This changes the staining
  of a slide without changing where the stains are;
- **blur**: with probability ``blur_p``, a Gaussian of σ ∈ [0.1, ``blur_sigma_px``] px
  (focus and scanner differences).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ...stains import REFERENCE_STAINS

__all__ = ["Augmentation", "augment"]

_STAINS = torch.from_numpy(REFERENCE_STAINS.astype(np.float32))
_LN10 = math.log(10.0)


@dataclass(frozen=True)
class Augmentation:
    """Strength of each augmentation (defaults: the values used by the ``contrastive`` method)."""

    out_px: int = 64
    crop_scale: tuple[float, float] = (0.6, 1.0)
    stain_scale: float = 0.3
    stain_shift: float = 0.05
    blur_p: float = 0.5
    blur_sigma_px: float = 1.0


def _geometry(x: torch.Tensor, aug: Augmentation, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    lo, hi = aug.crop_scale
    scale = lo + (hi - lo) * torch.rand(n, generator=g)
    shift = (1 - scale)[:, None] * (2 * torch.rand(n, 2, generator=g) - 1)
    quarter = torch.randint(0, 4, (n,), generator=g).float() * (math.pi / 2)
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(quarter).round(), torch.sin(quarter).round()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * scale * flip
    theta[:, 0, 1] = -sin * scale
    theta[:, 1, 0] = sin * scale * flip
    theta[:, 1, 1] = cos * scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.device), [n, 3, aug.out_px, aug.out_px], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _stain(x: torch.Tensor, aug: Augmentation, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    stains = _STAINS.to(x.device)
    od = -torch.log10((x * 255.0 + 1.0) / 256.0)  # (n, 3, h, w)
    flat = od.flatten(2)  # (n, 3, hw)
    conc = torch.linalg.pinv(stains).T.to(x.device) @ flat  # (n, 2, hw): (2, 3) @ (n, 3, hw)
    residual = flat - stains.T @ conc
    a = (1 + aug.stain_scale * (2 * torch.rand(n, 2, 1, generator=g) - 1)).to(x.device)
    b = (aug.stain_shift * (2 * torch.rand(n, 2, 1, generator=g) - 1)).to(x.device)
    jittered = stains.T @ (conc * a + b) + residual
    rgb = (256.0 * torch.exp(-_LN10 * jittered) - 1.0) / 255.0
    return rgb.clamp(0.0, 1.0).view_as(x)


def _blur(x: torch.Tensor, aug: Augmentation, g: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    apply = torch.rand(n, generator=g) < aug.blur_p
    if not bool(apply.any()):
        return x
    sigma = 0.1 + (aug.blur_sigma_px - 0.1) * torch.rand(n, generator=g)
    radius = max(1, int(math.ceil(2 * aug.blur_sigma_px)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    identity = torch.zeros_like(kernel)
    identity[:, radius] = 1.0
    kernel = torch.where(apply[:, None], kernel, identity).to(x.device)  # (n, taps)
    c = x.shape[1]
    weight = kernel.repeat_interleave(c, dim=0)  # (n*c, taps)
    y = x.reshape(1, n * c, *x.shape[2:])
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), weight[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), weight[:, None, :, None], groups=n * c)
    return y.view_as(x)


def augment(x: torch.Tensor, aug: Augmentation, generator: torch.Generator) -> torch.Tensor:
    """A random augmented view of each image of ``x`` ((n, 3, p, p) in [0, 1]); (n, 3, out_px, out_px)."""
    x = _geometry(x, aug, generator)
    x = _stain(x, aug, generator)
    return _blur(x, aug, generator)
