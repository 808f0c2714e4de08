"""Can shape alone split the merged objects of mask 2? Census, oracles and split rules on the dev part.

Mask 2 of the working tree's ``segment_nuclei`` on the images of a part (``--half``, the dev
part by default; see ``monuseg_split.py``). A predicted object is **merged** when two or more
true nuclei have more than half their area in it, **single** otherwise. Printed:

1. **Census** of the objects of at least 1.2 times the image's typical (median) object area:
   single and merged counts, and how well each shape feature tells them apart (ROC AUC, 0.5 =
   chance): area over typical, ellipticity (``_ellipticity``: 1 for a filled ellipse),
   solidity (area over convex hull), and the gain in ellipticity when a two-component Gaussian
   mixture of the pixel positions cuts the object in two.
2. **Oracles** (AJI of mask 2 after the change): merged objects split by the truth (each pixel
   to the nearest true nucleus); merged objects split, with the true number of parts, by a
   watershed of their distance transform from its h-maxima (h 0.25-2 µm; only where some h
   gives that number) or by a Gaussian mixture of their pixel positions.
3. **Rules** that decide without the truth: a distance-transform watershed from h-maxima
   (h 1, 2, 3 µm; the candidate of most elliptic parts kept when its parts beat the whole)
   on objects of 1.3 typical areas or more; a Gaussian mixture of ``round(area / typical)``
   components on objects of T typical areas or more, always or only when its parts are on
   average more elliptic than the whole. Parts under 0.25-0.3 typical areas void a candidate.

    python benchmarks/monuseg_shape_split.py                 # dev part
    python benchmarks/monuseg_shape_split.py --half held
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from monuseg_split import DEFAULT_FOLDER, ROOT, split_halves  # noqa: E402


def _moments(mask: np.ndarray) -> np.ndarray:
    r, c = np.nonzero(mask)
    r, c = r.astype(np.float64), c.astype(np.float64)
    return np.array([[len(r), r.sum(), c.sum(), (r * r).sum(), (r * c).sum(), (c * c).sum()]])


def _ell(mask: np.ndarray) -> float:
    from tumls_qp.cells.nuclei import _ellipticity

    return float(_ellipticity(_moments(mask))[0])


def _mean_part_ell(parts: np.ndarray, k: int) -> tuple[float, float]:
    """(area-weighted mean ellipticity of parts 1..k, smallest part area)."""
    areas = np.bincount(parts.ravel(), minlength=k + 1)[1:k + 1]
    ells = [_ell(parts == i + 1) for i in range(k)]
    return float(np.average(ells, weights=np.maximum(areas, 1))), float(areas.min())


def _gmm(obj: np.ndarray, k: int) -> np.ndarray:
    from sklearn.mixture import GaussianMixture

    r, c = np.nonzero(obj)
    x = np.column_stack([r, c]).astype(np.float64)
    parts = np.zeros(obj.shape, dtype=np.int32)
    parts[r, c] = GaussianMixture(k, random_state=0).fit(x).predict(x) + 1
    return parts


def _dt_candidates(obj: np.ndarray, hs_px: list[float]) -> list[tuple[np.ndarray, int]]:
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    depth = cv2.distanceTransform(obj.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
    out = []
    for h in hs_px:
        n, seeds = cv2.connectedComponents((h_maxima(depth.astype(np.float64), h).astype(bool) & obj).view(np.uint8),
                                           connectivity=8)
        if n - 1 >= 2:
            out.append((watershed(-depth, seeds, mask=obj), n - 1))
    return out


class Image:
    """Mask 2 of one image, its truth, and which predicted objects are merged."""

    def __init__(self, rgb: np.ndarray, truth: np.ndarray, mpp: float):
        from scipy import ndimage as ndi

        from tumls_qp.cells.nuclei import segment_nuclei

        self.truth, self.mpp = truth, mpp
        self.labels = segment_nuclei(rgb, mpp).mask2
        n_p, n_t = int(self.labels.max()), int(truth.max())
        self.area = np.bincount(self.labels.ravel(), minlength=n_p + 1)
        t_area = np.bincount(truth.ravel(), minlength=n_t + 1)
        both = (self.labels > 0) & (truth > 0)
        pair, count = np.unique(truth[both].astype(np.int64) * (n_p + 1) + self.labels[both], return_counts=True)
        gi, pi = pair // (n_p + 1), pair % (n_p + 1)
        self.held = np.bincount(pi[count / t_area[gi] > 0.5], minlength=n_p + 1)
        self.typical = float(np.median(self.area[1:][self.area[1:] > 0]))
        self.boxes = ndi.find_objects(self.labels)

    def objects(self, factor: float):
        """(label, box, object with a one-pixel margin) of the objects of ``factor`` typical areas or more."""
        for label in np.flatnonzero(self.area >= factor * self.typical):
            if label > 0:
                box = self.boxes[label - 1]
                yield int(label), box, np.pad(self.labels[box] == label, 1)

    def scores(self, cuts: dict[int, tuple[tuple[slice, slice], np.ndarray]]) -> dict[str, float]:
        """Scores of mask 2 after cutting objects: ``{label: (box, parts 1..k with a one-pixel margin)}``."""
        from tumls_qp.evaluation.monuseg import image_metrics

        out = self.labels.copy()
        following = int(out.max()) + 1
        for box, parts in cuts.values():
            piece, target = parts[1:-1, 1:-1], out[box]
            for i in range(2, int(piece.max()) + 1):
                target[piece == i] = following
                following += 1
        return image_metrics(self.truth, out)

    def aji(self, cuts: dict) -> float:
        return self.scores(cuts)["aji"]


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, score))


def census(images: list[Image]) -> list[str]:
    rows = []
    for im in images:
        for label, _, obj in im.objects(1.2):
            contours, _ = cv2.findContours(obj.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            hull = max(cv2.contourArea(cv2.convexHull(np.vstack(contours))), 1.0)
            whole = _ell(obj)
            two, _ = _mean_part_ell(_gmm(obj, 2), 2)
            rows.append((im.held[label] >= 2, im.area[label] / im.typical, whole, im.area[label] / hull, two - whole))
    merged = np.array([r[0] for r in rows])
    lines = [f"Objects of at least 1.2 typical areas: {len(rows)}, of which merged {int(merged.sum())}, "
             f"single {int((~merged).sum())}.", "",
             "| feature | single (quartiles) | merged (quartiles) | ROC AUC |", "|---|---|---|---|"]
    for k, name in enumerate(("area / typical", "ellipticity", "solidity", "ellipticity gain of a 2-part mixture"), 1):
        v = np.array([r[k] for r in rows])
        q = [" / ".join(f"{x:.3f}" for x in np.percentile(v[m], [25, 50, 75])) for m in (~merged, merged)]
        lines.append(f"| {name} | {q[0]} | {q[1]} | {_auc(merged, v):.3f} |")
    return lines


def oracles(images: list[Image]) -> list[str]:
    from scipy import ndimage as ndi

    base, truth_split, dt, gmm, dt_found, n_merged = [], [], [], [], 0, 0
    for im in images:
        base.append(im.aji({}))
        _, index = ndi.distance_transform_edt(im.truth == 0, return_indices=True)
        nearest = im.truth[index[0], index[1]]
        cuts_truth, cuts_dt, cuts_gmm = {}, {}, {}
        for label, box, obj in im.objects(0.0):
            k = int(im.held[label])
            if k < 2:
                continue
            n_merged += 1
            parts = np.zeros(obj.shape, dtype=np.int32)
            crop_near = np.pad(nearest[box], 1)
            _, parts[obj] = np.unique(crop_near[obj], return_inverse=True)
            parts[obj] += 1
            cuts_truth[label] = (box, parts)
            right = [p for p, n in _dt_candidates(obj, [h / im.mpp for h in (0.25, 0.5, 1.0, 2.0)]) if n == k]
            if right:
                dt_found += 1
                cuts_dt[label] = (box, right[0])
            cuts_gmm[label] = (box, _gmm(obj, k))
        truth_split.append(im.aji(cuts_truth))
        dt.append(im.aji(cuts_dt))
        gmm.append(im.aji(cuts_gmm))
    return ["| mask 2 | AJI |", "|---|---|",
            f"| as segmented | {np.mean(base):.4f} |",
            f"| merged objects ({n_merged}) split by the truth | {np.mean(truth_split):.4f} |",
            f"| merged objects split by distance-transform h-maxima, true count (found for {dt_found}) "
            f"| {np.mean(dt):.4f} |",
            f"| merged objects split by a Gaussian mixture, true count | {np.mean(gmm):.4f} |"]


def rules(images: list[Image]) -> list[str]:
    lines = ["| rule | objects cut | AJI | F1 obj |", "|---|---|---|---|"]

    def row(name: str, decide) -> None:
        aji, f1, cut = [], [], 0
        for im in images:
            cuts = decide(im)
            cut += len(cuts)
            scores = im.scores(cuts)
            aji.append(scores["aji"])
            f1.append(scores["f1_object"])
        lines.append(f"| {name} | {cut} | {np.mean(aji):.4f} | {np.mean(f1):.4f} |")

    row("none (mask 2)", lambda im: {})

    def dt_rule(im: Image) -> dict:
        cuts = {}
        smallest = max(8.0 / im.mpp ** 2, 0.25 * im.typical)
        for label, box, obj in im.objects(1.3):
            best, best_score = None, _ell(obj)
            for parts, n in _dt_candidates(obj, [h / im.mpp for h in (1.0, 2.0, 3.0)]):
                score, least = _mean_part_ell(parts, n)
                if least >= smallest and score > best_score:
                    best, best_score = parts, score
            if best is not None:
                cuts[label] = (box, best)
        return cuts

    row("distance-transform h-maxima (1, 2, 3 µm), objects >= 1.3 typical, parts more elliptic", dt_rule)
    for factor in (1.5, 2.0, 2.5):
        for need_shape in (False, True):
            def gmm_rule(im: Image, factor=factor, need_shape=need_shape) -> dict:
                cuts = {}
                for label, box, obj in im.objects(factor):
                    k = max(2, int(round(im.area[label] / im.typical)))
                    parts = _gmm(obj, k)
                    score, least = _mean_part_ell(parts, k)
                    if least >= 0.3 * im.typical and (not need_shape or score > _ell(obj)):
                        cuts[label] = (box, parts)
                return cuts

            row(f"Gaussian mixture, objects >= {factor} typical" + (", parts more elliptic" if need_shape else ""),
                gmm_rule)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=str(DEFAULT_FOLDER))
    parser.add_argument("--half", choices=("dev", "held", "all"), default="dev")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tumls_qp.evaluation.monuseg import list_monuseg, read_monuseg_image

    items = list_monuseg(args.folder)
    dev, held = split_halves(items)
    ids = set({"dev": dev, "held": held, "all": dev + held}[args.half])
    images = []
    for item in items:
        if item.image_id in ids:
            rgb, truth, mpp = read_monuseg_image(item)
            images.append(Image(rgb, truth, mpp))
    print(f"{args.folder}, {args.half} part: {len(images)} images\n")
    for title, part in (("Census", census), ("Oracles", oracles), ("Rules", rules)):
        print(f"## {title}\n\n" + "\n".join(part(images)) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
