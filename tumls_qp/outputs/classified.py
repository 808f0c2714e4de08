"""QuPath objects for tiles that carry a user's class: seeded clustering, dictionary queries, embedding colours.

The spine's ``tissue_features`` names tissues "Tissue k"; here the classes are the user's
("Tumor", "Stroma", ...) with the user's colours, and every tile has a score between 0
and 1 (for seeded clustering and dictionaries, a confidence). The objects follow the
same QuPath rules (``QUPATH.md`` §1) and are checked by the same validator.

The embedding-colour layer (:func:`embedding_colour_features`) is a layer of ``tile``
objects that carry their own colour (``properties.color``). QuPath draws an object in its
own colour before its class colour, so the layer shows the RGB directly, while one shared
class ("Embedding colour") keeps the class list clean and lets a user hide or delete the
layer in one go. The three coordinates are also measurements ("Embedding 1".."Embedding 3"),
for QuPath's measurement maps. Per-tile classes would instead add one class per colour to
the project.
"""

from __future__ import annotations

import math
import uuid
from typing import Any, Mapping, Sequence

import numpy as np
import shapely
from shapely.geometry import box

from ..classes import check_class_names, check_colour, class_colour
from ..errors import InvalidInputError
from ..interactive.embedding_colours import EmbeddingColours
from .geojson import make_feature

__all__ = ["classified_features", "coloured_tile_features", "embedding_colour_features", "prototype_features",
           "EMBEDDING_LAYER_CLASS", "EMBEDDING_LAYER_COLOUR", "SIC_SCORE", "DICTIONARY_SCORE"]

#: Tile measurement of seeded clustering (also tags its objects for replacement on a re-run).
SIC_SCORE = "SIC confidence"
#: Tile measurement of dictionary queries.
DICTIONARY_SCORE = "Dictionary confidence"

#: QuPath class shared by the tiles of the embedding-colour layer, and its (neutral grey) colour.
EMBEDDING_LAYER_CLASS = "Embedding colour"
EMBEDDING_LAYER_COLOUR = (128, 128, 128)


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


def embedding_colour_features(boxes: np.ndarray, colours: EmbeddingColours) -> list[dict[str, Any]]:
    """The embedding-colour layer: one ``tile`` per tile in its embedding colour (see the module docstring).

    Parameters
    ----------
    boxes : (n, 4) ndarray
        (x, y, width, height) in level-0 px.
    colours : EmbeddingColours
        From :func:`tumls_qp.interactive.embedding_colours.embedding_colours`, one row per box.
    """
    measurements = {f"Embedding {j + 1}": colours.coords[:, j] for j in range(3)}
    return coloured_tile_features(boxes, colours.rgb, EMBEDDING_LAYER_CLASS, EMBEDDING_LAYER_COLOUR, measurements)


def prototype_features(
    boxes: np.ndarray,
    labels: np.ndarray,
    distance: np.ndarray,
    central: Sequence[np.ndarray],
    mpp: float,
) -> list[dict[str, Any]]:
    """Prototype clusters as QuPath objects for naming (:mod:`tumls_qp.interactive.prototypes`).

    Per cluster j (shown as j + 1): an annotation "Prototype j" over its tiles, with ``Prototype``,
    ``Tile count`` and ``Area um^2``; then its central tiles as annotations "Prototype j central r"
    with ``Prototype``, ``Rank`` and ``Distance``. All are unclassified (the user assigns the
    classes) and drawn in the cluster's own colour (``properties.color``, :func:`class_colour`).

    Parameters
    ----------
    boxes : (n, 4) ndarray
        (x, y, width, height) in level-0 px.
    labels : (n,) int ndarray
        Cluster of each tile, 0-based.
    distance : (n,) float ndarray
        Distance of each tile to its cluster's centre.
    central : sequence of k int ndarrays
        The central tiles of each cluster, closest first.
    mpp : float
        Level-0 pixel size in µm/px.
    """
    features = []
    for j, tiles in enumerate(central):
        colour = list(class_colour(j))
        members = np.flatnonzero(labels == j)
        if len(members) == 0:
            continue
        union = shapely.unary_union([box(x, y, x + w, y + h) for x, y, w, h in boxes[members]])
        feature = make_feature(union, "annotation", None, None,
                               {"Prototype": j + 1, "Tile count": len(members), "Area um^2": union.area * mpp ** 2},
                               name=f"Prototype {j + 1}")
        if feature is not None:
            feature["properties"]["color"] = colour
            features.append(feature)
        for rank, tile in enumerate(tiles, start=1):
            x, y, w, h = boxes[tile]
            feature = make_feature(box(x, y, x + w, y + h), "annotation", None, None,
                                   {"Prototype": j + 1, "Rank": rank, "Distance": float(distance[tile])},
                                   name=f"Prototype {j + 1} central {rank}")
            if feature is not None:
                feature["properties"]["color"] = colour
                features.append(feature)
    return features
