import csv
import json

import numpy as np
import pytest
from run_helpers import assert_one_cohort

import tumls_qp.outputs.run_folder as run_folder
from tumls_qp.config import replace_in
from tumls_qp.errors import NoTissueError, NotBrightfieldError, OutputError
from tumls_qp.outputs.geojson import validate_geojson_file
from tumls_qp.outputs.run_folder import read_run
from tumls_qp.pipeline import STAGES, analyze


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _assert_no_partial(out):
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_two_tissue_slide_run_folder(slides, fast_config, tmp_path):
    events = []
    [result] = analyze([slides["two-tissues"]], tmp_path, replace_in(fast_config, **{"output.report": True}),
                       progress=lambda stage, fraction, message: events.append((stage, fraction)))
    run = tmp_path / "two-tissues"
    assert result.run_dir == run and (run / "report.pdf").is_file()
    _assert_no_partial(tmp_path)
    assert validate_geojson_file(run / "tissue.geojson") == []

    m = result.manifest
    assert read_run(run).manifest == m  # what analyze returns is what the run folder holds
    assert m.tiles.total == 384 and m.tiles.kept + sum(m.tiles.dropped.values()) == 384
    assert m.clusters.k == 2 and m.clusters.k_source == "dendrogram"
    assert set(m.embedding.mse) == {"train", "val", "test"}
    assert m.slide.mpp == pytest.approx(0.5) and m.slide.width_px == 3072
    assert set(m.timings_s) == set(STAGES) and m.environment.peak_rss_mb > 0
    assert m.environment.dependencies["torch"] != "not installed" and m.seed == 0 and m.environment.device == "cpu"
    assert m.config.tiles.tile_um == 64.0

    tiles = _rows(run / "tiles.csv")
    assert len(tiles) == m.tiles.kept
    assert {r["tissue"] for r in tiles} == {"1", "2"}
    assert all(0 <= float(r["uncertainty"]) <= 1 for r in tiles)
    # The tissues follow the scene: stroma left of a wavy boundary near x = 1536 px, epithelium right.
    left = [r["tissue"] for r in tiles if int(r["x"]) + 64 < 1200]
    right = [r["tissue"] for r in tiles if int(r["x"]) + 64 > 1900]
    assert max(left.count("1"), left.count("2")) / len(left) > 0.9
    assert max(right.count("1"), right.count("2")) / len(right) > 0.9
    assert max(set(left), key=left.count) != max(set(right), key=right.count)

    reps = _rows(run / "representatives.csv")
    assert [(r["tissue"], r["rank"]) for r in reps] == [(t, str(i)) for t in ("1", "2") for i in range(1, 6)]
    patches = sorted(p.name for p in (run / "patches").glob("*.jpg"))
    assert patches == sorted(f"tissue{t}-rank{r}.jpg" for t in (1, 2) for r in range(1, 6))
    assert m.representatives[0].patch == "patches/tissue1-rank1.jpg" and m.representatives[0].patch_mpp == 0.5
    from PIL import Image

    with Image.open(run / "patches" / "tissue1-rank1.jpg") as patch:
        assert patch.size == (512, 512)  # 256 µm (representatives.patch_um) at 0.5 µm/px, whatever the tile size
    for r in reps:  # centred on its 64 µm tile, inside the slide
        x, y, px, py, pw = (int(r[c]) for c in ("x", "y", "patch_x", "patch_y", "patch_w"))
        assert pw == 512 and 0 <= px <= 3072 - 512 and 0 <= py <= 2048 - 512
        assert (px == 0 or px == 3072 - 512 or px + 256 == x + 64) and (py == 0 or py == 2048 - 512 or py + 256 == y + 64)
    # Confidence beside uncertainty, and representatives among the confident tiles.
    assert all(0 <= float(r["confidence"]) <= 1 for r in tiles)
    assert all(rep.confident for rep in m.representatives)
    assert m.regions.method == "felzenszwalb" and 0 < m.regions.changed_fraction < 0.5
    regions = read_run(run).regions
    assert set(np.unique(regions)) == {0, 1, 2}
    with np.load(run / "embeddings.npz") as npz:
        assert npz["latents"].shape == (len(tiles), 256)
    # The embedding-colour layer: one tile per tissue tile, in the tiles' order, each in its own colour.
    assert m.outputs.embedding_colours == "embedding_colours.geojson"
    assert validate_geojson_file(run / "embedding_colours.geojson") == []
    layer = json.loads((run / "embedding_colours.geojson").read_text())["features"]
    with np.load(run / "embedding_colours.npz") as npz:
        assert npz["rgb"].shape == (len(tiles), 3) and str(npz["method"]) == "pca"
        assert [f["properties"]["color"] for f in layer] == npz["rgb"].tolist()
    assert len(layer) == len(tiles) and {f["properties"]["objectType"] for f in layer} == {"tile"}

    assert [s for s, _ in events if _ == 1.0][-1] == "outputs"
    assert [s for s in dict.fromkeys(s for s, _ in events)] == list(STAGES)
    assert all(0.0 <= f <= 1.0 for _, f in events)


