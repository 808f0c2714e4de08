"""A fuzz pass over the endpoints: malformed bodies, huge numbers, wrong types and path tricks get a 4xx,
never a 500, and nothing outside the allowed roots is opened (an audit hook watches every open)."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
hypothesis = pytest.importorskip("hypothesis")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from server_helpers import IdleRunner, bench_out, job_body, small_slide  # noqa: E402
from tumls_qp.server.app import create_app  # noqa: E402
from tumls_qp.server.settings import ServerSettings  # noqa: E402

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# --- opens outside the roots, seen by an audit hook (hooks cannot be removed: this one is off unless armed) ---
_watch: dict[str, object] = {"prefix": None, "hits": []}
_watch_lock = threading.Lock()


def _audit(event: str, args: tuple) -> None:
    prefix = _watch["prefix"]
    if prefix is None or event not in ("open", "os.listdir", "os.scandir"):
        return
    target = args[0] if args else None
    if isinstance(target, (str, bytes, os.PathLike)):
        path = os.fsdecode(target)
        if os.path.realpath(path).startswith(prefix):  # type: ignore[arg-type]
            with _watch_lock:
                _watch["hits"].append(path)  # type: ignore[union-attr]


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz")
    inside, outside = base / "inside", base / "outside"
    slide = small_slide(inside)
    secret = small_slide(outside, "secret.tif")
    (outside / "notes.txt").write_text("secret")
    (inside / "link.tif").symlink_to(secret)
    (inside / "linkdir").symlink_to(outside, target_is_directory=True)
    (inside / "loop").symlink_to(inside / "loop")
    settings_ = ServerSettings(data_dir=base / "data", roots=(inside,), max_queued=10_000, max_body_bytes=64 * 1024)
    with TestClient(create_app(settings_, IdleRunner()), raise_server_exceptions=False) as client:
        _watch["prefix"] = str(outside.resolve())
        yield {"client": client, "slide": slide, "inside": inside, "outside": outside}
        _watch["prefix"] = None
    summary = {f"{kind}: {status}": n for (kind, status), n in sorted(_STATS.items())}
    print("fuzz statuses:", json.dumps(summary, indent=1))
    bench_out("fuzz_test", {"requests": sum(_STATS.values()), "statuses": summary,
                            "server_errors": sum(n for (_, status), n in _STATS.items() if status >= 500),
                            "opened_outside_roots": list(_watch["hits"])})  # type: ignore[arg-type]


_STATS: Counter = Counter()


def _check(response, kind: str, allowed: set[int]) -> None:
    _STATS[(kind, response.status_code)] += 1
    assert not _watch["hits"], f"{kind}: opened outside the roots: {_watch['hits']}"
    assert response.status_code < 500, f"{kind}: {response.status_code} {response.text[:500]}"
    assert response.status_code in allowed, f"{kind}: {response.status_code} {response.text[:500]}"
    body = response.json()
    if response.status_code >= 400:
        assert isinstance(body.get("detail"), str) and body["detail"], body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
FIELDS = ["uris", "width", "height", "pixel_size_um", "image_name", "server_type", "parameters"]


@FUZZ
@given(body=json_values)
def test_any_json_body(world, body):
    _check(world["client"].post("/jobs", json=body), "any JSON body", {422})


@FUZZ
@given(field=st.sampled_from(FIELDS + ["extra"]), value=json_values, drop=st.booleans())
def test_one_field_changed(world, field, value, drop):
    body = job_body(world["slide"])
    if drop and field in body:
        del body[field]
    else:
        body[field] = value
    _check(world["client"].post("/jobs", json=body), "one field changed", {202, 403, 422})


@FUZZ
@given(parameters=st.dictionaries(st.sampled_from(["seed", "slide", "tiles", "embedding", "clusters",
                                                    "representatives", "output", "x"]),
                                  json_values | st.dictionaries(st.text(max_size=20), json_values, max_size=3),
                                  max_size=3))
def test_parameters(world, parameters):
    _check(world["client"].post("/jobs", json=job_body(world["slide"], parameters=parameters)), "parameters",
           {202, 403, 422})


@FUZZ
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
       content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                     "multipart/form-data; boundary=x", "", "application/json; charset=latin-1"]))
def test_raw_bodies(world, raw, content_type):
    headers = {"content-type": content_type} if content_type else {}
    _check(world["client"].post("/jobs", content=raw, headers=headers), "raw bytes", {400, 413, 415, 422})


URI_TRICKS = [
    "file:{outside}/secret.tif", "file:{inside}/../outside/secret.tif", "file:{inside}/link.tif",
    "file:{inside}/linkdir/secret.tif", "file:{inside}/linkdir/notes.txt", "file:{inside}/%2e%2e/outside/secret.tif",
    "file:{inside}/./../outside/./secret.tif", "file:{inside}/loop", "file://localhost{outside}/secret.tif",
    "file://evil.example/{outside}/secret.tif", "file:////fileserver/share/secret.tif", "http://127.0.0.1/x.svs",
    "https://example.org/secret.tif", "ftp://example.org/x.svs", "s3://bucket/x.svs", "{outside}/secret.tif",
    "file:secret.tif", "file:{inside}/small.tif%00", "file:{inside}/small.tif#frag", "file:{inside}/%ff%fe",
    "file:/C:/slides/x.svs", "file:{inside}/" + "a" * 5000, "file:{inside}/nonexistent.svs", "file:{inside}",
    "file:/dev/zero", "file:/proc/self/environ", "file:/etc/passwd", "file:~/x.svs", "", "file:", "file://",
    "\u202efile:/x.svs", "file:{inside}/small.tif\n", "FILE:{outside}/secret.tif", "File://LOCALHOST{outside}/s.tif",
]


@pytest.mark.parametrize("uri", URI_TRICKS)
def test_path_tricks(world, uri):
    uri = uri.format(inside=world["inside"], outside=world["outside"])
    response = world["client"].post("/jobs", json=job_body(world["slide"], uris=[uri]))
    _check(response, "path trick", {403, 422})
    listed = world["client"].get("/jobs", params={"image_uri": uri})
    _check(listed, "path trick as a filter", {200, 403, 422})


@FUZZ
@given(job_id=st.text(max_size=80), suffix=st.sampled_from(["", "/geojson", "/classes", "/report"]),
       method=st.sampled_from(["GET", "DELETE"]))
def test_job_ids(world, job_id, suffix, method):
    from urllib.parse import quote

    response = world["client"].request(method, f"/jobs/{quote(job_id, safe='')}{suffix}")
    # "/jobs/" is redirected to the list of jobs.
    _check(response, "job id", {404, 405, 409, 422} | ({200} if not job_id and not suffix else set()))


@FUZZ
@given(params=st.dictionaries(st.sampled_from(["limit", "state", "image_uri", "image_name", "x"]),
                              st.text(max_size=30) | st.integers(-(10**30), 10**30).map(str), max_size=4))
def test_list_queries(world, params):
    _check(world["client"].get("/jobs", params=params), "list query", {200, 403, 422})


def test_deep_nesting_and_huge_numbers(world):
    client = world["client"]
    deep = "[" * 100_000 + "]" * 100_000
    _check(client.post("/jobs", content=deep[:60_000], headers={"content-type": "application/json"}),
           "deep nesting", {400, 413, 422})
    huge = json.dumps(job_body(world["slide"])).replace("1024", "9" * 5000, 1)
    _check(client.post("/jobs", content=huge, headers={"content-type": "application/json"}), "huge integer",
           {400, 422})
    big_float = json.dumps(job_body(world["slide"])).replace("0.5", "1e400", 1)
    _check(client.post("/jobs", content=big_float, headers={"content-type": "application/json"}), "1e400",
           {422})
    _check(client.post("/jobs", content=b"x" * 70_000, headers={"content-type": "application/json"}), "too big",
           {413})
    assert Path(world["slide"]).exists()
