"""The per-case PDF of cross-level insights, and the cohort report (TUMLS section 4.3).

Everything is read back from run folders (:func:`~tumls_qp.outputs.run_folder.read_run`): a report can be
re-rendered at any time without the slide and without recomputing anything. reportlab
lays the pages out; matplotlib draws the figures; both are imported only when a report
is rendered.

Pages of a case report, in order:

1. Case summary: slide, dates, tool version; the tissue regions, the uncertainty map and the
   confidence map over the slide thumbnail; k and how it was chosen; one line per tissue
   (tiles, region area in µm² and %, mean uncertainty and confidence, headline features); a
   statement that these are pre-decision insights, not a diagnosis.
2. One page per tissue: its best representatives at the tissue level and at full
   resolution; the best one with its nucleus outlines and feature listing (with a warning
   in words when the features rest on fewer than ``FEW_NUCLEI`` nuclei); the distribution of
   its tiles' uncertainty.
3. Comparison across tissues: normalised features; the tissue distribution.
4. Method and quality: dendrogram with the chosen cut and how the resamples voted on k, the
   embedding method (for the autoencoder its losses and reconstructions), the embedding
   colours (when the run folder has ``embedding_colours.npz``), background filtering
   counts, MSE, warnings.
5. Parameters and provenance: versions, seed, device, timings, slide hash, the effective
   configuration.

A cohort report starts with the cohort's pages (a summary per slide, the distribution of
each tissue over the slides) and then holds each slide's case report.

Nucleus content comes from these run folder files when they are there (a run without
them renders with a note): ``patches/tissue{t}-rank{r}.labels.png`` (uint16 instance
labels, 0 = background, same size as the patch), ``nuclei.csv`` (``tissue, rank, label``
then one column per measurement) and ``features.csv`` (``tissue`` then one column per
feature; empty or NaN = undefined).
"""

from __future__ import annotations

import io
import math
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .. import __version__
from ..cells.features import FEW_NUCLEI
from ..classes import class_colour, tissue_class_name
from ..errors import InvalidInputError, OutputError
from ..files import atomic_write
from . import _report_figures as figures
from .run_folder import REPORT_PDF, RunFolder, display_name, load_labels, read_run

__all__ = ["render_report", "ReportResult", "REPORT_NAME", "COHORT_REPORT_NAME", "DISCLAIMER"]

#: File name of the case report inside a run folder (the run folder's ``REPORT_PDF``).
REPORT_NAME = REPORT_PDF
#: Default file name of a cohort report, next to the cohort's run folders.
COHORT_REPORT_NAME = "cohort-report.pdf"
#: The statement every report carries on its first page and in its footer.
DISCLAIMER = (
    "These are pre-decision insights from an unsupervised analysis, not a diagnosis. Tissues are numbered by size, "
    "not named; the tool does not say what they are. Every number comes with its uncertainty: read the maps and "
    "the representatives, then decide."
)
_FOOTER = "Pre-decision insights, not a diagnosis"
# A4 less 15 mm margins, in points.
_FRAME_WIDTH = 595.2756 - 2 * 42.5197

# Feature columns that are identifiers, not measurements.
_ID_COLUMNS = {"tissue", "rank", "label"}
#: nuclei.csv columns that locate a nucleus rather than describe it: no mean in the listing.
_POSITION_COLUMNS = {"x", "y"}
# Keywords of the feature columns shown first on the summary line of each tissue (others follow in file order).
_HEADLINE = (("nuclei",), ("per mm", "density"), ("area",), ("circularity",))
_HEADLINE_COUNT = 4


@dataclass(frozen=True)
class ReportResult:
    """A rendered report: where it is, its number of pages and slides, and the seconds it took."""

    path: Path
    pages: int
    slides: int
    seconds: float


def render_report(
    run_dirs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    *,
    cohort: bool = False,
) -> ReportResult:
    """Render the PDF report of one run folder, or the cohort report of several.

    Parameters
    ----------
    run_dirs : path-like or sequence of path-like
        Run folders written by ``tumls-qp analyze``. One folder gives a case report;
        several give a cohort report (their tissue numbers agree only when they come
        from one ``--cohort`` analysis; the report says so otherwise).
    out : path-like, optional
        The PDF to write (replaced atomically), or an existing folder to write it into.
        Default: ``report.pdf`` in the run folder, or ``cohort-report.pdf`` in the run
        folders' common parent.
    cohort : bool
        With one run folder of a ``--cohort`` analysis: the cohort report of all the run
        folders of that analysis (found beside it by the names its manifest lists).

    Returns
    -------
    ReportResult

    Raises
    ------
    InvalidInputError
        A folder is not a readable run folder (the message names the missing or damaged file).
    OutputError
        The PDF cannot be written.
    """
    started = time.perf_counter()
    paths = [Path(run_dirs)] if isinstance(run_dirs, (str, os.PathLike)) else [Path(p) for p in run_dirs]
    if not paths:
        raise InvalidInputError("no run folder given; pass the folder(s) that `tumls-qp analyze` wrote")
    if cohort and len(paths) == 1:
        paths = _cohort_members(paths[0])
    runs = [read_run(p) for p in paths]
    if len(runs) == 1:
        folder, name = paths[0], REPORT_NAME
    else:
        folder, name = Path(os.path.commonpath([p.resolve() for p in paths])), COHORT_REPORT_NAME
    target = folder / name if out is None else Path(out) / name if Path(out).is_dir() else Path(out)
    story = _case_story(_Styles(), runs[0], level=0) if len(runs) == 1 else _cohort_story(_Styles(), runs)
    title = runs[0].slide_name if len(runs) == 1 else f"Cohort of {len(runs)} slides"
    pages = _write_pdf(target, story, title)
    return ReportResult(path=target, pages=pages, slides=len(runs), seconds=time.perf_counter() - started)