def test_nuclei_of_the_representatives(slides, fast_config, tmp_path):
    """The synthetic epithelium has round nuclei of radius 3.5 µm (38.5 µm²), the stroma 3 x 6 µm ellipses."""
    from PIL import Image
    from shapely.geometry import box, shape

    [result] = analyze([slides["two-tissues"]], tmp_path, fast_config)
    run = result.run_dir
    nuclei = _rows(run / "nuclei.csv")
    reps = {(r["tissue"], r["rank"]): r for r in _rows(run / "representatives.csv")}
    assert len(nuclei) > 20 and result.manifest.nuclei.nuclei == len(nuclei)
    for (tissue, rank), rep in reps.items():
        with Image.open(run / "patches" / f"tissue{tissue}-rank{rank}.labels.png") as labels:
            assert labels.size == (512, 512)
            assert int(np.asarray(labels).max()) == sum(1 for n in nuclei if (n["tissue"], n["rank"]) == (tissue, rank))
    # Which tissue is the epithelium: the one whose representatives lie right of the boundary.
    right = {t for (t, r), rep in reps.items() if int(rep["x"]) > 1900}
    [epithelium] = right
    areas = np.array([float(n["Area um^2"]) for n in nuclei if n["tissue"] == epithelium])
    assert len(areas) > 40 and abs(np.median(areas) - 38.5) / 38.5 < 0.25
    features = {r["tissue"]: r for r in _rows(run / "features.csv")}
    assert set(features) == {"1", "2"}
    assert int(float(features[epithelium]["Nuclei"])) == len(areas)
    # Epithelium nuclei are denser than stroma nuclei.
    stroma = ({"1", "2"} - {epithelium}).pop()
    assert float(features[epithelium]["Nuclei per mm^2"]) > 2 * float(features[stroma]["Nuclei per mm^2"])

    geojson = json.loads((run / "tissue.geojson").read_text())
    detections = [f for f in geojson["features"] if f["properties"]["objectType"] == "detection"]
    assert len(detections) == len(nuclei)
    assert {f["properties"]["classification"]["name"] for f in detections} == {"Nucleus"}
    rep_boxes = [box(int(r["patch_x"]), int(r["patch_y"]), int(r["patch_x"]) + int(r["patch_w"]),
                     int(r["patch_y"]) + int(r["patch_h"])) for r in reps.values()]
    assert all(any(b.buffer(0.01).contains(shape(f["geometry"])) for b in rep_boxes) for f in detections)
    tissue_annotations = [f for f in geojson["features"] if f["properties"].get("name", "").startswith("Tissue")
                          and "representative" not in f["properties"]["name"]]
    assert all("Nuclei" in f["properties"]["measurements"] for f in tissue_annotations)


def test_nuclei_options(slides, fast_config, tmp_path):
    [off] = analyze([slides["homogeneous"]], tmp_path / "off", replace_in(fast_config, **{"nuclei.enabled": False}))
    assert not (off.run_dir / "nuclei.csv").exists() and off.manifest.nuclei.nuclei == 0
    assert len(list((off.run_dir / "patches").iterdir())) == 5  # the patches are still saved
    [one] = analyze([slides["homogeneous"]], tmp_path / "one", replace_in(fast_config, **{"nuclei.representatives": 1}))
    assert sorted(p.name for p in (one.run_dir / "patches").glob("*.labels.png")) == ["tissue1-rank1.labels.png"]
    assert one.manifest.nuclei.representatives_segmented == 1


