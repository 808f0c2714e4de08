"""Server benchmark: QuPath script end to end, API latency under 8 clients while jobs run, and the fuzz pass.

1. End to end: ``groovy/tumls_analyze.groovy`` run by Groovy 4 against the QuPath stand-ins of
   ``tests/groovy/`` and a live ``tumls-qp serve`` on a loopback port, on the bundled
   CMU-1-Small-Region.svs with the demo's 32 µm tiles and the default autoencoder settings: seconds
   from the script's start to the objects being in the (stand-in) hierarchy, first on an empty
   server (the autoencoder trains), then again (cached embeddings are reused).
2. Latency: 8 clients at once each submit the bundled slide and poll their job every 0.5 s; one
   worker runs the jobs one after the other (the first trains, the others reuse its embeddings).
   p50/p95/max of the GET /jobs/{id} requests made while a job was running.
3. Fuzz: ``tests/test_server_fuzz.py`` with its per-request statistics.

    python benchmarks/server_bench.py --json server-bench.json

Needs the dev and server extras, Java 17 and the tools ``make test`` installs (Groovy 4, Gson).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from server_helpers import (  # noqa: E402
    DEMO_SLIDE,
    LiveServer,
    job_body,
    latency_while_running,
    percentile,
    run_clients,
)
from tumls_qp.outputs.qupath import path_to_file_uri  # noqa: E402
from tumls_qp.provenance import cpu_name  # noqa: E402




def _compile_harness(folder: Path) -> str:
    jars = sorted((REPO / ".tools").glob("node_modules/npm-groovy-lint/lib/java/groovy/lib/groovy-4*.jar"))
    groovy = os.environ.get("TUMLS_QP_GROOVY_JAR") or (str(jars[-1]) if jars else "")
    gson = os.environ.get("TUMLS_QP_GSON_JAR") or "/usr/share/java/gson.jar"
    if not (groovy and Path(gson).is_file() and shutil.which("javac")):
        sys.exit("needs javac, the Groovy 4 jar and Gson: run `make test` once (it installs them)")
    classpath = os.pathsep.join([groovy, gson])
    sources = [str(p) for p in (REPO / "tests" / "groovy").rglob("*.java")]
    subprocess.run(["javac", "-nowarn", "-d", str(folder), "-cp", classpath, *sources], check=True)
    return os.pathsep.join([str(folder), classpath])


def end_to_end(work: Path, parameters: dict) -> dict:
    classpath = _compile_harness(work / "classes")
    entry = {"name": DEMO_SLIDE.name, "uri": path_to_file_uri(DEMO_SLIDE), "width": 2220, "height": 2967,
             "pixel_size_um": 0.499}
    config = {"script": str(REPO / "groovy" / "tumls_analyze.groovy"), "project_file": str(work / "p.qpproj"),
              "entries": [entry], "runs": [0, 0], "interrupt": None}
    (work / "config.json").write_text(json.dumps(config))
    with LiveServer(work / "data-e2e", [DEMO_SLIDE.parent]) as server:
        env = {**os.environ, "TUMLS_QP_SERVER": server.url, "TUMLS_QP_PARAMETERS": json.dumps(parameters)}
        out = subprocess.run(["java", "-cp", classpath, "TumlsHarness", str(work / "config.json"),
                              str(work / "dump.json")], env=env, capture_output=True, text=True, check=True)
        dump = json.loads((work / "dump.json").read_text())
        with server.client() as http:
            jobs = http.get("/jobs").json()["jobs"][::-1]
    print(out.stdout)
    return {
        "parameters": parameters,
        "objects": len(dump["images"][0]["objects"]),
        "runs": [{"seconds_script_start_to_objects": round(r["seconds_to_objects"], 2),
                  "embedding_cache": j["result"]["embedding_cache"], "job_seconds": j["elapsed_s"],
                  "k": j["result"]["k"]}
                 for r, j in zip(dump["runs"], jobs)],
    }


def latency(work: Path, parameters: dict, clients: int = 8) -> dict:
    with LiveServer(work / "data-load", [DEMO_SLIDE.parent], workers=1) as server:
        bodies = [job_body(DEMO_SLIDE, image_name=f"client-{i}", parameters=parameters) for i in range(clients)]
        started = time.monotonic()
        result = run_clients(server.url, bodies, poll_interval=0.5, timeout=3600)
        wall = time.monotonic() - started
    states = [j.get("state") if isinstance(j, dict) else None for j in result["jobs"]]
    values = latency_while_running(result)
    posts = [s for _, s, method, _ in result["samples"] if method == "POST"]
    return {
        "clients": clients, "parameters": parameters, "states": states, "wall_seconds": round(wall, 1),
        "unique_jobs": len({j["id"] for j in result["jobs"] if isinstance(j, dict) and "id" in j}),
        "get_requests_while_running": len(values),
        "get_p50_ms": round(percentile(values, 50) * 1000, 1), "get_p95_ms": round(percentile(values, 95) * 1000, 1),
        "get_max_ms": round(max(values) * 1000, 1),
        "post_p50_ms": round(percentile(posts, 50) * 1000, 1), "post_max_ms": round(max(posts) * 1000, 1),
        "embedding_cache": [j["result"]["embedding_cache"] for j in result["jobs"] if isinstance(j, dict)
                            and j.get("result")],
    }


def fuzz(work: Path) -> dict:
    env = {**os.environ, "TUMLS_QP_BENCH_OUT": str(work / "fuzz")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_server_fuzz.py"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    summary = json.loads((work / "fuzz" / "fuzz_test.json").read_text())
    summary["pytest"] = out.stdout.strip().splitlines()[-1]
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--skip", nargs="*", default=[], choices=["e2e", "latency", "fuzz"])
    parser.add_argument("--load-epochs", type=int, default=20,
                        help="autoencoder epochs of the load test's jobs (default 20)")
    args = parser.parse_args()
    results: dict = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                                 "load_average_at_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "e2e" not in args.skip:
            results["end_to_end"] = end_to_end(work, {"tiles": {"tile_um": 32.0}, "embedding": {"device": "cpu"}})
        if "latency" not in args.skip:
            results["latency_8_clients"] = latency(work, {"seed": 1, "tiles": {"tile_um": 32.0}, "embedding": {
                "max_epochs": args.load_epochs, "device": "cpu"}})
        if "fuzz" not in args.skip:
            results["fuzz"] = fuzz(work)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