def _cohort_members(run_dir: Path) -> list[Path]:
    """The run folders of the cohort analysis that wrote ``run_dir``."""
    names = read_run(run_dir).manifest.cohort
    if not names:
        raise InvalidInputError(
            f"{str(run_dir)!r} was not analysed with --cohort, so it has no cohort. Give several run folders to "
            "compare them in one report, or analyse the slides together with `tumls-qp analyze --cohort`."
        )
    members = [run_dir.parent / str(name) for name in names]
    missing = [str(m) for m in members if not m.is_dir()]
    if missing:
        raise InvalidInputError(
            f"the cohort of {str(run_dir)!r} lists run folders that are not beside it: {', '.join(missing)}. "
            "Give the cohort's run folders explicitly instead of --cohort."
        )
    return members


# --- PDF assembly ---------------------------------------------------------------------------------------------------

def _register_fonts() -> tuple[str, str, str]:
    """DejaVu Sans (regular, bold) and DejaVu Sans Mono from matplotlib's data: the figures' font, full Unicode."""
    import matplotlib
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    names = ("TumlsSans", "TumlsSans-Bold", "TumlsMono")
    if names[0] not in pdfmetrics.getRegisteredFontNames():
        folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        for name, file in zip(names, ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf")):
            pdfmetrics.registerFont(TTFont(name, str(folder / file)))
        pdfmetrics.registerFontFamily(names[0], normal=names[0], bold=names[1], italic=names[0], boldItalic=names[1])
    return names


class _Styles:
    """Paragraph and table styles of the report."""

    def __init__(self) -> None:
        from reportlab.lib import colors
        from reportlab.lib.styles import ParagraphStyle

        sans, bold, mono = _register_fonts()
        self.sans, self.bold, self.mono = sans, bold, mono
        self.title = ParagraphStyle("title", fontName=bold, fontSize=15, leading=19, spaceAfter=4)
        self.h1 = ParagraphStyle("h1", fontName=bold, fontSize=12.5, leading=16, spaceBefore=2, spaceAfter=4)
        self.h2 = ParagraphStyle("h2", fontName=bold, fontSize=9.5, leading=12, spaceBefore=6, spaceAfter=3)
        self.body = ParagraphStyle("body", fontName=sans, fontSize=8, leading=10.5, spaceAfter=3)
        self.small = ParagraphStyle("small", fontName=sans, fontSize=6.8, leading=8.6, spaceAfter=2,
                                    textColor=colors.HexColor("#333333"))
        self.cell = ParagraphStyle("cell", fontName=sans, fontSize=7, leading=8.6)
        self.cell_bold = ParagraphStyle("cellb", parent=self.cell, fontName=bold)
        self.mono_style = ParagraphStyle("mono", fontName=mono, fontSize=6.5, leading=8)
        self.box = ParagraphStyle("box", parent=self.body, fontName=bold, borderColor=colors.black, borderWidth=0.8,
                                  borderPadding=5, backColor=colors.HexColor("#f2f2f2"), spaceBefore=8, spaceAfter=8,
                                  leftIndent=5, rightIndent=5)


def _escape(text: Any) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _para(text: str, style: Any) -> Any:
    from reportlab.platypus import Paragraph

    return Paragraph(text, style)


def _image(data: bytes, width_pt: float | None = None) -> Any:
    """A figure (PNG or JPEG bytes) at its drawn size (fonts then match across figures), or at ``width_pt``."""
    from reportlab.platypus import Image as RLImage

    with Image.open(io.BytesIO(data)) as image:
        w, h = image.size
    if width_pt is None:
        width_pt = w / figures.DPI * 72
    width_pt = min(width_pt, _FRAME_WIDTH)
    return RLImage(io.BytesIO(data), width=width_pt, height=width_pt * h / w)


def _table(rows: list[list[Any]], styles: _Styles, widths: Sequence[float] | None = None, header: bool = True,
           extra: Sequence[tuple] = ()) -> Any:
    """A table with thin rules; strings become wrapped paragraphs; the first row is the header when ``header``."""
    from reportlab.lib import colors
    from reportlab.platypus import Table, TableStyle

    cells = [[_para(_escape(c), styles.cell_bold if header and i == 0 else styles.cell) if isinstance(c, str) else c
              for c in row] for i, row in enumerate(rows)]
    table = Table(cells, colWidths=widths, repeatRows=1 if header else 0, hAlign="LEFT")
    commands: list[tuple] = [
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#999999")),
        ("TOPPADDING", (0, 0), (-1, -1), 1.5),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
        ("LEFTPADDING", (0, 0), (-1, -1), 3),
        ("RIGHTPADDING", (0, 0), (-1, -1), 3),
    ]
    if header:
        commands += [("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e6e6e6")),
                     ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black)]
    table.setStyle(TableStyle(commands + list(extra)))
    return table


def _swatch_commands(row: int, tissue: int) -> list[tuple]:
    """Table style commands that colour cell (0, row) in the tissue's QuPath colour."""
    from reportlab.lib import colors

    r, g, b = class_colour(tissue - 1)
    return [("BACKGROUND", (0, row), (0, row), colors.Color(r / 255, g / 255, b / 255))]


def _swatch_cell(tissue: int, styles: _Styles) -> Any:
    from reportlab.lib.styles import ParagraphStyle

    r, g, b = class_colour(tissue - 1)
    light = 0.299 * r + 0.587 * g + 0.114 * b > 140
    style = ParagraphStyle("sw", parent=styles.cell_bold, alignment=1,
                           textColor="#000000" if light else "#ffffff")
    return _para(str(tissue), style)


def _side_by_side(left: Any, right: Any, widths: tuple[float, float]) -> Any:
    from reportlab.platypus import Table, TableStyle

    table = Table([[left, right]], colWidths=widths, hAlign="LEFT")
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
                               ("RIGHTPADDING", (0, 0), (-1, -1), 4)]))
    return table


