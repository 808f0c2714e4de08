import numpy as np
import pytest

from tumls_qp.tissue.clusters import (SPLIT_CRITICAL_VALUE, choose_k, cluster_embeddings, dendrogram_gaps,
                                     split_statistic, vote_k)
from tumls_qp.config import ClusterConfig
from tumls_qp.errors import InvalidInputError
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
