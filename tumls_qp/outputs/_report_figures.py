"""The report's figures, drawn with matplotlib's object API (no pyplot, no global backend) into PNG bytes.

Every figure must read in grey print as well as on screen: tissues keep their QuPath
colours and also carry a number or a hatch pattern; maps use a sequential colour map
whose luminance rises monotonically (viridis); image panels have a scale bar in µm;
every axis states its unit.
"""

from __future__ import annotations

import io
import math
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np

from ..classes import NUCLEUS_COLOUR, class_colour, tissue_class_name

__all__ = [
    "HATCHES",
    "tissue_rgb",
    "tissue_grid",
    "maps_figure",
    "representatives_figure",
    "nucleus_overlay_figure",
    "uncertainty_histogram",
    "feature_comparison_figure",
    "distribution_figure",
    "cohort_tissue_figure",
    "dendrogram_figure",
    "loss_figure",
    "reconstruction_figure",
    "embedding_colours_figure",
]

#: Hatch pattern of tissue t (0-based) in bar charts, so tissues differ in grey print too.
HATCHES = ("", "////", "....", "xxxx", "\\\\\\\\", "oo", "++", "----", "||||", "**", "OO", "..//")
#: Resolution of the PNGs embedded in the PDF (dots per inch of the figure size).
DPI = 170
_TEXT = "#222222"
_RC = {
    "font.family": "DejaVu Sans",
    "font.size": 7,
    "axes.titlesize": 7.5,
    "axes.labelsize": 7,
    "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5,
    "legend.fontsize": 6.5,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "hatch.linewidth": 0.5,
    "axes.edgecolor": _TEXT,
    "text.color": _TEXT,
    "axes.labelcolor": _TEXT,
    "xtick.color": _TEXT,
    "ytick.color": _TEXT,
    "savefig.facecolor": "white",
}


def tissue_rgb(tissue: int) -> tuple[float, float, float]:
    """Colour of tissue ``tissue`` (1..k) as matplotlib RGB in [0, 1] (the QuPath class colour)."""
    r, g, b = class_colour(tissue - 1)
    return (r / 255, g / 255, b / 255)


def _hatch(tissue: int) -> str:
    return HATCHES[(tissue - 1) % len(HATCHES)]


@contextmanager
def _figure(width_in: float, height_in: float, **kwargs: Any) -> Iterator[Any]:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        yield Figure(figsize=(width_in, height_in), **kwargs)


def _encode(fig: Any, photo: bool = False) -> bytes:
    """The figure as PNG, or as JPEG when it is mostly photographs (smaller, and embedded in the PDF as is)."""
    buffer = io.BytesIO()
    if photo:
        fig.savefig(buffer, format="jpeg", dpi=DPI, pil_kwargs={"quality": 90, "subsampling": 0})
    else:
        fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _nice_length(target: float) -> float:
    """The 1, 2 or 5 × 10^n value at most ``target`` (at least the smallest such value)."""
    if target <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(target))
    for step in (5, 2, 1):
        if step * power <= target:
            return step * power
    return power


def _scale_bar(ax: Any, width_px: float, height_px: float, mpp: float | None, fraction: float = 0.3) -> None:
    """A scale bar in µm at the lower left of an image axis (pixel data coordinates); nothing without ``mpp``."""
    if mpp is None or width_px <= 0:
        return
    from matplotlib.font_manager import FontProperties
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    length_um = _nice_length(width_px * mpp * fraction)
    label = f"{length_um:g} µm" if length_um < 1000 else f"{length_um / 1000:g} mm"
    bar = AnchoredSizeBar(ax.transData, length_um / mpp, label, loc="lower left", pad=0.25, borderpad=0.3, sep=1.5,
                          frameon=True, size_vertical=max(height_px * 0.025, 0.4), color="black",
                          fontproperties=FontProperties(size=5.5))
    bar.patch.set(facecolor="white", alpha=0.85, edgecolor="none")
    ax.add_artist(bar)


