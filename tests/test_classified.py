import numpy as np
import pytest
from shapely.geometry import box, shape

from tumls_qp.errors import InvalidInputError
from tumls_qp.outputs.classified import _tile_feature, classified_features
from tumls_qp.outputs.geojson import make_feature, validate_geojson


def test_fast_tile_objects_equal_the_general_ones():
    for x, y, w, h in [(10, 20, 64, 64), (0.004, 3.333, 100.5, 7.25), (1e6, 2e6, 1024, 1024)]:
        measurements = {"Score": 0.1, "Bad": float("nan"), "Big": 1e30}
        fast = _tile_feature(x, y, w, h, "A", (1, 2, 3), measurements)
        general = make_feature(box(x, y, x + w, y + h), "tile", "A", (1, 2, 3), measurements)
        assert validate_geojson(fast) == []
        fast.pop("id"), general.pop("id")
        assert fast == general


def test_classified_features_regions_tiles_and_errors():
    boxes = np.array([[0, 0, 10, 10], [10, 0, 10, 10], [30, 0, 10, 10]])
    features = classified_features(boxes, np.array([0, 0, 1]), np.array([0.2, 0.4, 1.0]), ["Tumor", "Benign"],
                                   [(200, 0, 0), (0, 200, 0)], mpp=0.5, score_name="SIC confidence",
                                   region_suffix="SIC")
    assert validate_geojson(features) == []
    tumour, benign, *tiles = features
    assert tumour["properties"]["name"] == "Tumor (SIC)" and shape(tumour["geometry"]).area == 200
    assert tumour["properties"]["measurements"] == {"Area um^2": 50.0, "Tile count": 2,
                                                     "Mean SIC confidence": pytest.approx(0.3)}
    assert benign["properties"]["classification"] == {"name": "Benign", "color": [0, 200, 0]}
    assert [t["properties"]["classification"]["name"] for t in tiles] == ["Tumor", "Tumor", "Benign"]
    assert [t["properties"]["measurements"]["SIC confidence"] for t in tiles] == pytest.approx([0.2, 0.4, 1.0])
    kwargs = dict(mpp=0.5, score_name="s", region_suffix="r")
    with pytest.raises(InvalidInputError, match="contains ':'"):
        classified_features(boxes, np.zeros(3, int), np.zeros(3), ["A: b"], [(1, 2, 3)], **kwargs)
    with pytest.raises(InvalidInputError, match=r"\[r, g, b\]"):
        classified_features(boxes, np.zeros(3, int), np.zeros(3), ["A"], ["#ff0000"], **kwargs)
    with pytest.raises(InvalidInputError, match="given twice"):
        classified_features(boxes, np.zeros(3, int), np.zeros(3), ["A", "A"], [(1, 2, 3)] * 2, **kwargs)
