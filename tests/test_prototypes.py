import io
import json
import zipfile

import numpy as np
import pytest

from tumls_qp.config import PipelineConfig, replace_in
from tumls_qp.errors import ConfigError, InvalidInputError
from tumls_qp.interactive.prototypes import (
    PURITY,
    build_prototypes,
    central_tiles,
    choose_elbow,
    cluster_then_query,
    direct_query,
    elbow_curve,
    label_by_central_tiles,
    load_dictionary,
    load_names,
    naming_from_mapping,
    names_template,
    over_cluster,
    save_dictionary,
)


def _blobs(k, n=60, dim=16, spread=1.0, sep=12.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, sep, (k, dim))
    x = np.concatenate([c + rng.normal(0, spread, (n, dim)) for c in centres])
    return x, np.repeat(np.arange(k), n)


def test_choose_elbow_on_a_known_curve():
    ks = np.arange(1, 51)
    # D falls steeply until k = 6, then slowly: the elbow is 6.
    d = np.where(ks <= 6, 1000 - 160 * (ks - 1), 200 - 2 * (ks - 6)).astype(float)
    assert choose_elbow(ks, d) == 6
    assert choose_elbow(np.arange(1, 3), np.array([5.0, 1.0])) == 2


def test_elbow_picks_the_number_of_blobs():
    k = 5
    x, _ = _blobs(k, n=30, dim=8, seed=k)
    curve = elbow_curve(x, seed=0)
    assert curve.k == k
    assert curve.ks[0] == 1 and curve.ks[-1] == 50 and np.all(np.diff(curve.inertia) <= 0)
    assert np.isnan(curve.reduction[0]) and np.allclose(curve.reduction[1:], -np.diff(curve.inertia))


def test_over_cluster_central_tiles_and_simulated_naming():
    x, y = _blobs(4, n=40)
    over = over_cluster(x, seed=0)
    assert over.k == 4 and over.k_source == "elbow" and sorted(over.sizes()) == [40] * 4
    central = central_tiles(over.distance, over.labels, over.k, t=10)
    assert all(len(c) == 10 for c in central)
    for j, tiles in enumerate(central):
        members = np.flatnonzero(over.labels == j)
        assert over.distance[tiles].max() <= np.sort(over.distance[members])[9] + 1e-6
    named = label_by_central_tiles(y, central)
    assert sorted(named) == [0, 1, 2, 3]
    # Mixed central tiles (70 % of one class) are not named.
    assert label_by_central_tiles(np.array([0] * 7 + [1] * 3), [np.arange(10)]) == [None]
    assert PURITY == 0.8
    with pytest.raises(InvalidInputError, match="k must be an integer >= 2"):
        over_cluster(x, k=1)


def test_naming_from_a_mapping_drops_mixed_and_unnamed_clusters():
    naming = naming_from_mapping({1: "Tumor", "2": "Stroma", 3: "MIXED", 4: None, 5: "Tumor"}, k=6,
                                 colours={"Tumor": [200, 0, 0]})
    assert naming.classes == ("Tumor", "Stroma")
    assert naming.colours[0] == (200, 0, 0)
    assert naming.cluster_class == {0: 0, 1: 1, 4: 0}
    assert naming.mixed == {2} and naming.unnamed(6) == [3, 5]
    assert naming.summary(6) == {"classes": {"Tumor": [1, 5], "Stroma": [2]}, "mixed": [3], "unnamed": [4, 6]}
    with pytest.raises(InvalidInputError, match="at least two classes"):
        naming_from_mapping({1: "Tumor", 2: "mixed"}, k=3)
    with pytest.raises(InvalidInputError, match="cluster 9 does not exist"):
        naming_from_mapping({9: "Tumor"}, k=3)
    with pytest.raises(InvalidInputError, match="contains ':'"):
        naming_from_mapping({1: "Tumor: high", 2: "Stroma"}, k=3)


