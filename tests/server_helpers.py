"""Helpers for the server tests: small slides, request bodies, a runner that runs nothing, a live server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx

from tumls_qp.outputs.qupath import path_to_file_uri
from tumls_qp.testing import write_synthetic_slide

REPO = Path(__file__).resolve().parents[1]
DEMO_SLIDE = REPO / "tumls_qp" / "data" / "CMU-1-Small-Region.svs"
#: Seconds: 64 µm tiles on a 512 µm slide (32 tissue tiles) and one autoencoder epoch.
FAST_PARAMETERS = {"tiles": {"tile_um": 64.0}, "embedding": {"max_epochs": 1, "device": "cpu"}}


def small_slide(folder: Path, name: str = "small.tif", layout: str = "two-tissues") -> Path:
    """A 1024 x 1024 px synthetic slide at 0.5 µm/px."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_synthetic_slide(folder / name, 1024, 1024, 0.5, layout=layout)


def job_body(slide: Path, **changes: Any) -> dict[str, Any]:
    """A valid POST /jobs body for a slide, as the QuPath script would send it."""
    from tumls_qp.slide import open_slide

    with open_slide(slide) as s:
        width, height = s.dimensions
        mpp = s.mpp
    body: dict[str, Any] = {"uris": [path_to_file_uri(slide)], "width": width, "height": height,
                            "pixel_size_um": mpp, "image_name": slide.name, "server_type": "OpenslideImageServer",
                            "parameters": {}}
    body.update(changes)
    return body


class IdleRunner:
    """A runner that runs nothing: jobs stay queued (for tests of the API's edges)."""

    def __init__(self) -> None:
        self.started = self.stopped = False
        self.cancelled: list[str] = []

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    def cancel(self, job: Any) -> None:
        self.cancelled.append(job.id)

    def workers_alive(self) -> int:
        return 0

    def workers_stalled(self) -> int:
        return 0


