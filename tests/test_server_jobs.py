"""Jobs run by real worker processes (TestClient + ProcessRunner), the store's recovery rules, and the sweep."""

from __future__ import annotations

import dataclasses
import errno
import gzip
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")

from server_helpers import (FAST_PARAMETERS, api_client, assert_processes_gone, job_body, small_slide, wait_for,
                            wait_job)  # noqa: E402
from tumls_qp.outputs.geojson import read_geojson, validate_geojson  # noqa: E402
from tumls_qp.outputs.qupath import TAG_MEASUREMENT, class_table  # noqa: E402
from tumls_qp.server.app import create_app  # noqa: E402
from tumls_qp.server.runner import ProcessRunner, sweep_outputs  # noqa: E402
from tumls_qp.server.settings import ServerSettings  # noqa: E402
from tumls_qp.server.store import MAX_ATTEMPTS, JobStore  # noqa: E402
from tumls_qp.server.worker import run_name  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("jobs")
    slides = base / "slides"
    slide = small_slide(slides)
    blank = small_slide(slides, "blank.tif", layout="blank")
    settings = ServerSettings(data_dir=base / "data", roots=(slides,), base_parameters=FAST_PARAMETERS,
                              poll_interval_s=0.1, cancel_grace_s=1.0)
    runner = ProcessRunner(settings)
    with api_client(create_app(settings, runner)) as client:
        yield {"client": client, "slide": slide, "blank": blank, "settings": settings, "runner": runner}


def test_a_job_runs_and_its_results_are_served(server):
    client, slide = server["client"], server["slide"]
    job = client.post("/jobs", json=job_body(slide)).json()
    seen_running = wait_job(client, job["id"], ("running", "succeeded", "failed"))
    assert seen_running["attempt"] == 1
    done = wait_job(client, job["id"])
    assert done["state"] == "succeeded", done
    assert done["progress"] == 1.0 and done["elapsed_s"] > 0 and done["finished_at"]
    result = done["result"]
    assert result["k"] >= 1 and result["tissue_tiles"] >= 20 and result["embedding_cache"] == "miss"
    # output.report and output.embedding_colours are on by default
    assert set(done["links"]) == {"self", "geojson", "classes", "report", "seeded", "prototypes", "embedding_colours"}
    pdf = client.get(done["links"]["report"])
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")

    run_dir = Path(result["run_dir"])
    assert run_dir.name == run_name("small.tif") == "small"
    assert run_dir.parent.name == "attempt-1" and run_dir.parent.parent.name == job["id"]
    served = client.get(f"/jobs/{job['id']}/geojson", headers={"Accept-Encoding": "gzip"})
    assert served.headers["content-encoding"] == "gzip"
    collection = served.json()
    assert validate_geojson(collection) == []
    assert len(collection["features"]) == result["features"]
    # The served objects are the run folder's, each tagged with the job number, and nothing else.
    original = read_geojson(run_dir / "tissue.geojson")["features"]
    assert [f["id"] for f in collection["features"]] == [f["id"] for f in original]
    for mine, theirs in zip(collection["features"], original):
        assert mine["properties"]["measurements"].pop(TAG_MEASUREMENT) == done["number"]
        assert mine == theirs
    classes = client.get(f"/jobs/{job['id']}/classes").json()
    assert classes["classes"] == class_table(original)
    names = [c["name"] for c in classes["classes"]]
    assert [n for n in names if n.startswith("Tissue")][:2] == ["Tissue 1", "Tissue 2"][: result["k"]]
    assert set(names) <= {"Nucleus"} | {f"Tissue {t}" for t in range(1, result["k"] + 1)}


def test_the_same_image_reuses_cached_embeddings(server):
    client, slide = server["client"], server["slide"]
    job = client.post("/jobs", json=job_body(slide, image_name="again.tif")).json()
    done = wait_job(client, job["id"])
    assert done["state"] == "succeeded" and done["result"]["embedding_cache"] == "hit"
    listed = client.get("/jobs", params={"image_uri": job_body(slide)["uris"][0]}).json()["jobs"]
    assert len(listed) >= 2


