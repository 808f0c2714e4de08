"""The report's figures, drawn with matplotlib's object API (no pyplot, no global backend) into PNG bytes.

Every figure must read at print size, in grey as well as in colour:

- tissues keep their QuPath class colours (:func:`tumls_qp.classes.class_colour`) and also
  carry their number or a hatch pattern (:data:`HATCHES`), the same in every figure;
- maps use a sequential colour map whose luminance rises monotonically (viridis); image
  panels have a scale bar in µm; every axis and every feature states its unit;
- figures are drawn at the size they take on the page (the PDF embeds them at that size), so
  a font of 6 pt is 6 pt on paper; no text is smaller than :data:`MIN_FONT_PT`, and no two
  texts overlap (:func:`legibility_problems` checks both; the tests run it on every figure).
"""

from __future__ import annotations

import io
import math
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np

from ..classes import class_colour, tissue_class_name

__all__ = [
    "HATCHES",
    "DPI",
    "MIN_FONT_PT",
    "Mark",
    "tissue_rgb",
    "tissue_grid",
    "grid_pixels",
    "outlined",
    "legibility_problems",
    "overview_figure",
    "locator_figure",
    "representatives_figure",
    "overlay_figure",
    "gallery_row_figure",
    "uncertainty_histogram",
    "feature_panels_figure",
    "distribution_figure",
    "cohort_tissue_figure",
    "dendrogram_figure",
    "loss_figure",
    "reconstruction_figure",
    "embedding_colours_figure",
]

#: Hatch pattern of tissue t (0-based) in bar charts and maps, so tissues differ in grey print too.
HATCHES = ("", "////", "....", "xxxx", "\\\\\\\\", "oo", "++", "----", "||||", "**", "OO", "..//")
#: Resolution of the PNGs embedded in the PDF (dots per inch of the figure size).
DPI = 170
#: The smallest font of any figure, in points at print size.
MIN_FONT_PT = 6.0
#: Width of the page's text frame in inches (A4 less 15 mm margins): the widest a figure is drawn.
PAGE_WIDTH_IN = 7.08
_TEXT = "#222222"
_RC = {
    "font.family": "DejaVu Sans",
    "font.size": 7,
    "axes.titlesize": 7,
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
#: Largest side, in pixels, of the images and label maps drawn into a map panel (about twice its printed size).
_MAP_PX = 900
#: Widths of the tissue map relative to the other maps when the overview's maps go in one row: the largest that
#: fits the page's room is drawn (the tissue map is the panel to read the representatives on).
_MAP_RATIOS = (2.5, 2.25, 2.0, 1.75, 1.5)

#: A representative drawn on a map: its label, its tissue (1..k) and its box (x, y, width, height) in level-0 px.
Mark = tuple[str, int, tuple[float, float, float, float]]


def tissue_rgb(tissue: int) -> tuple[float, float, float]:
    """Colour of tissue ``tissue`` (1..k) as matplotlib RGB in [0, 1] (the QuPath class colour)."""
    r, g, b = class_colour(tissue - 1)
    return (r / 255, g / 255, b / 255)


def _hatch(tissue: int) -> str:
    return HATCHES[(tissue - 1) % len(HATCHES)]


@contextmanager
def _figure(width_in: float, height_in: float, **kwargs: Any) -> Iterator[Any]:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(width_in, height_in), dpi=DPI, **kwargs)
        FigureCanvasAgg(fig)
        yield fig


def _encode(fig: Any, photo: bool = False) -> bytes:
    """The figure as PNG, or as JPEG when it is mostly photographs (smaller, and embedded in the PDF as is)."""
    buffer = io.BytesIO()
    if photo:
        fig.savefig(buffer, format="jpeg", dpi=DPI, pil_kwargs={"quality": 90, "subsampling": 0})
    else:
        fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


# --- legibility -------------------------------------------------------------------------------------------------------

def _drawn_texts(fig: Any) -> list[Any]:
    """The texts of a laid-out figure that are drawn: visible, not empty, tick labels only of ticks in view."""
    from matplotlib.text import Text

    tick_labels: dict[int, bool] = {}
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            slack = 1e-9 * max(abs(hi - lo), 1e-12)
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                loc = tick.get_loc()
                shown = loc is not None and lo - slack <= loc <= hi + slack and tick.get_visible()
                for label in (tick.label1, tick.label2):
                    tick_labels[id(label)] = shown
    texts = []
    for text in fig.findobj(Text):
        if not text.get_visible() or not text.get_text().strip() or not tick_labels.get(id(text), True):
            continue
        if text.axes is not None and not text.axes.get_visible():
            continue
        texts.append(text)
    return texts


