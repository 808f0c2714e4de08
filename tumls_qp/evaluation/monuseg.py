"""MoNuSeg benchmark: reading the data, instance-segmentation metrics, and the report.

MoNuSeg (Kumar et al. 2017, 2020) ships each image as a ``.tif`` beside an Aperio
ImageScope ``.xml`` that holds one polygon per nucleus.

Scoring conventions (checked against the organisers' MATLAB code, ``he_to_binary_mask.m``
for the masks and ``aggregated_jaccard_index.m`` for AJI, distributed with the challenge):

* **Rasterisation.** The organisers call ``poly2mask`` on the XML vertices as they are:
  a vertex ``(X, Y)`` is in MATLAB's 1-based pixel coordinates, so it lies at the centre
  of 0-based pixel ``(row Y - 1, col X - 1)``, and a pixel belongs to a nucleus when its
  centre is inside the polygon, ties on the outline broken by ``poly2mask``'s 1/5-pixel
  grid (vertices quantised to it, 0.2 px right of and below the pixel centres). Reading
  the vertices as 0-based pixel centres instead (what ``skimage.draw.polygon`` on the raw
  coordinates does) moves every mask by one pixel right and down. Vertices outside the
  image are clipped to it.
* **Overlaps.** A pixel claimed by two polygons belongs to the one that comes first in the
  file (``binary_mask + zz * (1 - min(1, binary_mask)) .* polygon``).
* **Holes.** An Aperio region is one outline without holes; a predicted object is scored
  by its pixels, holes included as background.
* **Boundary pixels** count like any other: no band around the outlines is ignored.
* **AJI.** Kumar et al. (2017), Algorithm 1: every ground-truth nucleus, in file order,
  is paired with the predicted object of highest IoU; AJI = sum |G ∩ S| / (sum |G ∪ S| +
  area of the predicted objects never paired), a ground-truth nucleus that touches no
  prediction adding its area. ``aji`` lets one predicted object pair with several
  ground-truth nuclei (as the algorithm is written, and as most Python re-implementations
  do); ``aji_challenge`` follows the challenge's code, which removes a predicted object
  from the map once it is paired, so that the next nucleus takes its best remaining
  object. (That code also pairs a nucleus that touches no prediction with the predicted
  object numbered 1, a slip that ``aji_challenge`` does not copy: such a nucleus adds its
  area only.) The two differ where predicted objects merge nuclei: ``aji_challenge``
  is then higher.
* **Means** are over images (the challenge ranked by the mean AJI over its 14 test images).

Metrics, per image (``image_metrics``):

=================  ======================================================================
``dice``           pixel Dice of the binary masks, 2|A∩B| / (|A| + |B|) (TUMLS' "F1")
``iou``            pixel IoU of the binary masks, |A∩B| / |A∪B| (TUMLS' "Jaccard")
``aji``            Aggregated Jaccard Index, a predicted object may pair with several nuclei
``aji_challenge``  Aggregated Jaccard Index, each predicted object paired at most once
``f1_object``      object F1 at IoU > 0.5: a ground-truth and a predicted object match when
                   their IoU exceeds 0.5 (such a match is one-to-one); F1 = 2 TP / (number
                   of ground-truth objects + number of predicted objects)
``precision``      TP / number of predicted objects at IoU > 0.5
``recall``         TP / number of ground-truth objects at IoU > 0.5
``n_true``         number of ground-truth nuclei
``n_pred``         number of predicted objects
=================  ======================================================================

Semantic (binary) masks are scored as instances through their 8-connected components.

Robustness (``resample_monuseg``, ``jitter_stains``): an image and its outlines at another
pixel size (the polygons scaled and rasterised on the new grid, as a scanner at that
magnification and an annotator on its image would give them), and an image whose
haematoxylin and eosin amounts and colours are perturbed in optical density.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
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
    "MonusegImage",
    "ImageResult",
    "BenchmarkResult",
    "METRICS",
    "list_monuseg",
    "read_monuseg_image",
    "read_aperio_polygons",
    "rasterize_polygons",
    "resample_monuseg",
    "jitter_stains",
    "image_metrics",
    "run_monuseg_benchmark",
    "format_monuseg_report",
    "write_monuseg_report",
]

log = logging.getLogger(__name__)

#: Metric names that ``image_metrics`` returns, in report order.
METRICS: tuple[str, ...] = ("dice", "iou", "aji", "aji_challenge", "f1_object", "precision", "recall", "n_true",
                            "n_pred")

#: The masks of :class:`~tumls_qp.cells.nuclei.NucleiResult` that the benchmark scores.
MASKS: tuple[str, ...] = ("mask1", "mask2", "mask3")


@dataclass(frozen=True)
class MonusegImage:
    """One MoNuSeg image and where its annotation is.

    Attributes
    ----------
    image_id : str
        File stem, e.g. ``"TCGA-2Z-A9J9-01A-01-TS1"``.
    tif : Path
        The RGB image.
    xml : Path
        The Aperio XML annotation.
    organ : str
        Organ from ``organs.csv``; ``"unknown"`` when the folder has none or does not list the image.
    mpp : float or None
        Pixel size in µm/px from ``organs.csv`` or the XML's ``MicronsPerPixel``; None when neither says.
    """

    image_id: str
    tif: Path
    xml: Path
    organ: str = "unknown"
    mpp: float | None = None


def list_monuseg(folder: str | Path) -> list[MonusegImage]:
    """Find the image/annotation pairs of a MoNuSeg-style folder.

    Parameters
    ----------
    folder : str or Path
        A folder with ``<id>.tif`` and ``<id>.xml`` side by side and, optionally, an
        ``organs.csv`` with columns ``image_id``, ``organ`` and ``xml_microns_per_pixel``.

    Returns
    -------
    list of MonusegImage
        Sorted by ``image_id``. Images without an ``.xml`` are left out (with a log message).

    Raises
    ------
    InvalidInputError
        When ``folder`` is not a folder or holds no image with an annotation.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"folder must be a MoNuSeg folder; got {str(folder)!r}, which is not a folder")
    organs: dict[str, tuple[str, float | None]] = {}
    csv_path = folder / "organs.csv"
    if csv_path.is_file():
        import csv

        with csv_path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                image_id = (row.get("image_id") or "").strip()
                if not image_id:
                    continue
                mpp_text = (row.get("xml_microns_per_pixel") or "").strip()
                organs[image_id] = ((row.get("organ") or "unknown").strip() or "unknown",
                                    float(mpp_text) if mpp_text else None)
    images = []
    for tif in sorted(list(folder.glob("*.tif")) + list(folder.glob("*.tiff"))):
        xml = tif.with_suffix(".xml")
        if not xml.is_file():
            log.info("skipping %s: no annotation %s beside it", tif.name, xml.name)
            continue
        organ, mpp = organs.get(tif.stem, ("unknown", None))
        images.append(MonusegImage(tif.stem, tif, xml, organ, mpp))
    if not images:
        raise InvalidInputError(f"folder must hold .tif images with .xml annotations beside them; "
                                f"found none in {str(folder)!r}")
    return images


