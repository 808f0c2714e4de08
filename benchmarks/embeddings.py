"""Embedding methods on LC25000 (617 real labelled tiles): unsupervised clustering against the labels.

For each setting (5-class; lung only, 3 classes; colon only, 2 classes: the two organs were
downscaled by different people, see the data's PROVENANCE.md) and each embedding method
(``embedding.method``), the method is trained on the setting's tiles as it would be on a
slide's, the tiles are clustered by the tool (``clusters.cluster_embeddings``: automatic k
voted over resamples; VaDE's own mixture for ``vade``) and with k-means at the known number
of classes, and scored with ARI and NMI against the labels. The floor, an 8x8x8 RGB colour
histogram, is clustered the same two ways in the same run.

Tiles: each 224 px JPEG is read as the tool reads a tile folder (centre crop, area
averaging): at ``tiles.tile_px`` (16 px) for ``tumls-ae`` and at ``embedding.view_px``
(64 px) for the view methods; the tiles are treated as about 1 µm/px, so a 64 px view is
3.5 µm/px.

``--subset design`` runs on the design subset only (a class-stratified half, seed 0): the
set on which the methods' settings were chosen. The default runs on all 617 tiles.

    python benchmarks/embeddings.py --workdir /tmp/emb-bench
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (the benchmarks' shared machine line and report output)
from _common import colour_histogram, log  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lc25000_224"
SETTINGS = {"5-class": None, "lung (3 classes)": "lung", "colon (2 classes)": "colon"}
#: Targets for the default method with automatic k (ARI).
TARGETS = {"5-class": 0.70, "lung (3 classes)": 0.60, "colon (2 classes)": 0.45}
SOURCE_UM = 224.0  # the tiles are treated as 224 µm (about 1 µm/px)


def class_labels(data: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The class and the organ of each file, from the folder's ``labels.csv``."""
    with open(data / "labels.csv", newline="") as fh:
        rows = {r["file"]: r for r in csv.DictReader(fh)}
    return np.array([rows[f]["label"] for f in files]), np.array([rows[f]["organ"] for f in files])


