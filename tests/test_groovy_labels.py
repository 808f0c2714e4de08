"""The human-in-the-loop QuPath scripts (groovy/tumls_seeded, _prototypes, _save_dictionary, _apply_dictionary), run
by Groovy 4 against the QuPath stand-ins and a live server, in one "project": analyse, seed, re-seed, fetch and name
clusters, save a dictionary, apply it to another entry twice; each layer replaces only itself."""

from __future__ import annotations

import json
import re

import pytest

from server_helpers import REPO, LiveServer, bench_out
from test_groovy_script import _from_feature, _from_object, _run, harness  # noqa: F401  (harness is a fixture)
from tumls_qp.outputs.qupath import (DICTIONARY_TAG, LAYER_TAGS, PROTOTYPES_TAG, SEEDED_TAG, TAG_MEASUREMENT,
                                     path_to_file_uri)

GROOVY = REPO / "groovy"
SCRIPTS = {name: GROOVY / f"tumls_{name}.groovy" for name in ("analyze", "seeded", "prototypes", "save_dictionary",
                                                              "apply_dictionary")}
PARAMETERS = {"tiles": {"tile_um": 64.0}, "embedding": {"max_epochs": 2, "device": "cpu"},
              "nuclei": {"enabled": False}, "output": {"report": False}}
STROMA = {"class": "Stroma", "color": [40, 160, 40], "geometry": {"type": "Point", "coordinates": [900, 1024]}}
TUMOR = {"class": "Tumor", "color": [200, 0, 0],
         "geometry": {"type": "LineString", "coordinates": [[2100, 900], [2300, 1150]]}}


@pytest.fixture(scope="module")
def server(slides, tmp_path_factory):
    with LiveServer(tmp_path_factory.mktemp("groovy-labels") / "data", [slides["two-tissues"].parent]) as live:
        yield live


def _entry(slide, name, seeds=()):
    return {"name": name, "uri": path_to_file_uri(slide), "width": 3072, "height": 2048, "pixel_size_um": 0.5,
            "user_objects": 0, "seeds": list(seeds)}


def _tagged(objects, tag):
    return [o for o in objects if tag in o["measurements"]]


