"""QuPath GeoJSON: objects that QuPath 0.4-0.7 import, and a validator of the rules in ``QUPATH.md``.

QuPath's import is all-or-nothing: one bad feature and the whole file fails. Every
geometry is therefore snapped to a 0.01 px grid, made valid, and reduced to its
polygonal parts before it is written, and :func:`validate_geojson` checks every rule
(the tests run it on every output).

Coordinates are level-0 pixels of the slide, origin top-left, as QuPath's image server.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box, shape

from ..classes import class_colour, tissue_class_name
from ..files import atomic_write

__all__ = [
    "OBJECT_TYPES",
    "clean_polygonal",
    "make_feature",
    "geometry_json",
    "tissue_features",
    "feature_collection",
    "write_geojson",
    "read_geojson",
    "validate_geojson",
    "validate_geojson_file",
    "require_valid",
]

#: objectType values QuPath reads (lower case; "DETECTION" would become an annotation).
OBJECT_TYPES = ("annotation", "detection", "cell", "tile")
#: Grid QuPath snaps coordinates to on read (0.6+).
GRID = 0.01
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def clean_polygonal(geometry: Any) -> Polygon | MultiPolygon | None:
    """Snap to the 0.01 px grid, make valid, keep polygonal parts; None when nothing is left.

    Returns a Polygon for one part, a MultiPolygon for several; never a GeometryCollection.
    """
    if geometry is None or geometry.is_empty:
        return None
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    try:
        geometry = shapely.set_precision(geometry, GRID)
    except shapely.errors.GEOSException:  # rare topology failures: snap point by point, then repair
        geometry = shapely.set_precision(geometry, GRID, mode="pointwise")
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    parts = [g for g in _polygons(geometry) if not g.is_empty and g.area > 0]
    if not parts:
        return None
    out = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    if not out.is_valid:  # overlapping parts after make_valid: merge them
        out = shapely.set_precision(shapely.unary_union(parts), GRID)
        parts = [g for g in _polygons(out) if not g.is_empty and g.area > 0]
        out = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    if out.is_empty or not out.is_valid:
        return None
    return out


def _polygons(geometry: Any) -> list[Polygon]:
    if isinstance(geometry, Polygon):
        return [geometry]
    if hasattr(geometry, "geoms"):
        return [p for g in geometry.geoms for p in _polygons(g)]
    return []


def _finite_measurements(measurements: Mapping[str, Any], float32: bool) -> dict[str, float]:
    out = {}
    for name, value in measurements.items():
        if value is None or isinstance(value, bool):
            continue
        value = float(np.float32(value)) if float32 else float(value)
        if math.isfinite(value):
            out[str(name)] = value
    return out


def make_feature(
    geometry: Polygon | MultiPolygon,
    object_type: str,
    class_name: str | None = None,
    colour: Sequence[int] | None = None,
    measurements: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any] | None:
    """One QuPath GeoJSON Feature; None when the geometry is empty after cleaning.

    Parameters
    ----------
    geometry : shapely Polygon or MultiPolygon
        In level-0 pixels.
    object_type : {"annotation", "detection", "cell", "tile"}
    class_name : str, optional
        QuPath class; must not contain ':' (QuPath splits derived classes on it).
    colour : (r, g, b), optional
        Required with ``class_name``.
    measurements : mapping of str to number, optional
        Non-finite values are left out; detections, cells and tiles store float32.
    name : str, optional
    """
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {OBJECT_TYPES}; got {object_type!r}")
    geometry = clean_polygonal(geometry)
    if geometry is None:
        return None
    properties: dict[str, Any] = {"objectType": object_type}
    if name is not None:
        properties["name"] = name
    if class_name is not None:
        if ":" in class_name:
            raise ValueError(f"class names must not contain ':'; got {class_name!r}")
        if colour is None:
            raise ValueError(f"class {class_name!r} needs a colour")
        properties["classification"] = {"name": class_name, "color": [int(c) for c in colour]}
    if measurements:
        properties["measurements"] = _finite_measurements(measurements, float32=object_type != "annotation")
    properties["isLocked"] = False
    return {"type": "Feature", "id": str(uuid.uuid4()), "geometry": geometry_json(geometry), "properties": properties}


def geometry_json(geometry: Polygon | MultiPolygon) -> dict[str, Any]:
    """GeoJSON geometry object with coordinates as nested lists rounded to the 0.01 px grid."""

    def ring(r: Any) -> list[list[float]]:
        return [[round(x, 2), round(y, 2)] for x, y in r.coords]

    def polygon(p: Polygon) -> list[list[list[float]]]:
        return [ring(p.exterior)] + [ring(i) for i in p.interiors]

    if isinstance(geometry, Polygon):
        return {"type": "Polygon", "coordinates": polygon(geometry)}
    return {"type": "MultiPolygon", "coordinates": [polygon(p) for p in geometry.geoms]}


def tissue_features(
    boxes: np.ndarray,
    labels: np.ndarray,
    uncertainty: np.ndarray,
    mpp: float,
    representatives: Iterable[Any],
    *,
    confidence: np.ndarray | None = None,
    regions: Mapping[int, Any] | None = None,
    representative_boxes: Sequence[Sequence[float]] | None = None,
    tissue_measurements: Mapping[int, Mapping[str, float]] | None = None,
    tile_objects: bool = True,
) -> list[dict[str, Any]]:
    """The tissue level of a run as QuPath objects.

    Parameters
    ----------
    boxes : (n, 4) ndarray
        Tile boxes (x, y, width, height) in level-0 px.
    labels : (n,) int ndarray
        Tissue of each tile (0-based).
    uncertainty : (n,) float ndarray
        Each tile's uncertainty (typicality, 0 = its tissue's centre).
    mpp : float
        Level-0 pixel size in µm/px (for areas in µm²).
    representatives : iterable of Representative
        ``tile`` indexes into ``boxes``.
    confidence : (n,) float ndarray, optional
        Each tile's confidence (0-1); adds "Confidence" / "Mean confidence" measurements.
    regions : mapping of tissue to shapely geometry, optional
        Each tissue's region in level-0 px (:func:`tumls_qp.tissue.regions.region_geometries`); a
        tissue without one gets no annotation. None: each region is the union of its tiles.
    representative_boxes : sequence of (x, y, width, height), optional
        The area each representative was read over (level-0 px), in the order of
        ``representatives``; None: its tile.
    tissue_measurements : mapping of tissue to {name: value}, optional
        Extra measurements of each tissue annotation (e.g. nucleus features).
    tile_objects : bool
        Add one ``tile`` object per tile, with its uncertainty (and confidence).

    Returns
    -------
    list of dict
        One annotation per tissue (MultiPolygon when split) with "Area um^2" (of the region),
        "Tile count", "Mean uncertainty" and "Mean confidence"; one annotation per representative
        with "Rank", "Uncertainty" and "Confidence"; and the tile objects.
    """
    features: list[dict[str, Any]] = []
    k = int(labels.max()) + 1 if len(labels) else 0
    for tissue in range(k):
        members = np.flatnonzero(labels == tissue)
        if len(members) == 0:
            continue
        if regions is None:
            region = shapely.unary_union([box(x, y, x + w, y + h) for x, y, w, h in boxes[members]])
        elif tissue in regions:
            region = regions[tissue]
        else:
            continue
        measurements = {
            "Area um^2": region.area * mpp * mpp,
            "Tile count": len(members),
            "Mean uncertainty": float(uncertainty[members].mean()),
        }
        if confidence is not None:
            measurements["Mean confidence"] = float(confidence[members].mean())
        if tissue_measurements and tissue in tissue_measurements:
            measurements.update(tissue_measurements[tissue])
        feature = make_feature(region, "annotation", tissue_class_name(tissue), class_colour(tissue), measurements,
                               name=tissue_class_name(tissue))
        if feature is not None:
            features.append(feature)
    for i, rep in enumerate(representatives):
        x, y, w, h = representative_boxes[i] if representative_boxes is not None else boxes[rep.tile]
        measurements = {"Rank": rep.rank, "Uncertainty": rep.uncertainty}
        if confidence is not None:
            measurements["Confidence"] = float(confidence[rep.tile])
        feature = make_feature(
            box(x, y, x + w, y + h), "annotation", tissue_class_name(rep.tissue), class_colour(rep.tissue),
            measurements, name=f"{tissue_class_name(rep.tissue)} representative {rep.rank}",
        )
        if feature is not None:
            features.append(feature)
    if tile_objects:
        for i, ((x, y, w, h), tissue, u) in enumerate(zip(boxes, labels, uncertainty)):
            measurements = {"Uncertainty": float(u)}
            if confidence is not None:
                measurements["Confidence"] = float(confidence[i])
            feature = make_feature(box(x, y, x + w, y + h), "tile", tissue_class_name(int(tissue)),
                                   class_colour(int(tissue)), measurements)
            if feature is not None:
                features.append(feature)
    return features


def feature_collection(features: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": features}


def write_geojson(data: Mapping[str, Any] | list[Any], path: str | os.PathLike[str], *, compress: bool | None = None) -> Path:
    """Write GeoJSON atomically (temporary file, then rename); gzip when the name ends in ``.gz``.

    Strict JSON: NaN and infinities are refused rather than written.
    """
    path = Path(path)
    compress = path.suffix == ".gz" if compress is None else compress
    text = json.dumps(data, allow_nan=False, separators=(",", ":")).encode("utf-8")
    with atomic_write(path) as tmp:
        tmp.write_bytes(gzip.compress(text, compresslevel=6, mtime=0) if compress else text)
    return path


def _reject_constant(token: str) -> float:
    raise ValueError(f"non-finite number {token} (QuPath 0.4 and strict JSON readers reject it)")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise ValueError(f"duplicate key(s) {', '.join(map(repr, duplicated))} in one object")
    return dict(pairs)


def read_geojson(path: str | os.PathLike[str]) -> Any:
    """Parse a ``.geojson``/``.json`` file, gzipped when it ends in ``.gz``; strict JSON, no duplicate keys."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return json.loads(raw, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)


