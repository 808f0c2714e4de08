"""Automatic k with and without the vote over resamples, on the vectors cached by ``embeddings.py``.

Run ``python benchmarks/embeddings.py --workdir DIR`` (and ``--subset design``) first; this script
clusters the cached vectors of every method and setting twice, with ``clusters.resamples`` 0 (the
choice on all tiles alone) and 10 (the default vote), and prints k and ARI of each, so that the
effect of the vote is separated from that of the embedding's training.

    python benchmarks/k_vote.py --workdir DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import embeddings as bench  # noqa: E402  (the same settings and design half as the embeddings benchmark)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(bench.DEFAULT_DATA), help="the lc25000_224 folder")
    parser.add_argument("--workdir", required=True, help="the --workdir given to embeddings.py")
    args = parser.parse_args()

    from sklearn.metrics import adjusted_rand_score

    from tumls_qp.config import ClusterConfig, TileConfig
    from tumls_qp.evaluation.tile_folder import read_tile_folder
    from tumls_qp.tissue.clusters import cluster_embeddings

    data = Path(args.data)
    files = read_tile_folder(data, TileConfig().tile_px).files
    labels, organs = bench.class_labels(data, files)
    print("| tiles | setting | embedding | k, ARI without the vote | k, ARI with the vote (votes) |")
    print("|---|---|---|---|---|")
    for subset in ("design", "all"):
        mask = bench.design_half(labels, 0) if subset == "design" else np.ones(len(labels), dtype=bool)
        for name, organ in bench.SETTINGS.items():
            idx = np.flatnonzero(mask & (True if organ is None else organs == organ))
            for method in ("tumls-ae", "contrastive", "vade", "handcrafted"):
                hit = bench.read_cache(bench.cache_file(args.workdir, method, subset, name))
                if hit is None:
                    continue
                x, post = hit["vectors"], hit["posterior"]
                cells = []
                for resamples in (0, 10):
                    c = cluster_embeddings(x, ClusterConfig(resamples=resamples), 0, posterior=post)
                    ari = adjusted_rand_score(labels[idx], c.labels)
                    cells.append(f"{c.k}, {ari:.3f}" + (f" ({c.k_votes})" if c.k_votes else ""))
                print(f"| {subset} | {name} | {method} | {cells[0]} | {cells[1]} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
