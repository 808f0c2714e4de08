"""Tissue regions against known truth, and the cost of border refinement on the real slides.

1. Mosaics (``tumls_qp.evaluation.mosaic.build_mosaic``) assembled from the shared LC25000 tiles:
   lung-only (3 classes) and colon-only (2 classes), 4 x 4 regions of 3 x 3 tiles, the analysis
   grid offset from the mosaic by half a tile (every region border runs through the middle of
   a row or column of tiles). Each mosaic is analysed with the defaults (``--tile-um`` = one
   mosaic tile) once per variant, the embeddings shared through the cache, and its
   ``tissue.geojson`` is scored against the truth (pixel ARI, boundary F-score within a quarter
   tile, tissues found, coverage):

   - ``blocks / kmeans``: whole tiles, k-means (TUMLS as published; the tool before refinement);
   - ``felzenszwalb / kmeans``: the default;
   - ``blocks / graph`` and ``felzenszwalb / graph``: graph clustering instead of k-means;
   - the k-means pair again with k known (``clusters.k`` = the classes), to tell the borders
     apart from the choice of k.

   The lung mosaic of seed 0 is the design set (region parameters were chosen on it); the
   other seeds and colon check them.
2. ``--sweep``: the region parameters (scales, prior weight) on the design mosaic only.
3. The demo slide (CMU-1-Small-Region, 32 µm tiles) and the TCGA slide (given 1 µm/px, 128 µm
   tiles): a full ``analyze`` with the defaults (nuclei and report included), then again with
   whole tiles from the cache: tissues, region area per tissue against whole tiles, the share of
   the tiles' area the refinement changed, and the seconds the regions stage adds.

Prints Markdown (``--report`` also writes it).

    python benchmarks/regions.py --report /tmp/regions_output.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tumls_qp.config import PipelineConfig, replace_in
from tumls_qp.evaluation.mosaic import build_mosaic, read_truth, score_tissue_map
from tumls_qp.outputs.run_folder import read_run
from tumls_qp.pipeline import analyze
from tumls_qp.provenance import cpu_name

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MOSAICS = [("lung", ("lung_aca", "lung_n", "lung_scc"), seed) for seed in (0, 1, 2)] + \
          [("colon", ("colon_aca", "colon_n"), seed) for seed in (0, 1, 2)]
VARIANTS = [("blocks", "kmeans", False), ("felzenszwalb", "kmeans", False), ("blocks", "graph", False),
            ("felzenszwalb", "graph", False), ("blocks", "kmeans", True), ("felzenszwalb", "kmeans", True)]
SWEEP = {"regions.scales": [[0.25, 2.0, 8.0], [0.5, 4.0, 16.0], [1.0, 8.0, 32.0], [0.5, 8.0], [0.5]],
         "regions.prior_weight": [0.25, 0.5, 1.0, 2.0]}
REAL = [("CMU-1-Small-Region.svs", {"tiles.tile_um": 32.0}),
        ("tcga-cr-7395-01a-01-ts1.svs", {"slide.mpp": 1.0, "tiles.tile_um": 128.0})]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _quiet(config: PipelineConfig) -> PipelineConfig:
    """What the tissue map needs only: no nuclei, no report, no colour layer."""
    return replace_in(config, **{"nuclei.enabled": False, "output.report": False,
                                 "output.embedding_colours": "none"})


def mosaic_rows(work: Path, cache: Path, mosaics: list, sweep: bool) -> tuple[list[str], list[str]]:
    rows, sweep_rows = [], []
    for organ, classes, seed in mosaics:
        mosaic = build_mosaic(SHARED / "lc25000_224", classes, work / f"{organ}{seed}.tif", seed=seed)
        truth, _ = read_truth(mosaic.slide)
        base = _quiet(replace_in(PipelineConfig(), **{"tiles.tile_um": mosaic.cell_um, "embedding.device": "cpu"}))
        role = "design" if (organ, seed) == ("lung", 0) else "check"
        variants = [({"regions.method": r, "clusters.method": c, "clusters.k": len(classes) if known else None},
                     f"{r} / {c}" + (", k known" if known else "")) for r, c, known in VARIANTS]
        main_names = {name for _, name in variants}
        if sweep and role == "design":
            variants += [({key: value}, f"{key} = {value}") for key, values in SWEEP.items() for value in values]
        for changes, name in variants:
            config = replace_in(base, **changes)
            out = work / "runs" / f"{organ}{seed}" / name.replace(" ", "").replace("/", "_").replace("=", "-")
            log(f"{organ} seed {seed}: {name}")
            [result] = analyze([mosaic.slide], out, config, cache_dir=cache)
            run = read_run(result.run_dir)
            score = score_tissue_map(run.geojson(), truth)
            m = result.manifest
            line = (f"| {organ} | {seed} ({role}) | {name} | {score.ari:.3f} | {score.boundary_f:.3f} | "
                    f"{score.n_tissues} / {score.n_classes} | {m.clusters.k} ({m.clusters.method}) | "
                    f"{score.coverage:.3f} | {m.timings_s.get('cluster', 0):.2f} | {m.timings_s.get('regions', 0):.2f} |")
            (rows if name in main_names else sweep_rows).append(line)
            print(line, flush=True)
    return rows, sweep_rows


def real_rows(work: Path, cache: Path) -> list[str]:
    rows = []
    for name, options in REAL:
        slide = SHARED / "wsi" / name
        refined = replace_in(PipelineConfig(), **{"embedding.device": "cpu", **options})
        log(f"{name}: full analyze with the defaults")
        start = time.perf_counter()
        [a] = analyze([slide], work / "real" / "refined", refined, cache_dir=cache)
        total = time.perf_counter() - start
        log(f"{name}: whole tiles (cached embeddings)")
        [b] = analyze([slide], work / "real" / "blocks", _quiet(replace_in(refined, **{"regions.method": "blocks"})),
                      cache_dir=cache)
        ma, mb = a.manifest, b.manifest
        refined_area = sum(ma.regions.area_um2.values())
        block_area = sum(mb.regions.area_um2.values())
        per_tissue = ", ".join(f"{t}: {mb.regions.area_um2[t] / 1e6:.3f} → {ma.regions.area_um2[t] / 1e6:.3f}"
                               for t in sorted(ma.regions.area_um2))
        regions_s = ma.timings_s.get("regions", 0.0)
        line = (f"| {name} | {ma.tiles.kept} | {ma.clusters.k} | {sum(v > 0 for v in ma.regions.area_um2.values())} | "
                f"{per_tissue} | {100 * (refined_area / block_area - 1):+.1f} % | "
                f"{100 * ma.regions.changed_fraction:.1f} % | {regions_s:.2f} | {total:.1f} | "
                f"{100 * regions_s / max(total - regions_s, 1e-9):.1f} % | "
                + ", ".join(f"{k} {v:.1f}" for k, v in ma.timings_s.items()) + " |")
        rows.append(line)
        print(line, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", type=Path, help="also write the Markdown here")
    parser.add_argument("--sweep", action="store_true", help="sweep the region parameters on the design mosaic")
    parser.add_argument("--no-real", action="store_true", help="skip the demo and TCGA slides")
    parser.add_argument("--mosaics", default="all", help="'all', or e.g. 'lung0,colon1'")
    args = parser.parse_args(argv)
    if not (SHARED / "lc25000_224").is_dir():
        print(f"the shared data is missing: {SHARED}", file=sys.stderr)
        return 2
    mosaics = MOSAICS if args.mosaics == "all" else [m for m in MOSAICS if f"{m[0]}{m[2]}" in args.mosaics.split(",")]
    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tumls-regions-") as tmp:
        work, cache = Path(tmp), Path(tmp) / "cache"
        rows, sweep_rows = mosaic_rows(work, cache, mosaics, args.sweep)
        real = [] if args.no_real else real_rows(work, cache)
    load_after = os.getloadavg()
    default = PipelineConfig()
    lines = [
        f"Command: `python benchmarks/regions.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; {time.perf_counter() - started:.0f} s in all.",
        f"Defaults: embedding `{getattr(default.embedding, 'method', 'tumls-ae')}`, clusters `{default.clusters.method}`, "
        f"regions `{default.regions.method}`, scales {list(default.regions.scales)}, prior weight "
        f"{default.regions.prior_weight}.",
        "",
        "| mosaic | seed | regions / clustering | pixel ARI | boundary F | tissues / classes | k (method) | "
        "coverage | cluster s | regions s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    if sweep_rows:
        lines += ["", "Sweep on the design mosaic (lung, seed 0; felzenszwalb / kmeans, one parameter changed):", "",
                  "| mosaic | seed | change | pixel ARI | boundary F | tissues / classes | k (method) | coverage | "
                  "cluster s | regions s |", "|---|---|---|---|---|---|---|---|---|---|", *sweep_rows]
    if real:
        lines += ["", "| slide | tissue tiles | k | tissues with a region | area per tissue, whole tiles → regions (mm²) | "
                  "total area change | tiles' area changed | regions s | analyze s | regions / rest | seconds per "
                  "stage |", "|---|---|---|---|---|---|---|---|---|---|---|", *real]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.report:
        args.report.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