def _shrink(image: np.ndarray, max_px: int) -> tuple[np.ndarray, float]:
    """``image`` at most ``max_px`` a side (area-averaged), and the factor its pixel size grew by."""
    h, w = image.shape[:2]
    factor = max(h, w) / max_px
    if factor <= 1:
        return image, 1.0
    from PIL import Image

    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX)), w / size[0]


def _image_axis(ax: Any, image: np.ndarray, mpp: float | None, title: str | None = None,
                interpolation: str = "antialiased") -> None:
    ax.imshow(image, interpolation=interpolation)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_linewidth(0.4)
    if title:
        ax.set_title(title, pad=2)
    _scale_bar(ax, image.shape[1], image.shape[0], mpp)


def tissue_grid(boxes: np.ndarray, tissue: np.ndarray, values: np.ndarray | None, tile_size_px: int,
                grid_shape: tuple[int, int]) -> np.ndarray:
    """Per-tile values on the tile grid.

    Parameters
    ----------
    boxes : (n, 4) int ndarray
        Tiles (x, y, width, height) in level-0 px, on a grid anchored at (0, 0).
    tissue : (n,) int ndarray
        Tissue 1..k of each tile.
    values : (n,) ndarray or None
        Value per tile; None: the tissue number.
    tile_size_px : int
        Tile side in level-0 px.
    grid_shape : (rows, cols)

    Returns
    -------
    (rows, cols) float64 ndarray
        NaN where there is no tissue tile (0 for the tissue number).
    """
    rows, cols = grid_shape
    fill = 0.0 if values is None else np.nan
    grid = np.full((rows, cols), fill, dtype=np.float64)
    r = boxes[:, 1] // tile_size_px
    c = boxes[:, 0] // tile_size_px
    inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
    grid[r[inside], c[inside]] = (tissue if values is None else values)[inside]
    return grid


