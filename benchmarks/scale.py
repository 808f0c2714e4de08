"""Throughput of a cohort of small real slides: in-process vs Dask with 1 and 2 workers, in one run.

The slides are mosaics of real H&E tiles (LC25000, ``../shared/data/lc25000_224``) built with
``tumls_qp.evaluation.mosaic.build_mosaic``: each has 3 of the 5 classes in 3 x 3 regions of 3 x 3
tiles of 224 px at 0.5 µm/px (1792 x 1792 px after the offset cut), analysed with tiles of half a
cell (56 µm, about 250 tissue tiles per slide), the autoencoder capped at ``--epochs`` (20 by
default; early stopping as usual) and otherwise the default configuration (nuclei, PDF report),
without the embedding cache.

Each mode runs the real command line (``tumls-qp analyze SLIDE... --out DIR --no-cache -q``) in a
fresh process, so its wall time includes starting Python and, for Dask, starting and stopping the
local cluster; starting and stopping a cluster alone is timed too. Then the server
(``tumls-qp serve``) gets the same slides as 8 jobs submitted at once over HTTP, run by its own
2 worker processes and then by a local 2-worker Dask cluster (``--scheduler``). The load average is printed
before and after every mode (the machine may be shared). Everything the report needs is printed:

    python benchmarks/scale.py                 # 8 slides
    python benchmarks/scale.py --slides 4      # fewer, for a quick look
    python benchmarks/scale.py --no-server     # without the two server runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLASSES = ("colon_aca", "colon_n", "lung_aca", "lung_n", "lung_scc")
STAGES = ("tiles", "train", "embed", "cluster", "nuclei", "outputs")


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def _slides(data: Path, folder: Path, n: int) -> tuple[list[Path], float]:
    from tumls_qp.evaluation.mosaic import build_mosaic

    rng = np.random.default_rng(0)
    slides, cell_um = [], 0.0
    for i in range(n):
        classes = sorted(rng.choice(CLASSES, size=3, replace=False).tolist())
        mosaic = build_mosaic(data / "lc25000_224", classes, folder / f"mosaic{i}.tif", regions=(3, 3),
                              region_cells=3, mpp=0.5, seed=i)
        slides.append(mosaic.slide)
        cell_um = mosaic.cell_um
    return slides, cell_um


def _run(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def _cluster_start_stop(workers: int) -> float:
    """Seconds to start a local cluster of ``workers`` processes, connect to it and stop it (as --workers does)."""
    code = f"""
import time, distributed
if __name__ == "__main__":
    start = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers={workers}, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None)
    client = distributed.Client(cluster)
    client.close()
    cluster.close()
    print(time.perf_counter() - start)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"starting a local cluster failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _server_run(tumls: str, slides: list[Path], folder: Path, config: Path, engine: list[str]) -> tuple[float, float,
                                                                                                      list[dict]]:
    """``tumls-qp serve ENGINE`` on a free port; 8 jobs submitted at once over HTTP. Returns the seconds from the
    command to a healthy server, from the first submission to the last job's end, and the jobs' manifests."""
    import re

    import httpx

    from tumls_qp.outputs.qupath import path_to_file_uri
    from tumls_qp.slide import open_slide

    data = folder / "data"
    command = [tumls, "serve", "--port", "0", "--data-dir", str(data), "--root", str(slides[0].parent),
               "--config", str(config), *engine]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                url = found.group(1)
                break
        if not url:
            sys.exit(f"{' '.join(command)} did not start:\n{proc.stdout.read()[-3000:]}")
        with httpx.Client(base_url=url, timeout=30) as http:
            while http.get("/health").json()["workers_alive"] < 1:
                time.sleep(0.2)
            ready = time.perf_counter() - start
            submitted = time.perf_counter()
            ids = []
            for slide in slides:
                with open_slide(slide) as s:
                    (width, height), mpp = s.dimensions, s.mpp
                body = {"uris": [path_to_file_uri(slide)], "width": width, "height": height, "pixel_size_um": mpp,
                        "image_name": slide.name, "server_type": "OpenslideImageServer", "parameters": {}}
                ids.append(http.post("/jobs", json=body).json()["id"])
            jobs = []
            while len(jobs) < len(ids):
                jobs = [j for j in (http.get(f"/jobs/{i}").json() for i in ids)
                        if j["state"] in ("succeeded", "failed", "cancelled")]
                time.sleep(0.5)
            seconds = time.perf_counter() - submitted
        failed = [j for j in jobs if j["state"] != "succeeded"]
        if failed:
            sys.exit(f"{' '.join(command)}: {len(failed)} job(s) did not succeed: {failed[0].get('error')}")
        return ready, seconds, [json.loads((Path(j["result"]["run_dir"]) / "manifest.json").read_text())
                                for j in jobs]
    finally:
        proc.terminate()
        proc.wait(60)


