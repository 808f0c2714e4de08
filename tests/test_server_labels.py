"""The human-in-the-loop endpoints: seeded clustering, prototype clusters, dictionaries, embedding colours.

One analysis of a synthetic two-tissue slide (stroma left of x ≈ 1536 px, epithelium right) is run in this
process by the worker's own ``run_job``; the API is driven through TestClient with a runner that runs nothing,
and queued dictionary jobs are run the same way.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sqlite3
import threading
import zipfile

import pytest

pytest.importorskip("fastapi")

from server_helpers import IdleRunner, api_client, job_body, run_queued  # noqa: E402
from tumls_qp.outputs.geojson import validate_geojson  # noqa: E402
from tumls_qp.outputs.qupath import DICTIONARY_TAG, PROTOTYPES_TAG, SEEDED_TAG, TAG_MEASUREMENT  # noqa: E402
from tumls_qp.server.app import create_app  # noqa: E402
from tumls_qp.server.settings import ServerSettings  # noqa: E402
from tumls_qp.server.store import JobStore  # noqa: E402

PARAMETERS = {"tiles": {"tile_um": 64.0}, "embedding": {"max_epochs": 4, "device": "cpu"}, "output": {"report": False},
              "nuclei": {"enabled": False}}
STROMA = {"class": "Stroma", "color": [40, 160, 40], "geometry": {"type": "Point", "coordinates": [900, 1024]}}
TUMOR = {"class": "Tumor", "color": [200, 0, 0],
         "geometry": {"type": "LineString", "coordinates": [[2100, 900], [2300, 1150]]}}


@pytest.fixture(scope="module")
def hitl(slides, tmp_path_factory):
    base = tmp_path_factory.mktemp("hitl")
    slide = slides["two-tissues"]
    settings = ServerSettings(data_dir=base / "data", roots=(slide.parent,), base_parameters=PARAMETERS)
    with api_client(create_app(settings, IdleRunner())) as client:
        job = client.post("/jobs", json=job_body(slide)).json()
        assert run_queued(settings) == ["succeeded"]
        yield {"client": client, "slide": slide, "settings": settings, "job": client.get(f"/jobs/{job['id']}").json()}


def _error(response, status, field=None, fragment=""):
    assert response.status_code == status, response.text
    body = response.json()
    if field is not None:
        assert body["field"] == field, body
    assert fragment in body["detail"], body["detail"]
    return body


def _tiles(collection):
    return [f for f in collection["features"] if f["properties"]["objectType"] == "tile"]


def test_endpoints_are_in_the_openapi_schema(hitl):
    paths = set(hitl["client"].get("/openapi.json").json()["paths"])
    assert {"/jobs/{job_id}/seeded", "/jobs/{job_id}/prototypes", "/jobs/{job_id}/embedding-colours", "/dictionaries",
            "/dictionaries/{dictionary_id}", "/dictionaries/{dictionary_id}/apply"} <= paths
    job = hitl["job"]
    assert job["kind"] == "analysis" and job["result"]["embedding_colours"] is True
    assert {"seeded", "prototypes", "embedding_colours"} <= set(job["links"])


def test_seeded_classifies_every_tile_from_the_seeds(hitl):
    client, job = hitl["client"], hitl["job"]
    response = client.post(f"/jobs/{job['id']}/seeded", json={"seeds": [STROMA, TUMOR]},
                           headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/geo+json")
    collection = response.json()
    assert validate_geojson(collection) == []
    tiles = _tiles(collection)
    assert len(tiles) == job["result"]["tissue_tiles"]
    for feature in collection["features"]:
        measurements = feature["properties"]["measurements"]
        assert measurements[SEEDED_TAG] == job["number"] and TAG_MEASUREMENT not in measurements
    colours = {f["properties"]["classification"]["name"]: f["properties"]["classification"]["color"] for f in tiles}
    assert colours == {"Stroma": [40, 160, 40], "Tumor": [200, 0, 0]}
    assert all(0 <= f["properties"]["measurements"]["SIC confidence"] <= 1 for f in tiles)
    regions = [f for f in collection["features"] if f["properties"]["objectType"] == "annotation"]
    assert sorted(f["properties"]["name"] for f in regions) == ["Stroma (SIC)", "Tumor (SIC)"]

    # The tissues follow the scene: stroma left, epithelium right.
    def share(side, name):
        xs = [(f["properties"]["classification"]["name"], min(p[0] for p in f["geometry"]["coordinates"][0]))
              for f in tiles]
        chosen = [n for n, x in xs if (x + 128 < 1200 if side == "left" else x > 1900)]
        return chosen.count(name) / len(chosen)

    assert share("left", "Stroma") > 0.9 and share("right", "Tumor") > 0.9
    summary = json.loads(response.headers["x-tumls-qp-summary"])
    assert [c["name"] for c in summary["classes"]] == ["Stroma", "Tumor"]
    assert sum(c["tiles"] for c in summary["classes"]) == len(tiles) and summary["seconds"] < 30

    zipped = client.post(f"/jobs/{job['id']}/seeded", json={"seeds": [STROMA, TUMOR]},
                         headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert len(_tiles(zipped.json())) == len(tiles)


@pytest.mark.parametrize("seeds, field, fragment", [
    ([STROMA], "seeds", "two"),
    ([STROMA, {**STROMA, "geometry": {"type": "Point", "coordinates": [2200, 1000]}}], "seeds", "two"),
    ([STROMA, {**TUMOR, "geometry": {"type": "Point", "coordinates": [20, 20]}}], "seeds", "covers no tissue tile"),
    ([STROMA, {**TUMOR, "geometry": {"type": "Polygon", "coordinates": "nonsense"}}], "seeds", "unreadable"),
    ([STROMA, {**TUMOR, "geometry": {"coordinates": [1, 2]}}], "seeds", "GeoJSON geometry"),
    ([STROMA, {**TUMOR, "class": "Tumor: grade 2"}], "seeds", "':'"),
    ([STROMA, {**TUMOR, "color": [300, 0, 0]}], "seeds[1].color[0]", "less than or equal to 255"),
    ([STROMA, {**TUMOR, "class": ""}], "seeds[1].class", "at least 1"),
    ([], "seeds", "at least 1"),
])
def test_unusable_seeds_are_422_with_the_reason(hitl, seeds, field, fragment):
    response = hitl["client"].post(f"/jobs/{hitl['job']['id']}/seeded", json={"seeds": seeds})
    _error(response, 422, field, fragment)


def test_seeded_positive_class_and_job_states(hitl, tmp_path):
    client, job = hitl["client"], hitl["job"]
    binary = client.post(f"/jobs/{job['id']}/seeded", json={"seeds": [STROMA, TUMOR], "positive": "Tumor"})
    assert binary.status_code == 200 and json.loads(binary.headers["x-tumls-qp-summary"])["mode"] == "binary"
    _error(client.post(f"/jobs/{job['id']}/seeded", json={"seeds": [STROMA, TUMOR], "positive": "Necrosis"}), 422,
           "positive", "Necrosis")
    _error(client.post("/jobs/0123456789abcdef0123456789abcdef/seeded", json={"seeds": [STROMA, TUMOR]}), 404,
           None, "no job")
    queued = client.post("/jobs", json=job_body(hitl["slide"])).json()
    try:
        for response in (client.post(f"/jobs/{queued['id']}/seeded", json={"seeds": [STROMA, TUMOR]}),
                         client.get(f"/jobs/{queued['id']}/prototypes"),
                         client.get(f"/jobs/{queued['id']}/embedding-colours")):
            _error(response, 409, None, "is queued")
    finally:
        client.delete(f"/jobs/{queued['id']}")


def test_embedding_colours_layer(hitl):
    client, job = hitl["client"], hitl["job"]
    response = client.get(f"/jobs/{job['id']}/embedding-colours", headers={"Accept-Encoding": "gzip"})
    assert response.status_code == 200 and response.headers["content-encoding"] == "gzip"
    collection = response.json()
    assert validate_geojson(collection) == []
    assert len(collection["features"]) == job["result"]["tissue_tiles"]
    assert {f["properties"]["classification"]["name"] for f in collection["features"]} == {"Embedding colour"}
    assert {f["properties"]["measurements"][TAG_MEASUREMENT] for f in collection["features"]} == {job["number"]}
    assert len({tuple(f["properties"]["color"]) for f in collection["features"]}) > 10


def test_prototypes_named_into_a_dictionary_applied_to_an_image(hitl):
    client, job, settings = hitl["client"], hitl["job"], hitl["settings"]
    naming = {"job": job["id"], "k": 2, "names": {"1": "Stroma", "2": "Tumor"}}
    _error(client.post("/dictionaries", json=naming), 422, "job", "no prototype clusters")
    assert client.get("/dictionaries").json() == {"dictionaries": []}

    # Clusters to name: k from the elbow rule, each cluster a region and its central tiles, class "Cluster j".
    response = client.get(f"/jobs/{job['id']}/prototypes")
    assert response.status_code == 200, response.text
    clusters = response.json()
    assert validate_geojson(clusters) == []
    k = int(clusters["features"][0]["properties"]["measurements"]["Prototype clusters"])
    assert 2 <= k <= 50
    by_cluster: dict[int, list] = {}
    for feature in clusters["features"]:
        properties = feature["properties"]
        j = int(properties["measurements"]["Prototype"])
        assert properties["classification"]["name"] == f"Cluster {j}"
        assert properties["measurements"][PROTOTYPES_TAG] == job["number"]
        by_cluster.setdefault(j, []).append(feature)
    assert sorted(by_cluster) == list(range(1, k + 1))
    assert all(len(features) >= 2 for features in by_cluster.values())  # the region and central tiles
    again = client.get(f"/jobs/{job['id']}/prototypes").json()  # kept in the run folder: the same clusters
    assert [f["id"] for f in again["features"]] == [f["id"] for f in clusters["features"]]
    three = client.get(f"/jobs/{job['id']}/prototypes", params={"k": 3, "t": 2}).json()
    assert {int(f["properties"]["measurements"]["Prototype clusters"]) for f in three["features"]} == {3}
    assert len([f for f in three["features"] if "Rank" in f["properties"]["measurements"]]) == 6
    _error(client.get(f"/jobs/{job['id']}/prototypes", params={"k": 1}), 422, "k")
    _error(client.post("/dictionaries", json={**naming, "k": 5}), 422, "k", "now has 3")

    # Name each cluster by where its tiles lie (stroma left, epithelium right), one as mixed.
    def side(features):
        region = next(f for f in features if "Rank" not in f["properties"]["measurements"])
        coordinates = region["geometry"]["coordinates"]
        rings = [coordinates[0]] if region["geometry"]["type"] == "Polygon" else [p[0] for p in coordinates]
        xs = [x for ring in rings for x, _ in ring]
        return sum(xs) / len(xs)

    groups: dict[int, list] = {}
    for feature in three["features"]:
        groups.setdefault(int(feature["properties"]["measurements"]["Prototype"]), []).append(feature)
    order = sorted(groups, key=lambda j: side(groups[j]))
    names = {str(order[0]): "Stroma", str(order[-1]): "Tumor", str(order[1]): "mixed"}
    for bad, field, fragment in [
        ({"names": {"1": "Stroma", "2": "Stroma"}}, "names", "at least two classes"),
        ({"names": {**names, "7": "Tumor"}}, "names", "cluster 7 does not exist"),
        ({"names": {**names, "x": "Tumor"}}, "names", "integers"),
        ({"names": names, "colors": {"Necrosis": [1, 2, 3]}}, "names", "Necrosis"),
        ({"job": "0123456789abcdef0123456789abcdef"}, None, "no job"),
    ]:
        body = {"job": job["id"], "k": 3, "names": names, **bad}
        _error(client.post("/dictionaries", json=body), 404 if field is None else 422, field, fragment)
    created = client.post("/dictionaries", json={"job": job["id"], "k": 3, "names": names, "name": "two tissues",
                                                 "colors": {"Tumor": [200, 0, 0], "Stroma": [40, 160, 40]}})
    assert created.status_code == 201, created.text
    info = created.json()
    assert created.headers["location"] == f"/dictionaries/{info['id']}"
    assert sorted((c["name"], c["color"], c["prototypes"]) for c in info["classes"]) == [
        ("Stroma", [40, 160, 40], 1), ("Tumor", [200, 0, 0], 1)]
    assert info["name"] == "two tissues" and info["source_job"] == job["id"] and info["naming"]["mixed"] == [order[1]]
    assert (settings.dictionaries_dir / f"{info['id']}.tumlsdict").is_file()
    assert [d["id"] for d in client.get("/dictionaries").json()["dictionaries"]] == [info["id"]]
    download = client.get(f"/dictionaries/{info['id']}")
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(download.content)) as zf:
        meta = json.loads(zf.read("dictionary.json"))
        assert {"dictionary.json", "prototypes.npy", "model.pt", "model.json"} <= set(zf.namelist())
    assert meta["provenance"]["server"]["job"] == job["id"]
    for path in ("/dictionaries/0123456789abcdef0123456789abcdef", "/dictionaries/..%2Fjobs.sqlite3"):
        response = client.get(path)
        assert response.status_code == 404, response.text

    # Apply: a dictionary job, checked as POST /jobs, served as an analysis's results are.
    image = {k: v for k, v in job_body(hitl["slide"]).items() if k != "parameters"}
    _error(client.post("/dictionaries/0123456789abcdef0123456789abcdef/apply", json=image), 404, None,
           "no dictionary")
    _error(client.post(f"/dictionaries/{info['id']}/apply", json={**image, "query": "xq"}), 422, "query")
    _error(client.post(f"/dictionaries/{info['id']}/apply", json={**image, "width": 10}), 422, "width", "3072")
    _error(client.post(f"/dictionaries/{info['id']}/apply", json={**image, "parameters": {}}), 422, "parameters")
    applied = client.post(f"/dictionaries/{info['id']}/apply", json=image)
    assert applied.status_code == 202, applied.text
    cq = client.post(f"/dictionaries/{info['id']}/apply", json={**image, "query": "cq", "gamma": 2}).json()
    assert applied.json()["kind"] == "dictionary" and applied.json()["state"] == "queued"
    assert run_queued(settings) == ["succeeded", "succeeded"]
    listed = client.get("/jobs", params={"kind": "dictionary"}).json()["jobs"]
    assert [j["id"] for j in listed] == [cq["id"], applied.json()["id"]]
    assert [j["id"] for j in client.get("/jobs", params={"kind": "analysis", "state": "succeeded"}).json()["jobs"]] \
        == [job["id"]]
    _error(client.get("/jobs", params={"kind": "seeded"}), 422, "kind")

    for status, query in ((client.get(f"/jobs/{applied.json()['id']}").json(), "dq"),
                          (client.get(f"/jobs/{cq['id']}").json(), "cq")):
        assert status["state"] == "succeeded", status
        result = status["result"]
        assert result["dictionary"]["query"] == query and result["dictionary"]["id"] == info["id"]
        assert sum(result["dictionary"]["tiles_per_class"].values()) == job["result"]["tissue_tiles"]
        assert "prototypes" not in status["links"] and "embedding_colours" not in status["links"]
        served = client.get(status["links"]["geojson"]).json()
        assert validate_geojson(served) == []
        assert {f["properties"]["measurements"][DICTIONARY_TAG] for f in served["features"]} == {status["number"]}
        assert all(TAG_MEASUREMENT not in f["properties"]["measurements"] for f in served["features"])
        classes = client.get(status["links"]["classes"]).json()["classes"]
        assert {c["name"]: c["color"] for c in classes} == {"Stroma": [40, 160, 40], "Tumor": [200, 0, 0]}
    dq_tiles = _tiles(client.get(f"/jobs/{applied.json()['id']}/geojson").json())
    left = [f["properties"]["classification"]["name"] for f in dq_tiles
            if min(p[0] for p in f["geometry"]["coordinates"][0]) + 128 < 1200]
    assert left.count("Stroma") / len(left) > 0.9

    # The labelled image's embeddings serve seeded clustering too; its prototypes would need the encoder.
    assert client.post(f"/jobs/{cq['id']}/seeded", json={"seeds": [STROMA, TUMOR]}).status_code == 200
    _error(client.get(f"/jobs/{cq['id']}/prototypes"), 422, "job", "dictionary job")
    _error(client.get(f"/jobs/{cq['id']}/embedding-colours"), 404, None, "no embedding-colour layer")

    # Deleting: the file goes; a job queued with it before fails and says why.
    queued = client.post(f"/dictionaries/{info['id']}/apply", json=image).json()
    assert client.delete(f"/dictionaries/{info['id']}").status_code == 204
    assert client.get("/dictionaries").json() == {"dictionaries": []}
    _error(client.delete(f"/dictionaries/{info['id']}"), 404, None, "no dictionary")
    _error(client.get(f"/dictionaries/{info['id']}"), 404, None, "no dictionary")
    assert run_queued(settings) == ["failed"]
    assert "was deleted" in client.get(f"/jobs/{queued['id']}").json()["error"]


def test_dictionary_limits_a_full_disk_and_a_recompute_race(hitl):
    client, job, settings = hitl["client"], hitl["job"], hitl["settings"]
    assert client.get(f"/jobs/{job['id']}/prototypes", params={"k": 3, "t": 2}).status_code == 200
    body = {"job": job["id"], "k": 3, "names": {"1": "Stroma", "2": "Tumor", "3": "mixed"}}
    image = {k: v for k, v in job_body(hitl["slide"]).items() if k != "parameters"}
    first = client.post("/dictionaries", json=body)
    assert first.status_code == 201, first.text
    held = sorted(p.name for p in settings.dictionaries_dir.iterdir())

    # At most --max-dictionaries are kept (one client once made 356 in a minute).
    with api_client(create_app(dataclasses.replace(settings, max_dictionaries=1), IdleRunner())) as other:
        _error(other.post("/dictionaries", json=body), 507, None, "--max-dictionaries 1")
    # A full disk: every write is a 507 naming the free space, and writes nothing; reads still work.
    with api_client(create_app(dataclasses.replace(settings, min_free_mb=1e8), IdleRunner())) as other:
        _error(other.get(f"/jobs/{job['id']}/prototypes", params={"k": 4, "t": 2}), 507, None, "data folder full")
        assert other.get(f"/jobs/{job['id']}/prototypes", params={"k": 3, "t": 2}).status_code == 200
        _error(other.post("/dictionaries", json=body), 507, None, "MB free in")
        _error(other.post(f"/dictionaries/{first.json()['id']}/apply", json=image), 507, None, "data folder full")
        _error(other.post("/jobs", json=job_body(hitl["slide"])), 507, None, "data folder full")
        assert other.get(f"/jobs/{job['id']}").status_code == 200
    assert sorted(p.name for p in settings.dictionaries_dir.iterdir()) == held
    assert client.get("/jobs", params={"state": "queued"}).json()["jobs"] == []

    # Saving reads the clusters under the job's lock, which a recompute holds: it waits, never sees them half-replaced.
    jobs = client.app.state.jobs
    answers: list = []
    with jobs.job_lock(job["id"]):
        waiting = threading.Thread(target=lambda: answers.append(client.post("/dictionaries", json=body)))
        waiting.start()
        waiting.join(1.5)
        assert waiting.is_alive() and not answers
    waiting.join(30)
    assert answers[0].status_code == 201, answers[0].text
    # And the race itself: clusters recomputed (k = 4, 3, 4, ...) while dictionaries are saved. Each save either
    # works or says that the clusters changed; never "no prototype clusters yet" (once 44 answers in 778).
    done = threading.Event()

    def recompute() -> None:
        for i in range(8):
            client.get(f"/jobs/{job['id']}/prototypes", params={"k": 4 if i % 2 == 0 else 3, "t": 2})
        done.set()

    racer = threading.Thread(target=recompute)
    racer.start()
    saves = []
    while not done.is_set():
        saves.append(client.post("/dictionaries", json=body))
    racer.join()
    assert saves and all(r.status_code == 201 or (r.status_code == 422 and "now has 4" in r.json()["detail"])
                         for r in saves), [r.text for r in saves if r.status_code != 201]
    for info in client.get("/dictionaries").json()["dictionaries"]:
        assert client.delete(f"/dictionaries/{info['id']}").status_code == 204


def test_a_version_1_job_database_opens_and_gains_the_kind(tmp_path):
    """A database written before dictionary jobs existed: its jobs become analyses; dictionary jobs can be added."""
    path = tmp_path / "jobs.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE jobs (
            number INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            progress REAL NOT NULL DEFAULT 0, stage TEXT, message TEXT, created_at REAL NOT NULL, started_at REAL,
            finished_at REAL, updated_at REAL NOT NULL, image_path TEXT NOT NULL, image_name TEXT NOT NULL,
            request TEXT NOT NULL, config TEXT NOT NULL, warnings TEXT NOT NULL DEFAULT '[]',
            attempt INTEGER NOT NULL DEFAULT 0, worker_pid INTEGER, run_dir TEXT, geojson_path TEXT, classes TEXT,
            summary TEXT, error TEXT);
        CREATE INDEX jobs_state ON jobs (state, number);
        CREATE INDEX jobs_image ON jobs (image_path, number);
        INSERT INTO jobs (id, state, created_at, updated_at, image_path, image_name, request, config)
            VALUES ('0123456789abcdef0123456789abcdef', 'succeeded', 1, 1, '/x.svs', 'x.svs', '{}', '{}');
        PRAGMA user_version = 1;
    """)
    conn.close()
    store = JobStore(path)
    try:
        old = store.get("0123456789abcdef0123456789abcdef")
        assert old is not None and old.kind == "analysis" and old.state == "succeeded"
        new = store.add(image_path="/x.svs", image_name="x.svs", request={}, config={"dictionary_id": "d"},
                        warnings=[], kind="dictionary")
        assert new.kind == "dictionary" and new.number == 2
        assert [j.id for j in store.list(kind="analysis")] == [old.id]
        with pytest.raises(ValueError, match="kind"):
            store.add(image_path="/x.svs", image_name="x.svs", request={}, config={}, warnings=[], kind="other")
    finally:
        store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    finally:
        conn.close()
    JobStore(path).close()  # opening an up-to-date database again changes nothing