def _upsample(grid: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    up = np.repeat(np.repeat(grid, factor, axis=0), factor, axis=1)
    out = np.zeros(shape, dtype=grid.dtype) if up.dtype.kind in "iu" else np.full(shape, np.nan)
    h, w = min(shape[0], up.shape[0]), min(shape[1], up.shape[1])
    out[:h, :w] = up[:h, :w]
    return out


def _label_positions(labels: np.ndarray, k: int) -> dict[int, tuple[float, float]]:
    """A point deep inside the largest piece of each tissue (grid coordinates, row/col centre)."""
    from scipy import ndimage

    out = {}
    for t in range(1, k + 1):
        mask = labels == t
        if not mask.any():
            continue
        pieces, n = ndimage.label(mask)
        largest = np.argmax(np.bincount(pieces.ravel())[1:]) + 1
        depth = ndimage.distance_transform_edt(np.pad(pieces == largest, 1))[1:-1, 1:-1]
        r, c = np.unravel_index(np.argmax(depth), depth.shape)
        out[t] = (float(r) + 0.5, float(c) + 0.5)
    return out


def maps_figure(thumbnail: np.ndarray, regions: np.ndarray, uncertainty: np.ndarray, confidence: np.ndarray, k: int,
                tile_px: int, mpp: float | None, shares: Sequence[float]) -> bytes:
    """The tissue map, the uncertainty map and the confidence map over the thumbnail, side by side.

    Parameters
    ----------
    thumbnail : (H, W, 3) uint8 ndarray
        The tissue level; one tile is ``tile_px`` pixels.
    regions : (H, W) ndarray
        Tissue 1..k of each thumbnail pixel's region, 0 outside every region (the run's ``regions.png``).
    uncertainty, confidence : (rows, cols) ndarray
        Per tile in [0, 1], NaN where no tissue tile.
    k : int
    tile_px : int
    mpp : float or None
        Thumbnail pixel size in µm/px (None: no scale bar).
    shares : sequence of float
        Share of the tissue area per tissue in %, for the legend.
    """
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    h, w = thumbnail.shape[:2]
    label_px = np.zeros((h, w), dtype=np.int64)
    label_px[: regions.shape[0], : regions.shape[1]] = regions[:h, :w]
    base = thumbnail.astype(np.float64) / 255
    # Outside the regions the slide is faded, so the tissue that was mapped stands out.
    tinted = 0.45 * base + 0.55
    for t in range(1, k + 1):
        mask = label_px == t
        tinted[mask] = 0.5 * base[mask] + 0.5 * np.array(tissue_rgb(t))
    grey = base @ np.array([0.299, 0.587, 0.114])
    cmap = matplotlib.colormaps["viridis"]
    maps = []
    for values in (uncertainty, confidence):
        rgb = np.repeat((0.35 * grey + 0.65)[..., None], 3, axis=2)
        px = _upsample(values, tile_px, (h, w))
        has = np.isfinite(px)
        rgb[has] = cmap(np.clip(px[has], 0, 1))[:, :3]
        maps.append(rgb)

    aspect = h / w
    panel_w = 2.1  # each panel's width in inches, once the colour bar has its share of the 7 in
    with _figure(7.0, min(panel_w * aspect + 0.8, 6.2), layout="constrained") as fig:
        left, middle, right = fig.subplots(1, 3)
        _image_axis(left, tinted, mpp, "Tissue regions")
        for t in range(1, k + 1):
            mask = (label_px == t).astype(float)
            if mask.any():
                # The tissue's hatch pattern (as in the bar charts) tells tissues apart in grey print.
                if _hatch(t):
                    left.contourf(mask, levels=[0.5, 1.5], colors="none", hatches=[_hatch(t)], origin="upper")
                left.contour(mask, levels=[0.5], colors=[(0.1, 0.1, 0.1)], linewidths=0.4, origin="upper")
        step = max(1, tile_px // 4)  # label positions on a coarser grid: fast, and a quarter tile is precise enough
        for t, (r, c) in _label_positions(label_px[::step, ::step], k).items():
            left.text(c * step, r * step, str(t), ha="center", va="center", fontsize=6, fontweight="bold",
                      color="black", zorder=8,
                      bbox={"boxstyle": "circle,pad=0.2", "facecolor": "white", "edgecolor": "black", "linewidth": 0.5})
        left.set_xlim(-0.5, w - 0.5)
        left.set_ylim(h - 0.5, -0.5)
        handles = [Patch(facecolor=tissue_rgb(t), edgecolor="black", linewidth=0.4, hatch=_hatch(t),
                         label=f"{t}: {tissue_class_name(t - 1)} ({shares[t - 1]:.1f} %)") for t in range(1, k + 1)]
        fig.legend(handles=handles, loc="outside lower left", ncols=min(k, 3), frameon=False,
                   handlelength=1.2, columnspacing=1.0)
        _image_axis(middle, maps[0], mpp, "Uncertainty per tile")
        _image_axis(right, maps[1], mpp, "Confidence per tile")
        bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), ax=[middle, right], fraction=0.05, pad=0.02,
                           shrink=0.8)
        bar.set_label("0 to 1 (uncertainty: 0 typical; confidence: 1 sure)")
        bar.outline.set_linewidth(0.4)
        return _encode(fig, photo=True)


def _crop(thumbnail: np.ndarray, box: tuple[int, int, int, int], scale: float) -> np.ndarray:
    x, y, w, h = (int(round(v * scale)) for v in box)
    return thumbnail[max(y, 0): y + max(h, 1), max(x, 0): x + max(w, 1)]