def test_homogeneous_slide_gives_one_tissue(slides, fast_config, tmp_path):
    [result] = analyze([slides["homogeneous"]], tmp_path, fast_config)
    m = result.manifest
    assert m.clusters.k == 1 and m.clusters.k_source == "split test: one tissue"
    assert any("one tissue only" in w for w in m.warnings)
    assert validate_geojson_file(result.run_dir / "tissue.geojson") == []
    assert len(_rows(result.run_dir / "representatives.csv")) == 5


def test_cohort_shares_tissue_numbers(slides, fast_config, tmp_path):
    config = replace_in(fast_config, **{"clusters.k": 2})
    results = analyze([slides["two-tissues"], slides["homogeneous"]], tmp_path, config, cohort=True)
    assert [r.run_dir.name for r in results] == ["two-tissues", "homogeneous"]
    assert_one_cohort([r.run_dir for r in results])
    # The homogeneous slide is all stroma-like: its tiles take the tissue of the two-tissue slide's stroma side.
    first = _rows(results[0].run_dir / "tiles.csv")
    stroma = [r["tissue"] for r in first if int(r["x"]) + 64 < 1200]
    stroma_id = max(set(stroma), key=stroma.count)
    second = [r["tissue"] for r in _rows(results[1].run_dir / "tiles.csv")]
    assert second.count(stroma_id) / len(second) > 0.9
    for r in results:
        assert validate_geojson_file(r.run_dir / "tissue.geojson") == []


def test_a_view_method_in_cohort_mode_and_from_the_cache(slides, fast_config, tmp_path):
    """``handcrafted`` sees each tile's view; one embedding and one clustering serve the cohort; the cache keeps it."""
    config = replace_in(fast_config, **{"clusters.k": 2, "embedding.method": "handcrafted", "nuclei.enabled": False})
    cache = tmp_path / "cache"
    results = analyze([slides["two-tissues"], slides["homogeneous"]], tmp_path / "a", config, cohort=True,
                      cache_dir=cache)
    first, second = (read_run(r.run_dir) for r in results)
    for run in (first, second):
        m = run.manifest
        assert m.embedding.method == "handcrafted" and m.embedding.view_mpp == pytest.approx(4.0)
        assert m.embedding.view_um == 256.0 and m.embedding.dim == 15 and m.embedding.cache == "miss"
        assert np.array_equal(run.embeddings.centroids, first.embeddings.centroids)
        assert json.loads((run.path / "model.json").read_text())["method"] == "handcrafted"
        assert not (run.path / "reconstructions.npz").exists() and run.notes == []
    stroma = [t for (x, *_), t in zip(first.tiles.boxes, first.tiles.tissue) if x + 64 < 1200]
    stroma_id = max(set(stroma), key=stroma.count)
    assert (second.tiles.tissue == stroma_id).mean() > 0.9
    again = analyze([slides["two-tissues"], slides["homogeneous"]], tmp_path / "b", config, cohort=True,
                    cache_dir=cache)
    assert again[0].manifest.embedding.cache == "hit" and again[0].manifest.embedding.method == "handcrafted"
    assert (tmp_path / "a/two-tissues/tiles.csv").read_text() == (tmp_path / "b/two-tissues/tiles.csv").read_text()


def test_too_few_tiles_for_the_method_is_refused_before_anything_is_written(slides, fast_config, tmp_path, capsys):
    from tumls_qp.cli import main

    config = tmp_path / "c.toml"
    config.write_text('[embedding]\nmethod = "contrastive"\ndevice = "cpu"\n')
    # 256 µm tiles on a 1.5 x 1 mm slide: 24 tiles, enough to cluster (tiles.min_tiles = 20), too few to contrast.
    assert main(["analyze", str(slides["homogeneous"]), "--out", str(tmp_path / "out"), "--config", str(config),
                 "--tile-um", "256", "--no-cache", "-q"]) == 3
    assert "embedding.method = 'contrastive' needs at least 32 tissue tiles" in capsys.readouterr().err
    assert not (tmp_path / "out" / "homogeneous").exists()
    assert not [p for p in (tmp_path / "out").iterdir()]


