"""Robustness of the nucleus segmentation to magnification and to staining, on MoNuSeg folders.

Other labs scan at 20x as well as 40x and stain more or less strongly with other dye lots.
Each image of a MoNuSeg-style folder is segmented as scanned and in these variants:

* **0.5 µm/px** (a 20x scan): the image resampled with pixel-area averaging, its outlines
  scaled and rasterised on the new grid (``resample_monuseg``): the scores are those a
  20x data set annotated at 20x would give.
* **stain jitter** (``--draws`` draws per image, fixed seeds): haematoxylin and eosin
  amounts scaled by up to +-30 %, shifted by up to +-0.03 OD, their colours turned by up to
  5 degrees (``jitter_stains``); the outlines do not change.

Mask 2, means over images; for the jitter, the mean over all draws and the worst draw (the
draw index whose mean AJI over the images is lowest). ``--compare REV`` segments with the code
of a git revision too, in its own process (reading, resampling, jitter and scoring always use
the working tree's code).

    python benchmarks/monuseg_robustness.py
    python benchmarks/monuseg_robustness.py --folder ../shared/data/monuseg_train \\
        --folder ../shared/data/monuseg_test --compare main
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from monuseg_split import DEFAULT_FOLDER, ROOT, compare_revisions  # noqa: E402

METRICS = ("dice", "aji", "aji_challenge", "f1_object")


def _variants(item, draws: int, target_mpp: float, index: int):
    """(variant name, draw or None, rgb, truth, mpp) of one image."""
    from tumls_qp.evaluation.monuseg import jitter_stains, read_aperio_polygons, read_monuseg_image, \
        resample_monuseg

    rgb, truth, mpp = read_monuseg_image(item)
    yield "as scanned", None, rgb, truth, mpp
    polygons, _ = read_aperio_polygons(item.xml)
    small, small_truth, small_mpp = resample_monuseg(rgb, polygons, mpp, target_mpp)
    yield f"{target_mpp:g} µm/px", None, small, small_truth, small_mpp
    for draw in range(draws):
        yield "stain jitter", draw, jitter_stains(rgb, seed=1000 * draw + index), truth, mpp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", action="append", help=f"MoNuSeg-style folder, repeatable (default {DEFAULT_FOLDER})")
    parser.add_argument("--target-mpp", type=float, default=0.5, help="pixel size of the resampled variant (µm/px)")
    parser.add_argument("--draws", type=int, default=3, help="stain jitter draws per image")
    parser.add_argument("--compare", metavar="REV", help="also segment with the code of this git revision")
    parser.add_argument("--per-image", action="store_true")
    args = parser.parse_args(argv)
    if args.draws < 1 or not (math.isfinite(args.target_mpp) and args.target_mpp > 0):
        parser.error("--draws must be >= 1 and --target-mpp a pixel size > 0")

    sys.path.insert(0, str(ROOT))
    from tumls_qp.evaluation.monuseg import image_metrics, list_monuseg

    for folder in args.folder or [str(DEFAULT_FOLDER)]:
        items = list_monuseg(folder)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            cases, inputs = [], []  # cases: (image id, variant, draw, truth)
            for index, item in enumerate(items):
                for variant, draw, rgb, truth, mpp in _variants(item, args.draws, args.target_mpp, index):
                    inputs.append(work / f"{len(inputs):04d}.npz")
                    np.savez(inputs[-1], rgb=rgb, mpp=mpp)
                    cases.append((item.image_id, variant, draw, truth))
            segmented = compare_revisions(args.compare, inputs, work, repeats=1)
            scores = {name: [(case, image_metrics(case[3], masks[path.name]["mask2"]), masks[path.name]["cpu"])
                             for case, path in zip(cases, inputs)]
                      for name, masks in segmented.items()}
        print(f"\n{folder}: {len(items)} images, mask 2, means over images\n")
        print("| code | variant | Dice | AJI | AJI (challenge) | F1 obj | AJI change | CPU s/image |")
        print("|---|---|---|---|---|---|---|---|")
        for name, rows in scores.items():
            base_aji = None
            for variant in dict.fromkeys(case[1] for case, _, _ in rows):
                chosen = [(case, m, cpu) for case, m, cpu in rows if case[1] == variant]
                draws = sorted({case[2] for case, _, _ in chosen if case[2] is not None})
                groups = {"": chosen}
                if draws:
                    by_draw = {d: [r for r in chosen if r[0][2] == d] for d in draws}
                    worst = min(draws, key=lambda d: np.mean([m["aji"] for _, m, _ in by_draw[d]]))
                    groups = {f" (mean of {len(draws)} draws)": chosen, f" (worst draw, {worst})": by_draw[worst]}
                for suffix, group in groups.items():
                    means = {k: float(np.nanmean([m[k] for _, m, _ in group])) for k in METRICS}
                    base_aji = means["aji"] if base_aji is None else base_aji
                    cpu = float(np.mean([c for _, _, c in group]))
                    print(f"| {name} | {variant}{suffix} | " + " | ".join(f"{means[k]:.4f}" for k in METRICS)
                          + f" | {means['aji'] - base_aji:+.4f} | {cpu:.3f} |")
        if args.per_image:
            for name, rows in scores.items():
                print(f"\n{name}:")
                for case, m, _ in rows:
                    draw = "" if case[2] is None else f" {case[2]}"
                    print(f"  {case[0]} {case[1]}{draw}: Dice {m['dice']:.4f} AJI {m['aji']:.4f} "
                          f"F1 {m['f1_object']:.4f} n {int(m['n_true'])}/{int(m['n_pred'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
