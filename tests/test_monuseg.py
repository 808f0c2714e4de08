"""Tests of tumls_qp.evaluation.monuseg: metrics by hand, annotation reading, and the benchmark on 1 real image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tumls_qp.errors import InvalidInputError
from tumls_qp.errors import OutputError
from tumls_qp.evaluation.monuseg import (
    image_metrics,
    jitter_stains,
    list_monuseg,
    read_aperio_polygons,
    read_monuseg_image,
    rasterize_polygons,
    resample_monuseg,
    run_monuseg_benchmark,
    write_monuseg_report,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MONUSEG = DATA / "monuseg_test"


def square(labels: np.ndarray, label: int, r0: int, c0: int, size: int) -> None:
    """Paint a square of label ``label`` with top-left pixel (r0, c0)."""
    labels[r0:r0 + size, c0:c0 + size] = label


# --------------------------------------------------------------------------- metrics


def test_identical_segmentation_scores_one():
    truth = np.zeros((40, 40), np.int32)
    square(truth, 1, 2, 2, 10)
    square(truth, 2, 20, 20, 8)
    metrics = image_metrics(truth, truth)
    for name in ("dice", "iou", "aji", "aji_challenge", "f1_object", "precision", "recall"):
        assert metrics[name] == 1.0
    assert metrics["n_true"] == 2 and metrics["n_pred"] == 2


def test_empty_prediction():
    truth = np.zeros((20, 20), np.int32)
    square(truth, 1, 2, 2, 5)
    metrics = image_metrics(truth, np.zeros((20, 20), np.int32))
    assert metrics["dice"] == 0 and metrics["iou"] == 0 and metrics["aji"] == 0
    assert metrics["f1_object"] == 0 and metrics["recall"] == 0 and math.isnan(metrics["precision"])


def test_split_nucleus_by_hand():
    # One 10x10 true nucleus predicted as two halves: its best match has IoU 50/100 (not > 0.5);
    # AJI = 50 / (100 + 50 of the unused half) = 1/3; pixel scores are perfect.
    truth = np.zeros((20, 20), np.int32)
    square(truth, 1, 5, 5, 10)
    pred = np.zeros((20, 20), np.int32)
    pred[5:15, 5:10] = 1
    pred[5:15, 10:15] = 2
    metrics = image_metrics(truth, pred)
    assert metrics["dice"] == 1 and metrics["iou"] == 1
    assert metrics["aji"] == pytest.approx(1 / 3)
    assert metrics["aji_challenge"] == pytest.approx(1 / 3)  # one half pairs, the other adds to the union
    assert metrics["f1_object"] == 0


def test_merged_nuclei_and_false_positive_by_hand():
    # Two true 5x5 nuclei merged into one 5x10 prediction, plus a 4x4 false positive.
    truth = np.zeros((30, 30), np.int32)
    square(truth, 1, 0, 0, 5)
    square(truth, 2, 0, 5, 5)
    pred = np.zeros((30, 30), np.int32)
    pred[0:5, 0:10] = 3
    square(pred, 9, 20, 20, 4)
    metrics = image_metrics(truth, pred)
    # Both true nuclei pair with the merged object: C = 25 + 25, U = 50 + 50 + 16 (the false positive).
    assert metrics["aji"] == pytest.approx(50 / 116)
    # The challenge's rule: nucleus 1 takes the merged object, which then leaves the map; nucleus 2
    # touches nothing left and adds its area: C = 25, U = 50 + 25 + 16.
    assert metrics["aji_challenge"] == pytest.approx(25 / 91)
    assert metrics["dice"] == pytest.approx(2 * 50 / (50 + 66))
    assert metrics["iou"] == pytest.approx(50 / 66)
    assert metrics["f1_object"] == 0 and metrics["n_pred"] == 2


def test_object_f1_counts_matches_above_half():
    truth = np.zeros((40, 40), np.int32)
    square(truth, 1, 0, 0, 10)
    square(truth, 2, 20, 20, 10)
    pred = np.zeros((40, 40), np.int32)
    pred[0:10, 0:8] = 5  # IoU 0.8 with nucleus 1
    pred[20:30, 20:24] = 6  # IoU 0.4 with nucleus 2
    metrics = image_metrics(truth, pred)
    assert metrics["precision"] == 0.5 and metrics["recall"] == 0.5 and metrics["f1_object"] == 0.5


def test_binary_prediction_scored_by_components():
    truth = np.zeros((30, 30), np.int32)
    square(truth, 1, 0, 0, 5)
    square(truth, 2, 0, 5, 5)
    square(truth, 3, 20, 20, 5)
    merged = truth > 0
    metrics = image_metrics(truth, merged)
    assert metrics["n_pred"] == 2  # the touching squares form one component
    assert metrics["dice"] == 1 and metrics["f1_object"] == pytest.approx(2 * 1 / 5)


def test_metrics_shape_mismatch():
    with pytest.raises(InvalidInputError, match="^true_labels and pred"):
        image_metrics(np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32))


# --------------------------------------------------------------------------- reading


XML = """<Annotations MicronsPerPixel="0.252700">
  <Annotation Id="1"><Regions>
    <Region Id="1"><Vertices>
      <Vertex X="11" Y="11"/><Vertex X="20" Y="11"/><Vertex X="20" Y="20"/><Vertex X="11" Y="20"/>
    </Vertices></Region>
    <Region Id="2"><Vertices>
      <Vertex X="-1.0" Y="30"/><Vertex X="4" Y="30"/><Vertex X="4" Y="35"/><Vertex X="-1.0" Y="35"/>
    </Vertices></Region>
    <Region Id="3"><Vertices><Vertex X="1" Y="1"/><Vertex X="2" Y="2"/></Vertices></Region>
  </Regions></Annotation>
