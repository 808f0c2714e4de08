"""The pipeline on the real slides in ../shared/data/wsi (skipped when the folder is absent)."""


import pytest
from run_helpers import assert_one_cohort

from tumls_qp.cli import main
from tumls_qp.config import PipelineConfig, replace_in
from tumls_qp.outputs.geojson import validate_geojson_file
from tumls_qp.pipeline import analyze

pytestmark = pytest.mark.realdata


def _config(**changes):
    return replace_in(PipelineConfig(), **{"embedding.max_epochs": 5, "embedding.device": "cpu", **changes})


def test_cmu_small_region(wsi, tmp_path):
    [result] = analyze([wsi / "CMU-1-Small-Region.svs"], tmp_path, _config(**{"tiles.tile_um": 32.0}))
    m = result.manifest
    assert m.slide.mpp_source == "file" and m.tiles.grid == (34, 46)
    assert 450 < m.tiles.kept < 800
    assert m.clusters.k >= 2
    assert validate_geojson_file(result.run_dir / "tissue.geojson") == []


def test_tcga_jpeg2000_with_given_mpp(wsi, tmp_path):
    [result] = analyze([wsi / "tcga-cr-7395-01a-01-ts1.svs"], tmp_path,
                       _config(**{"slide.mpp": 1.0, "tiles.tile_um": 128.0}))
    m = result.manifest
    assert m.slide.mpp_source == "caller" and m.tiles.grid == (34, 27)
    assert m.tiles.kept > 300
    assert validate_geojson_file(result.run_dir / "tissue.geojson") == []


def test_cohort_of_the_two_he_slides(wsi, tmp_path):
    config = _config(**{"slide.mpp": 1.0, "tiles.tile_um": 64.0})
    results = analyze([wsi / "CMU-1-Small-Region.svs", wsi / "tcga-cr-7395-01a-01-ts1.svs"], tmp_path, config,
                      cohort=True)
    assert results[0].manifest.slide.mpp_source == "file"  # the file's own pixel size wins
    assert results[1].manifest.slide.mpp_source == "caller"
    # One encoder, one clustering: each slide's tiles, embedded by the other's encoder, fall in the same tissues.
    assert_one_cohort([r.run_dir for r in results])
    assert_one_cohort([r.run_dir for r in reversed(results)])
    for r in results:
        assert validate_geojson_file(r.run_dir / "tissue.geojson") == []


def test_fluorescence_ndpi_is_refused_with_exit_3(wsi, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["analyze", str(wsi / "test3-DAPI-2-387.ndpi"), "--out", str(out), "--no-cache", "-q"]) == 3
    err = capsys.readouterr().err
    assert "fluorescence" in err and "--allow-non-he" in err
    assert list(out.iterdir()) == []