def design_half(y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Class-stratified half of the tiles (the design subset), as a boolean mask."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        mask[members[: len(members) // 2]] = True
    return mask


def scores(y: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return float(adjusted_rand_score(y, labels)), float(normalized_mutual_info_score(y, labels))


def evaluate(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int, posterior: np.ndarray | None = None) -> dict:
    from sklearn.cluster import KMeans

    from tumls_qp.config import ClusterConfig
    from tumls_qp.tissue.clusters import cluster_embeddings

    auto = cluster_embeddings(x, ClusterConfig(), seed, posterior=posterior)
    known = KMeans(n_clusters=n_classes, n_init=10, random_state=seed).fit(x).labels_
    ari_a, nmi_a = scores(y, auto.labels)
    ari_k, nmi_k = scores(y, known)
    return {"k": auto.k, "k_source": auto.k_source, "votes": auto.k_votes, "runner_up": auto.runner_up,
            "ari_auto": ari_a, "nmi_auto": nmi_a, "ari_known": ari_k, "nmi_known": nmi_k}


def cache_file(workdir: Path | str, method: str, subset: str, setting: str) -> Path:
    """Where the vectors of ``method`` on one setting (a key of ``SETTINGS``) of ``subset`` are cached."""
    return Path(workdir) / f"{method}-{subset}-{setting.split(' ')[0]}.npz"


def read_cache(cache: Path) -> dict | None:
    """Vectors, posterior (None when the method has none) and training seconds of a cache file; None if absent."""
    if not cache.exists():
        return None
    with np.load(cache, allow_pickle=False) as npz:
        return {"vectors": npz["vectors"], "posterior": npz["posterior"] if npz["posterior"].size else None,
                "seconds": float(npz["seconds"]), "cached": True}


def embed(method: str, tiles: np.ndarray, views: np.ndarray, seed: int, cache: Path | None, device: str) -> dict:
    """Fit ``method`` with the tool's defaults on the tiles; vectors, posterior and seconds (cached when asked)."""
    if cache is not None and (hit := read_cache(cache)) is not None:
        return hit
    from tumls_qp.config import ClusterConfig, EmbeddingConfig
    from tumls_qp.tissue.embeddings import TileImages, fit_embedding

    cfg = EmbeddingConfig(method=method, device=device)
    started = time.perf_counter()
    e = fit_embedding(TileImages(tiles, views, SOURCE_UM / views.shape[1]), cfg, seed, clusters=ClusterConfig())
    seconds = time.perf_counter() - started
    if cache is not None:
        np.savez(cache, vectors=e.vectors, posterior=e.posterior if e.posterior is not None else np.zeros(0),
                 seconds=seconds)
    return {"vectors": e.vectors, "posterior": e.posterior, "seconds": seconds, "cached": False}


def fmt_k(r: dict) -> str:
    votes = r["votes"]
    if not votes:
        return f"{r['k']} ({r['k_source']})"
    total = sum(votes.values())
    runner = r["runner_up"]
    close = f"; runner-up {runner[0]}: {runner[1]}/{total}" if runner else "; unanimous"
    return f"{r['k']} ({votes.get(r['k'], 0)}/{total}{close})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the lc25000_224 folder")
    parser.add_argument("--methods", default="tumls-ae,contrastive,vade,handcrafted,textons",
                        help="comma-separated embedding methods (default: all)")
    parser.add_argument("--subset", choices=["all", "design"], default="all",
                        help="all 617 tiles (default) or the design half that chose the settings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="embedding.device (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    parser.add_argument("--workdir", help="caches the vectors of each method and setting")
    parser.add_argument("--report", help="also write the Markdown output here")
    args = parser.parse_args()

    import torch

    from tumls_qp.config import EmbeddingConfig, TileConfig
    from tumls_qp.evaluation.tile_folder import read_tile_folder

    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    work = Path(args.workdir) if args.workdir else None
    if work:
        work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    started = time.perf_counter()
    data = Path(args.data)
    tile_px, view_px = TileConfig().tile_px, EmbeddingConfig().view_px
    log(f"reading {data} at {tile_px} px and {view_px} px")
    small = read_tile_folder(data, tile_px)
    views = read_tile_folder(data, view_px)
    labels, organs = class_labels(data, small.files)
    hist = np.stack([colour_histogram(data / f) for f in small.files])
    subset = design_half(labels, 0) if args.subset == "design" else np.ones(len(labels), dtype=bool)

    results = {}
    for name, organ in SETTINGS.items():
        idx = np.flatnonzero(subset & (True if organ is None else organs == organ))
        classes = sorted(set(labels[idx].tolist()))
        y = np.array([classes.index(v) for v in labels[idx]])
        r = {"n": len(idx), "classes": classes, "floor": evaluate(hist[idx], y, len(classes), args.seed)}
        for method in methods:
            log(f"{name}: {method} on {len(idx)} tiles")
            e = embed(method, small.tiles[idx], views.tiles[idx], args.seed,
                      cache_file(work, method, args.subset, name) if work else None, args.device)
            r[method] = evaluate(e["vectors"], y, len(classes), args.seed, e["posterior"]) | {
                "seconds": e["seconds"], "dim": e["vectors"].shape[1]}
            log(f"  k = {r[method]['k']}, ARI {r[method]['ari_auto']:.3f} (k known {r[method]['ari_known']:.3f}), "
                f"{e['seconds']:.0f} s")
        results[name] = r
    total = time.perf_counter() - started
    load_end = os.getloadavg()

    command = ("python benchmarks/embeddings.py"
               + (f" --data {args.data}" if Path(args.data).resolve() != DEFAULT_DATA.resolve() else "")
               + (f" --methods {args.methods}" if args.methods != parser.get_default("methods") else "")
               + (f" --subset {args.subset}" if args.subset != "all" else "")
               + (f" --threads {args.threads}" if args.threads != 1 else "")
               + (f" --workdir {args.workdir}" if args.workdir else "")
               + (f" --report {args.report}" if args.report else ""))
    import sklearn

    lines = [
        f"Command: `{command}`",
        "",
        f"{_common.machine_line(load_start, load_end)}, torch {args.threads} thread(s), "
        f"Python {platform.python_version()}, torch {torch.__version__}, scikit-learn {sklearn.__version__}. "
        f"Total {total / 60:.1f} min.",
        "",
        f"Data: {data}, {'all' if args.subset == 'all' else 'the design half of the'} tiles; tumls-ae sees "
        f"{tile_px} px tiles, the other methods {view_px} px views ({SOURCE_UM / view_px:.1f} µm/px). Every method "
        f"with the tool's defaults, seed {args.seed}, device {args.device}"
        + (f"; vectors cached in {work} (training seconds are those of the run that wrote them)." if work else "."),
        "",
        "k auto: the tool's rule (dendrogram gap and one-tissue split test, voted over 10 resamples of 80 % of the "
        "tiles; `vade`: its mixture's BIC). The brackets give the votes for the chosen k and the runner-up. "
        "k known: k-means with k = the number of classes on the same vectors.",
        "",
    ]
    for name, r in results.items():
        lines += [f"### {name}: {r['n']} tiles, classes {', '.join(r['classes'])}", "",
                  "| embedding | dim | k auto (votes) | ARI, k auto | NMI, k auto | ARI, k known | NMI, k known | "
                  "training s |",
                  "|---|---|---|---|---|---|---|---|"]
        f = r["floor"]
        lines.append(f"| colour histogram (floor) | 512 | {fmt_k(f)} | {f['ari_auto']:.3f} | {f['nmi_auto']:.3f} | "
                     f"{f['ari_known']:.3f} | {f['nmi_known']:.3f} | - |")
        for method in methods:
            m = r[method]
            lines.append(f"| {method} | {m['dim']} | {fmt_k(m)} | {m['ari_auto']:.3f} | {m['nmi_auto']:.3f} | "
                         f"{m['ari_known']:.3f} | {m['nmi_known']:.3f} | {m['seconds']:.0f} |")
        lines.append("")
    lines += ["Targets for the default method with automatic k (ARI): "
              + ", ".join(f"{k} ≥ {v:.2f}" for k, v in TARGETS.items()) + "."]
    return _common.emit_report(lines, args.report)


if __name__ == "__main__":
    sys.exit(main())
