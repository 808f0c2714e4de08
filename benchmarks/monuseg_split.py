"""MoNuSeg with a development / held-out split: the protocol for changing the nucleus segmentation.

The development set is ``../shared/data/monuseg_train`` (13 MoNuSeg training images). It is
split by a fixed rule before any change is looked at:

* **dev** (development part): the first image of each organ, image ids in sorted order
  (one per organ: 5 images). Diagnosis and design decisions use these only.
* **held** (held-out part): the other 8 images. They are scored rarely: once per idea that
  was kept on the development part, to check the decision.

The 14 test images (``../shared/data/monuseg_test``) are scored with the method frozen,
once per design change: ``--folder ../shared/data/monuseg_test --half all``.

Scores are those of ``tumls_qp.evaluation.monuseg.image_metrics`` (mask 2 unless told), means over
the images of a part. Timing as in the benchmark: one thread, the fastest of ``--repeats``
runs of ``segment_nuclei`` alone, wall and CPU time of the calling thread.

    python benchmarks/monuseg_split.py                      # dev part, the working tree's code
    python benchmarks/monuseg_split.py --half held          # held-out part
    python benchmarks/monuseg_split.py --half all --compare main --repeats 3
    python benchmarks/monuseg_split.py --folder ../shared/data/monuseg_test --half all --compare main

``--compare REV`` segments with the code of a git revision too (exported to a temporary
folder and run in its own process, one after the other in the same run) and prints both side
by side, for the dev part, the held-out part and all images. Reading the images and scoring
always use the working tree's code, so that two revisions differ by their segmentation only.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = ROOT.parent / "shared" / "data" / "monuseg_train"
METRICS = ("dice", "iou", "aji", "aji_challenge", "f1_object")
MASKS = ("mask1", "mask2", "mask3")


def split_halves(items: list) -> tuple[list[str], list[str]]:
    """(dev ids, held-out ids): dev is the first image id of each organ in sorted order."""
    first: dict[str, str] = {}
    for image_id, organ in sorted((it.image_id, it.organ) for it in items):
        first.setdefault(organ, image_id)
    dev = sorted(first.values())
    held = sorted(it.image_id for it in items if it.image_id not in set(dev))
    return dev, held


def _worker(inputs: list[str], out_dir: str, repeats: int) -> list[dict]:
    """Segment each input (``.npz`` with ``rgb`` and ``mpp``) with the tumls_qp on sys.path.

    Writes the three masks to ``out_dir/<input name>``; returns the timing of each input.
    """
    import time

    import cv2
    from threadpoolctl import threadpool_limits

    from tumls_qp.cells.nuclei import segment_nuclei

    # One thread for OpenCV and the BLAS/OpenMP pools, written here so that any revision's code can run.
    cv2.setNumThreads(1)
    timings = []
    with threadpool_limits(limits=1):
        for k, path in enumerate(inputs):
            with np.load(path) as data:
                rgb, mpp = data["rgb"], float(data["mpp"])
            if k == 0:
                segment_nuclei(rgb, mpp)  # warm-up
            wall = cpu = math.inf
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.thread_time()
                seg = segment_nuclei(rgb, mpp)
                wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.thread_time() - c0)
            np.savez_compressed(Path(out_dir) / Path(path).name, **{m: getattr(seg, m) for m in MASKS})
            timings.append({"input": Path(path).name, "seconds": wall, "cpu": cpu})
    return timings


def export_revision(rev: str, dest: Path) -> Path:
    """Export ``tumls_qp`` of a git revision into ``dest`` (created); returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "tumls_qp"],
                             check=True, capture_output=True).stdout
    tar_path = dest / "code.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest, filter="data")
    return dest


def segment_with(code_dir: Path | None, inputs: list[Path], out_dir: Path, repeats: int) -> dict[str, dict]:
    """Segment the inputs in a fresh process with ``code_dir`` (or the working tree) first on sys.path.

    Returns ``{input name: {"mask1", "mask2", "mask3", "seconds", "cpu"}}``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    listing = out_dir / "inputs.json"
    listing.write_text(json.dumps([str(p) for p in inputs]), encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(code_dir if code_dir is not None else ROOT)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(listing), str(out_dir),
           "--repeats", str(repeats)]
    proc = subprocess.run(cmd, env=env, cwd=str(code_dir or ROOT), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"segmentation worker failed:\n{proc.stderr}")
    results = {}
    for timing in json.loads(proc.stdout.strip().splitlines()[-1]):
        with np.load(out_dir / timing["input"]) as masks:
            results[timing["input"]] = {**{m: masks[m] for m in MASKS}, "seconds": timing["seconds"],
                                        "cpu": timing["cpu"]}
    return results


def compare_revisions(compare: str | None, inputs: list[Path], work: Path, repeats: int) -> dict[str, dict]:
    """``{code name: segment_with(...)}`` for the revision ``compare`` (if any), then the working tree."""
    runs = {}
    if compare:
        code = export_revision(compare, work / "code")
        runs[compare] = segment_with(code, inputs, work / "masks-rev", repeats)
    runs["working tree"] = segment_with(None, inputs, work / "masks-tree", repeats)
    return runs


def _mean(rows: list[dict], ids: list[str], mask: str, key: str) -> float:
    values = [r[mask][key] if key in r.get(mask, {}) else r[key] for r in rows if r["image_id"] in ids]
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _table(runs: dict[str, list[dict]], halves: dict[str, list[str]], mask: str) -> str:
    lines = ["| code | part | images | Dice | IoU | AJI | AJI (challenge) | F1 obj | s/image wall | s/image CPU |",
             "|---|---|---|---|---|---|---|---|---|---|"]
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
    parser.add_argument("--compare", metavar="REV", help="also segment with the code of this git revision")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--mask", default="mask2", choices=MASKS)
    parser.add_argument("--per-image", action="store_true")
    parser.add_argument("--json", metavar="PATH", help="write the per-image results as JSON")
    parser.add_argument("--worker", nargs=2, metavar=("INPUTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        inputs = json.loads(Path(args.worker[0]).read_text(encoding="utf-8"))
        print(json.dumps(_worker(inputs, args.worker[1], args.repeats)))
        return 0

    sys.path.insert(0, str(ROOT))
    from tumls_qp.evaluation.monuseg import image_metrics, list_monuseg, read_monuseg_image

    items = list_monuseg(args.folder)
    dev, held = split_halves(items)
    ids = {"dev": dev, "held": held, "all": dev + held}[args.half]
    halves = {"dev": dev, "held": held, "all": sorted(dev + held)} if args.half == "all" else {args.half: ids}
    chosen = [it for it in items if it.image_id in set(ids)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        truths, inputs = {}, []
        for item in chosen:
            rgb, truths[item.image_id], mpp = read_monuseg_image(item)
            inputs.append(work / f"{item.image_id}.npz")
            np.savez(inputs[-1], rgb=rgb, mpp=mpp)
        segmented = compare_revisions(args.compare, inputs, work, args.repeats)
        runs = {name: [{"image_id": it.image_id, "organ": it.organ,
                        "seconds": masks[f"{it.image_id}.npz"]["seconds"], "cpu": masks[f"{it.image_id}.npz"]["cpu"],
                        **{m: image_metrics(truths[it.image_id], masks[f"{it.image_id}.npz"][m]) for m in MASKS}}
                       for it in chosen]
                for name, masks in segmented.items()}
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