def validate_geojson_file(path: str | os.PathLike[str]) -> list[str]:
    """Problems that would make QuPath refuse (or silently ignore) a file; empty when it imports."""
    path = Path(path)
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    if not name.endswith((".geojson", ".json")):
        return [f"{path.name}: QuPath picks its reader by extension; use .geojson or .json (optionally .gz)"]
    try:
        data = read_geojson(path)
    except (OSError, ValueError) as exc:
        return [f"{path.name}: not readable as strict JSON: {exc}"]
    return validate_geojson(data)


def require_valid(data: Any, what: str = "generated GeoJSON") -> Any:
    """Return ``data`` when QuPath imports it; otherwise raise.

    For GeoJSON that tumls-qp made itself: a problem is a bug, not bad input, and QuPath must
    never be handed a file it would refuse.

    Raises
    ------
    RuntimeError
        Naming ``what`` and the first problems :func:`validate_geojson` found.
    """
    problems = validate_geojson(data)
    if problems:
        raise RuntimeError(f"{what} breaks QuPath's rules: " + "; ".join(problems[:5]))
    return data


def validate_geojson(data: Any) -> list[str]:
    """Check parsed GeoJSON against QuPath's import rules (``QUPATH.md`` §1).

    Accepts a FeatureCollection, a single Feature, or a list of Features, each with a
    polygonal geometry (the profile tumls-qp writes). Returns one message per problem,
    each naming the feature; an empty list means QuPath 0.4-0.7 imports the file.
    """
    if isinstance(data, list):
        features, where = data, "array"
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features, where = data.get("features"), "FeatureCollection"
        if not isinstance(features, list):
            return ["FeatureCollection: 'features' must be a list"]
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features, where = [data], "Feature"
    else:
        return ["top level must be a FeatureCollection, a Feature or an array of Features"]
    problems: list[str] = []
    for i, feature in enumerate(features):
        problems += [f"{where} feature {i}: {p}" for p in _feature_problems(feature)]
    return problems


