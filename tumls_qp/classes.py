"""Names and colours of the classes tumls-qp gives to QuPath, the report and the server.

One palette for every class tumls-qp colours (tissues, seeded and dictionary classes that
come without a colour, prototype clusters): :func:`class_colour`. Its first 12 colours are
Paul Tol's "bright" and "muted" qualitative schemes, chosen to stay distinct for colour-blind
readers; further classes get golden-angle hues, so that up to 50 prototype clusters stay
apart.
"""

from __future__ import annotations

import colorsys
from typing import Any, Sequence

import numpy as np

from .errors import InvalidInputError

__all__ = ["class_colour", "tissue_class_name", "check_class_names", "check_colour", "NUCLEUS_CLASS",
           "NUCLEUS_COLOUR"]

_PALETTE: tuple[tuple[int, int, int], ...] = (
    (68, 119, 170),   # blue
    (238, 102, 119),  # red
    (34, 136, 51),    # green
    (204, 187, 68),   # yellow
    (102, 204, 238),  # cyan
    (170, 51, 119),   # purple
    (136, 34, 85),    # wine
    (153, 153, 51),   # olive
    (51, 34, 136),    # indigo
    (68, 170, 153),   # teal
    (221, 204, 119),  # sand
    (187, 187, 187),  # grey
)
_GOLDEN_ANGLE = 0.618033988749895

NUCLEUS_CLASS = "Nucleus"
NUCLEUS_COLOUR = (255, 190, 0)


def class_colour(index: int) -> tuple[int, int, int]:
    """RGB colour of the ``index``-th class (0-based): tissue ``index + 1``, or a user's class without a colour."""
    if index < len(_PALETTE):
        return _PALETTE[index]
    r, g, b = colorsys.hsv_to_rgb((index * _GOLDEN_ANGLE) % 1.0, 0.65, 0.9)
    return int(r * 255), int(g * 255), int(b * 255)


def tissue_class_name(tissue: int) -> str:
    """QuPath class of 0-based tissue ``tissue``: "Tissue 1", "Tissue 2", ..."""
    return f"Tissue {tissue + 1}"


def check_class_names(names: Sequence[str]) -> list[str]:
    """Return ``names`` as a list after checking they are usable QuPath class names.

    Raises
    ------
    InvalidInputError
        A name is empty, not a string, contains ':' (QuPath splits derived classes on it), or repeats.
    """
    out = []
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise InvalidInputError(f"class names must be non-empty strings; got {name!r}")
        if ":" in name:
            raise InvalidInputError(
                f"class name {name!r} contains ':', which QuPath reads as a derived class; rename the class"
            )
        if name in out:
            raise InvalidInputError(f"class name {name!r} is given twice")
        out.append(name)
    return out


def check_colour(colour: Any, what: str) -> tuple[int, int, int]:
    """An (r, g, b) tuple of ints in 0-255; ``what`` names the colour in the error.

    Raises
    ------
    InvalidInputError
    """
    try:
        values = [c for c in colour]
    except TypeError:
        values = None
    if (values is None or len(values) != 3
            or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c <= 255 for c in values)):
        raise InvalidInputError(f"{what} must be [r, g, b] with integers in 0-255; got {colour!r}")
    return int(values[0]), int(values[1]), int(values[2])