def test_names_file(tmp_path):
    template = tmp_path / "names.toml"
    template.write_text(names_template(5, "slide", "elbow"))
    with pytest.raises(InvalidInputError, match="at least two classes"):
        load_names(template, 5)  # the untouched template names nothing
    good = tmp_path / "good.toml"
    good.write_text('mixed = [3]\n[classes.Tumor]\nclusters = [1, 4]\ncolor = [200, 30, 30]\n'
                    '[classes."Immune cells"]\nclusters = [2]\n')
    naming = load_names(good, 5)
    assert naming.classes == ("Tumor", "Immune cells") and naming.mixed == {2}
    assert naming.colours[0] == (200, 30, 30)
    cases = [
        ('[classes.Tumor]\nclusters = [1]\n[classes.Stroma]\nclusters = [1]\n', "named both"),
        ('mixed = [1]\n[classes.Tumor]\nclusters = [1]\n[classes.Stroma]\nclusters = [2]\n', "also listed as mixed"),
        ('[classes.Tumor]\nclusters = [7]\n[classes.Stroma]\nclusters = [2]\n', "cluster 7 does not exist"),
        ('[classes.Tumor]\nclusters = [1]\ncolour = [1, 2, 3]\n', "unknown key"),
        ('[classes.Tumor]\nclusters = [1]\ncolor = "red"\n[classes.Stroma]\nclusters = [2]\n', r"\[r, g, b\]"),
        ('names = 3\n', "unknown key"),
    ]
    for text, fragment in cases:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(InvalidInputError, match=fragment):
            load_names(bad, 5)
    broken = tmp_path / "broken.toml"
    broken.write_text("[classes\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_names(broken, 5)


@pytest.fixture()
def model_dir(tmp_path):
    from tumls_qp.tissue.embeddings import Autoencoder, save_checkpoint

    folder = tmp_path / "model"
    folder.mkdir()
    save_checkpoint(Autoencoder(8), folder, {"note": "test"})
    return folder


def _config():
    return replace_in(PipelineConfig(), **{"tiles.tile_px": 8, "tiles.tile_um": 64.0})


def _save(path, model_dir, prototypes=None, classes=("Tumor", "Stroma")):
    prototypes = np.eye(3, 256, dtype=np.float32) if prototypes is None else prototypes
    return save_dictionary(path, prototypes, np.array([0, 1, 0]), classes, [(200, 0, 0), (0, 200, 0)], model_dir,
                           _config(), {"run": "test"}, prototype_cluster=np.array([2, 5, 7]))


def test_dictionary_round_trip(tmp_path, model_dir):
    path = _save(tmp_path / "d.tumlsdict", model_dir)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    book = load_dictionary(path)
    assert book.classes == ("Tumor", "Stroma") and book.colours == ((200, 0, 0), (0, 200, 0))
    assert np.array_equal(book.prototypes, np.eye(3, 256)) and book.prototype_class.tolist() == [0, 1, 0]
    assert book.prototype_cluster.tolist() == [2, 5, 7]
    assert book.config == _config() and book.encoder["tile_px"] == 8
    assert book.provenance["run"] == "test" and book.provenance["tool"] == "tumls-qp"
    encoder = book.load_encoder()
    assert encoder.method == "tumls-ae" and encoder.model.tile_px == 8
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["dictionary.json", "model.json", "model.pt", "prototypes.npy"]


def _rewrite(src, dst, member, data):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, data if name == member else zin.read(name))


