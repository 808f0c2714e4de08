"""Tests of tumls_qp.cells.features: known answers on drawn shapes, the column table, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tumls_qp.cells.features as features
from tumls_qp.errors import InvalidInputError
from tumls_qp.cells.features import NUCLEUS_FEATURES, TISSUE_FEATURES, measure_nuclei, measure_tissue


def draw(shape: tuple[int, int], ellipses: list[tuple[float, float, float, float]], mpp: float) -> np.ndarray:
    """Label image of ellipses ``(x_um, y_um, semi_x_um, semi_y_um)``, labels 1..n; pixel centres at +0.5."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (x, y, a, b) in enumerate(ellipses, start=1):
        inside = (((xx + 0.5) * mpp - x) / a) ** 2 + (((yy + 0.5) * mpp - y) / b) ** 2 <= 1
        labels[inside] = i
    return labels


def tile(labels: np.ndarray) -> np.ndarray:
    """An RGB tile: dark purple on the labels, pink elsewhere."""
    rgb = np.empty(labels.shape + (3,), np.uint8)
    rgb[:] = (235, 180, 210)
    rgb[labels > 0] = (70, 40, 120)
    return rgb


def column(table: dict, key: str) -> np.ndarray:
    """A column by its key in the feature table."""
    name = next(f.name for f in NUCLEUS_FEATURES + TISSUE_FEATURES if f.key == key and f.name in table)
    return table[name]


@pytest.mark.parametrize("mpp, radius", [(0.25, 4.0), (0.5, 3.0), (0.12, 2.5), (1.0, 6.0)])
def test_disk_known_answers(mpp, radius):
    side = int(math.ceil(4 * radius / mpp))
    labels = draw((side, side), [(2 * radius, 2 * radius, radius, radius)], mpp)
    table = measure_nuclei(labels, tile(labels), mpp)
    assert len(column(table, "label")) == 1
    assert column(table, "area")[0] == pytest.approx(math.pi * radius ** 2, rel=0.05)
    assert column(table, "perimeter")[0] == pytest.approx(2 * math.pi * radius, rel=0.08)
    assert column(table, "circularity")[0] == pytest.approx(1.0, abs=0.08)
    assert column(table, "eccentricity")[0] < 0.25
    assert column(table, "major")[0] == pytest.approx(2 * radius, rel=0.06)
    assert column(table, "minor")[0] == pytest.approx(2 * radius, rel=0.06)
    assert column(table, "solidity")[0] > 0.9
    assert column(table, "x")[0] == pytest.approx(2 * radius / mpp, abs=0.1)
    assert column(table, "y")[0] == pytest.approx(2 * radius / mpp, abs=0.1)


def test_ellipse_eccentricity_and_axes():
    mpp, a, b = 0.25, 6.0, 3.0
    labels = draw((120, 120), [(15.0, 15.0, a, b)], mpp)
    table = measure_nuclei(labels, tile(labels), mpp)
    assert column(table, "eccentricity")[0] == pytest.approx(math.sqrt(1 - (b / a) ** 2), abs=0.02)
    assert column(table, "major")[0] == pytest.approx(2 * a, rel=0.03)
    assert column(table, "minor")[0] == pytest.approx(2 * b, rel=0.03)
    assert column(table, "circularity")[0] < 0.9