def _marker(header: str | None, outline: str | None, level: int) -> Any:
    """A zero-size flowable that sets the running header and/or adds an entry to the PDF's outline."""
    from reportlab.platypus import Flowable

    class Marker(Flowable):
        def wrap(self, *args: Any) -> tuple[float, float]:
            return (0, 0)

        def draw(self) -> None:
            canvas = self.canv
            if header is not None:
                canvas._tumls_header = header  # read by _decorate at the end of the page
            if outline is not None:
                key = f"s{uuid.uuid4().hex[:12]}"
                canvas.bookmarkPage(key)
                canvas.addOutlineEntry(outline, key, level=level, closed=level > 0)

    return Marker()


def _decorate(canvas: Any, doc: Any) -> None:
    """Running header (report and slide) and footer (disclaimer, page number) of every page."""
    from reportlab.lib.units import mm

    width, height = doc.pagesize
    sans = _register_fonts()[0]
    canvas.saveState()
    canvas.setFont(sans, 7)
    canvas.setFillGray(0.3)
    canvas.drawString(15 * mm, height - 10 * mm, f"tumls-qp {__version__} report · {getattr(canvas, '_tumls_header', '')}")
    canvas.drawString(15 * mm, 8 * mm, _FOOTER)
    canvas.drawRightString(width - 15 * mm, 8 * mm, f"page {doc.page}")
    canvas.setLineWidth(0.3)
    canvas.line(15 * mm, height - 11.5 * mm, width - 15 * mm, height - 11.5 * mm)
    canvas.restoreState()


def _write_pdf(target: Path, story: list[Any], title: str) -> int:
    """Build the PDF into a temporary file beside ``target`` and move it into place; returns the page count."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.platypus import BaseDocTemplate, Frame, PageTemplate

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder of the report {str(target)!r}: {exc.strerror or exc}") from exc
    try:
        with atomic_write(target) as tmp:
            doc = BaseDocTemplate(
                str(tmp), pagesize=A4, leftMargin=15 * mm, rightMargin=15 * mm, topMargin=15 * mm,
                bottomMargin=14 * mm, title=f"tumls-qp report: {title}", author="tumls-qp", subject=_FOOTER,
                creator=f"tumls-qp {__version__}",
            )
            frame = Frame(doc.leftMargin, doc.bottomMargin, doc.width, doc.height, id="body", leftPadding=0,
                          rightPadding=0)
            # Decorated at the end of each page, once the page's markers have set the running header.
            doc.addPageTemplates([PageTemplate(id="page", frames=[frame], onPageEnd=_decorate)])
            doc.build(story)
    except OSError as exc:
        raise OutputError(
            f"cannot write the report {str(target)!r}: {exc.strerror or exc}. Choose a writable place with --out."
        ) from exc
    return int(doc.page)


# --- numbers ----------------------------------------------------------------------------------------------------------

def _fmt(value: Any, digits: int = 4) -> str:
    """A number as the report prints it: integers whole, others with ``digits`` significant digits; NaN undefined."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return "undefined"
        if abs(value) < 1e-12:  # rounding noise of a statistic that is 0
            return "0"
        if float(value).is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        if 1000 <= abs(value) < 1e15:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def _area(um2: float) -> str:
    return f"{um2:,.0f}"



def _shares(run: RunFolder) -> np.ndarray:
    """Share of the mapped tissue area in each tissue's region, %."""
    areas = run.tissue_areas_um2()
    return 100 * areas / areas.sum() if areas.sum() else areas


def _feature_columns(run: RunFolder) -> list[str]:
    if run.features is None:
        return []
    return [c for c in run.features.columns if c not in _ID_COLUMNS]


def _headline_columns(run: RunFolder) -> list[str]:
    columns = _feature_columns(run)
    chosen: list[str] = []
    for keywords in _HEADLINE:
        for c in columns:
            if c not in chosen and any(k in c.lower() for k in keywords):
                chosen.append(c)
                break
    chosen += [c for c in columns if c not in chosen]
    return chosen[:_HEADLINE_COUNT]


#: What each embedding method other than the autoencoder is, in one sentence for the report.
_METHOD_TEXT = {
    "contrastive": "Self-supervised contrastive learning (SimCLR) on the slide's own tiles: two views of each tile, "
                   "differing in stain (jitter in optical density), orientation, crop and focus, are pulled "
                   "together and other tiles pushed away, so that the vectors describe tissue architecture rather "
                   "than colour.",
    "vade": "Variational deep embedding (VaDE): a variational autoencoder whose latent prior is a Gaussian mixture, "
            "so that it clusters as it embeds.",
    "handcrafted": "Hand-crafted descriptors, no training: haematoxylin and eosin statistics, texture at a cell "
                   "and a tissue scale, small lumina and nucleus density, standardised over the slide's tiles.",
}
_LOSS_LABEL = {"contrastive": "contrastive loss (NT-Xent)", "vade": "negative ELBO"}


def _k_explanation(run: RunFolder) -> str:
    k = run.k
    source = run.manifest.clusters.k_source
    statistic = run.manifest.clusters.split_statistic
    test = "" if not isinstance(statistic, (int, float)) else (
        f" The one-tissue split test (G-means, Anderson-Darling) gave A*² = {statistic:.4g}, "
        f"{'above' if statistic > 1.8692 else 'at most'} its critical value 1.8692.")
    if source == "dendrogram":
        gaps = run.manifest.clusters.gaps
        candidates = f" among k = {min(gaps)} to {max(gaps)}" if gaps else ""
        gap = f" ({_fmt(gaps[k])} latent units)" if k in gaps else ""
        return (f"k = {k}, chosen from the Ward dendrogram of the tile embeddings: the largest gap between merge "
                f"heights{gap} is at the cut into {k} tissues{candidates}.{test}")
    if source.startswith("split test"):
        return (f"k = 1 (one tissue): the tiles' embeddings are no less Gaussian along their best two-group axis than "
                f"a single cloud, so no split is supported.{test}")
    if source == "user":
        return f"k = {k}, set by the user (--k or clusters.k); the dendrogram rule was not used."
    if source.startswith("VaDE"):
        bic = run.manifest.embedding.bic
        listed = ", ".join(f"k = {kk}: {v:.0f}" for kk, v in sorted(bic.items()))
        assigned = ("each tile goes to its most probable component" if run.manifest.clusters.method == "mixture"
                    else f"graph clustering partitioned the tiles into {k} tissues")
        return (f"k = {k}, chosen by the embedding itself: VaDE's Gaussian mixture has the lowest BIC with {k} "
                f"components ({listed}); {assigned}.")
    return f"k = {k} ({_escape(source)})."