def test_dictionary_validation_errors(tmp_path, model_dir):
    good = _save(tmp_path / "good.tumlsdict", model_dir)
    meta = json.loads(zipfile.ZipFile(good).read("dictionary.json"))
    missing = tmp_path / "missing.tumlsdict"
    with pytest.raises(InvalidInputError, match="not found"):
        load_dictionary(missing)
    text = tmp_path / "text.tumlsdict"
    text.write_text("hello")
    with pytest.raises(InvalidInputError, match="not a readable prototype dictionary"):
        load_dictionary(text)

    def variant(name, member, data, fragment):
        path = tmp_path / name
        _rewrite(good, path, member, data)
        with pytest.raises(InvalidInputError, match=fragment):
            load_dictionary(path)

    variant("weights.tumlsdict", "model.pt", b"other weights", "checksum")
    variant("version.tumlsdict", "dictionary.json", json.dumps(meta | {"format_version": 99}), "format_version 99")
    variant("format.tumlsdict", "dictionary.json", json.dumps(meta | {"format": "other"}), "expected")
    bad_class = meta | {"prototypes": [{"class": 0}, {"class": 5}, {"class": 0}]}
    variant("class.tumlsdict", "dictionary.json", json.dumps(bad_class), "prototype 1 has class 5")
    one_class = meta | {"prototypes": [{"class": 0}] * 3}
    variant("one.tumlsdict", "dictionary.json", json.dumps(one_class), "every class must have")
    buffer = io.BytesIO()
    np.save(buffer, np.full((3, 256), np.nan, dtype=np.float32))
    variant("nan.tumlsdict", "prototypes.npy", buffer.getvalue(), "finite")
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 256), dtype=np.float32))
    variant("rows.tumlsdict", "prototypes.npy", buffer.getvalue(), "one entry per row")
    with pytest.raises(InvalidInputError, match="no usable encoder checkpoint"):
        _save(tmp_path / "x.tumlsdict", tmp_path / "nowhere")
    with pytest.raises(InvalidInputError, match="contains ':'"):
        _save(tmp_path / "x.tumlsdict", model_dir, classes=("Tumor: a", "Stroma"))


def test_direct_and_cluster_then_query():
    x, y = _blobs(3, n=50, seed=4)
    means = np.stack([x[y == c].mean(axis=0) for c in range(3)])
    prototypes = np.concatenate([means, means[:1] + 0.5])  # two prototypes of class 0
    classes = np.array([0, 1, 2, 0])
    dq = direct_query(x, prototypes, classes)
    assert np.array_equal(dq.labels, y) and dq.method == "direct"
    assert 0 <= dq.confidence.min() and dq.confidence.max() <= 1 and dq.confidence.mean() > 0.5
    # A tile on a prototype has confidence 1; one halfway between two classes has confidence 0.
    probe = direct_query(np.stack([means[1], (means[1] + means[2]) / 2]), prototypes, classes)
    assert probe.confidence[0] == pytest.approx(1.0) and probe.confidence[1] == pytest.approx(0.0, abs=1e-6)

    default = cluster_then_query(x, prototypes, classes, seed=0)
    assert default.n_groups == 15 and np.array_equal(default.labels, y)
    assert default.d == 3 and default.method == "cluster-then-query" and len(np.unique(default.groups)) == 15
    with pytest.raises(InvalidInputError, match="gamma"):
        cluster_then_query(x, prototypes, classes, gamma=0)
    with pytest.raises(InvalidInputError, match="matching the embeddings"):
        direct_query(x, prototypes[:, :5], classes)


def test_cluster_then_query_suppresses_outliers():
    # Two tissues on a line; the dictionary's prototype of A sits left of this slide's A tiles, so the
    # Direct-Query boundary (x = 3.5) cuts through A's right tail. Cluster-then-Query queries with the
    # centre of A's group instead, and keeps the tail in A.
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.7, (50, 2))
    tail = np.array([[3.8, 0.0], [4.0, 0.5], [3.9, -0.5]])
    b = rng.normal(0, 0.7, (50, 2)) + [10, 0]
    x = np.concatenate([a, tail, b])
    y = np.array([0] * 53 + [1] * 50)
    prototypes, classes = np.array([[-3.0, 0.0], [10.0, 0.0]]), np.array([0, 1])
    dq = direct_query(x, prototypes, classes)
    assert (dq.labels[50:53] == 1).all()
    cq = cluster_then_query(x, prototypes, classes, gamma=1, seed=0)
    assert cq.d == 2 and cq.n_groups == 2 and np.array_equal(cq.labels, y)
    assert (cq.confidence[:53] == cq.confidence[0]).all()  # the group's margin


def test_build_prototypes_from_named_clusters():
    x, y = _blobs(3, n=30)
    over = over_cluster(x, k=3, seed=0)
    mapping = {j + 1: ["A", "B", "mixed"][int(np.bincount(y[over.labels == j]).argmax())] for j in range(3)}
    naming = naming_from_mapping(mapping, 3)
    prototypes, classes, clusters = build_prototypes(over, naming)
    assert len(prototypes) == 2 and sorted(classes.tolist()) == [0, 1]
    assert np.allclose(prototypes, over.centroids[clusters])