def api_client(app: Any, **kwargs: Any) -> Any:
    """A TestClient that talks to the app under one of its own host names (the Host check refuses others)."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url="http://127.0.0.1:8765", **kwargs)


def run_queued(settings: Any) -> list[str]:
    """Run every queued job in this process, as a worker would; returns their final states."""
    from tumls_qp.server.store import JobStore
    from tumls_qp.server.worker import run_job

    store = JobStore(settings.db_path)
    states = []
    try:
        while (job := store.claim(os.getpid())) is not None:
            states.append(run_job(store, settings, job))
    finally:
        store.close()
    return states


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_job(client: Any, job_id: str, states: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
             timeout: float = 120) -> dict[str, Any]:
    """Poll GET /jobs/{id} until the job is in one of ``states``."""
    def done() -> dict[str, Any] | None:
        status = client.get(f"/jobs/{job_id}").json()
        return status if status["state"] in states else None

    return wait_for(done, timeout, f"job {job_id} to reach {states}", interval=0.2)


class LiveServer:
    """``python -m tumls_qp.cli serve --port 0`` in a subprocess that imports this checkout's package."""

    def __init__(self, data_dir: Path, roots: list[Path], *, workers: int = 1, token: str | None = None,
                 config: Path | None = None, extra: list[str] | None = None, prefix: list[str] | None = None) -> None:
        """``extra``: more ``serve`` options; ``prefix``: a command that runs the server (e.g. ``unshare ...``)."""
        self.args = [*(prefix or []), sys.executable, "-m", "tumls_qp.cli", "serve", "--port", "0", "--data-dir",
                     str(data_dir), "--workers", str(workers), *(extra or [])]
        for root in roots:
            self.args += ["--root", str(root)]
        self.token = token
        if config:
            self.args += ["--config", str(config)]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log: list[str] = []

    def start(self, timeout: float = 60) -> "LiveServer":
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        if self.token:  # as the README says: the environment, not the command line (ps shows that)
            env["TUMLS_QP_TOKEN"] = self.token
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("the server exited at start:\n" + "".join(self.log))
            self.log.append(line)
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                break
        else:
            raise AssertionError("the server did not start:\n" + "".join(self.log))
        # Keep draining the output so the server never blocks on a full pipe.
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        wait_for(self._healthy, 30, "the server's /health")
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)

    def _healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=2).json().get("workers_alive", 0) >= 1
        except httpx.HTTPError:
            return False

    def client(self, **kwargs: Any) -> httpx.Client:
        if self.token:
            kwargs["headers"] = {"Authorization": f"Bearer {self.token}", **kwargs.get("headers", {})}
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def worker_pids(self) -> list[int]:
        import psutil

        assert self.proc is not None
        return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]

    def kill(self) -> None:
        """kill -9: no cleanup at all."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None and not self.proc.stdout.closed:
            self._drainer.join(10)  # ends at end-of-file, once the server and its workers are gone
            self.proc.stdout.close()

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def assert_processes_gone(pids: list[int], timeout: float = 10) -> None:
    import psutil

    def gone() -> bool:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        return not alive

    wait_for(gone, timeout, f"processes {pids} to end")


def run_clients(url: str, bodies: list[dict[str, Any]], *, poll_interval: float = 0.2, timeout: float = 300,
                headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One thread per body: submit it, then poll its job until it ends, timing every request.

    Returns
    -------
    dict
        ``jobs``: final status per client (submission order); ``samples``: (start time, seconds,
        method, state seen) per request; ``running``: (first, last) time any client saw a job running.
    """
    samples: list[tuple[float, float, str, str]] = []
    finals: list[Any] = [None] * len(bodies)
    lock = threading.Lock()

    def client(i: int, body: dict[str, Any]) -> None:
        with httpx.Client(base_url=url, timeout=60, headers=headers) as http:
            t0 = time.monotonic()
            response = http.post("/jobs", json=body)
            with lock:
                samples.append((t0, time.monotonic() - t0, "POST", str(response.status_code)))
            if response.status_code != 202:
                finals[i] = {"submit_status": response.status_code, "body": response.text}
                return
            job_id = response.json()["id"]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                status = http.get(f"/jobs/{job_id}").json()
                with lock:
                    samples.append((t0, time.monotonic() - t0, "GET", status["state"]))
                if status["state"] in ("succeeded", "failed", "cancelled"):
                    finals[i] = status
                    return
                time.sleep(poll_interval)
            finals[i] = {"timeout": job_id}

    threads = [threading.Thread(target=client, args=(i, b)) for i, b in enumerate(bodies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    running = [t for t, _, method, state in samples if method == "GET" and state == "running"]
    return {"jobs": finals, "samples": samples, "running": (min(running), max(running)) if running else None}


def latency_while_running(result: dict[str, Any]) -> list[float]:
    """Seconds of the GET requests made while some job was running."""
    if result["running"] is None:
        return []
    first, last = result["running"]
    return [seconds for t, seconds, method, _ in result["samples"] if method == "GET" and first <= t <= last]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def bench_out(name: str, data: Any) -> None:
    """Write a measurement as JSON to $TUMLS_QP_BENCH_OUT/<name>.json when that folder is set (benchmarks/)."""
    import json

    folder = os.environ.get("TUMLS_QP_BENCH_OUT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(data, indent=2))


class SmallFilesystem:
    """A tmpfs of ``size_mb`` mounted on ``path`` for the duration of a ``with`` block (needs root).

    ``SmallFilesystem.unavailable()`` says why none can be mounted here (None when one can).
    """

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path, self.size_mb = path, size_mb

    @staticmethod
    def unavailable() -> str | None:
        import shutil as _shutil

        if not sys.platform.startswith("linux"):
            return "a small tmpfs needs Linux"
        if os.geteuid() != 0:
            return "mounting a small tmpfs needs root (the fault-injection tests cover a full disk without)"
        if _shutil.which("mount") is None:
            return "no mount command"
        return None

    def __enter__(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs", str(self.path)], check=True,
                       capture_output=True, text=True)
        return self.path

    def __exit__(self, *exc: Any) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)


def fill_disk(folder: Path, leave_bytes: int, name: str = "ballast.bin") -> Path:
    """Write a file into ``folder`` until its file system has at most ``leave_bytes`` free."""
    import shutil as _shutil

    path = folder / name
    with open(path, "ab") as fh:
        block = b"\0" * (1 << 16)
        while _shutil.disk_usage(folder).free > leave_bytes:
            want = _shutil.disk_usage(folder).free - leave_bytes
            try:
                fh.write(block[: max(1, min(len(block), want))])
                fh.flush()
            except OSError:
                break
    return path


def disk_full_run(work: Path, slide: Path, parameters: dict[str, Any], size_mb: int = 20) -> dict[str, Any]:
    """A live server whose data folder is a ``size_mb`` tmpfs, driven into a full disk and back.

    1. A job succeeds (and prototype clusters are computed) on the empty file system.
    2. The file system is filled up to 300 KB: jobs are submitted, prototypes and a dictionary asked for.
    3. It is filled to the last byte: the same again.
    4. The ballast goes: a job succeeds again, and the first job's result is unchanged.

    Returns every status seen, the jobs' final states and errors, and what is left on the file system
    (staging folders, attempt folders of failed jobs), for the caller to check.
    """
    import hashlib
    import shutil as _shutil

    data = work / "data"
    statuses: dict[str, int] = {}
    seen: list[tuple[str, int, str]] = []

    def note(what: str, response: Any) -> Any:
        key = f"{what}: {response.status_code}"
        statuses[key] = statuses.get(key, 0) + 1
        seen.append((what, response.status_code, response.text[:300]))
        return response

    with SmallFilesystem(data, size_mb), LiveServer(data, [slide.parent], extra=["--min-free-mb", "0"]) as server, \
            server.client() as http:
        def run(name: str) -> dict[str, Any]:
            response = note("POST /jobs", http.post("/jobs", json=job_body(slide, image_name=name,
                                                                           parameters=parameters)))
            if response.status_code != 202:
                return {"submit": response.status_code, "detail": response.json()["detail"]}
            final = wait_job(http, response.json()["id"], timeout=300)
            note("GET /jobs/{id}", http.get(f"/jobs/{final['id']}"))
            return final

        first = run("first.tif")
        assert first.get("state") == "succeeded", first
        digest = hashlib.sha256(http.get(f"/jobs/{first['id']}/geojson",
                                         headers={"Accept-Encoding": "identity"}).content).hexdigest()
        note("GET prototypes", http.get(f"/jobs/{first['id']}/prototypes", params={"k": 3, "t": 2}))
        used_by_one_job = _shutil.disk_usage(data).used
        phases = {}
        for phase, leave in (("300 KB free", 300 * 1024), ("0 B free", 0)):
            ballast = fill_disk(data, leave, f"ballast-{leave}.bin")
            free_before = _shutil.disk_usage(data).free
            jobs = [run(f"{phase}-{i}.tif") for i in range(2)]
            note("GET prototypes", http.get(f"/jobs/{first['id']}/prototypes", params={"k": 4, "t": 2}))
            named = {"job": first["id"], "k": 4, "names": {"1": "A", "2": "B", "3": "mixed", "4": None}}
            note("POST /dictionaries", http.post("/dictionaries", json=named))
            note("GET /jobs", http.get("/jobs"))
            note("GET /health", http.get("/health"))
            phases[phase] = {"free_bytes_before": free_before,
                             "jobs": [{k: j.get(k) for k in ("state", "error", "submit", "detail")} for j in jobs]}
        for ballast in data.glob("ballast-*.bin"):
            ballast.unlink()
        after = run("after.tif")
        again = hashlib.sha256(http.get(f"/jobs/{first['id']}/geojson",
                                        headers={"Accept-Encoding": "identity"}).content).hexdigest()
        from tumls_qp.outputs.geojson import validate_geojson

        succeeded = [j for j in http.get("/jobs", params={"limit": 100}).json()["jobs"] if j["state"] == "succeeded"]
        invalid = [j["id"] for j in succeeded if validate_geojson(http.get(f"/jobs/{j['id']}/geojson").json())]
        failed_with_outputs = [j["id"] for j in http.get("/jobs", params={"state": "failed", "limit": 100}).json()
                               ["jobs"] if list((data / "jobs" / j["id"]).glob("attempt-*"))]
        leftovers = [str(p.relative_to(data)) for p in data.rglob("*") if p.name.endswith((".partial", ".old"))
                     or (p.name.startswith(".") and p.parent.name == "dictionaries")]
        server_errors = [s for s in seen if s[1] >= 500 and s[1] != 507]  # 507 is the answer for a full disk
        return {
            "filesystem_mb": size_mb, "bytes_used_after_one_job": used_by_one_job, "statuses": statuses,
            "phases": phases, "after_freeing": {k: after.get(k) for k in ("state", "error")},
            "first_result_unchanged": digest == again, "succeeded_jobs": len(succeeded),
            "succeeded_with_invalid_geojson": invalid, "failed_jobs_with_outputs_left": failed_with_outputs,
            "staging_leftovers": leftovers, "server_errors": server_errors,
        }
