"""A fuzz pass over the endpoints: malformed bodies, huge numbers, wrong types and path tricks get a 4xx,
never a 500, and nothing outside the allowed roots is opened (an audit hook watches every open).

Also what a hostile page or a careless client found once, each as a strategy: a Host header that is
not the server's (DNS rebinding), ``~`` in a path parameter, a NUL byte, ``parameters`` nested
hundreds of levels deep, NaN / infinite / 1e400 coordinates in the seeds of a real job."""

from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from server_helpers import IdleRunner, api_client, bench_out, job_body, run_queued, small_slide  # noqa: E402
from tumls_qp.server.app import create_app  # noqa: E402
from tumls_qp.server.settings import ServerSettings, is_ip_address  # noqa: E402

#: The fuzz world's one real analysis: seconds (64 µm tiles, one epoch, no nuclei, no report).
ANALYSIS = {"tiles": {"tile_um": 64.0}, "embedding": {"max_epochs": 1, "device": "cpu"}, "output": {"report": False},
            "nuclei": {"enabled": False}}
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
    (inside / "~").mkdir()  # a folder really named "~", inside the root
    (inside / "~" / "weights.pth").write_bytes(b"x")
    (outside / "weights.pth").write_bytes(b"x")
    settings_ = ServerSettings(data_dir=base / "data", roots=(inside,), max_queued=10_000, max_body_bytes=64 * 1024)
    with api_client(create_app(settings_, IdleRunner()), raise_server_exceptions=False) as client:
        # One real succeeded analysis, for the seeds (run in this process, as a worker would).
        analysis = client.post("/jobs", json=job_body(slide, parameters=ANALYSIS)).json()
        assert run_queued(settings_) == ["succeeded"]
        _watch["prefix"] = str(outside.resolve())
        yield {"client": client, "slide": slide, "inside": inside, "outside": outside, "job": analysis["id"],
               "settings": settings_}
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


# --- what a hostile page or a careless client found ----------------------------------------------------------------

LOOPBACK_HOSTS = ["127.0.0.1:8765", "localhost:8765", "[::1]:8765", "127.0.0.1", "LOCALHOST"]


@pytest.mark.parametrize("method, path", [("GET", "/jobs"), ("POST", "/jobs"), ("DELETE", "/jobs/{job}"),
                                          ("GET", "/jobs/{job}/geojson"), ("GET", "/health"), ("GET", "/docs")])
def test_dns_rebinding_is_refused(world, method, path):
    """A page served from attacker.example that rebinds its name to 127.0.0.1 sends Host: attacker.example."""
    headers = {"Host": "attacker.example:8765", "Origin": "http://attacker.example:8765"}
    response = world["client"].request(method, path.format(job=world["job"]), headers=headers,
                                       json=job_body(world["slide"]) if method == "POST" else None)
    _check(response, "foreign Host", {400})
    assert response.json()["field"] == "Host" and "--allowed-host" in response.json()["detail"]
    assert world["client"].get(f"/jobs/{world['job']}").json()["state"] == "succeeded"  # DELETE did nothing


@FUZZ
@given(host=st.from_regex(r"[A-Za-z0-9.\-]{1,40}(:[0-9]{1,5})?", fullmatch=True) | st.text(max_size=40)
       | st.sampled_from(LOOPBACK_HOSTS + ["127.0.0.1.attacker.example", "localhost.", "[::2]", "127.0.0.2",
                                           "127.0.0.1:8765@attacker.example", "0.0.0.0", ""]))
def test_host_headers(world, host):
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        return  # not sendable as a header
    if any(c in host for c in "\r\n\0"):
        return
    response = world["client"].get("/version", headers={"Host": host})
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    # The server's names, or any IP address (an address cannot be rebound to another host).
    allowed = (name.strip("[]").lower() in {"localhost", "127.0.0.1", "::1"} or is_ip_address(name.strip("[]"))) \
        and re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]/@\s]+)(:[0-9]{1,5})?", host) is not None
    _check(response, "Host header", {200} if allowed else {400})


TILDE_PATHS = [("~/weights.pth", 403), ("~root/.bashrc", 403), ("~", 403), ("~/../weights.pth", 403),
               ("~nobody-at-all/x.pth", 422), ("./~/weights.pth", 422), ("weights.pth", 422),
               ("{inside}/~/weights.pth", 202)]


@pytest.mark.parametrize("value, status", TILDE_PATHS)
def test_tilde_is_expanded_before_the_roots_check(world, monkeypatch, value, status):
    """``~`` in a path parameter is expanded once, before the roots check, and the job carries the result:
    the server's own folder under a root must not make ``~/x`` (the home folder, outside) pass."""
    monkeypatch.setenv("HOME", str(world["outside"]))
    monkeypatch.chdir(world["inside"])  # the server's working folder lies under a root
    value = value.format(inside=world["inside"])
    response = world["client"].post("/jobs", json=job_body(world["slide"], parameters={
        "embedding": {"init_resnet18": value}}))
    _check(response, "~ in a path", {status})
    if status == 202:  # the job carries the path as checked
        stored = world["client"].app.state.jobs.store.get(response.json()["id"]).config
        assert stored["embedding"]["init_resnet18"] == str(world["inside"].resolve() / "~" / "weights.pth")
    else:
        assert response.json()["field"] == "parameters.embedding.init_resnet18"
        assert status == 422 or "outside the folders" in response.json()["detail"]


@FUZZ
@given(before=st.text(max_size=30), after=st.text(max_size=30),
       where=st.sampled_from(["embedding.init_resnet18", "embedding.device", "output.embedding_colours", "key"]))
