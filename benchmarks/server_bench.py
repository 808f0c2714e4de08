"""Server benchmark: QuPath script end to end, 12 clients for 4 minutes, the fuzz pass, kill -9, a full disk.

1. End to end (``e2e``): ``groovy/tumls_analyze.groovy`` run by Groovy 4 against the QuPath stand-ins of
   ``tests/groovy/`` and a live ``tumls-qp serve`` on a loopback port, on the bundled
   CMU-1-Small-Region.svs with the demo's 32 µm tiles and the default autoencoder settings: seconds
   from the script's start to the objects being in the (stand-in) hierarchy, first on an empty
   server (the autoencoder trains), then again (cached embeddings are reused).
2. Load (``load``): ``--clients`` clients (12) for ``--minutes`` minutes (4): each submits the bundled
   slide (32 µm tiles, at most ``--load-epochs`` epochs), polls its job every 0.5 s until it ends,
   downloads its GeoJSON, and submits again; every 5 s of polling it also lists the jobs and submits
   one more job that it cancels at once (``DELETE``), so that submissions are timed while jobs run.
   One worker runs the jobs. p50/p95/max per kind of request made while a job was running; at the
   end, jobs still queued or running are cancelled, and every job must be accounted for.
3. Fuzz (``fuzz``): ``tests/test_server_fuzz.py`` with its per-request statistics.
4. kill -9 (``kill``): of the server while a job trains (its worker must end; after a restart the job
   runs again and succeeds), and of a worker while a job trains (the job fails saying so; a fresh
   worker starts).
5. Full disk (``disk``): the data folder on a 20 MB tmpfs (needs root), filled to 300 KB free, then
   to 0 B free, while jobs, prototypes and dictionaries are asked for; then freed again.

The machine's load average (1, 5, 15 minutes) is printed before and after each part: the latency
figures mean little without it.

    python benchmarks/server_bench.py --skip e2e --json server-bench.json

Needs the dev and server extras; ``e2e`` also Java 17 and the tools ``make test`` installs (Groovy 4,
Gson); ``disk`` root (to mount the tmpfs).
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
    SmallFilesystem,
    assert_processes_gone,
    disk_full_run,
    job_body,
    percentile,
    wait_for,
    wait_job,
)
from tumls_qp.outputs.qupath import path_to_file_uri  # noqa: E402
from tumls_qp.provenance import cpu_name  # noqa: E402


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


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


def load(work: Path, parameters: dict, clients: int, minutes: float) -> dict:
    """``clients`` clients submitting, polling and downloading for ``minutes`` minutes against one worker."""
    import threading

    import httpx

    samples: list[tuple[float, float, str, int]] = []  # (start, seconds, request, status)
    submitted: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + minutes * 60

    def timed(http: httpx.Client, label: str, path: str, **kwargs) -> httpx.Response:
        t0 = time.monotonic()
        response = http.request(label.split()[0], path, **kwargs)
        with lock:
            samples.append((t0, time.monotonic() - t0, label, response.status_code))
        return response

    def client(i: int, url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            n = 0
            while time.monotonic() < deadline:
                body = job_body(DEMO_SLIDE, image_name=f"client-{i}-{n}", parameters=parameters)
                response = timed(http, "POST /jobs", "/jobs", json=body)
                n += 1
                if response.status_code != 202:
                    time.sleep(1.0)
                    continue
                job_id = response.json()["id"]
                with lock:
                    submitted.append(job_id)
                polls = 0
                while time.monotonic() < deadline:
                    state = timed(http, "GET /jobs/{id}", f"/jobs/{job_id}").json()["state"]
                    if state == "succeeded":
                        timed(http, "GET /jobs/{id}/geojson", f"/jobs/{job_id}/geojson",
                              headers={"Accept-Encoding": "gzip"})
                    if state in ("succeeded", "failed", "cancelled"):
                        break
                    polls += 1
                    if polls % 10 == 0:  # every 5 s: the job list, and a submission taken back at once
                        timed(http, "GET /jobs", "/jobs")
                        extra = timed(http, "POST /jobs", "/jobs", json={**body, "image_name": f"extra-{i}-{polls}"})
                        if extra.status_code == 202:
                            with lock:
                                submitted.append(extra.json()["id"])
                            timed(http, "DELETE /jobs/{id}", f"/jobs/{extra.json()['id']}")
                    time.sleep(0.5)

    load_before = _load_average()
    with LiveServer(work / "data-load", [DEMO_SLIDE.parent], workers=1) as server:
        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(i, server.url)) for i in range(clients)]
        for thread in threads:
            thread.start()
        running_seen: list[float] = []
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while any(t.is_alive() for t in threads):  # when was a job running (one watcher, 1 s apart)?
                if http.get("/jobs", params={"state": "running", "limit": 1}).json()["jobs"]:
                    running_seen.append(time.monotonic())
                time.sleep(1.0)
            for thread in threads:
                thread.join()
            wall = time.monotonic() - started
            leftover = [j["id"] for state in ("queued", "running")
                        for j in http.get("/jobs", params={"state": state, "limit": 1000}).json()["jobs"]]
            cancels = [http.delete(f"/jobs/{job_id}").status_code for job_id in leftover]
            jobs = http.get("/jobs", params={"limit": 1000}).json()["jobs"]
    states = {}
    for job in jobs:
        states[job["state"]] = states.get(job["state"], 0) + 1
    first, last = (min(running_seen), max(running_seen)) if running_seen else (0.0, 0.0)
    during = [(seconds, label) for t, seconds, label, _ in samples if first <= t <= last + 1.0]

    def stats(labels: tuple[str, ...]) -> dict:
        values = [seconds for seconds, label in during if label in labels]
        if not values:
            return {"requests": 0}
        return {"requests": len(values), "p50_ms": round(percentile(values, 50) * 1000, 1),
                "p95_ms": round(percentile(values, 95) * 1000, 1), "max_ms": round(max(values) * 1000, 1)}

    statuses: dict[str, int] = {}
    for _, _, label, status in samples:
        statuses[f"{label} {status}"] = statuses.get(f"{label} {status}", 0) + 1
    kinds = ("GET /jobs/{id}", "GET /jobs/{id}/geojson", "GET /jobs", "POST /jobs", "DELETE /jobs/{id}")
    return {
        "clients": clients, "minutes": minutes, "parameters": parameters, "wall_seconds": round(wall, 1),
        "load_average_before": load_before, "load_average_after": _load_average(),
        "requests": len(samples), "statuses": statuses,
        "while_jobs_ran": {"seconds": round(last - first, 1), "GET (all)": stats(kinds[:3]),
                           **{kind: stats((kind,)) for kind in kinds}},
        "jobs_submitted": len(submitted), "jobs_listed": len(jobs), "final_states": states,
        "queued_or_running_at_the_end_cancelled": len(leftover), "cancel_statuses": sorted(set(cancels)),
        "every_job_accounted_for": sorted(submitted) == sorted(j["id"] for j in jobs),
        "server_errors": sum(n for key, n in statuses.items() if int(key.rsplit(" ", 1)[1]) >= 500),
    }


def kill(work: Path, parameters: dict) -> dict:
    """kill -9 of the server, then of a worker, each while a job trains."""
    long_job = {**parameters, "seed": 7, "embedding": {**parameters["embedding"], "max_epochs": 500, "patience": 500}}
    data = work / "data-kill"
    out: dict = {"load_average_before": _load_average()}
    server = LiveServer(data, [DEMO_SLIDE.parent]).start()
    try:
        with server.client() as http:
            job = http.post("/jobs", json=job_body(DEMO_SLIDE, parameters=long_job)).json()["id"]
            wait_for(lambda: http.get(f"/jobs/{job}").json()["stage"] == "train", 300, "training")
        workers = server.worker_pids()
        t0 = time.monotonic()
        server.kill()
        assert_processes_gone(workers, timeout=30)
        out["server"] = {"worker_gone_after_s": round(time.monotonic() - t0, 2)}
    finally:
        server.stop()
    t0 = time.monotonic()
    with LiveServer(data, [DEMO_SLIDE.parent]) as server, server.client() as http:
        out["server"]["restart_to_healthy_s"] = round(time.monotonic() - t0, 2)
        short = {**parameters, "seed": 7}
        # The interrupted job runs again from the queue (attempt 2); bounded by its 500 epochs, so it is
        # cancelled once it runs again, and a job of the same slide then succeeds.
        status = wait_for(lambda: (s := http.get(f"/jobs/{job}").json())["state"] == "running" and s, 120,
                          "the interrupted job to run again")
        out["server"]["requeued_attempt"] = status["attempt"]
        out["server"]["requeued_running_after_restart_s"] = round(time.monotonic() - t0, 2)
        http.delete(f"/jobs/{job}")
        nxt = http.post("/jobs", json=job_body(DEMO_SLIDE, parameters=short)).json()["id"]
        out["server"]["next_job"] = wait_job(http, nxt, timeout=600)["state"]
        # kill -9 of the worker while it trains.
        job = http.post("/jobs", json=job_body(DEMO_SLIDE, parameters={**long_job, "seed": 8})).json()["id"]
        wait_for(lambda: http.get(f"/jobs/{job}").json()["stage"] == "train", 300, "training")
        [pid] = server.worker_pids()
        t0 = time.monotonic()
        os.kill(pid, 9)
        failed = wait_job(http, job, timeout=60)
        failed_after = time.monotonic() - t0
        wait_for(lambda: http.get("/health").json()["status"] == "ok" and server.worker_pids() != [pid], 60,
                 "a fresh worker")
        out["worker"] = {"job_state": failed["state"], "job_error": failed["error"],
                         "job_failed_after_s": round(failed_after, 2),
                         "fresh_worker_after_s": round(time.monotonic() - t0, 2),
                         "outputs_left": [str(p) for p in (data / "jobs" / job).glob("attempt-*")]}
        nxt = http.post("/jobs", json=job_body(DEMO_SLIDE, parameters=short)).json()["id"]
        out["worker"]["next_job"] = wait_job(http, nxt, timeout=600)["state"]
    out["load_average_after"] = _load_average()
    return out


def disk(work: Path, parameters: dict) -> dict:
    reason = SmallFilesystem.unavailable()
    if reason:
        return {"skipped": reason}
    before = _load_average()
    result = disk_full_run(work / "disk", DEMO_SLIDE, parameters)
    return {"load_average_before": before, **result, "load_average_after": _load_average()}


def fuzz(work: Path) -> dict:
    before = _load_average()
    env = {**os.environ, "TUMLS_QP_BENCH_OUT": str(work / "fuzz")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_server_fuzz.py"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    summary = json.loads((work / "fuzz" / "fuzz_test.json").read_text())
    summary["pytest"] = out.stdout.strip().splitlines()[-1]
    return {"load_average_before": before, **summary, "load_average_after": _load_average()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--skip", nargs="*", default=[], choices=["e2e", "load", "fuzz", "kill", "disk"])
    parser.add_argument("--clients", type=int, default=12, help="clients of the load part (default 12)")
    parser.add_argument("--minutes", type=float, default=4.0, help="minutes of the load part (default 4)")
    parser.add_argument("--load-epochs", type=int, default=20,
                        help="autoencoder epochs of the load part's jobs (default 20)")
    args = parser.parse_args()
    results: dict = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                                 "load_average_at_start": _load_average()}}
    demo = {"seed": 1, "tiles": {"tile_um": 32.0}, "embedding": {"max_epochs": args.load_epochs, "device": "cpu"}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        parts = {
            "end_to_end": ("e2e", lambda: end_to_end(work, {"tiles": {"tile_um": 32.0},
                                                            "embedding": {"device": "cpu"}})),
            "load": ("load", lambda: load(work, demo, args.clients, args.minutes)),
            "fuzz": ("fuzz", lambda: fuzz(work)),
            "kill_9": ("kill", lambda: kill(work, demo)),
            "disk_full": ("disk", lambda: disk(work, demo)),
        }
        for name, (flag, run) in parts.items():
            if flag not in args.skip:
                results[name] = run()
                print(f"{name}: done (load average {_load_average()})", file=sys.stderr, flush=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