def _vote_explanation(run: RunFolder) -> str:
    """How the resamples voted on k, and how close the runner-up came ("" when k was not voted on)."""
    votes = run.manifest.clusters.k_votes
    if not votes:
        return ""
    total = sum(votes.values())
    runner = run.manifest.clusters.runner_up
    won = votes.get(run.k, 0)
    if runner is None:
        return f" All {total} resamples of 80 % of the tiles chose k = {run.k}."
    close = " The runner-up came close: consider trying it with --k." if 2 * runner[1] >= won else ""
    return (f" Over {total} resamples of 80 % of the tiles, k = {run.k} was chosen {won} times and the runner-up, "
            f"k = {runner[0]}, {runner[1]} times.{close}")


def _tile_luminance(run: RunFolder) -> np.ndarray:
    """Mean Rec. 601 luma (0-255) of each tissue's tiles in the thumbnail, index 0 = tissue 1."""
    luma = run.thumbnail.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    scale = run.thumbnail_scale
    sums = np.zeros(run.k)
    counts = np.zeros(run.k)
    for (x, y, w, h), t in zip(run.tiles.boxes, run.tiles.tissue):
        x0, y0 = int(round(x * scale)), int(round(y * scale))
        block = luma[y0: y0 + max(1, int(round(h * scale))), x0: x0 + max(1, int(round(w * scale)))]
        if block.size and 1 <= t <= run.k:
            sums[t - 1] += block.mean()
            counts[t - 1] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _tile_descriptors(run: RunFolder) -> tuple[list[str], np.ndarray]:
    """Per-tissue values the run folder itself gives (tiles, uncertainty, thumbnail): names and (k, n) values."""
    k, tiles = run.k, run.tiles
    present = [(tiles.tissue == t).any() for t in range(1, k + 1)]
    mean_u = np.array([tiles.uncertainty[tiles.tissue == t].mean() if present[t - 1] else np.nan
                       for t in range(1, k + 1)])
    fraction = np.array([np.nanmean(tiles.tissue_fraction[tiles.tissue == t]) if present[t - 1] else np.nan
                         for t in range(1, k + 1)])
    names = ["Share of tissue area %", "Mean uncertainty", "Mean tissue fraction of tiles",
             "Tissue-level luminance mean (0-255)"]
    return names, np.stack([_shares(run), mean_u, fraction, _tile_luminance(run)], axis=1)


def _normalise(values: np.ndarray) -> np.ndarray:
    """Each column divided by its largest absolute value over the rows (NaN where undefined)."""
    finite = np.isfinite(values)
    scale = np.where(finite, np.abs(values), 0.0).max(axis=0, initial=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite & (scale > 0), values / np.where(scale > 0, scale, 1.0), np.nan)


# --- case report ------------------------------------------------------------------------------------------------------

def _case_story(styles: _Styles, run: RunFolder, level: int) -> list[Any]:
    from reportlab.platypus import PageBreak

    name = run.slide_name
    # In a cohort report the slide is an outline entry of its own, its sections one level below.
    story: list[Any] = [_marker(name, name if level > 0 else None, 0)]
    # A tissue of a cohort that does not occur on this slide gets no page (the summary table shows it with 0 tiles).
    present = [t for t in range(1, run.k + 1) if (run.tiles.tissue == t).any()]
    sections = [
        ("Case summary", _summary_page),
        *[(f"Tissue {t}", lambda s, r, t=t: _tissue_page(s, r, t)) for t in present],
        ("Comparison across tissues", _comparison_page),
        ("Method and quality", _method_page),
        ("Parameters and provenance", _provenance_page),
    ]
    for i, (title, build) in enumerate(sections):
        if i:
            story.append(PageBreak())
        story.append(_marker(None, title, level))
        story += build(styles, run)
    return story


