"""The run folder's owner: every field written is read back the same; other format versions get a clear error."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from run_helpers import synthetic_analysis

import tumls_qp.outputs.run_folder as rf
from tumls_qp.cells.features import TISSUE_FEATURES
from tumls_qp.cli import main
from tumls_qp.config import dump_config, replace_in
from tumls_qp.errors import FormatVersionError, InvalidInputError
from tumls_qp.outputs.geojson import validate_geojson_file

#: A run folder as tumls-qp 0.1 wrote it (format 1, before format versions), the files its report needed.
FORMAT1_RUN = Path(__file__).parent / "data" / "format1-run"


@pytest.fixture(scope="module")
def analysis() -> rf.SlideAnalysis:
    return synthetic_analysis()


@pytest.fixture(scope="module")
def written(analysis, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rf") / "run"
    return folder, rf.write_run(folder, analysis)


def test_every_field_written_is_read_back(analysis, written):
    folder, manifest = written
    run = rf.read_run(folder)
    # The manifest: every field of the dataclass tree survives the JSON round trip, types included.
    assert run.manifest == manifest and rf.read_manifest(folder) == manifest
    assert isinstance(run.manifest.clusters.gaps, dict) and set(run.manifest.clusters.gaps) == {2, 3}
    assert run.manifest.config == analysis.config and run.manifest.slide == analysis.slide
    assert run.manifest.cohort == ("s", "t") and run.manifest.warnings == ("a warning",)
    assert run.manifest.timings_s == {"tiles": 0.5, "train": 1.25}
    assert run.manifest.engine == analysis.engine and analysis.engine.engine == "dask"
    assert data_engine(folder) == {"engine": "dask", "scheduler": "tcp://10.0.0.1:8786",
                                   "worker": "tcp://10.0.0.2:40001", "model_worker": "tcp://10.0.0.3:40002"}
    per_tissue: dict[int, int] = {}
    for rep, patch in zip(analysis.representatives, analysis.patches):
        if patch.nuclei is not None:
            per_tissue[rep.tissue + 1] = per_tissue.get(rep.tissue + 1, 0) + len(patch.nuclei.table["Label"])
    assert run.manifest.nuclei == rf.NucleiInfo(enabled=True, representatives_segmented=len(analysis.patches) - 1,
                                                nuclei=2 * (len(analysis.patches) - 1), per_tissue=per_tissue)
    data = json.loads((folder / rf.MANIFEST).read_text())
    assert (data["tool"], data["kind"], data["format_version"]) == ("tumls-qp", "analysis", rf.FORMAT_VERSION)

    c, sel = analysis.clustering, analysis.tiles.selection
    tiles = run.tiles
    assert np.array_equal(tiles.boxes, analysis.tiles.boxes) and np.array_equal(tiles.tissue, c.labels + 1)
    np.testing.assert_allclose(tiles.uncertainty, c.uncertainty, atol=5e-6)
    np.testing.assert_allclose(tiles.distance, c.distance, atol=5e-6)
    np.testing.assert_allclose(tiles.tissue_fraction, sel.tissue_fraction.ravel()[sel.kept], atol=5e-4)
    np.testing.assert_allclose(tiles.confidence, c.confidence, atol=5e-5)
    e = run.embeddings
    for name, value in (("latents", analysis.latents), ("boxes", analysis.tiles.boxes), ("tile_index", sel.kept),
                        ("labels", c.labels), ("uncertainty", c.uncertainty), ("distance", c.distance),
                        ("centroids", c.centroids), ("confidence", c.confidence), ("posterior", c.posterior)):
        assert np.array_equal(getattr(e, name), value), name
    assert [f.name for f in fields(e)] == ["latents", "boxes", "tile_index", "labels", "uncertainty", "distance",
                                           "centroids", "confidence", "posterior"]
    assert run.manifest.clusters.method == "graph"
    # Which method made the map, and how close the runner-up k came.
    assert run.manifest.embedding.method == "tumls-ae" and run.manifest.embedding.dim == 256
    assert run.manifest.embedding.view_mpp is None and run.manifest.embedding.final_loss == 0.06
    assert run.manifest.clusters.k_votes == {2: 7, 3: 3} and run.manifest.clusters.runner_up == (3, 3)

    # The regions: the label image, and the manifest's summary of it.
    regions = analysis.regions
    assert np.array_equal(run.regions, regions.labels + 1)
    info = run.manifest.regions
    assert (info.method, info.segments) == ("felzenszwalb", (40, 12, 3))
    assert info.changed_fraction == pytest.approx(regions.changed_fraction, abs=1e-4)
    px_um2 = (regions.downsample * analysis.slide.mpp) ** 2
    assert info.area_um2 == {t + 1: pytest.approx((regions.labels == t).sum() * px_um2) for t in range(2)}

    assert [(r.tissue, r.rank, r.tile) for r in run.representatives] == [
        (r.tissue + 1, r.rank, r.tile) for r in analysis.representatives]
    assert [r.confident for r in run.representatives] == [r.confident for r in analysis.representatives]
    assert not all(r.confident for r in run.representatives)
    for r, rep, patch in zip(run.representatives, analysis.representatives, analysis.patches):
        assert r.box == tuple(analysis.tiles.boxes[rep.tile]) and r.patch_mpp == patch.mpp
        assert r.patch_box == patch.box and r.confidence == pytest.approx(rep.confidence)
        assert r.uncertainty == pytest.approx(rep.uncertainty) and r.distance == pytest.approx(rep.distance)
        with Image.open(r.patch) as image:
            assert image.size == patch.rgb.shape[1::-1] and image.format == "JPEG"
        if patch.nuclei is None:
            assert r.labels is None
        else:
            assert np.array_equal(rf.load_labels(r.labels, patch.rgb.shape[:2]), patch.nuclei.labels)
    assert np.array_equal(run.thumbnail, analysis.tiles.thumbnail)
    assert run.training.column("train_mse").tolist() == analysis.embedding.history["train_mse"]
    assert run.training.column("val_mse").tolist() == analysis.embedding.history["val_mse"]
    assert np.array_equal(run.linkage, c.linkage)
    assert all(np.array_equal(a, b) for a, b in zip(run.reconstructions, analysis.reconstructions))
    assert run.config_text == dump_config(analysis.config)
    colours = run.embedding_colours
    assert np.array_equal(colours.coords, analysis.embedding_colours.coords)
    assert np.array_equal(colours.rgb, analysis.embedding_colours.rgb)
    assert colours.method == analysis.embedding_colours.method == "pca"

    # The nucleus tables: one row per nucleus, per segmented patch, per tissue.
    segmented = [(rep, p) for rep, p in zip(analysis.representatives, analysis.patches) if p.nuclei is not None]
    assert len(run.nuclei.rows) == sum(len(p.nuclei.table["Label"]) for _, p in segmented)
    for row in run.nuclei.rows:
        rep, patch = next((r, p) for r, p in segmented if (r.tissue + 1, r.rank) == (row["tissue"], row["rank"]))
        k = list(patch.nuclei.table["Label"]).index(row["label"])
        assert row["Area um^2"] == pytest.approx(patch.nuclei.table["Area um^2"][k], rel=1e-5)
    assert [(r["tissue"], r["rank"]) for r in run.patch_features.rows] == [(r.tissue + 1, r.rank) for r, _ in segmented]
    for t, values in analysis.tissue_features.items():
        row = run.feature_row(t + 1)
        for f in TISSUE_FEATURES:
            assert row[f.name] == pytest.approx(values[f.name], rel=1e-5, nan_ok=True), f.name

    # QuPath objects: tissues, representatives, tiles, nuclei; valid.
    assert validate_geojson_file(run.geojson_path) == [] and validate_geojson_file(run.embedding_colours_path) == []
    kinds = [f["properties"]["objectType"] for f in run.geojson()]
    assert kinds.count("detection") == len(run.nuclei.rows) and kinds.count("tile") == len(tiles.boxes)
    assert len(kinds) == manifest.outputs.geojson_features
    # Tissue annotations are the regions (not the union of tiles), with their area and mean confidence; the
    # representatives are the areas their patches were read over; tiles carry uncertainty and confidence.
    from shapely.geometry import shape

    annotations = [f for f in run.geojson() if f["properties"]["objectType"] == "annotation"]
    for t in range(2):
        [region] = [f for f in annotations if f["properties"].get("name") == f"Tissue {t + 1}"]
        m = region["properties"]["measurements"]
        assert shape(region["geometry"]).area == pytest.approx((regions.labels == t).sum() * regions.downsample ** 2)
        assert m["Area um^2"] == pytest.approx(info.area_um2[t + 1])
        assert m["Mean confidence"] == pytest.approx(c.confidence[c.labels == t].mean(), rel=1e-5)
    for rep, patch in zip(analysis.representatives, analysis.patches):
        [feature] = [f for f in annotations
                     if f["properties"].get("name") == f"Tissue {rep.tissue + 1} representative {rep.rank}"]
        assert shape(feature["geometry"]).bounds == (patch.box[0], patch.box[1], patch.box[0] + patch.box[2],
                                                     patch.box[1] + patch.box[3])
        assert feature["properties"]["measurements"]["Confidence"] == pytest.approx(rep.confidence, rel=1e-5)
    tile_measurements = [f["properties"]["measurements"] for f in run.geojson()
                         if f["properties"]["objectType"] == "tile"]
    assert [m["Confidence"] for m in tile_measurements] == pytest.approx(c.confidence.tolist(), rel=1e-5)
    from tumls_qp.tissue.embeddings import load_checkpoint

    model, meta = load_checkpoint(folder)
    assert all(np.array_equal(a.detach().numpy(), b.detach().numpy())
               for a, b in zip(model.state_dict().values(), analysis.embedding.encoder.model.state_dict().values()))
    assert meta["history"]["train_mse"] == analysis.embedding.history["train_mse"] and meta["method"] == "tumls-ae"
    assert run.notes == []
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [rf.TISSUE_GEOJSON, rf.TILES_CSV, rf.REPRESENTATIVES_CSV, rf.TRAINING_CSV, rf.NUCLEI_CSV,
         rf.PATCH_FEATURES_CSV, rf.FEATURES_CSV, rf.EMBEDDINGS_NPZ, rf.EMBEDDING_COLOURS_GEOJSON,
         rf.EMBEDDING_COLOURS_NPZ, rf.DENDROGRAM_NPZ, rf.RECONSTRUCTIONS_NPZ, rf.THUMBNAIL_PNG, rf.REGIONS_PNG,
         *rf.MODEL_FILES,
         rf.CONFIG_TOML, rf.MANIFEST, rf.PATCHES_DIR])


def data_engine(folder: Path) -> dict:
    """The engine record as ``manifest.json`` holds it."""
    return json.loads((folder / rf.MANIFEST).read_text())["engine"]


def test_the_round_trip_covers_every_field():
    """Extending the run folder means extending the round trip above: this lists what it checks."""
    assert [f.name for f in fields(rf.SlideAnalysis)] == [
        "config", "created", "slide", "tiles", "latents", "clustering", "cohort", "cohort_tiles_per_tissue",
        "representatives", "patches", "tissue_features", "embedding", "cache_hit", "reconstructions",
        "embedding_colours", "warnings", "timings_s", "engine", "regions"]
    assert [f.name for f in fields(rf.AnalysisManifest)] == [
        "version", "created", "seed", "slide", "tiles", "embedding", "clusters", "representatives", "nuclei", "cohort",
        "outputs", "timings_s", "engine", "environment", "warnings", "config", "regions"]


def test_model_file_names_are_the_checkpoints():
    from tumls_qp.tissue.embeddings.training import CHECKPOINT_CONFIG, CHECKPOINT_WEIGHTS

    assert rf.MODEL_FILES == (CHECKPOINT_WEIGHTS, CHECKPOINT_CONFIG)


def test_optional_parts_left_out(analysis, tmp_path):
    bare = replace(analysis, config=replace_in(analysis.config, **{"nuclei.enabled": False, "output.gzip": True}),
                   patches=tuple(replace(p, nuclei=None) for p in analysis.patches), tissue_features={},
                   embedding_colours=None, cohort=None)
    manifest = rf.write_run(tmp_path / "bare", bare)
    run = rf.read_run(tmp_path / "bare")
    assert run.nuclei is None and run.features is None and run.patch_features is None
    assert run.embedding_colours is None and run.embedding_colours_path is None
    assert manifest.outputs == rf.OutputsInfo(geojson="tissue.geojson.gz", geojson_features=len(run.geojson()))
    assert manifest.cohort is None and manifest.nuclei.nuclei == 0 and run.manifest == manifest


def test_a_folder_of_the_previous_format_gets_a_clear_error(tmp_path, capsys):
    old = shutil.copytree(FORMAT1_RUN, tmp_path / "old-run")
    with pytest.raises(FormatVersionError) as info:
        rf.read_run(old)
    message = str(info.value)
    assert "written by tumls-qp 0.1.0 in run-folder format 1" in message
    assert f"reads format {rf.FORMAT_VERSION} only" in message and "tumls-qp analyze SLIDE --out DIR" in message
    # The command line: exit 3 (unusable input), the same message, nothing written.
    assert main(["report", str(old)]) == 3
    err = capsys.readouterr().err
    assert "run-folder format 1" in err and "tumls-qp analyze" in err
    assert sorted(p.name for p in old.iterdir()) == sorted(p.name for p in FORMAT1_RUN.iterdir())
    seeds = tmp_path / "seeds.geojson"
    seeds.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [x, 100]},
         "properties": {"classification": {"name": name, "color": [1, 2, 3]}}}
        for name, x in (("A", 100), ("B", 2000))]}))
    for argv in (["seeded", str(old), "--seeds", str(seeds)], ["prototypes", str(old)],
                 ["embedding-colours", str(old)], ["qupath-project", str(tmp_path / "p.qpproj"), str(old)]):
        assert main(argv) == 3, argv
        assert "run-folder format 1" in capsys.readouterr().err, argv


def test_a_newer_format_asks_for_an_upgrade(written, tmp_path):
    folder = shutil.copytree(written[0], tmp_path / "newer")
    data = json.loads((folder / rf.MANIFEST).read_text())
    data["format_version"] = rf.FORMAT_VERSION + 1
    (folder / rf.MANIFEST).write_text(json.dumps(data))
    with pytest.raises(FormatVersionError, match=f"format {rf.FORMAT_VERSION + 1}.*Upgrade tumls-qp"):
        rf.read_run(folder)


@pytest.mark.parametrize(("change", "fragment"), [
    (lambda m: m["clusters"].pop("k"), "manifest.clusters lacks the field(s) k"),
    (lambda m: m["tiles"].update(colour="blue"), "manifest.tiles has unknown field(s) colour"),
    (lambda m: m["slide"].update(mpp="0.5"), "manifest.slide.mpp must be a number; got '0.5'"),
    (lambda m: m["clusters"]["gaps"].update(two=1.0), "manifest.clusters.gaps keys must be integers"),
    (lambda m: m["config"]["tiles"].update(tile_um=-1), "manifest.config"),
    (lambda m: m.update(kind="sculpture"), "unknown kind 'sculpture'"),
])
def test_a_damaged_manifest_names_the_field(written, tmp_path, change, fragment):
    folder = shutil.copytree(written[0], tmp_path / "damaged")
    data = json.loads((folder / rf.MANIFEST).read_text())
    change(data)
    (folder / rf.MANIFEST).write_text(json.dumps(data))
    with pytest.raises(InvalidInputError, match="cannot read manifest.json") as info:
        rf.read_run(folder)
    assert fragment in str(info.value)


def test_a_folder_of_another_kind_is_named(written, tmp_path):
    folder = shutil.copytree(written[0], tmp_path / "other")
    data = json.loads((folder / rf.MANIFEST).read_text())
    data["kind"] = "cluster-tiles"
    (folder / rf.MANIFEST).write_text(json.dumps(data))
    with pytest.raises(InvalidInputError, match="holds the result of `tumls-qp cluster-tiles.*this needs a folder written by `tumls-qp analyze"):
        rf.read_run(folder)
    assert rf.folder_kind(folder) == "cluster-tiles" and rf.folder_kind(FORMAT1_RUN) == "analysis"
    assert rf.folder_kind(tmp_path) is None


def test_staged_runs_appear_together_or_not_at_all(analysis, written, tmp_path):
    earlier = shutil.copytree(written[0], tmp_path / "a")
    before = {p.relative_to(earlier): p.read_bytes() for p in earlier.rglob("*") if p.is_file()}
    with pytest.raises(RuntimeError, match="second slide broke"):
        with rf.RunStaging(tmp_path) as staging:
            staged = staging.write("a", replace(analysis, warnings=("new",)))
            assert staged.parent == tmp_path and staged.name.startswith(".a.")
            raise RuntimeError("second slide broke")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert {p.relative_to(earlier): p.read_bytes() for p in earlier.rglob("*") if p.is_file()} == before
    with rf.RunStaging(tmp_path) as staging:
        staging.write("a", replace(analysis, warnings=("new",)))
        staging.write("b", analysis)
        [(a, manifest), (b, _)] = staging.commit({"tiles": 1.23456, "outputs": 2.0})
    assert (a.name, b.name) == ("a", "b") and manifest.timings_s == {"tiles": 1.235, "outputs": 2.0}
    assert rf.read_run(a).manifest == manifest and rf.read_run(a).manifest.warnings == ("new",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_runs_staged_elsewhere_are_handed_over_and_committed_together(analysis, tmp_path):
    """What the workers of a distributed cohort do: each stages its run folder in the run's own staging folder and
    releases it; one adopts them all and commits them together, or removes them all."""
    out, staging_in = tmp_path / "out", tmp_path / "out" / ".run.partial"
    released = []
    for name in ("a", "b"):
        with rf.RunStaging(out, staging_in) as worker:
            stage = worker.write(name, analysis)
            assert stage.parent == staging_in
            released += worker.release()
        assert stage.is_dir()  # released: not removed on exit
    assert [r.target for r in released] == [out / "a", out / "b"] and not (out / "a").exists()
    with pytest.raises(RuntimeError, match="commit failed"):
        with rf.RunStaging(out) as committer:
            committer.adopt(released[:1])
            raise RuntimeError("commit failed")
    assert not released[0].stage.exists() and released[1].stage.exists()
    with pytest.raises(ValueError, match="does not go into"):
        rf.RunStaging(tmp_path / "elsewhere").adopt(released[1:])
    with rf.RunStaging(out) as committer:
        committer.adopt(released[1:])
        [(b, manifest)] = committer.commit({"outputs": 1.0})
    assert b == out / "b" and rf.read_run(b).manifest == manifest and manifest.timings_s == {"outputs": 1.0}
    assert sorted(p.name for p in out.iterdir()) == [".run.partial", "b"] and list(staging_in.iterdir()) == []


def test_the_server_reports_a_previous_format_for_a_job(tmp_path):
    pytest.importorskip("fastapi")
    from server_helpers import IdleRunner, api_client, job_body, small_slide

    from tumls_qp.server.app import create_app
    from tumls_qp.server.settings import ServerSettings
    from tumls_qp.server.store import JobStore

    slide = small_slide(tmp_path / "slides")
    settings = ServerSettings(data_dir=tmp_path / "data", roots=(tmp_path / "slides",))
    old = shutil.copytree(FORMAT1_RUN, tmp_path / "old-run")
    with api_client(create_app(settings, IdleRunner())) as client:
        job = client.post("/jobs", json=job_body(slide)).json()
        store = JobStore(settings.db_path)
        try:
            claimed = store.claim(0)
            assert store.finish(job["id"], claimed.attempt, "succeeded", run_dir=str(old), geojson_path="",
                                classes=[], summary={"k": 2, "run_dir": str(old)})
        finally:
            store.close()
        seeds = {"seeds": [{"class": "A", "geometry": {"type": "Point", "coordinates": [10, 10]}},
                           {"class": "B", "geometry": {"type": "Point", "coordinates": [900, 900]}}]}
        for response in (client.post(f"/jobs/{job['id']}/seeded", json=seeds),
                         client.get(f"/jobs/{job['id']}/prototypes")):
            assert response.status_code == 409, response.text
            detail = response.json()["detail"]
            assert "earlier tumls-qp" in detail and "run-folder format 1" in detail and "POST /jobs" in detail


def test_format1_fixture_is_what_tumls_qp_0_1_wrote():
    data = json.loads((FORMAT1_RUN / rf.MANIFEST).read_text())
    assert data["tool"] == "tumls-qp" and data["version"] == "0.1.0" and "format_version" not in data
    assert sorted(p.name for p in FORMAT1_RUN.iterdir()) == ["manifest.json", "representatives.csv", "thumbnail.png",
                                                              "tiles.csv"]
