import numpy as np
import pytest
from shapely.geometry import GeometryCollection, LineString, MultiPoint, Point, Polygon, box

from tumls_qp.errors import InvalidInputError
from tumls_qp.interactive.seeded import (
    binary_f1,
    macro_f1,
    relative_margin,
    seeded_iterative_clustering,
    seeded_kmeans,
    seeds_to_tiles,
)


def _blobs(centres, n, spread=1.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.asarray(centres, dtype=float)
    x = np.concatenate([c + rng.normal(0, spread, (n, centres.shape[1])) for c in centres])
    return x, np.repeat(np.arange(len(centres)), n)


def _line_blobs(positions, n, dim=16, seed=0):
    """Blobs centred along the first axis at ``positions``."""
    centres = np.zeros((len(positions), dim))
    centres[:, 0] = positions
    return _blobs(centres, n, seed=seed)


def test_seeded_kmeans_starts_from_the_seeds_and_converges():
    x, y = _line_blobs([0, 10, 20], 50)
    # Centres start at the seed means, so cluster j is the blob of seed j (unlike random k-means numbering).
    labels, centres, d2 = seeded_kmeans(x, [np.array([60]), np.array([0, 1]), np.array([149])])
    assert np.array_equal(labels, np.array([1] * 50 + [0] * 50 + [2] * 50))
    assert np.allclose(centres[:, 0], [10, 0, 20], atol=0.5)
    assert np.array_equal(d2.argmin(axis=1), labels)


def test_relative_margin_known_values():
    d2 = np.array([[0.0, 4.0], [1.0, 1.0], [1.0, 9.0], [4.0, 1.0, 9.0]][:3])
    assert np.allclose(relative_margin(d2), [1.0, 0.0, 0.5])
    assert np.allclose(relative_margin(np.array([[4.0, 1.0, 9.0]])), [1 / 3])
    assert np.allclose(relative_margin(np.zeros((2, 1))), 1.0)


def test_f1_scores():
    assert macro_f1([0, 0, 1, 1], [0, 0, 1, 1], 2) == 1.0
    assert macro_f1([0, 0, 1, 1], [0, 0, 0, 0], 2) == pytest.approx((2 / 3) / 2)
    assert binary_f1([1, 1, 0, 0], [1, 0, 0, 0], positive=1) == pytest.approx(2 / 3)


def test_one_seed_per_class_recovers_separable_blobs():
    rng = np.random.default_rng(1)
    x, y = _blobs(rng.normal(0, 6, (4, 32)), 100, seed=1)
    seeds = {f"class {c}": [int(np.flatnonzero(y == c)[7])] for c in range(4)}
    result = seeded_iterative_clustering(x, seeds)
    assert result.mode == "multiclass" and result.classes == tuple(seeds)
    assert np.array_equal(result.labels, y)
    assert result.seed_f1 == 1.0
    assert result.confidence.dtype == np.float32 and 0 <= result.confidence.min() and result.confidence.max() <= 1
    assert result.counts() == {name: 100 for name in seeds}


def test_binary_algorithm_one_recovers_two_blobs_and_keeps_a_homogeneous_positive_cluster():
    x, y = _line_blobs([0, 12], 100)
    result = seeded_iterative_clustering(x, {"Tumor": [150], "Benign": [3]}, positive="Tumor")
    assert result.mode == "binary" and result.positive == "Tumor"
    assert np.array_equal(result.labels, 1 - y)  # Tumor (class 0) is the second blob
    # The conventional step was tried and refused: the positive cluster is one Gaussian cloud.
    assert [(s.kind, s.accepted) for s in result.steps] == [("seeded k-means", True), ("k-means split", False)]


def test_recursion_splits_the_positive_cluster_when_it_holds_negative_seeds():
    # Benign A far left, benign B close to the tumour T. Seeded 2-means starts the negative centre between
    # the two benign seeds, so B first joins the tumour; B's seed is then inside the positive cluster and
    # the seeded split of that cluster separates B from T (the seed F1 goes from 2/3 to 1).
    x, y = _line_blobs([-30, 11, 20], 60)
    seeds = {"Tumor": [150], "Benign": [5, 70]}
    result = seeded_iterative_clustering(x, seeds, positive="Tumor")
    kinds = [(s.kind, s.accepted) for s in result.steps]
    assert kinds[:2] == [("seeded k-means", True), ("seeded split", True)]
    assert result.steps[1].seed_f1_before == pytest.approx(2 / 3) and result.steps[1].seed_f1 == 1.0
    assert np.array_equal(result.labels, np.where(y == 2, 0, 1))
    # Tiles of B were decided twice: their confidence is the smaller (second) margin.
    assert result.confidence[y == 1].mean() < result.confidence[y == 0].mean()
    # The multi-class scheme refines the same cluster the same way.
    multi = seeded_iterative_clustering(x, seeds)
    assert np.array_equal(multi.labels, result.labels)


def test_conventional_step_cuts_a_small_tumour_out_of_a_mixed_positive_cluster():
    # Only one benign seed, in A: the first seeded 2-means leaves the benign blob B with the small tumour T,
    # with no negative seed inside. Algorithm 1's plain 2-means step then splits B off.
    x, y = _line_blobs([-30, 11, 20], 60)
    seeds = {"Tumor": [150], "Benign": [5]}
    result = seeded_iterative_clustering(x, seeds, positive="Tumor")
    assert [(s.kind, s.accepted) for s in result.steps] == [("seeded k-means", True), ("k-means split", True)]
    assert np.array_equal(result.labels, np.where(y == 2, 0, 1))
    without = seeded_iterative_clustering(x, seeds, positive="Tumor", conventional_step=False)
    assert (without.labels[y == 1] == 0).all()  # B stays with the tumour


def test_three_classes_with_several_seeds():
    x, y = _line_blobs([0, 8, 16], 80, dim=8, seed=3)
    rng = np.random.default_rng(0)
    seeds = {name: rng.choice(np.flatnonzero(y == c), 3, replace=False) for c, name in enumerate("ABC")}
    result = seeded_iterative_clustering(x, seeds)
    assert (result.labels == y).mean() > 0.97


@pytest.mark.parametrize("seeds, fragment", [
    ({}, "no seeds"),
    ({"Tumor": [1, 2]}, "seeds of 'Tumor' only"),
    ({"Tumor": [1], "Benign": []}, "'Benign' has no seed tile"),
    ({"Tumor": [1], "Benign": [1]}, "tile 1 is a seed of both"),
    ({"Tumor": [1], "Benign": [999]}, "tile indices in 0..99"),
])
def test_bad_seeds_are_refused_with_clear_errors(seeds, fragment):
    x, _ = _line_blobs([0, 10], 50)
    with pytest.raises(InvalidInputError, match=fragment):
        seeded_iterative_clustering(x, seeds)


def test_bad_positive_class_is_refused():
    x, _ = _line_blobs([0, 10, 20], 20)
    with pytest.raises(InvalidInputError, match="not one of the seed classes"):
        seeded_iterative_clustering(x, {"a": [0], "b": [30]}, positive="c")
    with pytest.raises(InvalidInputError, match="exactly two classes"):
        seeded_iterative_clustering(x, {"a": [0], "b": [30], "c": [50]}, positive="a")


def _grid(n_cols=10, n_rows=6, size=100, skip=()):
    boxes = [(c * size, r * size, size, size) for r in range(n_rows) for c in range(n_cols) if (c, r) not in skip]
    return np.array(boxes)


def test_seed_geometries_map_to_the_tiles_they_cover():
    boxes = _grid()
    index = {tuple(b[:2] // 100): i for i, b in enumerate(boxes)}
    seeds = [
        ("Tumor", Point(250, 150)),                              # inside tile (2, 1)
        ("Tumor", box(400, 0, 600, 100)),                        # tiles (4, 0) and (5, 0) fully
        ("Tumor", box(700, 0, 760, 160)),                        # 60 % of (7, 0), 36 % of (7, 1)
        ("Benign", box(910, 510, 930, 530)),                     # small: the one tile it lies in, (9, 5)
        ("Benign", LineString([(50, 350), (350, 350)])),         # a scribble through (0..3, 3)
    ]
    mapped = seeds_to_tiles(boxes, seeds)
    assert mapped.tiles["Tumor"].tolist() == sorted(index[k] for k in [(2, 1), (4, 0), (5, 0), (7, 0)])
    assert mapped.tiles["Benign"].tolist() == sorted(index[k] for k in [(0, 3), (1, 3), (2, 3), (3, 3), (9, 5)])
    assert [len(t) for t in mapped.per_seed] == [1, 2, 1, 1, 4] and len(mapped.conflicts) == 0


def test_points_on_shared_edges_collections_and_conflicts():
    boxes = _grid()
    index = {tuple(b[:2] // 100): i for i, b in enumerate(boxes)}
    mapped = seeds_to_tiles(boxes, [("A", MultiPoint([(100, 100), (350, 350)])), ("B", Point(150, 150)),
                                    ("B", GeometryCollection([box(0, 0, 100, 100)]))])
    # (100, 100) touches four tiles: the first (lowest index) one is taken, tile (0, 0), which B also covers:
    # it seeds neither class.
    assert mapped.per_seed[0].tolist() == [index[(0, 0)], index[(3, 3)]]
    assert mapped.conflicts.tolist() == [index[(0, 0)]]
    assert {k: v.tolist() for k, v in mapped.tiles.items()} == {"A": [index[(3, 3)]], "B": [index[(1, 1)]]}


def test_a_class_left_without_tiles_by_conflicts_is_an_error():
    boxes = _grid()
    with pytest.raises(InvalidInputError, match="also covered by seeds of another class"):
        seeds_to_tiles(boxes, [("A", Point(150, 150)), ("B", box(100, 100, 200, 200))])


def test_seeds_outside_the_tissue_tiles_name_the_seed():
    boxes = _grid(skip={(5, 5)})
    with pytest.raises(InvalidInputError, match=r"seed 2 of 2 \(class 'Benign'\).*covers no tissue tile") as info:
        seeds_to_tiles(boxes, [("Tumor", Point(50, 50)), ("Benign", Point(550, 550))])
    assert "x=550, y=550" in str(info.value)
    with pytest.raises(InvalidInputError, match="covers no tissue tile"):
        seeds_to_tiles(boxes, [("Tumor", Polygon([(5000, 5000), (5100, 5000), (5100, 5100)]))])
    with pytest.raises(InvalidInputError, match="has no class name"):
        seeds_to_tiles(boxes, [("", Point(50, 50))])
    with pytest.raises(InvalidInputError, match="has no geometry"):
        seeds_to_tiles(boxes, [("Tumor", Point())])


def test_seed_f1_is_sklearns():
    """The seed F1 is scikit-learn's F1; written out because SIC scores every candidate split, and f1_score's
    input checks cost about 40 times the arithmetic."""
    from sklearn.metrics import f1_score

    from tumls_qp.interactive.seeded import binary_f1, macro_f1

    rng = np.random.default_rng(0)
    for _ in range(300):
        n, classes = int(rng.integers(1, 30)), int(rng.integers(1, 5))
        truth, predicted = rng.integers(0, classes, n), rng.integers(0, classes, n)
        expected = f1_score(truth, predicted, labels=list(range(classes)), average="macro", zero_division=0)
        assert macro_f1(truth, predicted, classes) == pytest.approx(expected, abs=1e-12)
        positive = int(rng.integers(0, classes))
        expected = f1_score(truth, predicted, labels=[positive], average="macro", zero_division=0)
        assert binary_f1(truth, predicted, positive) == pytest.approx(expected, abs=1e-12)
    # A class with no true and no predicted member scores 0, as with zero_division=0.
    assert macro_f1(np.array([0, 0]), np.array([0, 0]), 2) == 0.5
