import numpy as np
import pytest

from tumls_qp.tissue.clusters import (SPLIT_CRITICAL_VALUE, choose_k, cluster_embeddings, dendrogram_gaps,
                                     split_statistic, vote_k)
from tumls_qp.config import ClusterConfig
from tumls_qp.errors import ConfigError, InvalidInputError
from tumls_qp.tissue.representatives import select_representatives

RNG = np.random.default_rng(0)
MIX = RNG.standard_normal((256, 256)) * 0.1


def _blob(n, shift=0.0, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 256)) @ MIX + shift


def test_gaps_bracket_the_cut():
    heights = np.array([1.0, 2.0, 3.0, 10.0, 30.0])  # 6 points
    assert dendrogram_gaps(heights, 1, 8) == {2: 20.0, 3: 7.0, 4: 1.0, 5: 1.0}


def test_choose_k_rule():
    gaps = {2: 5.0, 3: 9.0, 4: 1.0}
    assert choose_k(gaps, split_statistic=50.0, k_min=1) == (3, "dendrogram")
    assert choose_k(gaps, split_statistic=0.5, k_min=1) == (1, "split test: one tissue")
    assert choose_k(gaps, split_statistic=0.5, k_min=2) == (3, "dendrogram")


@pytest.mark.parametrize("seed", range(5))
def test_one_gaussian_cloud_is_one_tissue(seed):
    x = _blob(1500, seed=seed)
    assert split_statistic(x, seed) < SPLIT_CRITICAL_VALUE
    c = cluster_embeddings(x, ClusterConfig(), seed)
    assert c.k == 1 and c.k_source == "split test: one tissue"
    assert c.labels.tolist() == [0] * 1500


def test_two_clouds_are_two_tissues_largest_first():
    x = np.concatenate([_blob(300, 0.0, 1), _blob(700, 1.0, 2)])
    c = cluster_embeddings(x, ClusterConfig(), 0)
    assert c.k == 2 and c.k_source == "dendrogram"
    assert c.sizes() == [700, 300]  # tissue 0 is the largest
    assert (c.labels[300:] == 0).all() and (c.labels[:300] == 1).all()


def test_three_separated_clouds():
    x = np.concatenate([_blob(200, 0.0, 1), _blob(200, 3.0, 2), _blob(200, -3.0, 3)])
    c = cluster_embeddings(x, ClusterConfig(), 0)
    assert c.k == 3 and sorted(c.sizes()) == [200, 200, 200]


def test_user_k_and_k_min():
    x = _blob(300)
    assert cluster_embeddings(x, ClusterConfig(k=4), 0).k == 4
    assert cluster_embeddings(x, ClusterConfig(k=4), 0).k_source == "user"
    assert cluster_embeddings(x, ClusterConfig(k_min=2), 0).k >= 2


def test_linkage_is_subsampled_above_the_cap():
    x = np.concatenate([_blob(400, 0.0, 1), _blob(400, 2.0, 2)])
    c = cluster_embeddings(x, ClusterConfig(linkage_max_tiles=100), 0)
    assert c.k == 2 and len(c.linkage_indices) == 100 and c.linkage.shape == (99, 4)
    assert len(c.labels) == 800


def test_uncertainty_is_normalised_distance():
    x = np.concatenate([_blob(300, 0.0, 1), _blob(300, 2.0, 2)])
    c = cluster_embeddings(x, ClusterConfig(), 0)
    assert c.uncertainty.min() >= 0 and c.uncertainty.max() == 1.0
    assert np.isclose(c.uncertainty_scale, np.percentile(c.distance, 99))
    assert np.allclose(c.uncertainty, np.minimum(1, c.distance / c.uncertainty_scale), atol=1e-6)
    assert np.allclose(c.distance, np.linalg.norm(x - c.centroids[c.labels], axis=1), atol=1e-3)


def test_representatives_are_closest_to_centroid():
    x = np.concatenate([_blob(100, 0.0, 1), _blob(60, 2.0, 2)])
    c = cluster_embeddings(x, ClusterConfig(k=2), 0)
    reps = select_representatives(c, 5)
    assert [(r.tissue, r.rank) for r in reps] == [(t, r) for t in range(2) for r in range(1, 6)]
    for tissue in range(2):
        members = np.flatnonzero(c.labels == tissue)
        best = members[np.argsort(c.distance[members])[:5]]
        assert [r.tile for r in reps if r.tissue == tissue] == best.tolist()
    assert len(select_representatives(c, 200)) == 160


def test_k_larger_than_distinct_tiles():
    x = np.repeat(_blob(3), 10, axis=0)
    with pytest.raises(InvalidInputError, match="only 3 distinct tiles"):
        cluster_embeddings(x, ClusterConfig(k=5), 0)