def test_a_bad_slide_fails_with_the_pipelines_message(server):
    client = server["client"]
    job = client.post("/jobs", json=job_body(server["blank"])).json()
    done = wait_job(client, job["id"])
    assert done["state"] == "failed" and done["result"] is None
    assert "tissue" in done["error"].lower() or "H&E" in done["error"], done["error"]
    response = client.get(f"/jobs/{job['id']}/geojson")
    assert response.status_code == 409 and "failed" in response.json()["detail"]
    assert not list((server["settings"].jobs_dir / job["id"]).glob("attempt-*"))


def test_cancel_stops_the_worker_and_removes_outputs(server):
    client, settings, runner = server["client"], server["settings"], server["runner"]
    # Another seed and many epochs: a cache miss that trains long enough to be caught running.
    body = job_body(server["slide"], parameters={"seed": 11, "embedding": {"max_epochs": 500, "patience": 500}})
    job = client.post("/jobs", json=body).json()
    wait_for(lambda: client.get(f"/jobs/{job['id']}").json()["stage"] == "train", 60, "the job to train")
    store = JobStore(settings.db_path)
    try:
        pid = store.get(job["id"]).worker_pid
    finally:
        store.close()
    started = time.monotonic()
    cancelled = client.delete(f"/jobs/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert_processes_gone([pid], timeout=settings.cancel_grace_s + 5)
    stopped_after = time.monotonic() - started
    assert stopped_after < settings.cancel_grace_s + 5
    wait_for(lambda: runner.workers_alive() == 1, 20, "a fresh worker")
    wait_for(lambda: not list((settings.jobs_dir / job["id"]).glob("attempt-*")), 10, "the outputs to go")
    assert not list(settings.jobs_dir.rglob("*.partial"))
    assert client.get(f"/jobs/{job['id']}").json()["state"] == "cancelled"
    # The server goes on: the next job runs on the fresh worker.
    nxt = client.post("/jobs", json=job_body(server["slide"])).json()
    assert wait_job(client, nxt["id"])["state"] == "succeeded"


def _job(store: JobStore, name: str = "x") -> str:
    return store.add(image_path="/slides/x.svs", image_name=name, request={}, config={}, warnings=[]).id


def test_store_claims_in_order_and_guards_stale_updates(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    try:
        first, second = _job(store, "a"), _job(store, "b")
        claimed = store.claim(worker_pid=111)
        assert claimed.id == first and claimed.state == "running" and claimed.attempt == 1
        assert store.progress(first, 1, 0.5, "train", "epoch 3")
        assert not store.progress(first, 2, 0.6, "train", "a stale attempt")
        assert store.get(first).progress == 0.5
        assert store.cancel(first)[1].state == "cancelled"
        assert not store.finish(first, 1, "succeeded")  # a worker finishing late cannot undo the cancel
        assert store.get(first).state == "cancelled"
        assert store.claim(worker_pid=222).id == second
        assert store.claim(worker_pid=222) is None
        failed = store.fail_worker_jobs(222, "died")
        assert [j.id for j in failed] == [second] and store.get(second).error == "died"
        # The database is usable from another connection (another process) at the same time.
        other = JobStore(tmp_path / "jobs.sqlite3")
        try:
            assert other.get(second).state == "failed"
            assert other._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            other.close()
    finally:
        store.close()


def test_recovery_requeues_running_jobs_once(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    try:
        job_id = _job(store)
        queued_id = _job(store)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            claimed = store.claim(worker_pid=1)
            assert claimed.id == job_id and claimed.attempt == attempt
            requeued, failed = store.recover("the server stopped while this job was running")
            if attempt < MAX_ATTEMPTS:
                assert [j.id for j in requeued] == [job_id] and not failed
                assert store.get(job_id).state == "queued" and "queued to run again" in store.get(job_id).message
            else:
                assert [j.id for j in failed] == [job_id] and not requeued
                assert store.get(job_id).state == "failed" and "not run again" in store.get(job_id).error
        assert store.get(queued_id).state == "queued"  # queued jobs are left to run
    finally:
        store.close()


def test_sweep_keeps_only_servable_results(tmp_path):
    settings = ServerSettings(data_dir=tmp_path / "data", roots=(tmp_path,))
    store = JobStore(settings.db_path)
    try:
        done, gone = _job(store), _job(store)
        claimed = store.claim(1)
        keep = settings.jobs_dir / done / "attempt-1" / "run"
        keep.mkdir(parents=True)
        (keep / "tissue.geojson").write_text("{}")
        stale = [settings.jobs_dir / done / "attempt-1" / ".tumls-run-0a1b2c3d.partial",
                 settings.jobs_dir / done / "attempt-2",
                 settings.jobs_dir / gone / "attempt-1" / "run",
                 settings.cache_dir / ".0123.abcd.partial",
                 keep / ".prototypes.0a1b2c3d.partial"]
        for folder in stale:
            folder.mkdir(parents=True)
        settings.dictionaries_dir.mkdir()
        saved = settings.dictionaries_dir / ("ab" * 16 + ".tumlsdict")
        saved.write_bytes(b"kept")
        unfinished = settings.dictionaries_dir / f".{saved.name}.x1y2z3"
        unfinished.write_bytes(b"half")
        assert store.finish(done, claimed.attempt, "succeeded", run_dir=str(keep))
        assert sweep_outputs(settings, store) == 6
        assert (keep / "tissue.geojson").is_file() and saved.read_bytes() == b"kept"
        assert not unfinished.exists()
        assert not any(folder.exists() for folder in stale)
        assert not (settings.jobs_dir / gone / "attempt-1").exists()
    finally:
        store.close()


def test_served_geojson_is_tagged_and_gzipped(tmp_path):
    from tumls_qp.outputs.geojson import make_feature, write_geojson
    from tumls_qp.server.worker import publish_geojson
    from shapely.geometry import box

    features = [make_feature(box(0, 0, 10, 10), "annotation", "Tissue 2", (1, 2, 3), {"Area um^2": 1.0}),
                make_feature(box(0, 0, 5, 5), "tile", "Tissue 10", (4, 5, 6)),
                make_feature(box(5, 5, 9, 9), "tile", "Tissue 2", (1, 2, 3))]
    write_geojson({"type": "FeatureCollection", "features": features}, tmp_path / "tissue.geojson")
    classes, n = publish_geojson(tmp_path, "tissue.geojson", 42, tmp_path / "served.geojson.gz")
    assert n == 3
    assert classes == [{"name": "Tissue 2", "color": [1, 2, 3], "objects": 2},
                       {"name": "Tissue 10", "color": [4, 5, 6], "objects": 1}]
    served = json.loads(gzip.decompress((tmp_path / "served.geojson.gz").read_bytes()))
    assert all(f["properties"]["measurements"][TAG_MEASUREMENT] == 42 for f in served["features"])
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # written atomically, no leftovers


def test_graceful_stop_puts_the_running_job_back_in_the_queue(tmp_path):
    slides = tmp_path / "slides"
    slide = small_slide(slides)
    settings = ServerSettings(data_dir=tmp_path / "data", roots=(slides,), base_parameters=FAST_PARAMETERS,
                              poll_interval_s=0.1, cancel_grace_s=3.0)
    runner = ProcessRunner(settings)
    with api_client(create_app(settings, runner)) as client:
        body = job_body(slide, parameters={"seed": 3, "embedding": {"max_epochs": 500, "patience": 500}})
        job = client.post("/jobs", json=body).json()
        wait_for(lambda: client.get(f"/jobs/{job['id']}").json()["stage"] == "train", 60, "training")
        store = JobStore(settings.db_path)
        pid = store.get(job["id"]).worker_pid
        store.close()
    # Leaving the client ran the app's shutdown: the worker was stopped and the job queued for the next start.
    assert_processes_gone([pid], timeout=5)
    store = JobStore(settings.db_path)
    try:
        stopped = store.get(job["id"])
        assert stopped.state == "queued" and stopped.attempt == 1 and "server stopped" in stopped.message
    finally:
        store.close()
    assert not list(settings.data_dir.rglob("*.partial"))
    assert not list((settings.jobs_dir / job["id"]).glob("attempt-*"))


def test_each_job_runs_on_its_workers_share_of_the_cores(monkeypatch, tmp_path):
    import cv2
    import torch
    from threadpoolctl import threadpool_info

    from tumls_qp import cpu
    from tumls_qp.server import worker

    seen = []

    def fake_run_job(store, settings, job):
        seen.append((torch.get_num_threads(), cv2.getNumThreads(), {p["num_threads"] for p in threadpool_info()}))
        return "done"

    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(worker, "run_job", fake_run_job)
    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        settings = ServerSettings(data_dir=tmp_path / "data", roots=(tmp_path,), workers=4)
        assert worker._run_in_share(None, settings, None) == "done"
    finally:
        torch.set_num_threads(before[0])
    assert seen == [(2, 2, {2})]
    assert cv2.getNumThreads() == before[1]


def test_a_stopped_worker_leaves_no_cancelled_outputs_behind(tmp_path):
    """Every cancelled job of a worker that exits loses its outputs, however many were cancelled since (once
    only the newest 20 cancelled jobs were looked at), and so does a job deleted while its worker still wrote."""
    settings = ServerSettings(data_dir=tmp_path / "data", roots=(tmp_path,))
    runner = ProcessRunner(settings)
    runner.store = store = JobStore(settings.db_path)
    try:
        mine = []
        for _ in range(25):
            job_id = _job(store)
            store.claim(worker_pid=4242)
            store.cancel(job_id)
            mine.append(job_id)
        other = _job(store)
        store.claim(worker_pid=5151)
        store.cancel(other)
        for _ in range(30):  # newer cancelled jobs, of queued jobs that never ran
            store.cancel(_job(store))
        deleted = _job(store)
        store.claim(worker_pid=4242)
        store.cancel(deleted)
        runner._cleanup[4242] = {deleted}
        store.delete(deleted)
        for job_id in [*mine, other, deleted]:
            (settings.jobs_dir / job_id / "attempt-1" / "run").mkdir(parents=True)
        runner._reap(SimpleNamespace(pid=4242, poll=lambda: 0, stdin=None))
        assert not any((settings.jobs_dir / job_id / "attempt-1").exists() for job_id in mine)
        assert not (settings.jobs_dir / deleted).exists()
        assert (settings.jobs_dir / other / "attempt-1").is_dir()  # its worker is another, maybe still writing
    finally:
        store.close()


def test_a_full_disk_fails_the_job_saying_so(tmp_path, monkeypatch):
    from tumls_qp.server import worker

    slides = tmp_path / "slides"
    slide = small_slide(slides)
    settings = ServerSettings(data_dir=tmp_path / "data", roots=(slides,), min_free_mb=0)
    store = JobStore(settings.db_path)
    try:
        def fill_the_disk(store_, settings_, job, slide_, out_dir):
            (out_dir / "run").mkdir(parents=True)
            (out_dir / "run" / "embeddings.npz").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(worker, "_run_analysis", fill_the_disk)
        job_id = store.add(image_path=str(slide), image_name="small.tif", request={}, config={}, warnings=[]).id
        assert worker.run_job(store, settings, store.claim(os.getpid())) == "failed"
        failed = store.get(job_id)
        assert failed.error.startswith("data folder full (") and "MB free in" in failed.error
        assert "internal error" not in failed.error and "report it" not in failed.error
        assert not (settings.jobs_dir / job_id / "attempt-1").exists()
        # Less than --min-free-mb free when a job starts: it fails at once, with the same reason.
        strict = dataclasses.replace(settings, min_free_mb=1e8)
        job_id = store.add(image_path=str(slide), image_name="small.tif", request={}, config={}, warnings=[]).id
        assert worker.run_job(store, strict, store.claim(os.getpid())) == "failed"
        assert store.get(job_id).error.startswith("data folder full (") and "--min-free-mb" in store.get(job_id).error
    finally:
        store.close()
