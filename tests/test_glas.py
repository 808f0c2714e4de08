"""Tests of tumls_qp.evaluation.glas: metrics with known answers, reading GlaS, the benchmark and its report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tumls_qp.errors import InvalidInputError, OutputError
from tumls_qp.evaluation.glas import (
    METRICS,
    colour_cluster_baseline,
    confusion,
    format_glas_report,
    image_metrics,
    list_glas,
    pooled_metrics,
    read_glas_image,
    run_glas_benchmark,
    write_glas_report,
)


def disk(shape: tuple[int, int], cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


# --------------------------------------------------------------------------- metrics


def test_perfect_prediction() -> None:
    truth = disk((100, 100), 30, 30, 10) | disk((100, 100), 70, 70, 15)
    m = image_metrics(truth, truth)
    assert set(m) == set(METRICS)
    for name in ("miou", "iou_gland", "iou_background", "dice", "f1_object", "dice_object"):
        assert m[name] == pytest.approx(1.0)
    assert m["n_true"] == m["n_pred"] == 2


def test_pixel_scores_by_hand() -> None:
    truth = np.zeros((10, 10), bool)
    truth[:, :5] = True  # 50 gland pixels
    pred = np.zeros((10, 10), bool)
    pred[:, 3:8] = True  # 20 true positives, 30 false positives, 30 false negatives, 20 true negatives
    assert confusion(truth, pred).tolist() == [[20, 30], [30, 20]]
    m = image_metrics(truth, pred)
    assert m["iou_gland"] == pytest.approx(20 / 80)
    assert m["iou_background"] == pytest.approx(20 / 80)
    assert m["miou"] == pytest.approx(0.25)
    assert m["dice"] == pytest.approx(40 / 100)


def test_object_scores_by_hand() -> None:
    shape = (100, 200)
    a, b = disk(shape, 40, 50, 20), disk(shape, 140, 50, 20)
    truth = a | b
    # Covers a exactly; covers less than half of b; adds one false object.
    half_b = b & (np.mgrid[0:100, 0:200][1] < 130)
    extra = disk(shape, 190, 90, 5)
    pred = a | half_b | extra
    m = image_metrics(truth, pred)
    assert m["n_true"] == 2 and m["n_pred"] == 3
    assert m["f1_object"] == pytest.approx(2 * 1 / (2 + 3))
    area_a, area_b, area_h, area_x = a.sum(), b.sum(), half_b.sum(), extra.sum()
    dice_b = 2 * area_h / (area_b + area_h)
    g_side = (area_a * 1.0 + area_b * dice_b) / (area_a + area_b)
    s_side = (area_a * 1.0 + area_h * dice_b + area_x * 0.0) / (area_a + area_h + area_x)
    assert m["dice_object"] == pytest.approx(0.5 * (g_side + s_side))


def test_nothing_to_find_and_nothing_found() -> None:
    empty = np.zeros((20, 20), bool)
    m = image_metrics(empty, empty)
    assert m["miou"] == 1.0 and m["iou_background"] == 1.0
    assert math.isnan(m["iou_gland"]) and math.isnan(m["dice"]) and math.isnan(m["f1_object"])
    assert math.isnan(m["dice_object"])


def test_a_false_gland_on_an_image_without_glands_scores_zero() -> None:
    empty = np.zeros((20, 20), bool)
    pred = empty.copy()
    pred[5:10, 5:10] = True
    m = image_metrics(empty, pred)
    assert m["f1_object"] == 0.0 and m["dice_object"] == 0.0 and m["dice"] == 0.0


def test_instance_labels_count_as_gland_pixels() -> None:
    truth = disk((60, 60), 30, 30, 12)
    labels = truth.astype(np.int32) * 7
    assert image_metrics(truth, labels) == image_metrics(truth, truth)


def test_pooled_is_not_the_mean_of_images() -> None:
    big, small = np.ones((10, 10), bool), np.zeros((2, 2), bool)
    small_truth = small.copy()
    small_truth[0, 0] = True
    total = confusion(big, big) + confusion(small_truth, small)
    pooled = pooled_metrics(total)
    assert pooled["iou_gland"] == pytest.approx(100 / 101)
    with pytest.raises(InvalidInputError, match="cm"):
        pooled_metrics(np.zeros(3))


def test_shapes_must_agree() -> None:
    with pytest.raises(InvalidInputError, match="truth and pred"):
        image_metrics(np.zeros((5, 5)), np.zeros((5, 6)))
    with pytest.raises(InvalidInputError, match="truth and pred"):
        confusion(np.zeros(5), np.zeros(5))


# --------------------------------------------------------------------------- reading


def _fake_glas(root: Path, names: list[str], size: tuple[int, int] = (40, 60)) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray((disk(size, 20, 20, 8) * 255).astype(np.uint8)).save(root / "masks" / f"{name}.png")
    (root / "grades.csv").write_text("name,patient_id,grade_glas,grade_sirinukunwattana_2015\n"
                                     "train_2,1,benign,healthy\n", encoding="utf-8")
    return root


def test_list_and_read(tmp_path: Path) -> None:
    root = _fake_glas(tmp_path / "glas", ["train_10", "train_2", "testA_1"])
    items = list_glas(root, "train")
    assert [i.name for i in items] == ["train_2", "train_10"]  # by number
    assert [i.grade for i in items] == ["benign", "unknown"]
    rgb, mask = read_glas_image(items[0])
    assert rgb.shape == (40, 60, 3) and rgb.dtype == np.uint8
    assert mask.dtype == bool and mask.sum() == disk((40, 60), 20, 20, 8).sum()
    assert [i.name for i in list_glas(root, "testA")] == ["testA_1"]


def test_reading_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="split"):
        list_glas(tmp_path, "testB")
    with pytest.raises(InvalidInputError, match="images/ and masks/"):
        list_glas(tmp_path, "train")
    root = _fake_glas(tmp_path / "glas", ["train_1"])
    with pytest.raises(InvalidInputError, match="testA"):
        list_glas(root, "testA")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "train_1.png")
    with pytest.raises(InvalidInputError, match="train_1"):
        read_glas_image(list_glas(root, "train")[0])
    (root / "images" / "train_3.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "train_3.png")
    with pytest.raises(InvalidInputError, match="train_3"):
        read_glas_image(list_glas(root, "train")[1])


def test_baseline_on_a_blank_image() -> None:
    assert not colour_cluster_baseline(np.full((50, 50, 3), 240, np.uint8), 0.62).any()


# --------------------------------------------------------------------------- benchmark


@pytest.mark.realdata
def test_benchmark_and_report(shared_data: Path, tmp_path: Path) -> None:
    result = run_glas_benchmark(shared_data / "glas", "train", limit=3)
    assert [im.name for im in result.images] == ["train_1", "train_2", "train_3"]
    assert result.grades() == ["benign", "malignant"]
    for im in result.images:
        assert im.seconds > 0 and im.cpu_seconds >= 0
        assert im.confusion["method"].sum() == 775 * 522
    pooled = result.pooled("method")
    assert pooled["miou"] > result.pooled("baseline")["miou"]
    assert result.pooled("method", "benign")["miou"] != pooled["miou"]

    command = "tumls-qp eval glas ../shared/data/glas --split train --report x.md"
    text = format_glas_report(result, command)
    assert command in text
    assert "colour-cluster baseline" in text and "| train_2 | benign |" in text
    assert f"{pooled['miou']:.4f}" in text
    assert "[glands]" in text  # the settings
    path = write_glas_report(result, tmp_path / "sub" / "glas.md", command)
    assert path.read_text(encoding="utf-8") == text
    (tmp_path / "blocked").write_text("a file, not a folder", encoding="utf-8")
    with pytest.raises(OutputError, match="cannot write"):
        write_glas_report(result, tmp_path / "blocked" / "glas.md", command)
    assert not list(tmp_path.glob("sub/.*partial"))


def test_benchmark_arguments(tmp_path: Path) -> None:
    root = _fake_glas(tmp_path / "glas", ["train_1"])
    with pytest.raises(InvalidInputError, match="limit"):
        run_glas_benchmark(root, "train", limit=0)
    with pytest.raises(InvalidInputError, match="repeats"):
        run_glas_benchmark(root, "train", repeats=0)
    with pytest.raises(InvalidInputError, match="cfg"):
        run_glas_benchmark(root, "train", cfg=object())
    with pytest.raises(InvalidInputError, match="mpp"):
        run_glas_benchmark(root, "train", mpp=-1.0)


@pytest.mark.realdata
def test_cli_eval_glas(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tumls_qp.cli import main

    glas = shared_data / "glas"
    report = tmp_path / "glas.md"
    config = tmp_path / "glands.toml"
    config.write_text("[glands]\nthreshold = 0.3\n", encoding="utf-8")
    assert main(["eval", "glas", str(glas), "--split", "train", "--report", str(report), "--limit", "1",
                 "--config", str(config)]) == 0
    text = report.read_text(encoding="utf-8")
    assert f"tumls-qp eval glas {glas} --split train --report {report} --limit 1 --config {config}" in text
    assert "threshold = 0.3" in text  # the settings the method ran with
    assert "| train_1 |" in text
    out = capsys.readouterr().out
    assert "glands  : mIoU" in out and "baseline: mIoU" in out and "s per image" in out


def test_cli_eval_glas_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tumls_qp.cli import main

    assert main(["eval", "glas", str(tmp_path / "missing"), "--report", str(tmp_path / "r.md")]) == 3
    assert "images/ and masks/" in capsys.readouterr().err
    root = _fake_glas(tmp_path / "glas", ["train_1"])
    assert main(["eval", "glas", str(root), "--split", "testA", "--report", str(tmp_path / "r.md")]) == 3
    assert "testA" in capsys.readouterr().err
    assert main(["eval", "glas", str(root), "--split", "train", "--limit", "0",
                 "--report", str(tmp_path / "r.md")]) == 3
    assert "limit" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "glas", str(root), "--split", "testB"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[glands]\nthreshold = 2.0\n", encoding="utf-8")
    assert main(["eval", "glas", str(root), "--split", "train", "--config", str(bad),
                 "--report", str(tmp_path / "r.md")]) == 2
    assert "glands.threshold" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()
