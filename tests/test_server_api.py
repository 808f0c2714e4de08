"""The HTTP API's edges, through TestClient, with a runner that runs nothing (no CPU-heavy work here)."""

from __future__ import annotations

import dataclasses
import errno
import gzip
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from server_helpers import REPO, IdleRunner, api_client, job_body, small_slide  # noqa: E402
from tumls_qp.cli import main  # noqa: E402
from tumls_qp.errors import ConfigError  # noqa: E402
from tumls_qp.outputs.qupath import file_uri_to_path, path_to_file_uri  # noqa: E402
from tumls_qp.server.app import create_app  # noqa: E402
from tumls_qp.server.routes import _accepts_gzip  # noqa: E402
from tumls_qp.server.schemas import JobRequest  # noqa: E402
from tumls_qp.server.settings import ServerSettings, is_loopback  # noqa: E402
from tumls_qp.server.store import JobStore  # noqa: E402

TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("api")
    inside, outside = base / "slides", base / "outside"
    slide = small_slide(inside)
    small_slide(outside, "secret.tif")
    (inside / "link.tif").symlink_to(outside / "secret.tif")
    (inside / "notes.txt").write_text("not a slide")
    return {"base": base, "inside": inside, "outside": outside, "slide": slide}


@pytest.fixture()
def settings(roots, tmp_path):
    return ServerSettings(data_dir=tmp_path / "data", roots=(roots["inside"],), max_queued=5, max_body_bytes=20_000)


@pytest.fixture()
def client(settings):
    runner = IdleRunner()
    with api_client(create_app(settings, runner)) as c:
        c.runner = runner  # type: ignore[attr-defined]
        yield c
    assert runner.started and runner.stopped


def _error(response, status, field=None, fragment=""):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"detail", "field"}, body
    if field is not None:
        assert body["field"] == field, body
    assert fragment in body["detail"], body["detail"]
    return body


def test_health_version_docs(client):
    assert client.get("/health").json() == {"status": "degraded", "workers_alive": 0, "workers": 1,
                                            "workers_stalled": 0}
    version = client.get("/version").json()
    assert version["tool"] == "tumls-qp" and version["api"] == 1
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/geojson", "/jobs/{job_id}/classes", "/jobs/{job_id}/report",
            "/health", "/version"} <= set(schema["paths"])
    _error(client.get("/nowhere"), 404, fragment="no such endpoint")


def test_submit_returns_202_and_the_job(client, roots):
    response = client.post("/jobs", json=job_body(roots["slide"], parameters={"clusters": {"k": 3}}))
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert re.fullmatch(r"[0-9a-f]{32}", job["id"]) and job["state"] == "queued" and job["attempt"] == 0
    assert job["image_path"] == str(roots["slide"].resolve())
    assert client.get(f"/jobs/{job['id']}").json()["state"] == "queued"
    store = JobStore(client.app.state.settings.db_path)
    try:
        stored = store.get(job["id"])
        # The job carries the effective config: QuPath's pixel size and the request's options.
        assert stored.config["clusters"]["k"] == 3 and stored.config["slide"]["mpp"] == 0.5
    finally:
        store.close()


@pytest.mark.parametrize("change, field, fragment", [
    ({"width": "1024"}, "width", "integer"),
    ({"width": 0}, "width", "greater than"),
    ({"width": 10**30}, "width", "less than"),
    ({"height": True}, "height", "integer"),
    ({"pixel_size_um": -1}, "pixel_size_um", "greater than"),
    ({"pixel_size_um": "0.5"}, "pixel_size_um", "number"),
    ({"uris": []}, "uris", "at least 1"),
    ({"uris": "file:/x.svs"}, "uris", "list"),
    ({"image_name": ""}, "image_name", "at least 1"),
    ({"parameters": []}, "parameters", "dictionary"),
    ({"pixelSize": 0.5}, "pixelSize", "Extra inputs"),
])
def test_bad_fields_are_422_naming_the_field(client, roots, change, field, fragment):
    _error(client.post("/jobs", json=job_body(roots["slide"], **change)), 422, field, fragment)