def representatives_figure(thumbnail: np.ndarray, scale: float, thumb_mpp: float | None,
                           reps: Sequence[Any], patches: Sequence[np.ndarray | None]) -> bytes:
    """The representatives of one tissue at the tissue level (top row) and at full resolution (bottom row).

    ``reps`` are :class:`~tumls_qp.outputs._run_folder.Representative`; ``patches`` their full-resolution
    images (None when missing); ``scale`` is thumbnail px per level-0 px.
    """
    n = max(len(reps), 1)
    with _figure(7.0, 2.95, layout="constrained") as fig:
        axes = np.atleast_2d(fig.subplots(2, n, squeeze=False))
        for i, rep in enumerate(reps):
            low = _crop(thumbnail, rep.box, scale)
            _image_axis(axes[0, i], low, thumb_mpp, f"rank {rep.rank} · u {rep.uncertainty:.2f} · "
                        f"c {rep.confidence:.2f}", "nearest")
            patch = patches[i]
            if patch is None:
                axes[1, i].text(0.5, 0.5, "patch missing", ha="center", va="center", transform=axes[1, i].transAxes)
                axes[1, i].set_xticks([])
                axes[1, i].set_yticks([])
            else:
                # A 1024 px patch is drawn about 250 px wide: shrink it first (faster, and smaller files).
                small, factor = _shrink(patch, 512)
                _image_axis(axes[1, i], small, rep.patch_mpp * factor if rep.patch_mpp else None)
        axes[0, 0].set_ylabel("tissue level", fontsize=7)
        axes[1, 0].set_ylabel("full resolution", fontsize=7)
        return _encode(fig, photo=True)


def nucleus_overlay_figure(patch: np.ndarray, labels: np.ndarray | None, mpp: float | None) -> bytes:
    """The best representative, and beside it the same patch with its nuclei outlined."""
    from skimage.segmentation import find_boundaries

    overlay = patch.copy()
    if labels is not None:
        edges = find_boundaries(labels, mode="inner")
        # Thicken the outline with the patch size so it stays visible once the patch is shrunk on the page.
        width = max(1, int(round(max(patch.shape[:2]) / 250)))
        if width > 1:
            from scipy import ndimage

            edges = ndimage.binary_dilation(edges, iterations=width - 1) & (labels > 0)
        overlay[edges] = NUCLEUS_COLOUR
        # Outside the nuclei the patch is dimmed a little so outlines read in grey print.
        overlay[labels == 0] = (overlay[labels == 0] * 0.8).astype(np.uint8)
    # Outlines are drawn at full resolution, then both images are shrunk to about twice their drawn size.
    small, factor = _shrink(patch, 768)
    mpp = mpp * factor if mpp else None
    if labels is None:
        with _figure(2.4, 2.45, layout="constrained") as fig:
            _image_axis(fig.subplots(), small, mpp, "best representative")
            return _encode(fig, photo=True)
    with _figure(4.4, 2.35, layout="constrained") as fig:
        a, b = fig.subplots(1, 2)
        _image_axis(a, small, mpp, "best representative")
        _image_axis(b, _shrink(overlay, 768)[0], mpp, f"nuclei outlined ({len(np.unique(labels[labels > 0]))})")
        return _encode(fig, photo=True)


def uncertainty_histogram(values: np.ndarray, all_values: np.ndarray, rep_values: Sequence[float],
                          tissue: int) -> bytes:
    """Distribution of the uncertainty of one tissue's tiles, over that of all tiles; representatives marked."""
    bins = np.linspace(0, 1, 21)
    with _figure(3.6, 2.1, layout="constrained") as fig:
        ax = fig.subplots()
        ax.hist(all_values, bins=bins, histtype="step", color="0.45", linewidth=0.8, linestyle="--",
                label="all tissue tiles")
        ax.hist(values, bins=bins, color=tissue_rgb(tissue), edgecolor="black", linewidth=0.4, hatch=_hatch(tissue),
                label=tissue_class_name(tissue - 1))
        for i, u in enumerate(rep_values):
            ax.axvline(u, color="black", linewidth=0.7, linestyle=":", label="representatives" if i == 0 else None)
        ax.set_xlim(0, 1)
        ax.set_xlabel("uncertainty (unitless, 0-1)")
        ax.set_ylabel("tiles (count)")
        ax.legend(frameon=False, loc="upper right")
        ax.spines[["top", "right"]].set_visible(False)
        return _encode(fig)