def _feature_problems(feature: Any) -> list[str]:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        return ["not a Feature object"]
    problems = []
    fid = feature.get("id")
    try:
        uuid.UUID(str(fid))
        if not isinstance(fid, str):
            raise ValueError
    except ValueError:
        problems.append(f"id must be a UUID string (QuPath replaces others); got {fid!r}")
    props = feature.get("properties")
    if not isinstance(props, dict):
        return problems + ["properties must be an object"]
    object_type = props.get("objectType")
    if object_type not in OBJECT_TYPES:
        problems.append(f"objectType must be one of {', '.join(OBJECT_TYPES)} (lower case); got {object_type!r}")
    problems += [f"geometry: {p}" for p in _geometry_problems(feature.get("geometry"))]
    if "nucleusGeometry" in feature:
        if object_type != "cell":
            problems.append("nucleusGeometry is only for objectType 'cell'")
        problems += [f"nucleusGeometry: {p}" for p in _geometry_problems(feature["nucleusGeometry"])]
    if "nucleusGeometry" in props:
        problems.append("nucleusGeometry must be a sibling of geometry, not inside properties")
    if "plane" in props or "plane" in (feature.get("geometry") or {}):
        problems.append("no 'plane' for 2-D slides")
    if "classification" in props:
        problems += _classification_problems(props["classification"])
    if "measurements" in props:
        problems += _measurement_problems(props["measurements"], float32=object_type in ("detection", "cell", "tile"))
    if "isLocked" in props and not isinstance(props["isLocked"], bool):
        problems.append(f"isLocked must be true or false; got {props['isLocked']!r}")
    if "name" in props and not isinstance(props["name"], str):
        problems.append(f"name must be a string; got {props['name']!r}")
    if "color" in props and not _is_rgb(props["color"]):
        # QuPath reads an object's own colour as [r, g, b] (or a packed int); a string aborts the import.
        problems.append(f"color (the object's own colour) must be [r, g, b] integers in 0-255; got {props['color']!r}")
    return problems


