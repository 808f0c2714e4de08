"""The label-efficient methods on a real run folder of a synthetic two-tissue slide."""

import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import LineString, Point, box, mapping

from tumls_qp.cli import main
from tumls_qp.config import PipelineConfig, replace_in
from tumls_qp.errors import InvalidInputError
from tumls_qp.labelling import (
    apply_dictionary,
    load_overclustering,
    make_dictionary,
    parse_seed_request,
    seeded_classification,
    seeds_from_geojson,
    write_prototypes,
)
from tumls_qp.outputs.geojson import read_geojson, validate_geojson, validate_geojson_file, write_geojson
from tumls_qp.outputs.run_folder import DictionaryManifest, read_manifest, read_run
from tumls_qp.pipeline import analyze
from tumls_qp.interactive.prototypes import load_dictionary, naming_from_mapping

#: The synthetic scene: stroma left of a wavy boundary near x = 1536 px, epithelium right of it.
BOUNDARY_X = 1536


def test_label_modules_import_light():
    code = ("import sys, tumls_qp.interactive.seeded, tumls_qp.interactive.prototypes, tumls_qp.labelling, "
            "tumls_qp.interactive.embedding_colours, "
            "tumls_qp.evaluation.tile_folder, tumls_qp.outputs.classified;"
            "print([m for m in ('torch', 'matplotlib', 'umap', 'sklearn') if m in sys.modules])")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def run(slides, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = replace_in(PipelineConfig(), **{"tiles.tile_um": 64.0, "embedding.max_epochs": 4,
                                             "embedding.device": "cpu"})
    [result] = analyze([slides["two-tissues"]], out, config)
    return result.run_dir


def _truth(boxes):
    """1 for epithelium (right), 0 for stroma, -1 near the boundary."""
    cx = boxes[:, 0] + boxes[:, 2] / 2
    return np.where(cx > BOUNDARY_X + 250, 1, np.where(cx < BOUNDARY_X - 250, 0, -1))


def test_seeded_classification_from_a_click_and_a_scribble(run):
    seeds = [("Stroma", (20, 160, 20), Point(700, 1000)),
             ("Epithelium", None, LineString([(2300, 800), (2350, 1200)]))]
    answer = seeded_classification(run, seeds)
    assert answer.classes == ("Stroma", "Epithelium") and answer.colours[0] == (20, 160, 20)
    assert validate_geojson(answer.feature_collection) == []
    data = read_run(run).embeddings
    truth = _truth(data.boxes)
    known = truth >= 0
    assert (answer.result.labels[known] == truth[known]).mean() > 0.95
    features = answer.feature_collection["features"]
    regions = [f for f in features if f["properties"]["objectType"] == "annotation"]
    tiles = [f for f in features if f["properties"]["objectType"] == "tile"]
    assert [r["properties"]["name"] for r in regions] == ["Stroma (SIC)", "Epithelium (SIC)"]
    assert regions[0]["properties"]["classification"] == {"name": "Stroma", "color": [20, 160, 20]}
    assert set(regions[0]["properties"]["measurements"]) == {"Area um^2", "Tile count", "Mean SIC confidence"}
    assert len(tiles) == len(data.boxes)
    assert all(0 <= t["properties"]["measurements"]["SIC confidence"] <= 1 for t in tiles)
    summary = answer.summary()
    assert summary["classes"][1]["seed_tiles"] >= 3 and summary["seconds"] < 30
    assert sum(c["tiles"] for c in summary["classes"]) == len(data.boxes)


def test_seeded_classification_errors(run, tmp_path):
    inside = Point(700, 1000)
    with pytest.raises(InvalidInputError, match="seeds of 'Stroma' only"):
        seeded_classification(run, [("Stroma", None, inside), ("Stroma", None, Point(800, 900))])
    with pytest.raises(InvalidInputError, match="no seeds"):
        seeded_classification(run, [])
    with pytest.raises(InvalidInputError, match=r"seed 2 of 2 \(class 'Tumor'\).*covers no tissue tile"):
        seeded_classification(run, [("Stroma", None, inside), ("Tumor", None, Point(30, 30))])
    with pytest.raises(InvalidInputError, match="contains ':'"):
        seeded_classification(run, [("Stroma", None, inside), ("Tumor: 1", None, Point(2300, 1000))])
    with pytest.raises(InvalidInputError, match="not a tumls-qp folder: it has no manifest.json"):
        seeded_classification(tmp_path, [("Stroma", None, inside)])


def test_seed_request_and_qupath_export_parsing():
    body = {"seeds": [{"class": "Tumor", "color": [200, 0, 0], "geometry": mapping(box(0, 0, 10, 10))},
                      {"class": "Benign", "geometry": {"type": "Point", "coordinates": [5, 5]}}]}
    seeds = parse_seed_request(body)
    assert [(s[0], s[1], s[2].geom_type) for s in seeds] == [("Tumor", (200, 0, 0), "Polygon"),
                                                            ("Benign", None, "Point")]
    for bad, fragment in [({}, "the request must be"), ({"seeds": [{"class": ""}]}, "'class'"),
                          ({"seeds": [{"class": "A", "geometry": {"type": "Polygon", "coordinates": "x"}}]},
                           "unreadable GeoJSON geometry"),
                          ({"seeds": [{"class": "A", "color": "#ff0000", "geometry": mapping(Point(1, 1))}]},
                           r"seeds\[0\].color")]:
        with pytest.raises(InvalidInputError, match=fragment):
            parse_seed_request(bad)
    export = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": mapping(Point(1, 2)),
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [1, 2, 3]}}},
        {"type": "Feature", "geometry": mapping(Point(3, 4)), "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": mapping(Point(5, 6)),
         "properties": {"classification": {"name": "Benign", "colorRGB": -1}}},
    ]}
    assert [(s[0], s[1]) for s in seeds_from_geojson(export)] == [("Tumor", (1, 2, 3)), ("Benign", None)]
    with pytest.raises(InvalidInputError, match="no classified annotation"):
        seeds_from_geojson({"type": "FeatureCollection", "features": export["features"][1:2]})