def test_identical_tiles_give_one_tissue():
    c = cluster_embeddings(np.ones((50, 256)), ClusterConfig(), 0)
    assert c.k == 1 and np.all(c.uncertainty == 0)


def test_bad_latents():
    with pytest.raises(InvalidInputError, match="NaN"):
        cluster_embeddings(np.full((10, 4), np.nan), ClusterConfig(), 0)
    with pytest.raises(InvalidInputError, match="n >= 2"):
        cluster_embeddings(np.ones((1, 4)), ClusterConfig(), 0)


# --- confidence, posterior, graph clustering ------------------------------------------------------------------------

from tumls_qp.tissue.clusters import assignment_confidence, distance_posterior, tile_graph  # noqa: E402


def test_confidence_known_values():
    d = np.array([[1.0, 3.0, 5.0], [2.0, 2.0, 9.0], [0.0, 4.0, 4.0], [0.0, 0.0, 1.0], [3.0, 1.0, 2.0]])
    assert np.allclose(assignment_confidence(d), [0.5, 0.0, 1.0, 0.0, 1 / 3])
    # Relative to a given assignment: a point nearer another centre has confidence 0.
    assert np.allclose(assignment_confidence(d, np.array([0, 0, 0, 0, 0])), [0.5, 0.0, 1.0, 0.0, 0.0])
    assert np.allclose(assignment_confidence(d[:, :1]), 1.0)
    with pytest.raises(InvalidInputError, match="distances"):
        assignment_confidence(np.ones(3))


def test_two_way_posterior_and_confidence_agree():
    d = np.random.default_rng(3).uniform(0.1, 5, (200, 4))
    p = distance_posterior(d)
    assert np.allclose(p.sum(axis=1), 1) and ((p > 0).sum(axis=1) == 2).all()
    top = np.sort(p, axis=1)
    assert np.allclose(top[:, -1] - top[:, -2], assignment_confidence(d))
    assert (p.argmax(axis=1) == d.argmin(axis=1)).all()
    assert np.allclose(distance_posterior(np.zeros((2, 2))), 0.5)


def test_clustering_carries_confidence_and_posterior():
    x = np.concatenate([_blob(300, 0.0, 1), _blob(300, 2.0, 2), (_blob(1, 0.0, 3) + _blob(1, 2.0, 4)) / 2])
    c = cluster_embeddings(x, ClusterConfig(k=2), 0)
    assert c.method == "kmeans" and c.posterior.shape == (601, 2) and c.warnings == ()
    assert np.allclose(c.posterior.sum(axis=1), 1, atol=1e-6)
    assert (c.posterior.argmax(axis=1) == c.labels).all()
    assert 0 <= c.confidence.min() and c.confidence.max() <= 1
    # The tile halfway between the tissues is the least sure; typicality does not see it.
    assert c.confidence[-1] < np.percentile(c.confidence[:600], 1)
    assert c.uncertainty[-1] < np.percentile(c.uncertainty[:600], 99)
    part = c.select(slice(300, 601))
    assert len(part.labels) == len(part.confidence) == len(part.posterior) == 301 and part.linkage_indices is None


