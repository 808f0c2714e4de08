"""Write run folders' objects straight into a QuPath project, with paquo (the ``qupath`` extra).

paquo starts QuPath's JVM when its modules are imported and needs a local QuPath; it is
imported here and nowhere else, only when a project is written. Everything before the
paquo calls, i.e. turning a run's GeoJSON into the objects to add, is plain Python
(:func:`project_objects`, :func:`apply_objects`) and tested without a JVM.

Each run folder is matched to the project's image entry whose URI names the same file
(symlinks resolved); ``add_images=True`` adds the slide when no entry has it. Objects of
an earlier tumls-qp run (those with the ``TUMLS-QP job`` measurement, see
:mod:`tumls_qp.outputs.qupath`) are removed first, so re-running replaces them.
Never write into a project that QuPath has open: QuPath would overwrite the change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..errors import InvalidInputError, TumlsQpError
from .qupath import TAG_MEASUREMENT, file_uri_to_path, is_tagged
from .run_folder import read_run

__all__ = [
    "ProjectObject",
    "QuPathUnavailableError",
    "RunWritten",
    "project_objects",
    "apply_objects",
    "load_paquo",
    "write_runs",
    "PAQUO_HINT",
]

#: How to point paquo at a QuPath installation (shown whenever none is found).
PAQUO_HINT = (
    "paquo needs a local QuPath installation (0.2.3-0.6). Install QuPath from https://qupath.github.io, then either "
    "set PAQUO_QUPATH_DIR to its folder (e.g. export PAQUO_QUPATH_DIR=/opt/QuPath), write qupath_dir = \"...\" in a "
    ".paquo.toml in the current folder, or install it under /opt, /usr/local, /Applications or your home folder "
    "where paquo looks by itself. Without QuPath, import each run's tissue.geojson in QuPath instead "
    "(File > Import objects, or the groovy/ scripts with `tumls-qp serve`)."
)


class QuPathUnavailableError(TumlsQpError):
    """paquo is not installed, or it finds no local QuPath."""


@dataclass(frozen=True)
class ProjectObject:
    """One object to add to a QuPath hierarchy through paquo.

    Attributes
    ----------
    kind : {"annotation", "detection", "tile", "cell"}
    roi : shapely geometry
        Level-0 pixel coordinates.
    class_name : str or None
    colour : (int, int, int) or None
    measurements : dict of str to float
        Python floats (paquo requires them), including the ``TUMLS-QP job`` tag.
    name : str or None
    nucleus_roi : shapely geometry or None
        Cells only.
    """

    kind: str
    roi: Any
    class_name: str | None
    colour: tuple[int, int, int] | None
    measurements: dict[str, float]
    name: str | None
    nucleus_roi: Any = None


@dataclass(frozen=True)
class RunWritten:
    """What :func:`write_runs` did for one run folder."""

    run_dir: Path
    image_name: str
    added_image: bool
    removed: int
    added: int


_KINDS = ("annotation", "detection", "tile", "cell")


def project_objects(features: Iterable[dict[str, Any]], tag_value: int = 0) -> list[ProjectObject]:
    """The paquo objects of QuPath GeoJSON features (as tumls-qp writes them).

    Parameters
    ----------
    features : iterable of dict
        GeoJSON Features with polygonal geometries.
    tag_value : int
        Value of the ``TUMLS-QP job`` measurement added to every object.
    """
    from shapely.geometry import shape

    out = []
    for i, feature in enumerate(features):
        properties = feature.get("properties") or {}
        kind = properties.get("objectType", "annotation")
        if kind not in _KINDS:
            raise InvalidInputError(f"feature {i}: objectType must be one of {', '.join(_KINDS)}; got {kind!r}")
        geometry = feature.get("geometry")
        if not geometry:
            raise InvalidInputError(f"feature {i} has no geometry")
        classification = properties.get("classification") or {}
        colour = classification.get("color")
        measurements = {str(k): float(v) for k, v in (properties.get("measurements") or {}).items()}
        measurements[TAG_MEASUREMENT] = float(tag_value)
        nucleus = feature.get("nucleusGeometry")
        if kind == "cell" and not nucleus:
            raise InvalidInputError(f"feature {i} is a cell without nucleusGeometry")
        out.append(ProjectObject(
            kind=kind,
            roi=shape(geometry),
            class_name=classification.get("name"),
            colour=tuple(int(c) for c in colour) if colour else None,  # type: ignore[arg-type]
            measurements=measurements,
            name=properties.get("name"),
            nucleus_roi=shape(nucleus) if nucleus else None,
        ))
    return out


def apply_objects(hierarchy: Any, objects: Sequence[ProjectObject], path_class: Callable[[str, Any], Any]) -> int:
    """Replace the tumls-qp objects of a paquo hierarchy with ``objects``.

    Parameters
    ----------
    hierarchy : paquo QuPathPathObjectHierarchy (or anything with its API)
        ``annotations`` and ``detections`` (set-like, with ``discard``), and ``add_annotation``,
        ``add_detection``, ``add_tile``, ``add_cell``.
    objects : sequence of ProjectObject
    path_class : callable(name, colour) -> path class
        Makes (or finds) the class object paquo's ``add_*`` take.

    Returns
    -------
    int
        Objects removed (those carrying the ``TUMLS-QP job`` measurement; the user's own stay).
    """
    removed = 0
    for proxy in (hierarchy.annotations, hierarchy.detections):
        for obj in [o for o in proxy if is_tagged(o.measurements)]:
            proxy.discard(obj)
            removed += 1
    classes: dict[str, Any] = {}
    for obj in objects:
        pc = None
        if obj.class_name is not None:
            if obj.class_name not in classes:
                classes[obj.class_name] = path_class(obj.class_name, obj.colour)
            pc = classes[obj.class_name]
        if obj.kind == "cell":
            added = hierarchy.add_cell(roi=obj.roi, path_class=pc, measurements=obj.measurements,
                                       nucleus_roi=obj.nucleus_roi)
        else:
            add = getattr(hierarchy, f"add_{obj.kind}")
            added = add(roi=obj.roi, path_class=pc, measurements=obj.measurements)
        if obj.name is not None:
            added.name = obj.name
    return removed


def load_paquo() -> tuple[Any, Any, Any]:
    """``(QuPathProject, QuPathPathClass, QuPathImageType)``, or a :class:`QuPathUnavailableError` with the fix."""
    try:
        import paquo  # noqa: F401  (light: no JVM)
    except ImportError as exc:
        raise QuPathUnavailableError(
            "writing QuPath projects needs paquo: pip install 'tumls-qp[qupath]'. " + PAQUO_HINT
        ) from exc
    try:
        from paquo.classes import QuPathPathClass
        from paquo.images import QuPathImageType
        from paquo.projects import QuPathProject
    except Exception as exc:  # paquo raises ValueError (and JPype others) when it finds no usable QuPath
        raise QuPathUnavailableError(f"paquo cannot start QuPath ({exc}). " + PAQUO_HINT) from exc
    return QuPathProject, QuPathPathClass, QuPathImageType


def _entry_path(entry: Any) -> Path | None:
    try:
        return Path(os.path.realpath(file_uri_to_path(entry.uri)))
    except (InvalidInputError, RuntimeError, NotImplementedError):
        return None


def write_runs(project_path: str | os.PathLike[str], run_dirs: Sequence[str | os.PathLike[str]], *,
               add_images: bool = False) -> list[RunWritten]:
    """Write each run's objects into the project's image entry of the same slide.

    Parameters
    ----------
    project_path : path-like
        ``project.qpproj`` (or its folder); created when missing.
    run_dirs : sequence of path-like
        Run folders written by ``tumls-qp analyze``.
    add_images : bool
        Add the slide to the project when no entry has it (otherwise that is an error).

    Raises
    ------
    QuPathUnavailableError
        paquo or QuPath is missing (the message says how to fix it).
    InvalidInputError
        A run folder is incomplete, its slide is not in the project (without ``add_images``),
        or the entry's size differs from the slide's level 0.
    """
    runs = [read_run(r) for r in run_dirs]
    objects_of = {run.path: project_objects(run.geojson()) for run in runs}  # every run readable before QuPath starts
    QuPathProject, QuPathPathClass, QuPathImageType = load_paquo()
    written = []
    with QuPathProject(Path(project_path), mode="a") as project:
        known = {c.name: c for c in project.path_classes}

        def path_class(name: str, colour: Any) -> Any:
            if name not in known:
                known[name] = QuPathPathClass(name, color=tuple(colour) if colour else None)
                project.path_classes = [*project.path_classes, known[name]]
            return known[name]

        for run in runs:
            run_dir, slide = run.path, run.manifest.slide.path
            width, height = run.manifest.slide.width_px, run.manifest.slide.height_px
            real = Path(os.path.realpath(slide))
            entry = next((e for e in project.images if _entry_path(e) == real), None)
            added_image = False
            if entry is None:
                if not add_images:
                    raise InvalidInputError(
                        f"no image of {project_path} is the slide {str(slide)!r} of {run_dir.name}; add it in QuPath "
                        "or pass --add-images"
                    )
                entry = project.add_image(real, image_type=QuPathImageType.BRIGHTFIELD_H_E)
                added_image = True
            if (entry.width, entry.height) != (width, height):
                raise InvalidInputError(
                    f"image {entry.image_name!r} is {entry.width} x {entry.height} px in QuPath but the slide of "
                    f"{run_dir.name} is {width} x {height} px: the objects would not line up"
                )
            objects = objects_of[run_dir]
            removed = apply_objects(entry.hierarchy, objects, path_class)
            written.append(RunWritten(run_dir=run_dir, image_name=entry.image_name, added_image=added_image,
                                      removed=removed, added=len(objects)))
    return written
