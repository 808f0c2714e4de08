"""QuPath projects through paquo: the conversion (no JVM), the message without QuPath, and the real path."""

from __future__ import annotations

from pathlib import Path

import pytest
from run_helpers import synthetic_analysis
from shapely.geometry import Polygon, box

from tumls_qp.cli import main
from tumls_qp.errors import FormatVersionError, InvalidInputError
from tumls_qp.outputs.geojson import make_feature
from tumls_qp.outputs.qupath import TAG_MEASUREMENT
from tumls_qp.outputs.run_folder import write_run
from tumls_qp.outputs.qupath_project import (
    PAQUO_HINT,
    QuPathUnavailableError,
    apply_objects,
    load_paquo,
    project_objects,
)


def _features():
    nucleus = Polygon([(2, 2), (4, 2), (4, 4), (2, 4)])
    cell = make_feature(box(1, 1, 5, 5), "cell", "Nucleus", (255, 190, 0), {"Area um^2": 3})
    cell["nucleusGeometry"] = {"type": "Polygon", "coordinates": [[list(p) for p in nucleus.exterior.coords]]}
    return [
        make_feature(box(0, 0, 100, 50), "annotation", "Tissue 1", (68, 119, 170), {"Area um^2": 1250.0},
                     name="Tissue 1"),
        make_feature(box(0, 0, 10, 10), "tile", "Tissue 1", (68, 119, 170), {"Uncertainty": 0.25}),
        make_feature(box(10, 0, 20, 10), "detection", "Tissue 2", (238, 102, 119)),
        cell,
    ]


def test_features_become_paquo_objects():
    features = _features()
    objects = project_objects(features, tag_value=7)
    assert [o.kind for o in objects] == ["annotation", "tile", "detection", "cell"]
    assert objects[0].roi.equals(box(0, 0, 100, 50)) and objects[0].name == "Tissue 1"
    assert objects[0].class_name == "Tissue 1" and objects[0].colour == (68, 119, 170)
    assert objects[1].measurements == {"Uncertainty": 0.25, TAG_MEASUREMENT: 7.0}
    assert all(type(v) is float for o in objects for v in o.measurements.values())  # paquo needs Python floats
    assert objects[2].measurements == {TAG_MEASUREMENT: 7.0}
    assert objects[3].nucleus_roi.equals(box(2, 2, 4, 4)) and objects[3].class_name == "Nucleus"
    bad = dict(features[0], properties={**features[0]["properties"], "objectType": "DETECTION"})
    with pytest.raises(Exception, match="objectType"):
        project_objects([bad])


class _Proxy:
    """A set-like view as paquo's PathObjectProxy."""

    def __init__(self):
        self.items = []

    def __iter__(self):
        return iter(list(self.items))

    def discard(self, obj):
        self.items.remove(obj)


class _Object:
    def __init__(self, kind, roi, path_class, measurements, nucleus_roi=None):
        self.kind, self.roi, self.path_class = kind, roi, path_class
        self.measurements, self.nucleus_roi, self.name = dict(measurements or {}), nucleus_roi, None


class _Hierarchy:
    """Records what paquo's QuPathPathObjectHierarchy would be asked to do."""

    def __init__(self):
        self.annotations, self.detections = _Proxy(), _Proxy()

    def add_annotation(self, roi, path_class=None, measurements=None):
        self.annotations.items.append(_Object("annotation", roi, path_class, measurements))
        return self.annotations.items[-1]

    def add_detection(self, roi, path_class=None, measurements=None):
        self.detections.items.append(_Object("detection", roi, path_class, measurements))
        return self.detections.items[-1]

    def add_tile(self, roi, path_class=None, measurements=None):
        self.detections.items.append(_Object("tile", roi, path_class, measurements))
        return self.detections.items[-1]

    def add_cell(self, roi, path_class=None, measurements=None, *, nucleus_roi):
        self.detections.items.append(_Object("cell", roi, path_class, measurements, nucleus_roi))
        return self.detections.items[-1]


