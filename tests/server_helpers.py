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
                 config: Path | None = None) -> None:
        self.args = [sys.executable, "-m", "tumls_qp.cli", "serve", "--port", "0", "--data-dir", str(data_dir),
                     "--workers", str(workers)]
        for root in roots:
            self.args += ["--root", str(root)]
        if token:
            self.args += ["--token", token]
        if config:
            self.args += ["--config", str(config)]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.log: list[str] = []

    def start(self, timeout: float = 60) -> "LiveServer":
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
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