def read_aperio_polygons(path: str | Path) -> tuple[list[np.ndarray], float | None]:
    """Read the polygons of an Aperio ImageScope XML annotation.

    Parameters
    ----------
    path : str or Path
        The ``.xml`` file.

    Returns
    -------
    polygons : list of (K, 2) float64 ndarray
        One array of ``(x, y)`` vertices per ``Region``, in the image's pixel frame
        (x to the right, y down). Regions with fewer than 3 vertices are left out.
    mpp : float or None
        The ``MicronsPerPixel`` attribute of the root element, when present.

    Raises
    ------
    InvalidInputError
        When the file cannot be read or is not XML.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise InvalidInputError(f"path must be a readable Aperio XML file; got {str(path)!r}: {exc}") from exc
    mpp_text = root.get("MicronsPerPixel")
    try:
        mpp = float(mpp_text) if mpp_text else None
    except ValueError:
        mpp = None
    polygons = []
    for region in root.iter("Region"):
        xy = [(float(v.get("X", "nan")), float(v.get("Y", "nan"))) for v in region.iter("Vertex")]
        arr = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        arr = arr[np.isfinite(arr).all(axis=1)]
        if len(arr) >= 3:
            polygons.append(arr)
    return polygons, mpp


def rasterize_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise polygons to an instance label image.

    Parameters
    ----------
    polygons : sequence of (K, 2) ndarray
        ``(x, y)`` vertices in MATLAB's 1-based pixel coordinates (as in MoNuSeg's XML).
    shape : (int, int)
        ``(height, width)`` of the label image in pixels.

    Returns
    -------
    (H, W) int32 ndarray
        0 is background; polygon ``i`` (0-based) gets label ``i + 1``. The rule is
        MATLAB's ``poly2mask`` (see the module docstring); vertices outside the image are
        clipped to it; where polygons overlap, the earlier one keeps the pixels (as the
        organisers' code does). Polygons that cover no pixel centre, or only pixels of
        earlier ones, leave no label.
    """
    from skimage.draw import polygon as draw_polygon

    height, width = int(shape[0]), int(shape[1])
    labels = np.zeros((height, width), dtype=np.int32)
    for i, xy in enumerate(polygons):
        x = np.clip(_poly2mask_centre(xy[:, 0]), -0.5, width - 0.5)
        y = np.clip(_poly2mask_centre(xy[:, 1]), -0.5, height - 0.5)
        rr, cc = draw_polygon(y, x, shape=(height, width))
        free = labels[rr, cc] == 0
        labels[rr[free], cc[free]] = i + 1
    return labels


