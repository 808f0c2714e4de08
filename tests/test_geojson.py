import copy
import gzip
import json
import uuid

import numpy as np
import pytest
from shapely.geometry import MultiPolygon, Polygon, box, shape

from tumls_qp.outputs.geojson import (
    clean_polygonal,
    feature_collection,
    make_feature,
    read_geojson,
    tissue_features,
    validate_geojson,
    validate_geojson_file,
    write_geojson,
)
from tumls_qp.tissue.representatives import Representative


def _good():
    return make_feature(box(0, 0, 10, 10), "annotation", "Tissue 1", (1, 2, 3), {"Area um^2": 1.5})


def test_made_features_follow_the_profile():
    feature = _good()
    assert validate_geojson(feature) == []
    assert uuid.UUID(feature["id"]).version == 4
    props = feature["properties"]
    assert props["objectType"] == "annotation"
    assert props["classification"] == {"name": "Tissue 1", "color": [1, 2, 3]}
    assert props["measurements"] == {"Area um^2": 1.5}
    assert feature["geometry"]["type"] == "Polygon"


def test_non_finite_measurements_are_left_out_and_detections_store_float32():
    feature = make_feature(box(0, 0, 1, 1), "detection", "Nucleus", (0, 0, 0),
                           {"a": float("nan"), "b": float("inf"), "c": 0.1, "d": None, "e": True})
    assert feature["properties"]["measurements"] == {"c": float(np.float32(0.1))}


def test_class_names_must_not_contain_colons():
    with pytest.raises(ValueError, match="':'"):
        make_feature(box(0, 0, 1, 1), "annotation", "Tumor: grade 2", (1, 2, 3))
    with pytest.raises(ValueError, match="needs a colour"):
        make_feature(box(0, 0, 1, 1), "annotation", "Tumor")


def test_clean_polygonal_repairs_bowtie_and_drops_slivers():
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10), (0, 0)])
    assert not bowtie.is_valid
    fixed = clean_polygonal(bowtie)
    assert isinstance(fixed, MultiPolygon) and fixed.is_valid and fixed.area == pytest.approx(50)
    assert clean_polygonal(Polygon([(0, 0), (10, 0.001), (10, 0), (0, 0)])) is None
    assert clean_polygonal(Polygon()) is None


def test_tissue_features_union_multipolygon_and_counts():
    boxes = np.array([[0, 0, 10, 10], [10, 0, 10, 10], [100, 100, 10, 10], [20, 0, 10, 10]])
    labels = np.array([0, 0, 0, 1])
    unc = np.array([0.1, 0.3, 0.5, 0.2], np.float32)
    reps = [Representative(tissue=0, rank=1, tile=0, distance=0.1, uncertainty=0.1, confidence=0.8, confident=True)]
    features = tissue_features(boxes, labels, unc, mpp=0.5, representatives=reps)
    assert validate_geojson(feature_collection(features)) == []
    tissue1, tissue2, rep, *tiles = features
    assert tissue1["geometry"]["type"] == "MultiPolygon"  # the far tile makes a second part
    assert shape(tissue1["geometry"]).area == 300
    m = tissue1["properties"]["measurements"]
    assert m["Area um^2"] == pytest.approx(75.0) and m["Tile count"] == 3 and m["Mean uncertainty"] == pytest.approx(0.3)
    assert tissue2["geometry"]["type"] == "Polygon"
    assert rep["properties"]["name"] == "Tissue 1 representative 1"
    assert rep["properties"]["measurements"] == {"Rank": 1.0, "Uncertainty": pytest.approx(0.1)}
    assert [t["properties"]["objectType"] for t in tiles] == ["tile"] * 4
    assert [t["properties"]["classification"]["name"] for t in tiles] == ["Tissue 1"] * 3 + ["Tissue 2"]
    assert tissue1["properties"]["classification"]["color"] != tissue2["properties"]["classification"]["color"]


def test_tissue_features_with_regions_and_confidence():
    boxes = np.array([[0, 0, 10, 10], [10, 0, 10, 10], [20, 0, 10, 10]])
    labels = np.array([0, 0, 1])
    unc = np.array([0.1, 0.3, 0.2], np.float32)
    confidence = np.array([0.9, 0.5, 0.7], np.float32)
    reps = [Representative(tissue=0, rank=1, tile=0, distance=0.1, uncertainty=0.1, confidence=0.9, confident=True)]
    # Tissue 1's region stops inside the second tile; tissue 2 has no region (its tiles stay as tiles).
    features = tissue_features(boxes, labels, unc, mpp=0.5, representatives=reps, confidence=confidence,
                               regions={0: box(0, 0, 14.5, 10)}, representative_boxes=[(-5, -5, 20, 20)])
    assert validate_geojson(feature_collection(features)) == []
    tissue1, rep, *tiles = features
    m = tissue1["properties"]["measurements"]
    assert shape(tissue1["geometry"]).area == 145 and m["Area um^2"] == pytest.approx(145 * 0.25)
    assert m["Tile count"] == 2 and m["Mean confidence"] == pytest.approx(0.7)
    assert shape(rep["geometry"]).bounds == (-5, -5, 15, 15)
    assert rep["properties"]["measurements"] == {"Rank": 1.0, "Uncertainty": pytest.approx(0.1),
                                                 "Confidence": pytest.approx(0.9)}
    assert [t["properties"]["measurements"]["Confidence"] for t in tiles] == pytest.approx([0.9, 0.5, 0.7])