def test_nul_bytes_in_parameters(world, before, after, where):
    text = before + "\0" + after
    section, _, name = where.partition(".")
    parameters = {section: {name: text}} if name else {"embedding": {text: 1}}
    response = world["client"].post("/jobs", json=job_body(world["slide"], parameters=parameters))
    _check(response, "NUL byte", {422})
    assert response.json()["field"] == "parameters" and "NUL" in response.json()["detail"]


@FUZZ
@given(length=st.integers(4097, 20_000), segment=st.integers(1, 400))
def test_over_long_paths(world, length, segment):
    value = str(world["inside"]) + ("/" + "a" * segment) * (length // (segment + 1) + 1)
    response = world["client"].post("/jobs", json=job_body(world["slide"], parameters={
        "embedding": {"init_resnet18": value[:length]}}))
    _check(response, "over-long path", {422})
    assert response.json()["field"] == "parameters.embedding.init_resnet18"


def _nest(depth: int, kinds: list[bool]) -> object:
    value: object = 1
    for i in range(depth):
        value = {"a": value} if kinds[i % len(kinds)] else [value]
    return value


@FUZZ
@given(depth=st.integers(8, 1200), kinds=st.lists(st.booleans(), min_size=1, max_size=5),
       section=st.sampled_from(["tiles", "embedding", "x"]))
def test_deeply_nested_parameters(world, depth, kinds, section):
    """Nesting beyond 8 levels is refused with 422 naming ``parameters`` (a few KB of JSON once took the
    server down with a RecursionError); deeper than JSON itself can be read is a 400."""
    body = json.dumps(job_body(world["slide"], parameters={section: _nest(depth, kinds)}))
    response = world["client"].post("/jobs", content=body, headers={"content-type": "application/json"})
    _check(response, "deep parameters", {400, 422})
    if response.status_code == 422:
        assert response.json()["field"] == "parameters", response.text
        assert "levels deep" in response.json()["detail"]


_TOKENS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e308", "-0.0", "1e9", "1000000001"]


def _coordinate(low: int, high: int) -> st.SearchStrategy:
    """Mostly in [low, high]; one coordinate in forty anything: any finite float, NaN, ±Infinity, 1e400."""
    odd = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([f"@@{t}@@" for t in _TOKENS])
    return st.integers(0, 39).flatmap(lambda i: odd if i == 0 else st.floats(low, high) | st.integers(low, high))


def _geometry(x_low: int, x_high: int) -> st.SearchStrategy:
    """Point, LineString, Polygon or a GeometryCollection of a MultiPolygon nested 0-12 levels, in x_low..x_high
    (a position has a z now and then)."""
    flat = st.tuples(_coordinate(x_low, x_high), _coordinate(100, 900)).map(list)
    with_z = st.tuples(_coordinate(x_low, x_high), _coordinate(100, 900), _coordinate(0, 5)).map(list)
    position = st.integers(0, 9).flatmap(lambda i: with_z if i == 0 else flat)
    return st.one_of(
        st.builds(lambda c: {"type": "Point", "coordinates": c}, position),
        st.builds(lambda cs: {"type": "LineString", "coordinates": cs}, st.lists(position, min_size=2, max_size=5)),
        st.builds(lambda ring: {"type": "Polygon", "coordinates": [ring + ring[:1]]},
                  st.lists(position, min_size=3, max_size=6)),
        st.builds(lambda c, n: {"type": "GeometryCollection", "geometries": [_nest_geometry(c, n)]},
                  st.lists(position, min_size=3, max_size=3), st.integers(0, 12)),
    )


def _nest_geometry(triangle: list, depth: int) -> dict:
    """A MultiPolygon of one triangle when ``depth`` is 2 (the valid nesting); wrongly nested otherwise."""
    coordinates: object = triangle + triangle[:1]
    for _ in range(depth):
        coordinates = [coordinates]
    return {"type": "MultiPolygon", "coordinates": coordinates}


def _seed(name: str) -> st.SearchStrategy:
    """A seed on the small slide's stroma (left half) or epithelium (right half), now and then malformed."""
    x_low, x_high = (60, 440) if name == "Stroma" else (600, 980)
    return st.fixed_dictionaries({"class": st.just(name), "geometry": _geometry(x_low, x_high)})


@FUZZ
@given(seeds=st.tuples(_seed("Tumor"), _seed("Stroma"), st.lists(_seed("Tumor") | _seed("Stroma"), max_size=2))
       .map(lambda t: [t[0], t[1], *t[2]]))
def test_seed_coordinates(world, seeds):
    """Seeds on a real analysis: NaN, infinite, 1e400 or out-of-range coordinates and over-deep geometries are a
    422 naming the seed; anything else is answered (200) or refused with its reason (422), never a 500."""
    text = json.dumps({"seeds": seeds})
    text = re.sub(r'"@@([^@]+)@@"', r"\1", text)
    response = world["client"].post(f"/jobs/{world['job']}/seeded", content=text,
                                    headers={"content-type": "application/json"})
    _check(response, "seed coordinates", {200, 422})
    parsed = json.loads(text)  # what the server read (Python's json reads NaN, Infinity and 1e400)

    def numbers(value):
        if isinstance(value, list):
            for item in value:
                yield from numbers(item)
        elif isinstance(value, dict):
            for item in value.values():
                yield from numbers(item)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield value

    if any(not math.isfinite(x) or abs(x) > 1e9 for x in numbers(parsed)):
        assert response.status_code == 422 and response.json()["field"].startswith("seeds["), response.text