def _halves(rows=8, cols=10, seed=0):
    """Tiles of a grid whose left and right halves are two tissues (noisy latents)."""
    rng = np.random.default_rng(seed)
    r, c = np.divmod(np.arange(rows * cols), cols)
    tissue = (c >= cols // 2).astype(int)
    latents = rng.normal(0, 1.0, (rows * cols, 16)) + np.outer(tissue, np.full(16, 1.5))
    return latents, np.column_stack([c, r]).astype(float), tissue


def test_tile_graph_joins_similar_neighbours_only():
    latents, positions, tissue = _halves()
    edges = tile_graph(latents, positions, 1.5, 0.0)
    assert (edges[:, 0] < edges[:, 1]).all() and len(np.unique(edges, axis=0)) == len(edges)
    distance = np.linalg.norm(positions[edges[:, 0]] - positions[edges[:, 1]], axis=1)
    assert distance.max() <= 1.5
    assert (tissue[edges[:, 0]] == tissue[edges[:, 1]]).mean() > 0.9
    # Groups (slides of a cohort) are never joined; a radius of 1 keeps the 4 direct neighbours.
    groups = (positions[:, 1] >= 4).astype(int)
    assert (groups[edges[:, 0]] == groups[edges[:, 1]]).mean() < 1
    split = tile_graph(latents, positions, 1.5, -1.0, groups)
    assert (groups[split[:, 0]] == groups[split[:, 1]]).all()
    assert len(tile_graph(latents, positions, 1.0, -1.0)) == 8 * 9 + 7 * 10
    with pytest.raises(InvalidInputError, match="positions"):
        tile_graph(latents, positions[:5], 1.5, 0.0)


def test_graph_clustering_finds_the_two_halves():
    latents, positions, tissue = _halves()
    c = cluster_embeddings(latents, ClusterConfig(k=2, method="graph", graph_epochs=150), 0, positions=positions)
    assert c.method == "graph" and c.k == 2 and c.warnings == ()
    agreement = (c.labels == tissue).mean()
    assert max(agreement, 1 - agreement) > 0.95
    assert np.allclose(c.posterior.sum(axis=1), 1, atol=1e-5) and (c.posterior.argmax(axis=1) == c.labels).all()
    assert np.allclose(c.centroids[c.labels[0]], latents[c.labels == c.labels[0]].mean(axis=0), atol=1e-4)
    again = cluster_embeddings(latents, ClusterConfig(k=2, method="graph", graph_epochs=150), 0, positions=positions)
    assert (again.labels == c.labels).all()


def test_graph_without_edges_falls_back_to_kmeans():
    # Every tile alone on its fragment: no two tiles are neighbours, so the graph has no edge.
    latents, positions, tissue = _halves()
    c = cluster_embeddings(latents, ClusterConfig(k=2, method="graph"), 0, positions=positions * 3)
    assert c.method == "kmeans" and "fell back to k-means" in c.warnings[0] and "no edge" in c.warnings[0]
    assert c.k == 2
    # Neighbours that are never similar enough: the same fallback.
    strict = cluster_embeddings(latents, ClusterConfig(k=2, method="graph", graph_similarity=0.999), 0,
                                positions=positions)
    assert strict.method == "kmeans" and "graph_similarity" in strict.warnings[0]


def test_a_mixture_sets_the_graphs_k_and_confidence_keeps_its_meaning():
    latents, positions, tissue = _halves()
    post = np.full((len(tissue), 3), 0.1)
    post[np.arange(len(tissue)), tissue] = 0.8  # component 2 is never the most probable: k = 2
    graph = cluster_embeddings(latents, ClusterConfig(method="graph", graph_epochs=150), 0, positions=positions,
                               posterior=post)
    assert graph.method == "graph" and graph.k == 2 and graph.k_source.startswith("VaDE")
    agreement = (graph.labels == tissue).mean()
    assert max(agreement, 1 - agreement) > 0.95
    mixture = cluster_embeddings(latents, ClusterConfig(), 0, posterior=post)
    assert mixture.method == "mixture" and np.allclose(mixture.posterior.max(axis=1), 0.8 / 0.9, atol=1e-6)
    # Confidence is the distance margin whatever assigned the tiles, not the mixture's posterior.
    d = np.linalg.norm(latents[:, None] - mixture.centroids[None].astype(np.float64), axis=2)
    assert np.allclose(mixture.confidence, assignment_confidence(d, mixture.labels), atol=1e-5)
    # No edge: the mixture assigns the tiles, and a warning says so.
    alone = cluster_embeddings(latents, ClusterConfig(method="graph"), 0, positions=positions * 3, posterior=post)
    assert alone.method == "mixture" and "fell back to the mixture" in alone.warnings[0]


def test_graph_needs_positions_and_valid_options():
    latents, _, _ = _halves()
    with pytest.raises(InvalidInputError, match="positions"):
        cluster_embeddings(latents, ClusterConfig(k=2, method="graph"), 0)
    for change, name in [({"method": "spectral"}, "clusters.method"), ({"graph_radius": 0.5}, "clusters.graph_radius"),
                         ({"graph_similarity": 1.0}, "clusters.graph_similarity"),
                         ({"graph_epochs": 0}, "clusters.graph_epochs")]:
        with pytest.raises(ConfigError, match=name):
            ClusterConfig(**change)


def test_representatives_are_confident_tiles_closest_to_the_centroid():
    from dataclasses import replace

    x = np.concatenate([_blob(100, 0.0, 1), _blob(60, 2.0, 2)])
    c = cluster_embeddings(x, ClusterConfig(k=2), 0)
    # Make the two tiles nearest to tissue 0's centroid unsure: they are passed over, the ranking stays.
    members = np.flatnonzero(c.labels == 0)
    nearest = members[np.argsort(c.distance[members])]
    confidence = c.confidence.copy()
    confidence[nearest[:2]] = 0.05
    reps = select_representatives(replace(c, confidence=confidence), 5, min_confidence=0.1)
    first = [r.tile for r in reps if r.tissue == 0]
    assert first == nearest[2:7].tolist() and all(r.confident for r in reps)
    assert [r.rank for r in reps if r.tissue == 0] == [1, 2, 3, 4, 5]
    # Too few confident tiles: the next-closest complete the set, marked as not confident.
    few = select_representatives(replace(c, confidence=np.where(np.arange(160) == nearest[3], 0.9, 0.0)), 3, 0.5)
    zero = [r for r in few if r.tissue == 0]
    assert [r.tile for r in zero] == [nearest[3], nearest[0], nearest[1]]
    assert [r.confident for r in zero] == [True, False, False]


def test_patch_box_is_centred_and_inside_the_slide():
    from tumls_qp.tissue.representatives import patch_box

    # A 64 px tile at 0.5 µm/px, 256 µm patch = 512 px centred on it.
    assert patch_box((1000, 2000, 64, 64), 256.0, 0.5, (10_000, 10_000)) == (776, 1776, 512, 512)
    # Near the corner the patch shifts inside; a slide smaller than the patch cuts it.
    assert patch_box((0, 0, 64, 64), 256.0, 0.5, (10_000, 10_000)) == (0, 0, 512, 512)
    assert patch_box((9936, 9936, 64, 64), 256.0, 0.5, (10_000, 10_000)) == (9488, 9488, 512, 512)
    assert patch_box((0, 0, 64, 64), 256.0, 0.5, (300, 10_000)) == (0, 0, 300, 512)
    with pytest.raises(InvalidInputError, match="patch_um"):
        patch_box((0, 0, 64, 64), 0.0, 0.5, (300, 300))


def test_k_is_voted_over_resamples_and_the_runner_up_is_reported():
    x = np.concatenate([_blob(150, 0.0, 1), _blob(150, 3.0, 2), _blob(150, -3.0, 3)])
    c = cluster_embeddings(x, ClusterConfig(resamples=6), 0)
    assert c.k == 3 and sum(c.k_votes.values()) == 6 and c.k_votes[3] >= 4
    assert c.runner_up is None or c.runner_up[0] != 3
    assert cluster_embeddings(x, ClusterConfig(resamples=0), 0).k_votes == {}
    assert cluster_embeddings(x, ClusterConfig(k=2), 0).k_votes == {}


def test_runner_up_is_the_second_most_voted_k():
    c = cluster_embeddings(_blob(60), ClusterConfig(resamples=0), 0)
    from dataclasses import replace

    assert replace(c, k=3, k_votes={2: 3, 3: 5, 4: 2}).runner_up == (2, 3)
    assert replace(c, k=3, k_votes={2: 2, 3: 6, 4: 2}).runner_up == (2, 2)  # a tie goes to the smaller k
    assert replace(c, k=3, k_votes={3: 10}).runner_up is None


def test_vote_overrides_an_unstable_full_data_choice():
    x = np.concatenate([_blob(200, 0.0, 1), _blob(200, 2.5, 2)])
    votes = vote_k(x, ClusterConfig(resamples=5), 0)
    assert sum(votes.values()) == 5 and max(votes, key=votes.get) == 2


def test_a_mixture_posterior_decides_the_tissues():
    x = np.concatenate([_blob(100, 0.0, 1), _blob(40, 3.0, 2)])
    post = np.zeros((140, 4))
    post[:100, 2], post[100:, 0] = 0.9, 0.8
    post[:100, 1], post[100:, 2], post[100:, 3] = 0.1, 0.1, 0.1
    c = cluster_embeddings(x, ClusterConfig(), 0, posterior=post)
    assert c.k == 2 and c.k_source == "VaDE mixture (lowest BIC)" and c.sizes() == [100, 40]
    assert c.posterior.shape == (140, 2) and np.allclose(c.posterior.sum(axis=1), 1)
    assert np.allclose(c.posterior[:100, 0], 1.0) and np.allclose(c.posterior[100:], [0.1 / 0.9, 0.8 / 0.9])
    with pytest.raises(InvalidInputError, match="posterior must be"):
        cluster_embeddings(x, ClusterConfig(), 0, posterior=post[:10])


def test_a_mixture_cannot_split_one_tissue():
    # A mixture may cut one Gaussian cloud in two; the one-tissue test still finds one tissue.
    x = _blob(120, 0.0, 3)
    post = np.zeros((120, 2))
    half = x[:, 0] > np.median(x[:, 0])
    post[half, 0], post[~half, 1] = 1.0, 1.0
    c = cluster_embeddings(x, ClusterConfig(), 0, posterior=post)
    assert c.k == 1 and c.k_source == "split test: one tissue" and c.posterior.shape == (120, 1)
    assert cluster_embeddings(x, ClusterConfig(k=2), 0, posterior=post).k == 2  # a given k is kept
