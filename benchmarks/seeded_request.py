"""Seconds per seeded-clustering request (``POST /jobs/{id}/seeded``) through a live ``tumls-qp serve``.

Starts a server on a loopback port, analyses a slide (default: the bundled CMU-1-Small-Region.svs with
32 µm tiles), then sends the same seeds ``--requests`` times, as ``groovy/tumls_seeded.groovy`` does
(JSON body, gzip accepted, the whole answer read), and reports the client's wall time per request (median,
min, max) beside the server's own figure from ``X-TUMLS-QP-Summary``. Seeds: the centres of the best
``--seeds`` representatives of tissues 1 and 2 of the analysis, as two classes.

    python benchmarks/seeded_request.py [--slide SLIDE] [--tile-um 32] [--max-epochs 20] [--requests 10] [--json OUT]

Needs the server extra.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from server_helpers import DEMO_SLIDE, LiveServer, job_body, wait_job  # noqa: E402


def _centre(geometry: dict) -> list[float]:
    ring = geometry["coordinates"][0] if geometry["type"] == "Polygon" else geometry["coordinates"][0][0]
    xs, ys = [p[0] for p in ring[:-1]], [p[1] for p in ring[:-1]]
    return [sum(xs) / len(xs), sum(ys) / len(ys)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=DEMO_SLIDE)
    parser.add_argument("--tile-um", type=float, default=32.0)
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per class")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    slide = args.slide.resolve()
    parameters = {"tiles": {"tile_um": args.tile_um}, "embedding": {"max_epochs": args.max_epochs, "device": "cpu"},
                  "output": {"report": False}}
    with tempfile.TemporaryDirectory(prefix="tumls-seeded-bench-") as work, \
            LiveServer(Path(work) / "data", [slide.parent]) as server, \
            httpx.Client(base_url=server.url, timeout=120) as http:
        t0 = time.perf_counter()
        job = http.post("/jobs", json=job_body(slide, parameters=parameters)).json()
        done = wait_job(http, job["id"], timeout=3600)
        if done["state"] != "succeeded":
            sys.exit(f"the analysis failed: {done['error']}")
        analysis_s = time.perf_counter() - t0
        features = http.get(f"/jobs/{job['id']}/geojson").json()["features"]
        seeds = []
        for tissue in (1, 2):
            for rank in range(1, args.seeds + 1):
                name = f"Tissue {tissue} representative {rank}"
                feature = next(f for f in features if f["properties"].get("name") == name)
                seeds.append({"class": f"Seed tissue {tissue}",
                              "geometry": {"type": "Point", "coordinates": _centre(feature["geometry"])}})
        wall, server_s, sizes = [], [], []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            response = http.post(f"/jobs/{job['id']}/seeded", json={"seeds": seeds},
                                 headers={"Accept-Encoding": "gzip"})
            answer = response.json()
            wall.append(time.perf_counter() - t0)
            if response.status_code != 200:
                sys.exit(f"the request failed: {response.status_code} {response.text}")
            server_s.append(json.loads(response.headers["x-tumls-qp-summary"])["seconds"])
            sizes.append(len(response.content))
        tiles = sum(1 for f in answer["features"] if f["properties"]["objectType"] == "tile")
    result = {
        "slide": slide.name, "tile_um": args.tile_um, "tiles": tiles, "seeds": len(seeds), "requests": args.requests,
        "analysis_s": round(analysis_s, 1),
        "request_s": {"median": round(statistics.median(wall), 3), "min": round(min(wall), 3),
                      "max": round(max(wall), 3)},
        "server_s_median": round(statistics.median(server_s), 3),
        "response_kb_decoded": round(statistics.median(sizes) / 1024, 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