def _poly2mask_centre(v: np.ndarray) -> np.ndarray:
    """MATLAB 1-based coordinates -> 0-based pixel-centre coordinates, quantised as poly2mask does."""
    t = 5.0 * (v - 0.5) + 1.0
    q = np.sign(t) * np.floor(np.abs(t) + 0.5)  # MATLAB's round: halves away from zero
    # Sub-pixel q lies at (q + 2) / 5 in 1-based pixel-centre units.
    return (q + 2.0) / 5.0 - 1.0


def read_monuseg_image(item: MonusegImage) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Read one image and rasterise its annotation.

    Parameters
    ----------
    item : MonusegImage
        From :func:`list_monuseg`.

    Returns
    -------
    rgb : (H, W, 3) uint8 ndarray
    labels : (H, W) int32 ndarray
        Ground-truth instance labels (see :func:`rasterize_polygons`).
    mpp : float or None
        Pixel size in µm/px: ``item.mpp`` or else the XML's ``MicronsPerPixel``.

    Raises
    ------
    InvalidInputError
        When the image cannot be read or is not an RGB image.
    """
    import tifffile

    try:
        rgb = tifffile.imread(item.tif)
    except Exception as exc:  # tifffile raises many types for damaged files
        raise InvalidInputError(f"item.tif must be a readable TIFF; got {str(item.tif)!r}: {exc}") from exc
    if rgb.ndim == 3 and rgb.shape[0] in (3, 4) and rgb.shape[2] not in (3, 4):
        rgb = np.moveaxis(rgb, 0, -1)  # planar TIFF
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or rgb.dtype != np.uint8:
        raise InvalidInputError(f"item.tif must be an RGB uint8 image; got shape {rgb.shape} dtype {rgb.dtype} "
                                f"in {str(item.tif)!r}")
    rgb = np.ascontiguousarray(rgb[..., :3])
    polygons, xml_mpp = read_aperio_polygons(item.xml)
    labels = rasterize_polygons(polygons, rgb.shape[:2])
    return rgb, labels, item.mpp if item.mpp is not None else xml_mpp


def resample_monuseg(rgb: np.ndarray, polygons: Sequence[np.ndarray], mpp: float,
                     target_mpp: float) -> tuple[np.ndarray, np.ndarray, float]:
    """An image and its outlines at another pixel size, as if scanned and annotated there.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 ndarray
    polygons : sequence of (K, 2) ndarray
        Outlines in MATLAB's 1-based pixel coordinates of ``rgb`` (as read by
        :func:`read_aperio_polygons`).
    mpp : float
        Pixel size of ``rgb`` in µm/px.
    target_mpp : float
        Pixel size wanted, µm/px (e.g. 0.5 for a 20x scan).

    Returns
    -------
    rgb : (H', W', 3) uint8 ndarray
        Resampled with pixel-area averaging when shrinking (what a coarser sensor records),
        bicubic interpolation when enlarging.
    labels : (H', W') int32 ndarray
        The outlines scaled to the new grid (pixel corners stay corners: a 1-based
        coordinate ``X`` becomes ``s * (X - 0.5) + 0.5``) and rasterised on it with
        :func:`rasterize_polygons`, not the old labels resampled.
    mpp : float
        The new pixel size (``mpp * W / W'``; it differs from ``target_mpp`` by the rounding
        of the new size to whole pixels).

    Raises
    ------
    InvalidInputError
        When ``rgb`` is not an RGB uint8 image or a pixel size is not a number > 0, or the
        new image would have no pixel.
    """
    import cv2

    from ..cells.nuclei import check_mpp, check_rgb

    rgb = check_rgb(rgb)
    mpp = check_mpp(mpp)
    target_mpp = check_mpp(target_mpp, "target_mpp")
    height, width = rgb.shape[:2]
    new_h, new_w = int(round(height * mpp / target_mpp)), int(round(width * mpp / target_mpp))
    if new_h < 1 or new_w < 1:
        raise InvalidInputError(f"target_mpp must leave at least one pixel; {target_mpp} µm/px turns a "
                                f"{width} x {height} image of {mpp} µm/px into {new_w} x {new_h}")
    interpolation = cv2.INTER_AREA if new_w < width else cv2.INTER_CUBIC
    out = cv2.resize(rgb, (new_w, new_h), interpolation=interpolation)
    scale = np.array([new_w / width, new_h / height])
    scaled = [scale * (np.asarray(xy, dtype=np.float64) - 0.5) + 0.5 for xy in polygons]
    return out, rasterize_polygons(scaled, (new_h, new_w)), mpp * width / new_w


#: Unit optical-density vectors of haematoxylin and eosin (Ruifrok & Johnston 2001), R, G, B order:
#: the stain frame in which :func:`jitter_stains` perturbs an image.
_RUIFROK_HE = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])


def jitter_stains(rgb: np.ndarray, seed: int, *, amount: float = 0.3, shift: float = 0.03,
                  angle_deg: float = 5.0) -> np.ndarray:
    """An H&E image with its stains perturbed in optical density, as another lab or scanner would show it.

    The optical density ``-log10((I + 1) / 256)`` of each pixel is written in the frame of
    the reference haematoxylin and eosin vectors and their cross product (Ruifrok &
    Johnston); the haematoxylin and eosin amounts are scaled by factors drawn from
    ``[1 - amount, 1 + amount]`` and shifted by ``[-shift, shift]`` OD (Tellez et al.'s
    H&E augmentation), and each stain's colour is turned by up to ``angle_deg`` degrees
    (a different dye lot). The same ``seed`` gives the same image.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 ndarray
    seed : int
        Seed of the random draw.
    amount, shift, angle_deg : float
        Largest relative change of the stain amounts, largest OD shift, largest turn of a
        stain vector in degrees; each >= 0.

    Returns
    -------
    (H, W, 3) uint8 ndarray

    Raises
    ------
    InvalidInputError
        When ``rgb`` is not an RGB uint8 image or a setting is negative or not finite.
    """
    from ..cells.nuclei import check_rgb

    rgb = check_rgb(rgb)
    for name, value in (("amount", amount), ("shift", shift), ("angle_deg", angle_deg)):
        if (not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool)
                or not math.isfinite(value) or value < 0):
            raise InvalidInputError(f"{name} must be a finite number >= 0; got {value!r}")
    rng = np.random.default_rng(seed)
    stains = _RUIFROK_HE / np.linalg.norm(_RUIFROK_HE, axis=1, keepdims=True)
    frame = np.vstack([stains, np.cross(stains[0], stains[1])])
    frame[2] /= np.linalg.norm(frame[2])
    od = -np.log10((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / 256.0)
    amounts = od @ np.linalg.inv(frame)
    amounts[:, :2] = amounts[:, :2] * rng.uniform(1 - amount, 1 + amount, 2) + rng.uniform(-shift, shift, 2)
    turned = frame.copy()
    for i in range(2):
        away = rng.normal(size=3)
        away -= away.dot(frame[i]) * frame[i]
        away /= np.linalg.norm(away)
        angle = math.radians(rng.uniform(-angle_deg, angle_deg))
        turned[i] = np.abs(math.cos(angle) * frame[i] + math.sin(angle) * away)
        turned[i] /= np.linalg.norm(turned[i])
    out = 256.0 * 10.0 ** -(amounts @ turned) - 1.0
    return np.clip(np.round(out), 0, 255).astype(np.uint8).reshape(rgb.shape)


def _as_instances(mask: np.ndarray) -> np.ndarray:
    """Instance labels of a mask: labels as given, a boolean mask by its 8-connected components."""
    if mask.dtype == bool:
        labels, _ = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
        return labels
    return mask


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel to 0..n with 0 kept for background; returns the flat labels and n."""
    flat = labels.ravel()
    ids, inverse = np.unique(flat, return_inverse=True)
    if ids[0] != 0:  # no background pixel: shift so that 0 stays free
        return inverse.astype(np.int64) + 1, len(ids)
    return inverse.astype(np.int64), len(ids) - 1