def test_apply_replaces_only_earlier_tumls_objects():
    hierarchy = _Hierarchy()
    drawn = hierarchy.add_annotation(box(0, 0, 1, 1), "Tumor", {"Drawn": 1.0})
    hierarchy.add_annotation(box(0, 0, 2, 2), "Tissue 9", {TAG_MEASUREMENT: 3.0})
    hierarchy.add_tile(box(0, 0, 2, 2), "Tissue 9", {TAG_MEASUREMENT: 3.0, "Uncertainty": 0.1})
    made = []

    def path_class(name, colour):
        made.append((name, colour))
        return f"class:{name}"

    objects = project_objects(_features())
    assert apply_objects(hierarchy, objects, path_class) == 2
    assert drawn in list(hierarchy.annotations)
    kinds = sorted(o.kind for o in [*hierarchy.annotations, *hierarchy.detections])
    assert kinds == sorted(["annotation", "annotation", "tile", "detection", "cell"])
    assert made == [("Tissue 1", (68, 119, 170)), ("Tissue 2", (238, 102, 119)), ("Nucleus", (255, 190, 0))]
    tissue = [o for o in hierarchy.annotations if o.name == "Tissue 1"]
    assert len(tissue) == 1 and tissue[0].path_class == "class:Tissue 1"
    # A second run replaces instead of doubling.
    assert apply_objects(hierarchy, project_objects(_features()), path_class) == 4
    assert len(list(hierarchy.annotations)) == 2 and len(list(hierarchy.detections)) == 3


def test_run_folders_are_read_before_quPath_starts(tmp_path, monkeypatch):
    import tumls_qp.outputs.qupath_project as qupath_project

    monkeypatch.setattr(qupath_project, "load_paquo", lambda: pytest.fail("QuPath started for an unreadable run"))
    with pytest.raises(InvalidInputError, match="not a tumls-qp folder: it has no manifest.json"):
        qupath_project.write_runs(tmp_path / "project.qpproj", [tmp_path])
    old = Path(__file__).parent / "data" / "format1-run"
    with pytest.raises(FormatVersionError, match="run-folder format 1"):
        qupath_project.write_runs(tmp_path / "project.qpproj", [old])


def _qupath_available() -> str | None:
    try:
        load_paquo()
    except QuPathUnavailableError as exc:
        return str(exc)
    return None


def test_cli_without_qupath_says_how_to_point_paquo_at_it(tmp_path, capsys):
    reason = _qupath_available()
    if reason is None:
        pytest.skip("a local QuPath was found: test_write_runs_with_paquo covers the command")
    run = tmp_path / "run"
    write_run(run, synthetic_analysis())
    assert main(["qupath-project", str(tmp_path / "project" / "project.qpproj"), str(run)]) == 1
    err = capsys.readouterr().err
    assert "PAQUO_QUPATH_DIR" in err and ("pip install 'tumls-qp[qupath]'" in err or "cannot start QuPath" in err)
    assert not (tmp_path / "project").exists()
    assert "PAQUO_QUPATH_DIR" in PAQUO_HINT


@pytest.mark.qupath
def test_write_runs_with_paquo(tmp_path):
    reason = _qupath_available()
    if reason is not None:
        pytest.skip(reason)
    from tumls_qp.config import PipelineConfig, replace_in
    from tumls_qp.outputs.qupath_project import write_runs
    from tumls_qp.pipeline import analyze
    from tumls_qp.testing import write_synthetic_slide

    slide = write_synthetic_slide(tmp_path / "two-tissues.tif", 1024, 1024, 0.5)
    config = replace_in(PipelineConfig(), **{"tiles.tile_um": 64.0, "embedding.max_epochs": 1,
                                             "embedding.device": "cpu"})
    run = analyze([slide], tmp_path / "runs", config)[0]
    project = tmp_path / "project" / "project.qpproj"
    first = write_runs(project, [run.run_dir], add_images=True)
    again = write_runs(project, [run.run_dir])
    assert first[0].added_image and not again[0].added_image
    assert again[0].removed == first[0].added == run.manifest.outputs.geojson_features
