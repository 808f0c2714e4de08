"""How much the scoring conventions move the MoNuSeg figures, on the same predicted masks.

The organisers' MATLAB code makes the ground truth with ``poly2mask`` on the XML vertices
(1-based pixel coordinates), the earlier polygon keeping the pixels two polygons share; many
Python loaders instead draw the vertices as 0-based pixel centres and let the later polygon
win. AJI is written by Kumar et al. (2017) so that one predicted object may pair with several
nuclei; the challenge's code removes an object once paired. This script segments every image
once (the working tree's code, mask 2) and scores the masks under each convention:

* rasteriser ``poly2mask`` (this project's, as the organisers) or ``0-based`` (vertices taken
  as 0-based pixel centres, ``skimage.draw.polygon`` on the raw coordinates);
* overlaps: ``first`` (as the organisers) or ``later`` polygon wins;
* both AJI variants in every row.

    python benchmarks/monuseg_conventions.py --folder ../shared/data/monuseg_test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from monuseg_split import DEFAULT_FOLDER, ROOT  # noqa: E402


def _rasterise(polygons: list[np.ndarray], shape: tuple[int, int], poly2mask: bool, first_wins: bool) -> np.ndarray:
    """Instance labels of the polygons under one convention."""
    from skimage.draw import polygon as draw_polygon

    from tumls_qp.evaluation.monuseg import _poly2mask_centre, rasterize_polygons

    if poly2mask and first_wins:
        return rasterize_polygons(polygons, shape)
    height, width = shape
    labels = np.zeros(shape, dtype=np.int32)
    for i, xy in enumerate(polygons):
        x, y = (_poly2mask_centre(xy[:, 0]), _poly2mask_centre(xy[:, 1])) if poly2mask else (xy[:, 0], xy[:, 1])
        rr, cc = draw_polygon(np.clip(y, -0.5, height - 0.5), np.clip(x, -0.5, width - 0.5), shape=shape)
        if first_wins:
            free = labels[rr, cc] == 0
            rr, cc = rr[free], cc[free]
        labels[rr, cc] = i + 1
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=str(DEFAULT_FOLDER))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from tumls_qp.cells.nuclei import segment_nuclei
    from tumls_qp.evaluation.monuseg import image_metrics, list_monuseg, read_aperio_polygons, read_monuseg_image

    conventions = [("poly2mask", "first", True, True), ("poly2mask", "later", True, False),
                   ("0-based", "first", False, True), ("0-based", "later", False, False)]
    scores: dict[tuple[str, str], list[dict]] = {(r, o): [] for r, o, _, _ in conventions}
    items = list_monuseg(args.folder)
    for item in items:
        rgb, _, mpp = read_monuseg_image(item)
        pred = segment_nuclei(rgb, mpp).mask2
        polygons, _ = read_aperio_polygons(item.xml)
        for raster, overlap, poly2mask, first_wins in conventions:
            truth = _rasterise(polygons, rgb.shape[:2], poly2mask, first_wins)
            scores[(raster, overlap)].append(image_metrics(truth, pred))
    print(f"{args.folder}: {len(items)} images, mask 2 of the working tree, means over images\n")
    print("| rasteriser | overlaps | Dice | AJI | AJI (challenge) | F1 obj |")
    print("|---|---|---|---|---|---|")
    for (raster, overlap), rows in scores.items():
        cells = [f"{np.mean([r[k] for r in rows]):.4f}" for k in ("dice", "aji", "aji_challenge", "f1_object")]
        print(f"| {raster} | {overlap} wins | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
