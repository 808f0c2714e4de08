"""A gland design change against the method's defaults on GlaS train: by grade, on two 2-fold splits, without glands.

The bar a change of ``segment_glands`` must pass on the training images before GlaS Test A is
scored (``reports/glands.md``): pooled mIoU by grade and on each half of two 2-fold splits of
train (odd / even image numbers; odd / even patient numbers of ``grades.csv``, so that no
patient is on both sides), each grade within each half, and the two false-gland rates of
``benchmarks/glands_checks.py`` (GlaS train windows without glands, LC25000 benign lung tiles).
Only the training images are read: Test A is never touched.

    python benchmarks/glands_split.py --set glands.threshold=-0.12

Each ``--set`` changes one ``[glands]`` option (a TOML value); the defaults are scored beside it.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from glands_checks import LC25000_MPP, SHARED, no_gland_windows  # noqa: E402


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("glands."):
        raise argparse.ArgumentTypeError(f"--set takes glands.OPTION=VALUE; got {text!r}")
    return key, tomllib.loads(f"v = {value}")["v"]


def parse_variant(doc: str, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
                  ) -> tuple[Path, list[tuple[str, object]], argparse.Namespace]:
    """``--data`` and ``--set`` of a gland benchmark: the shared data folder (exit 3 without GlaS in it), the
    variant's options, and all the arguments (with those ``add_arguments`` adds for the benchmark itself)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    if add_arguments is not None:
        add_arguments(parser)
    parser.add_argument("--data", type=Path, default=SHARED, help="the shared data folder (default ../shared/data)")
    parser.add_argument("--set", dest="changes", type=_override, action="append", default=[],
                        metavar="glands.OPTION=VALUE", help="an option of the variant (repeatable)")
    args = parser.parse_args()
    if not (args.data / "glas").is_dir():
        print(f"GlaS not found under {args.data}: pass --data", file=sys.stderr)
        raise SystemExit(3)
    return args.data, args.changes, args


def main() -> int:
    from PIL import Image

    from tumls_qp.cells.glands import segment_glands
    from tumls_qp.config import PipelineConfig, replace_in
    from tumls_qp.evaluation.glas import GLAS_MPP, confusion, list_glas, pooled_metrics, read_glas_image

    data, changes, _ = parse_variant(__doc__)
    glas = data / "glas"
    configs = {"defaults": PipelineConfig().glands, "variant": replace_in(PipelineConfig(), **dict(changes)).glands}
    load = os.getloadavg()
    with (glas / "grades.csv").open(newline="", encoding="utf-8") as fh:
        patient = {row["name"]: int(row["patient_id"]) for row in csv.DictReader(fh)}
    items = list_glas(glas, "train")
    counts = {name: {} for name in configs}
    seconds = {name: 0.0 for name in configs}
    for item in items:
        rgb, truth = read_glas_image(item)
        for name, cfg in configs.items():
            start = time.perf_counter()
            pred = segment_glands(rgb, GLAS_MPP, cfg).labels > 0
            seconds[name] += time.perf_counter() - start
            counts[name][item.name] = confusion(truth, pred)

    number = {item.name: int(item.name.rpartition("_")[2]) for item in items}
    halves = {"all": lambda n: True, "odd images": lambda n: number[n] % 2 == 1,
              "even images": lambda n: number[n] % 2 == 0, "odd patients": lambda n: patient[n] % 2 == 1,
              "even patients": lambda n: patient[n] % 2 == 0}
    print(f"variant: {', '.join(f'{k}={v!r}' for k, v in changes) or '(the defaults)'}")
    print(f"{'GlaS train pooled mIoU':32s} {'images':>6s} {'defaults':>9s} {'variant':>9s} {'change':>8s}")
    for half, inside in halves.items():
        for grade in ("all", "benign", "malignant"):
            names = [i.name for i in items if inside(i.name) and grade in ("all", i.grade)]
            miou = [pooled_metrics(sum(counts[c][n] for n in names))["miou"] for c in configs]
            print(f"{half + ', ' + grade:32s} {len(names):6d} {miou[0]:9.4f} {miou[1]:9.4f} {miou[1] - miou[0]:+8.4f}")
    windows = no_gland_windows(glas)
    lc = data / "lc25000_224"
    with (lc / "labels.csv").open(newline="", encoding="utf-8") as fh:
        tiles = [lc / row["file"] for row in csv.DictReader(fh) if row["label"] == "lung_n"]
    lung = []
    for path in tiles:
        with Image.open(path) as im:
            lung.append(np.asarray(im.convert("RGB")))
    for name, cfg in configs.items():
        found_w = sum(segment_glands(w, GLAS_MPP, cfg).n_glands > 0 for w in windows)
        found_l = sum(segment_glands(t, LC25000_MPP, cfg).n_glands > 0 for t in lung)
        print(f"{name}: a gland in {found_w}/{len(windows)} GlaS train windows without glands, {found_l}/{len(lung)} "
              f"LC25000 benign lung tiles; {seconds[name] / len(items):.3f} s per training image")
    end = os.getloadavg()
    print(f"load average (1 min) {load[0]:.2f} at the start, {end[0]:.2f} at the end; {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
