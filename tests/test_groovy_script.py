"""groovy/tumls_analyze.groovy, run by Groovy 4 against stand-ins for QuPath's classes (tests/groovy/) and a live
server analysing the bundled CMU-1-Small-Region.svs: imports, re-runs, colours, "Run for project", kill."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from shapely.geometry import shape
from shapely.ops import unary_union

from server_helpers import DEMO_SLIDE, REPO, LiveServer, bench_out, wait_for
from tumls_qp.outputs.qupath import TAG_MEASUREMENT, path_to_file_uri

SCRIPT = REPO / "groovy" / "tumls_analyze.groovy"
STANDINS = REPO / "tests" / "groovy"
#: The bundled slide at the demo's 32 µm tiles, with one autoencoder epoch (the tests check plumbing, not quality).
PARAMETERS = {"tiles": {"tile_um": 32.0}, "embedding": {"max_epochs": 1, "device": "cpu"}}


def _tools() -> dict[str, str]:
    """java, javac, the Groovy 4 jar (npm-groovy-lint, installed by `make test`) and Gson; skip when absent."""
    found = {"java": shutil.which("java"), "javac": shutil.which("javac")}
    jars = sorted((REPO / ".tools").glob("node_modules/npm-groovy-lint/lib/java/groovy/lib/groovy-4*.jar"))
    found["groovy"] = os.environ.get("TUMLS_QP_GROOVY_JAR") or (str(jars[-1]) if jars else None)
    gson = os.environ.get("TUMLS_QP_GSON_JAR") or "/usr/share/java/gson.jar"
    found["gson"] = gson if Path(gson).is_file() else None
    jts = os.environ.get("TUMLS_QP_JTS_JAR") or "/usr/share/java/jts-core.jar"
    found["jts"] = jts if Path(jts).is_file() else None
    missing = [name for name, path in found.items() if not path]
    if missing:
        reason = (f"needs {', '.join(missing)}: `make test` installs the Groovy 4 jar (npm install --prefix .tools "
                  "npm-groovy-lint), Gson and JTS (apt-get install libgoogle-gson-java libjts-java), or set "
                  "TUMLS_QP_GROOVY_JAR / TUMLS_QP_GSON_JAR / TUMLS_QP_JTS_JAR; Java 17+ (java and javac) must be on PATH")
        if os.environ.get("TUMLS_QP_REQUIRE_GROOVY") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return found  # type: ignore[return-value]


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    tools = _tools()
    classes = tmp_path_factory.mktemp("groovy-classes")
    sources = [str(p) for p in STANDINS.rglob("*.java")]
    classpath = os.pathsep.join([tools["groovy"], tools["gson"], tools["jts"]])
    out = subprocess.run([tools["javac"], "-nowarn", "-encoding", "UTF-8", "-d", str(classes), "-cp", classpath,
                          *sources], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    return {"java": tools["java"], "classes": str(classes), "classpath": os.pathsep.join([str(classes), classpath])}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LiveServer(tmp_path_factory.mktemp("groovy-server") / "data", [DEMO_SLIDE.parent]) as live:
        yield live


def _run(harness, server, tmp_path, config, parameters=PARAMETERS, env_extra=None):
    config = {"script": str(SCRIPT), "project_file": None, "gui": False, "classes_before": [], "interrupt": None,
              **config}
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "TUMLS_QP_SERVER": server.url, "TUMLS_QP_POLL_SECONDS": "0.3",
           "TUMLS_QP_PARAMETERS": json.dumps(parameters), **(env_extra or {})}
    out = subprocess.run([harness["java"], "-cp", harness["classpath"], "TumlsHarness", str(tmp_path / "config.json"),
                          str(tmp_path / "dump.json")], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    dump = json.loads((tmp_path / "dump.json").read_text())
    jobs = re.findall(r"job \d+ submitted to \S+ \(id ([0-9a-f]{32})\)", out.stdout)
    return dump, jobs, out.stdout


def _entry(name: str, user_objects: int = 0) -> dict:
    return {"name": name, "uri": path_to_file_uri(DEMO_SLIDE), "width": 2220, "height": 2967,
            "pixel_size_um": 0.499, "user_objects": user_objects}


def _floats(value):
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _key(id_, type_, class_, name, measurements, geometry) -> str:
    return json.dumps([id_, type_, class_, name, _floats(measurements), _floats(geometry)], sort_keys=True)


def _from_feature(f: dict) -> str:
    p = f["properties"]
    return _key(f["id"], p["objectType"], (p.get("classification") or {}).get("name"), p.get("name"),
                p.get("measurements", {}), f["geometry"])


def _from_object(o: dict) -> str:
    return _key(o["id"], o["type"], o.get("class"), o.get("name"), o["measurements"], o["geometry"])


@pytest.mark.groovy
def test_script_imports_replaces_and_colours(harness, server, tmp_path):
    """Run for project over two entries, then again on the first: objects equal the GeoJSON, never doubled."""
    config = {
        "project_file": str(tmp_path / "project" / "project.qpproj"), "gui": True,
        # A class that exists before, with another colour (QuPath then ignores the GeoJSON's colour).
        "classes_before": [{"name": "Tissue 1", "color": [1, 2, 3]}, {"name": "Tumor", "color": [200, 0, 0]}],
        "entries": [_entry("CMU-1-Small-Region.svs", user_objects=2), _entry("CMU-1 copy.svs")],
        "runs": [0, 1, 0],
    }
    dump, jobs, stdout = _run(harness, server, tmp_path, config)
    assert [r["outcome"] for r in dump["runs"]] == ["ok"] * 3, stdout
    assert len(jobs) == 3 and len(set(jobs)) == 3

    with server.client() as http:
        statuses = [http.get(f"/jobs/{j}").json() for j in jobs]
        served = [http.get(f"/jobs/{j}/geojson").json()["features"] for j in jobs]
        classes = http.get(f"/jobs/{jobs[2]}/classes").json()["classes"]
    assert [s["state"] for s in statuses] == ["succeeded"] * 3
    assert [s["result"]["embedding_cache"] for s in statuses][1:] == ["hit", "hit"]

    first, second = dump["images"]
    ours = [o for o in first["objects"] if TAG_MEASUREMENT in o["measurements"]]
    theirs = [o for o in first["objects"] if TAG_MEASUREMENT not in o["measurements"]]
    # The re-run replaced the first run's objects: exactly the last job's features, plus the drawn ones.
    assert sorted(map(_from_object, ours)) == sorted(map(_from_feature, served[2]))
    assert len(first["objects"]) == len(served[2]) + 2
    assert len(theirs) == 2 and {o.get("class") for o in theirs} == {"Tumor"}
    assert {o["measurements"][TAG_MEASUREMENT] for o in ours} == {statuses[2]["number"]}
    assert sorted(map(_from_object, second["objects"])) == sorted(map(_from_feature, served[1]))
    # Tiles and nuclei nest under the analysis's own regions; its regions and the drawn annotations are top level.
    by_id = {o["id"]: o for o in first["objects"]}
    assert all(o.get("parent") is None for o in theirs)
    assert all(o.get("parent") is None for o in ours if (o["class"] or "").startswith("Tissue") and o["type"] == "annotation"
               and o["name"] is None)
    nested = [o for o in ours if o["type"] in ("tile", "detection", "cell")]
    assert nested and all(TAG_MEASUREMENT in by_id[o["parent"]]["measurements"] for o in nested if o.get("parent"))
    # QuPath files a tile or nucleus by its centre: one whose centre lies outside every (refined) region of the
    # analysis (glass left out, or a border the refinement moved across the tile) stays at the top level.
    regions = unary_union([shape(o["geometry"]) for o in ours if o["type"] == "annotation" and o["name"] is None])
    top = [o for o in nested if not o.get("parent")]
    assert len(top) < len(nested) / 2
    assert not any(regions.contains(shape(o["geometry"]).centroid) for o in top)

    for info in classes:
        assert dump["class_colors"][info["name"]] == info["color"], info
    assert dump["class_colors"]["Tumor"] == [200, 0, 0]
    names = [c["name"] for c in classes]
    assert dump["project_classes"][:2] == ["Tissue 1", "Tumor"] and set(names) <= set(dump["project_classes"])
    assert set(names) <= set(dump["gui_classes"])
    assert len(dump["project_classes"]) == len(set(dump["project_classes"]))
    # What QuPath's project writes to classifiers/classes.json (names and packed ARGB colours).
    written = dump["classes_json"]["pathClasses"]
    assert [c["name"] for c in written] == dump["project_classes"]
    assert all([(c["color"] >> 16) & 255, (c["color"] >> 8) & 255, c["color"] & 255] == dump["class_colors"][c["name"]]
               for c in written)
    assert "no PDF report" in stdout or "PDF report" in stdout

    seconds = [r["seconds_to_objects"] for r in dump["runs"]]
    assert all(s > 0 for s in seconds)
    bench_out("groovy_e2e_test", {"parameters": PARAMETERS, "objects": len(served[2]),
                                  "seconds_script_start_to_objects": seconds})


@pytest.mark.groovy
def test_embedding_colour_layer_on_request(harness, server, tmp_path):
    """EMBEDDING_COLOURS adds the embedding-colour tiles, tagged like the rest so that a re-run replaces them."""
    config = {"entries": [_entry("CMU-1-Small-Region.svs")], "runs": [0]}
    dump, jobs, stdout = _run(harness, server, tmp_path, config, env_extra={"TUMLS_QP_EMBEDDING_COLOURS": "true"})
    assert [r["outcome"] for r in dump["runs"]] == ["ok"], stdout
    with server.client() as http:
        status = http.get(f"/jobs/{jobs[0]}").json()
        served = http.get(f"/jobs/{jobs[0]}/geojson").json()["features"]
        layer = http.get(f"/jobs/{jobs[0]}/embedding-colours").json()["features"]
    assert layer and {f["properties"]["classification"]["name"] for f in layer} == {"Embedding colour"}
    objects = dump["images"][0]["objects"]
    assert sorted(map(_from_object, objects)) == sorted(map(_from_feature, served + layer))
    assert {o["measurements"][TAG_MEASUREMENT] for o in objects} == {status["number"]}


@pytest.mark.groovy
def test_killing_the_script_cancels_the_job(harness, server, tmp_path):
    """QuPath's "Kill running script" interrupts the script thread: the server's job must be cancelled."""
    config = {"entries": [_entry("CMU-1-Small-Region.svs", user_objects=1)], "runs": [0],
              "interrupt": {"server": server.url, "run": 0}}
    long = {"seed": 7, "tiles": {"tile_um": 32.0}, "embedding": {"max_epochs": 500, "patience": 500,
                                                                  "device": "cpu"}}
    dump, jobs, stdout = _run(harness, server, tmp_path, config, parameters=long)
    run = dump["runs"][0]
    assert run["interrupted"] and run["outcome"] == "java.lang.InterruptedException", run
    assert len(jobs) == 1 and f"server job {jobs[0]} cancelled" in stdout, stdout
    with server.client() as http:
        status = wait_for(lambda: (s := http.get(f"/jobs/{jobs[0]}").json())["state"] != "running" and s, 20,
                          "the cancel")
        assert status["state"] == "cancelled"
        wait_for(lambda: http.get("/health").json()["workers_alive"] == 1, 30, "a fresh worker")
    assert [o.get("class") for o in dump["images"][0]["objects"]] == ["Tumor"]  # nothing imported, nothing removed


def test_script_uses_only_api_of_qupath_04_to_07():
    text = SCRIPT.read_text(encoding="utf-8")
    code = "\n".join(line for line in text.splitlines() if not line.strip().startswith(("//", "*", "/*")))
    for forbidden in ("JsonSlurper", "JsonOutput", "groovy.json", "putMeasurement", "setClassification(",
                      "getMeasurementNames", "importObjectsFromFile", "getSelectedObject"):
        assert forbidden not in code, forbidden
    for required in ("HttpClient.Builder.NO_PROXY", "PathIO.readObjectsFromGeoJSON", "TumlsClient.replaceLayer(",
                     "catch (InterruptedException", "ColorTools.packRGB",
                     "setPathClasses", "Accept-Encoding", "HttpClient.Version.HTTP_1_1"):
        assert required in code, required
    assert re.search(r"def TAG = '([^']+)'", code).group(1) == TAG_MEASUREMENT
    # The settings block comes first, before any code that does something.
    settings_at = text.index("// ================================ settings")
    assert settings_at < text.index("def env = System.getenv()") and "SERVER_URL" in text[settings_at:][:400]
