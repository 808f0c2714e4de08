"""Candidate tile descriptors for architecture, compared on the design half of LC25000 (617 real labelled tiles).

The directions tried for a descriptor that sees tissue architecture as well as colour, learned
(if at all) from the tiles themselves, without labels or shipped weights:

- ``textons``: the ``textons`` embedding method as shipped (64 px views, 3.5 µm/px); the same
  without the two smoothed stain images (structure only, no stain amount); the same on 112 px
  views (2 µm/px);
- ``nuclei``: nuclear morphology and arrangement per tile from the tool's nucleus segmentation
  (``cells.nuclei.segment_nuclei``) on the 224 px tiles (about 1 µm/px): nuclei per mm² of
  tissue, log-area mean and spread, 90th-percentile area, elongation (median, 90th
  percentile), haematoxylin darkness (mean, spread, relative to the tile's tissue),
  nearest-neighbour distance (mean, coefficient of variation), third-neighbour distance,
  nuclear area fraction; white (lumen, mucin) fraction, white spaces over 50 µm² per mm²,
  their mean size and the largest one's share of the tile; robustly standardised;
- ``random CNN``: per-channel mean and standard deviation, at four depths, of a randomly
  initialised (Kaiming) 3 x 3 convolutional network in plain torch, on the tile's
  haematoxylin and eosin images (112 px, each centred on its mean); standardised, PCA to 10;
- ``fusion``: the texton histogram and the hand-crafted descriptors, each group standardised,
  reduced by PCA (10 and 15 components) and scaled to unit mean squared norm, so that neither
  group dominates;
- the hand-crafted descriptors (``handcrafted``) at 64 and 112 px, for reference.

Each is clustered per setting (5-class, lung, colon) with k-means at the known number of
classes (its ARI; the lowest ARI over 4 random 80 % subsets of the tiles, each with another
k-means seed: how far the number can be trusted) and with the tool's automatic k
(``clusters.cluster_embeddings``). Learned parts (texton dictionary, PCA, standardisation) are
fitted on the setting's own tiles, as a run would on its slide's.

    python benchmarks/embedding_descriptors.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import log  # noqa: E402
from embeddings import DEFAULT_DATA, SETTINGS, SOURCE_UM, class_labels, design_half, scores  # noqa: E402

from tumls_qp.stains import OD_LUT, REFERENCE_UNMIX  # noqa: E402


def stains(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    od = OD_LUT[rgb]
    conc = np.clip(od @ REFERENCE_UNMIX, 0, None)
    return conc[..., 0], conc[..., 1], od.mean(axis=-1) > 0.1


def standardise(x: np.ndarray, robust: bool = False, pca: int | None = None) -> np.ndarray:
    from sklearn.decomposition import PCA

    x = np.asarray(x, np.float64)
    if robust:
        from tumls_qp.tissue.embeddings.handcrafted import robust_scale

        centre, scale = robust_scale(x)
        x = np.clip((x - centre) / scale, -5, 5)
    else:
        sd = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(sd > 1e-12, sd, 1.0)
    return PCA(min(pca, x.shape[1]), random_state=0).fit_transform(x) if pca else x


def texton_vectors(views: np.ndarray, mpp: float, seed: int, keep: np.ndarray | None = None) -> np.ndarray:
    """The shipped method; ``keep``: only these responses enter the dictionary and the assignment."""
    from tumls_qp.tissue.embeddings.textons import fit_textons, texton_histograms, pixel_responses
    from sklearn.cluster import KMeans

    if keep is None:
        return texton_histograms(views, mpp, fit_textons(views, mpp, seed))
    rng = np.random.default_rng(seed)
    resp = [r[:, keep] for r in pixel_responses(views, mpp)]
    sample = np.concatenate([r[rng.choice(len(r), 200, replace=False)] for r in resp])
    mean, sd = sample.mean(axis=0), sample.std(axis=0) + 1e-9
    km = KMeans(32, n_init=1, random_state=seed).fit((sample - mean) / sd)
    return np.sqrt(np.stack([np.bincount(km.predict((r - mean) / sd), minlength=32) / len(r) for r in resp]))


def nucleus_features(tiles: np.ndarray, mpp: float) -> np.ndarray:
    from scipy.spatial import cKDTree

    from tumls_qp.cells.nuclei import segment_nuclei

    rows = []
    for rgb in tiles:
        labels = segment_nuclei(rgb, mpp).mask2
        n = int(labels.max())
        h, _, tissue = stains(rgb)
        tissue_mm2 = max(int(tissue.sum()), 1) * (mpp / 1000) ** 2
        white, n_white = ndi.label(~tissue)
        white_um2 = np.bincount(white.ravel())[1:] * mpp * mpp if n_white else np.zeros(1)
        row = [n / tissue_mm2, float((~tissue).mean()), (white_um2 > 50).sum() / tissue_mm2,
               float(np.sqrt(white_um2.mean())), white_um2.max() / (rgb.shape[0] * rgb.shape[1] * mpp * mpp)]
        if n >= 4:
            idx = np.arange(1, n + 1)
            ones = np.ones_like(labels)
            area = ndi.sum(ones, labels, idx) * mpp * mpp
            centre = np.array(ndi.center_of_mass(ones, labels, idx))
            yy, xx = np.nonzero(labels)
            lab = labels[yy, xx]
            dy, dx = yy - centre[lab - 1, 0], xx - centre[lab - 1, 1]
            count = np.bincount(lab)[1:]
            syy, sxx, sxy = (np.bincount(lab, w)[1:] / count for w in (dy * dy, dx * dx, dx * dy))
            mid, half = (sxx + syy) / 2, np.sqrt(((sxx - syy) / 2) ** 2 + sxy ** 2)
            elongation = np.sqrt((mid + half) / np.maximum(mid - half, 1e-6))
            dark = ndi.mean(h, labels, idx)
            d = cKDTree(centre * mpp).query(centre * mpp, k=4)[0]
            level = max(float(np.median(h[tissue])) if tissue.any() else 1e-3, 1e-3)
            row += [np.log(area).mean(), np.log(area).std(), np.percentile(area, 90), np.median(elongation),
                    np.percentile(elongation, 90), dark.mean(), dark.std(), np.median(dark / level),
                    d[:, 1].mean(), d[:, 1].std() / max(d[:, 1].mean(), 1e-6), d[:, 3].mean(),
                    area.sum() / (tissue_mm2 * 1e6)]
        else:
            row += [np.nan] * 12
        rows.append(row)
    x = np.array(rows, np.float64)
    return np.where(np.isnan(x), np.nanmedian(x, axis=0), x)


def random_cnn(views: np.ndarray, seed: int) -> np.ndarray:
    import torch

    torch.manual_seed(seed)
    convs, c = [], 2
    for width in (32, 64, 128, 128):
        conv = torch.nn.Conv2d(c, width, 3, padding=1, bias=False)
        torch.nn.init.kaiming_normal_(conv.weight)
        convs.append(conv)
        c = width
    out = []
    with torch.no_grad():
        for start in range(0, len(views), 32):
            h, e, _ = stains(views[start:start + 32])
            x = torch.from_numpy(np.stack([h, e], axis=1).astype(np.float32))
            x = x - x.mean(dim=(2, 3), keepdim=True)
            stats = []
            for conv in convs:
                x = torch.relu(conv(x))
                stats += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
                x = torch.nn.functional.avg_pool2d(x, 2)
            out.append(torch.cat(stats, 1).numpy())
    return np.concatenate(out)


def evaluate(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> dict:
    from sklearn.cluster import KMeans

    from tumls_qp.config import ClusterConfig
    from tumls_qp.tissue.clusters import cluster_embeddings

    known = scores(y, KMeans(k, n_init=10, random_state=seed).fit(x).labels_)[0]
    rng = np.random.default_rng(seed + 7)
    subsets = []
    for r in range(4):
        sub = rng.choice(len(y), int(0.8 * len(y)), replace=False)
        subsets.append(scores(y[sub], KMeans(k, n_init=10, random_state=seed + 1 + r).fit(x[sub]).labels_)[0])
    auto = cluster_embeddings(x, ClusterConfig(), seed)
    return {"known": known, "low": min(subsets), "auto": scores(y, auto.labels)[0], "k": auto.k}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the lc25000_224 folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", help="also write the Markdown output here")
    args = parser.parse_args()

    import torch

    from tumls_qp.evaluation.tile_folder import read_tile_folder
    from tumls_qp.tissue.embeddings.handcrafted import describe_views
    from tumls_qp.tissue.embeddings.textons import RESPONSES

    torch.set_num_threads(1)
    load_start, started = os.getloadavg(), time.perf_counter()
    data = Path(args.data)
    log(f"reading {data} at 64, 112 and 224 px")
    px = {p: read_tile_folder(data, p) for p in (64, 112, 224)}
    files = px[64].files
    labels, organs = class_labels(data, files)
    design = design_half(labels, 0)
    views = {p: px[p].tiles for p in px}
    mpp = {p: SOURCE_UM / p for p in px}
    smoothed = [RESPONSES // 2 - 1, RESPONSES - 1]  # the two smoothed stain images
    structure_only = np.setdiff1d(np.arange(RESPONSES), smoothed)

    # Per-tile descriptors (nothing learned across tiles) are computed once; the rest per setting.
    log("per-tile descriptors: hand-crafted, nuclei, random CNN")
    per_tile = {"hc64": describe_views(views[64][design], mpp[64]),
                "hc112": describe_views(views[112][design], mpp[112])}
    per_tile["nuclei"] = nucleus_features(views[224][design], mpp[224])
    per_tile["cnn"] = random_cnn(views[112][design], args.seed)
    where = np.flatnonzero(design)

    def tiles_of(p: int, idx: np.ndarray) -> np.ndarray:
        return views[p][where[idx]]

    def fused(idx: np.ndarray) -> np.ndarray:
        parts = [standardise(texton_vectors(tiles_of(64, idx), mpp[64], args.seed), pca=10),
                 standardise(standardise(per_tile["hc64"][idx], robust=True), pca=15)]
        return np.concatenate([g / np.sqrt((g ** 2).sum(axis=1).mean()) for g in parts], axis=1)

    variants: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "textons (as shipped; 64 px, 3.5 µm/px)": lambda idx: texton_vectors(tiles_of(64, idx), mpp[64], args.seed),
        "textons, structure only (no smoothed stain images)":
            lambda idx: texton_vectors(tiles_of(64, idx), mpp[64], args.seed, structure_only),
        "textons on 112 px views (2 µm/px)": lambda idx: texton_vectors(tiles_of(112, idx), mpp[112], args.seed),
        "nuclear morphology and arrangement (224 px)": lambda idx: standardise(per_tile["nuclei"][idx], robust=True),
        "random CNN statistics (112 px, H and E)": lambda idx: standardise(per_tile["cnn"][idx], pca=10),
        "fusion: textons + hand-crafted, per-group PCA": fused,
        "hand-crafted (64 px)": lambda idx: standardise(per_tile["hc64"][idx], robust=True),
        "hand-crafted (112 px)": lambda idx: standardise(per_tile["hc112"][idx], robust=True),
    }
    results = {}
    for name, organ in SETTINGS.items():
        idx = np.flatnonzero(np.ones(len(where), bool) if organ is None else organs[design] == organ)
        classes = sorted(set(labels[design][idx].tolist()))
        y = np.array([classes.index(v) for v in labels[design][idx]])
        for variant, fn in variants.items():
            log(f"{name}: {variant} on {len(idx)} tiles")
            results[(variant, name)] = evaluate(fn(idx), y, len(classes), args.seed)
    load_end = os.getloadavg()

    lines = _common.report_head("python benchmarks/embedding_descriptors.py", args.report, load_start, load_end,
                                started) + [
        f"Data: {data}, the design half of the tiles (seed 0). Each cell: ARI with k known (lowest over 4 random "
        "80 % subsets) / ARI with the tool's automatic k (that k).",
        "",
        "| descriptor | " + " | ".join(SETTINGS) + " |",
        "|---|" + "---|" * len(SETTINGS),
    ]
    for variant in variants:
        cells = [results[(variant, name)] for name in SETTINGS]
        lines.append(f"| {variant} | " + " | ".join(
            f"{c['known']:.3f} ({c['low']:.3f}) / {c['auto']:.3f} (k = {c['k']})" for c in cells) + " |")
    return _common.emit_report(lines, args.report)


if __name__ == "__main__":
    sys.exit(main())
