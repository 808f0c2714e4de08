"""Encodings of the texton filter responses, compared on LC25000 (617 real labelled tiles).

The ``textons`` method describes a tile by the hard histogram of its pixels' nearest textons
(square root: Hellinger). Stronger encodings of the same per-pixel responses
(``tumls_qp.tissue.embeddings.textons.pixel_responses``, standardised with the fitted
dictionary's statistics), each fitted on the setting's own tiles as a run would on its slide's:

``hist``
    The shipped histogram (the same words and vectors as ``texton_histograms``), the reference.
``soft``
    Kernel-codebook histogram (van Gemert et al. 2010): each pixel shared among the textons by
    softmax(-d² / mean nearest d²), square root.
``vlad-D``, ``vladi-D``
    VLAD (Jégou et al. 2010): per texton, the summed residual z - c of the pixels assigned to it,
    divided by the view's pixel count; signed square root, L2 (``vladi``: each texton's part to
    unit length first, Arandjelović & Zisserman 2013); then PCA to D components (not whitened;
    D = 0: no PCA).
``fisher-D``, ``fisherw-D``
    Fisher vector (Perronnin et al. 2010): a diagonal mixture of as many Gaussians as textons,
    fitted on 200 pixels of each tile; gradients for the means and standard deviations, signed
    square root, L2, PCA to D (``fisherw``: the responses rotated and whitened by PCA first).
``hist+E@w``
    The histogram and encoding E (one of the above with its D), each of unit length, E weighted
    by w (default 1).
``hist&E1@w1&E2@w2``
    The histogram and several encodings (bare co-occurrence for ``cooc-R`` / ``excess-R``), each of
    unit length and weighted.
``cooc-R``, ``excess-R``
    Texton co-occurrence (architecture): the textons of the pixel pairs R µm apart along the four
    axes (0°, 45°, 90°, 135°), counted into a symmetric matrix (528 distinct pairs for 32
    textons), normalised, square root (``excess``: its departure from independent placement,
    sqrt(P(a, b)) - sqrt(p(a) p(b)), the arrangement without the amounts); appended to the
    histogram, both parts of unit length, the co-occurrence weighted by w with ``@w`` (default 1:
    equal weight). ``cooc-R1+R2`` stacks two distances.

Each is clustered per setting (5-class, lung, colon) with k-means at the known number of classes
and with the tool's automatic k, as in ``embedding_descriptors.py`` (its ``evaluate``), plus the
silhouette of the true classes on the vectors (how far apart the classes lie, relative to their
spread: the "gap" the automatic k must find). ``--k-rules`` adds the chosen rules of
``k_rules.py`` on every encoding and their homogeneous-set check (each class alone: k = 1 is right).

    python benchmarks/texton_encodings.py [--subset design|all] [--encodings E1,E2] [--k-rules current+bic]
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import log  # noqa: E402
from embedding_descriptors import evaluate  # noqa: E402
from embeddings import DEFAULT_DATA, SETTINGS, SOURCE_UM, class_labels, design_half  # noqa: E402
from k_rules import RULES as K_RULES, choose  # noqa: E402

DEFAULT_ENCODINGS = ("hist,soft,vlad-32,vladi-32,fisher-32,fisherw-32,hist+vlad-16@0.7,hist+vlad-32@0.7,"
                     "hist+fisherw-16@0.7,cooc-16,cooc-8+32,excess-16,excess-32")
_AXES = ((0, 1), (1, 0), (1, 1), (1, -1))  # 0°, 90°, 45°, 135° (unit steps; diagonals scaled by 1/sqrt(2))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _power_l2(x: np.ndarray) -> np.ndarray:
    return _unit(np.sign(x) * np.sqrt(np.abs(x)))


def _pca(x: np.ndarray, d: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(min(d, x.shape[1], len(x) - 1), random_state=seed).fit_transform(x)


def histograms(words: np.ndarray, k: int) -> np.ndarray:
    return np.sqrt(np.stack([np.bincount(w.ravel(), minlength=k) / w.size for w in words]))


def vlad(z: np.ndarray, words: np.ndarray, centres: np.ndarray, intra: bool = False) -> np.ndarray:
    k, f = centres.shape
    out = np.zeros((len(z), k, f))
    for i in range(len(z)):
        w = words[i].ravel()
        np.add.at(out[i], w, z[i] - centres[w])
        out[i] /= len(w)
    out = np.sign(out) * np.sqrt(np.abs(out))
    if intra:  # Arandjelović & Zisserman 2013: each texton's residual to unit length
        out /= np.maximum(np.linalg.norm(out, axis=2, keepdims=True), 1e-12)
    return _unit(out.reshape(len(z), -1))


def soft_histograms(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Kernel-codebook histograms (van Gemert et al. 2010): softmax(-d^2 / mean nearest d^2)."""
    c_sq = (centres ** 2).sum(axis=1)
    d2 = [np.maximum(c_sq - 2.0 * (zi @ centres.T) + (zi ** 2).sum(axis=1, keepdims=True), 0) for zi in z]
    beta = 1.0 / np.mean([d.min(axis=1).mean() for d in d2])
    out = []
    for d in d2:
        a = -beta * (d - d.min(axis=1, keepdims=True))
        p = np.exp(a)
        out.append((p / p.sum(axis=1, keepdims=True)).mean(axis=0))
    return np.sqrt(np.array(out))