def legibility_problems(fig: Any, min_size_pt: float = MIN_FONT_PT) -> list[str]:
    """What makes a figure hard to read at print size: overlapping texts, texts cut off, fonts too small.

    The figure is laid out as it will be saved (``draw_without_rendering``), then every drawn
    text (tick labels, titles, axis labels, legends, labels on maps) is measured in display
    coordinates. Returns one line per problem; an empty list means the figure is legible.
    """
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    texts = _drawn_texts(fig)
    boxes = [t.get_window_extent(renderer) for t in texts]
    page = fig.bbox
    problems = []
    for text, box in zip(texts, boxes):
        if text.get_fontsize() < min_size_pt - 1e-6:
            problems.append(f"{text.get_text()!r} is {text.get_fontsize():g} pt, below {min_size_pt:g} pt")
        if box.x0 < page.x0 - 2 or box.y0 < page.y0 - 2 or box.x1 > page.x1 + 2 or box.y1 > page.y1 + 2:
            problems.append(f"{text.get_text()!r} is cut off at the figure's edge")
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            a, b = boxes[i], boxes[j]
            dx = min(a.x1, b.x1) - max(a.x0, b.x0)
            dy = min(a.y1, b.y1) - max(a.y0, b.y0)
            if dx > 1 and dy > 1:
                problems.append(f"{texts[i].get_text()!r} overlaps {texts[j].get_text()!r}")
    return problems


# --- images and maps --------------------------------------------------------------------------------------------------

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
    bar = AnchoredSizeBar(ax.transData, length_um / mpp, label, loc="lower left", pad=0.2, borderpad=0.25, sep=1.2,
                          frameon=True, size_vertical=max(height_px * 0.02, 0.4), color="black",
                          fontproperties=FontProperties(size=MIN_FONT_PT))
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
                interpolation: str = "antialiased", extent: tuple[float, float, float, float] | None = None) -> None:
    ax.imshow(image, interpolation=interpolation, extent=extent)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_linewidth(0.4)
    if title:
        ax.set_title(title, pad=2)
    if extent is None:
        _scale_bar(ax, image.shape[1], image.shape[0], mpp)
    else:
        _scale_bar(ax, extent[1] - extent[0], extent[2] - extent[3], mpp)


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


def grid_pixels(grid: np.ndarray, tile_px: float, shape: tuple[int, int]) -> np.ndarray:
    """A tile grid drawn at ``tile_px`` image pixels per tile into an image of ``shape``.

    Pixels beyond the grid are 0 for an integer grid and NaN for a float one.
    """
    rows = ((np.arange(shape[0]) + 0.5) / tile_px).astype(np.int64)
    cols = ((np.arange(shape[1]) + 0.5) / tile_px).astype(np.int64)
    inside = (rows[:, None] < grid.shape[0]) & (cols[None, :] < grid.shape[1])
    out = grid[np.ix_(np.minimum(rows, grid.shape[0] - 1), np.minimum(cols, grid.shape[1] - 1))]
    return np.where(inside, out, 0 if grid.dtype.kind in "iu" else np.nan)


def _label_positions(labels: np.ndarray, k: int) -> dict[int, tuple[float, float]]:
    """A point deep inside the largest piece of each tissue (pixel row/col centre of ``labels``)."""
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


class _Map:
    """A slide at the tissue level, shrunk for drawing, in the thumbnail's pixel coordinates.

    ``regions`` labels the thumbnail at ``regions_px`` thumbnail pixels per label pixel (the tile
    grid: ``tile_px``; a label image of the thumbnail's size: 1). ``image`` and ``regions`` are
    drawn over ``extent`` so that data coordinates stay thumbnail pixels whatever the shrink;
    ``scale`` is thumbnail px per level-0 px.
    """

    def __init__(self, thumbnail: np.ndarray, regions: np.ndarray, regions_px: float, scale: float,
                 mpp: float | None, max_px: int = _MAP_PX) -> None:
        self.height, self.width = thumbnail.shape[:2]
        self.image, _ = _shrink(thumbnail, max_px)
        drawn_px = self.image.shape[1] / self.width  # drawn px per thumbnail px
        self.regions = grid_pixels(regions.astype(np.int64), regions_px * drawn_px, self.image.shape[:2])
        self.scale = scale
        self.mpp = mpp
        self.extent = (-0.5, self.width - 0.5, self.height - 0.5, -0.5)

    def base(self, fade: float) -> np.ndarray:
        """The slide as floats in [0, 1], faded towards white by ``fade``."""
        return (1 - fade) * self.image.astype(np.float64) / 255 + fade

    def values(self, grid: np.ndarray, tile_px: float) -> np.ndarray:
        """A per-tile grid at the drawn resolution (``tile_px``: thumbnail px per tile)."""
        return grid_pixels(grid, tile_px * self.image.shape[1] / self.width, self.image.shape[:2])

    def draw(self, ax: Any, rgb: np.ndarray, title: str | None) -> None:
        _image_axis(ax, rgb, self.mpp, title, extent=self.extent)
        ax.set_xlim(-0.5, self.width - 0.5)
        ax.set_ylim(self.height - 0.5, -0.5)

    def outline(self, ax: Any, tissues: Sequence[int], hatch: bool) -> None:
        """Outline (and hatch) each tissue's regions."""
        h, w = self.regions.shape
        x = (np.arange(w) + 0.5) * self.width / w - 0.5
        y = (np.arange(h) + 0.5) * self.height / h - 0.5
        for t in tissues:
            mask = (self.regions == t).astype(float)
            if not mask.any():
                continue
            if hatch and _hatch(t):
                ax.contourf(x, y, mask, levels=[0.5, 1.5], colors="none", hatches=[_hatch(t)])
            ax.contour(x, y, mask, levels=[0.5], colors=[(0.1, 0.1, 0.1)], linewidths=0.5)

    def scale_bar_box(self, per_pt: float) -> tuple[float, float, float, float]:
        """The rectangle (x0, y0, x1, y1) the scale bar takes at the lower left, for labels to keep clear of."""
        return (0.0, self.height - 17 * per_pt, 52 * per_pt, float(self.height))

    def tissue_numbers(self, k: int) -> list[tuple[float, float, int]]:
        """(x, y, tissue): where each tissue's number goes, deep inside its largest region, in thumbnail px."""
        fy, fx = self.height / self.regions.shape[0], self.width / self.regions.shape[1]
        return [(c * fx - 0.5, r * fy - 0.5, t) for t, (r, c) in _label_positions(self.regions, k).items()]


