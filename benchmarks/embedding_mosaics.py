"""Whole-pipeline tissue maps per embedding method, on slides assembled from labelled LC25000 tiles.

Two mosaic slides (``evaluation.mosaic.build_mosaic``): lung only (3 classes) and colon only
(2 classes); ``--mosaics`` also offers ``5-class``, both organs on one slide. Each is 4 x 4
regions of 3 x 3 tiles (224 px at 1 µm/px), offset by half a tile from the analysis grid, and
analysed with ``tumls-qp analyze`` once per embedding method (``--config`` sets
``embedding.method``; nuclei and the PDF are off, they do not change the map), in its own
process; the the tissue annotations of ``tissue.geojson`` are scored against the truth
(``score_tissue_map``: pixel ARI over the slide, boundary F-score, tissues found, coverage).

``--subset design`` builds the mosaics from the design half of the tiles only (the half on which
``benchmarks/embeddings.py --subset design`` chooses settings), as 3 x 4 regions: the design half
holds 61 colon tiles per class, too few for 8 regions of 9 tiles each.

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
import numpy as np  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lc25000_224"
MOSAICS = {"lung": ("lung_aca", "lung_n", "lung_scc"), "colon": ("colon_aca", "colon_n"),
           "5-class": ("colon_aca", "colon_n", "lung_aca", "lung_n", "lung_scc")}
METHODS = "tumls-ae,contrastive,vade,handcrafted,textons"


def design_folder(data: Path, folder: Path) -> Path:
    """A folder of links to the design half of the tiles, with their rows of ``labels.csv``."""
    import csv

    from embeddings import design_half

    with open(data / "labels.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    keep = design_half(np.array([r["label"] for r in rows]), 0)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row, kept in zip(rows, keep):
            if kept:
                writer.writerow(row)
                link = folder / row["file"]
                if not link.exists():
                    link.symlink_to((data / row["file"]).resolve())
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the lc25000_224 folder")
    parser.add_argument("--methods", default=METHODS, help=f"comma-separated embedding methods (default {METHODS})")
    parser.add_argument("--tile-um", type=float, default=112.0,
                        help="analysis tile side in µm (default 112: half a mosaic cell, about 480 tiles)")
    parser.add_argument("--seed", type=int, default=0, help="the mosaics' layout and the analyses' seed")
    parser.add_argument("--mosaics", default="lung,colon",
                        help=f"comma-separated mosaics among {', '.join(MOSAICS)} (default lung,colon; 5-class mixes "
                             "both organs)")
    parser.add_argument("--subset", choices=["all", "design"], default="all",
                        help="tiles from all 617 (default, 4 x 4 regions) or the design half only (3 x 4 regions)")
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
    data, regions = Path(args.data), (4, 4)
    if args.subset == "design":
        data, regions = design_folder(data, work / "design-tiles"), (3, 4)
    for organ in [m.strip() for m in args.mosaics.split(",") if m.strip()]:
        if organ not in MOSAICS:
            parser.error(f"--mosaics: unknown mosaic {organ!r}; choose among {', '.join(MOSAICS)}")
        classes = MOSAICS[organ]
        slide = work / f"mosaic-{organ}.tif"
        if not slide.exists():
            build_mosaic(data, classes, slide, regions=regions, seed=args.seed)
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
               + (f" --mosaics {args.mosaics}" if args.mosaics != "lung,colon" else "")
               + (f" --subset {args.subset}" if args.subset != "all" else "")
               + (f" --threads {args.threads}" if args.threads != 1 else "")
               + (f" --workdir {args.workdir}" if args.workdir else "")
               + (f" --report {args.report}" if args.report else ""))
    lines = [
        f"Command: `{command}`",
        "",
        f"{_common.machine_line(load_start, load_end)}, embedding.num_threads = {args.threads}, "
        f"Python {platform.python_version()}. Total {total / 60:.1f} min.",
        "",
        f"Mosaics: {regions[0]} x {regions[1]} regions of 3 x 3 LC25000 tiles (224 px, 1 µm/px)"
        f"{' from the design half' if args.subset == 'design' else ''}, offset half a tile; analysed with "
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
