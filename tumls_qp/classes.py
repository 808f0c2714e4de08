"""Names and colours of the classes tumls-qp gives to QuPath, the report and the server.

Colours come from Paul Tol's "bright" and "muted" qualitative schemes, chosen to stay
distinct for colour-blind readers.
"""

from __future__ import annotations

__all__ = ["tissue_class_name", "tissue_colour", "NUCLEUS_CLASS", "NUCLEUS_COLOUR"]

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

NUCLEUS_CLASS = "Nucleus"
NUCLEUS_COLOUR = (255, 190, 0)


def tissue_class_name(tissue: int) -> str:
    """QuPath class of 0-based tissue ``tissue``: "Tissue 1", "Tissue 2", ..."""
    return f"Tissue {tissue + 1}"


def tissue_colour(tissue: int) -> tuple[int, int, int]:
    """RGB colour of 0-based tissue ``tissue``; the palette repeats after 12 tissues."""
    return _PALETTE[tissue % len(_PALETTE)]