def test_write_is_atomic_strict_and_gzips(tmp_path):
    fc = feature_collection([_good()])
    plain = write_geojson(fc, tmp_path / "a.geojson")
    zipped = write_geojson(fc, tmp_path / "a.geojson.gz")
    assert json.loads(plain.read_text()) == fc
    assert json.loads(gzip.decompress(zipped.read_bytes())) == fc
    assert read_geojson(zipped) == fc
    bad = copy.deepcopy(fc)
    bad["features"][0]["properties"]["measurements"]["x"] = float("nan")
    with pytest.raises(ValueError):
        write_geojson(bad, tmp_path / "b.geojson")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.geojson", "a.geojson.gz"]  # no temp file left


def _broken(mutate):
    feature = _good()
    mutate(feature)
    return validate_geojson(feature_collection([feature]))


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda f: f["properties"]["classification"].pop("color"), "no 'color'"),
        (lambda f: f["properties"]["classification"].update(color="#ff0000"), "not a hex string"),
        (lambda f: f["properties"]["classification"].update(color=[300, 0, 0]), "integers in 0-255"),
        (lambda f: f["properties"]["classification"].update(name="A: B"), "must not contain ':'"),
        (lambda f: f.update(geometry=None), "must not be null"),
        (lambda f: f["properties"]["measurements"].update(x="2.5"), "must be a number"),
        (lambda f: f["properties"]["measurements"].update(x=float("nan")), "not finite"),
        (lambda f: f["properties"].update(objectType="DETECTION"), "lower case"),
        (lambda f: f.update(id="cell-1"), "UUID"),
        (lambda f: f.pop("id"), "UUID"),
        (lambda f: f.update(geometry={"type": "GeometryCollection", "geometries": []}), "Polygon or MultiPolygon"),
        (lambda f: f.update(geometry={"type": "Polygon", "coordinates": []}), "empty coordinates"),
        (lambda f: f.update(geometry={"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0.5]]]}),
         "not closed"),
        (lambda f: f.update(geometry={"type": "Polygon",
                                      "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}),
         "invalid geometry"),
        # A hole that crosses its shell.
        (lambda f: f.update(geometry={"type": "Polygon", "coordinates": [
            [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]], [[5, 5], [15, 5], [15, 6], [5, 6], [5, 5]]]}),
         "invalid geometry"),
        # Valid in doubles, self-touching once snapped to 0.01 px as QuPath 0.6+ does.
        (lambda f: f.update(geometry={"type": "Polygon", "coordinates": [
            [[0, 0], [10, 0], [10, 10], [5.004, 10], [5, 5.001], [4.996, 10], [0, 10], [0, 0]]]}),
         "0.01 px grid"),
        (lambda f: f["properties"].update(nucleusGeometry=f["geometry"]), "sibling of geometry"),
        (lambda f: f.update(nucleusGeometry=f["geometry"]), "only for objectType 'cell'"),
        (lambda f: f["properties"].update(isLocked="no"), "isLocked"),
        (lambda f: f["properties"].update(plane={"z": 0}), "no 'plane'"),
    ],
)
def test_validator_catches_what_qupath_refuses(mutate, fragment):
    problems = _broken(mutate)
    assert problems, "the validator accepted a feature QuPath would refuse"
    assert any(fragment in p for p in problems), problems


def test_validator_containers():
    assert validate_geojson([_good(), _good()]) == []
    assert validate_geojson(_good()) == []
    assert validate_geojson({"type": "Polygon", "coordinates": []}) != []
    assert validate_geojson({"type": "FeatureCollection", "features": {}}) != []


def test_validate_file_checks_extension_and_strict_json(tmp_path):
    good = write_geojson(feature_collection([_good()]), tmp_path / "ok.geojson")
    assert validate_geojson_file(good) == []
    wrong_ext = tmp_path / "ok.txt"
    wrong_ext.write_text(good.read_text())
    assert "by extension" in validate_geojson_file(wrong_ext)[0]
    nan = tmp_path / "nan.geojson"
    nan.write_text(good.read_text().replace('"Area um^2":1.5', '"Area um^2":NaN'))
    assert "strict JSON" in validate_geojson_file(nan)[0]
    dup = tmp_path / "dup.geojson"
    dup.write_text(good.read_text().replace('"Area um^2":1.5', '"Area um^2":1.5,"Area um^2":2'))
    assert "duplicate key" in validate_geojson_file(dup)[0]


@pytest.mark.realdata
def test_qupaths_own_examples(shared_data):
    folder = shared_data / "qupath-geojson-examples"
    geometry = json.loads((folder / "polygon.geojson").read_text())
    wrapped = {"type": "Feature", "id": str(uuid.uuid4()), "geometry": geometry,
               "properties": {"objectType": "annotation"}}
    assert validate_geojson(wrapped) == []  # valid, holes and all, also once snapped
    assert validate_geojson(geometry) != []  # a bare geometry is not our profile
    # QuPath >= 0.5 reads non-finite and string measurements; 0.4 does not: we flag all six.
    feature = json.loads((folder / "feature-annotation-nonfinite-measurements.geojson").read_text())
    problems = validate_geojson(feature)
    flagged = sorted(p.split("'")[1] for p in problems)
    assert flagged == sorted(["Not a number", "Big", "Negative", "Not a number string", "Big string",
                              "Negative string", "Zero string", "Fine string"])
