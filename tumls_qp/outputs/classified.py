"""QuPath objects for tiles that carry a user's class: seeded clustering, dictionary queries, embedding colours.

The spine's ``tissue_features`` names tissues "Tissue k"; here the classes are the user's
("Tumor", "Stroma", ...) with the user's colours, and every tile has a score between 0
and 1 (for seeded clustering and dictionaries, a confidence). The objects follow the
same QuPath rules (``QUPATH.md`` §1) and are checked by the same validator.
"""

from __future__ import annotations

import math
import uuid
from typing import Any, Mapping, Sequence

import numpy as np
import shapely
from shapely.geometry import box

from ..errors import InvalidInputError
from .geojson import make_feature

__all__ = ["check_class_names", "check_colour", "classified_features", "coloured_tile_features"]


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


def _tile_feature(x: float, y: float, w: float, h: float, class_name: str, colour: Sequence[int],
                  measurements: Mapping[str, float]) -> dict[str, Any] | None:
    """``make_feature(box, "tile", ...)`` for an axis-aligned box, without the general geometry repair.

    A box with finite corners and a positive size is valid on QuPath's 0.01 px grid once its
    corners are rounded to it, so the (costly, per object) cleaning is not needed; the output
    is the same as ``make_feature``'s (a test compares them) and is validated by the callers.
    """
    x0, y0, x1, y1 = (round(float(v), 2) for v in (x, y, x + w, y + h))
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
        return make_feature(box(x, y, x + w, y + h), "tile", class_name, colour, measurements)
    values = {}
    for name, value in measurements.items():
        value = float(np.float32(value))  # tiles, like detections, store float32
        if math.isfinite(value):
            values[str(name)] = value
    properties: dict[str, Any] = {"objectType": "tile",
                                  "classification": {"name": class_name, "color": [int(c) for c in colour]}}
    if values:
        properties["measurements"] = values
    properties["isLocked"] = False
    ring = [[x0, y0], [x0, y1], [x1, y1], [x1, y0], [x0, y0]]
    return {"type": "Feature", "id": str(uuid.uuid4()), "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": properties}


def classified_features(
    boxes: np.ndarray,
    labels: np.ndarray,
    score: np.ndarray,
    class_names: Sequence[str],
    colours: Sequence[Sequence[int]],
    mpp: float,
    *,
    score_name: str,
    region_suffix: str,
    tile_objects: bool = True,
    tile_measurements: Mapping[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Tiles with user classes as QuPath objects: one region per class and, optionally, one tile object per tile.

    Parameters
    ----------
    boxes : (n, 4) ndarray
        Tile boxes (x, y, width, height) in level-0 px.
    labels : (n,) int ndarray
        Class of each tile, an index into ``class_names``.
    score : (n,) float ndarray
        Per-tile score in [0, 1], e.g. a confidence; written as the tile measurement
        ``score_name`` and averaged per region as ``"Mean " + score_name``.
    class_names : sequence of str
        QuPath class names (no ':').
    colours : sequence of (r, g, b)
        One colour per class.
    mpp : float
        Level-0 pixel size in µm/px, for ``Area um^2``.
    score_name : str
        Measurement name of the score, e.g. ``"SIC confidence"``; it also tags the objects
        of one method, so that a script can find and replace them on a re-run.
    region_suffix : str
        Region annotations are named ``"<class> (<region_suffix>)"``.
    tile_objects : bool
        Add one ``tile`` object per tile.
    tile_measurements : mapping of str to (n,) ndarray, optional
        More per-tile measurements (non-finite values are left out).

    Returns
    -------
    list of dict
        One ``annotation`` per class that has tiles (the union of its tiles; a MultiPolygon
        when split) with ``Area um^2``, ``Tile count`` and ``Mean <score_name>``; then the
        tile objects, each with the class and ``<score_name>`` (plus ``tile_measurements``).
    """
    boxes = np.asarray(boxes)
    labels = np.asarray(labels)
    score = np.asarray(score, dtype=np.float64)
    names = check_class_names(class_names)
    if len(colours) != len(names):
        raise InvalidInputError(f"{len(names)} classes need {len(names)} colours; got {len(colours)}")
    rgb = [check_colour(c, f"the colour of class {n!r}") for n, c in zip(names, colours)]
    if not (len(boxes) == len(labels) == len(score)):
        raise ValueError(f"boxes, labels and score must have one row per tile; got {len(boxes)}, {len(labels)}, "
                         f"{len(score)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(f"labels must index the {len(names)} classes; got values {labels.min()}..{labels.max()}")
    features: list[dict[str, Any]] = []
    b = boxes.astype(np.float64)
    tiles = shapely.box(b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]) if len(b) else np.array([])
    for c, (name, colour) in enumerate(zip(names, rgb)):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            continue
        union = shapely.unary_union(tiles[members])
        measurements = {
            "Area um^2": union.area * mpp * mpp,
            "Tile count": len(members),
            f"Mean {score_name}": float(score[members].mean()),
        }
        feature = make_feature(union, "annotation", name, colour, measurements, name=f"{name} ({region_suffix})")
        if feature is not None:
            features.append(feature)
    if tile_objects:
        extra = {k: np.asarray(v, dtype=np.float64) for k, v in (tile_measurements or {}).items()}
        for i, (x, y, w, h) in enumerate(boxes):
            c = int(labels[i])
            measurements = {score_name: float(score[i]), **{k: float(v[i]) for k, v in extra.items()}}
            feature = _tile_feature(x, y, w, h, names[c], rgb[c], measurements)
            if feature is not None:
                features.append(feature)
    return features


def coloured_tile_features(
    boxes: np.ndarray,
    rgb: np.ndarray,
    class_name: str,
    class_colour: Sequence[int],
    measurements: Mapping[str, np.ndarray],
) -> list[dict[str, Any]]:
    """One ``tile`` object per tile, each drawn in its own colour.

    QuPath draws an object in its own colour (``properties.color``, read by
    ``PathObjectTypeAdapters`` and preferred over the class colour when displaying) when
    it has one. One shared class keeps QuPath's class list clean and lets a user select,
    hide or delete the whole layer at once.

    Parameters
    ----------
    boxes : (n, 4) ndarray
        (x, y, width, height) in level-0 px.
    rgb : (n, 3) uint8 ndarray
        Colour of each tile.
    class_name : str
    class_colour : (r, g, b)
    measurements : mapping of str to (n,) ndarray
    """
    [name] = check_class_names([class_name])
    colour = check_colour(class_colour, f"the colour of class {name!r}")
    rgb = np.asarray(rgb)
    if rgb.shape != (len(boxes), 3):
        raise ValueError(f"rgb must be ({len(boxes)}, 3); got {rgb.shape}")
    columns = {k: np.asarray(v, dtype=np.float64) for k, v in measurements.items()}
    features = []
    for i, (x, y, w, h) in enumerate(np.asarray(boxes)):
        feature = _tile_feature(x, y, w, h, name, colour, {k: float(v[i]) for k, v in columns.items()})
        if feature is not None:
            feature["properties"]["color"] = [int(c) for c in rgb[i]]
            features.append(feature)
    return features