def feature_comparison_figure(names: Sequence[str], values: np.ndarray, tissues: Sequence[int]) -> bytes:
    """Grouped bars: each feature divided by its largest value over the tissues (the paper's Figure 14).

    Parameters
    ----------
    names : sequence of str
        Feature names (one group of bars each).
    values : (n_tissues, n_features) ndarray
        Normalised values in [0, 1] (NaN: undefined, no bar).
    tissues : sequence of int
        Tissue numbers 1..k of the rows.
    """
    n_t, n_f = values.shape
    width = 0.8 / max(n_t, 1)
    with _figure(7.0, 2.9, layout="constrained") as fig:
        ax = fig.subplots()
        x = np.arange(n_f)
        for i, t in enumerate(tissues):
            ax.bar(x - 0.4 + width * (i + 0.5), np.nan_to_num(values[i], nan=0.0), width,
                   color=tissue_rgb(t), edgecolor="black", linewidth=0.4, hatch=_hatch(t),
                   label=tissue_class_name(t - 1))
        ax.set_xticks(x, [_wrap(n) for n in names], fontsize=6)
        ax.set_ylim(0, 1.08)
        ax.set_ylabel("value / largest over tissues (unitless)")
        ax.legend(frameon=False, ncols=min(n_t, 6), loc="lower left", bbox_to_anchor=(0, 1.0))
        ax.spines[["top", "right"]].set_visible(False)
        return _encode(fig)


def _wrap(text: str, width: int = 14) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join(lines + [line])


def distribution_figure(slides: Sequence[str], shares: np.ndarray, k: int) -> bytes:
    """Share of each tissue in each slide's tissue area, as stacked horizontal bars (the paper's Figure 15).

    Parameters
    ----------
    slides : sequence of str
        One bar per slide.
    shares : (n_slides, k) ndarray
        Percent of the slide's tissue tiles in each tissue (rows sum to 100).
    """
    n = len(slides)
    with _figure(7.0, 0.9 + 0.32 * n, layout="constrained") as fig:
        ax = fig.subplots()
        y = np.arange(n)
        left = np.zeros(n)
        for t in range(1, k + 1):
            part = shares[:, t - 1]
            ax.barh(y, part, left=left, color=tissue_rgb(t), edgecolor="black", linewidth=0.4, hatch=_hatch(t),
                    label=tissue_class_name(t - 1), height=0.7)
            for i in range(n):
                if part[i] >= 6:
                    ax.text(left[i] + part[i] / 2, y[i], f"{part[i]:.0f}", ha="center", va="center", fontsize=6,
                            bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none",
                                  "alpha": 0.8})
            left += part
        ax.set_yticks(y, [_short(s) for s in slides])
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("share of the slide's tissue area (%)")
        ax.legend(frameon=False, ncols=min(k, 6), loc="lower left", bbox_to_anchor=(0, 1.0))
        ax.spines[["top", "right"]].set_visible(False)
        return _encode(fig)


def _short(name: str, length: int = 28) -> str:
    return name if len(name) <= length else name[: length - 1] + "…"


def cohort_tissue_figure(slides: Sequence[str], areas_mm2: np.ndarray, k: int, unit: str) -> bytes:
    """One small panel per tissue: its area on each slide.

    ``areas_mm2`` is (n_slides, k), in mm² (or tiles when the pixel size is unknown: ``unit`` says which).
    """
    cols = min(k, 3)
    rows = math.ceil(k / cols)
    n = len(slides)
    with _figure(7.0, rows * (0.7 + 0.22 * n) + 0.3, layout="constrained") as fig:
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        y = np.arange(n)
        for t in range(1, k + 1):
            ax = axes[t - 1]
            ax.barh(y, areas_mm2[:, t - 1], color=tissue_rgb(t), edgecolor="black", linewidth=0.4, hatch=_hatch(t),
                    height=0.7)
            ax.set_yticks(y, [_short(s, 18) for s in slides] if (t - 1) % cols == 0 else [""] * n)
            ax.invert_yaxis()
            ax.set_title(tissue_class_name(t - 1), pad=2)
            ax.set_xlabel(unit)
            ax.spines[["top", "right"]].set_visible(False)
        for ax in axes[k:]:
            ax.set_visible(False)
        return _encode(fig)