def _pt_to_data(ax_width_in: float, data_width: float) -> float:
    """Data units per point on an image axis ``ax_width_in`` inches wide showing ``data_width`` units."""
    return data_width / (ax_width_in * 72)


def _draw_marks(ax: Any, marks: Sequence[Mark], scale: float, per_pt: float, bounds: tuple[float, float],
                obstacles: list[tuple[float, float, float, float]], font: float = MIN_FONT_PT) -> None:
    """Each representative as a box in its tissue's colour with its label beside it, labels placed apart.

    ``per_pt``: data units per point; ``bounds``: (width, height) of the image in data units;
    ``obstacles``: rectangles (x0, y0, x1, y1) the labels keep clear of (filled as labels are placed).
    """
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle

    halo = [patheffects.withStroke(linewidth=2.2, foreground="white")]
    min_side = 5.5 * per_pt
    placed = list(obstacles)
    centres = []
    for _, tissue, (x, y, w, h) in marks:
        cx, cy = (x + w / 2) * scale, (y + h / 2) * scale
        side_w, side_h = max(w * scale, min_side), max(h * scale, min_side)
        centres.append((cx, cy, side_w, side_h))
        rect = Rectangle((cx - side_w / 2, cy - side_h / 2), side_w, side_h, facecolor="none",
                         edgecolor=tissue_rgb(tissue), linewidth=1.1, zorder=9)
        rect.set_path_effects(halo)
        ax.add_patch(rect)
    # Every box is an obstacle for every label.
    placed += [(cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2) for cx, cy, sw, sh in centres]
    for (label, tissue, _), (cx, cy, sw, sh) in zip(marks, centres):
        lw = (0.62 * font * len(label) + 3) * per_pt
        lh = (font * 1.25 + 2) * per_pt
        best, best_cost = None, math.inf
        for ring in range(8):
            for angle in (45, 135, -45, -135, 90, -90, 0, 180):
                a = math.radians(angle)
                dx = (sw / 2 + lw / 2 + 1.5 * per_pt + ring * lw * 0.8) * math.cos(a)
                dy = -(sh / 2 + lh / 2 + 1.5 * per_pt + ring * lh * 1.1) * math.sin(a)
                px, py = cx + dx, cy + dy
                box = (px - lw / 2, py - lh / 2, px + lw / 2, py + lh / 2)
                if box[0] < 0 or box[1] < 0 or box[2] > bounds[0] or box[3] > bounds[1]:
                    continue
                cost = sum(max(0.0, min(box[2], o[2]) - max(box[0], o[0])) *
                           max(0.0, min(box[3], o[3]) - max(box[1], o[1])) for o in placed)
                if cost < best_cost:
                    best, best_cost = (px, py, box), cost
                if cost == 0:
                    break
            if best_cost == 0:
                break
        if best is None:
            best = (cx, cy, (cx - lw / 2, cy - lh / 2, cx + lw / 2, cy + lh / 2))
        px, py, box = best
        placed.append(box)
        if math.hypot(px - cx, py - cy) > max(sw, sh) / 2 + max(lw, lh) * 0.75:
            ax.plot([cx, px], [cy, py], color="black", linewidth=0.4, zorder=9)
        ax.text(px, py, label, ha="center", va="center", fontsize=font, zorder=10, color="black",
                bbox={"boxstyle": "round,pad=0.12", "facecolor": "white", "edgecolor": tissue_rgb(tissue),
                      "linewidth": 0.7})