def _summary_page(styles: _Styles, run: RunFolder) -> list[Any]:
    m = run.manifest
    k = run.k
    story = [_para("Case summary", styles.title), _para(f"<b>{_escape(run.slide_name)}</b>", styles.h2)]
    width_px, height_px = m.slide.width_px, m.slide.height_px
    size = (f"{_fmt(width_px)} × {_fmt(height_px)} px ({width_px * run.mpp / 1000:.2f} × "
            f"{height_px * run.mpp / 1000:.2f} mm)")
    info = [
        ["Slide", run.slide_name, "Tool", f"tumls-qp {m.version}"],
        ["Analysed", m.created, "Report rendered", datetime.now(timezone.utc).isoformat(timespec="seconds")],
        ["Slide size", size, "Pixel size", f"{run.mpp:g} µm/px ({m.slide.mpp_source})"],
        ["Tissue tiles", f"{_fmt(len(run.tiles.tissue))} of {_fmt(m.tiles.total)} tiles of {run.tile_um:g} µm",
         "Tissues (k)", str(k)],
    ]
    story.append(_table(info, styles, widths=[58, 197, 70, 185], header=False,
                        extra=[("FONTNAME", (0, 0), (0, -1), styles.bold)]))
    story.append(_para(f"<b>How k was chosen.</b> {_k_explanation(run)}", styles.small))

    tiles = run.tiles
    unc = figures.tissue_grid(tiles.boxes, tiles.tissue, tiles.uncertainty, run.tile_size_px, _grid_shape(run))
    conf = figures.tissue_grid(tiles.boxes, tiles.tissue, tiles.confidence, run.tile_size_px, _grid_shape(run))
    shares = _shares(run)
    png = figures.maps_figure(run.thumbnail, run.regions, unc, conf, k, run.tile_px, run.thumbnail_mpp, shares)
    story.append(_image(png))
    regions = run.manifest.regions
    drawn = ("borders drawn within the tiles from the image (multi-scale segmentation)"
             if regions.method == "felzenszwalb" else "whole tiles")
    story.append(_para(
        f"Left: the tissue regions, {drawn}, in QuPath class colours; the number marks each tissue's largest region. "
        "Middle: each tile's uncertainty, how atypical it is of its tissue (its distance to the tissue's centre in the "
        "embedding; 1 is as atypical as the most atypical 1 % of tiles). Right: each tile's confidence, how sure its "
        "assignment is (1: far nearer its own tissue's centre than any other; 0: as near another tissue). A tile "
        "between two tissues can be typical enough yet unsure. Faded areas were not mapped (background, artefact).",
        styles.small))

    headline = _headline_columns(run)
    header = ["", "Tissue", "Tiles", "Area (µm²)", "Share (%)", "Mean uncer­tainty", "Mean confi­dence",
              "Headline features" if headline else "Nucleus features"]
    rows: list[list[Any]] = [header]
    extra: list[tuple] = []
    counts = run.tiles_per_tissue()
    areas = run.tissue_areas_um2()
    for t in range(1, k + 1):
        mask = tiles.tissue == t
        area = areas[t - 1]
        feature_row = run.feature_row(t)
        if not mask.any():
            text = "not on this slide (a tissue of the cohort)"
        elif headline and feature_row is not None:
            text = "; ".join(f"{display_name(c)} {_fmt(feature_row.get(c, math.nan))}" for c in headline)
        elif headline:
            text = "no row in features.csv"
        else:
            text = "none in this run folder"
        rows.append([_swatch_cell(t, styles), tissue_class_name(t - 1), _fmt(int(counts[t - 1])), _area(area),
                     f"{shares[t - 1]:.1f}", f"{tiles.uncertainty[mask].mean():.3f}" if mask.any() else "n/a",
                     f"{tiles.confidence[mask].mean():.3f}" if mask.any() else "n/a", text])
        extra += _swatch_commands(t, t)
    story.append(_table(rows, styles, widths=[16, 50, 34, 64, 40, 46, 46, 214], extra=extra))
    story.append(_para(DISCLAIMER, styles.box))
    return story