def dendrogram_figure(linkage: np.ndarray | None, gaps: dict[int, float], k: int, k_source: str) -> bytes:
    """The Ward dendrogram (last merges) with the cut that gives k, and the gap per k that chose it."""
    from scipy.cluster.hierarchy import dendrogram

    with _figure(7.0, 2.6, layout="constrained") as fig:
        left, right = fig.subplots(1, 2, width_ratios=[2.2, 1])
        if linkage is not None and len(linkage) >= 1:
            n_leaves = len(linkage) + 1
            shown = min(30, n_leaves)
            tree = dendrogram(linkage, truncate_mode="lastp", p=shown, no_plot=True)
            for xs, ys in zip(tree["icoord"], tree["dcoord"]):
                left.plot(xs, ys, color="0.2", linewidth=0.6)
            heights = np.sort(linkage[:, 2])
            if k == 1:
                cut = heights[-1] * 1.05
            elif k <= len(heights):
                cut = (heights[-k] + heights[-k + 1]) / 2 if k >= 2 else heights[-1]
            else:
                cut = None
            if cut is not None:
                left.axhline(cut, color=(0.8, 0.2, 0.1), linestyle="--", linewidth=0.9)
                left.text(5, cut, f" cut: k = {k}", color=(0.8, 0.2, 0.1), va="bottom", ha="left", fontsize=6.5)
            left.set_xticks(5 + 10 * np.arange(len(tree["ivl"])), tree["ivl"], rotation=90, fontsize=5)
            left.set_xlabel(f"last {shown} clusters of {n_leaves} tiles (tiles per leaf)")
            left.set_ylabel("Ward merge height (latent units)")
            left.set_title("Dendrogram of the tile embeddings", pad=2)
        else:
            left.text(0.5, 0.5, "no dendrogram in this run\n(k given by the user, or too few tiles)",
                      ha="center", va="center", transform=left.transAxes)
            left.set_xticks([])
            left.set_yticks([])
        left.spines[["top", "right"]].set_visible(False)
        if gaps:
            ks = sorted(gaps)
            colours = [(0.8, 0.2, 0.1) if kk == k else "0.7" for kk in ks]
            right.bar(ks, [gaps[kk] for kk in ks], color=colours, edgecolor="black", linewidth=0.4,
                      hatch=["////" if kk == k else "" for kk in ks])
            right.set_xticks(ks)
            right.set_xlabel("k (number of tissues)")
            right.set_ylabel("gap between merge heights (latent units)")
            right.set_title(f"Gap per cut ({k_source})", pad=2)
        else:
            right.text(0.5, 0.5, "no gaps computed", ha="center", va="center", transform=right.transAxes)
            right.set_xticks([])
            right.set_yticks([])
        right.spines[["top", "right"]].set_visible(False)
        return _encode(fig)