def overview_figure(thumbnail: np.ndarray, regions: np.ndarray, regions_px: float, uncertainty: np.ndarray,
                    confidence: np.ndarray | None, k: int, tile_px: float, scale: float, mpp: float | None,
                    shares: Sequence[float], marks: Sequence[Mark], max_height_in: float) -> bytes:
    """The slide, its tissue map with the representatives, and its uncertainty (and confidence) per tile.

    The panels go in one row or in two, whichever draws them larger within ``max_height_in``
    (a tall slide: one row; a wide one: two). In two rows without a confidence map, the fourth
    cell holds the legend and the colour key.

    Parameters
    ----------
    thumbnail : (H, W, 3) uint8 ndarray
        The tissue level.
    regions : (h, w) int ndarray
        Tissue 1..k of each pixel, 0 outside the tissue; one pixel covers ``regions_px`` thumbnail
        pixels (the tile grid: ``tile_px``).
    regions_px : float
    uncertainty, confidence : (rows, cols) ndarray
        Per tile in [0, 1], NaN where there is no tissue tile; ``confidence`` may be None.
    k : int
    tile_px : float
        Thumbnail pixels per tile.
    scale : float
        Thumbnail pixels per level-0 pixel (for ``marks``).
    mpp : float or None
        Thumbnail pixel size in µm/px (None: no scale bar).
    shares : sequence of float
        Share of the tissue area per tissue in %, for the legend.
    marks : sequence of Mark
        The representatives to draw on the tissue map.
    max_height_in : float
        The figure is at most this tall (the page's room for it); panels shrink to fit.
    """
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    slide = _Map(thumbnail, regions, regions_px, scale, mpp)
    aspect = slide.height / slide.width
    n_maps = 3 if confidence is None else 4
    bar_in, title_in, legend_row_in = 0.62, 0.2, 0.17

    def layout(rows: int, ratio: float = 1.0) -> tuple[float, list[float], float, float]:
        """(unit panel width, width ratios, figure height, legend height) of a layout of ``rows`` rows.

        In one row the tissue map is ``ratio`` times as wide as the other panels.
        """
        ratios = [1.0, ratio] + [1.0] * (n_maps - 2) if rows == 1 else [1.0, 1.0]
        legend_in = 0.0 if rows == 2 and confidence is None else legend_row_in * math.ceil(k / 4) + 0.06
        unit = (PAGE_WIDTH_IN - bar_in - 0.05 * len(ratios)) / sum(ratios)
        tallest = max(ratios[:2]) if rows == 1 else 1.0
        if rows * (unit * tallest * aspect + title_in) + legend_in > max_height_in:
            unit = max(((max_height_in - legend_in) / rows - title_in) / (aspect * tallest), 0.4)
        return unit, ratios, rows * (unit * tallest * aspect + title_in) + legend_in + 0.05, legend_in

    # The layout that draws the tissue map largest: in one row, the widest map that fits, then two rows. Equal maps
    # (the height binds): the larger other panels.
    candidates = [(1, r) for r in _MAP_RATIOS] + [(2, 1.0)]
    rows, ratio = max(candidates, key=lambda c: (round(layout(*c)[0] * layout(*c)[1][1], 2), layout(*c)[0]))
    unit, ratios, height, legend_in = layout(rows, ratio)
    width = min(PAGE_WIDTH_IN, unit * sum(ratios) + 0.05 * len(ratios) + bar_in)

    base = slide.base(0.0)
    regions_px_drawn = slide.regions
    # Outside the regions the slide is faded, so the tissue that was mapped stands out.
    tinted = 0.45 * base + 0.55
    for t in range(1, k + 1):
        mask = regions_px_drawn == t
        tinted[mask] = 0.5 * base[mask] + 0.5 * np.array(tissue_rgb(t))
    grey = np.repeat((0.35 * (base @ np.array([0.299, 0.587, 0.114])) + 0.65)[..., None], 3, axis=2)
    cmap = matplotlib.colormaps["viridis"]

    def heat(grid: np.ndarray) -> np.ndarray:
        rgb = grey.copy()
        px = slide.values(grid, tile_px)
        has = np.isfinite(px)
        rgb[has] = cmap(np.clip(px[has], 0, 1))[:, :3]
        return rgb

    handles = [Patch(facecolor=tissue_rgb(t), edgecolor="black", linewidth=0.4, hatch=_hatch(t),
                     label=f"{tissue_class_name(t - 1)} ({shares[t - 1]:.1f} %)") for t in range(1, k + 1)]
    with _figure(width, height, layout="constrained") as fig:
        fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.02, hspace=0.02)
        axes = list(np.atleast_1d(fig.subplots(rows, len(ratios), squeeze=False, width_ratios=ratios)).ravel())
        slide.draw(axes[0], base, "Slide")
        tissue_map = axes[1]
        slide.draw(tissue_map, tinted, "Tissue map and representatives")
        slide.outline(tissue_map, range(1, k + 1), hatch=True)
        slide.draw(axes[2], heat(uncertainty), "Uncertainty per tile")
        maps = [axes[2]]
        if confidence is not None:
            slide.draw(axes[3], heat(confidence), "Confidence per tile")
            maps.append(axes[3])
            label = "unitless, 0-1"
        else:
            label = "uncertainty (unitless, 0-1)"
        key = ScalarMappable(Normalize(0, 1), cmap)
        if len(axes) > n_maps:  # two rows, three maps: the fourth cell holds the colour key and the legend
            cell = axes[3]
            cell.set_axis_off()
            bar = fig.colorbar(key, cax=cell.inset_axes([0.05, 0.78, 0.75, 0.07]), orientation="horizontal")
            cell.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 0.52), frameon=False,
                        handlelength=1.6, handleheight=1.0, title="Tissue (share of area)", title_fontsize=6.5,
                        alignment="left")
        else:
            bar = fig.colorbar(key, ax=maps, fraction=0.06, pad=0.02, shrink=0.85)
            fig.legend(handles=handles, loc="outside lower center", ncols=min(k, 4), frameon=False,
                       handlelength=1.6, handleheight=1.0, columnspacing=1.2)
        bar.set_label(label)
        bar.outline.set_linewidth(0.4)
        # Labels are placed once the layout has fixed the map's size on the page (their spacing is in points).
        fig.draw_without_rendering()
        drawn_in = tissue_map.get_window_extent().width / fig.dpi
        per_pt = _pt_to_data(drawn_in, slide.width)
        numbers = []
        for x, y, t in slide.tissue_numbers(k):
            tissue_map.text(x, y, str(t), ha="center", va="center", fontsize=7, fontweight="bold", color="black",
                            zorder=11, bbox={"boxstyle": "circle,pad=0.2", "facecolor": "white",
                                             "edgecolor": "black", "linewidth": 0.5})
            r = 6 * per_pt
            numbers.append((x - r, y - r, x + r, y + r))
        _draw_marks(tissue_map, marks, scale, per_pt, (slide.width, slide.height),
                    numbers + [slide.scale_bar_box(per_pt)])
        return _encode(fig, photo=True)