def _grid_shape(run: RunFolder) -> tuple[int, int]:
    h, w = run.thumbnail.shape[:2]
    rows, cols = h // run.tile_px, w // run.tile_px
    boxes = run.tiles.boxes
    if len(boxes):
        rows = max(rows, int((boxes[:, 1] // run.tile_size_px).max()) + 1)
        cols = max(cols, int((boxes[:, 0] // run.tile_size_px).max()) + 1)
    return rows, cols


def _load_patch(path: Path | None) -> np.ndarray | None:
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError:
        return None


def _tissue_page(styles: _Styles, run: RunFolder, t: int) -> list[Any]:
    from reportlab.platypus import KeepTogether

    mask = run.tiles.tissue == t
    count = int(mask.sum())
    area = run.tissue_areas_um2()[t - 1]
    values = run.tiles.uncertainty[mask]
    story = [_para(f"{tissue_class_name(t - 1)}", styles.title)]
    summary = (f"{_fmt(count)} tiles · region area {_area(area)} µm² ({_shares(run)[t - 1]:.1f} % of the tissue) · "
               + (f"uncertainty mean {values.mean():.3f}, median {np.median(values):.3f} · confidence mean "
                  f"{run.tiles.confidence[mask].mean():.3f}" if count else "no tile of this tissue on this slide"))
    few = _few_nuclei(run, t)
    story.append(_para(summary + (f" <b>Few nuclei:</b> {few}" if few else ""), styles.body))
    if count and area == 0:
        story.append(_para("<b>No region.</b> Every tile of this tissue lies on a border between other tissues; "
                           "the border refinement gave its area to them. It stays in QuPath's tile layer.",
                           styles.box))

    reps = run.representatives_of(t)
    if not reps:
        story.append(_para("This tissue has no representative on this slide.", styles.body))
        return story
    patches = [_load_patch(r.patch) for r in reps]
    png = figures.representatives_figure(run.thumbnail, run.thumbnail_scale, run.thumbnail_mpp, reps, patches)
    story.append(KeepTogether([
        _para(f"The {len(reps)} best representatives", styles.h2), _image(png),
        _para("The confident tiles closest to the tissue's centre in the embedding, best first (u: uncertainty, c: "
              "confidence). Top: the tile as the tissue level shows it. Bottom: "
              f"{_patch_size(run, reps[0])} centred on the tile, at full resolution.", styles.small),
    ]))

    png = figures.uncertainty_histogram(values, run.tiles.uncertainty, [r.uncertainty for r in reps], t)
    quantiles = [["", "uncertainty (unitless)"], ["Tiles", _fmt(count)]]
    if count:
        quantiles += [["Mean", f"{values.mean():.3f}"], ["Median", f"{np.median(values):.3f}"],
                      ["90th percentile", f"{np.percentile(values, 90):.3f}"],
                      ["Tiles with u > 0.8", f"{int((values > 0.8).sum())} ({100 * (values > 0.8).mean():.1f} %)"],
                      ["Representatives", ", ".join(f"{r.uncertainty:.3f}" for r in reps)]]
    picture = _image(png)
    story.append(KeepTogether([
        _para("Uncertainty of the tissue's tiles", styles.h2),
        _side_by_side(picture, _table(quantiles, styles, widths=[90, 150]),
                      (picture.drawWidth + 6, _FRAME_WIDTH - picture.drawWidth - 6)),
    ]))

    best = reps[0]
    patch = patches[0]
    labels, note = _best_labels(run, best, patch)
    block: list[Any] = [_para("The best representative: nuclei and features", styles.h2)]

    if patch is not None:
        picture = _image(figures.nucleus_overlay_figure(patch, labels, best.patch_mpp))
        rest = _FRAME_WIDTH - picture.drawWidth - 6
        block.append(_side_by_side(picture, _feature_listing(styles, run, t, best, labels, rest - 4),
                                   (picture.drawWidth + 6, rest)))
    else:
        block.append(_feature_listing(styles, run, t, best, labels, 300))
    if note:
        block.append(_para(note, styles.small))
    story.append(KeepTogether(block))
    return story


def _patch_size(run: RunFolder, rep: Any) -> str:
    return f"a {rep.patch_box[2] * run.mpp:.0f} µm square"


def _few_nuclei(run: RunFolder, t: int) -> str | None:
    """A warning in words when a tissue's features rest on fewer than FEW_NUCLEI nuclei; None otherwise."""
    row = run.feature_row(t)
    if row is None or not math.isfinite(row.get("Nuclei", math.nan)):
        return None
    count = int(row["Nuclei"])
    if count >= FEW_NUCLEI:
        return None
    return (f"its nucleus features rest on {count} nuclei, fewer than {FEW_NUCLEI}; a few nuclei more or less could "
            "change them a lot. Read them as an example, not a measurement.")


def _best_labels(run: RunFolder, best: Any, patch: np.ndarray | None) -> tuple[np.ndarray | None, str | None]:
    """The nucleus label image of the best representative, and a note when there is none."""
    if best.labels is None:
        if run.nuclei is None and run.features is None:
            return None, ("No nuclei were segmented in this run (no nucleus label image, nuclei.csv or features.csv "
                          "in the run folder): nucleus outlines and features are omitted.")
        return None, f"No nucleus label image for this patch (patches/tissue{best.tissue}-rank{best.rank}.labels.png)."
    if patch is None:
        return None, "The patch image is missing: no nucleus overlay."
    try:
        labels = load_labels(best.labels, patch.shape[:2])
    except InvalidInputError as exc:
        return None, f"Nucleus overlay omitted: {exc}"
    if not labels.any():
        return labels, "No nuclei were found in this patch."
    return labels, None


def _feature_listing(styles: _Styles, run: RunFolder, t: int, best: Any, labels: np.ndarray | None,
                     width: float) -> Any:
    """Feature listing of one tissue (features.csv) and of its best representative's nuclei (nuclei.csv)."""
    rows: list[list[Any]] = [["Feature", "Value"]]
    names, values = _tile_descriptors(run)
    rows += [[n, _fmt(v)] for n, v in zip(names, values[t - 1])]
    row = run.feature_row(t)
    if row is not None:
        rows += [[display_name(c), _fmt(row.get(c, math.nan))] for c in _feature_columns(run)]
    elif run.features is not None:
        rows.append(["features.csv", f"no row for tissue {t}"])
    nuclei = run.nuclei_of(t, best.rank)
    if nuclei is not None:
        rows.append(["Nuclei in this patch (nuclei.csv)", _fmt(len(nuclei))])
        measures = ([c for c in run.nuclei.columns if c not in _ID_COLUMNS | _POSITION_COLUMNS]
                    if run.nuclei is not None else [])
        for c in measures:
            v = np.array([n[c] for n in nuclei], dtype=np.float64)
            v = v[np.isfinite(v)]
            rows.append([f"{display_name(c)}, mean ± sd", f"{_fmt(v.mean())} ± {_fmt(v.std())}" if len(v) else
                         "undefined"])
    elif labels is not None:
        rows.append(["Nuclei in this patch (label image)", _fmt(len(np.unique(labels[labels > 0])))])
    return _table(rows, styles, widths=[0.62 * width, 0.38 * width])


def _comparison_page(styles: _Styles, run: RunFolder) -> list[Any]:
    k = run.k
    story = [_para("Comparison across tissues", styles.title)]
    names, values = _tile_descriptors(run)
    columns = _feature_columns(run)
    if columns:
        feature_values = np.full((k, len(columns)), np.nan)
        for t in range(1, k + 1):
            row = run.feature_row(t)
            if row is not None:
                feature_values[t - 1] = [row.get(c, math.nan) for c in columns]
        names += [display_name(c) for c in columns]
        values = np.concatenate([values, feature_values], axis=1)
    normalised = _normalise(values)
    story.append(_para("Normalised features", styles.h2))
    png = figures.feature_comparison_figure(names, normalised, list(range(1, k + 1)))
    story.append(_image(png))
    text = ("Each feature divided by its largest value over the tissues, so that tissues compare on one scale "
            "(the values with their units are in the table). ")
    if k == 1:
        text += "With one tissue every bar is 1: there is nothing to compare on this slide. "
    if not columns:
        text += ("No nucleus or texture features in this run folder (features.csv is absent): only the tile-level "
                 "values are compared.")
    story.append(_para(text, styles.small))
    header = ["Feature"] + [f"Tissue {t}" for t in range(1, k + 1)]
    rows = [header] + [[n] + [_fmt(v) for v in values[:, j]] for j, n in enumerate(names)]
    width = min(60.0, 330.0 / k)
    story.append(_table(rows, styles, widths=[170] + [width] * k))

    story.append(_para("Tissue distribution", styles.h2))
    story.append(_image(figures.distribution_figure([run.slide_name], _shares(run)[None, :], k)))
    story.append(_para(
        "Share of this slide's analysed tissue area in each tissue. For the distribution over several slides, "
        "render a cohort report: <font name='%s'>tumls-qp report RUN_DIR RUN_DIR ...</font>." % styles.mono,
        styles.small))
    return story


def _method_page(styles: _Styles, run: RunFolder) -> list[Any]:
    from reportlab.platypus import KeepTogether

    m = run.manifest
    story = [_para("Method and quality", styles.title)]
    story.append(_para("Number of tissues", styles.h2))
    story.append(_image(figures.dendrogram_figure(run.linkage, m.clusters.gaps, run.k, m.clusters.k_source), 504))
    story.append(_para(_k_explanation(run) + _vote_explanation(run), styles.small))

    embedding = m.embedding
    if embedding.method == "tumls-ae":
        story.append(_para("Embedding: the TUMLS autoencoder", styles.h2))
        left: Any = _para("training.csv is missing: no loss curve.", styles.small)
        if run.training is not None and run.training.rows:
            left = _image(figures.loss_figure(run.training.column("epoch"), run.training.column("train_mse"),
                                              run.training.column("val_mse"), m.embedding.best_epoch), 250)
        right: Any = _para("reconstructions.npz is missing: no examples.", styles.small)
        if run.reconstructions is not None and len(run.reconstructions[0]):
            right = [_image(figures.reconstruction_figure(*run.reconstructions, run.thumbnail_mpp)),
                     _para("Tissue-level tiles (top) and the autoencoder's reconstructions (bottom).", styles.small)]
        story.append(_side_by_side(left, right, (255, 255)))
    else:
        story.append(_para(f"Embedding: {_escape(embedding.method)}", styles.h2))
        story.append(_para(_METHOD_TEXT.get(embedding.method, "") + (
            f" Each tile was seen in a field of {_fmt(embedding.view_um)} µm at {_fmt(embedding.view_mpp)} µm/px; "
            f"{_fmt(embedding.epochs)} training epochs, {_fmt(embedding.train_seconds)} s; vectors of "
            f"{_fmt(embedding.dim)} values.") , styles.small))
        if run.training is not None and run.training.rows and "loss" in run.training.columns:
            loss = run.training.column("loss")
            keep = np.isfinite(loss)
            if keep.any():
                story.append(_image(figures.loss_figure(run.training.column("epoch")[keep], loss[keep], None,
                                                        None, ylabel=_LOSS_LABEL.get(embedding.method, "loss")), 250))
    quality = [
        ["Quantity", "Value"],
        ["Tiles in the grid", _fmt(m.tiles.total)],
        ["Tissue tiles kept", _fmt(m.tiles.kept)],
        ["Dropped as background", _fmt(m.tiles.dropped.get("background"))],
        ["Dropped as artefact (near-black)", _fmt(m.tiles.dropped.get("artefact"))],
        ["Embedding method (embedding.method)", embedding.method],
        *([["Autoencoder epochs (best)", f"{_fmt(embedding.epochs)} ({_fmt(embedding.best_epoch)})"],
           ["Early stopping", _fmt(embedding.early_stopped)],
           ["Reconstruction MSE train / val / test",
            " / ".join(_fmt(embedding.mse.get(s)) for s in ("train", "val", "test")) + " (pixel values 0-1)"],
           ["Tiles train / val / test", " / ".join(_fmt(embedding.n_tiles.get(s)) for s in ("train", "val", "test"))],
           ["Encoder initialised from", embedding.initialised_from or "scratch (no pretrained weights)"]]
          if embedding.method == "tumls-ae" else
          [["Training epochs, final loss", f"{_fmt(embedding.epochs)}, {_fmt(embedding.final_loss)}"]]),
        ["Embeddings", "reused from the cache" if embedding.cache == "hit" else "computed in this run"],
        ["Uncertainty scale (99th percentile distance)", _fmt(m.clusters.uncertainty_scale)],
        ["Tiles per tissue (this slide)", ", ".join(_fmt(int(v)) for v in run.tiles_per_tissue())],
    ]
    story.append(_para("Background filtering and embedding quality", styles.h2))
    story.append(_table(quality, styles, widths=[200, 300]))
    story.append(_para("Warnings raised during the run", styles.h2))
    if m.warnings:
        for w in m.warnings:
            story.append(_para(f"• {_escape(w)}", styles.body))
    else:
        story.append(_para("None.", styles.body))
    notes = run.notes
    if notes:
        story.append(_para("Missing from the run folder", styles.h2))
        for note in notes:
            story.append(_para(f"• {_escape(note)}", styles.body))
    colours = run.embedding_colours
    if colours is not None:
        names = [tissue_class_name(t) for t in range(run.k)]
        png = figures.embedding_colours_figure(colours, boxes=run.tiles.boxes, labels=run.tiles.tissue - 1,
                                               label_names=names)
        story.append(KeepTogether([
            _para("Embedding colours", styles.h2),
            _image(png, 504),
            _para(f"Each tile coloured by its embedding reduced to three dimensions "
                  f"({colours.method.upper()}; red, green, blue = dimensions 1, 2, 3): similar colours "
                  "mean similar embeddings. A view for people; the tissues come from the full embeddings. In QuPath: "
                  f"the tile layer {_escape(m.outputs.embedding_colours)}.", styles.small),
        ]))
    return story


def _provenance_page(styles: _Styles, run: RunFolder) -> list[Any]:
    from reportlab.platypus import Preformatted, Table, TableStyle

    m = run.manifest
    slide, environment = m.slide, m.environment
    story = [_para("Parameters and provenance", styles.title)]
    rows = [
        ["Item", "Value"],
        ["Tool", f"tumls-qp {m.version} (report by tumls-qp {__version__})"],
        ["Analysed", m.created],
        ["Seed", _fmt(m.seed)],
        ["Device", environment.device],
        ["Python, platform", f"{environment.python}, {environment.platform}"],
        ["Slide file", slide.path],
        ["Slide quick hash (SHA-256)", slide.quickhash],
        ["Vendor, objective", f"{slide.vendor}, {_fmt(slide.objective_power)}×"],
        ["Pyramid levels (px)", "; ".join(f"{a} × {b}" for a, b in slide.levels) if slide.levels else "n/a"],
        ["Pixel size", f"{_fmt(run.mpp)} µm/px ({slide.mpp_source})"],
        ["Cohort", ", ".join(m.cohort) if m.cohort is not None else "no (slide analysed alone)"],
        ["Peak memory", f"{_fmt(environment.peak_rss_mb)} MB"],
    ]
    story.append(_table(rows, styles, widths=[130, 380]))
    timings = m.timings_s
    if timings:
        story.append(_para("Timings of the stages (seconds, from manifest.json when the report was rendered)",
                           styles.h2))
        story.append(_table([list(timings)] + [[_fmt(float(v), 3) for v in timings.values()]], styles))
    if environment.dependencies:
        story.append(_para("Versions", styles.h2))
        items = list(environment.dependencies.items())
        half = math.ceil(len(items) / 2)
        rows = [["Package", "Version", "Package", "Version"]]
        for i in range(half):
            a = items[i]
            b = items[i + half] if i + half < len(items) else ("", "")
            rows.append([a[0], str(a[1]), b[0], str(b[1])])
        story.append(_table(rows, styles, widths=[90, 150, 90, 150]))
    story.append(_para("Effective configuration (config.toml)", styles.h2))
    text = run.config_text if run.config_text is not None else "config.toml is missing from the run folder"
    left, right = _two_columns(_compact_toml(text))
    columns = Table([[Preformatted(left, styles.mono_style), Preformatted(right, styles.mono_style)]],
                    colWidths=[255, 255])
    columns.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)]))
    story.append(columns)
    story.append(_para(
        "Reproduce the run with <font name='%s'>tumls-qp analyze SLIDE --config config.toml</font>; re-render this "
        "report with <font name='%s'>tumls-qp report RUN_DIR</font>." % (styles.mono, styles.mono), styles.small))
    return story


def _two_columns(text: str) -> tuple[str, str]:
    """Split TOML text in two at the ``[section]`` line nearest its middle (the configuration then fits one page)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("[")]
    if not starts:
        return text, ""
    cut = min(starts, key=lambda i: abs(i - len(lines) / 2))
    return "\n".join(lines[:cut]).rstrip(), "\n".join(lines[cut:])


def _compact_toml(text: str) -> str:
    """TOML with one-value-per-line arrays folded onto one line, so the configuration fits the page."""
    out: list[str] = []
    buffer: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if buffer is not None:
            buffer.append(stripped)
            if stripped.startswith("]"):
                out.append(" ".join(buffer).replace("[ ", "[").replace(", ]", "]").replace(",]", "]"))
                buffer = None
            continue
        if stripped.endswith("= ["):
            buffer = [line.rstrip()]
            continue
        out.append(line)
    return "\n".join(out + (buffer or []))


# --- cohort report ----------------------------------------------------------------------------------------------------

def _one_cohort(runs: list[RunFolder]) -> bool:
    """True when the runs come from one ``--cohort`` analysis (same cohort list, same k)."""
    cohorts = [r.manifest.cohort for r in runs]
    first = cohorts[0]
    return first is not None and all(c == first for c in cohorts) and len({r.k for r in runs}) == 1 and \
        {r.path.name for r in runs} <= set(first)


def _cohort_story(styles: _Styles, runs: list[RunFolder]) -> list[Any]:
    from reportlab.platypus import KeepTogether, PageBreak

    k = max(r.k for r in runs)
    names = [r.slide_name for r in runs]
    same = _one_cohort(runs)
    story: list[Any] = [_marker(f"cohort of {len(runs)} slides", "Cohort", 0),
                        _para(f"Cohort report: {len(runs)} slides", styles.title)]
    if same:
        story.append(_para(
            f"The slides were analysed together (one embedding and one clustering, k = {k}): a tissue number means "
            "the same tissue on every slide.", styles.body))
    else:
        story.append(_para(
            "<b>Caution:</b> these slides were not analysed as one cohort, so their tissue numbers are not "
            "comparable: Tissue 1 on one slide may be another tissue than Tissue 1 on the next. Analyse them "
            "together with <font name='%s'>tumls-qp analyze --cohort</font> to compare tissues across slides."
            % styles.mono, styles.box))

    story.append(_para("Per-slide summary", styles.h2))
    rows: list[list[Any]] = [["Slide", "Tissue tiles", "Area (µm²)", "Tissues present", "Largest tissue",
                              "Mean uncertainty", "Warn­ings", "Quick hash"]]
    shares = np.zeros((len(runs), k))
    areas = np.zeros((len(runs), k))
    for i, run in enumerate(runs):
        counts = np.zeros(k)
        counts[: run.k] = run.tiles_per_tissue()
        areas[i, : run.k] = run.tissue_areas_um2() / 1e6
        shares[i] = 100 * areas[i] / areas[i].sum() if areas[i].sum() else 0
        total_area = areas[i].sum() * 1e6
        largest = int(np.argmax(areas[i])) + 1
        present = [str(t) for t in range(1, k + 1) if counts[t - 1] > 0]
        rows.append([run.slide_name, _fmt(int(counts.sum())), _area(total_area), ", ".join(present),
                     f"{largest} ({shares[i, largest - 1]:.1f} %)",
                     f"{run.tiles.uncertainty.mean():.3f}" if len(run.tiles.uncertainty) else "n/a",
                     _fmt(len(run.manifest.warnings)), run.manifest.slide.quickhash[:12]])
    story.append(_table(rows, styles, widths=[110, 40, 65, 48, 58, 52, 44, 93]))

    story.append(_para("Tissue distribution per slide", styles.h2))
    story.append(_image(figures.distribution_figure(names, shares, k)))
    story.append(_para("Share of each slide's analysed tissue area in each tissue.", styles.small))
    header = ["Slide"] + [f"Tissue {t} (%)" for t in range(1, k + 1)]
    width = min(55.0, 380.0 / k)
    story.append(_table([header] + [[n] + [f"{v:.1f}" for v in shares[i]] for i, n in enumerate(names)], styles,
                        widths=[130] + [width] * k))
    story.append(KeepTogether([
        _para("Each tissue over the slides", styles.h2),
        _image(figures.cohort_tissue_figure(names, areas, k, "area (mm²)")),
        _para("The area of each tissue on each slide. The following pages hold each slide's case report.",
              styles.small),
    ]))
    story.append(_para(DISCLAIMER, styles.box))
    for run in runs:
        story.append(PageBreak())
        story += _case_story(styles, run, level=1)
    return story