def test_seeded_cli(run, tmp_path, capsys):
    seeds = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": mapping(box(500, 800, 900, 1200)),
         "properties": {"objectType": "annotation", "classification": {"name": "Stroma", "color": [0, 150, 0]}}},
        {"type": "Feature", "geometry": mapping(Point(2300, 1000)),
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
    ]}
    write_geojson(seeds, tmp_path / "seeds.geojson")
    out = tmp_path / "sic.geojson"
    assert main(["seeded", str(run), "--seeds", str(tmp_path / "seeds.geojson"), "--out", str(out),
                 "--positive", "Tumor"]) == 0
    assert "binary SIC: Stroma" in capsys.readouterr().out
    assert validate_geojson_file(out) == []
    seeds["features"] = seeds["features"][:1]
    write_geojson(seeds, tmp_path / "one.geojson")
    assert main(["seeded", str(run), "--seeds", str(tmp_path / "one.geojson"), "--out", str(out)]) == 3
    assert "seeds of 'Stroma' only" in capsys.readouterr().err


def test_prototype_dictionary_from_run_to_new_slide(run, slides, tmp_path, capsys):
    assert main(["prototypes", str(run), "--t", "5"]) == 0
    folder = run / "prototypes"
    assert {p.name for p in folder.iterdir()} == {"clusters.npz", "prototypes.geojson", "names.toml", "manifest.json"}
    assert validate_geojson_file(folder / "prototypes.geojson") == []
    over, manifest = load_overclustering(run)
    assert manifest.k_source == "elbow" and 2 <= over.k <= 50 and manifest.t == 5 and manifest.k == over.k
    assert manifest.elbow.k == over.k and len(manifest.elbow.inertia) >= over.k
    names = [f["properties"]["name"] for f in read_geojson(folder / "prototypes.geojson")["features"]]
    assert "Prototype 1" in names and "Prototype 1 central 1" in names

    # Simulated naming from the scene: a cluster is named when more than 80 % of it lies on one side.
    truth = _truth(read_run(run).embeddings.boxes)
    lines, mixed = {"Stroma": [], "Epithelium": []}, []
    for j in range(over.k):
        side = truth[over.labels == j]
        side = side[side >= 0]
        if len(side) and (side == 0).mean() > 0.8:
            lines["Stroma"].append(j + 1)
        elif len(side) and (side == 1).mean() > 0.8:
            lines["Epithelium"].append(j + 1)
        else:
            mixed.append(j + 1)
    assert lines["Stroma"] and lines["Epithelium"]
    names_file = tmp_path / "names.toml"
    names_file.write_text(f"mixed = {mixed}\n[classes.Stroma]\nclusters = {lines['Stroma']}\ncolor = [0, 150, 0]\n"
                          f"[classes.Epithelium]\nclusters = {lines['Epithelium']}\n")
    book_path = tmp_path / "two.tumlsdict"
    assert main(["make-dictionary", str(run), "--names", str(names_file), "--out", str(book_path)]) == 0
    assert "prototypes of 2 classes (Stroma, Epithelium)" in capsys.readouterr().out
    book = load_dictionary(book_path)
    assert book.provenance["naming"]["mixed"] == mixed and book.config.tiles.tile_um == 64.0

    out = tmp_path / "applied"
    assert main(["apply-dictionary", str(book_path), str(slides["two-tissues"]), str(slides["blank"]),
                 "--out", str(out), "-q"]) == 3  # the blank slide fails, the other is labelled
    assert "no tissue found" in capsys.readouterr().err
    result = out / "two-tissues"
    assert {p.name for p in result.iterdir()} == {"dictionary.geojson", "tiles.csv", "embeddings.npz", "manifest.json"}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert validate_geojson_file(result / "dictionary.geojson") == []
    with open(result / "tiles.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    boxes = np.array([[int(r["x"]), int(r["y"]), int(r["w"]), int(r["h"])] for r in rows])
    truth = _truth(boxes)
    for column in ("class_dq", "class_cq"):
        predicted = np.array([{"Stroma": 0, "Epithelium": 1}[r[column]] for r in rows])
        assert (predicted[truth >= 0] == truth[truth >= 0]).mean() > 0.9, column
    manifest = read_manifest(result)
    assert isinstance(manifest, DictionaryManifest) and manifest.slide.name == "two-tissues.tif"
    assert manifest.query.d == 2 and manifest.query.groups == 10 and manifest.query.shown == "cq"
    assert manifest.dictionary.classes == ("Stroma", "Epithelium") and manifest.tiles.kept == len(rows)
    assert sum(manifest.query.tiles_per_class["cq"].values()) == len(rows)
    features = read_geojson(result / "dictionary.geojson")["features"]
    assert {f["properties"]["classification"]["name"] for f in features} == {"Stroma", "Epithelium"}
    tile = next(f for f in features if f["properties"]["objectType"] == "tile")
    assert set(tile["properties"]["measurements"]) == {"Dictionary confidence", "Prototype distance"}

    # The labelled slide's folder is a valid input of seeded clustering too.
    answer = seeded_classification(result, [("Stroma", None, Point(700, 1000)), ("Epi", None, Point(2300, 1000))])
    assert validate_geojson(answer.feature_collection) == []


def test_make_dictionary_needs_fresh_prototype_clusters(run, tmp_path):
    naming = naming_from_mapping({1: "A", 2: "B"}, 2)
    fresh = tmp_path / "run"
    fresh.mkdir()
    for name in ("embeddings.npz", "manifest.json", "model.pt", "model.json", "tiles.csv", "representatives.csv",
                 "thumbnail.png", "regions.png"):
        (fresh / name).write_bytes((run / name).read_bytes())
    with pytest.raises(InvalidInputError, match="no prototype clusters yet"):
        make_dictionary(fresh, naming, tmp_path / "d.tumlsdict")
    write_prototypes(fresh, k=2)
    path = make_dictionary(fresh, naming, tmp_path / "d.tumlsdict")
    with zipfile.ZipFile(path) as zf:
        assert json.loads(zf.read("dictionary.json"))["provenance"]["prototype_clusters"]["k_source"] == "user"
    # Embeddings that changed after the clustering make the clusters stale.
    with np.load(fresh / "embeddings.npz") as data:
        arrays = dict(data)
    arrays["latents"] = arrays["latents"] + 1
    np.savez_compressed(fresh / "embeddings.npz", **arrays)
    with pytest.raises(InvalidInputError, match="other embeddings"):
        make_dictionary(fresh, naming, tmp_path / "d2.tumlsdict")


def test_embedding_colours_of_a_run(run, capsys):
    assert main(["embedding-colours", str(run), "--method", "pca"]) == 0
    assert "embedding colours (PCA)" in capsys.readouterr().out
    layer = read_geojson(run / "embedding_colours.geojson")
    assert validate_geojson(layer) == []
    tiles = layer["features"]
    assert len(tiles) == len(read_run(run).embeddings.boxes)
    props = tiles[0]["properties"]
    assert props["objectType"] == "tile" and props["classification"]["name"] == "Embedding colour"
    assert len(props["color"]) == 3 and set(props["measurements"]) == {"Embedding 1", "Embedding 2", "Embedding 3"}
    from PIL import Image

    with Image.open(run / "embedding_colours.png") as image:
        assert image.format == "PNG" and image.width > 400
    # The run's layer, its arrays and its manifest agree: the report draws what QuPath shows.
    again = read_run(run)
    assert again.embedding_colours.method == "pca" and again.embedding_colours_path == run / "embedding_colours.geojson"
    assert [f["properties"]["color"] for f in tiles] == again.embedding_colours.rgb.tolist()


def test_a_dictionary_embeds_new_slides_as_its_run_did_whatever_the_method(slides, tmp_path):
    """A dictionary made from a run with a view method (``handcrafted``) reads the views of a new slide and embeds
    them with the run's fitted encoder: on the same slide, the vectors are the run's own."""
    from tumls_qp.interactive.prototypes import save_dictionary

    config = replace_in(PipelineConfig(), **{"tiles.tile_um": 64.0, "embedding.method": "handcrafted",
                                             "nuclei.enabled": False, "output.report": False})
    [result] = analyze([slides["two-tissues"]], tmp_path / "runs", config)
    run = read_run(result.run_dir)
    e = run.embeddings
    # The run's tissue centroids as prototypes, tissue 1 as class A and the others as B.
    k = run.manifest.clusters.k
    classes = (np.arange(k) > 0).astype(int)
    book = save_dictionary(tmp_path / "hc.tumlsdict", e.centroids, classes, ["A", "B"],
                           [(200, 0, 0), (0, 200, 0)], result.run_dir, config, {"run": "hc"})
    assert load_dictionary(book).encoder["method"] == "handcrafted"
    [applied] = apply_dictionary(book, [slides["two-tissues"]], tmp_path / "applied", query="dq", device="cpu")
    again = read_run(applied.out_dir, kinds=("dictionary",)).embeddings
    np.testing.assert_allclose(again.latents, e.latents, atol=1e-5)
    # Direct-Query's nearest prototype is each tile's own k-means centroid.
    np.testing.assert_array_equal(again.labels, classes[e.labels])