def test_intensity_columns():
    mpp = 0.5
    labels = draw((60, 60), [(10.0, 10.0, 4.0, 4.0), (20.0, 20.0, 3.0, 3.0)], mpp)
    rgb = tile(labels)
    haematoxylin = np.where(labels == 1, 1.5, np.where(labels == 2, 0.5, 0.0)).astype(np.float32)
    table = measure_nuclei(labels, rgb, mpp, haematoxylin=haematoxylin)
    np.testing.assert_allclose(column(table, "haematoxylin"), [1.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(column(table, "haematoxylin_std"), [0.0, 0.0], atol=1e-6)
    luma = 0.299 * 70 + 0.587 * 40 + 0.114 * 120
    np.testing.assert_allclose(column(table, "luminance"), [luma, luma], atol=0.01)
    # Without a haematoxylin image the tile's own deconvolution is used: purple nuclei are stained.
    own = measure_nuclei(labels, rgb, mpp)
    assert np.all(column(own, "haematoxylin") > 0.2)


def test_column_table_is_the_single_source():
    labels = draw((40, 40), [(5.0, 5.0, 2.0, 2.0)], 0.5)
    nuclei = measure_nuclei(labels, tile(labels), 0.5)
    tissue = measure_tissue(labels, tile(labels), 0.5)
    assert list(nuclei) == [f.name for f in NUCLEUS_FEATURES]
    assert list(tissue) == [f.name for f in TISSUE_FEATURES]
    for feature in NUCLEUS_FEATURES + TISSUE_FEATURES:
        assert ":" not in feature.name and feature.name.strip() == feature.name
        assert feature.definition
        assert f"``{feature.name}``" in features.__doc__
    names = [f.name for f in NUCLEUS_FEATURES]
    assert len(set(names)) == len(names)
    names = [f.name for f in TISSUE_FEATURES]
    assert len(set(names)) == len(names)


def test_zero_nuclei():
    labels = np.zeros((50, 60), np.int32)
    rgb = tile(labels)
    nuclei = measure_nuclei(labels, rgb, 0.5)
    assert all(len(v) == 0 for v in nuclei.values())
    tissue = measure_tissue(labels, rgb, 0.5)
    assert tissue["Nuclei"] == 0 and tissue["Nuclei per mm^2"] == 0
    for key in ("luminance", "haematoxylin", "area_mean", "circularity_mean", "eccentricity_mean", "spread"):
        assert math.isnan(column(tissue, key))
    assert tissue["ROI area um^2"] == pytest.approx(50 * 60 * 0.25)
    # A uniform tile has no texture.
    assert tissue["GLCM contrast"] == 0 and tissue["GLCM homogeneity"] == 1


def test_one_two_and_three_nuclei_spread():
    mpp = 0.5
    one = draw((100, 100), [(10.0, 10.0, 2.0, 2.0)], mpp)
    assert math.isnan(measure_tissue(one, tile(one), mpp)["Spread um"])
    two = draw((100, 100), [(10.0, 10.0, 2.0, 2.0), (40.0, 10.0, 2.0, 2.0)], mpp)
    assert measure_tissue(two, tile(two), mpp)["Spread um"] == pytest.approx(0.0, abs=1e-6)
    three = draw((100, 100), [(10.0, 10.0, 2.0, 2.0), (20.0, 10.0, 2.0, 2.0), (40.0, 10.0, 2.0, 2.0)], mpp)
    # Pairwise distances 10, 30 and 20 µm.
    assert measure_tissue(three, tile(three), mpp)["Spread um"] == pytest.approx(np.std([10, 30, 20]), rel=1e-3)


def test_spread_in_blocks_equals_direct(monkeypatch):
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 500, (300, 2))
    diff = points[:, None] - points[None]
    dist = np.sqrt((diff ** 2).sum(-1))[np.triu_indices(300, 1)]
    monkeypatch.setattr(features, "_PAIR_BLOCK", 7)
    assert features._pairwise_distance_std(points) == pytest.approx(dist.std(), rel=1e-9)


def test_density_and_roi():
    mpp = 0.5
    centres = [(10.0, 10.0), (30.0, 10.0), (10.0, 40.0), (40.0, 40.0)]
    labels = draw((100, 100), [(x, y, 2.5, 2.5) for x, y in centres], mpp)
    rgb = tile(labels)
    whole = measure_tissue(labels, rgb, mpp)
    area_mm2 = (100 * mpp) ** 2 / 1e6
    assert whole["Nuclei"] == 4 and whole["Nuclei per mm^2"] == pytest.approx(4 / area_mm2)
    roi = np.zeros((100, 100), bool)
    roi[:, :50] = True  # x < 25 µm: the two nuclei at x = 10 µm
    half = measure_tissue(labels, rgb, mpp, roi=roi)
    assert half["Nuclei"] == 2 and half["Nuclei per mm^2"] == pytest.approx(2 / (area_mm2 / 2))
    assert half["Spread um"] == pytest.approx(0.0, abs=1e-6)  # one pair, 30 µm apart
    assert half["Nucleus area mean um^2"] == pytest.approx(math.pi * 2.5 ** 2, rel=0.06)
    assert half["Nucleus circularity mean"] == pytest.approx(1.0, abs=0.08)


def test_glcm_texture_order():
    mpp = 0.5
    labels = np.zeros((64, 64), np.int32)
    smooth = np.full((64, 64, 3), 128, np.uint8)
    checker = np.where((np.indices((64, 64)).sum(0) // 2) % 2 == 0, 40, 220).astype(np.uint8)
    rough = np.repeat(checker[..., None], 3, axis=2)
    a = measure_tissue(labels, smooth, mpp)
    b = measure_tissue(labels, rough, mpp)
    assert b["GLCM contrast"] > a["GLCM contrast"] + 10
    assert b["GLCM homogeneity"] < a["GLCM homogeneity"]


def test_reuses_nucleus_table():
    mpp = 0.5
    labels = draw((60, 60), [(10.0, 10.0, 3.0, 3.0), (20.0, 22.0, 3.0, 3.0)], mpp)
    rgb = tile(labels)
    table = measure_nuclei(labels, rgb, mpp)
    assert measure_tissue(labels, rgb, mpp, nuclei=table) == measure_tissue(labels, rgb, mpp)


@pytest.mark.parametrize("call, message", [
    (lambda: measure_nuclei(np.zeros((5, 5), np.float32), np.zeros((5, 5, 3), np.uint8), 0.5), "labels"),
    (lambda: measure_nuclei(np.zeros((5, 6), np.int32), np.zeros((5, 5, 3), np.uint8), 0.5), "labels"),
    (lambda: measure_nuclei(-np.ones((5, 5), np.int32), np.zeros((5, 5, 3), np.uint8), 0.5), "labels"),
    (lambda: measure_nuclei(np.zeros((5, 5), np.int32), np.zeros((5, 5, 3), np.float64), 0.5), "rgb"),
    (lambda: measure_nuclei(np.zeros((5, 5), np.int32), np.zeros((5, 5, 3), np.uint8), 0.0), "mpp"),
    (lambda: measure_nuclei(np.ones((5, 5), np.int32), np.zeros((5, 5, 3), np.uint8), 0.5,
                            haematoxylin=np.zeros((4, 5))), "haematoxylin"),
    (lambda: measure_tissue(np.zeros((5, 5), np.int32), np.zeros((5, 5, 3), np.uint8), float("nan")), "mpp"),
    (lambda: measure_tissue(np.zeros((5, 5), np.int32), np.zeros((5, 5, 3), np.uint8), 0.5,
                            roi=np.ones((5, 5), np.uint8)), "roi"),
    (lambda: measure_tissue(np.zeros((5, 5), np.int32), np.zeros((5, 5, 3), np.uint8), 0.5,
                            nuclei={"x": 1}), "nuclei"),
])
def test_bad_arguments(call, message):
    with pytest.raises(InvalidInputError, match=f"^{message} must"):
        call()


def test_tissue_roi_leaves_out_the_glass():
    mpp = 0.5
    labels = draw((200, 200), [(20.0, 20.0, 3.0, 3.0), (40.0, 60.0, 3.0, 3.0), (80.0, 30.0, 3.0, 3.0)], mpp)
    rgb = tile(labels)
    rgb[labels == 0] = (215, 140, 185)  # eosin-stained tissue (mean OD 0.15)
    rgb[:, 120:] = (245, 244, 246)  # glass: the right 40 % of the patch
    rgb[40:44, 40:44] = (245, 244, 246)  # a gap of 4 µm² between cells stays tissue
    rgb[150:152, 160:162] = (200, 120, 180)  # a speck of 1 µm² on the glass is dust
    roi = features.tissue_roi(rgb, mpp)
    assert roi[:, :120].all() and not roi[:, 120:].any()
    area_mm2 = 200 * 120 * mpp * mpp / 1e6
    measured = measure_tissue(labels, rgb, mpp, roi=roi)
    assert measured["ROI area um^2"] == pytest.approx(200 * 120 * mpp * mpp)
    assert measured["Nuclei per mm^2"] == pytest.approx(2 / area_mm2)
    with pytest.raises(InvalidInputError, match="mpp"):
        features.tissue_roi(rgb, 0.0)


@pytest.mark.realdata
def test_vectorised_measurements_equal_regionprops_on_real_nuclei(shared_data):
    """The per-label sums give what scikit-image's regionprops gives, on annotated MoNuSeg nuclei (development set)."""
    from skimage.measure import regionprops_table

    from tumls_qp.evaluation.monuseg import list_monuseg, read_monuseg_image

    folder = shared_data / "monuseg_train"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing")
    rgb, labels, mpp = read_monuseg_image(list_monuseg(folder)[0])
    rgb, labels = rgb[:500, :500], labels[:500, :500]  # a quarter: about 125 nuclei, some cut by the edge
    table = measure_nuclei(labels, rgb, mpp)
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    props = regionprops_table(labels, intensity_image=luma, properties=(
        "label", "area", "centroid", "eccentricity", "axis_major_length", "axis_minor_length", "perimeter_crofton",
        "solidity", "intensity_mean"))
    assert len(props["label"]) > 100 and np.array_equal(column(table, "label"), props["label"])
    expected = {"area": props["area"] * mpp ** 2, "x": props["centroid-1"] + 0.5, "y": props["centroid-0"] + 0.5,
                "eccentricity": props["eccentricity"], "major": props["axis_major_length"] * mpp,
                "minor": props["axis_minor_length"] * mpp, "perimeter": props["perimeter_crofton"] * mpp,
                "luminance": props["intensity_mean"]}
    for key, values in expected.items():
        np.testing.assert_allclose(column(table, key), values, rtol=1e-6, atol=1e-9, err_msg=key)
    # Solidity differs by definition: the hull of the pixel squares here, of the pixel centres' image there.
    np.testing.assert_allclose(column(table, "solidity"), props["solidity"], atol=0.1)