def locator_figure(thumbnail: np.ndarray, regions: np.ndarray, regions_px: float, tissue: int,
                   marks: Sequence[Mark], scale: float, mpp: float | None, width_in: float = 1.75,
                   max_height_in: float = 1.9) -> bytes:
    """Where a tissue lies on the slide: its regions in its colour, the rest faded, its representatives boxed.

    Arguments as for :func:`overview_figure`; ``tissue`` is 1..k.
    """
    slide = _Map(thumbnail, regions, regions_px, scale, mpp, max_px=500)
    aspect = slide.height / slide.width
    panel_w = min(width_in, max_height_in / aspect)
    with _figure(panel_w + 0.04, panel_w * aspect + 0.04, layout="constrained") as fig:
        fig.get_layout_engine().set(w_pad=0.01, h_pad=0.01)
        ax = fig.subplots()
        _draw_locator(ax, slide, tissue, marks, _pt_to_data(panel_w, slide.width))
        return _encode(fig, photo=True)


def _draw_locator(ax: Any, slide: _Map, tissue: int, marks: Sequence[Mark], per_pt: float) -> None:
    base = slide.base(0.0)
    grey = np.repeat((0.3 * (base @ np.array([0.299, 0.587, 0.114])) + 0.7)[..., None], 3, axis=2)
    mask = slide.regions == tissue
    grey[mask] = 0.35 * base[mask] + 0.65 * np.array(tissue_rgb(tissue))
    slide.draw(ax, grey, None)
    slide.outline(ax, [tissue], hatch=False)
    _draw_marks(ax, marks, slide.scale, per_pt, (slide.width, slide.height), [slide.scale_bar_box(per_pt)])


