"""Checks at the edge: turn a job request into a slide path and a pipeline config, or refuse it.

Order matters: the path is checked against the allowed roots (symlinks and ``..``
resolved) before anything under it is opened, so nothing outside the roots is read. A path
is checked and used in the same form: :func:`check_under_roots` expands ``~`` and resolves it,
and the job carries the resolved path, so the worker opens exactly what was checked.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import EMBEDDING_FILES, PipelineConfig, config_from_dict, config_to_dict
from ..errors import ConfigError, InvalidInputError, MissingMppError
from ..outputs.qupath import file_uri_to_path
from .errors import ForbiddenPathError, RequestError

__all__ = ["Admitted", "admit", "slide_path", "check_under_roots", "merge_parameters", "config_dict",
           "TRANSFORMING_SERVERS"]

#: QuPath image servers that show the file through a geometric transform: their pixel frame
#: differs from the file's level 0 even when the size agrees (e.g. a 180° rotation).
TRANSFORMING_SERVERS = ("RotatedImageServer", "FlippedImageServer", "AffineTransformImageServer",
                        "CroppedImageServer", "SparseImageServer", "SlicedImageServer")
#: Relative difference between QuPath's pixel size and the file's above which the job carries a warning.
MPP_TOLERANCE = 0.02
#: Longest accepted path, and path component, in bytes (Linux's PATH_MAX and NAME_MAX).
MAX_PATH_BYTES, MAX_NAME_BYTES = 4096, 255


@dataclass(frozen=True)
class Admitted:
    """A request that passed every check."""

    path: Path
    config: PipelineConfig
    warnings: list[str]


def check_under_roots(path: str | Path, roots: Sequence[Path], field: str) -> Path:
    """The real path (``~`` expanded, symlinks and ``..`` resolved) of ``path``, which must lie under one of ``roots``.

    The one place where a path from a request becomes a file to open: use what it returns.

    Raises
    ------
    RequestError
        A NUL byte, a path longer than the file system allows, or a relative path (422).
    ForbiddenPathError
        Outside every root (the message names the requested path, not where a symlink points).
    """
    text = str(path)
    if "\0" in text:
        raise RequestError(f"{field}: the path contains a NUL byte", field=field)
    encoded = os.fsencode(text)
    if len(encoded) > MAX_PATH_BYTES or any(len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")):
        raise RequestError(f"{field}: the path is longer than the file system allows ({MAX_PATH_BYTES} bytes, "
                           f"{MAX_NAME_BYTES} per folder or file name)", field=field)
    expanded = os.path.expanduser(text)
    if not os.path.isabs(expanded):  # relative to what? the client cannot know the server's working folder
        raise RequestError(f"{field}: {text[:200]!r} is not an absolute path on the server (or one that starts "
                           "with ~/)", field=field)
    real = Path(os.path.realpath(expanded))
    if not any(real.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise ForbiddenPathError(
            f"{field}: {str(path)!r} is outside the folders this server may read ({allowed}). Start the server "
            "with --root <folder holding the slide> to allow it.",
            field=field,
        )
    return real


def slide_path(uris: Sequence[str], roots: Sequence[Path]) -> Path:
    """The slide file named by QuPath's URI list, resolved and checked against the roots."""
    if len(uris) != 1:
        raise RequestError(
            f"uris: this image is built from {len(uris)} files; tumls-qp analyses images stored in one slide file",
            field="uris",
        )
    try:
        path = file_uri_to_path(uris[0], "uris[0]")
    except InvalidInputError as exc:
        raise RequestError(str(exc), field="uris[0]") from exc
    return check_under_roots(path, roots, "uris[0]")