def fisher(z: np.ndarray, sample: np.ndarray, k: int, seed: int, decorrelate: bool) -> np.ndarray:
    """Fisher vectors (means and standard deviations) of a diagonal mixture of k Gaussians fitted on ``sample``."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    if decorrelate:  # a whitening PCA rotation first, as a diagonal mixture assumes uncorrelated responses
        rot = PCA(whiten=True, random_state=seed).fit(sample)
        sample, z = rot.transform(sample), np.stack([rot.transform(zi) for zi in z])
    gmm = GaussianMixture(k, covariance_type="diag", random_state=seed, reg_covar=1e-3).fit(sample)
    w, mu, sd = gmm.weights_, gmm.means_, np.sqrt(gmm.covariances_)
    out = []
    for zi in z:
        g = gmm.predict_proba(zi)  # (P, K)
        u = (zi[:, None, :] - mu[None]) / sd[None]  # (P, K, F)
        d_mu = np.einsum("pk,pkf->kf", g, u) / (len(zi) * np.sqrt(w)[:, None])
        d_sd = np.einsum("pk,pkf->kf", g, u * u - 1) / (len(zi) * np.sqrt(2 * w)[:, None])
        out.append(np.concatenate([d_mu.ravel(), d_sd.ravel()]))
    return _power_l2(np.array(out))


def cooccurrence(words: np.ndarray, k: int, r_px: float, excess: bool = False) -> np.ndarray:
    """(n, k(k+1)/2) square-root frequencies of texton pairs r_px apart along the four axes."""
    iu = np.triu_indices(k)
    out = []
    for w in words:
        m = np.zeros((k, k))
        for dy, dx in _AXES:
            step = max(1, int(round(r_px / np.hypot(dy, dx))))
            oy, ox = dy * step, dx * step
            h, wd = w.shape
            a = w[max(0, -oy):h - max(0, oy), max(0, -ox):wd - max(0, ox)]
            b = w[max(0, oy):h + min(0, oy), max(0, ox):wd + min(0, ox)]
            m += np.bincount((a * k + b).ravel(), minlength=k * k).reshape(k, k)
        m = m + m.T
        m /= m.sum()
        if excess:  # arrangement only: the pair frequencies' departure from independent placement
            p = m.sum(axis=1)
            out.append((np.sqrt(m) - np.sqrt(np.outer(p, p)))[iu])
        else:
            out.append(np.sqrt(m[iu] / m[iu].sum()))
    return np.array(out)


def read_views(data: Path, subset: str) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, np.ndarray]:
    """The views of the tiles of ``subset`` (``design`` or ``all``), their µm/px, classes, organs and filter responses."""
    from tumls_qp.config import EmbeddingConfig
    from tumls_qp.evaluation.tile_folder import read_tile_folder
    from tumls_qp.tissue.embeddings.textons import pixel_responses

    view_px = EmbeddingConfig().view_px
    folder = read_tile_folder(data, view_px)
    labels, organs = class_labels(data, folder.files)
    chosen = design_half(labels, 0) if subset == "design" else np.ones(len(labels), bool)
    views, mpp = folder.tiles[chosen], SOURCE_UM / view_px
    log(f"{len(views)} tiles ({subset}); filter responses at {view_px} px")
    responses = np.concatenate([pixel_responses(views[s:s + 64], mpp) for s in range(0, len(views), 64)])
    return views, mpp, labels[chosen], organs[chosen], responses


def texton_words(views: np.ndarray, responses: np.ndarray, mpp: float, seed: int) -> tuple[np.ndarray, ...]:
    """A dictionary fitted on ``views`` as a run fits it: the standardised responses, each pixel's texton,
    the textons and 200 responses of each view (for the Fisher mixture)."""
    from tumls_qp.tissue.embeddings.textons import fit_textons

    textons = fit_textons(views, mpp, seed)
    z = (responses - textons.mean) / textons.scale
    centres = textons.centres  # float32, as texton_histograms assigns
    c_sq = (centres ** 2).sum(axis=1)
    words = np.stack([np.argmin(c_sq - 2.0 * (zi @ centres.T), axis=-1) for zi in z])
    words = words.reshape(views.shape[:3])
    rng = np.random.default_rng(seed)
    sample = np.concatenate([zi[rng.choice(len(zi), 200, replace=False)] for zi in z]).astype(np.float64)
    return z, words, centres, sample


def encode(name: str, z: np.ndarray, words: np.ndarray, centres: np.ndarray, sample: np.ndarray,
           mpp: float, seed: int) -> np.ndarray:
    """The vectors of one encoding (names in the module docstring)."""
    k = len(centres)
    hist = histograms(words, k)
    if name == "hist":
        return hist
    if "&" in name:  # hist&E1@w1&E2@w2: the histogram and the bare encodings, each of unit length, weighted
        parts, total = [hist], 1.0
        for part in name.split("&")[1:]:
            part, _, w = part.partition("@")
            kind, _, arg = part.partition("-")
            v = (cooccurrence(words, k, float(arg) / mpp, kind == "excess") if kind in ("cooc", "excess")
                 else encode(part, z, words, centres, sample, mpp, seed))
            parts.append(float(w or 1.0) * _unit(v))
            total += float(w or 1.0) ** 2
        return np.concatenate(parts, axis=1) / np.sqrt(total)
    if name == "soft":
        return soft_histograms(z, centres)
    kind, _, arg = name.partition("-")
    arg, _, weight = arg.partition("@")
    base = kind.removeprefix("hist+")
    if base in ("cooc", "excess"):
        w = float(weight or 1.0)
        parts = [hist] + [w * _unit(cooccurrence(words, k, float(r) / mpp, base == "excess"))
                          for r in arg.split("+")]
        return np.concatenate(parts, axis=1) / np.sqrt(1 + w * w * (len(parts) - 1))
    if base in ("vlad", "vladi"):
        v = vlad(z, words, centres, intra=base == "vladi")
    elif base in ("fisher", "fisherw"):
        v = fisher(z, sample, k, seed, decorrelate=base == "fisherw")
    else:
        raise ValueError(f"unknown encoding {name!r}")
    v = _pca(v, int(arg), seed) if int(arg) else v
    if kind.startswith("hist+"):  # both parts unit length, the second weighted by w
        w = float(weight or 1.0)
        return np.concatenate([hist, w * _unit(v)], axis=1) / np.sqrt(1 + w * w)
    return v


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the lc25000_224 folder")
    parser.add_argument("--subset", choices=("design", "all"), default="design")
    parser.add_argument("--encodings", default=DEFAULT_ENCODINGS)
    parser.add_argument("--k-rules", default="", help="k_rules.py rules to add, e.g. current+bic,gap")
    parser.add_argument("--textons", type=int, default=0, help="dictionary size (default: the method's N_TEXTONS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", help="also write the Markdown output here")
    args = parser.parse_args()
    encodings = args.encodings.split(",")
    rules = [r for r in args.k_rules.split(",") if r]
    simple = r"(hist|soft|(hist\+)?(vladi?|fisherw?)-\d+(@[\d.]+)?|(cooc|excess)-[\d.]+(\+[\d.]+)*(@[\d.]+)?)"
    part = r"((vladi?|fisherw?)-\d+|(cooc|excess)-[\d.]+)(@[\d.]+)?"
    if bad := [e for e in encodings if not re.fullmatch(rf"{simple}|hist(&{part})+", e)]:
        parser.error(f"--encodings: cannot read {', '.join(bad)} (see the module docstring for the names)")
    if bad := sorted(set(rules) - set(K_RULES)):
        parser.error(f"--k-rules: unknown {', '.join(bad)}; choose from {', '.join(K_RULES)}")

    from sklearn.metrics import adjusted_rand_score, silhouette_score

    from tumls_qp.tissue.embeddings import textons as textons_module

    if args.textons:
        textons_module.N_TEXTONS = args.textons  # fit_textons reads it at call time

    load_start, started = os.getloadavg(), time.perf_counter()
    data = Path(args.data)
    views, mpp, labels, organs, responses = read_views(data, args.subset)

    results, homogeneous = {}, {(e, r): [] for e in encodings for r in rules}
    for setting, organ in SETTINGS.items():
        idx = np.flatnonzero(np.ones(len(views), bool) if organ is None else organs == organ)
        classes = sorted(set(labels[idx].tolist()))
        y = np.array([classes.index(v) for v in labels[idx]])
        z, words, centres, sample = texton_words(views[idx], responses[idx], mpp, args.seed)
        for name in encodings:
            t0 = time.perf_counter()
            x = encode(name, z, words, centres, sample, mpp, args.seed)
            seconds = time.perf_counter() - t0
            r = evaluate(x, y, len(classes), args.seed)
            r["silhouette"] = float(silhouette_score(x, y))
            r["dim"], r["seconds"] = x.shape[1], seconds
            for rule in rules:  # seed 0, as k_rules.py
                k, lab = choose(rule, x, None, 0)
                r[rule] = (k, float(adjusted_rand_score(y, lab)))
                for c in range(len(classes)):
                    homogeneous[(name, rule)].append(choose(rule, x[y == c], None, 0)[0])
            results[(name, setting)] = r
            log(f"{setting}: {name} ({x.shape[1]} dims, {seconds:.1f} s): k known {r['known']:.3f}, "
                f"auto k = {r['k']} {r['auto']:.3f}, silhouette {r['silhouette']:.3f}"
                + "".join(f", {rule} k = {r[rule][0]} {r[rule][1]:.3f}" for rule in rules))
    load_end = os.getloadavg()

    command = "python benchmarks/texton_encodings.py" + (" --subset all" if args.subset == "all" else "")
    if args.encodings != DEFAULT_ENCODINGS:
        command += f" --encodings {shlex.quote(args.encodings)}"
    if args.seed:
        command += f" --seed {args.seed}"
    if args.textons:
        command += f" --textons {args.textons}"
    if rules:
        command += f" --k-rules {args.k_rules}"
    lines = _common.report_head(command, args.report, load_start, load_end, started) + [
        f"Data: {data}, {'the design half of the tiles (seed 0)' if args.subset == 'design' else 'all tiles'}, "
        f"{views.shape[1]} px views, {textons_module.N_TEXTONS} textons. Each cell: ARI with k known (lowest over 4 random "
        "80 % subsets) / ARI with the tool's automatic k (that k) / silhouette of the true classes.",
        "",
        "| encoding | dim | " + " | ".join(SETTINGS) + " |",
        "|---|---|" + "---|" * len(SETTINGS),
    ]
    for name in encodings:
        cells = [results[(name, s)] for s in SETTINGS]
        lines.append(f"| {name} | {cells[0]['dim']} | " + " | ".join(
            f"{c['known']:.3f} ({c['low']:.3f}) / {c['auto']:.3f} (k = {c['k']}) / {c['silhouette']:.3f}"
            for c in cells) + " |")
    if rules:
        lines += ["", "Rules of `k_rules.py` on the same vectors: chosen k, ARI. Homogeneous sets: each class "
                  "alone in each setting (10 sets; the right k is 1).", "",
                  "| encoding | rule | " + " | ".join(SETTINGS) + " | homogeneous sets with k = 1 (k on each) |",
                  "|---|---|" + "---|" * (len(SETTINGS) + 1)]
        for name in encodings:
            for rule in rules:
                ks = homogeneous[(name, rule)]
                lines.append(f"| {name} | {rule} | " + " | ".join(
                    f"{results[(name, s)][rule][0]}, {results[(name, s)][rule][1]:.3f}" for s in SETTINGS)
                    + f" | {sum(k == 1 for k in ks)} / {len(ks)} ({' '.join(map(str, ks))}) |")
    return _common.emit_report(lines, args.report)


if __name__ == "__main__":
    sys.exit(main())