def representatives_figure(thumbnail: np.ndarray, scale: float, thumb_mpp: float | None,
                           reps: Sequence[Any], patches: Sequence[np.ndarray | None], titles: Sequence[str]) -> bytes:
    """The representatives of one tissue at the tissue level (top row) and at full resolution (bottom row).

    ``reps`` have a ``box`` (level-0 px) and a ``patch_mpp``; ``patches`` are their full-resolution
    images (None when missing); ``scale`` is thumbnail px per level-0 px; ``titles`` one per column.
    """
    n = max(len(reps), 1)
    side = (PAGE_WIDTH_IN - 0.25) / max(n, 5)
    with _figure(PAGE_WIDTH_IN, 2 * side + 0.42, layout="constrained") as fig:
        fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.03, hspace=0.02)
        axes = np.atleast_2d(fig.subplots(2, n, squeeze=False))
        for i, rep in enumerate(reps):
            low = _crop(thumbnail, rep.box, scale)
            _image_axis(axes[0, i], low, thumb_mpp, titles[i], "nearest")
            axes[0, i].title.set_fontsize(MIN_FONT_PT)
            patch = patches[i]
            if patch is None:
                axes[1, i].text(0.5, 0.5, "patch missing", ha="center", va="center", transform=axes[1, i].transAxes)
                axes[1, i].set_xticks([])
                axes[1, i].set_yticks([])
            else:
                # A 1024 px patch is drawn about 230 px wide: shrink it first (faster, and smaller files).
                small, factor = _shrink(patch, 512)
                _image_axis(axes[1, i], small, rep.patch_mpp * factor if rep.patch_mpp else None)
        axes[0, 0].set_ylabel("tissue level")
        axes[1, 0].set_ylabel("full resolution")
        return _encode(fig, photo=True)


def _crop(thumbnail: np.ndarray, box: tuple[int, int, int, int], scale: float) -> np.ndarray:
    x, y, w, h = (int(round(v * scale)) for v in box)
    return thumbnail[max(y, 0): y + max(h, 1), max(x, 0): x + max(w, 1)]


def outlined(patch: np.ndarray, labels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """``patch`` with the outline of each labelled object drawn in ``colour`` and the background dimmed a little."""
    from skimage.segmentation import find_boundaries

    overlay = patch.copy()
    edges = find_boundaries(labels, mode="inner")
    # Thicken the outline with the patch size so it stays visible once the patch is shrunk on the page.
    width = max(1, int(round(max(patch.shape[:2]) / 250)))
    if width > 1:
        from scipy import ndimage

        edges = ndimage.binary_dilation(edges, iterations=width - 1) & (labels > 0)
    overlay[edges] = colour
    # Outside the objects the patch is dimmed a little so outlines read in grey print.
    overlay[labels == 0] = (overlay[labels == 0] * 0.8).astype(np.uint8)
    return overlay


def overlay_figure(patch: np.ndarray, overlays: Sequence[tuple[str, np.ndarray]], mpp: float | None,
                   panel_in: float = 2.05) -> bytes:
    """The best representative, and beside it one panel per overlay (title, image with outlines drawn)."""
    n = 1 + len(overlays)
    small, factor = _shrink(patch, 640)
    mpp = mpp * factor if mpp else None
    with _figure(n * panel_in + 0.05, panel_in + 0.22, layout="constrained") as fig:
        fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.03)
        axes = np.atleast_1d(fig.subplots(1, n, squeeze=False)[0])
        _image_axis(axes[0], small, mpp, "best representative")
        for ax, (title, image) in zip(axes[1:], overlays):
            _image_axis(ax, _shrink(image, 640)[0], mpp, title)
        return _encode(fig, photo=True)


def gallery_row_figure(thumbnail: np.ndarray, regions: np.ndarray, regions_px: float, tissue: int,
                       marks: Sequence[Mark], scale: float, thumb_mpp: float | None,
                       images: Sequence[tuple[str, np.ndarray | None, float | None]], panel_in: float = 1.36) -> bytes:
    """One slide's view of one tissue in a row: a locator, then image panels (title, image, µm/px).

    Arguments as for :func:`locator_figure`.
    """
    slide = _Map(thumbnail, regions, regions_px, scale, thumb_mpp, max_px=450)
    n = 1 + len(images)
    with _figure(min(PAGE_WIDTH_IN, n * panel_in + 0.05), panel_in + 0.2, layout="constrained") as fig:
        fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.03)
        axes = np.atleast_1d(fig.subplots(1, n, squeeze=False)[0])
        aspect = slide.height / slide.width
        drawn_w = panel_in / max(aspect, 1.0)
        _draw_locator(axes[0], slide, tissue, marks, _pt_to_data(drawn_w, slide.width))
        axes[0].set_title("where it lies", pad=2)
        for ax, (title, image, mpp) in zip(axes[1:], images):
            if image is None:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(title, pad=2)
                continue
            small, factor = _shrink(image, 400)
            _image_axis(ax, small, mpp * factor if mpp else None, title)
        return _encode(fig, photo=True)


# --- charts -----------------------------------------------------------------------------------------------------------

def uncertainty_histogram(values: np.ndarray, all_values: np.ndarray, rep_values: Sequence[float],
                          tissue: int) -> bytes:
    """Distribution of the uncertainty of one tissue's tiles, over that of all tiles; representatives marked."""
    bins = np.linspace(0, 1, 21)
    with _figure(2.9, 1.75, layout="constrained") as fig:
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
        ax.legend(frameon=False, loc="upper right", handlelength=1.5)
        ax.spines[["top", "right"]].set_visible(False)
        return _encode(fig)


