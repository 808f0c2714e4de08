"""Label-efficient benchmark on LC25000 (617 real labelled tiles) and SIC request time at 10,000 tiles.

For each setting (5-class; lung only, 3 classes; colon only, 2 classes; the two organs were
downscaled by different people, see the data's PROVENANCE.md):

- the floor: an 8x8x8 RGB colour histogram clustered with k-means (k = number of classes);
- unsupervised clustering of the autoencoder embeddings (k from the dendrogram, and k known);
- seeded iterative clustering with 1, 3 and 5 random seed tiles per class, 5 draws each:
  best and mean F1 on the tiles that are not seeds (macro-F1; for colon also the binary
  Algorithm 1 with colon_aca as the positive class);
- the prototype dictionary: a class-stratified half of the tiles builds it (autoencoder trained
  on that half only, over-clustering with k from the elbow, simulated naming of the 10 central
  tiles of each cluster at > 80 % purity), the other half is queried with Direct-Query and
  Cluster-then-Query (γ = 5): accuracy on the held-out half.

Then a synthetic two-tissue slide with about 10,000 tissue tiles is analysed and seeded
clustering requests are timed end to end (``labelling.seeded_classification``).

Every parameter is the tool's default or the papers' (see the report); nothing is tuned on
these scores. Prints a Markdown report (``--report`` also writes it).

    python benchmarks/label_efficient.py --report /tmp/label_efficient_output.md
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tumls_qp.provenance import cpu_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (the benchmarks' shared progress lines and report output)
from _common import colour_histogram, log  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lc25000_224"
SETTINGS = {"5-class": None, "lung (3 classes)": "lung", "colon (2 classes)": "colon"}
#: The floor as stated in the data's PROVENANCE.md, to check that our histogram baseline matches it.
PROVENANCE_FLOOR = {"5-class": 0.48, "lung (3 classes)": 0.45, "colon (2 classes)": 0.28}
SEED_COUNTS = (1, 3, 5)
#: Fixed over-clustering sizes reported beside the elbow's choice (the range of the paper's k ablation).
FIXED_K = (10, 20, 30)


def load(data: Path, tile_px: int):
    from tumls_qp.evaluation.tile_folder import read_tile_folder

    folder = read_tile_folder(data, tile_px)
    with open(data / "labels.csv", newline="") as fh:
        rows = {r["file"]: r for r in csv.DictReader(fh)}
    missing = [f for f in folder.files if f not in rows]
    if missing:
        raise SystemExit(f"{len(missing)} images have no label in labels.csv, e.g. {missing[:3]}")
    labels = np.array([rows[f]["label"] for f in folder.files])
    organs = np.array([rows[f]["organ"] for f in folder.files])
    hist = np.stack([colour_histogram(data / f) for f in folder.files])
    return folder, labels, organs, hist


def embed(tiles_train: np.ndarray, tiles_all: np.ndarray, seed: int, cache: Path):
    """Autoencoder (the tool's defaults) trained on ``tiles_train``; latents of ``tiles_all``; cached."""
    if cache.exists():
        with np.load(cache) as npz:
            return npz["latents"], {"epochs": int(npz["epochs"]), "test_mse": float(npz["test_mse"]),
                                    "seconds": float(npz["seconds"]), "cached": True}
    from tumls_qp.config import EmbeddingConfig
    from tumls_qp.tissue.embeddings import embed_tiles, train_autoencoder

    trained = train_autoencoder(tiles_train, EmbeddingConfig(device="cpu"), seed)
    latents = embed_tiles(trained, tiles_all)
    h = trained.history
    np.savez(cache, latents=latents, epochs=len(h.train_mse), test_mse=h.mse["test"], seconds=h.seconds)
    return latents, {"epochs": len(h.train_mse), "test_mse": h.mse["test"], "seconds": h.seconds, "cached": False}


def unsupervised(x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> dict:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from tumls_qp.tissue.clusters import cluster_embeddings
    from tumls_qp.config import ClusterConfig

    auto = cluster_embeddings(x, ClusterConfig(), seed)
    known = KMeans(n_clusters=n_classes, n_init=10, random_state=seed).fit(x).labels_
    return {"k": auto.k, "k_source": auto.k_source,
            "ari_auto": adjusted_rand_score(y, auto.labels), "nmi_auto": normalized_mutual_info_score(y, auto.labels),
            "ari_known": adjusted_rand_score(y, known), "nmi_known": normalized_mutual_info_score(y, known)}


def sic(x: np.ndarray, y: np.ndarray, class_names: list[str], n_seeds: int, draws: int, setting_seed: int,
        **kwargs) -> dict:
    """Best, mean and sd over draws of the F1 on non-seed tiles; the seed draws depend only on (setting, n, draw)."""
    from tumls_qp.interactive.seeded import binary_f1, macro_f1, seeded_iterative_clustering

    positive = kwargs.get("positive")
    scores, seconds = [], []
    for draw in range(draws):
        rng = np.random.default_rng([setting_seed, n_seeds, draw])
        seeds = {name: rng.choice(np.flatnonzero(y == c), n_seeds, replace=False) for c, name in enumerate(class_names)}
        start = time.perf_counter()
        result = seeded_iterative_clustering(x, seeds, **kwargs)
        seconds.append(time.perf_counter() - start)
        mask = np.ones(len(y), dtype=bool)
        mask[np.concatenate(list(seeds.values()))] = False
        if positive is not None:
            scores.append(binary_f1(y[mask], result.labels[mask], class_names.index(positive)))
        else:
            scores.append(macro_f1(y[mask], result.labels[mask], len(class_names)))
    return {"best": max(scores), "mean": float(np.mean(scores)), "sd": float(np.std(scores)),
            "seconds": float(np.mean(seconds))}


def dictionary(x_a: np.ndarray, y_a: np.ndarray, x_b: np.ndarray, y_b: np.ndarray, n_classes: int, seed: int,
               k: int | None = None) -> dict:
    from tumls_qp.interactive.prototypes import (DEFAULT_GAMMA, DEFAULT_T, central_tiles, cluster_then_query,
                                                 direct_query, label_by_central_tiles, over_cluster)
    from tumls_qp.interactive.seeded import macro_f1

    over = over_cluster(x_a, k=k, seed=seed)
    named = label_by_central_tiles(y_a, central_tiles(over.distance, over.labels, over.k, DEFAULT_T))
    clusters = [j for j, c in enumerate(named) if c is not None]
    classes = np.array([named[j] for j in clusters], dtype=np.int64)
    out = {"k": over.k, "prototypes": len(clusters), "mixed": over.k - len(clusters),
           "classes_covered": len(set(classes.tolist()))}
    if len(set(classes.tolist())) < 2:
        return out | {"dq": float("nan"), "cq": float("nan"), "dq_f1": float("nan"), "cq_f1": float("nan")}
    prototypes = over.centroids[clusters]
    dq = direct_query(x_b, prototypes, classes)
    cq = cluster_then_query(x_b, prototypes, classes, gamma=DEFAULT_GAMMA, seed=seed)
    return out | {"dq": float(np.mean(dq.labels == y_b)), "cq": float(np.mean(cq.labels == y_b)),
                  "dq_f1": macro_f1(y_b, dq.labels, n_classes), "cq_f1": macro_f1(y_b, cq.labels, n_classes),
                  "groups": cq.n_groups}


def stratified_halves(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        a += members[: len(members) // 2].tolist()
    a = np.sort(np.array(a))
    return a, np.setdiff1d(np.arange(len(y)), a)


def timing(work: Path, n_target: int, repeats: int) -> dict:
    """Analyse a synthetic two-tissue slide with about ``n_target`` tissue tiles; time seeded requests on it."""
    from shapely.geometry import LineString, Point, box

    from tumls_qp.config import PipelineConfig, replace_in
    from tumls_qp.labelling import seeded_classification
    from tumls_qp.outputs.run_folder import read_run
    from tumls_qp.pipeline import analyze
    from tumls_qp.testing import write_synthetic_slide

    tile_px0, mpp = 64, 0.5  # 32 µm tiles at 0.5 µm/px
    # The scene's tissue ellipse covers pi * 0.42^2 = 55 % of the slide.
    n_side = int(np.ceil(np.sqrt(n_target / (np.pi * 0.42 ** 2)) * 1.02))
    side = n_side * tile_px0
    slide = work / f"timing-{side}.tif"
    if not slide.exists():
        log(f"writing a {side} x {side} px synthetic slide")
        write_synthetic_slide(slide, side, side, mpp, layout="two-tissues")
    run = work / "timing-run" / slide.stem
    if not run.exists():
        log("analysing it (3 autoencoder epochs: the embeddings only need to exist for timing)")
        config = replace_in(PipelineConfig(), **{"tiles.tile_um": tile_px0 * mpp, "embedding.max_epochs": 3,
                                                 "embedding.device": "cpu"})
        analyze([slide], work / "timing-run", config)
    w = h = side
    seeds = [("Stroma", (0, 150, 0), box(0.22 * w, 0.45 * h, 0.28 * w, 0.55 * h)),
             ("Stroma", None, Point(0.3 * w, 0.3 * h)),
             ("Epithelium", (200, 0, 0), LineString([(0.72 * w, 0.4 * h), (0.75 * w, 0.6 * h)])),
             ("Epithelium", None, Point(0.8 * w, 0.5 * h))]
    times, times_no_tiles = [], []
    answer = None
    for _ in range(repeats):
        start = time.perf_counter()
        answer = seeded_classification(run, seeds)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        seeded_classification(run, seeds, tile_objects=False)
        times_no_tiles.append(time.perf_counter() - start)
    # Where the time goes (one request, stage by stage).
    from tumls_qp.outputs.classified import classified_features
    from tumls_qp.outputs.geojson import feature_collection, validate_geojson
    from tumls_qp.interactive.seeded import seeded_iterative_clustering, seeds_to_tiles

    stages = {}
    t0 = time.perf_counter()
    folder = read_run(run)
    data, mpp_run = folder.embeddings, folder.mpp
    stages["read run folder"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mapped = seeds_to_tiles(data.boxes, [(n, g) for n, _, g in seeds])
    stages["seeds to tiles"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = seeded_iterative_clustering(data.latents, mapped.tiles)
    stages["SIC"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    features = classified_features(data.boxes, result.labels, result.confidence, result.classes,
                                   [(0, 150, 0), (200, 0, 0)], mpp_run, score_name="SIC confidence",
                                   region_suffix="SIC")
    stages["GeoJSON objects"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert validate_geojson(feature_collection(features)) == []
    stages["validation"] = time.perf_counter() - t0
    cx = data.boxes[:, 0] + data.boxes[:, 2] / 2
    cy = data.boxes[:, 1] + data.boxes[:, 3] / 2
    size_um = side * mpp
    boundary = (size_um * (0.5 + 0.08 * np.sin(cy * mpp / size_um * 2 * np.pi * 2))) / mpp
    truth = (cx > boundary).astype(int)
    far = np.abs(cx - boundary) > 2 * tile_px0
    return {"tiles": len(data.boxes), "side": side, "median": float(np.median(times)), "min": min(times),
            "max": max(times), "median_no_tiles": float(np.median(times_no_tiles)), "stages": stages,
            "features": len(answer.feature_collection["features"]),
            "accuracy": float(np.mean(answer.result.labels[far] == truth[far])),
            "seed_tiles": {n: len(t) for n, t in answer.seed_tiles.tiles.items()}, "repeats": repeats}


def fmt(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the lc25000_224 folder")
    parser.add_argument("--tile-px", type=int, default=16, choices=[8, 16, 32, 64],
                        help="autoencoder tile size (default 16, the tool's default)")
    parser.add_argument("--draws", type=int, default=5, help="random seed draws per seed count (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-tiles", type=int, default=10_000, help="tissue tiles of the timing slide (0: skip)")
    parser.add_argument("--repeats", type=int, default=5, help="timed requests (default 5)")
    parser.add_argument("--workdir", help="caches embeddings and the timing slide (default: a temporary folder)")
    parser.add_argument("--report", help="also write the Markdown output here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tumls-label-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    data = Path(args.data)
    log(f"reading {data} at {args.tile_px} px")
    folder, labels, organs, hist = load(data, args.tile_px)

    results = {}
    for name, organ in SETTINGS.items():
        idx = np.arange(len(labels)) if organ is None else np.flatnonzero(organs == organ)
        class_names = sorted(set(labels[idx].tolist()))
        y = np.array([class_names.index(v) for v in labels[idx]])
        setting_seed = list(SETTINGS).index(name)
        tag = name.split(" ")[0]
        log(f"{name}: {len(idx)} tiles; autoencoder on all of them")
        x, ae = embed(folder.tiles[idx], folder.tiles[idx], args.seed, work / f"latents-{tag}-all-px{args.tile_px}.npz")
        r = {"n": len(idx), "classes": class_names, "ae": ae}
        r["floor"] = unsupervised(hist[idx], y, len(class_names), args.seed)
        r["ae_clusters"] = unsupervised(x, y, len(class_names), args.seed)
        log(f"{name}: seeded iterative clustering")
        r["sic"] = {n: sic(x, y, class_names, n, args.draws, setting_seed) for n in SEED_COUNTS}
        r["sic_first_step"] = {n: sic(x, y, class_names, n, args.draws, setting_seed, max_splits=0)
                               for n in SEED_COUNTS}
        r["sic_colour"] = {n: sic(hist[idx], y, class_names, n, args.draws, setting_seed) for n in SEED_COUNTS}
        if len(class_names) == 2:
            positive = "colon_aca" if "colon_aca" in class_names else class_names[0]
            r["positive"] = positive
            r["sic_binary"] = {n: sic(x, y, class_names, n, args.draws, setting_seed, positive=positive)
                               for n in SEED_COUNTS}
            r["sic_binary_no_conv"] = {n: sic(x, y, class_names, n, args.draws, setting_seed, positive=positive,
                                              conventional_step=False) for n in SEED_COUNTS}
            r["sic_binary_multi"] = {n: sic(x, y, class_names, n, args.draws, setting_seed, positive=None)
                                     for n in SEED_COUNTS}
        log(f"{name}: dictionary (autoencoder on half A only)")
        a, b = stratified_halves(y, args.seed)
        xh, ae_half = embed(folder.tiles[idx][a], folder.tiles[idx], args.seed,
                            work / f"latents-{tag}-half-px{args.tile_px}.npz")
        r["ae_half"] = ae_half
        r["dictionary"] = dictionary(xh[a], y[a], xh[b], y[b], len(class_names), args.seed)
        r["dictionary_colour"] = dictionary(hist[idx][a], y[a], hist[idx][b], y[b], len(class_names), args.seed)
        r["dictionary_fixed"] = {k: (dictionary(xh[a], y[a], xh[b], y[b], len(class_names), args.seed, k),
                                     dictionary(hist[idx][a], y[a], hist[idx][b], y[b], len(class_names), args.seed, k))
                                 for k in FIXED_K}
        r["halves"] = (len(a), len(b))
        results[name] = r

    timed = timing(work, args.timing_tiles, args.repeats) if args.timing_tiles else None
    total = time.perf_counter() - started
    load_end = os.getloadavg()[0]

    command = (f"python benchmarks/label_efficient.py --tile-px {args.tile_px}"
               + (f" --draws {args.draws}" if args.draws != 5 else "")
               + (f" --timing-tiles {args.timing_tiles}" if args.timing_tiles != 10_000 else "")
               + (f" --workdir {args.workdir}" if args.workdir else "")
               + (f" --report {args.report}" if args.report else ""))
    import sklearn
    import torch as _torch

    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores (shared; 1-minute load average {load_start:.1f} at the start, "
        f"{load_end:.1f} at the end), Python {platform.python_version()}, torch {_torch.__version__}, "
        f"scikit-learn {sklearn.__version__}. Total {total / 60:.1f} min.",
        "",
        f"Data: {data} ({len(labels)} tiles), read as {args.tile_px} x {args.tile_px} px tiles (centre crop, "
        "area averaging). Autoencoder: the tool's defaults (Adam 1e-3, batch 128, 70/15/15 split, early stopping "
        f"after 10 epochs without a better validation MSE, at most 100 epochs), seed {args.seed}, CPU"
        + (f"; embeddings and the timing run are cached in {work} (a first run trains and writes them; the "
           "training times shown are those of that first run)." if args.workdir else "."),
        "",
        "### Unsupervised clustering (labels unused)",
        "",
        "| setting | tiles | colour histogram, k known: ARI / NMI | (PROVENANCE ARI) | colour histogram, k auto | "
        "autoencoder, k auto: k | ARI | NMI | autoencoder, k known: ARI / NMI | AE epochs, test MSE, training time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        f, a = r["floor"], r["ae_clusters"]
        lines.append(
            f"| {name} | {r['n']} | {f['ari_known']:.3f} / {f['nmi_known']:.3f} | {PROVENANCE_FLOOR[name]:.2f} | "
            f"k={f['k']}: {f['ari_auto']:.3f} / {f['nmi_auto']:.3f} | {a['k']} ({a['k_source']}) | "
            f"{a['ari_auto']:.3f} | {a['nmi_auto']:.3f} | {a['ari_known']:.3f} / {a['nmi_known']:.3f} | "
            f"{r['ae']['epochs']}, {r['ae']['test_mse']:.4f}, {r['ae']['seconds']:.0f} s |")
    lines += [
        "",
        f"### Seeded iterative clustering: F1 on the non-seed tiles, best / mean ± sd of {args.draws} draws",
        "",
        "Multi-class SIC (the default) on the autoencoder embeddings; for reference the first seeded k-means "
        "step alone (no recursion) and SIC on the colour histograms. Macro-F1 over the setting's classes.",
        "",
        "| setting | seeds per class | SIC | first step only | SIC on colour histograms | s per request |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        for n in SEED_COUNTS:
            s, f1, c = r["sic"][n], r["sic_first_step"][n], r["sic_colour"][n]
            lines.append(f"| {name} | {n} | {s['best']:.3f} / {s['mean']:.3f} ± {s['sd']:.3f} | "
                         f"{f1['best']:.3f} / {f1['mean']:.3f} ± {f1['sd']:.3f} | "
                         f"{c['best']:.3f} / {c['mean']:.3f} ± {c['sd']:.3f} | {s['seconds']:.3f} |")
    for name, r in results.items():
        if "sic_binary" not in r:
            continue
        lines += [
            "",
            f"Binary, {name}: F1 of the positive class `{r['positive']}` (the paper's metric), best / mean ± sd.",
            "",
            "| seeds per class | Algorithm 1 (with the guarded conventional step) | Algorithm 1 without it | "
            "multi-class scheme |",
            "|---|---|---|---|",
        ]
        for n in SEED_COUNTS:
            cells = [r[k][n] for k in ("sic_binary", "sic_binary_no_conv", "sic_binary_multi")]
            lines.append(f"| {n} | " + " | ".join(f"{c['best']:.3f} / {c['mean']:.3f} ± {c['sd']:.3f}" for c in cells)
                         + " |")
    lines += [
        "",
        "### Prototype dictionary: accuracy on the held-out half",
        "",
        "Half A (class-stratified) trains the autoencoder and builds the dictionary (elbow k over 2..50, the 10 "
        "central tiles of each cluster named when one class holds > 80 % of them, else dropped as mixed); half B "
        "is queried. Macro-F1 in brackets.",
        "",
        "| setting | A / B tiles | k (elbow) | prototypes (mixed dropped) | classes covered | Direct-Query | "
        "Cluster-then-Query (groups) | same with colour histograms: DQ / CQ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        d, c = r["dictionary"], r["dictionary_colour"]
        lines.append(
            f"| {name} | {r['halves'][0]} / {r['halves'][1]} | {d['k']} | {d['prototypes']} ({d['mixed']}) | "
            f"{d['classes_covered']}/{len(r['classes'])} | {fmt(d['dq'])} ({fmt(d['dq_f1'])}) | "
            f"{fmt(d['cq'])} ({fmt(d['cq_f1'])}; {d.get('groups', '-')}) | {fmt(c['dq'])} / {fmt(c['cq'])} |")
    lines += [
        "",
        "The same with k fixed instead of the elbow's choice (the paper's ablation range; not used to choose "
        "anything): accuracy DQ / CQ on half B, classes covered in brackets.",
        "",
        "| setting | embedding | " + " | ".join(f"k = {k}" for k in FIXED_K) + " |",
        "|---|---|" + "---|" * len(FIXED_K),
    ]
    for name, r in results.items():
        for i, label in enumerate(("autoencoder", "colour histogram")):
            cells = [r["dictionary_fixed"][k][i] for k in FIXED_K]
            lines.append(f"| {name} | {label} | " + " | ".join(
                f"{fmt(c['dq'])} / {fmt(c['cq'])} ({c['classes_covered']}/{len(r['classes'])})" for c in cells) + " |")
    if timed:
        lines += [
            "",
            "### Seconds per seeded-clustering request",
            "",
            f"`labelling.seeded_classification` on the run folder of a synthetic two-tissue slide "
            f"({timed['side']} x {timed['side']} px at 0.5 µm/px, 32 µm tiles): {timed['tiles']} tissue tiles, "
            f"4 seeds (a polygon, a line, two points; seed tiles {timed['seed_tiles']}). End to end: read the run "
            "folder, map seeds to tiles, SIC, build and validate the QuPath GeoJSON.",
            "",
            f"| request | median s ({timed['repeats']} runs) | min s | max s |",
            "|---|---|---|---|",
            f"| with {timed['features']} objects (regions + one tile object per tile) | {timed['median']:.2f} | "
            f"{timed['min']:.2f} | {timed['max']:.2f} |",
            f"| regions only (`tile_objects=False`) | {timed['median_no_tiles']:.2f} | | |",
            "",
            "One request, stage by stage: " + ", ".join(f"{k} {v:.3f} s" for k, v in timed["stages"].items()) + ".",
            f"Accuracy against the scene (tiles more than 2 tiles from the boundary): {timed['accuracy']:.3f}.",
        ]
    return _common.emit_report(lines, args.report)


if __name__ == "__main__":
    sys.exit(main())