def test_missing_fields_and_malformed_json(client, roots):
    body = job_body(roots["slide"])
    del body["width"]
    _error(client.post("/jobs", json=body), 422, "width", "Field required")
    _error(client.post("/jobs", content=b'{"uris": [', headers={"content-type": "application/json"}), 422, None,
           "malformed JSON")
    _error(client.post("/jobs"), 422, "body", "Field required")
    _error(client.post("/jobs", content=b"\xff\xfe", headers={"content-type": "application/json"}), 422)
    # NaN is not a pixel size, even though Python's json reads it.
    text = json.dumps(job_body(roots["slide"])).replace("0.5", "NaN", 1)
    _error(client.post("/jobs", content=text, headers={"content-type": "application/json"}), 422, "pixel_size_um")


def test_parameters_are_checked_with_the_config_rules(client, roots):
    _error(client.post("/jobs", json=job_body(roots["slide"], parameters={"tiles": {"tile_px": 7}})), 422,
           "parameters", "tiles.tile_px")
    _error(client.post("/jobs", json=job_body(roots["slide"], parameters={"tiles": {"tile_size": 7}})), 422,
           "parameters", "unknown option")
    _error(client.post("/jobs", json=job_body(roots["slide"], parameters={"embedding": {"method": "dino"}})), 422,
           "parameters", "embedding.method must be one of tumls-ae, contrastive, vade, handcrafted, textons")
    _error(client.post("/jobs", json=job_body(roots["slide"], parameters={"slide": 5})), 422, "parameters",
           "slide must be a table")
    outside = roots["outside"] / "secret.tif"
    _error(client.post("/jobs", json=job_body(roots["slide"],
                                              parameters={"embedding": {"init_resnet18": str(outside)}})),
           403, "parameters.embedding.init_resnet18")
    _error(client.post("/jobs", json=job_body(roots["slide"], parameters={"embedding": {
        "method": "pretrained", "encoder": "resnet50", "checkpoint": str(roots["outside"] / "uni.pth")}})),
           403, "parameters.embedding.checkpoint")


@pytest.mark.parametrize("uri, status, fragment", [
    ("file:{outside}/secret.tif", 403, "outside the folders"),
    ("file:{inside}/../outside/secret.tif", 403, "outside the folders"),
    ("file:{inside}/link.tif", 403, "outside the folders"),
    ("file:{inside}/%2E%2E/outside/secret.tif", 403, "outside the folders"),
    ("file://fileserver/share/slide.svs", 422, "network share"),
    ("http://example.org/slide.svs", 422, "remote image"),
    ("https://example.org/slide.svs", 422, "remote image"),
    ("{inside}/small.tif", 422, "file: URI"),
    ("file:small.tif", 422, "absolute"),
    ("file:{inside}/small.tif%00.txt", 422, "NUL"),
    ("file:{inside}/small.tif?x=1", 422, "query"),
    ("file:{inside}/missing.svs", 422, "not found"),
    ("file:{inside}/notes.txt", 422, "cannot open"),
    ("file:{inside}", 422, "not a file"),
])
def test_image_uri_checks(client, roots, uri, status, fragment):
    uri = uri.format(inside=roots["inside"], outside=roots["outside"])
    body = _error(client.post("/jobs", json=job_body(roots["slide"], uris=[uri])), status, None, fragment)
    assert body["field"].startswith("uris")
    if status == 403:  # the message names the requested path, never where a symlink leads
        assert "secret" not in body["detail"] or "link" not in uri


def test_file_uri_with_localhost_is_local(client, roots):
    uri = "file://localhost" + str(roots["slide"])
    assert client.post("/jobs", json=job_body(roots["slide"], uris=[uri])).status_code == 202