def feature_panels_figure(names: Sequence[str], values: np.ndarray, texts: Sequence[Sequence[str]],
                          tissues: Sequence[int], columns: int = 4) -> bytes:
    """One small panel per feature (its name and unit as the title): a bar per tissue, its value printed.

    Each panel has its own scale, in the feature's own unit, so no value is normalised away.

    Parameters
    ----------
    names : sequence of str
        Feature names with their units, e.g. "Nucleus area mean (µm²)".
    values : (n_tissues, n_features) ndarray
        NaN: undefined (no bar).
    texts : (n_tissues, n_features) nested sequence of str
        The value as printed beside each bar.
    tissues : sequence of int
        Tissue numbers 1..k of the rows.
    """
    from matplotlib.patches import Patch

    n_t, n_f = values.shape
    columns = max(1, min(columns, n_f))
    rows = max(1, math.ceil(n_f / columns))
    panel_h = 0.3 + 0.12 * max(1, max((len(n) for n in names), default=0) // 34 + 1) + 0.15 * n_t
    with _figure(PAGE_WIDTH_IN, rows * panel_h + 0.3, layout="constrained") as fig:
        fig.get_layout_engine().set(w_pad=0.03, h_pad=0.03, wspace=0.06, hspace=0.06)
        axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
        y = np.arange(n_t)
        titles = [_wrap(name, 34) for name in names]
        lines = max(t.count("\n") for t in titles) if titles else 0
        for j in range(n_f):
            ax = axes[j]
            column = values[:, j]
            finite = column[np.isfinite(column)]
            top = float(np.abs(finite).max()) if len(finite) else 1.0
            top = top if top > 0 else 1.0
            low = min(0.0, float(finite.min()) if len(finite) else 0.0)
            for i, t in enumerate(tissues):
                v = column[i]
                if np.isfinite(v):
                    ax.barh(y[i], v, height=0.72, color=tissue_rgb(t), edgecolor="black", linewidth=0.4,
                            hatch=_hatch(t))
                ax.text(max(v, 0) if np.isfinite(v) else 0, y[i], " " + texts[i][j], va="center", ha="left",
                        fontsize=MIN_FONT_PT, clip_on=False)
            ax.set_xlim(low * 1.1, top * 1.75)
            ax.set_ylim(n_t - 0.5, -0.5)
            ax.set_yticks(y, [str(t) for t in tissues])
            ax.tick_params(axis="y", length=0, pad=1.5)
            ax.set_xticks([])
            # Every title takes as many lines as the longest, so the panels of a row line up.
            ax.set_title("\n" * (lines - titles[j].count("\n")) + titles[j], pad=2, fontsize=6.5, loc="left")
            ax.spines[["top", "right", "bottom"]].set_visible(False)
            ax.axvline(0, color=_TEXT, linewidth=0.6)
        for ax in axes[n_f:]:
            ax.set_visible(False)
        handles = [Patch(facecolor=tissue_rgb(t), edgecolor="black", linewidth=0.4, hatch=_hatch(t),
                         label=tissue_class_name(t - 1)) for t in tissues]
        fig.legend(handles=handles, loc="outside upper left", ncols=min(n_t, 6), frameon=False, handlelength=1.6,
                   handleheight=1.0)
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
        Percent of the slide's tissue area in each tissue (rows sum to 100).
    """
    n = len(slides)
    with _figure(PAGE_WIDTH_IN, 0.75 + 0.26 * n + 0.16 * math.ceil(k / 6), layout="constrained") as fig:
        ax = fig.subplots()
        y = np.arange(n)
        left = np.zeros(n)
        for t in range(1, k + 1):
            part = shares[:, t - 1]
            ax.barh(y, part, left=left, color=tissue_rgb(t), edgecolor="black", linewidth=0.4, hatch=_hatch(t),
                    label=tissue_class_name(t - 1), height=0.7)
            for i in range(n):
                if part[i] >= 6:
                    ax.text(left[i] + part[i] / 2, y[i], f"{part[i]:.0f}", ha="center", va="center",
                            fontsize=MIN_FONT_PT, bbox={"boxstyle": "round,pad=0.1", "facecolor": "white",
                                                        "edgecolor": "none", "alpha": 0.8})
            left += part
        ax.set_yticks(y, [_short(s) for s in slides])
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlim(0, 100)
        ax.set_xlabel("share of the slide's tissue area (%)")
        fig.legend(frameon=False, ncols=min(k, 6), loc="outside upper left", handlelength=1.6, handleheight=1.0)
        ax.spines[["top", "right"]].set_visible(False)
        return _encode(fig)


def _short(name: str, length: int = 28) -> str:
    return name if len(name) <= length else name[: length - 1] + "…"


def cohort_tissue_figure(slides: Sequence[str], areas_mm2: np.ndarray, k: int, unit: str) -> bytes:
    """One small panel per tissue: its area on each slide.

    ``areas_mm2`` is (n_slides, k), in mm² (or tiles when the pixel size is unknown: ``unit`` says which).
    """
    from matplotlib.ticker import MaxNLocator

    cols = min(k, 3)
    rows = math.ceil(k / cols)
    n = len(slides)
    with _figure(PAGE_WIDTH_IN, rows * (0.75 + 0.2 * n) + 0.1, layout="constrained") as fig:
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
        y = np.arange(n)
        for t in range(1, k + 1):
            ax = axes[t - 1]
            ax.barh(y, areas_mm2[:, t - 1], color=tissue_rgb(t), edgecolor="black", linewidth=0.4, hatch=_hatch(t),
                    height=0.7)
            ax.set_yticks(y, [_short(s, 18) for s in slides] if (t - 1) % cols == 0 else [""] * n)
            ax.set_ylim(n - 0.5, -0.5)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.set_title(tissue_class_name(t - 1), pad=2)
            ax.set_xlabel(unit)
            ax.spines[["top", "right"]].set_visible(False)
        for ax in axes[k:]:
            ax.set_visible(False)
        return _encode(fig)


def dendrogram_figure(linkage: np.ndarray | None, gaps: dict[int, float], k: int, k_source: str) -> bytes:
    """The Ward dendrogram (last merges) with the cut that gives k, and the gap per k that chose it."""
    from scipy.cluster.hierarchy import dendrogram

    with _figure(PAGE_WIDTH_IN, 2.3, layout="constrained") as fig:
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
            left.set_xticks(5 + 10 * np.arange(len(tree["ivl"])), tree["ivl"], rotation=90, fontsize=MIN_FONT_PT)
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
            right.set_ylabel("gap between merge heights\n(latent units)")
            right.set_title(f"Gap per cut ({k_source})", pad=2)
        else:
            right.text(0.5, 0.5, "no gaps computed", ha="center", va="center", transform=right.transAxes)
            right.set_xticks([])
            right.set_yticks([])
        right.spines[["top", "right"]].set_visible(False)
        return _encode(fig)


def loss_figure(epoch: np.ndarray, train: np.ndarray, val: np.ndarray | None, best_epoch: int | None,
                ylabel: str = "MSE (pixel values 0-1)") -> bytes:
    """Training (and validation) loss per epoch: the autoencoder's MSE is the paper's Figure 2."""
    val = train[:0] if val is None else val
    with _figure(3.45, 2.0, layout="constrained") as fig:
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
    n = min(len(tiles), 6)
    with _figure(3.45, 1.4, layout="constrained") as fig:
        fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.02, hspace=0.02)
        axes = fig.subplots(2, n, squeeze=False)
        for i in range(n):
            _image_axis(axes[0, i], tiles[i], None, interpolation="nearest")
            _image_axis(axes[1, i], reconstructed[i], None, interpolation="nearest")
        axes[0, 0].set_ylabel("tile")
        axes[1, 0].set_ylabel("recon.")
        return _encode(fig, photo=True)


def embedding_colours_figure(
    colours: Any,
    *,
    boxes: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 120,
    width_in: float | None = None,
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
        Resolution of the stand-alone figure.
    width_in : float, optional
        Draw it as the report does: this wide, in the report's fonts and resolution.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    rgb = colours.rgb.astype(np.float64) / 255.0
    xyz = colours.coords
    n_panels = 2 + (labels is not None)
    name = colours.method.upper()
    report = width_in is not None
    rc = _RC if report else {}
    with matplotlib.rc_context(rc):
        if report:
            fig = Figure(figsize=(width_in, width_in / n_panels + 0.1), dpi=DPI, layout="constrained")
        else:
            fig = Figure(figsize=(5.0 * n_panels, 4.8))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, n_panels, squeeze=False)[0]
        size = max(2.0, min(30.0, 6000.0 / max(len(xyz), 1))) * (0.25 if report else 1.0)
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
            axes[2].set(xlabel=f"{name} 1", ylabel=f"{name} 2", title="Embedding, by tissue" if report else
                        "Embedding, by cluster")
            if len(np.unique(labels)) <= 12:
                axes[2].legend(fontsize=MIN_FONT_PT if report else "small", markerscale=3 if report else 2,
                               frameon=False, handletextpad=0.2, borderaxespad=0.2)
        if report:
            from matplotlib.ticker import MaxNLocator

            for ax in axes:
                ax.xaxis.set_major_locator(MaxNLocator(4))
                ax.yaxis.set_major_locator(MaxNLocator(4))
                ax.spines[["top", "right"]].set_visible(False)
        if title:
            fig.suptitle(title)
        if report:
            return _encode(fig)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, dpi=dpi, format="png")
        return buffer.getvalue()
