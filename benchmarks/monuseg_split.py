"""MoNuSeg with a development / held-out split: the protocol for changing the nucleus segmentation.

The 14 MoNuSeg test images are a public benchmark, so they are split by a fixed rule
before any change is looked at:

* **dev** (development half): the first image of each organ, image ids in sorted order
  (one per organ, 7 images). Diagnosis and design decisions use these only.
* **held** (held-out half): the other 7 images. They are scored rarely: once per idea that
  was kept on the development half.

Scores are those of ``tumls_qp.evaluation.monuseg.image_metrics`` (mask 2 unless told), means over
the images of a half. Timing as in the benchmark: one thread, the fastest of ``--repeats``
runs of ``segment_nuclei`` alone, wall and CPU time of the calling thread.

    python benchmarks/monuseg_split.py                      # dev half, the working tree's code
    python benchmarks/monuseg_split.py --half held          # held-out half
    python benchmarks/monuseg_split.py --half all --compare 57db3bb --repeats 3

``--compare REV`` scores the code of a git revision too (exported to a temporary folder and
run in its own process, one after the other in the same run) and prints both side by side,
for the dev half, the held-out half and all images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = ROOT.parent / "shared" / "data" / "monuseg_test"
METRICS = ("dice", "iou", "aji", "f1_object")


def split_halves(items: list) -> tuple[list[str], list[str]]:
    """(dev ids, held-out ids): dev is the first image id of each organ in sorted order."""
    first: dict[str, str] = {}
    for image_id, organ in sorted((it.image_id, it.organ) for it in items):
        first.setdefault(organ, image_id)
    dev = sorted(first.values())
    held = sorted(it.image_id for it in items if it.image_id not in set(dev))
    return dev, held


def _worker(folder: str, ids: list[str], repeats: int) -> list[dict]:
    """Segment and score the given images with the tumls_qp on sys.path; one dict per image."""
    import time

    import numpy as np

    from tumls_qp.evaluation.monuseg import _OneThread, image_metrics, list_monuseg, read_monuseg_image
    from tumls_qp.cells.nuclei import segment_nuclei

    items = [it for it in list_monuseg(folder) if it.image_id in set(ids)]
    out = []
    cache = Path(tempfile.gettempdir()) / "monuseg_split_cache"
    cache.mkdir(exist_ok=True)
    with _OneThread():
        for k, item in enumerate(items):
            cached = cache / f"{item.image_id}.npz"
            if cached.is_file():
                data = np.load(cached)
                rgb, truth, mpp = data["rgb"], data["truth"], float(data["mpp"])
            else:
                rgb, truth, mpp = read_monuseg_image(item)
                np.savez(cached, rgb=rgb, truth=truth, mpp=mpp)
            if k == 0:
                segment_nuclei(rgb, mpp)  # warm-up
            wall = cpu = math.inf
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.thread_time()
                seg = segment_nuclei(rgb, mpp)
                wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.thread_time() - c0)
            out.append({"image_id": item.image_id, "organ": item.organ, "seconds": wall, "cpu": cpu,
                        **{m: image_metrics(truth, getattr(seg, m)) for m in ("mask1", "mask2", "mask3")}})
    return out


def _run_code(code_dir: Path | None, folder: str, ids: list[str], repeats: int) -> list[dict]:
    """Run the worker in a fresh process with ``code_dir`` (or the working tree) first on sys.path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(code_dir if code_dir is not None else ROOT)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--folder", str(Path(folder).resolve()),
           "--repeats", str(repeats), "--ids", ",".join(ids)]
    proc = subprocess.run(cmd, env=env, cwd=str(code_dir or ROOT), check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _export(rev: str, dest: Path) -> Path:
    """Export ``tumls_qp`` of a git revision into ``dest``; returns ``dest``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "tumls_qp"],
                             check=True, capture_output=True).stdout
    tar_path = dest / "code.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _mean(rows: list[dict], ids: list[str], mask: str, key: str) -> float:
    values = [r[mask][key] if key in r.get(mask, {}) else r[key] for r in rows if r["image_id"] in ids]
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _table(runs: dict[str, list[dict]], halves: dict[str, list[str]], mask: str) -> str:
    lines = ["| code | half | images | Dice | IoU | AJI | F1 obj | s/image wall | s/image CPU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for half, ids in halves.items():
        for name, rows in runs.items():
            present = [i for i in ids if any(r["image_id"] == i for r in rows)]
            if not present:
                continue
            cells = [f"{_mean(rows, present, mask, m):.4f}" for m in METRICS]
            cells += [f"{_mean(rows, present, mask, 'seconds'):.3f}", f"{_mean(rows, present, mask, 'cpu'):.3f}"]
            lines.append(f"| {name} | {half} | {len(present)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=str(DEFAULT_FOLDER))
    parser.add_argument("--half", choices=("dev", "held", "all"), default="dev")
    parser.add_argument("--compare", metavar="REV", help="also score the code of this git revision")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--mask", default="mask2")
    parser.add_argument("--per-image", action="store_true")
    parser.add_argument("--json", metavar="PATH", help="write the per-image results as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.folder, args.ids.split(","), args.repeats)))
        return 0

    sys.path.insert(0, str(ROOT))
    from tumls_qp.evaluation.monuseg import list_monuseg

    items = list_monuseg(args.folder)
    dev, held = split_halves(items)
    ids = {"dev": dev, "held": held, "all": dev + held}[args.half]
    halves = {"dev": dev, "held": held, "all": sorted(dev + held)} if args.half == "all" else {args.half: ids}
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.compare:
            runs[args.compare] = _run_code(_export(args.compare, Path(tmp)), args.folder, ids, args.repeats)
        runs["working tree"] = _run_code(None, args.folder, ids, args.repeats)
    print(f"dev: {', '.join(dev)}\nheld-out: {', '.join(held)}\n")
    print(_table(runs, halves, args.mask))
    if args.per_image:
        for name, rows in runs.items():
            print(f"\n{name}, {args.mask}:")
            for r in rows:
                m = r[args.mask]
                print(f"  {r['image_id']} {r['organ']:9s} Dice {m['dice']:.4f} IoU {m['iou']:.4f} "
                      f"AJI {m['aji']:.4f} F1 {m['f1_object']:.4f} P {m['precision']:.3f} R {m['recall']:.3f} "
                      f"n {int(m['n_true'])}/{int(m['n_pred'])} {r['seconds']:.3f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
