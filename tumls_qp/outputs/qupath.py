"""What the QuPath-facing outputs share: the ownership tag, the class table, and ``file:`` URIs.

Recognising our objects on a re-run
-----------------------------------
Every object tumls-qp hands to QuPath through the server or ``tumls-qp qupath-project``
carries one extra measurement, :data:`TAG_MEASUREMENT` (``"TUMLS-QP job"``): the server's
job number, or 0 for objects written from a run folder. A re-run removes every object
that has this measurement, and only those, before adding the new ones, so results are
replaced rather than doubled, whatever the user did to them meanwhile (renamed,
reclassified, locked, moved). Measurements survive QuPath's save/load and GeoJSON
export/import, unlike GeoJSON ``metadata`` (dropped by QuPath 0.4 and by 0.5 on
detections; see ``QUPATH.md``). Objects the user drew have no such measurement and are
never touched. The one way to lose the tag is to delete the measurement by hand
(*Objects > Delete measurements*): such objects are then treated as the user's own.

Layers
------
The human-in-the-loop results are layers of their own, each with its own marker, so that
re-running one script replaces that layer and leaves the others alone:

============================  =====================================  ==================================
marker (measurement)          objects                                replaced by
============================  =====================================  ==================================
``TUMLS-QP job``              analysis: tissues, representatives,    ``tumls_analyze.groovy``
                              nuclei, tiles, embedding colours
``TUMLS-QP seeded``           seeded clustering (``POST               ``tumls_seeded.groovy``
                              /jobs/{id}/seeded``)
``TUMLS-QP prototypes``       prototype clusters to name             ``tumls_prototypes.groovy``
                              (``GET /jobs/{id}/prototypes``)
``TUMLS-QP dictionary``       a dictionary applied to the image      ``tumls_apply_dictionary.groovy``
============================  =====================================  ==================================

The value is always the number of the server job the objects come from (for seeded
clustering and prototypes, the analysis job whose embeddings were used). Every marker
starts with :data:`TAG_PREFIX`: an object with any such measurement is tumls-qp's, never a
seed drawn by the user.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from ..errors import InvalidInputError

__all__ = [
    "TAG_MEASUREMENT",
    "TAG_PREFIX",
    "SEEDED_TAG",
    "PROTOTYPES_TAG",
    "DICTIONARY_TAG",
    "LAYER_TAGS",
    "tag_features",
    "is_tagged",
    "class_table",
    "file_uri_to_path",
    "path_to_file_uri",
]

#: Measurement that marks an object as made by tumls-qp (value: server job number, 0 from a run folder).
#: ``groovy/tumls_analyze.groovy`` uses the same name (a test checks they agree).
TAG_MEASUREMENT = "TUMLS-QP job"
#: What every marker's name starts with (the scripts treat objects with any such measurement as tumls-qp's).
TAG_PREFIX = "TUMLS-QP "
#: Marker of seeded-clustering results (value: the analysis job whose embeddings were used).
SEEDED_TAG = "TUMLS-QP seeded"
#: Marker of prototype clusters for naming (value: the analysis job they were made from).
PROTOTYPES_TAG = "TUMLS-QP prototypes"
#: Marker of a dictionary's labelling of an image (value: the server job that applied it).
DICTIONARY_TAG = "TUMLS-QP dictionary"
#: Every marker, by layer.
LAYER_TAGS = {"analysis": TAG_MEASUREMENT, "seeded": SEEDED_TAG, "prototypes": PROTOTYPES_TAG,
              "dictionary": DICTIONARY_TAG}

_REMOTE_SCHEMES = {"http", "https", "ftp", "ftps", "s3", "gs", "omero", "irods", "icat"}


def tag_features(features: Iterable[dict[str, Any]], value: int, tag: str = TAG_MEASUREMENT) -> None:
    """Add the marker ``tag`` (default the analysis marker) ``= value`` to every feature's measurements, in place."""
    if not tag.startswith(TAG_PREFIX):
        raise ValueError(f"markers start with {TAG_PREFIX!r}; got {tag!r}")
    for feature in features:
        properties = feature.setdefault("properties", {})
        measurements = properties.setdefault("measurements", {})
        measurements[tag] = float(value)


