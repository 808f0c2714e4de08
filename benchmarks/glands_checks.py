"""Gland segmentation checks that the GlaS scores do not show: images without glands, and the cost in a case.

1. **No gland, no gland found.** Windows of the GlaS *training* images (160 x 160 px, at least
   10 px away from any annotated gland), and the benign lung tiles of LC25000 (alveolar walls,
   vessels, blood; no gland): the share of them in which a gland is found.
2. **Cost in a whole analysis.** Slides tiled from eight GlaS training images each (2 x 4, 3100 x
   1044 px at 0.62 µm/px; the first eight 775 x 522 px images, then eight malignant ones),
   analysed with 128 µm tiles and ``glands.enabled``: seconds per pipeline stage beside the
   seconds spent on glands, and the glands found.

Prints what ``reports/glands.md`` needs, with the load average:

    python benchmarks/glands_checks.py
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: LC25000 states no pixel size; its 224 px tiles (downscaled from 768 px) are about 0.75 µm/px.
LC25000_MPP = 0.75


def no_gland_windows(glas: Path, size: int = 160, margin: int = 10) -> list[np.ndarray]:
    """Windows of the GlaS training images at least ``margin`` px away from any annotated gland."""
    from tumls_qp.evaluation.glas import list_glas, read_glas_image

    windows = []
    for item in list_glas(glas, "train"):
        rgb, truth = read_glas_image(item)
        for y in range(0, truth.shape[0] - size + 1, size // 2):
            for x in range(0, truth.shape[1] - size + 1, size // 2):
                if not truth[max(0, y - margin):y + size + margin, max(0, x - margin):x + size + margin].any():
                    windows.append(np.ascontiguousarray(rgb[y:y + size, x:x + size]))
    return windows


def negatives(data: Path) -> None:
    from PIL import Image

    from tumls_qp.cells.glands import segment_glands
    from tumls_qp.evaluation.glas import GLAS_MPP

    windows = no_gland_windows(data / "glas")
    found = [segment_glands(w, GLAS_MPP).n_glands > 0 for w in windows]
    print(f"GlaS train windows without glands: {len(windows)}; a gland found in {sum(found)} "
          f"({np.mean(found):.1%}); empty in {1 - np.mean(found):.1%}")
    lc = data / "lc25000_224"
    with (lc / "labels.csv").open(newline="", encoding="utf-8") as fh:
        files = [row["file"] for row in csv.DictReader(fh) if row["label"] == "lung_n"]
    found = []
    for name in files:
        with Image.open(lc / name) as im:
            found.append(segment_glands(np.asarray(im.convert("RGB")), LC25000_MPP).n_glands > 0)
    print(f"LC25000 benign lung tiles: {len(files)}; a gland found in {sum(found)} ({np.mean(found):.1%})")


#: The mosaics of the cost check: GlaS training image numbers (all 775 x 522 px).
MOSAICS = {"first eight": (1, 2, 3, 4, 5, 6, 8, 9), "malignant": (1, 10, 11, 13, 14, 16, 17, 18)}


def cost(data: Path, which: str) -> None:
    from tumls_qp.config import PipelineConfig, replace_in
    from tumls_qp.evaluation.glas import GLAS_MPP, list_glas, read_glas_image
    from tumls_qp.pipeline import analyze
    from tumls_qp.testing import write_pyramidal_tiff

    items = {i.name: i for i in list_glas(data / "glas", "train")}
    images = [read_glas_image(items[f"train_{i}"])[0] for i in MOSAICS[which]]
    mosaic = np.vstack([np.hstack(images[:4]), np.hstack(images[4:])])
    config = replace_in(PipelineConfig(), **{"tiles.tile_um": 128.0, "embedding.device": "cpu",
                                             "glands.enabled": True})
    with tempfile.TemporaryDirectory() as tmp:
        slide = write_pyramidal_tiff(Path(tmp) / "glas-mosaic.tif", mosaic, GLAS_MPP)
        start = time.perf_counter()
        [result] = analyze([slide], Path(tmp) / "out", config)
        total = time.perf_counter() - start
    m = result.manifest
    print(f"GlaS mosaic, {which} ({mosaic.shape[1]} x {mosaic.shape[0]} px, 128 µm tiles): k = {m.clusters.k}, "
          f"{len(m.representatives)} representatives, {m.glands.glands} glands {m.glands.per_tissue}")
    print(f"  seconds per stage: {m.timings_s}; total {total:.1f} s")
    print(f"  glands: {m.glands.seconds:.2f} s ({m.glands.seconds / len(m.representatives):.3f} s per representative), "
          f"{m.glands.seconds / total:.2%} of the case; without glands the case would take "
          f"{total - m.glands.seconds:.1f} s (ratio {total / (total - m.glands.seconds):.3f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED, help="the shared data folder (default ../shared/data)")
    args = parser.parse_args()
    if not (args.data / "glas").is_dir():
        print(f"GlaS not found under {args.data}: pass --data", file=sys.stderr)
        return 3
    negatives(args.data)
    for which in MOSAICS:
        cost(args.data, which)
    print(f"load average (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