def test_cache_is_reused(slides, fast_config, tmp_path):
    cache = tmp_path / "cache"
    [first] = analyze([slides["two-tissues"]], tmp_path / "a", fast_config, cache_dir=cache)
    [second] = analyze([slides["two-tissues"]], tmp_path / "b", fast_config, cache_dir=cache)
    assert first.manifest.embedding.cache == "miss" and second.manifest.embedding.cache == "hit"
    assert "train" not in second.manifest.timings_s
    assert (tmp_path / "a/two-tissues/tiles.csv").read_text() == (tmp_path / "b/two-tissues/tiles.csv").read_text()
    # Another parameter of the embedding stage is another cache entry.
    [third] = analyze([slides["two-tissues"]], tmp_path / "c", replace_in(fast_config, seed=5), cache_dir=cache)
    assert third.manifest.embedding.cache == "miss"
    # A different k reuses the embeddings.
    [fourth] = analyze([slides["two-tissues"]], tmp_path / "d", replace_in(fast_config, **{"clusters.k": 3}),
                       cache_dir=cache)
    assert fourth.manifest.embedding.cache == "hit" and fourth.manifest.clusters.k == 3


def test_failure_leaves_nothing_half_written(slides, fast_config, tmp_path, monkeypatch):
    [earlier] = analyze([slides["two-tissues"]], tmp_path, fast_config)
    before = {p.relative_to(earlier.run_dir): p.read_bytes() for p in earlier.run_dir.rglob("*") if p.is_file()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(run_folder, "write_geojson", boom)
    with pytest.raises(OSError, match="disk full"):
        analyze([slides["two-tissues"]], tmp_path, replace_in(fast_config, seed=9))
    _assert_no_partial(tmp_path)
    assert {p.relative_to(earlier.run_dir): p.read_bytes() for p in earlier.run_dir.rglob("*") if p.is_file()} == before


def test_rerun_replaces_the_run_folder(slides, fast_config, tmp_path):
    analyze([slides["two-tissues"]], tmp_path, fast_config)
    (tmp_path / "two-tissues" / "stale.txt").write_text("from an earlier run")
    analyze([slides["two-tissues"]], tmp_path, replace_in(fast_config, **{"clusters.k": 3}))
    assert not (tmp_path / "two-tissues" / "stale.txt").exists()
    assert json.loads((tmp_path / "two-tissues/manifest.json").read_text())["clusters"]["k"] == 3
    _assert_no_partial(tmp_path)


def test_batch_goes_on_after_a_bad_slide(slides, fast_config, tmp_path):
    with pytest.raises(NoTissueError) as info:
        analyze([slides["blank"], slides["homogeneous"]], tmp_path, fast_config)
    assert "1 of 2 slides were analysed" in info.value.__notes__[0]
    assert (tmp_path / "homogeneous" / "manifest.json").is_file() and not (tmp_path / "blank").exists()


def test_cohort_fails_as_a_whole(slides, fast_config, tmp_path):
    with pytest.raises(NotBrightfieldError):
        analyze([slides["homogeneous"], slides["fluorescence"]], tmp_path, fast_config, cohort=True)
    assert list(tmp_path.iterdir()) == []


def test_allow_non_he_analyses_dab(slides, fast_config, tmp_path):
    config = replace_in(fast_config, **{"slide.allow_non_he": True})
    [result] = analyze([slides["dab"]], tmp_path, config)
    assert validate_geojson_file(result.run_dir / "tissue.geojson") == []


def test_embedding_colours_option(slides, fast_config, tmp_path, monkeypatch):
    [result] = analyze([slides["two-tissues"]], tmp_path, replace_in(fast_config, **{"output.embedding_colours": "none"}))
    assert result.manifest.outputs.embedding_colours is None
    assert not list(result.run_dir.glob("embedding_colours*"))
    import tumls_qp.pipeline as pipeline
    from tumls_qp.errors import ConfigError

    monkeypatch.setattr(pipeline, "umap_available", lambda: False)
    with pytest.raises(ConfigError, match="output.embedding_colours = 'umap' needs umap-learn"):
        analyze([slides["two-tissues"]], tmp_path / "u", replace_in(fast_config, **{"output.embedding_colours": "umap"}))
    assert not (tmp_path / "u" / "two-tissues").exists()


def test_gzip_output(slides, fast_config, tmp_path):
    [result] = analyze([slides["homogeneous"]], tmp_path, replace_in(fast_config, **{"output.gzip": True,
                                                                                         "output.tile_objects": False}))
    assert (result.run_dir / "tissue.geojson.gz").is_file() and not (result.run_dir / "tissue.geojson").exists()
    assert validate_geojson_file(result.run_dir / "tissue.geojson.gz") == []


def test_unwritable_output_folder(slides, fast_config, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot write into the output folder"):
        analyze([slides["homogeneous"]], blocker / "out", fast_config)