def is_tagged(measurements: Any, tag: str = TAG_MEASUREMENT) -> bool:
    """True when a measurement mapping carries the marker ``tag`` (default the analysis marker)."""
    try:
        return tag in measurements
    except TypeError:
        return False


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def class_table(features: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Classes used by a list of QuPath GeoJSON features, in natural order (Tissue 2 before Tissue 10).

    Returns
    -------
    list of dict
        ``{"name": str, "color": [r, g, b], "objects": int}`` per class; the colour is
        the first one a feature of that class states.
    """
    colours: dict[str, list[int]] = {}
    counts: Counter[str] = Counter()
    for feature in features:
        classification = (feature.get("properties") or {}).get("classification")
        if not isinstance(classification, dict) or not isinstance(classification.get("name"), str):
            continue
        name = classification["name"]
        counts[name] += 1
        colour = classification.get("color")
        if name not in colours and isinstance(colour, list) and len(colour) == 3:
            colours[name] = [int(c) for c in colour]
    return [{"name": name, "color": colours.get(name, [128, 128, 128]), "objects": counts[name]}
            for name in sorted(counts, key=_natural_key)]


def file_uri_to_path(uri: str, field: str = "uri") -> Path:
    """The local path of a ``file:`` URI as QuPath writes them (``file:/data/x.svs``, ``file:///data/x.svs``).

    Parameters
    ----------
    uri : str
    field : str
        Named in error messages.

    Raises
    ------
    InvalidInputError
        Not a URI of a local file: another scheme (``http:``...), a host (a network
        share), a relative path, a query or fragment, or bad percent-encoding.
    """
    if not isinstance(uri, str) or not uri:
        raise InvalidInputError(f"{field} must be a non-empty file: URI; got {uri!r}")
    if "\x00" in uri or any(ord(c) < 32 for c in uri):
        raise InvalidInputError(f"{field} contains control characters; got {uri!r}")
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError as exc:
        raise InvalidInputError(f"{field} is not a valid URI ({exc}); got {uri!r}") from exc
    scheme = parts.scheme.lower()
    if scheme in _REMOTE_SCHEMES:
        raise InvalidInputError(
            f"{field} {uri!r} is a remote image ({scheme}:); tumls-qp analyses files on the server's own disks. "
            "Copy the slide to a folder the server can read and open that file in QuPath."
        )
    if scheme != "file":
        raise InvalidInputError(
            f"{field} must be a file: URI such as 'file:/data/slide.svs' (QuPath's server.getURIs()); got {uri!r}"
        )
    if parts.netloc.lower() not in ("", "localhost"):
        raise InvalidInputError(
            f"{field} {uri!r} names the host {parts.netloc!r} (a network share); mount the share on the server "
            "and open the image in QuPath from the mounted path"
        )
    if parts.query or parts.fragment:
        raise InvalidInputError(f"{field} must not have a query or fragment; got {uri!r}")
    try:
        path = urllib.parse.unquote(parts.path, errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{field} has percent-escapes that are not UTF-8; got {uri!r}") from exc
    if "\x00" in path:
        raise InvalidInputError(f"{field} contains a NUL character; got {uri!r}")
    if os.name == "nt" and re.match(r"^/[A-Za-z]:", path):  # file:/C:/x -> C:/x
        path = path[1:]
    if not path or not os.path.isabs(path):
        raise InvalidInputError(f"{field} must hold an absolute path; got {uri!r}")
    return Path(path)


def path_to_file_uri(path: str | os.PathLike[str]) -> str:
    """``file:`` URI of a local path, in QuPath's form (``file:/data/x.svs``)."""
    posix = Path(path).absolute().as_posix()
    if not posix.startswith("/"):  # Windows: C:/x -> /C:/x
        posix = "/" + posix
    return "file:" + urllib.parse.quote(posix, safe="/:")
