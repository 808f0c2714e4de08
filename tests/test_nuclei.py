"""Tests of tumls_qp.cells.nuclei: known answers on drawn H&E images, robustness, polygons, real MoNuSeg tiles."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely

from tumls_qp.config import NucleiConfig, PipelineConfig, config_from_dict, dump_config, load_config
from tumls_qp.errors import ConfigError, InvalidInputError
from tumls_qp.cells.nuclei import (
    REFERENCE_STAINS,
    NucleiResult,
    estimate_stains,
    haematoxylin_od,
    labels_to_polygons,
    segment_nuclei,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MONUSEG = DATA / "monuseg_test"

#: Generous upper bound of a nucleus area (µm²): a disk 25 µm across.
GIANT_UM2 = 500.0


def he_image(shape: tuple[int, int], disks: list[tuple[float, float, float]], mpp: float,
             seed: int = 0) -> np.ndarray:
    """An H&E-like tile by Beer-Lambert: eosin stroma everywhere, haematoxylin disks.

    ``disks`` are ``(x_um, y_um, radius_um)``; returns (H, W, 3) uint8.
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    h_conc = np.zeros(shape, np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    for x_um, y_um, r_um in disks:
        # Pixel (r, c) has its centre at ((c + 0.5) mpp, (r + 0.5) mpp) µm.
        inside = ((xx + 0.5) * mpp - x_um) ** 2 + ((yy + 0.5) * mpp - y_um) ** 2 <= r_um ** 2
        h_conc[inside] = 0.9
    e_conc = np.full(shape, 0.35, np.float32) + rng.normal(0, 0.03, shape).astype(np.float32)
    od = h_conc[..., None] * REFERENCE_STAINS[0] + e_conc[..., None] * REFERENCE_STAINS[1]
    rgb = 255.0 * np.power(10.0, -od) + rng.normal(0, 2.0, od.shape)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def areas_um2(labels: np.ndarray, mpp: float) -> np.ndarray:
    """Area of each label 1..n in µm²."""
    return np.bincount(labels.ravel())[1:] * mpp * mpp


def load_monuseg(name: str) -> tuple[np.ndarray, float]:
    """One MoNuSeg image and its pixel size."""
    from tumls_qp.evaluation.monuseg import list_monuseg, read_monuseg_image

    item = next(i for i in list_monuseg(MONUSEG) if i.image_id == name)
    rgb, _, mpp = read_monuseg_image(item)
    return rgb, mpp


# --------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("mpp", [0.12, 0.25, 0.5, 1.0])
def test_disks_one_instance_each_with_their_area(mpp):
    radius = 3.5
    centres = [(15.0, 15.0), (40.0, 18.0), (20.0, 45.0), (48.0, 48.0)]
    side = int(round(64 / mpp))
    rgb = he_image((side, side), [(x, y, radius) for x, y in centres], mpp)
    result = segment_nuclei(rgb, mpp)
    assert result.n_nuclei == len(centres)
    expected = math.pi * radius ** 2
    # A digital disk at 1 µm/px is 7 px across: its pixel area is within about 15% of πr².
    tolerance = 0.1 if mpp <= 0.5 else 0.2
    np.testing.assert_allclose(areas_um2(result.mask2, mpp), expected, rtol=tolerance)
    # Each instance sits on one disk.
    for x, y in centres:
        assert result.mask2[int(y / mpp), int(x / mpp)] > 0


def test_two_touching_disks_are_split():
    mpp, radius = 0.25, 3.5
    # Centres 6 µm apart: the disks overlap by 1 µm and form one connected blob.
    rgb = he_image((160, 200), [(22.0, 20.0, radius), (28.0, 20.0, radius)], mpp)
    result = segment_nuclei(rgb, mpp)
    n_blobs, _ = cv2.connectedComponents(result.mask1.view(np.uint8))
    assert n_blobs - 1 == 1
    assert result.n_nuclei == 2
    left, right = result.mask2[80, int(20 / mpp)], result.mask2[80, int(30 / mpp)]
    assert left != right and left > 0 and right > 0
    np.testing.assert_allclose(areas_um2(result.mask2, mpp), math.pi * radius ** 2, rtol=0.2)


def _draw(labels: np.ndarray, label: int, centre: tuple[int, int], axes: tuple[int, int]) -> None:
    """Paint a filled ellipse of ``label`` (OpenCV's centre (x, y) and half axes) where the labels are 0."""
    canvas = np.zeros(labels.shape, np.uint8)
    cv2.ellipse(canvas, centre, axes, 0, 0, 360, 1, -1)
    labels[(canvas > 0) & (labels == 0)] = label


def test_oversized_waisted_object_is_split_and_a_large_ellipse_is_not():
    from tumls_qp.cells.nuclei import _split_oversized

    labels = np.zeros((200, 260), np.int32)
    for i in range(24):  # the tile's typical nuclei: disks of radius 5 px (about 80 px)
        _draw(labels, i + 1, (12 + 20 * (i % 12), 12 + 20 * (i // 12)), (5, 5))
    _draw(labels, 25, (60, 120), (6, 6))  # two touching nuclei: one object, waisted
    _draw(labels, 25, (71, 120), (6, 6))
    _draw(labels, 26, (180, 130), (16, 8))  # one large elongated nucleus: an ellipse
    area = np.bincount(labels.ravel())
    assert area[25] >= 2 * np.median(area[1:]) and area[26] >= 2 * np.median(area[1:])
    out = _split_oversized(labels, area, min_px=20)
    assert out.max() == 27  # one new label, right after the last
    assert set(np.unique(out[labels == 25])) == {25, 27}
    assert (out[120, 55] == 25) != (out[120, 76] == 25)  # the two disks are apart
    assert np.array_equal(out[labels == 26], labels[labels == 26])  # the ellipse stays whole
    assert np.array_equal(out > 0, labels > 0)  # pixels are relabelled, none added or lost
    # Parts smaller than min_px: no cut. Too few nuclei for a typical size: nothing changes.
    assert np.array_equal(_split_oversized(labels, area, min_px=500), labels)
    few = np.where(labels > 20, labels - 20, 0)
    assert np.array_equal(_split_oversized(few, np.bincount(few.ravel()), min_px=20), few)


def vesicular_image(mpp: float, centres: list[tuple[float, float]], radius: float = 5.0,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Vesicular nuclei: a dark membrane 1 µm wide, faint over 1.6 µm of its length, pale
    chromatin inside and a nucleolus. Returns the RGB tile and the true labels (the disks)."""
    side = int(round(80 / mpp))
    yy, xx = np.mgrid[0:side, 0:side]
    h_conc = np.zeros((side, side), np.float32)
    truth = np.zeros((side, side), np.int32)
    for k, (cx, cy) in enumerate(centres):
        x, y = (xx + 0.5) * mpp - cx, (yy + 0.5) * mpp - cy
        r, angle = np.hypot(x, y), np.arctan2(y, x)
        disk = r <= radius
        truth[disk] = k + 1
        h_conc[disk] = 0.12  # pale chromatin
        rim = disk & (r > radius - 1.0)
        faint = np.abs((angle - k + np.pi) % (2 * np.pi) - np.pi) < 0.8 / radius  # a different side each
        h_conc[rim & ~faint] = 0.9
        h_conc[rim & faint] = 0.05
        h_conc[np.hypot(x - 0.5, y + 0.3) <= 0.8] = 0.9  # nucleolus
    rng = np.random.default_rng(seed)
    e_conc = np.full(h_conc.shape, 0.35, np.float32) + rng.normal(0, 0.03, h_conc.shape).astype(np.float32)
    od = h_conc[..., None] * REFERENCE_STAINS[0] + e_conc[..., None] * REFERENCE_STAINS[1]
    rgb = 255.0 * np.power(10.0, -od) + rng.normal(0, 2.0, od.shape)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8), truth


def _found_whole(labels: np.ndarray, truth: np.ndarray) -> int:
    """How many true nuclei lie, to 90% or more, in one instance that holds no other nucleus."""
    whole = 0
    for k in range(1, int(truth.max()) + 1):
        values, counts = np.unique(labels[truth == k], return_counts=True)
        best = values[np.argmax(np.where(values > 0, counts, -1))]
        if best > 0 and counts[values == best][0] >= 0.9 * (truth == k).sum():
            whole += len(np.unique(truth[labels == best])) <= 2  # the nucleus and the background
    return whole


def test_vesicular_nuclei_are_found_whole():
    # At 0.25 µm/px (40x). At 0.5 µm/px the pale pocket between this off-centre nucleolus and
    # the membrane is 2-3 px wide: the rim's closing takes it, and one of the four nuclei is cut in two.
    mpp = 0.25
    centres = [(20.0, 20.0), (55.0, 22.0), (22.0, 58.0), (58.0, 58.0)]
    rgb, truth = vesicular_image(mpp, centres)
    result = segment_nuclei(rgb, mpp)
    assert result.n_nuclei == len(centres)
    assert _found_whole(result.mask2, truth) == len(centres)
    # The thin, open rims alone do not survive mask 1's opening: the interiors are what finds them.
    assert _found_whole(segment_nuclei(rgb, mpp, NucleiConfig(pale_interior_max_um2=0)).mask2, truth) == 0


def test_rim_interiors_fill_an_open_ring_not_the_gaps_among_nuclei(monkeypatch):
    import tumls_qp.cells.nuclei as nuclei

    mpp, side = 0.25, 200
    yy, xx = np.mgrid[0:side, 0:side]

    def polar(cx: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
        x, y = (xx + 0.5) * mpp - cx, (yy + 0.5) * mpp - cy
        return np.hypot(x, y), np.arctan2(y, x)

    r, angle = polar(35.0, 35.0)
    ring = (r > 3.3) & (r <= 4.3) & (np.abs(angle) > 0.15)  # a membrane with a gap of about 1.2 µm
    interior = nuclei._rim_interiors(ring, 1 / mpp, 40 / mpp ** 2)
    assert interior[r <= 3.2].all() and not interior[r > 3.5].any()  # the interior, not the gap
    assert not nuclei._rim_interiors(ring, 1 / mpp, 20 / mpp ** 2).any()  # larger than allowed
    # Nine solid nuclei 0.8 µm apart: the closing encloses the gaps among them, but nuclei lie
    # all around those gaps: no interiors.
    crowd = np.zeros((side, side), bool)
    for i in range(3):
        for j in range(3):
            crowd |= polar(12 + 6.8 * i, 12 + 6.8 * j)[0] <= 3.0
    assert not nuclei._rim_interiors(crowd, 1 / mpp, 40 / mpp ** 2).any()
    monkeypatch.setattr(nuclei, "_RIM_OUTER_MAX", 1.01)  # without the ring test they would be filled
    assert nuclei._rim_interiors(crowd, 1 / mpp, 40 / mpp ** 2).sum() > 500


def test_result_fields_and_types():
    mpp = 0.5
    rgb = he_image((80, 100), [(15.0, 15.0, 3.0), (35.0, 25.0, 4.0)], mpp)
    result = segment_nuclei(rgb, mpp)
    assert isinstance(result, NucleiResult)
    for name in ("mask1", "mask3", "artefacts"):
        assert getattr(result, name).shape == (80, 100) and getattr(result, name).dtype == bool
    assert result.mask2.dtype == np.int32 and result.mask2.shape == (80, 100)
    assert result.haematoxylin.dtype == np.float32 and result.haematoxylin.shape == (80, 100)
    # Labels are 1..n without gaps, and mask 1 is the union of the instances.
    assert set(np.unique(result.mask2)) == set(range(result.n_nuclei + 1))
    np.testing.assert_array_equal(result.mask1, result.mask2 > 0)
    assert result.stains.matrix.shape == (2, 3)
    assert result.mpp == mpp and math.isfinite(result.threshold)


def test_deterministic():
    mpp = 0.5
    rgb = he_image((120, 120), [(20.0, 20.0, 3.0), (40.0, 35.0, 4.0), (25.0, 45.0, 3.5)], mpp, seed=3)
    a, b = segment_nuclei(rgb, mpp), segment_nuclei(rgb.copy(), mpp)
    np.testing.assert_array_equal(a.mask2, b.mask2)
    np.testing.assert_array_equal(a.mask3, b.mask3)


def test_haematoxylin_od_of_pure_stain():
    # A pixel of 0.8 haematoxylin and 0.2 eosin by Beer-Lambert deconvolves to those amounts.
    od = 0.8 * REFERENCE_STAINS[0] + 0.2 * REFERENCE_STAINS[1]
    rgb = np.clip(np.round(255 * 10.0 ** -od), 0, 255).astype(np.uint8).reshape(1, 1, 3)
    assert haematoxylin_od(rgb, REFERENCE_STAINS)[0, 0] == pytest.approx(0.8, abs=0.03)


def test_macenko_recovers_stain_vectors_and_falls_back():
    mpp = 0.5
    rgb = he_image((200, 200), [(x, y, 3.5) for x in range(10, 100, 15) for y in range(10, 100, 15)], mpp)
    estimate = estimate_stains(rgb)
    assert estimate.source == "tile"
    cos = float(np.dot(estimate.matrix[0], REFERENCE_STAINS[0]))
    assert cos > math.cos(math.radians(10))
    # Too few pixels, or one colour only: the reference vectors.
    assert estimate_stains(rgb[:4, :4]).source == "reference"
    assert estimate_stains(np.full((64, 64, 3), (120, 40, 160), np.uint8)).source == "reference"


def test_macenko_deviation_limit():
    # An eosin 36° from the reference vector (turned out of the H&E plane): the reference vectors
    # at the default 30° limit, the tile's own vectors at 45°.
    h_ref, e_ref = REFERENCE_STAINS
    normal = np.cross(h_ref, e_ref) / np.linalg.norm(np.cross(h_ref, e_ref))
    eosin = math.cos(math.radians(36)) * e_ref + math.sin(math.radians(36)) * normal
    rng = np.random.default_rng(0)
    h_conc = np.where(rng.random((200, 200)) < 0.2, 0.9, 0.0)
    e_conc = 0.35 + rng.normal(0, 0.03, (200, 200))
    od = h_conc[..., None] * h_ref + e_conc[..., None] * eosin
    rgb = np.clip(np.round(255.0 * np.power(10.0, -od) + rng.normal(0, 2.0, od.shape)), 0, 255).astype(np.uint8)
    assert estimate_stains(rgb).source == "reference"
    wide = estimate_stains(rgb, max_deviation_deg=45)
    assert wide.source == "tile"
    assert float(np.dot(wide.matrix[1], eosin)) > math.cos(math.radians(4))
    for bad in (0, 91, float("nan"), True, "45"):
        with pytest.raises(InvalidInputError, match="max_deviation_deg"):
            estimate_stains(rgb, max_deviation_deg=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("value", [255, 250, 240])
def test_blank_tile_has_no_nuclei(value):
    rng = np.random.default_rng(1)
    rgb = np.clip(value + rng.normal(0, 3, (256, 256, 3)), 0, 255).astype(np.uint8)
    result = segment_nuclei(rgb, 0.25)
    assert result.n_nuclei == 0 and not result.mask1.any() and not result.mask3.any()


@pytest.mark.parametrize("shape", [(1, 1), (5, 5), (1, 50), (3, 200), (20, 20)])
def test_tiny_tiles(shape):
    rgb = he_image((64, 64), [(8.0, 8.0, 3.0)], 0.25)[: shape[0], : shape[1]].copy()
    if rgb.shape[:2] != shape:
        rgb = np.resize(rgb, shape + (3,))
    result = segment_nuclei(rgb, 0.25)
    assert result.mask2.shape == shape and result.mask1.shape == shape and result.mask3.shape == shape


@pytest.mark.parametrize("colour", [(255, 0, 0), (0, 0, 255), (0, 255, 0), (128, 0, 128), (0, 0, 0)])
def test_pure_colour_tile(colour):
    rgb = np.full((128, 128, 3), colour, np.uint8)
    assert segment_nuclei(rgb, 0.5).n_nuclei == 0


def test_fluorescence_like_tile_has_no_nuclei():
    # Bright DAPI-like blobs on black: they emit light instead of absorbing it.
    rng = np.random.default_rng(2)
    rgb = np.zeros((256, 256, 3), np.uint8)
    for _ in range(30):
        x, y = (int(v) for v in rng.integers(10, 246, 2))
        cv2.circle(rgb, (x, y), int(rng.integers(5, 12)), (0, 0, int(rng.integers(120, 255))), -1)
    rgb = np.clip(cv2.GaussianBlur(rgb, (0, 0), 1.5) + rng.normal(0, 3, rgb.shape), 0, 255).astype(np.uint8)
    assert segment_nuclei(rgb, 0.5).n_nuclei <= 2


def test_black_region_gives_no_nuclei_inside():
    mpp = 0.5
    rgb = he_image((200, 200), [(x, y, 3.5) for x in range(10, 100, 15) for y in range(10, 100, 15)], mpp)
    cv2.circle(rgb, (100, 100), 45, (12, 12, 18), -1)
    result = segment_nuclei(rgb, mpp)
    yy, xx = np.nonzero(result.mask1)
    assert not np.any((yy - 100) ** 2 + (xx - 100) ** 2 < 40 ** 2)
    assert result.artefacts[100, 100]
    assert areas_um2(result.mask2, mpp).max() < GIANT_UM2


def test_coloured_ink_is_an_artefact():
    # Green ink absorbs red and blue: no mix of haematoxylin and eosin has that colour.
    mpp = 0.5
    rgb = he_image((200, 200), [(x, y, 3.5) for x in range(10, 100, 15) for y in range(10, 100, 15)], mpp)
    cv2.line(rgb, (0, 20), (199, 180), (30, 120, 40), 16)
    result = segment_nuclei(rgb, mpp)
    assert result.artefacts[20, 0] and result.artefacts[100, 100]
    assert not result.artefacts[5, 190]  # plain eosin
    assert not result.mask1[100, 100]


@pytest.mark.parametrize("rgb, mpp, message", [
    (np.zeros((10, 10, 3), np.float32), 0.25, "rgb"),
    (np.zeros((10, 10), np.uint8), 0.25, "rgb"),
    (np.zeros((10, 10, 4), np.uint8), 0.25, "rgb"),
    (np.zeros((0, 10, 3), np.uint8), 0.25, "rgb"),
    ([[[0, 0, 0]]], 0.25, "rgb"),
    (np.zeros((10, 10, 3), np.uint8), 0, "mpp"),
    (np.zeros((10, 10, 3), np.uint8), -0.25, "mpp"),
    (np.zeros((10, 10, 3), np.uint8), float("nan"), "mpp"),
    (np.zeros((10, 10, 3), np.uint8), float("inf"), "mpp"),
    (np.zeros((10, 10, 3), np.uint8), "0.25", "mpp"),
    (np.zeros((10, 10, 3), np.uint8), True, "mpp"),
])
def test_bad_arguments_name_the_parameter(rgb, mpp, message):
    with pytest.raises(InvalidInputError) as info:
        segment_nuclei(rgb, mpp)
    text = str(info.value)
    assert text.startswith(message)
    received = repr(mpp) if message == "mpp" else ""
    assert received in text


def test_bad_config_type():
    with pytest.raises(InvalidInputError, match="cfg must be a NucleiConfig; got dict"):
        segment_nuclei(np.zeros((8, 8, 3), np.uint8), 0.5, {"min_area_um2": 1})


# --------------------------------------------------------------------------- polygons


def test_polygon_frame_offset_and_scale():
    labels = np.zeros((6, 8), np.int32)
    labels[2, 5] = 7  # one pixel: the square [5, 6] x [2, 3]
    labels[0:2, 0:3] = 3
    polygons = dict(labels_to_polygons(labels))
    assert sorted(polygons) == [3, 7]
    assert polygons[7].bounds == pytest.approx((5, 2, 6, 3))
    assert polygons[3].bounds == pytest.approx((0, 0, 3, 2))
    assert polygons[3].area == pytest.approx(6, rel=0.03)
    moved = dict(labels_to_polygons(labels, offset=(1000.0, 50.0), scale=4.0))
    assert moved[7].bounds == pytest.approx((1020, 58, 1024, 62))
    assert moved[3].area == pytest.approx(16 * polygons[3].area, rel=1e-6)


def test_polygons_valid_snapped_and_close_to_pixel_area():
    mpp = 0.25
    rng = np.random.default_rng(4)
    disks = [(float(x), float(y), float(r)) for x, y, r in
             zip(rng.uniform(5, 59, 25), rng.uniform(5, 59, 25), rng.uniform(2, 5, 25))]
    result = segment_nuclei(he_image((256, 256), disks, mpp), mpp)
    assert result.n_nuclei > 5
    polygons = labels_to_polygons(result.mask2, offset=(12345.67, 890.12), scale=2.0)
    assert [label for label, _ in polygons] == list(range(1, result.n_nuclei + 1))
    pixel_area = np.bincount(result.mask2.ravel())[1:]
    unsimplified = dict(labels_to_polygons(result.mask2, simplify_px=0))
    for label, polygon in polygons:
        assert polygon.geom_type == "Polygon" and polygon.is_valid and not polygon.is_empty
        coords = shapely.get_coordinates(polygon)
        np.testing.assert_allclose(coords * 100, np.round(coords * 100), atol=1e-6)
        assert polygon.area / 4.0 == pytest.approx(pixel_area[label - 1], rel=0.03)
        # The pixel staircase is simplified to a few vertices per µm of outline.
        assert len(polygon.exterior.coords) < len(unsimplified[label].exterior.coords) / 3


def test_polygon_with_hole_and_diagonal_parts():
    labels = np.zeros((12, 12), np.int32)
    labels[1:8, 1:8] = 1
    labels[3:6, 3:6] = 0  # a hole of 9 px
    labels[9, 9] = 2
    labels[10, 10] = 2  # diagonal neighbour: one 8-connected object
    polygons = dict(labels_to_polygons(labels, simplify_px=0))
    ring = polygons[1]
    assert len(ring.interiors) == 1
    assert ring.area == pytest.approx(49 - 9, rel=0.02)
    assert polygons[2].is_valid and polygons[2].geom_type == "Polygon"
    # The diagonal neighbours stay one polygon, joined by a sliver where their corners meet.
    assert polygons[2].area == pytest.approx(2.0, rel=0.1)


def test_polygons_of_empty_labels():
    assert labels_to_polygons(np.zeros((5, 5), np.int32)) == []
    assert labels_to_polygons(np.zeros((0, 0), np.int32)) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"labels": np.zeros((4, 4), np.float32)}, "labels"),
    ({"labels": np.zeros((4, 4, 2), np.int32)}, "labels"),
    ({"scale": 0}, "scale"),
    ({"scale": float("nan")}, "scale"),
    ({"offset": (1.0,)}, "offset"),
    ({"offset": (0.0, float("inf"))}, "offset"),
    ({"simplify_px": -1}, "simplify_px"),
])
def test_polygon_bad_arguments(kwargs, message):
    args = {"labels": np.ones((4, 4), np.int32)}
    args.update(kwargs)
    labels = args.pop("labels")
    with pytest.raises(InvalidInputError, match=f"^{message} must"):
        labels_to_polygons(labels, **args)


# --------------------------------------------------------------------------- real tiles


@pytest.fixture(scope="module")
def bladder() -> tuple[np.ndarray, float]:
    if not MONUSEG.is_dir():
        pytest.skip(f"MoNuSeg test data not found at {MONUSEG}")
    return load_monuseg("TCGA-ZF-A9R5-01A-01-TS1")


def corrupt(rgb: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """A MoNuSeg tile with a synthetic artefact."""
    rng = np.random.default_rng(seed)
    out = rgb.copy()
    if kind == "black":
        cv2.circle(out, (500, 500), 160, (15, 15, 20), -1)
        cv2.ellipse(out, (150, 820), (120, 60), 30, 0, 360, (40, 38, 42), -1)
    elif kind in ("pen-blue", "pen-green", "pen-red", "pen-black"):
        colour = {"pen-blue": (20, 40, 160), "pen-green": (30, 120, 40), "pen-red": (150, 20, 30),
                  "pen-black": (10, 10, 10)}[kind]
        cv2.line(out, (0, 100), (999, 900), colour, 40)
        cv2.line(out, (100, 999), (700, 0), colour, 25)
    elif kind == "grey-haze":
        patch = out[200:700, 200:700].astype(np.float32)
        noise = rng.normal(0, 20, patch.shape[:2])[..., None]
        out[200:700, 200:700] = np.clip(0.5 * patch + 64 + noise, 0, 255).astype(np.uint8)
    elif kind == "grey-noise":
        out = np.clip(out + rng.normal(0, 25, out.shape[:2])[..., None], 0, 255).astype(np.uint8)
    else:
        raise ValueError(kind)
    return out


@pytest.mark.realdata
@pytest.mark.parametrize("kind", ["black", "pen-blue", "pen-green", "pen-red", "pen-black", "grey-haze",
                                  "grey-noise"])
def test_corrupted_tile_has_no_giant_nuclei(bladder, kind):
    rgb, mpp = bladder
    clean = segment_nuclei(rgb, mpp)
    result = segment_nuclei(corrupt(rgb, kind), mpp)
    assert areas_um2(result.mask2, mpp).max() < GIANT_UM2
    # Mask 1 may hold touching nuclei together, but no blob of artefact.
    n, _, stats, _ = cv2.connectedComponentsWithStats(result.mask1.view(np.uint8))
    assert stats[1:, cv2.CC_STAT_AREA].max() * mpp * mpp < 4 * GIANT_UM2
    # An artefact hides nuclei or adds a few, it does not multiply them.
    assert 0.5 * clean.n_nuclei < result.n_nuclei < 1.25 * clean.n_nuclei
    if kind == "black":
        yy, xx = np.nonzero(result.mask1)
        assert not np.any((yy - 500) ** 2 + (xx - 500) ** 2 < 150 ** 2)


@pytest.mark.realdata
def test_real_tile_is_plausible(bladder):
    rgb, mpp = bladder
    result = segment_nuclei(rgb, mpp)
    areas = areas_um2(result.mask2, mpp)
    # 475 nuclei are annotated in this image; nuclei are 3-15 µm across.
    assert 300 < result.n_nuclei < 650
    assert 10 < np.median(areas) < 80
    assert result.stains.source == "tile"


@pytest.mark.realdata
@pytest.mark.parametrize("factor", [0.25, 0.5, 2.0])
def test_real_tile_at_another_magnification(bladder, factor):
    rgb, mpp = bladder
    crop = rgb[:500, :500] if factor > 1 else rgb
    base = segment_nuclei(crop, mpp)
    size = (int(round(crop.shape[1] * factor)), int(round(crop.shape[0] * factor)))
    resized = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)
    other = segment_nuclei(resized, mpp / factor)
    assert other.n_nuclei == pytest.approx(base.n_nuclei, rel=0.2)
    assert np.median(areas_um2(other.mask2, mpp / factor)) == pytest.approx(
        np.median(areas_um2(base.mask2, mpp)), rel=0.2)


# --------------------------------------------------------------------------- configuration


def test_config_round_trip(tmp_path):
    config = config_from_dict({"nuclei": {"representatives": 2, "max_area_um2": 300, "enabled": False}})
    assert config.nuclei == NucleiConfig(representatives=2, max_area_um2=300.0, enabled=False)
    path = tmp_path / "config.toml"
    path.write_text(dump_config(config), encoding="utf-8")
    assert load_config(path) == config
    assert PipelineConfig().nuclei == NucleiConfig()


@pytest.mark.parametrize("key, value", [
    ("representatives", 0), ("nucleus_radius_min_um", 0.0), ("nucleus_radius_max_um", 1.0), ("min_area_um2", -1.0),
    ("max_area_um2", 5.0), ("smoothing_um", 50.0), ("threshold_block_um", 2.0), ("tissue_od", 0.0),
    ("achromatic_range", 300.0), ("macenko_alpha", 50.0), ("macenko_min_pixels", 5), ("enabled", 1),
    ("pale_interior_max_um2", -1.0),
])
def test_config_rejects_bad_values(key, value):
    with pytest.raises(ConfigError, match=f"^nuclei.{key} must be .*; got {value!r}"):
        NucleiConfig(**{key: value})


def test_smaller_settings_change_the_result():
    mpp = 0.5
    rgb = he_image((120, 120), [(20.0, 20.0, 3.0), (40.0, 35.0, 2.0)], mpp)
    assert segment_nuclei(rgb, mpp).n_nuclei == 2
    # A minimum area above the small nucleus (12.6 µm²) drops it.
    assert segment_nuclei(rgb, mpp, NucleiConfig(min_area_um2=20.0)).n_nuclei == 1
