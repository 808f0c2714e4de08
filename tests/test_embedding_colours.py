import sys
import types

import numpy as np
import pytest

from tumls_qp.errors import ConfigError
from tumls_qp.interactive.embedding_colours import coordinates_to_rgb, embedding_colours, umap_available
from tumls_qp.outputs._report_figures import embedding_colours_figure
from tumls_qp.outputs.classified import EMBEDDING_LAYER_CLASS, embedding_colour_features
from tumls_qp.outputs.geojson import make_feature, validate_geojson


def _latents(n=120, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (n, 256)).astype(np.float32) * np.linspace(3, 0.1, 256, dtype=np.float32)


def test_coordinates_to_rgb_scales_each_axis_between_its_percentiles():
    coords = np.stack([np.arange(101.0), np.zeros(101), np.linspace(-1, 1, 101)], axis=1)
    rgb = coordinates_to_rgb(coords)
    assert rgb.dtype == np.uint8 and rgb.shape == (101, 3)
    assert rgb[0, 0] == 0 and rgb[-1, 0] == 255 and rgb[50, 0] == 128  # 1st..99th percentile of 0..100: 1..99
    assert (rgb[:, 1] == 128).all()  # a constant axis
    assert rgb[50, 2] == 128


def test_pca_colours_are_deterministic_and_follow_the_main_axes():
    x = _latents()
    x[:, 0] *= 10
    a, b = embedding_colours(x, "pca", seed=0), embedding_colours(x, "pca", seed=0)
    assert a.method == "pca" and np.array_equal(a.rgb, b.rgb) and a.coords.shape == (120, 3)
    # The first PCA axis is the latent dimension with by far the largest spread.
    assert abs(np.corrcoef(a.coords[:, 0], x[:, 0])[0, 1]) > 0.9
    tiny = embedding_colours(x[:2], "auto")
    assert tiny.method == "pca" and tiny.rgb.shape == (2, 3)


def test_auto_falls_back_to_pca_without_umap(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # import umap -> ImportError
    assert not umap_available()
    assert embedding_colours(_latents(), "auto").method == "pca"
    with pytest.raises(ConfigError, match="umap-learn"):
        embedding_colours(_latents(), "umap")


def test_auto_uses_umap_when_installed(monkeypatch):
    calls = {}

    class FakeUMAP:
        def __init__(self, **kwargs):
            calls.update(kwargs)

        def fit_transform(self, x):
            return x[:, :3] * 2.0

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    x = _latents()
    colours = embedding_colours(x, "auto", seed=7)
    assert colours.method == "umap" and calls["n_components"] == 3 and calls["random_state"] == 7
    assert np.allclose(colours.coords, x[:, :3] * 2.0)
    assert embedding_colours(x[:10], "auto").method == "pca"  # too few tiles for UMAP's neighbour graph


def test_real_umap_when_installed():
    if not umap_available():
        pytest.skip("umap-learn is not installed (optional extra 'umap'); PCA is used instead")
    colours = embedding_colours(_latents(), "umap", seed=0)
    assert colours.method == "umap" and colours.coords.shape == (120, 3) and np.isfinite(colours.coords).all()


def test_layer_features_and_figure():
    x = _latents(n=12)
    colours = embedding_colours(x, "pca")
    boxes = np.array([[c * 50, r * 50, 50, 50] for r in range(3) for c in range(4)])
    features = embedding_colour_features(boxes, colours)
    assert validate_geojson({"type": "FeatureCollection", "features": features}) == []
    assert [f["properties"]["color"] for f in features] == colours.rgb.tolist()
    assert {f["properties"]["classification"]["name"] for f in features} == {EMBEDDING_LAYER_CLASS}
    png = embedding_colours_figure(colours, boxes=boxes, labels=np.arange(12) % 2, title="test")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_validator_checks_the_object_colour():
    from shapely.geometry import box

    feature = make_feature(box(0, 0, 1, 1), "tile", "A", (1, 2, 3))
    feature["properties"]["color"] = "#ff0000"
    assert any("object's own colour" in p for p in validate_geojson(feature))
    feature["properties"]["color"] = [255, 0, 0]
    assert validate_geojson(feature) == []