def _is_rgb(colour: Any) -> bool:
    return (isinstance(colour, list) and len(colour) == 3
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in colour))


def _classification_problems(classification: Any) -> list[str]:
    if not isinstance(classification, dict):
        return [f"classification must be an object {{'name', 'color'}}; got {classification!r}"]
    problems = []
    name = classification.get("name")
    if not isinstance(name, str) or not name:
        problems.append(f"classification.name must be a non-empty string; got {name!r}")
    elif ":" in name:
        problems.append(f"classification.name must not contain ':' (QuPath splits derived classes); got {name!r}")
    colour = classification.get("color")
    if "color" not in classification:
        problems.append("classification has a name but no 'color' (QuPath refuses the file)")
    elif not (isinstance(colour, list) and len(colour) == 3
              and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in colour)):
        problems.append(f"classification.color must be [r, g, b] integers in 0-255 (not a hex string); got {colour!r}")
    return problems


def _measurement_problems(measurements: Any, float32: bool) -> list[str]:
    if not isinstance(measurements, dict):
        return [f"measurements must be an object of name -> number; got {type(measurements).__name__}"]
    problems = []
    for name, value in measurements.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"measurement {name!r} must be a number (QuPath 0.4 fails on strings); got {value!r}")
        elif not math.isfinite(value):
            problems.append(f"measurement {name!r} is not finite ({value}); leave it out instead")
        elif float32 and abs(value) > _FLOAT32_MAX:
            problems.append(f"measurement {name!r} = {value} does not fit the float32 that detections store")
    return problems


def _geometry_problems(geometry: Any) -> list[str]:
    if geometry is None:
        return ["must not be null (QuPath refuses the file)"]
    if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
        kind = geometry.get("type") if isinstance(geometry, dict) else type(geometry).__name__
        return [f"must be a Polygon or MultiPolygon; got {kind!r}"]
    coords = geometry.get("coordinates")
    if not isinstance(coords, list) or not coords:
        return ["empty coordinates"]
    polygons = [coords] if geometry["type"] == "Polygon" else coords
    for p, rings in enumerate(polygons):
        if not isinstance(rings, list) or not rings:
            return [f"polygon {p} has no rings"]
        for r, ring in enumerate(rings):
            if not isinstance(ring, list) or len(ring) < 4:
                return [f"polygon {p} ring {r} needs at least 4 positions"]
            for pos in ring:
                if not (isinstance(pos, list) and len(pos) == 2
                        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                for v in pos)):
                    return [f"polygon {p} ring {r} has a position that is not two finite numbers: {pos!r}"]
            if ring[0] != ring[-1]:
                return [f"polygon {p} ring {r} is not closed"]
    try:
        geom = shape(geometry)
    except Exception as exc:  # shapely raises several types on malformed input
        return [f"not a readable geometry: {exc}"]
    if geom.is_empty:
        return ["empty geometry"]
    if not geom.is_valid:
        return [f"invalid geometry: {shapely.is_valid_reason(geom)}"]
    snapped = shapely.set_precision(geom, GRID, mode="pointwise")
    if snapped.is_empty or not snapped.is_valid:
        reason = "empty" if snapped.is_empty else shapely.is_valid_reason(snapped)
        return [f"invalid once snapped to QuPath's 0.01 px grid ({reason}); QuPath 0.6+ refuses it"]
    return []
