"""How much the gland method's GlaS train score depends on the strength of each stain, and each set's stains.

1. Every training image with its haematoxylin or eosin scaled: concentrations unmixed with the
   reference H&E vectors (:data:`tumls_qp.stains.REFERENCE_STAINS`), one of them multiplied, the
   residual the two vectors do not explain kept, back to RGB. Pooled mIoU of the defaults (and of
   a variant given by ``--set``), overall and by grade. With ``--along own`` the stains are
   unmixed and scaled along the image's own Macenko vectors instead (estimated on the unscaled
   image by :func:`tumls_qp.cells.nuclei.estimate_stains` without its 30° limit, which 13 of the
   training images exceed at full resolution): a change of strength alone, where the reference
   vectors also change the hue of an image whose stains differ from them.
2. The stains of each set, from the images only (no mask, no score): per image the median
   haematoxylin and eosin concentrations of its tissue (mean optical density above 0.083), then
   the median over the images of each set and grade.

    python benchmarks/glands_stain.py --set glands.threshold=-0.12
    python benchmarks/glands_stain.py --along own
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from glands_split import parse_variant  # noqa: E402

#: (haematoxylin, eosin) factors of step 1.
SCALES = ((1.0, 1.0), (0.85, 1.0), (1.15, 1.0), (1.0, 0.8), (1.0, 1.2))


def scale_stains(rgb: np.ndarray, h_factor: float, e_factor: float, vectors: np.ndarray | None = None) -> np.ndarray:
    """``rgb`` with its haematoxylin and eosin concentrations multiplied along ``vectors`` ((2, 3) unit OD vectors
    of haematoxylin and eosin; the reference vectors when None)."""
    from tumls_qp.stains import OD_LUT, REFERENCE_STAINS, REFERENCE_UNMIX

    od = OD_LUT[rgb].reshape(-1, 3)
    stains = (REFERENCE_STAINS if vectors is None else vectors).astype(np.float32)
    conc = od @ (REFERENCE_UNMIX if vectors is None else np.linalg.pinv(stains))
    residual = od - conc @ stains
    od = (conc * np.array([h_factor, e_factor], np.float32)) @ stains + residual
    return np.clip(np.round(256.0 * np.power(10.0, -od) - 1.0), 0, 255).astype(np.uint8).reshape(rgb.shape)


def main() -> int:
    from tumls_qp.cells.glands import segment_glands
    from tumls_qp.cells.nuclei import estimate_stains
    from tumls_qp.config import PipelineConfig, replace_in
    from tumls_qp.evaluation.glas import GLAS_MPP, confusion, list_glas, pooled_metrics, read_glas_image
    from tumls_qp.stains import OD_LUT, REFERENCE_UNMIX

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--along", choices=("reference", "own"), default="reference",
                            help="scale the stains along the reference H&E vectors (default) or the image's own")

    data, changes, args = parse_variant(__doc__, add_arguments)
    glas = data / "glas"
    configs = {"defaults": PipelineConfig().glands}
    if changes:
        configs["variant"] = replace_in(PipelineConfig(), **dict(changes)).glands
        print(f"variant: {', '.join(f'{k}={v!r}' for k, v in changes)}")
    load = os.getloadavg()
    images = [(item.grade, *read_glas_image(item)) for item in list_glas(glas, "train")]
    vectors = [estimate_stains(rgb, max_deviation_deg=90).matrix if args.along == "own" else None for _, rgb, _ in images]
    print(f"GlaS train pooled mIoU (all / benign / malignant) with the stains scaled (along the {args.along} vectors)")
    for h_factor, e_factor in SCALES:
        counts = {(name, grade): np.zeros((2, 2), np.int64) for name in configs for grade in ("benign", "malignant")}
        for (grade, rgb, truth), own in zip(images, vectors):
            scaled = scale_stains(rgb, h_factor, e_factor, own) if (h_factor, e_factor) != (1.0, 1.0) else rgb
            for name, cfg in configs.items():
                counts[name, grade] += confusion(truth, segment_glands(scaled, GLAS_MPP, cfg).labels > 0)
        for name in configs:
            ben, mal = counts[name, "benign"], counts[name, "malignant"]
            miou = [pooled_metrics(cm)["miou"] for cm in (ben + mal, ben, mal)]
            print(f"  H x {h_factor:<4g} E x {e_factor:<4g} {name:9s} {miou[0]:.4f} / {miou[1]:.4f} / {miou[2]:.4f}")
    print("Stains of each set (median over images of the median tissue concentration; reference vectors)")
    for split in ("train", "testA"):
        per_grade: dict[str, list[tuple[float, float]]] = {}
        for item in list_glas(glas, split):
            rgb, _ = read_glas_image(item)  # the mask is not used
            od = OD_LUT[rgb[::2, ::2]].reshape(-1, 3)
            conc = od[od.mean(axis=1) > 0.083] @ REFERENCE_UNMIX
            per_grade.setdefault(item.grade, []).append((float(np.median(conc[:, 0])), float(np.median(conc[:, 1]))))
        for grade in sorted(per_grade):
            values = np.array(per_grade[grade])
            h, e = np.median(values, axis=0)
            print(f"  {split:5s} {grade:9s} {len(values):2d} images: haematoxylin {h:.3f}  eosin {e:.3f}  "
                  f"eosin / haematoxylin {np.median(values[:, 1] / values[:, 0]):.2f}")
    end = os.getloadavg()
    print(f"load average (1 min) {load[0]:.2f} at the start, {end[0]:.2f} at the end; {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