def merge_parameters(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict: ``override``'s options replace ``base``'s, section by section."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_parameters(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _job_config(parameters: Mapping[str, Any], base: Mapping[str, Any], pixel_size_um: float | None,
                roots: Sequence[Path]) -> PipelineConfig:
    data = merge_parameters(base, parameters)
    slide = data.get("slide")
    # QuPath's calibration is the pixel size of last resort (a value in the file wins, as on the command line).
    if pixel_size_um is not None:
        if slide is None:
            data["slide"] = {"mpp": float(pixel_size_um)}
        elif isinstance(slide, Mapping) and slide.get("mpp") is None:
            data["slide"] = {**slide, "mpp": float(pixel_size_um)}
    try:
        config = config_from_dict(data)
    except ConfigError as exc:
        raise RequestError(f"parameters: {exc}", field="parameters") from exc
    for name in EMBEDDING_FILES:
        named = getattr(config.embedding, name)
        if named is not None:
            real = check_under_roots(named, roots, f"parameters.embedding.{name}")
            config = dataclasses.replace(config, embedding=dataclasses.replace(config.embedding, **{name: str(real)}))
    return config


def admit(request: Any, roots: Sequence[Path], base_parameters: Mapping[str, Any]) -> Admitted:
    """Check a :class:`~tumls_qp.server.schemas.JobRequest` against the server and the slide.

    Raises
    ------
    ForbiddenPathError
        The slide (or a file named in the parameters) is outside the roots (403).
    RequestError
        Anything else that makes the request unusable, naming the field (422): not a
        local file URI, not a slide, no pixel size anywhere, QuPath's width/height not
        the file's level-0 size, a transformed QuPath server, an invalid parameter.
    """
    from ..slide import open_slide

    path = slide_path(request.uris, roots)
    config = _job_config(request.parameters, base_parameters, request.pixel_size_um, roots)
    server_type = request.server_type
    if server_type in TRANSFORMING_SERVERS:
        raise RequestError(
            f"server_type: QuPath shows this image through a {server_type}, whose pixel frame differs from the "
            "file's; analyse the original (untransformed) image entry instead",
            field="server_type",
        )
    try:
        slide = open_slide(path, mpp=config.slide.mpp, mpp_override=config.slide.mpp_override)
    except MissingMppError as exc:
        raise RequestError(
            f"pixel_size_um: {path.name!r} does not state its pixel size and QuPath sent none. Set it in QuPath "
            "(Image tab: double-click 'Pixel width'), or give parameters.slide.mpp.",
            field="pixel_size_um",
        ) from exc
    except InvalidInputError as exc:
        raise RequestError(f"uris[0]: {exc}", field="uris[0]") from exc
    except OSError as exc:  # e.g. a name too long for the file system, a permission denied
        raise RequestError(f"uris[0]: cannot read {path.name[:200]!r}: {exc.strerror or exc}", field="uris[0]") from exc
    with slide:
        width, height = slide.dimensions
        warnings = []
        if (request.width, request.height) != (width, height):
            raise RequestError(
                f"width/height: QuPath's image is {request.width} x {request.height} px but level 0 of "
                f"{path.name!r} is {width} x {height} px. QuPath's pixel frame differs from the file's (the OpenSlide "
                "reader crops to openslide.bounds-*, the file holds several series, or the project entry is "
                "cropped/rotated), so the results would not line up. Open the file with the Bio-Formats reader "
                "(or without the transform) and run again.",
                field="width",
            )
        if (request.pixel_size_um is not None and slide.mpp_source == "file"
                and not math.isclose(request.pixel_size_um, slide.mpp, rel_tol=MPP_TOLERANCE)):
            warnings.append(
                f"QuPath's pixel size ({request.pixel_size_um:g} µm) differs from the file's ({slide.mpp:g} µm); the "
                "file's is used. Set parameters.slide.mpp_override = true (with slide.mpp) to use another."
            )
    return Admitted(path=path, config=config, warnings=warnings)


def config_dict(config: PipelineConfig) -> dict[str, Any]:
    """JSON-safe nested dict of a config (what the job row stores)."""
    return config_to_dict(config)
