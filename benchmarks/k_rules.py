"""Rules for the automatic number of tissues k, compared on the vectors cached by ``embeddings.py``.

Every rule sees the same cached tile vectors of every method and setting (5-class, lung, colon)
and chooses k; the tiles are then clustered with k-means at that k (the tool's own
``cluster_embeddings`` for the current rule) and scored with ARI against the labels. The same
rules run on homogeneous sets, where the right answer is k = 1: each LC25000 class alone (its
tiles' vectors from the 5-class and from the organ setting) and Gaussian clouds like those of
``tests/test_clusters.py``.

Rules (k_max = 8 for all; k = 1 must stay possible):

``current``
    The tool's rule (``clusters.cluster_embeddings``, default ``ClusterConfig``): largest Ward
    dendrogram gap, G-means one-tissue split test, voted over 10 resamples of 80 % (``vade``: its
    mixture's BIC, then the split test).
``silhouette``
    k in 2..8 with the largest mean silhouette of k-means; k = 1 when the tool's split test
    (cross-fitted Anderson-Darling, on all tiles) finds one Gaussian cloud.
``gap``
    Tibshirani's gap statistic (k-means inertia against 10 uniform references in the box of the
    data's principal axes): the smallest k with Gap(k) >= Gap(k+1) - s(k+1).
``stability``
    Lange / Ben-Hur: for each k in 2..8, k-means on 6 pairs of random 80 % subsets; the mean ARI of
    the two labelings on the tiles both hold. The same on a Gaussian cloud with the data's mean and
    covariance gives the null. k = argmax of (stability - null); k = 1 when no k beats its null by
    ``STABILITY_MARGIN``.
``g-means``
    G-means proper (Hamerly & Elkan 2003): start from one cluster, split every cluster whose
    cross-fitted split test rejects one Gaussian (A*² > 1.8692) in two by 2-means, until no split is
    supported or k = 8.
``gmm-bic``
    Full-covariance Gaussian mixtures on the first 10 principal components, k in 1..8, lowest BIC
    (the rule VaDE uses for its own k).
``current+bic``
    k = 1 where the current rule finds one tissue, else the ``gmm-bic`` k: the mixture's choice of k
    behind the tool's one-tissue test (so a homogeneous set keeps the current rule's k = 1).

    python benchmarks/k_rules.py --workdir DIR [--subset design] [--methods textons,tumls-ae]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (the benchmarks' shared machine line)
import embeddings as bench  # noqa: E402  (the same settings and design half as the embeddings benchmark)

K_MAX = 8
STABILITY_MARGIN = 0.1
RULES = ("current", "silhouette", "gap", "stability", "g-means", "gmm-bic", "current+bic")
METHODS = ("textons", "tumls-ae", "contrastive", "vade", "handcrafted")
TRUTH = {"5-class": 5, "lung (3 classes)": 3, "colon (2 classes)": 2}


def _kmeans(x: np.ndarray, k: int, seed: int, n_init: int = 4) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x).labels_


def _k_max(x: np.ndarray) -> int:
    return max(1, min(K_MAX, len(np.unique(x.round(6), axis=0)) - 1, len(x) // 4))


def rule_silhouette(x: np.ndarray, seed: int) -> int:
    from sklearn.metrics import silhouette_score

    from tumls_qp.tissue.clusters import SPLIT_CRITICAL_VALUE, split_statistic

    if split_statistic(x, seed) <= SPLIT_CRITICAL_VALUE or _k_max(x) < 2:
        return 1
    scores = {k: silhouette_score(x, _kmeans(x, k, seed)) for k in range(2, _k_max(x) + 1)}
    return max(scores, key=scores.get)


def rule_gap(x: np.ndarray, seed: int, references: int = 10) -> int:
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(seed)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    rotated = centred @ vt.T
    lo, hi = rotated.min(axis=0), rotated.max(axis=0)
    ks = range(1, _k_max(x) + 2)

    def log_w(data: np.ndarray, k: int) -> float:
        return float(np.log(KMeans(n_clusters=k, n_init=2, random_state=seed).fit(data).inertia_))

    refs = [rng.uniform(lo, hi, size=rotated.shape) for _ in range(references)]
    gap, s = {}, {}
    for k in ks:
        ref_w = np.array([log_w(r, k) for r in refs])
        gap[k] = ref_w.mean() - log_w(rotated, k)
        s[k] = ref_w.std() * np.sqrt(1 + 1 / references)
    for k in list(ks)[:-1]:
        if gap[k] >= gap[k + 1] - s[k + 1]:
            return k
    return list(ks)[-2]


def _stability(x: np.ndarray, k: int, pairs: int, seed: int) -> float:
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng([seed, k])
    size = int(round(0.8 * len(x)))
    agree = []
    for p in range(pairs):
        a, b = (np.sort(rng.choice(len(x), size, replace=False)) for _ in range(2))
        la, lb = np.full(len(x), -1), np.full(len(x), -1)
        la[a] = _kmeans(x[a], k, seed + p, n_init=2)
        lb[b] = _kmeans(x[b], k, seed + p + 1000, n_init=2)
        both = (la >= 0) & (lb >= 0)
        agree.append(adjusted_rand_score(la[both], lb[both]))
    return float(np.mean(agree))


def rule_stability(x: np.ndarray, seed: int, pairs: int = 6) -> int:
    rng = np.random.default_rng(seed)
    centred = x - x.mean(axis=0)
    # A Gaussian cloud with the data's covariance: z @ centred / sqrt(n) has covariance centred.T @ centred / n.
    null = rng.standard_normal((len(x), len(x))) @ centred / np.sqrt(len(x))
    excess = {k: _stability(x, k, pairs, seed) - _stability(null, k, pairs, seed) for k in range(2, _k_max(x) + 1)}
    if not excess:
        return 1
    best = max(excess, key=excess.get)
    return best if excess[best] > STABILITY_MARGIN else 1


def rule_g_means(x: np.ndarray, seed: int) -> int:
    from tumls_qp.tissue.clusters import SPLIT_CRITICAL_VALUE, split_statistic

    todo, leaves = [np.arange(len(x))], 0
    while todo:
        members = todo.pop()
        if leaves + len(todo) + 1 < _k_max(x) and len(members) >= 16 \
                and split_statistic(x[members], seed) > SPLIT_CRITICAL_VALUE:
            halves = _kmeans(x[members], 2, seed, n_init=3)
            todo += [members[halves == 0], members[halves == 1]]
        else:
            leaves += 1
    return leaves


def rule_gmm_bic(x: np.ndarray, seed: int) -> int:
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    z = PCA(n_components=min(10, x.shape[1], len(x) - 1), random_state=seed).fit_transform(x)
    bic = {k: GaussianMixture(k, covariance_type="full", n_init=2, random_state=seed, reg_covar=1e-4).fit(z).bic(z)
           for k in range(1, _k_max(x) + 1)}
    return min(bic, key=bic.get)


def choose(rule: str, x: np.ndarray, post: np.ndarray | None, seed: int) -> tuple[int, np.ndarray]:
    """k and the labels of one rule."""
    from tumls_qp.config import ClusterConfig
    from tumls_qp.tissue.clusters import cluster_embeddings

    if rule in ("current", "current+bic"):
        c = cluster_embeddings(x, ClusterConfig(), seed, posterior=post)
        if rule == "current" or c.k == 1:
            return c.k, c.labels
        rule = "gmm-bic"
    k = {"silhouette": rule_silhouette, "gap": rule_gap, "stability": rule_stability,
         "g-means": rule_g_means, "gmm-bic": rule_gmm_bic}[rule](np.asarray(x, dtype=np.float64), seed)
    return k, (np.zeros(len(x), dtype=int) if k == 1 else _kmeans(x, k, seed, n_init=10))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(bench.DEFAULT_DATA), help="the lc25000_224 folder")
    parser.add_argument("--workdir", required=True, help="the --workdir given to embeddings.py (its cached vectors)")
    parser.add_argument("--subset", choices=("design", "all"), default="design")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--no-homogeneous", action="store_true", help="skip the single-class and synthetic sets")
    args = parser.parse_args()
    rules = args.rules.split(",")
    methods = args.methods.split(",")
    for option, given, known in (("--rules", rules, RULES), ("--methods", methods, METHODS)):
        if unknown := sorted(set(given) - set(known)):
            parser.error(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")

    from sklearn.metrics import adjusted_rand_score

    from tumls_qp.config import TileConfig
    from tumls_qp.evaluation.tile_folder import read_tile_folder

    started = time.perf_counter()
    load_start = os.getloadavg()
    data = Path(args.data)
    files = read_tile_folder(data, TileConfig().tile_px).files
    labels, organs = bench.class_labels(data, files)
    mask = bench.design_half(labels, 0) if args.subset == "design" else np.ones(len(labels), dtype=bool)

    print(f"\nTiles: {args.subset}. Each cell: chosen k, ARI (k-means at that k) against the labels.\n")
    print("| setting (true k) | embedding | " + " | ".join(rules) + " |")
    print("|---|---|" + "---|" * len(rules))
    homogeneous: dict[str, list[int]] = {r: [] for r in rules}
    single_sets: list[str] = []
    for name, organ in bench.SETTINGS.items():
        idx = np.flatnonzero(mask & (True if organ is None else organs == organ))
        for method in methods:
            hit = bench.read_cache(bench.cache_file(args.workdir, method, args.subset, name))
            if hit is None:
                continue
            x, post = hit["vectors"], hit["posterior"]
            cells = []
            for rule in rules:
                k, lab = choose(rule, x, post, 0)
                cells.append(f"{k}, {adjusted_rand_score(labels[idx], lab):.3f}")
            print(f"| {name} ({TRUTH[name]}) | {method} | " + " | ".join(cells) + " |", flush=True)
            if args.no_homogeneous:
                continue
            for cls in np.unique(labels[idx]):
                one = labels[idx] == cls
                single_sets.append(f"{method}/{name.split(' ')[0]}/{cls}")
                for rule in rules:
                    homogeneous[rule].append(choose(rule, x[one], None if post is None else post[one], 0)[0])
    if not args.no_homogeneous:
        # Gaussian clouds of tests/test_clusters.py: 256 dimensions, a fixed random mixing matrix.
        mix = np.random.default_rng(0).standard_normal((256, 256)) * 0.1
        for n in (300, 1500):
            for seed in range(3):
                single_sets.append(f"Gaussian cloud, {n} points, seed {seed}")
                cloud = np.random.default_rng(seed).standard_normal((n, 256)) @ mix
                for rule in rules:
                    homogeneous[rule].append(choose(rule, cloud, None, seed)[0])
        print(f"\nHomogeneous sets (the right k is 1): {len(single_sets)} sets, each LC25000 class alone "
              "(its tiles' vectors in each setting) and Gaussian clouds.\n")
        print("| rule | sets with k = 1 | k chosen on each set |")
        print("|---|---|---|")
        for rule in rules:
            ks = homogeneous[rule]
            print(f"| {rule} | {sum(k == 1 for k in ks)} / {len(ks)} | {' '.join(map(str, ks))} |")
        print("\nSets, in the order of the last column: " + "; ".join(single_sets))
    print("\n" + _common.machine_line(load_start, os.getloadavg()) + f" Total {(time.perf_counter() - started) / 60:.1f} min.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