def _manifests(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/manifest.json"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared data folder (default ../shared/data)")
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20, help="embedding.max_epochs (default 20)")
    parser.add_argument("--no-server", action="store_true", help="leave out the two server runs")
    args = parser.parse_args()

    tumls = str(Path(sys.executable).with_name("tumls-qp"))
    print(f"python benchmarks/scale.py {' '.join(sys.argv[1:])}")
    print(f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
          f"Python {platform.python_version()}, {platform.platform()}")
    import distributed
    import torch

    print(f"torch {torch.__version__}, distributed {distributed.__version__}; load average (1/5/15 min) {_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        slides, cell_um = _slides(args.data, folder, args.slides)
        tile_um = cell_um / 2
        slide_mb = [s.stat().st_size / 2**20 for s in slides]
        from tumls_qp.config import PipelineConfig, dump_config, replace_in

        config = folder / "scale.toml"
        config.write_text(dump_config(replace_in(PipelineConfig(), **{"tiles.tile_um": tile_um,
                                                                       "embedding.max_epochs": args.epochs})))
        print(f"{len(slides)} mosaic slides of LC25000 tiles, 1792 x 1792 px at 0.5 µm/px; tiles.tile_um = {tile_um:g}, "
              f"embedding.max_epochs = {args.epochs}, other options at their defaults\n")
        common = [str(s) for s in slides] + ["--config", str(config), "--no-cache", "-q"]
        modes = [("in-process", []), ("--workers 1", ["--workers", "1"]), ("--workers 2", ["--workers", "2"])]
        rows, manifests = [], {}
        for label, extra in modes:
            out = folder / label.replace(" ", "").replace("-", "")
            before = _load()
            seconds = _run([tumls, "analyze", *common, "--out", str(out), *extra])
            rows.append((label, seconds, before, _load()))
            manifests[label] = _manifests(out)
            if label == "in-process":
                sizes = [sum(f.stat().st_size for f in run.rglob("*") if f.is_file()) / 2**20
                         for run in out.iterdir() if run.is_dir()]
            assert len(manifests[label]) == len(slides), f"{label}: {len(manifests[label])} run folders"
        startup = {n: _cluster_start_stop(n) for n in (1, 2)}
        servers = []
        if not args.no_server:
            import distributed

            before = _load()
            ready, seconds, ms = _server_run(tumls, slides, folder / "server-local", config, ["--workers", "2"])
            servers.append(("serve --workers 2 (its own worker processes)", ready, seconds, before, _load(), ms))
            with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                          dashboard_address=None) as cluster:
                before = _load()
                ready, seconds, ms = _server_run(tumls, slides, folder / "server-dask", config,
                                                 ["--scheduler", cluster.scheduler_address])
                servers.append(("serve --scheduler (a 2-worker Dask cluster)", ready, seconds, before, _load(), ms))

    n = len(slides)
    base = rows[0][1]
    print("| mode | wall s | slides/min | vs in-process | wall s per slide | Dask overhead per slide, s | load before | "
          "load after |")
    print("|---|---|---|---|---|---|---|---|")
    for label, seconds, before, after in rows:
        overhead = "-" if label == "in-process" else f"{(seconds - base) / n:+.2f}"
        print(f"| {label} | {seconds:.1f} | {n / seconds * 60:.2f} | {base / seconds:.2f}x | {seconds / n:.2f} | "
              f"{overhead} | {before} | {after} |")
    print(f"\nstarting and stopping a local cluster alone: {startup[1]:.1f} s (1 worker), {startup[2]:.1f} s (2 workers)")
    w1 = rows[1][1]
    print(f"--workers 1 minus in-process minus cluster start/stop, per slide: {(w1 - base - startup[1]) / n:+.2f} s "
          "(scheduling, moving results, the workers' own imports)")

    if servers:
        print(f"\nThe server, {n} jobs submitted at once over HTTP (from the first submission to the last job's end; "
              "the server's embedding cache is on, every job a miss):")
        print("| server | ready after, s | wall s | slides/min | wall s per slide | vs --workers 2 | Dask workers used | "
              "load before | load after |")
        print("|---|---|---|---|---|---|---|---|---|")
        w2 = rows[2][1]
        for label, ready, seconds, before, after, ms in servers:
            used = len({m["engine"].get("worker") for m in ms if m["engine"]["engine"] == "dask"})
            print(f"| {label} | {ready:.1f} | {seconds:.1f} | {n / seconds * 60:.2f} | {seconds / n:.2f} | "
                  f"{w2 / seconds:.2f}x | {used or '-'} | {before} | {after} |")
        if len(servers) == 2:
            print(f"serve --scheduler minus serve --workers 2, per slide: {(servers[1][2] - servers[0][2]) / n:+.2f} s")

    print("\nPer slide, from the run folders' manifests (seconds, mean over slides; in-process run):")
    local = manifests["in-process"]
    print("| " + " | ".join(STAGES) + " | sum | tissue tiles | epochs | k | nuclei |")
    print("|" + "---|" * (len(STAGES) + 5))
    means = {s: np.mean([m["timings_s"].get(s, 0.0) for m in local]) for s in STAGES}
    print("| " + " | ".join(f"{means[s]:.2f}" for s in STAGES) + f" | {sum(means.values()):.2f} | "
          f"{np.mean([m['tiles']['kept'] for m in local]):.0f} | {np.mean([m['embedding']['epochs'] for m in local]):.0f} "
          f"| {np.mean([m['clusters']['k'] for m in local]):.1f} | {np.mean([m['nuclei']['nuclei'] for m in local]):.0f} |")
    for label in ("--workers 1", "--workers 2"):
        ms = manifests[label]
        workers = sorted({m["engine"]["worker"] for m in ms})
        compute = np.mean([sum(m["timings_s"].values()) for m in ms])
        print(f"{label}: {len(workers)} worker(s) wrote the run folders; mean per-slide stage sum {compute:.2f} s; "
              f"peak RSS per worker process {max(m['environment']['peak_rss_mb'] for m in ms):.0f} MB")
    print(f"in-process peak RSS {max(m['environment']['peak_rss_mb'] for m in local):.0f} MB")
    print(f"run folder size: {np.mean(sizes):.1f} MB per slide (mean); the slide files: {np.mean(slide_mb):.1f} MB")
    print(f"\nload average at the end: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