def test_several_uris_are_refused(client, roots):
    uri = path_to_file_uri(roots["slide"])
    _error(client.post("/jobs", json=job_body(roots["slide"], uris=[uri, uri])), 422, "uris", "2 files")


def test_frame_mismatch_names_both_sizes(client, roots):
    body = _error(client.post("/jobs", json=job_body(roots["slide"], width=1000, height=1024)), 422, "width")
    assert "1000 x 1024" in body["detail"] and "1024 x 1024" in body["detail"]


def test_transformed_qupath_server_is_refused(client, roots):
    _error(client.post("/jobs", json=job_body(roots["slide"], server_type="RotatedImageServer")), 422, "server_type",
           "RotatedImageServer")


def test_missing_pixel_size(client, roots, tmp_path):
    from tumls_qp.testing import write_synthetic_slide

    no_mpp = write_synthetic_slide(roots["inside"] / "no-mpp.tif", 512, 512, None)
    body = job_body(roots["slide"], uris=[path_to_file_uri(no_mpp)], width=512, height=512, pixel_size_um=None)
    _error(client.post("/jobs", json=body), 422, "pixel_size_um", "Pixel width")
    # QuPath's calibration, or slide.mpp in the parameters, fills the gap.
    assert client.post("/jobs", json={**body, "pixel_size_um": 0.5}).status_code == 202
    assert client.post("/jobs", json={**body, "parameters": {"slide": {"mpp": 0.5}}}).status_code == 202


def test_pixel_size_disagreement_is_a_warning(client, roots):
    job = client.post("/jobs", json=job_body(roots["slide"], pixel_size_um=0.25)).json()
    assert any("differs from the file's" in w for w in job["warnings"])


def test_unknown_jobs_are_404_and_results_wait_for_success(client, roots):
    for path in ("/jobs/0123456789abcdef0123456789abcdef", "/jobs/nope",
                 "/jobs/0123456789abcdef0123456789abcdef/geojson"):
        _error(client.get(path), 404, None, "no job")
    _error(client.get("/jobs/..%2F..%2Fetc%2Fpasswd"), 404, None, "no such endpoint")
    _error(client.delete("/jobs/0123456789abcdef0123456789abcdef"), 404)
    job = client.post("/jobs", json=job_body(roots["slide"])).json()
    for suffix in ("geojson", "classes", "report"):
        _error(client.get(f"/jobs/{job['id']}/{suffix}"), 409, None, "is queued")


