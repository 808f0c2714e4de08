"""GlaS benchmark of the unsupervised gland segmentation: reading the data, metrics, report.

GlaS (Sirinukunwattana et al. 2015, 2017) is a set of colon H&E images taken at 20x with
every gland outlined by a pathologist. The copy this module reads (``../shared/data/glas``)
holds ``images/<name>.png`` (RGB), ``masks/<name>.png`` (255 = gland, 0 = not gland) and
``grades.csv`` (``name``, ``patient_id``, ``grade_glas`` = benign / malignant, ...), with
``name`` = ``train_N`` (85 images) or ``testA_N`` (60 images).

The masks mark gland pixels but do not number the glands, so the pixel scores are exact and
the object scores approximate: objects are the 8-connected components of each mask, and
glands that touch count as one.

Metrics (:func:`image_metrics`, per image; the report also pools the pixel counts of a split):

=================  =====================================================================
``miou``           mean of the IoU of the two classes, gland and background:
                   ½ (TP / (TP + FP + FN) + TN / (TN + FN + FP)). Pooled over a split
                   (the confusion counts of every pixel added up, then the IoUs), this is
                   the unsupervised-segmentation protocol the published GlaS figures use
                   (PiCIE, the seed proposal); the mean over images is reported beside it.
                   The gland class is the method's own choice: no matching of clusters to
                   classes with the labels.
``iou_gland``      IoU of the gland class, TP / (TP + FP + FN)
``iou_background`` IoU of the background class, TN / (TN + FP + FN)
``dice``           pixel Dice (= F1) of the gland class, 2 TP / (2 TP + FP + FN)
``f1_object``      GlaS object F1 on connected components: a predicted object's ground
                   truth is the ground-truth object it overlaps most; it is a true
                   positive when it covers at least half of that object (so each
                   ground-truth object is matched at most once); F1 = 2 TP / (number of
                   ground-truth objects + number of predicted objects)
``dice_object``    GlaS object Dice on connected components: ½ (Σ_i γ_i D(G_i, S*(G_i)) +
                   Σ_j σ_j D(G*(S_j), S_j)), where S*(G_i) is the predicted object that
                   overlaps ground-truth object G_i most (empty if none), G*(S_j) likewise,
                   and the weights γ_i, σ_j are the objects' shares of their image's
                   ground-truth and predicted gland area
``n_true``         number of ground-truth components
``n_pred``         number of predicted components
=================  =====================================================================

A ratio whose denominator is 0 is NaN (e.g. ``dice`` of an image without glands where none
was predicted) and is left out of the means.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..cpu import cpu_threads
from ..errors import InvalidInputError
from ._benchmark import TimedImages, check_limit_repeats, fastest, load_average, machine, nan_mean, \
    write_report
from ._benchmark import fmt as _fmt

__all__ = [
    "GLAS_MPP",
    "METRICS",
    "SPLITS",
    "GlasImage",
    "ImageResult",
    "BenchmarkResult",
    "list_glas",
    "read_glas_image",
    "confusion",
    "image_metrics",
    "pooled_metrics",
    "run_glas_benchmark",
    "format_glas_report",
    "write_glas_report",
]

log = logging.getLogger(__name__)

#: Pixel size of the GlaS images in µm/px (20x, as the GlaS papers state; not checked on the files).
GLAS_MPP: float = 0.620
#: Metric names that :func:`image_metrics` returns, in report order.
METRICS: tuple[str, ...] = ("miou", "iou_gland", "iou_background", "dice", "f1_object", "dice_object",
                            "n_true", "n_pred")
#: The splits of the GlaS copy: the image names start with ``<split>_``.
SPLITS: tuple[str, ...] = ("train", "testA")

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class GlasImage:
    """One GlaS image and its mask.

    Attributes
    ----------
    name : str
        File stem, e.g. ``"train_12"``.
    image, mask : Path
        The RGB image and the gland mask (255 = gland).
    grade : str
        ``"benign"`` or ``"malignant"`` from ``grades.csv``; ``"unknown"`` when not listed.
    """

    name: str
    image: Path
    mask: Path
    grade: str = "unknown"


def _index(name: str) -> tuple[str, int]:
    """Sort key: split prefix, then the image number (train_2 before train_10)."""
    prefix, _, number = name.rpartition("_")
    return (prefix, int(number)) if number.isdigit() else (name, -1)


def list_glas(folder: str | Path, split: str = "testA") -> list[GlasImage]:
    """Find the images of one split of a GlaS folder.

    Parameters
    ----------
    folder : str or Path
        A folder with ``images/``, ``masks/`` and, optionally, ``grades.csv`` (columns
        ``name`` and ``grade_glas``).
    split : {"train", "testA"}
        Which images: those whose name starts with ``<split>_``.

    Returns
    -------
    list of GlasImage
        Sorted by image number. Images without a mask are left out (with a log message).

    Raises
    ------
    InvalidInputError
        When ``folder`` is not a GlaS folder, ``split`` is unknown, or the split has no
        image with a mask.
    """
    if split not in SPLITS:
        raise InvalidInputError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    folder = Path(folder)
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise InvalidInputError(f"folder must be a GlaS folder with images/ and masks/ inside; got {str(folder)!r}")
    grades: dict[str, str] = {}
    grades_csv = folder / "grades.csv"
    if grades_csv.is_file():
        with grades_csv.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                name = (row.get("name") or "").strip()
                if name:
                    grades[name] = (row.get("grade_glas") or "").strip() or "unknown"
    items = []
    for path in images_dir.glob(f"{split}_*.png"):
        mask = masks_dir / path.name
        if not mask.is_file():
            log.info("skipping %s: no mask %s", path.name, mask)
            continue
        items.append(GlasImage(path.stem, path, mask, grades.get(path.stem, "unknown")))
    if not items:
        raise InvalidInputError(f"folder must hold {split}_*.png images with masks of the same name; found none "
                                f"in {str(folder)!r}")
    return sorted(items, key=lambda item: _index(item.name))


def read_glas_image(item: GlasImage) -> tuple[np.ndarray, np.ndarray]:
    """Read one image and its mask.

    Returns
    -------
    rgb : (H, W, 3) uint8 ndarray
    mask : (H, W) bool ndarray
        True on gland pixels (mask value > 127).

    Raises
    ------
    InvalidInputError
        When a file cannot be read or the two sizes differ.
    """
    from PIL import Image

    try:
        with Image.open(item.image) as im:
            rgb = np.asarray(im.convert("RGB"))
        with Image.open(item.mask) as im:
            mask = np.asarray(im.convert("L")) > 127
    except OSError as exc:
        raise InvalidInputError(f"cannot read GlaS image {item.name!r}: {exc}") from exc
    if mask.shape != rgb.shape[:2]:
        raise InvalidInputError(f"GlaS mask of {item.name!r} is {mask.shape[1]} x {mask.shape[0]} px but its image "
                                f"is {rgb.shape[1]} x {rgb.shape[0]} px")
    return rgb, mask


# --------------------------------------------------------------------------- metrics


def _check_pair(truth: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both as 2-D bool arrays of one shape (nonzero = gland)."""
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.ndim != 2 or pred.shape != truth.shape:
        raise InvalidInputError(f"truth and pred must be 2-D arrays of one shape; got {truth.shape} and {pred.shape}")
    return truth != 0, pred != 0


