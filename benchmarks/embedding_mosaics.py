"""Whole-pipeline tissue maps per embedding method, on slides assembled from labelled LC25000 tiles.

Two mosaic slides (``evaluation.mosaic.build_mosaic``): lung only (3 classes) and colon only
(2 classes), 4 x 4 regions of 3 x 3 tiles (224 px at 1 µm/px), the mosaic offset by half a tile
from the analysis grid. Each is analysed with ``tumls-qp analyze`` once per embedding method
(``--config`` sets ``embedding.method``; nuclei and the PDF are off, they do not change the map),
in its own process, and the tissue annotations of ``tissue.geojson`` are scored against the truth
(``score_tissue_map``: pixel ARI over the slide, boundary F-score, tissues found, coverage).

    python benchmarks/embedding_mosaics.py --workdir /tmp/emb-mosaics
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (the benchmarks' shared machine line and report output)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lc25000_224"
MOSAICS = {"lung": ("lung_aca", "lung_n", "lung_scc"), "colon": ("colon_aca", "colon_n")}
METHODS = "tumls-ae,contrastive,vade,handcrafted,textons"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the lc25000_224 folder")
    parser.add_argument("--methods", default=METHODS, help=f"comma-separated embedding methods (default {METHODS})")
    parser.add_argument("--tile-um", type=float, default=112.0,
                        help="analysis tile side in µm (default 112: half a mosaic cell, about 480 tiles)")
    parser.add_argument("--seed", type=int, default=0, help="the mosaics' layout and the analyses' seed")
    parser.add_argument("--threads", type=int, default=1, help="embedding.num_threads (default 1: a shared machine)")
    parser.add_argument("--workdir", help="where mosaics and runs go (default: a temporary folder)")
    parser.add_argument("--report", help="also write the Markdown output here")
    args = parser.parse_args()

    from tumls_qp.evaluation.mosaic import build_mosaic, read_truth, score_tissue_map
    from tumls_qp.outputs.geojson import read_geojson

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tumls-mosaics-"))
    work.mkdir(parents=True, exist_ok=True)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    load_start = os.getloadavg()
    started = time.perf_counter()
    rows = []
    for organ, classes in MOSAICS.items():
        slide = work / f"mosaic-{organ}.tif"
        if not slide.exists():
            build_mosaic(args.data, classes, slide, seed=args.seed)
        truth, _ = read_truth(slide)
        for method in methods:
            config = work / f"{method}.toml"
            config.write_text(f"seed = {args.seed}\n[embedding]\nmethod = \"{method}\"\ndevice = \"cpu\"\n"
                              f"num_threads = {args.threads}\n[nuclei]\nenabled = false\n"
                              "[output]\nreport = false\n")
            out = work / f"run-{organ}-{method}"
            print(f"[{time.strftime('%H:%M:%S')}] {organ}: {method}", file=sys.stderr, flush=True)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([str(Path(sys.executable).with_name("tumls-qp")), "analyze", str(slide), "--out", str(out),
                            "--no-cache", "--config", str(config), "--tile-um", f"{args.tile_um:g}", "-q"], check=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            run = out / slide.stem
            manifest = json.loads((run / "manifest.json").read_text())
            score = score_tissue_map(read_geojson(run / "tissue.geojson")["features"], truth)
            rows.append({"organ": organ, "classes": classes, "method": method, "score": score, "manifest": manifest,
                         "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)})
    load_end = os.getloadavg()
    total = time.perf_counter() - started

    command = ("python benchmarks/embedding_mosaics.py"
               + (f" --data {args.data}" if Path(args.data).resolve() != DEFAULT_DATA.resolve() else "")
               + (f" --methods {args.methods}" if args.methods != METHODS else "")
               + (f" --tile-um {args.tile_um:g}" if args.tile_um != 112.0 else "")
               + (f" --seed {args.seed}" if args.seed != 0 else "")
               + (f" --threads {args.threads}" if args.threads != 1 else "")
               + (f" --workdir {args.workdir}" if args.workdir else "")
               + (f" --report {args.report}" if args.report else ""))
    lines = [
        f"Command: `{command}`",
        "",
        f"{_common.machine_line(load_start, load_end)}, embedding.num_threads = {args.threads}, "
        f"Python {platform.python_version()}. Total {total / 60:.1f} min.",
        "",
        f"Mosaics: 4 x 4 regions of 3 x 3 LC25000 tiles (224 px, 1 µm/px), offset half a tile; analysed with "
        f"{args.tile_um:g} µm tiles, every other option the default (nuclei and the PDF off). Pixel ARI over the "
        "slide (uncovered pixels are a label of their own), boundary F-score within 56 µm.",
        "",
        "| mosaic | embedding | tissue tiles | k (votes; runner-up) | pixel ARI | boundary F | tissues / classes | "
        "coverage | train s | total s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, s = r["manifest"], r["score"]
        c = m["clusters"]
        k = _common.manifest_k(c)
        lines.append(
            f"| {r['organ']} ({len(r['classes'])} classes) | {r['method']} | {m['tiles']['kept']} | {k} | "
            f"{s.ari:.3f} | {s.boundary_f:.3f} | {s.n_tissues} / {s.n_classes} | {s.coverage:.2f} | "
            f"{m['timings_s'].get('train', 0):.0f} | {sum(m['timings_s'].values()):.0f} | "
            f"{m['environment']['peak_rss_mb']:.0f} |")
    return _common.emit_report(lines, args.report)


if __name__ == "__main__":
    sys.exit(main())
