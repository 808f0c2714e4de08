"""Two-level (divisive) tissue clustering of texton descriptors, compared on LC25000 (617 real labelled tiles).

Level 1 clusters the texton histograms with the tool's automatic k (``cluster_embeddings``: split
test, Ward dendrogram, resample vote), as the ``textons`` method does. Level 2 takes each level-1
tissue of at least ``--min-tiles`` tiles alone and asks the same rule again, on a second encoding of
the same textons (``texton_encodings.py``'s names: ``excess-32`` adds the texton arrangement at
32 µm, the best lung descriptor found there); a tissue the rule finds to be one stays whole. The
final tissues are the level-2 pieces. Only the automatic k is scored (the question is whether the
recursion finds the tissues the one-level rule misses; level 2 may use another rule of
``k_rules.py``, ``--rules``), with the homogeneous check: each class
alone, through both levels, must stay one tissue. ``only-excess-R`` (``only-cooc-R``) is the bare
co-occurrence without the histogram: the arrangement alone. With the tool's rule the table also gives
each level-1 tissue's one-tissue statistic (G-means Anderson-Darling A*², split above
``SPLIT_CRITICAL_VALUE``).

    python benchmarks/two_level.py [--level2 excess-32,hist,only-excess-32] [--seed S] [--subset design|all]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import log  # noqa: E402
from embeddings import DEFAULT_DATA, SETTINGS  # noqa: E402
from k_rules import RULES as K_RULES, choose  # noqa: E402
from texton_encodings import cooccurrence, encode, histograms, read_views, texton_words  # noqa: E402


def two_level(hist: np.ndarray, second: np.ndarray, rule: str, seed: int,
              min_tiles: int) -> tuple[np.ndarray, np.ndarray, list[int], list[float]]:
    """Level-1 labels (the tool's rule), the labels after splitting each level-1 tissue by ``rule`` (``k_rules.py``)
    on ``second``, the k of level 1 and of each piece, and (rule ``current``) each piece's one-tissue statistic."""
    from tumls_qp.config import ClusterConfig
    from tumls_qp.tissue.clusters import cluster_embeddings

    first = cluster_embeddings(hist, ClusterConfig(), seed)
    labels, ks, statistics, nxt = np.zeros(len(hist), dtype=np.int64), [first.k], [], 0
    for t in range(first.k):
        members = np.flatnonzero(first.labels == t)
        if len(members) < min_tiles:
            sub = np.zeros(len(members), dtype=np.int64)
        elif rule == "current":  # choose() would run the same; keep its one-tissue statistic
            piece = cluster_embeddings(second[members], ClusterConfig(), seed)
            sub = piece.labels
            if piece.split_statistic is not None:
                statistics.append(float(piece.split_statistic))
        else:
            sub = choose(rule, second[members], None, seed)[1]
        sub = np.unique(sub, return_inverse=True)[1].astype(np.int64)
        labels[members] = nxt + sub
        nxt += int(sub.max()) + 1
        ks.append(int(sub.max()) + 1)
    return first.labels, labels, ks, statistics


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the lc25000_224 folder")
    parser.add_argument("--subset", choices=("design", "all"), default="design")
    parser.add_argument("--level2", default="excess-32,hist", help="encodings for level 2, comma-separated")
    parser.add_argument("--rules", default="current,current+bic,gap", help="k_rules.py rules for level 2")
    parser.add_argument("--min-tiles", type=int, default=20, help="smallest level-1 tissue that level 2 may split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", help="also write the Markdown output here")
    args = parser.parse_args()
    level2, rules = args.level2.split(","), args.rules.split(",")
    if bad := sorted(set(rules) - set(K_RULES)):
        parser.error(f"--rules: unknown {', '.join(bad)}; choose from {', '.join(K_RULES)}")
    if bad := [n for n in level2 if n.startswith("only-") and not re.fullmatch(r"only-(cooc|excess)-[\d.]+", n)]:
        parser.error(f"--level2: cannot read {', '.join(bad)} (the bare co-occurrence is only-cooc-R or only-excess-R)")

    from sklearn.metrics import adjusted_rand_score

    from tumls_qp.tissue.clusters import SPLIT_CRITICAL_VALUE

    load_start, started = os.getloadavg(), time.perf_counter()
    data = Path(args.data)
    views, mpp, labels, organs, responses = read_views(data, args.subset)

    rows = []
    for setting, organ in SETTINGS.items():
        idx = np.flatnonzero(np.ones(len(views), bool) if organ is None else organs == organ)
        classes = sorted(set(labels[idx].tolist()))
        y = np.array([classes.index(v) for v in labels[idx]])
        z, words, centres, sample = texton_words(views[idx], responses[idx], mpp, args.seed)
        hist = histograms(words, len(centres))
        for name, rule in [(n, r) for n in level2 for r in rules]:
            if name.startswith("only-"):  # the bare co-occurrence, without the histogram
                kind, _, radius = name.removeprefix("only-").partition("-")
                second = cooccurrence(words, len(centres), float(radius) / mpp, kind == "excess")
            else:
                second = encode(name, z, words, centres, sample, mpp, args.seed)
            lab1, lab, ks, stats = two_level(hist, second, rule, args.seed, args.min_tiles)
            alone = [len(set(two_level(hist[y == c], second[y == c], rule, args.seed, args.min_tiles)[1].tolist()))
                     for c in range(len(classes))]
            ari1, ari = float(adjusted_rand_score(y, lab1)), float(adjusted_rand_score(y, lab))
            rows.append((setting, f"{name}, {rule}", ks, ari1, ari, alone, stats))
            log(f"{setting}: level 2 {name}, {rule}: k {ks[0]} -> {sum(ks[1:])} (pieces {ks[1:]}), ARI {ari1:.3f} -> {ari:.3f}; "
                f"each class alone: {alone} tissues" + (f"; one-tissue statistics {[round(v, 2) for v in stats]}" if stats else ""))
    load_end = os.getloadavg()

    command = " ".join(["python benchmarks/two_level.py"] + (["--subset all"] if args.subset == "all" else [])
                       + ([f"--level2 {args.level2}"] if args.level2 != "excess-32,hist" else [])
                       + ([f"--rules {args.rules}"] if args.rules != "current,current+bic,gap" else [])
                       + ([f"--seed {args.seed}"] if args.seed else []))
    lines = _common.report_head(command, args.report, load_start, load_end, started) + [
        f"Data: {data}, {'the design half of the tiles (seed 0)' if args.subset == 'design' else 'all tiles'}, "
        f"{views.shape[1]} px views, dictionary seed {args.seed}. Level 1: texton histograms, the tool's automatic k; "
        f"level 2: each level-1 tissue of at least {args.min_tiles} tiles, the rule named (`k_rules.py`) on the encoding named.",
        "",
        "| setting | level 2: encoding, rule | k: level 1 -> final (pieces) | ARI: level 1 -> final | each class alone: tissues (right: 1) "
        "| level-1 tissues' one-tissue statistic (tool's rule; splits above " f"{SPLIT_CRITICAL_VALUE}) |",
        "|---|---|---|---|---|---|",
    ]
    for setting, name, ks, ari1, ari, alone, stats in rows:
        lines.append(f"| {setting} | {name} | {ks[0]} -> {sum(ks[1:])} ({', '.join(map(str, ks[1:]))}) | {ari1:.3f} -> {ari:.3f} "
                     f"| {' '.join(map(str, alone))} | {' '.join(f'{v:.2f}' for v in stats) or '-'} |")
    return _common.emit_report(lines, args.report)


if __name__ == "__main__":
    sys.exit(main())