def confusion(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Pixel counts ``[[TN, FP], [FN, TP]]`` (rows: truth background, gland) as a (2, 2) int64 array."""
    truth, pred = _check_pair(truth, pred)
    counts = np.bincount(truth.ravel().astype(np.int64) * 2 + pred.ravel(), minlength=4)
    return counts.reshape(2, 2)


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _pixel_scores(cm: np.ndarray) -> dict[str, float]:
    """mIoU, class IoUs and Dice from confusion counts."""
    (tn, fp), (fn, tp) = (float(v) for v in cm[0]), (float(v) for v in cm[1])
    iou_g = _ratio(tp, tp + fp + fn)
    iou_b = _ratio(tn, tn + fp + fn)
    ious = [v for v in (iou_g, iou_b) if not math.isnan(v)]
    return {
        "miou": float(np.mean(ious)) if ious else math.nan,
        "iou_gland": iou_g,
        "iou_background": iou_b,
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def pooled_metrics(cm: np.ndarray) -> dict[str, float]:
    """``miou``, ``iou_gland``, ``iou_background`` and ``dice`` of summed confusion counts.

    Parameters
    ----------
    cm : (2, 2) array
        ``[[TN, FP], [FN, TP]]`` added up over images (see :func:`confusion`).
    """
    cm = np.asarray(cm)
    if cm.shape != (2, 2):
        raise InvalidInputError(f"cm must be a (2, 2) confusion matrix; got shape {cm.shape}")
    return _pixel_scores(cm)


def _object_scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """GlaS object F1 and object Dice on 8-connected components."""
    g, n_true = ndi.label(truth, structure=_EIGHT)
    s, n_pred = ndi.label(pred, structure=_EIGHT)
    area_g = np.bincount(g.ravel(), minlength=n_true + 1).astype(np.float64)
    area_s = np.bincount(s.ravel(), minlength=n_pred + 1).astype(np.float64)
    both = (g > 0) & (s > 0)
    overlap = np.zeros((n_true + 1, n_pred + 1), dtype=np.float64)
    np.add.at(overlap, (g[both], s[both]), 1.0)
    out = {"n_true": float(n_true), "n_pred": float(n_pred)}

    # Object F1: a prediction is a hit when it covers half of the ground-truth object it overlaps most.
    tp = 0
    if n_pred and n_true:
        best_g = overlap[1:, 1:].argmax(axis=0) + 1  # per prediction
        inter = overlap[best_g, np.arange(1, n_pred + 1)]
        hit = (inter > 0) & (inter >= 0.5 * area_g[best_g])
        matched = np.zeros(n_true + 1, dtype=bool)
        for j in np.flatnonzero(hit):
            if not matched[best_g[j]]:
                matched[best_g[j]] = True
                tp += 1
    out["f1_object"] = _ratio(2 * tp, n_true + n_pred)

    # Object Dice, weighted by area on both sides.
    if n_true == 0 and n_pred == 0:
        out["dice_object"] = math.nan
        return out
    side = []
    for n_a, area_a, area_b, ov in ((n_true, area_g, area_s, overlap), (n_pred, area_s, area_g, overlap.T)):
        if n_a == 0:
            side.append(0.0)
            continue
        total = 0.0
        for i in range(1, n_a + 1):
            j = int(ov[i, 1:].argmax()) + 1 if ov.shape[1] > 1 else 0
            inter = ov[i, j] if j else 0.0
            dice = 2 * inter / (area_a[i] + (area_b[j] if j and inter else 0.0))
            total += area_a[i] * dice
        side.append(total / area_a[1:].sum())
    out["dice_object"] = 0.5 * (side[0] + side[1])
    return out


def image_metrics(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Score one predicted gland mask against the ground truth.

    Parameters
    ----------
    truth, pred : (H, W) ndarray
        Gland masks (nonzero = gland); ``pred`` may be instance labels (only gland / not
        gland counts: objects are the 8-connected components in both).

    Returns
    -------
    dict
        The entries of :data:`METRICS` (see the module docstring).

    Raises
    ------
    InvalidInputError
        When the shapes differ or an array is not 2-D.
    """
    truth, pred = _check_pair(truth, pred)
    scores = _pixel_scores(confusion(truth, pred))
    scores.update(_object_scores(truth, pred))
    return {name: float(scores[name]) for name in METRICS}


# --------------------------------------------------------------------------- baseline


def colour_cluster_baseline(rgb: np.ndarray, mpp: float, *, seed: int = 0) -> np.ndarray:
    """The colour-cluster baseline: k-means (k = 2) on pixel colours, gland = the darker-blue cluster.

    Pixels are clustered by their R, G, B values alone; the gland cluster is chosen by the
    rule the gland method uses, the cluster whose mean haematoxylin (relative to the
    image's nuclear level) is higher. No spatial step follows. It runs at the gland
    method's working resolution and is brought back to the input's size.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 ndarray
    mpp : float
        Pixel size in µm/px.
    seed : int
        Seed of k-means.

    Returns
    -------
    (H, W) bool ndarray
        True on pixels of the gland cluster.
    """
    import cv2
    from sklearn.cluster import KMeans

    from ..cells.nuclei import check_mpp, check_rgb, estimate_stains, haematoxylin_od
    from ..config import GlandConfig

    rgb = check_rgb(rgb)
    mpp = check_mpp(mpp)
    height, width = rgb.shape[:2]
    scale = mpp / GlandConfig().working_mpp
    size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA) if size != (width, height) else rgb
    pixels = small.reshape(-1, 3).astype(np.float32)
    if len(np.unique(pixels[:: max(1, len(pixels) // 4096)], axis=0)) < 2:
        return np.zeros((height, width), dtype=bool)
    km = KMeans(2, n_init=3, random_state=seed).fit(pixels[:: max(1, len(pixels) // 20000)])
    cluster = km.predict(pixels).reshape(small.shape[:2])
    h = haematoxylin_od(small, estimate_stains(small).matrix)
    mean_h = [float(h[cluster == c].mean()) if np.any(cluster == c) else -1.0 for c in (0, 1)]
    gland = (cluster == int(np.argmax(mean_h))).astype(np.uint8)
    if size != (width, height):
        gland = cv2.resize(gland, (width, height), interpolation=cv2.INTER_NEAREST)
    return gland.astype(bool)


# --------------------------------------------------------------------------- benchmark


@dataclass(frozen=True)
class ImageResult:
    """Scores of one image.

    Attributes
    ----------
    name, grade : str
    seconds : float
        Wall time of :func:`~tumls_qp.cells.glands.segment_glands` (reading and scoring
        not included), the fastest of the repeated runs.
    cpu_seconds : float
        CPU time of the calling thread over the same call, the smallest of the runs.
    metrics : dict
        ``{"method" | "baseline": {metric: value}}``, metrics as in :data:`METRICS`.
    confusion : dict
        ``{"method" | "baseline": (2, 2) int64 ndarray}`` of pixel counts (:func:`confusion`).
    n_notes : int
        Notes the method returned for the image (resampling, no tissue).
    """

    name: str
    grade: str
    seconds: float
    cpu_seconds: float
    metrics: dict[str, dict[str, float]]
    confusion: dict[str, np.ndarray]
    n_notes: int = 0


@dataclass(frozen=True)
class BenchmarkResult(TimedImages):
    """Scores of a GlaS run, per image, with the settings and the machine.

    Attributes
    ----------
    folder, split : str
    mpp : float
        Pixel size given to the method, µm/px.
    images : list of ImageResult
        In image-number order.
    config : GlandConfig
    machine : dict of str to str
    """

    folder: str
    split: str
    mpp: float
    images: list[ImageResult]
    config: Any
    machine: dict[str, str] = field(default_factory=dict)

    def grades(self) -> list[str]:
        """Grades present, sorted."""
        return sorted({im.grade for im in self.images})

    def pooled(self, which: str, grade: str | None = None) -> dict[str, float]:
        """Pixel scores of the summed confusion counts (of one grade, or all images)."""
        total = np.zeros((2, 2), dtype=np.int64)
        for im in self.images:
            if grade is None or im.grade == grade:
                total += im.confusion[which]
        return pooled_metrics(total)

    def mean(self, which: str, metric: str, grade: str | None = None) -> float:
        """Mean over images (of one grade, or all) of one metric; NaN values are skipped."""
        return nan_mean(im.metrics[which][metric] for im in self.images if grade is None or im.grade == grade)


def run_glas_benchmark(
    folder: str | Path,
    split: str = "testA",
    *,
    cfg: Any = None,
    mpp: float = GLAS_MPP,
    limit: int | None = None,
    repeats: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> BenchmarkResult:
    """Segment the glands of every image of a GlaS split and score them, with the colour baseline.

    Parameters
    ----------
    folder : str or Path
        GlaS folder (see :func:`list_glas`).
    split : {"train", "testA"}
    cfg : GlandConfig, optional
        Settings of the method; the defaults when None.
    mpp : float
        Pixel size of the images in µm/px (GlaS: 0.62).
    limit : int, optional
        Score only the first ``limit`` images (by number); None: all.
    repeats : int
        Segment each image this many times and keep the fastest time (the glands are identical).
    progress : callable, optional
        Called as ``progress(done, total)`` after each image.

    Returns
    -------
    BenchmarkResult

    Raises
    ------
    InvalidInputError
        When the folder holds no usable image or an argument is invalid.

    Notes
    -----
    The method runs on one thread (OpenCV and BLAS pools limited to 1) and only its time is
    counted; an untimed call on the first image comes first, so that imports do not count.
    The masks are read only to score: the method never sees them.
    """
    from ..cells.glands import segment_glands
    from ..cells.nuclei import check_mpp
    from ..config import GlandConfig

    cfg = GlandConfig() if cfg is None else cfg
    if not isinstance(cfg, GlandConfig):
        raise InvalidInputError(f"cfg must be a GlandConfig; got {type(cfg).__name__}")
    mpp = check_mpp(mpp)
    check_limit_repeats(limit, repeats)
    items = list_glas(folder, split)
    if limit is not None:
        items = items[:limit]
    results: list[ImageResult] = []
    with cpu_threads(1):
        for done, item in enumerate(items, start=1):
            rgb, truth = read_glas_image(item)
            if done == 1:
                segment_glands(rgb, mpp, cfg)  # warm-up, not timed
            glands, seconds, cpu_seconds = fastest(lambda: segment_glands(rgb, mpp, cfg), repeats)
            baseline = colour_cluster_baseline(rgb, mpp)
            preds = {"method": glands.labels > 0, "baseline": baseline}
            results.append(ImageResult(
                item.name, item.grade, seconds, cpu_seconds,
                {k: image_metrics(truth, v) for k, v in preds.items()},
                {k: confusion(truth, v) for k, v in preds.items()},
                len(glands.notes)))
            log.info("%s (%s): mIoU %.4f (baseline %.4f) in %.3f s", item.name, item.grade,
                     results[-1].metrics["method"]["miou"], results[-1].metrics["baseline"]["miou"], seconds)
            if progress is not None:
                progress(done, len(items))
    info = machine(("numpy", "scipy", "scikit-image", "scikit-learn", "opencv"),
                   {"load average (1, 5, 15 min) at the end": load_average(" ")})
    info["timing"] = f"fastest of {repeats} run(s) per image"
    return BenchmarkResult(str(folder), split, mpp, results, cfg, info)


# --------------------------------------------------------------------------- report


_SUMMARY_HEAD = ("| | images | mIoU (pooled) | mIoU (mean of images) | IoU gland | IoU background | Dice (pooled) "
                 "| F1 obj | Dice obj |")


def _summary_row(result: BenchmarkResult, which: str, label: str, grade: str | None = None) -> str:
    pooled = result.pooled(which, grade)
    n = sum(grade is None or im.grade == grade for im in result.images)
    return (f"| {label} | {n} | {_fmt(pooled['miou'])} | {_fmt(result.mean(which, 'miou', grade))} | "
            f"{_fmt(pooled['iou_gland'])} | {_fmt(pooled['iou_background'])} | {_fmt(pooled['dice'])} | "
            f"{_fmt(result.mean(which, 'f1_object', grade))} | {_fmt(result.mean(which, 'dice_object', grade))} |")


def format_glas_report(result: BenchmarkResult, command: str) -> str:
    """The Markdown text of :func:`write_glas_report`."""
    import tomli_w

    from ..config import config_to_dict

    seconds, cpu = result.seconds(), result.cpu_seconds()
    lines = [
        f"# GlaS {result.split}: unsupervised gland segmentation",
        "",
        "Produced by this command, from the repository root:",
        "",
        "```",
        command,
        "```",
        "",
        f"Data: `{result.folder}`, split `{result.split}`, {len(result.images)} images at {result.mpp:g} µm/px. "
        "Every number below comes from that run; do not edit this file by hand, run the command again. "
        "The masks are read only to score: the method never sees them.",
        "",
        "## Summary",
        "",
        _SUMMARY_HEAD,
        "|---|---|---|---|---|---|---|---|---|",
        _summary_row(result, "method", "**gland method** (`segment_glands`)"),
    ]
    lines += [_summary_row(result, "method", f"… {grade}", grade) for grade in result.grades()]
    lines.append(_summary_row(result, "baseline", "colour-cluster baseline"))
    lines += [_summary_row(result, "baseline", f"… {grade}", grade) for grade in result.grades()]
    if len(seconds):
        lines += ["", f"Seconds per image of the gland method, one thread: wall mean {seconds.mean():.3f} "
                      f"(median {np.median(seconds):.3f}, max {seconds.max():.3f}); CPU mean {cpu.mean():.3f}. "
                      "Most GlaS images are 775 x 522 px."]
    lines += [
        "",
        "## Metrics",
        "",
        "- **mIoU**: the mean of the IoU of the gland class and of the background class. *Pooled*: the pixel "
        "counts of all images added up first (the protocol of the published unsupervised GlaS figures: PiCIE "
        "0.393, the seed proposal 0.411 / 0.493 / 0.563); *mean of images*: per image, then averaged. The gland "
        "class is the method's own: no cluster-to-class matching with the labels.",
        "- **IoU gland / background**, **Dice**: of the pooled pixel counts; Dice = pixel F1 of the gland class.",
        "- **F1 obj**, **Dice obj**: the GlaS challenge's object F1 (a predicted object is a hit when it covers at "
        "least half of the ground-truth object it overlaps most) and object Dice (area-weighted, both ways), mean "
        "over images. **Approximate**: this copy of GlaS does not number the glands, so objects are the "
        "8-connected components of each mask and glands that touch count as one (1,567 components against the "
        "official 1,530 glands).",
        "- **Colour-cluster baseline**: k-means (k = 2) on the RGB values of the pixels, at the method's working "
        "resolution; the gland cluster is chosen by the method's own rule (higher haematoxylin); nothing spatial.",
        "- Seconds: wall and CPU time of `segment_glands` alone (no reading, no scoring), one thread.",
        "",
        "## Per image",
        "",
        "| image | grade | mIoU | baseline mIoU | Dice | F1 obj | Dice obj | glands (true / found) | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for im in result.images:
        m, b = im.metrics["method"], im.metrics["baseline"]
        lines.append(f"| {im.name} | {im.grade} | {_fmt(m['miou'])} | {_fmt(b['miou'])} | {_fmt(m['dice'])} | "
                     f"{_fmt(m['f1_object'])} | {_fmt(m['dice_object'])} | {int(m['n_true'])} / {int(m['n_pred'])} | "
                     f"{im.seconds:.3f} |")
    lines += ["", "## Machine", ""] + [f"- {k}: {v}" for k, v in result.machine.items()]
    lines += ["", "## Settings", "", "```toml", tomli_w.dumps({"glands": config_to_dict(result.config)}).rstrip(),
              "```", ""]
    return "\n".join(lines)


def write_glas_report(result: BenchmarkResult, path: str | Path, command: str) -> Path:
    """Write the benchmark report as Markdown (atomically: a failed write leaves the old file).

    Parameters
    ----------
    result : BenchmarkResult
        From :func:`run_glas_benchmark`.
    path : str or Path
        Output file, e.g. ``reports/glas_testA.md``; its folder is created if needed.
    command : str
        The exact command line that produced ``result``, recorded in the report.

    Returns
    -------
    Path

    Raises
    ------
    OutputError
        When the file cannot be written.
    """
    return write_report(format_glas_report(result, command), path)