@pytest.mark.groovy
def test_seeded_prototypes_and_dictionary_scripts(harness, server, slides, tmp_path, monkeypatch):  # noqa: F811
    slide = slides["two-tissues"]
    monkeypatch.setenv("TUMLS_QP_K", "3")
    monkeypatch.setenv("TUMLS_QP_DICTIONARY_NAME", "two tissues")
    naming = {"Cluster 1": "Stroma", "Cluster 2": "Tumor", "Cluster 3": "mixed"}
    config = {
        "script": str(SCRIPTS["analyze"]), "project_file": str(tmp_path / "project" / "project.qpproj"), "gui": True,
        "entries": [_entry(slide, "two-tissues.tif", [STROMA, TUMOR]), _entry(slide, "copy.tif"),
                    _entry(slides["homogeneous"], "homogeneous.tif", [STROMA, TUMOR])],
        "runs": [
            0,                                                                             # 0 analyse
            {"entry": 0, "script": str(SCRIPTS["seeded"])},                                # 1 seeded
            {"entry": 0, "script": str(SCRIPTS["seeded"]), "select_classes": ["Stroma"]},  # 2 one class: refused
            {"entry": 0, "script": str(SCRIPTS["prototypes"])},                            # 3 clusters to name
            {"entry": 0, "script": str(SCRIPTS["save_dictionary"])},                       # 4 nothing named: refused
            {"entry": 0, "script": str(SCRIPTS["save_dictionary"]), "reclass": naming},    # 5 saved
            {"entry": 0, "script": str(SCRIPTS["seeded"])},                                # 6 seeded again
            {"entry": 1, "script": str(SCRIPTS["apply_dictionary"])},                      # 7 apply
            {"entry": 1, "script": str(SCRIPTS["apply_dictionary"])},                      # 8 apply again
            {"entry": 2, "script": str(SCRIPTS["seeded"])},                                # 9 not analysed
            {"entry": 0, "resolve": True},                  # 10 the user's Objects > Resolve hierarchy
        ],
        "markers": list(LAYER_TAGS.values()),
    }
    dump, _, stdout = _run(harness, server, tmp_path, config, parameters=PARAMETERS)
    runs = dump["runs"]
    assert [r["outcome"] == "ok" for r in runs] == [True, True, False, True, False, True, True, True, True, False, True], \
        stdout + json.dumps(runs, indent=1)
    assert "seeds of one class" in runs[2]["message"] or "two" in runs[2]["message"], runs[2]
    assert "the server answered 422" in runs[2]["message"]
    assert "at least two classes" in runs[4]["message"], runs[4]
    assert "homogeneous.tif has no finished analysis" in runs[9]["message"], runs[9]
    # Seeds are the user's two annotations only, also after the clusters were named Stroma and Tumor.
    assert stdout.count("2 seed(s) of Stroma, Tumor sent") == 2, stdout

    with server.client() as http:
        analysis = http.get("/jobs", params={"kind": "analysis"}).json()["jobs"]
        applied = http.get("/jobs", params={"kind": "dictionary"}).json()["jobs"]
        dictionaries = http.get("/dictionaries").json()["dictionaries"]
        seeded = http.post(f"/jobs/{analysis[0]['id']}/seeded", json={"seeds": [STROMA, TUMOR]}).json()
        served = http.get(f"/jobs/{applied[0]['id']}/geojson").json()["features"]
        analysis_features = http.get(f"/jobs/{analysis[0]['id']}/geojson").json()["features"]
    assert len(analysis) == 1 and len(applied) == 2 and len(dictionaries) == 1
    assert [j["state"] for j in applied] == ["succeeded", "succeeded"]

    first, second, untouched = (image["objects"] for image in dump["images"])
    # The user's seeds are never touched.
    mine = [o for o in first if not any(tag in o["measurements"] for tag in LAYER_TAGS.values())]
    assert sorted(o["class"] for o in mine) == ["Stroma", "Tumor"]
    # Each layer is there once: the analysis, the last seeded answer, the clusters (as named).
    assert sorted(map(_from_object, _tagged(first, TAG_MEASUREMENT))) == sorted(map(_from_feature, analysis_features))
    answer = _tagged(first, SEEDED_TAG)
    assert len(answer) == len(seeded["features"])
    assert {o["measurements"][SEEDED_TAG] for o in answer} == {analysis[0]["number"]}
    assert sorted((o["type"], o["class"], o.get("name")) for o in answer) == sorted(
        (f["properties"]["objectType"], f["properties"]["classification"]["name"], f["properties"].get("name"))
        for f in seeded["features"])
    # The seeded answer is the classification: every tile has one of the seeds' classes and a confidence.
    sic_tiles = [o for o in answer if o["type"] == "tile"]
    assert sic_tiles and {o["class"] for o in sic_tiles} == {"Stroma", "Tumor"}
    assert all(0 <= o["measurements"]["SIC confidence"] <= 1 for o in sic_tiles)
    clusters = _tagged(first, PROTOTYPES_TAG)
    assert {o["measurements"]["Prototype clusters"] for o in clusters} == {3.0}
    assert {o["class"] for o in clusters} == {"Stroma", "Tumor", "mixed"}
    assert len(first) == 2 + len(analysis_features) + len(seeded["features"]) + len(clusters)

    # Nesting (README, QuPath section): each layer's objects nest among themselves only, its regions at the top
    # level, the drawn seeds stay where QuPath put them. Counts of "layer>parent's layer" after run 6, when the
    # analysis, the seeded answer and the clusters are all on the image.
    nesting = runs[6]["nesting"]
    for key in nesting:
        child, parent = key.split(">")
        assert parent in (child, "root"), (key, nesting)
    for tag in (TAG_MEASUREMENT, SEEDED_TAG, PROTOTYPES_TAG):
        assert nesting.get(f"{tag}>{tag}", 0) > 0, (tag, nesting)
    assert nesting["user>root"] == 2
    # Only the user's Objects > Resolve hierarchy mixes them: QuPath re-parents by geometry across all objects.
    resolved = runs[10]["nesting"]
    assert sum(resolved.values()) == sum(nesting.values())
    assert any(parent not in (child, "root") for child, parent in (k.split(">") for k in resolved)), resolved
    bench_out("groovy_layers_nesting", {"after_seeded_again": nesting, "after_resolve_hierarchy": resolved})

    # The dictionary holds the names given in QuPath, with the classes' colours there.
    [dictionary] = dictionaries
    assert dictionary["name"] == "two tissues" and dictionary["source_job"] == analysis[0]["id"]
    assert dictionary["naming"]["classes"] == {"Stroma": [1], "Tumor": [2]} and dictionary["naming"]["mixed"] == [3]
    # Stroma and Tumor are QuPath's built-in classes: they keep QuPath's colours, not those of the drawn seeds.
    assert {c["name"]: c["color"] for c in dictionary["classes"]} == {"Stroma": [150, 200, 150], "Tumor": [200, 0, 0]}
    assert re.search(rf"dictionary {dictionary['id']} \('two tissues'\) saved", stdout)

    # Applied twice to the other entry: the second answer replaced the first.
    assert sorted(map(_from_object, second)) == sorted(map(_from_feature, served))
    assert {o["measurements"][DICTIONARY_TAG] for o in second} == {applied[0]["number"]}
    by_id = {o["id"]: o for o in second}
    assert all(o.get("parent") is None for o in second if o["type"] == "annotation")
    tiles = [o for o in second if o["type"] == "tile"]
    assert tiles and all(by_id[o.get("parent")]["class"] == o["class"] for o in tiles)  # under their class's region
    assert dump["class_colors"]["Stroma"] == [150, 200, 150] and dump["class_colors"]["Tumor"] == [200, 0, 0]
    assert {"Stroma", "Tumor"} <= set(dump["project_classes"])
    assert sorted(o["class"] for o in untouched) == ["Stroma", "Tumor"]