def image_metrics(true_labels: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Score a predicted segmentation against ground-truth instance labels.

    Parameters
    ----------
    true_labels : (H, W) integer ndarray
        Ground-truth instances, 0 = background.
    pred : (H, W) integer or bool ndarray
        Predicted instances (0 = background), or a binary mask whose 8-connected
        components are taken as the instances.

    Returns
    -------
    dict
        The entries of :data:`METRICS` (see the module docstring). A ratio whose
        denominator is 0 (no nucleus in either image) is NaN.

    Raises
    ------
    InvalidInputError
        When the shapes differ or an array is not 2-D.
    """
    true_labels = np.asarray(true_labels)
    pred = np.asarray(pred)
    if true_labels.ndim != 2 or pred.shape != true_labels.shape:
        raise InvalidInputError(f"true_labels and pred must be 2-D arrays of one shape; got "
                                f"{true_labels.shape} and {pred.shape}")
    g, n_true = _compact(_as_instances(true_labels))
    p, n_pred = _compact(_as_instances(pred))
    area_g = np.bincount(g, minlength=n_true + 1)
    area_p = np.bincount(p, minlength=n_pred + 1)
    fg_true, fg_pred = g > 0, p > 0
    inter_px = int(np.count_nonzero(fg_true & fg_pred))
    sum_px = int(area_g[1:].sum() + area_p[1:].sum())
    union_px = sum_px - inter_px

    both = fg_true & fg_pred
    key = g[both] * (n_pred + 1) + p[both]
    pair, inter = np.unique(key, return_counts=True)
    gi, pi = pair // (n_pred + 1), pair % (n_pred + 1)
    union = area_g[gi] + area_p[pi] - inter
    iou = inter / union

    # AJI: each ground-truth object takes the prediction of highest IoU among those it touches.
    order = np.lexsort((-iou, gi))
    first = np.ones(len(order), dtype=bool)
    first[1:] = gi[order][1:] != gi[order][:-1]
    best = order[first]
    used = np.zeros(n_pred + 1, dtype=bool)
    used[pi[best]] = True
    touched = np.zeros(n_true + 1, dtype=bool)
    touched[gi[best]] = True
    aji_inter = float(inter[best].sum())
    aji_union = float(union[best].sum() + area_g[1:][~touched[1:]].sum() + area_p[1:][~used[1:]].sum())

    tp = int(np.count_nonzero(iou > 0.5))
    challenge = _aji_challenge(gi, pi, inter, union, area_g, area_p)
    return {
        "dice": 2 * inter_px / sum_px if sum_px else math.nan,
        "iou": inter_px / union_px if union_px else math.nan,
        "aji": aji_inter / aji_union if aji_union else math.nan,
        "aji_challenge": challenge,
        "f1_object": 2 * tp / (n_true + n_pred) if n_true + n_pred else math.nan,
        "precision": tp / n_pred if n_pred else math.nan,
        "recall": tp / n_true if n_true else math.nan,
        "n_true": float(n_true),
        "n_pred": float(n_pred),
    }


def _aji_challenge(gi: np.ndarray, pi: np.ndarray, inter: np.ndarray, union: np.ndarray, area_g: np.ndarray,
                   area_p: np.ndarray) -> float:
    """AJI as the challenge's code computes it: nuclei in label order, a paired prediction leaves the map.

    ``gi``, ``pi``, ``inter``, ``union``: the overlapping (nucleus, prediction) pairs sorted
    by nucleus then prediction, with their intersection and union in pixels; ``area_g``,
    ``area_p``: areas by label (index 0: background). NaN when there is nothing to score.
    """
    used = np.zeros(len(area_p), dtype=bool)
    total_inter = total_union = 0
    starts = np.searchsorted(gi, np.arange(len(area_g) + 1))
    for g in np.flatnonzero(area_g[1:]) + 1:
        pairs = np.arange(starts[g], starts[g + 1])
        pairs = pairs[~used[pi[pairs]]]
        if len(pairs) == 0:
            total_union += int(area_g[g])
            continue
        best = pairs[np.argmax(inter[pairs] / union[pairs])]  # the first of equals, as MATLAB's max
        total_inter += int(inter[best])
        total_union += int(union[best])
        used[pi[best]] = True
    total_union += int(area_p[1:][~used[1:]].sum())
    return total_inter / total_union if total_union else math.nan


# --------------------------------------------------------------------------- benchmark


@dataclass(frozen=True)
class ImageResult:
    """Scores of one image.

    Attributes
    ----------
    image_id, organ : str
    mpp : float
        Pixel size used, µm/px.
    seconds : float
        Wall time of :func:`~tumls_qp.cells.nuclei.segment_nuclei` on one thread (reading and
        scoring not included), the fastest of the repeated runs.
    cpu_seconds : float
        CPU time of the calling thread over the same call, the smallest of the runs: close
        to ``seconds`` on an idle machine, and not inflated when other processes share the cores.
    metrics : dict
        ``{"mask1" | "mask2" | "mask3": {metric: value}}``, metrics as in :data:`METRICS`.
    """

    image_id: str
    organ: str
    mpp: float
    seconds: float
    cpu_seconds: float
    metrics: dict[str, dict[str, float]]


@dataclass(frozen=True)
class BenchmarkResult(TimedImages):
    """Scores of a benchmark run, per image, with the settings and the machine.

    Attributes
    ----------
    folder : str
        The MoNuSeg folder.
    images : list of ImageResult
        In ``image_id`` order.
    config : NucleiConfig
        The segmentation settings.
    machine : dict of str to str
        CPU model, cores, threads used and library versions.
    """

    folder: str
    images: list[ImageResult]
    config: Any
    machine: dict[str, str] = field(default_factory=dict)

    @property
    def organs(self) -> list[str]:
        """Organs present, sorted."""
        return sorted({im.organ for im in self.images})

    def mean(self, mask: str, metric: str, organ: str | None = None) -> float:
        """Mean over images (of one organ, or all) of one metric of one mask; NaN values are skipped."""
        return nan_mean(im.metrics[mask][metric] for im in self.images if organ is None or im.organ == organ)


#: Key of BenchmarkResult.machine: the load averages before and after the run.
_LOAD = "load average (1, 5, 15 min) before / after"


def run_monuseg_benchmark(
    folder: str | Path,
    *,
    cfg: Any = None,
    mpp: float | None = None,
    limit: int | None = None,
    repeats: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> BenchmarkResult:
    """Segment every image of a MoNuSeg folder and score the three masks.

    Parameters
    ----------
    folder : str or Path
        MoNuSeg-style folder (see :func:`list_monuseg`).
    cfg : NucleiConfig, optional
        Segmentation settings; the defaults when None.
    mpp : float, optional
        Pixel size in µm/px for every image; None: each image's own (``organs.csv`` or the
        XML's ``MicronsPerPixel``).
    limit : int, optional
        Score only the first ``limit`` images (by ``image_id``); None: all.
    repeats : int
        Segment each image this many times and report the fastest (as ``timeit`` does:
        slower runs measure other processes, not the method); the masks are identical.
    progress : callable, optional
        Called as ``progress(done, total)`` after each image.

    Returns
    -------
    BenchmarkResult

    Raises
    ------
    InvalidInputError
        When the folder holds no usable image, an image has no pixel size and ``mpp`` is
        None, or an argument is invalid.

    Notes
    -----
    Segmentation runs on one thread (OpenCV and BLAS pools limited to 1) and only its
    time is counted; one untimed call on the first image comes first, so that lazy imports
    and caches do not count. ``ImageResult.seconds`` is the fastest of ``repeats`` runs.
    """
    from ..config import NucleiConfig
    from ..cells.nuclei import check_mpp, segment_nuclei

    cfg = NucleiConfig() if cfg is None else cfg
    if not isinstance(cfg, NucleiConfig):
        raise InvalidInputError(f"cfg must be a NucleiConfig; got {type(cfg).__name__}")
    if mpp is not None:
        mpp = check_mpp(mpp)
    check_limit_repeats(limit, repeats)
    items = list_monuseg(folder)
    if limit is not None:
        items = items[:limit]
    results: list[ImageResult] = []
    load_before = load_average()
    with cpu_threads(1):
        for done, item in enumerate(items, start=1):
            rgb, truth, item_mpp = read_monuseg_image(item)
            use_mpp = mpp if mpp is not None else item_mpp
            if use_mpp is None:
                raise InvalidInputError(f"mpp must be given: {item.image_id} states no pixel size")
            if done == 1:
                segment_nuclei(rgb, use_mpp, cfg)  # warm-up, not timed
            seg, seconds, cpu_seconds = fastest(lambda: segment_nuclei(rgb, use_mpp, cfg), repeats)
            metrics = {name: image_metrics(truth, getattr(seg, name)) for name in MASKS}
            results.append(ImageResult(item.image_id, item.organ, float(use_mpp), seconds, cpu_seconds, metrics))
            log.info("%s (%s): mask 2 Dice %.4f AJI %.4f in %.3f s", item.image_id, item.organ,
                     metrics["mask2"]["dice"], metrics["mask2"]["aji"], seconds)
            if progress is not None:
                progress(done, len(items))
    info = machine(("numpy", "scipy", "scikit-image", "opencv"))
    info["timing"] = f"fastest of {repeats} run(s) per image"
    # Other processes slow the wall time down: the load says how busy the machine was.
    info[_LOAD] = f"{load_before} / {load_average()}"
    return BenchmarkResult(str(folder), results, cfg, info)


# --------------------------------------------------------------------------- report

_REPORT_METRICS = (("dice", "Dice"), ("iou", "IoU"), ("aji", "AJI"), ("aji_challenge", "AJI (challenge)"),
                   ("f1_object", "F1 obj"), ("precision", "Prec."), ("recall", "Recall"))
_MASK_TITLES = {
    "mask1": "Mask 1: closing then opening (semantic; instances = connected components)",
    "mask2": "Mask 2: de-merged instances (the instance output)",
    "mask3": "Mask 3: median filter of mask 1 (semantic; instances = connected components)",
}


def _name(result: BenchmarkResult) -> str:
    """Short name of a result's data: its folder's name."""
    return Path(result.folder).name or str(result.folder)


def _mask_table(result: BenchmarkResult, mask: str) -> list[str]:
    """Markdown table of one mask: a row per organ, then the mean over images."""
    head = "| organ | images | " + " | ".join(t for _, t in _REPORT_METRICS) + " |"
    lines = [head, "|" + "---|" * (2 + len(_REPORT_METRICS))]
    for organ in result.organs:
        n = sum(im.organ == organ for im in result.images)
        lines.append(f"| {organ} | {n} | " + " | ".join(_fmt(result.mean(mask, m, organ)) for m, _ in _REPORT_METRICS)
                     + " |")
    lines.append(f"| **mean of images** | {len(result.images)} | "
                 + " | ".join(f"**{_fmt(result.mean(mask, m))}**" for m, _ in _REPORT_METRICS) + " |")
    return lines


def _folder_section(result: BenchmarkResult, level: str) -> list[str]:
    """The per-mask, per-organ and per-image tables of one folder."""
    lines: list[str] = []
    for mask in MASKS:
        lines += [f"{level} {_MASK_TITLES[mask]}", ""] + _mask_table(result, mask) + [""]
    lines += [f"{level} Per image (mask 2)", "",
              "| image | organ | µm/px | Dice | IoU | AJI | AJI (challenge) | F1 obj | nuclei (true / found) "
              "| seconds | CPU s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for im in result.images:
        m = im.metrics["mask2"]
        lines.append(f"| {im.image_id} | {im.organ} | {im.mpp:.4f} | {_fmt(m['dice'])} | {_fmt(m['iou'])} | "
                     f"{_fmt(m['aji'])} | {_fmt(m['aji_challenge'])} | {_fmt(m['f1_object'])} | "
                     f"{int(m['n_true'])} / {int(m['n_pred'])} | {im.seconds:.3f} | {im.cpu_seconds:.3f} |")
    seconds, cpu = result.seconds(), result.cpu_seconds()
    if len(seconds):
        lines += ["", f"Seconds per image (wall): mean {seconds.mean():.3f}, median {np.median(seconds):.3f}, "
                      f"max {seconds.max():.3f}. CPU seconds: mean {cpu.mean():.3f}, median {np.median(cpu):.3f}, "
                      f"max {cpu.max():.3f}."]
    if _LOAD in result.machine:
        lines += ["", f"Load average (1, 5, 15 min) of the machine before / after these images: "
                      f"{result.machine[_LOAD]}."]
    return lines + [""]


def format_monuseg_report(results: BenchmarkResult | Sequence[BenchmarkResult], command: str) -> str:
    """The Markdown text of :func:`write_monuseg_report`."""
    import tomli_w

    from ..config import config_to_dict

    results = [results] if isinstance(results, BenchmarkResult) else list(results)
    if not results:
        raise InvalidInputError("results must hold at least one benchmark result")
    data = "; ".join(f"`{r.folder}`, {len(r.images)} images" for r in results)
    lines = [
        "# MoNuSeg benchmark of the classical nucleus segmentation",
        "",
        "Produced by this command, from the repository root:",
        "",
        "```",
        command,
        "```",
        "",
        f"Data: {data}. Every number below comes from that run; do not edit this file by hand, run the command "
        "again.",
        "",
        "## Summary (mask 2, the instance output; mean over images)",
        "",
        "| data | images | Dice | IoU | AJI | AJI (challenge) | F1 obj | seconds per image, wall (mean / max) "
        "| CPU seconds per image (mean / max) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        seconds, cpu = r.seconds(), r.cpu_seconds()
        timing = (f"{_fmt(float(seconds.mean()), 3)} / {_fmt(float(seconds.max()), 3)} | "
                  f"{_fmt(float(cpu.mean()), 3)} / {_fmt(float(cpu.max()), 3)}") if len(seconds) else "– | –"
        lines.append(f"| {_name(r)} | {len(r.images)} | "
                     + " | ".join(_fmt(r.mean("mask2", m)) for m in ("dice", "iou", "aji", "aji_challenge", "f1_object"))
                     + f" | {timing} |")
    lines += [
        "",
        "One thread. Wall time is what a user waits on this machine; CPU time is that of the thread "
        "running the segmentation, which other processes sharing the cores do not inflate.",
        "",
        "For scale: TUMLS (Rehamnia et al.) reports pixel Dice 0.7746 and IoU 0.6335 for its best mask on the "
        "MoNuSeg test set; supervised networks reach Dice about 0.83 and AJI about 0.62.",
        "",
        "## Metrics and scoring conventions",
        "",
        "- **Dice**, **IoU**: pixel Dice (TUMLS' \"F1\") and pixel IoU (its \"Jaccard\") of the nucleus masks.",
        "- **AJI**: Aggregated Jaccard Index (Kumar et al. 2017, Algorithm 1): each ground-truth nucleus is paired "
        "with the predicted object of highest IoU; predicted objects never paired add to the union. A predicted "
        "object may pair with several nuclei.",
        "- **AJI (challenge)**: as the MoNuSeg challenge's code computes it: nuclei in file order, and a predicted "
        "object paired once leaves the map, so the next nucleus takes its best remaining object (the code's "
        "pairing of a nucleus that touches no prediction with object number 1 is not copied: such a nucleus adds "
        "its area only). Higher than AJI where predicted objects merge nuclei.",
        "- **F1 obj**, **Prec.**, **Recall**: object detection at IoU > 0.5 (a one-to-one matching).",
        "- Means are over images (the challenge ranked by mean AJI); an organ's row is the mean over its images.",
        "- Semantic masks (1 and 3) are scored as instances through their 8-connected components.",
        "- Ground truth as the organisers' MATLAB code (`he_to_binary_mask`, `poly2mask`) makes it: a vertex (X, Y) "
        "is the centre of the 1-based pixel (row Y, column X), a pixel belongs to a nucleus when its centre is "
        "inside the polygon (ties by `poly2mask`'s 1/5-pixel grid), vertices outside the image are clipped, and "
        "where two polygons overlap the earlier one in the file keeps the pixels. No band of boundary pixels is "
        "left out. Reading the vertices as 0-based pixel centres instead (as many Python loaders do) moves every "
        "mask one pixel right and down; on the MoNuSeg test images that lowers this method's Dice and AJI by about "
        "0.006, on the training images by less than 0.001 (`benchmarks/monuseg_conventions.py`).",
        "- Seconds: wall and CPU time of `segment_nuclei` alone (no reading, no scoring), one thread, the "
        "fastest of repeated runs (see Machine).",
        "",
    ]
    for r in results:
        if len(results) > 1:
            lines += [f"## {_name(r)} (`{r.folder}`)", ""]
            lines += _folder_section(r, "###")
        else:
            lines += _folder_section(r, "##")
    first = results[0]
    lines += ["## Machine", ""] + [f"- {k}: {v}" for k, v in first.machine.items() if k != _LOAD]
    lines += ["", "## Settings", "", "```toml", tomli_w.dumps({"nuclei": config_to_dict(first.config)}).rstrip(),
              "```", ""]
    return "\n".join(lines)


def write_monuseg_report(result: BenchmarkResult | Sequence[BenchmarkResult], path: str | Path,
                         command: str) -> Path:
    """Write the benchmark report as Markdown.

    Parameters
    ----------
    result : BenchmarkResult or sequence of BenchmarkResult
        From :func:`run_monuseg_benchmark`; several (e.g. the development and the test
        images) give one report with a section per folder (machine and settings of the first).
    path : str or Path
        Output file, e.g. ``reports/monuseg.md``; its folder is created if needed.
    command : str
        The exact command line that produced ``result``, recorded in the report.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    OutputError
        When the file cannot be written (an earlier report at ``path`` is left as it was).
    """
    return write_report(format_monuseg_report(result, command), path)