</Annotations>
"""


def test_read_and_rasterise_like_poly2mask(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(XML, encoding="utf-8")
    polygons, mpp = read_aperio_polygons(path)
    assert mpp == pytest.approx(0.2527)
    assert len(polygons) == 2  # the 2-vertex region is not a polygon
    labels = rasterize_polygons(polygons, (40, 40))
    # poly2mask puts the outline 0.2 px right of and below the 1-based vertices: the square from
    # 11 to 20 covers the 9 x 9 pixels whose 1-based centres are 12..20, 0-based 11..19.
    rows, cols = np.nonzero(labels == 1)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (11, 19, 11, 19)
    assert (labels == 1).sum() == 81
    # Vertices left of the image are clipped to it: columns 0..3 (1-based x up to 4).
    rows, cols = np.nonzero(labels == 2)
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (0, 3, 30, 34)


def test_overlapping_polygons_the_earlier_keeps_the_pixels():
    # As the organisers' he_to_binary_mask: a pixel of two polygons belongs to the first one.
    first = np.array([[1.0, 1.0], [10.0, 1.0], [10.0, 10.0], [1.0, 10.0]])
    second = first + 5.0
    labels = rasterize_polygons([first, second], (20, 20))
    assert labels[7, 7] == 1 and labels[12, 12] == 2
    assert (labels == 1).sum() == 81 and (labels == 2).sum() == 81 - 16
    # A polygon wholly under an earlier one leaves no label.
    assert 2 not in rasterize_polygons([first, first + 1.0 - 1.0], (20, 20))


def test_resample_keeps_the_outlines_on_the_anatomy():
    # A square whose corners lie on pixel corners: 0-based pixels rows 10..29, cols 20..39 at full
    # size. As MATLAB 1-based vertices, a corner x (pixel-corner frame) is X = x + 0.5.
    square = np.array([[20.0, 10.0], [40.0, 10.0], [40.0, 30.0], [20.0, 30.0]]) + 0.5
    rgb = np.full((120, 160, 3), 230, np.uint8)
    full = rasterize_polygons([square], (120, 160))
    rows, cols = np.nonzero(full)
    assert (rows.min(), rows.max(), cols.min(), cols.max(), len(rows)) == (10, 29, 20, 39, 400)
    # At twice the pixel size the same corners cover rows 5..14, cols 10..19: pixel corners stay corners.
    small, small_labels, mpp = resample_monuseg(rgb, [square], 0.25, 0.5)
    assert small.shape == (60, 80, 3) and small_labels.shape == (60, 80) and mpp == pytest.approx(0.5)
    rows, cols = np.nonzero(small_labels)
    assert (rows.min(), rows.max(), cols.min(), cols.max(), len(rows)) == (5, 14, 10, 19, 100)
    # A disk keeps its area in µm² at either pixel size.
    angles = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    disk = np.column_stack([80.5 + 40 * np.cos(angles), 59.5 + 40 * np.sin(angles)]) + 1.0
    _, small_disk, _ = resample_monuseg(rgb, [disk], 0.25, 0.5)
    assert small_disk.sum() == pytest.approx(np.pi * 20 ** 2, rel=0.02)
    big, big_disk, big_mpp = resample_monuseg(rgb, [disk], 0.25, 0.125)
    assert big.shape == (240, 320, 3) and big_mpp == pytest.approx(0.125)
    assert big_disk.sum() == pytest.approx(np.pi * 80 ** 2, rel=0.01)
    with pytest.raises(InvalidInputError, match="^target_mpp must"):
        resample_monuseg(rgb, [disk], 0.25, 0.0)
    with pytest.raises(InvalidInputError, match="^target_mpp must leave at least one pixel"):
        resample_monuseg(rgb, [disk], 0.25, 1000.0)


def test_jitter_stains_is_seeded_and_small():
    rng = np.random.default_rng(3)
    rgb = rng.integers(40, 250, (30, 40, 3), dtype=np.uint8)
    a, b = jitter_stains(rgb, seed=1), jitter_stains(rgb, seed=1)
    assert a.dtype == np.uint8 and a.shape == rgb.shape and np.array_equal(a, b)
    assert not np.array_equal(a, jitter_stains(rgb, seed=2))
    same = jitter_stains(rgb, seed=1, amount=0, shift=0, angle_deg=0)
    assert np.abs(same.astype(int) - rgb).max() <= 1  # no change but rounding
    white = np.full((4, 4, 3), 255, np.uint8)
    assert jitter_stains(white, seed=5, shift=0).min() >= 254  # glass stays glass without a shift
    with pytest.raises(InvalidInputError, match="^amount must"):
        jitter_stains(rgb, seed=1, amount=-0.1)
    with pytest.raises(InvalidInputError, match="^angle_deg must"):
        jitter_stains(rgb, seed=1, angle_deg=float("nan"))


def test_read_bad_xml(tmp_path):
    path = tmp_path / "bad.xml"
    path.write_text("<Annotations><Region>", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="^path must be a readable Aperio XML"):
        read_aperio_polygons(path)


def test_list_folder(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "img1.tif", np.full((40, 40, 3), 230, np.uint8))
    (tmp_path / "img1.xml").write_text(XML, encoding="utf-8")
    tifffile.imwrite(tmp_path / "lonely.tif", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "organs.csv").write_text("image_id,organ,xml_microns_per_pixel\nimg1,Kidney,0.25\n",
                                         encoding="utf-8")
    items = list_monuseg(tmp_path)
    assert [(i.image_id, i.organ, i.mpp) for i in items] == [("img1", "Kidney", 0.25)]
    rgb, labels, mpp = read_monuseg_image(items[0])
    assert rgb.shape == (40, 40, 3) and labels.max() == 2 and mpp == 0.25
    result = run_monuseg_benchmark(tmp_path)
    assert result.images[0].metrics["mask2"]["n_pred"] == 0  # a blank image
    assert result.images[0].metrics["mask2"]["dice"] == 0


def test_list_folder_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="^folder must be a MoNuSeg folder"):
        list_monuseg(tmp_path / "missing")
    with pytest.raises(InvalidInputError, match="^folder must hold .tif images"):
        list_monuseg(tmp_path)
    with pytest.raises(InvalidInputError, match="^limit must be"):
        run_monuseg_benchmark(tmp_path, limit=0)
    with pytest.raises(InvalidInputError, match="^repeats must be"):
        run_monuseg_benchmark(tmp_path, repeats=0)


# --------------------------------------------------------------------------- the benchmark on real data


@pytest.fixture(scope="module")
def one_image_result():
    if not MONUSEG.is_dir():
        pytest.skip(f"MoNuSeg test data not found at {MONUSEG}")
    calls = []
    result = run_monuseg_benchmark(MONUSEG, limit=1, repeats=1,
                                   progress=lambda done, total: calls.append((done, total)))
    return result, calls


@pytest.mark.realdata
def test_benchmark_on_one_image(one_image_result):
    result, calls = one_image_result
    assert calls == [(1, 1)]
    assert len(result.images) == 1
    image = result.images[0]
    assert image.organ == "Kidney" and image.mpp == pytest.approx(0.2527)
    m2 = image.metrics["mask2"]
    # The figures reports/monuseg.md gives for this image (the per-image table of monuseg_test):
    # a change of the segmentation or the scoring that moves them must come with a new report.
    assert m2["dice"] == pytest.approx(0.7678, abs=0.002)
    assert m2["aji"] == pytest.approx(0.5381, abs=0.002)
    assert m2["f1_object"] == pytest.approx(0.7607, abs=0.003)
    assert m2["n_true"] == 575 and abs(m2["n_pred"] - 574) <= 3
    # De-merging separates nuclei: better AJI than the connected components of mask 1.
    assert m2["aji"] > image.metrics["mask1"]["aji"]
    assert 0 < image.seconds < 5 and 0 < image.cpu_seconds < 5


@pytest.mark.realdata
def test_report_is_written(one_image_result, tmp_path):
    result, _ = one_image_result
    command = "python -m tumls_qp.evaluation.monuseg /data/monuseg --report out.md"
    path = write_monuseg_report(result, tmp_path / "sub" / "monuseg.md", command)
    text = path.read_text(encoding="utf-8")
    assert command in text
    for heading in ("Mask 1", "Mask 2", "Mask 3", "Per image", "Machine", "Settings"):
        assert heading in text
    assert "| Kidney | 1 |" in text and "**mean of images**" in text
    assert f"{result.mean('mask2', 'aji'):.4f}" in text
    assert "cores:" in text and "threads used: 1" in text and "fastest of 1 run(s)" in text
    assert "Load average (1, 5, 15 min) of the machine before / after these images: " in text


def _blank_folder(path: Path) -> Path:
    """A MoNuSeg-style folder with one blank image and the annotation XML above."""
    import tifffile

    path.mkdir()
    tifffile.imwrite(path / "blank.tif", np.full((40, 40, 3), 230, np.uint8))
    (path / "blank.xml").write_text(XML, encoding="utf-8")
    return path


@pytest.mark.realdata
def test_report_of_two_folders(one_image_result, tmp_path):
    result, _ = one_image_result
    blank = run_monuseg_benchmark(_blank_folder(tmp_path / "blank_set"), repeats=1)
    text = write_monuseg_report([result, blank], tmp_path / "two.md", "cmd").read_text(encoding="utf-8")
    assert f"## monuseg_test (`{result.folder}`)" in text and "## blank_set (`" in text
    assert text.count("### Per image (mask 2)") == 2 and text.count("### Mask 2:") == 2
    assert f"| monuseg_test | 1 | {result.mean('mask2', 'dice'):.4f} |" in text
    assert "| blank_set | 1 | 0.0000 |" in text
    assert text.count("## Machine") == 1 and text.count("## Settings") == 1


def test_report_write_failure_leaves_nothing(tmp_path):
    blank = run_monuseg_benchmark(_blank_folder(tmp_path / "data"), repeats=1)
    target = tmp_path / "out"
    target.mkdir()  # a folder where the report should go: the rename fails
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(OutputError, match="cannot write the report"):
        write_monuseg_report(blank, target, "cmd")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file left behind
    with pytest.raises(InvalidInputError, match="^results must hold"):
        write_monuseg_report([], tmp_path / "r.md", "cmd")


@pytest.mark.realdata
def test_cli_eval_monuseg(tmp_path, capsys):
    from tumls_qp.cli import main

    if not MONUSEG.is_dir():
        pytest.skip(f"MoNuSeg test data not found at {MONUSEG}")
    report = tmp_path / "monuseg.md"
    assert main(["eval", "monuseg", str(MONUSEG), "--report", str(report), "--limit", "1", "--repeats", "1"]) == 0
    text = report.read_text()
    assert f"tumls-qp eval monuseg {MONUSEG} --report {report} --limit 1 --repeats 1" in text
    assert "mask 2" in capsys.readouterr().out
    assert main(["eval", "monuseg", str(tmp_path / "missing")]) == 3
    assert "missing" in capsys.readouterr().err