@pytest.mark.parametrize("name", ["seeded", "prototypes", "save_dictionary", "apply_dictionary"])
def test_scripts_use_only_api_of_qupath_04_to_07(name):
    text = SCRIPTS[name].read_text(encoding="utf-8")
    code = "\n".join(line for line in text.splitlines() if not line.strip().startswith(("//", "*", "/*")))
    for forbidden in ("JsonSlurper", "JsonOutput", "groovy.json", "putMeasurement", "setClassification(",
                      "getMeasurementNames", "importObjectsFromFile", "8000"):
        assert forbidden not in code, forbidden
    for required in ("HttpClient.Builder.NO_PROXY", "HttpClient.Version.HTTP_1_1", "'http://127.0.0.1:8765'",
                     "TUMLS_QP_TOKEN", "client.checkApi(API_VERSION)"):
        assert required in code, required
    tag = re.search(r"def TAG = '([^']+)'", code).group(1)
    assert tag == {"seeded": SEEDED_TAG, "prototypes": PROTOTYPES_TAG, "save_dictionary": PROTOTYPES_TAG,
                   "apply_dictionary": DICTIONARY_TAG}[name]
    if name != "save_dictionary":  # the others import a layer and replace only their own
        assert "TumlsClient.replaceLayer(hierarchy, TAG, objects)" in code and "PathIO.readObjectsFromGeoJSON" in code
    settings_at = text.index("// ================================ settings")
    assert settings_at < text.index("def env = System.getenv()")


def test_scripts_never_resolve_the_images_hierarchy_nor_write_gson_trees():
    """The layers' nesting rule (README): the image's hierarchy is never resolved; a Gson tree of a QuPath object
    fails in QuPath 0.4-0.7 (its ROI adapter writes with jsonValue)."""
    for name, path in SCRIPTS.items():
        code = "\n".join(line for line in path.read_text(encoding="utf-8").splitlines()
                         if not line.strip().startswith(("//", "*", "/*")))
        assert "toJsonTree" not in code, name
        assert re.findall(r"(\w+)\.resolveHierarchy\(\)", code) == ["layer"], name
        assert not re.search(r"(?<![.\w])(resolveHierarchy|removeObjects|addObjects)\(", code), name


def test_scripts_share_one_http_client_and_the_markers():
    """The client class is the same in every script (a fix goes into all), and the markers match the package's."""
    texts = {name: path.read_text(encoding="utf-8") for name, path in SCRIPTS.items()}
    clients = {name: text[text.index("/** The few HTTP calls the script makes"):] for name, text in texts.items()}
    assert len(set(clients.values())) == 1, [n for n, c in clients.items() if c != clients["analyze"]]
    markers = re.search(r"def MARKERS = \[([^\]]+)\]", texts["seeded"]).group(1)
    assert sorted(re.findall(r"'([^']+)'", markers)) == sorted(LAYER_TAGS.values())