def loss_figure(epoch: np.ndarray, train: np.ndarray, val: np.ndarray | None, best_epoch: int | None,
                ylabel: str = "MSE (pixel values scaled to 0-1)") -> bytes:
    """Training (and validation) loss per epoch: the autoencoder's MSE is the paper's Figure 2."""
    val = train[:0] if val is None else val
    with _figure(3.5, 2.4, layout="constrained") as fig:
        ax = fig.subplots()
        ax.plot(epoch, train, color="0.1", linewidth=1.0, marker="o", markersize=1.8, label="training")
        if len(val):
            ax.plot(epoch, val, color=(0.8, 0.2, 0.1), linewidth=1.0, linestyle="--", marker="s", markersize=1.8,
                    label="validation")
        if best_epoch:
            ax.axvline(best_epoch, color="0.4", linestyle=":", linewidth=0.8, label=f"best epoch ({best_epoch})")
        positive = np.concatenate([train[train > 0], val[val > 0]])
        if len(positive) and positive.max() / positive.min() > 20:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.legend(frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        return _encode(fig)


def reconstruction_figure(tiles: np.ndarray, reconstructed: np.ndarray, mpp: float | None) -> bytes:
    """Tissue-level tiles (top) and their autoencoder reconstructions (bottom) (the paper's Figure 3)."""
    n = min(len(tiles), 8)
    with _figure(3.5, 1.2, layout="constrained") as fig:
        axes = fig.subplots(2, n, squeeze=False)
        for i in range(n):
            _image_axis(axes[0, i], tiles[i], mpp if i == 0 else None, interpolation="nearest")
            _image_axis(axes[1, i], reconstructed[i], None, interpolation="nearest")
        axes[0, 0].set_ylabel("tile", fontsize=6)
        axes[1, 0].set_ylabel("recon.", fontsize=6)
        return _encode(fig, photo=True)


def embedding_colours_figure(
    colours: Any,
    *,
    boxes: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 120,
) -> bytes:
    """The embedding colours (:mod:`tumls_qp.interactive.embedding_colours`) as a PNG.

    Panels: the tiles in the first two reduced dimensions, each in its colour; then, with
    ``boxes``, the tiles where they lie on the slide in the same colours (the paper's
    feature-space view), otherwise the first and third dimensions; then, with ``labels``,
    the first two dimensions coloured by cluster.

    Parameters
    ----------
    colours : EmbeddingColours
    boxes : (n, 4) ndarray, optional
        Tile boxes (x, y, width, height) in level-0 px.
    labels : (n,) int ndarray, optional
        A cluster or class per tile (0-based).
    label_names : sequence of str, optional
        Legend names of the labels.
    title : str, optional
    dpi : int
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    rgb = colours.rgb.astype(np.float64) / 255.0
    xyz = colours.coords
    n_panels = 2 + (labels is not None)
    fig = Figure(figsize=(5.0 * n_panels, 4.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    size = max(2.0, min(30.0, 6000.0 / max(len(xyz), 1)))
    name = colours.method.upper()
    axes[0].scatter(xyz[:, 0], xyz[:, 1], c=rgb, s=size, linewidths=0)
    axes[0].set(xlabel=f"{name} 1", ylabel=f"{name} 2", title="Embedding, coloured by position")
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float64)
        polygons = [[(x, y), (x + w, y), (x + w, y + h), (x, y + h)] for x, y, w, h in b]
        axes[1].add_collection(PolyCollection(polygons, facecolors=rgb, edgecolors="none"))
        axes[1].set_xlim(b[:, 0].min(), (b[:, 0] + b[:, 2]).max())
        axes[1].set_ylim((b[:, 1] + b[:, 3]).max(), b[:, 1].min())
        axes[1].set_aspect("equal")
        axes[1].set(xlabel="x (level-0 px)", ylabel="y (level-0 px)", title="Tiles on the slide")
    else:
        axes[1].scatter(xyz[:, 0], xyz[:, 2], c=rgb, s=size, linewidths=0)
        axes[1].set(xlabel=f"{name} 1", ylabel=f"{name} 3", title="Embedding, dimensions 1 and 3")
    if labels is not None:
        labels = np.asarray(labels)
        for j in np.unique(labels):
            members = labels == j
            legend = label_names[int(j)] if label_names is not None else f"Cluster {int(j) + 1}"
            axes[2].scatter(xyz[members, 0], xyz[members, 1], color=np.array(class_colour(int(j))) / 255.0,
                            s=size, linewidths=0, label=legend)
        axes[2].set(xlabel=f"{name} 1", ylabel=f"{name} 2", title="Embedding, by cluster")
        if len(np.unique(labels)) <= 12:
            axes[2].legend(fontsize="small", markerscale=2, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=dpi, format="png")
    return buffer.getvalue()
