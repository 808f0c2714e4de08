"""Tests of tumls_qp.evaluation.mosaic: mosaic slides with known regions, and the tissue-map scores."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import box

from tumls_qp.errors import InvalidInputError
from tumls_qp.evaluation.mosaic import build_mosaic, rasterise_tissue_map, read_truth, score_tissue_map
from tumls_qp.outputs.geojson import geometry_json
from tumls_qp.slide import open_slide

COLOURS = {"pink": (230, 150, 190), "purple": (150, 90, 170), "white": (240, 235, 240)}


@pytest.fixture(scope="module")
def tile_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiles")
    rng = np.random.default_rng(0)
    with (folder / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        for name, colour in COLOURS.items():
            for i in range(20):
                pixels = np.clip(np.array(colour) + rng.normal(0, 5, (40, 40, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}{i}.png")
                writer.writerow([f"{name}{i}.png", name])
    return folder


def _feature(k: int, geometry) -> dict:
    return {"type": "Feature", "geometry": geometry_json(geometry),
            "properties": {"objectType": "annotation", "classification": {"name": f"Tissue {k}", "color": [1, 2, 3]}}}


def test_mosaic_regions_classes_and_offset(tile_folder: Path, tmp_path: Path) -> None:
    mosaic = build_mosaic(tile_folder, ["pink", "purple"], tmp_path / "m.tif", regions=(2, 3), region_cells=2,
                          cell_px=32, mpp=2.0, seed=1)
    truth, classes = read_truth(mosaic.slide)
    # 2 x 3 regions of 2 x 2 cells of 32 px, half a cell cut from every side.
    assert truth.shape == (4 * 32 - 32, 6 * 32 - 32)
    assert classes == ("pink", "purple") and set(np.unique(truth)) == {1, 2}
    assert mosaic.cell_um == 64.0
    with open_slide(mosaic.slide) as slide:
        assert slide.dimensions == (truth.shape[1], truth.shape[0]) and slide.mpp == pytest.approx(2.0)
        pixels = slide.read_region((0, 0), 0, (truth.shape[1], truth.shape[0]))[..., :3].astype(float)
    # Every pixel has its class's colour (JPEG and the noise allow some error).
    for index, name in enumerate(classes, 1):
        mean = pixels[truth == index].mean(axis=0)
        assert np.abs(mean - COLOURS[name]).max() < 12
    # The cells' borders sit half a cell from the origin: the first class change along a row is at 16 + 32 j.
    changes = np.flatnonzero(np.diff(truth[0].astype(int))) + 1
    assert all((c - 16) % 32 == 0 for c in changes)


def test_mosaic_bad_input(tile_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not in"):
        build_mosaic(tile_folder, ["pink", "green"], tmp_path / "m.tif")
    with pytest.raises(InvalidInputError, match="needs"):
        build_mosaic(tile_folder, ["pink", "purple"], tmp_path / "m.tif", regions=(4, 4), region_cells=3)
    with pytest.raises(InvalidInputError, match="labels.csv"):
        build_mosaic(tmp_path, ["a", "b"], tmp_path / "m.tif")


def test_scores_known_answers() -> None:
    truth = np.ones((200, 300), np.uint8)
    truth[:, 150:] = 2
    exact = [_feature(1, box(0, 0, 150, 200)), _feature(2, box(150, 0, 300, 200))]
    score = score_tissue_map(exact, truth, downsample=2, tolerance_px=4)
    assert score.ari == pytest.approx(1.0) and score.boundary_f == pytest.approx(1.0)
    assert (score.n_tissues, score.n_classes, score.coverage) == (2, 2, pytest.approx(1.0))
    # The border 20 px off: still a perfect boundary within 24 px, not within 4 px; ARI drops.
    shifted = [_feature(1, box(0, 0, 170, 200)), _feature(2, box(170, 0, 300, 200))]
    assert score_tissue_map(shifted, truth, downsample=2, tolerance_px=24).boundary_f == pytest.approx(1.0)
    loose = score_tissue_map(shifted, truth, downsample=2, tolerance_px=4)
    assert loose.boundary_f == 0.0 and 0.6 < loose.ari < 0.9
    # Half the slide left out: it counts as a label of its own, and coverage says so.
    half = score_tissue_map([_feature(1, box(0, 0, 150, 200))], truth, downsample=2)
    assert half.coverage == pytest.approx(0.5) and half.n_tissues == 1
    # Representatives and other classes are not the tissue map.
    rep = _feature(1, box(0, 0, 300, 200))
    rep["properties"]["name"] = "Tissue 1 representative 1"
    other = _feature(1, box(0, 0, 300, 200))
    other["properties"]["classification"]["name"] = "Nucleus"
    assert score_tissue_map(exact + [rep, other], truth, downsample=2).ari == pytest.approx(1.0)


def test_rasterise_keeps_holes_and_other_tissues_inside_them() -> None:
    shell = box(0, 0, 100, 100).difference(box(40, 40, 60, 60))
    labels = rasterise_tissue_map([_feature(1, shell), _feature(2, box(40, 40, 60, 60))], (100, 100), 1)
    assert labels[50, 50] == 2 and labels[10, 10] == 1 and (labels == 2).sum() == 400


@pytest.mark.realdata
def test_mosaic_of_real_lc25000_tiles(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "lc25000_224"
    if not folder.is_dir():
        pytest.skip(f"{folder} is missing")
    mosaic = build_mosaic(folder, ["colon_aca", "colon_n"], tmp_path / "colon.tif", regions=(2, 2), region_cells=2)
    truth, _ = read_truth(mosaic.slide)
    assert truth.shape == (3 * 224, 3 * 224)
    assert np.bincount(truth.ravel())[1:].min() > 0
