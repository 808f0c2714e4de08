"""Optical density and the reference H&E stain vectors, shared by every stage that separates stains."""

from __future__ import annotations

import numpy as np

__all__ = ["OD_LUT", "REFERENCE_STAINS", "REFERENCE_UNMIX"]

#: Reference unit OD vectors of haematoxylin (row 0) and eosin (row 1) in R, G, B order,
#: from Macenko et al. (2009).
REFERENCE_STAINS: np.ndarray = np.array([[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]], dtype=np.float64)
REFERENCE_STAINS.setflags(write=False)

#: Optical density of each 8-bit intensity: OD = -log10((I + 1) / 256), so 255 -> 0 and 0 -> 2.41.
OD_LUT: np.ndarray = np.log10(256.0 / (np.arange(256, dtype=np.float64) + 1.0)).astype(np.float32)
OD_LUT.setflags(write=False)

#: (3, 2) least-squares map from an OD triple to (H, E) concentrations with the reference vectors.
REFERENCE_UNMIX: np.ndarray = np.linalg.pinv(REFERENCE_STAINS).astype(np.float32)
REFERENCE_UNMIX.setflags(write=False)