def test_cancel_a_queued_job_then_delete_it(client, roots):
    job = client.post("/jobs", json=job_body(roots["slide"])).json()
    cancelled = client.delete(f"/jobs/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert client.runner.cancelled == [job["id"]]
    # Once it has ended, DELETE deletes it: its record and its folder.
    job_dir = client.app.state.settings.jobs_dir / job["id"]
    job_dir.mkdir(parents=True)
    (job_dir / "job.log").write_text("log")
    deleted = client.delete(f"/jobs/{job['id']}")
    assert deleted.status_code == 204 and not deleted.content
    assert not job_dir.exists()
    _error(client.get(f"/jobs/{job['id']}"), 404, None, "no job")
    _error(client.delete(f"/jobs/{job['id']}"), 404)


def test_list_jobs_filters(client, roots):
    first = client.post("/jobs", json=job_body(roots["slide"], image_name="A")).json()
    second = client.post("/jobs", json=job_body(roots["slide"], image_name="B")).json()
    client.delete(f"/jobs/{second['id']}")
    listed = client.get("/jobs").json()["jobs"]
    assert [j["id"] for j in listed] == [second["id"], first["id"]]  # newest first
    assert [j["id"] for j in client.get("/jobs", params={"image_name": "A"}).json()["jobs"]] == [first["id"]]
    assert [j["id"] for j in client.get("/jobs", params={"state": "cancelled"}).json()["jobs"]] == [second["id"]]
    by_uri = client.get("/jobs", params={"image_uri": "file://localhost" + str(roots["slide"])}).json()["jobs"]
    assert len(by_uri) == 2
    assert client.get("/jobs", params={"limit": 1}).json()["jobs"][0]["id"] == second["id"]
    _error(client.get("/jobs", params={"state": "done"}), 422, "state")
    _error(client.get("/jobs", params={"limit": 0}), 422, "limit")
    _error(client.get("/jobs", params={"image_uri": "file:/etc/passwd"}), 403)


def test_queue_limit(client, roots):
    for _ in range(5):
        assert client.post("/jobs", json=job_body(roots["slide"])).status_code == 202
    response = client.post("/jobs", json=job_body(roots["slide"]))
    _error(response, 429, None, "already queued")
    assert response.headers["retry-after"]


def test_body_size_limit(client, roots):
    big = job_body(roots["slide"], image_name="x" * 900, parameters={"pad": "y" * 30_000})
    _error(client.post("/jobs", json=big), 413, None, "larger than")

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"uris": ["' + b"a" * 15_000
        yield b"b" * 15_000 + b'"]}'

    _error(client.post("/jobs", content=chunks(), headers={"content-type": "application/json"}), 413)
    _error(client.post("/jobs", content=b"{}", headers={"content-type": "application/json", "content-length": "x"}),
           400)


def test_token(roots, tmp_path):
    settings = ServerSettings(data_dir=tmp_path / "data", roots=(roots["inside"],), token=TOKEN)
    with api_client(create_app(settings, IdleRunner())) as c:
        assert c.get("/health").status_code == 200  # liveness needs no token
        response = c.get("/version")
        _error(response, 401, None, "token")
        assert response.headers["www-authenticate"] == "Bearer"
        _error(c.get("/version", headers={"Authorization": "Bearer wrong"}), 401)
        _error(c.get("/version", headers={"Authorization": TOKEN}), 401)
        _error(c.post("/jobs", json=job_body(roots["slide"])), 401)
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/version", headers=good).status_code == 200
        assert c.post("/jobs", json=job_body(roots["slide"]), headers=good).status_code == 202
        # The docs need it too, and the token is checked before the body is read.
        for path in ("/docs", "/redoc", "/openapi.json"):
            _error(c.get(path), 401, None, "token")
        assert c.get("/openapi.json", headers=good).status_code == 200
        _error(c.post("/jobs", content=b'{"uris": [', headers={"content-type": "application/json"}), 401)
        _error(c.post("/jobs", content=b"x" * 50_000, headers={"content-type": "application/json"}), 401)
        assert c.post("/jobs", content=b'{"uris": [', headers={"content-type": "application/json", **good}
                      ).status_code == 422


def test_host_header_must_name_the_server(roots, tmp_path):
    """DNS rebinding: a page of attacker.example whose name now points at 127.0.0.1 sends Host: attacker.example."""
    settings = ServerSettings(data_dir=tmp_path / "data", roots=(roots["inside"],))
    with api_client(create_app(settings, IdleRunner())) as c:
        job = c.post("/jobs", json=job_body(roots["slide"])).json()
        for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765", "localhost", "192.168.1.10:8765", "[fe80::1]"):
            assert c.get("/jobs", headers={"Host": host}).status_code == 200, host  # a name, or an IP address
        foreign = {"Host": "attacker.example:8765", "Origin": "http://attacker.example:8765"}
        for method, path in (("GET", "/jobs"), ("GET", f"/jobs/{job['id']}"), ("DELETE", f"/jobs/{job['id']}"),
                             ("POST", "/jobs"), ("GET", "/health"), ("GET", "/openapi.json")):
            response = c.request(method, path, headers=foreign, json=job_body(roots["slide"]))
            _error(response, 400, "Host", "--allowed-host")
        assert c.get(f"/jobs/{job['id']}").json()["state"] == "queued"  # the DELETE did nothing
        assert len(c.get("/jobs").json()["jobs"]) == 1  # nor the POST
    named = ServerSettings(data_dir=tmp_path / "data2", roots=(roots["inside"],), allowed_hosts=("Slides.Lab",))
    with api_client(create_app(named, IdleRunner())) as c:
        assert c.get("/version", headers={"Host": "slides.lab:8765"}).status_code == 200
        _error(c.get("/version", headers={"Host": "attacker.example"}), 400)
    elsewhere = ServerSettings(host="192.168.1.10", token=TOKEN, data_dir=tmp_path / "data3", roots=(roots["inside"],))
    assert {"192.168.1.10", "localhost", "127.0.0.1", "::1", socket.gethostname().lower()} <= elsewhere.trusted_hosts


def test_settings_rules(tmp_path, roots):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("example.org")
    with pytest.raises(ConfigError, match="--token"):
        ServerSettings(host="0.0.0.0", data_dir=tmp_path, roots=(roots["inside"],))
    with pytest.raises(ConfigError, match="at least 16"):
        ServerSettings(host="0.0.0.0", data_dir=tmp_path, roots=(roots["inside"],), token="short")
    assert ServerSettings(host="0.0.0.0", data_dir=tmp_path, roots=(roots["inside"],), token=TOKEN).token == TOKEN
    with pytest.raises(ConfigError, match="--root"):
        ServerSettings(data_dir=tmp_path, roots=(tmp_path / "missing",))
    with pytest.raises(ConfigError, match="--workers"):
        ServerSettings(data_dir=tmp_path, roots=(roots["inside"],), workers=0)
    with pytest.raises(ConfigError, match="clusters.k"):
        ServerSettings(data_dir=tmp_path, roots=(roots["inside"],), base_parameters={"clusters": {"k": 0}})
    with pytest.raises(ConfigError, match="--allowed-host"):
        ServerSettings(data_dir=tmp_path, roots=(roots["inside"],), allowed_hosts=("http://x.org:80",))
    with pytest.raises(ConfigError, match="--stall-timeout"):
        ServerSettings(data_dir=tmp_path, roots=(roots["inside"],), stall_timeout_s=1)
    with pytest.raises(ConfigError, match="--keep-days"):
        ServerSettings(data_dir=tmp_path, roots=(roots["inside"],), keep_days=-1)
    with pytest.raises(ConfigError, match="--max-data-gb"):
        ServerSettings(data_dir=tmp_path, roots=(roots["inside"],), max_data_gb=0)
    with pytest.raises(ConfigError, match="--min-free-mb"):
        ServerSettings(data_dir=tmp_path, roots=(roots["inside"],), min_free_mb=-5)
    # Roots are stored resolved, so a symlinked root still confines reads to its target.
    link = tmp_path / "root-link"
    link.symlink_to(roots["inside"])
    assert ServerSettings(data_dir=tmp_path, roots=(link,)).roots == (roots["inside"].resolve(),)


def test_serve_command_refuses_bad_settings(capsys, roots, tmp_path):
    assert main(["serve", "--host", "0.0.0.0", "--root", str(roots["inside"]), "--data-dir", str(tmp_path)]) == 2
    assert "--token" in capsys.readouterr().err
    assert main(["serve", "--root", str(tmp_path / "nope"), "--data-dir", str(tmp_path)]) == 2
    assert "not an existing folder" in capsys.readouterr().err


def test_serve_command_warns_about_a_token_on_the_command_line(capsys, roots, tmp_path, monkeypatch):
    """A token given with --token shows in ps: the command says to use TUMLS_QP_TOKEN instead."""
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # stop right after the settings are checked
    args = ["serve", "--root", str(roots["inside"]), "--data-dir", str(tmp_path)]
    assert main([*args, "--token", TOKEN]) == 1
    assert "TUMLS_QP_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("TUMLS_QP_TOKEN", TOKEN)
    assert main(args) == 1
    assert "TUMLS_QP_TOKEN instead" not in capsys.readouterr().err


def test_serve_command_refuses_a_busy_port_and_a_busy_data_folder(roots, tmp_path):
    from server_helpers import LiveServer

    with LiveServer(tmp_path / "data", [roots["inside"]]) as server:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        port = server.url.rsplit(":", 1)[1]
        busy = subprocess.run([sys.executable, "-m", "tumls_qp.cli", "serve", "--port", port, "--data-dir",
                               str(tmp_path / "other"), "--root", str(roots["inside"])],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert busy.returncode == 1 and "--port" in busy.stderr, busy.stderr
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free = str(s.getsockname()[1])
        shared = subprocess.run([sys.executable, "-m", "tumls_qp.cli", "serve", "--port", free, "--data-dir",
                                 str(tmp_path / "data"), "--root", str(roots["inside"])],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert shared.returncode == 1 and "another tumls-qp server" in shared.stderr, shared.stderr
        # The lock is on the folder, held by the running server: deleting server.lock lets nobody in.
        (tmp_path / "data" / "server.lock").unlink()
        again = subprocess.run([sys.executable, "-m", "tumls_qp.cli", "serve", "--port", free, "--data-dir",
                                str(tmp_path / "data"), "--root", str(roots["inside"])],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 1 and "another tumls-qp server" in again.stderr, again.stderr
        with server.client() as http:
            assert http.get("/health").json()["status"] == "ok"


def test_accept_encoding_parsing():
    assert _accepts_gzip("gzip") and _accepts_gzip("deflate, gzip;q=0.5") and _accepts_gzip("*")
    assert not _accepts_gzip("") and not _accepts_gzip("gzip;q=0") and not _accepts_gzip("br, deflate")


def test_file_uris_round_trip(tmp_path):
    path = tmp_path / "a slide #1.svs"
    uri = path_to_file_uri(path)
    assert uri.startswith("file:/") and "%20" in uri
    assert file_uri_to_path(uri) == path
    assert file_uri_to_path("file:///data/x.svs") == Path("/data/x.svs")


def test_readme_example_request_matches_the_schema():
    text = (REPO / "groovy" / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- example-request -->\s*```json\n(.*?)```", text, re.S)
    assert match, "groovy/README.md must hold the example request after <!-- example-request -->"
    example = JobRequest.model_validate_json(match.group(1))
    assert example.uris[0].startswith("file:") and example.width > 0
    schema_example = JobRequest.model_config["json_schema_extra"]["examples"][0]
    assert JobRequest.model_validate(schema_example) == example


def test_geojson_is_served_gzipped_or_plain(client, roots, tmp_path):
    """A succeeded job's GeoJSON, as stored by a worker, in both encodings (the store is edited directly)."""
    job = client.post("/jobs", json=job_body(roots["slide"])).json()
    served = tmp_path / "served.geojson.gz"
    collection = {"type": "FeatureCollection", "features": []}
    served.write_bytes(gzip.compress(json.dumps(collection).encode()))
    store = JobStore(client.app.state.settings.db_path)
    try:
        claimed = store.claim(os.getpid())
        assert claimed.id == job["id"]
        assert store.finish(job["id"], claimed.attempt, "succeeded", run_dir=str(tmp_path), geojson_path=str(served),
                            classes=[{"name": "Tissue 1", "color": [1, 2, 3], "objects": 0}],
                            summary={"k": 1, "tissue_tiles": 0, "features": 0, "embedding_cache": "miss",
                                     "warnings": [], "report": False, "run_dir": str(tmp_path)})
    finally:
        store.close()
    zipped = client.get(f"/jobs/{job['id']}/geojson", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip" and zipped.json() == collection
    plain = client.get(f"/jobs/{job['id']}/geojson", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and json.loads(plain.content) == collection
    assert plain.headers["content-type"].startswith("application/geo+json")
    assert client.get(f"/jobs/{job['id']}/classes").json()["classes"][0]["color"] == [1, 2, 3]
    _error(client.get(f"/jobs/{job['id']}/report"), 404, None, "no PDF report")
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    report = client.get(f"/jobs/{job['id']}/report")
    assert report.status_code == 200 and report.headers["content-type"] == "application/pdf"
    assert client.delete(f"/jobs/{job['id']}").status_code == 204  # a finished job is deleted
    _error(client.get(f"/jobs/{job['id']}/geojson"), 404, None, "no job")
    assert report.status_code == 200 and (tmp_path / "report.pdf").is_file()  # outside the job's folder: kept


def test_serve_without_the_server_extra(monkeypatch, capsys, roots, tmp_path):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if uvicorn were not installed
    assert main(["serve", "--root", str(roots["inside"]), "--data-dir", str(tmp_path)]) == 1
    assert "pip install 'tumls-qp[server]'" in capsys.readouterr().err


# --- storage: retention, limits, a full disk ---------------------------------------------------------------------

def _finished_job(store, jobs_dir, finished_at: float, size: int, state: str = "succeeded") -> str:
    """A job that ended at ``finished_at`` with ``size`` bytes of results in its folder."""
    job = store.add(image_path="/x.tif", image_name="x.tif", request={}, config={}, warnings=[])
    claimed = store.claim(os.getpid())
    assert claimed.id == job.id
    store.finish(job.id, claimed.attempt, "failed" if state == "failed" else "succeeded", error="e")
    store._conn.execute("UPDATE jobs SET finished_at = ? WHERE id = ?", (finished_at, job.id))
    folder = jobs_dir / job.id / "attempt-1"
    folder.mkdir(parents=True)
    (folder / "results.bin").write_bytes(os.urandom(size))
    return job.id


def _cache_entry(cache_dir, made: float, size: int) -> str:
    key = os.urandom(16).hex()
    (cache_dir / key).mkdir(parents=True)
    (cache_dir / key / "tiles.npz").write_bytes(os.urandom(size))
    os.utime(cache_dir / key, (made, made))
    return key


def test_retention_deletes_old_finished_jobs_and_cache_entries(roots, tmp_path):
    now, day, mb = 1_900_000_000.0, 86_400.0, 2**20
    settings = ServerSettings(data_dir=tmp_path / "data", roots=(roots["inside"],), keep_days=7)
    with api_client(create_app(settings, IdleRunner())) as c:
        jobs = c.app.state.jobs
        store = jobs.store
        old = _finished_job(store, settings.jobs_dir, now - 30 * day, mb)
        old_failed = _finished_job(store, settings.jobs_dir, now - 8 * day, mb, state="failed")
        recent = _finished_job(store, settings.jobs_dir, now - 1 * day, mb)
        queued = c.post("/jobs", json=job_body(roots["slide"])).json()["id"]
        stale_cache = _cache_entry(settings.cache_dir, now - 10 * day, mb)
        fresh_cache = _cache_entry(settings.cache_dir, now - 1 * day, mb)
        staging = settings.cache_dir / f".{'0' * 32}.abcd1234.partial"  # a cache entry being written: never
        staging.mkdir()
        os.utime(staging, (now - 20 * day, now - 20 * day))
        (settings.dictionaries_dir).mkdir(parents=True)
        (settings.dictionaries_dir / f"{'a' * 32}.tumlsdict").write_bytes(b"z")
        os.utime(settings.dictionaries_dir / f"{'a' * 32}.tumlsdict", (now - 300 * day, now - 300 * day))

        deleted = jobs.enforce_retention(now=now)
        assert sorted((e.kind, e.key) for e in deleted) == sorted(
            [("job", old), ("job", old_failed), ("cache", stale_cache)])
        assert all(e.size >= mb for e in deleted)
        for job_id in (old, old_failed):
            _error(c.get(f"/jobs/{job_id}"), 404, None, "deleted 7 days after")
            assert not (settings.jobs_dir / job_id).exists()
        assert c.get(f"/jobs/{recent}").status_code == 200 and (settings.jobs_dir / recent).is_dir()
        assert c.get(f"/jobs/{queued}").json()["state"] == "queued"
        assert (settings.cache_dir / fresh_cache).is_dir() and not (settings.cache_dir / stale_cache).exists()
        assert staging.is_dir() and (settings.dictionaries_dir / f"{'a' * 32}.tumlsdict").is_file()
        assert jobs.enforce_retention(now=now) == []


def test_size_cap_deletes_oldest_first_then_refuses_writes(roots, tmp_path):
    now, mb = 1_900_000_000.0, 2**20
    settings = ServerSettings(data_dir=tmp_path / "data", roots=(roots["inside"],), keep_days=None,
                              max_data_gb=1.0)
    with api_client(create_app(settings, IdleRunner())) as c:
        jobs = c.app.state.jobs
        first = _finished_job(jobs.store, settings.jobs_dir, now - 500, 2 * mb)
        cache = _cache_entry(settings.cache_dir, now - 400, 2 * mb)
        third = _finished_job(jobs.store, settings.jobs_dir, now - 300, 2 * mb)
        newest = _finished_job(jobs.store, settings.jobs_dir, now - 100, 2 * mb)
        from tumls_qp.server.retention import disk_bytes
        total = disk_bytes(settings.data_dir)
        # A cap 3 MB under the folder's size: the two oldest entries (a job, then a cache entry) go.
        jobs.settings = dataclasses.replace(settings, max_data_gb=(total - 3 * mb) / 2**30)
        deleted = jobs.enforce_retention(now=now)
        assert [(e.kind, e.key) for e in deleted] == [("job", first), ("cache", cache)]
        assert c.get(f"/jobs/{third}").status_code == 200 and c.get(f"/jobs/{newest}").status_code == 200
        assert c.post("/jobs", json=job_body(roots["slide"])).status_code == 202
        # Over the cap with nothing left to delete but queued jobs: writes answer 507, reads still work.
        jobs.settings = dataclasses.replace(settings, max_data_gb=1 / 2**30)
        jobs.enforce_retention(now=now)
        _error(c.post("/jobs", json=job_body(roots["slide"])), 507, None, "--max-data-gb")
        assert c.get("/jobs").status_code == 200


def test_a_full_disk_is_507_never_500(roots, tmp_path, monkeypatch):
    settings = ServerSettings(data_dir=tmp_path / "data", roots=(roots["inside"],), min_free_mb=1e8)
    with api_client(create_app(settings, IdleRunner())) as c:
        body = _error(c.post("/jobs", json=job_body(roots["slide"])), 507, None, "data folder full")
        assert re.search(r"\(\d+\.\d MB free in ", body["detail"]) and "--min-free-mb" in body["detail"]
        assert c.get("/jobs").json()["jobs"] == []  # nothing was written
    settings = ServerSettings(data_dir=tmp_path / "data2", roots=(roots["inside"],), min_free_mb=0)
    with api_client(create_app(settings, IdleRunner())) as c:
        # The disk fills between the check and the write: SQLite says so, the client gets 507, no job exists.
        def full(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(JobStore, "add", full)
        _error(c.post("/jobs", json=job_body(roots["slide"])), 507, None, "data folder full")
        monkeypatch.undo()
        assert c.get("/jobs").json()["jobs"] == []
        # Any write of any route: ENOSPC is a 507; another unexpected error a 500 with the JSON body.
        from tumls_qp.server.jobs import JobService

        def no_space(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(JobService, "list", no_space)
        _error(c.get("/jobs"), 507, None, "data folder full")
        monkeypatch.setattr(JobService, "list", lambda *a, **k: 1 / 0)
        _error(c.get("/jobs"), 500, None, "internal error (ZeroDivisionError)")
