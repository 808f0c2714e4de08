"""The per-case PDF of cross-level insights, and the cohort report (TUMLS section 4.3).

Everything is read back from run folders (:func:`~tumls_qp.outputs.run_folder.read_run`): a report can be
re-rendered at any time without the slide and without recomputing anything. reportlab
lays the pages out; matplotlib draws the figures (:mod:`._report_figures`, drawn at the size
they are printed); both are imported only when a report is rendered.

Pages of a case report, in order (one page each; a case of 3 tissues takes 7 pages):

1. Case summary: slide, dates, tool version, k and how it was chosen; the slide, its tissue
   regions (``regions.png``) with every representative as a box labelled ``t.r`` (its QuPath
   annotation "Tissue t representative r"), the uncertainty and the confidence per tile; one
   line per tissue (tiles, region area in µm² and %, mean uncertainty and confidence, headline
   features); the warnings; a statement that these are pre-decision insights, not a diagnosis.
2. One page per tissue: what to read with care (features resting on fewer than ``FEW_NUCLEI``
   nuclei, no region of its own, missing patches); where it lies (a locator with its
   representatives), its tiles' uncertainty and confidence, its best representatives at the
   tissue level and at full resolution, named as in QuPath; the best one with its nuclei
   outlined and their measurements (another layer of the same patch, such as glands, is one
   more panel beside the nuclei: ``overlays`` in ``_tissue_page``); the tissue's features. A
   page that would overflow shrinks its gallery.
3. Comparison across tissues: every per-tissue value in its own unit, one small panel each;
   the tiles in the embedding (when the run folder has ``embedding_colours.npz``).
4. Method and quality: dendrogram with the chosen cut and how the resamples voted on k; the
   embedding method (for the autoencoder its losses and reconstructions, for the others what
   they are and their training loss); background filtering counts, embedding quality.
5. Appendix: parameters and provenance: versions, seed, device, timings, slide hash, the
   effective configuration.

A cohort report summarises instead of repeating every slide's case report (each run folder
keeps its own): a summary (a line per slide, the distribution of the tissues over the
slides, where each case report is); each slide's overview page; each tissue across the
slides (one row per slide: where it lies, its best representatives, their nuclei) when the
slides were analysed as one cohort, otherwise each slide's tissues; every per-tissue value
side by side; the method; an appendix with each slide's provenance.

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
import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .. import __version__
from ..cells.features import FEW_NUCLEI, NUCLEUS_FEATURES, TISSUE_FEATURES
from ..classes import GLAND_COLOUR, NUCLEUS_COLOUR, class_colour, tissue_class_name
from ..errors import InvalidInputError, OutputError
from ..files import atomic_write
from ..tissue.clusters import SPLIT_CRITICAL_VALUE
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
# The text frame: A4 less 15 mm side margins, 15 mm at the top and 14 mm at the bottom, in points.
_FRAME_WIDTH = 595.2756 - 2 * 42.5197
_FRAME_HEIGHT = 841.8898 - 42.5197 - 39.6850

# Feature columns that are identifiers, not measurements.
_ID_COLUMNS = {"tissue", "rank", "label"}
#: nuclei.csv columns that locate a nucleus rather than describe it: no mean in the listing.
_POSITION_COLUMNS = {f.name for f in NUCLEUS_FEATURES if f.key in ("x", "y")}
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
    story = _case_story(_Styles(), runs[0]) if len(runs) == 1 else _cohort_story(_Styles(), runs)
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
        self.row = ParagraphStyle("row", parent=self.body, spaceBefore=7, spaceAfter=1)
        self.warning = ParagraphStyle("warning", parent=self.small, borderColor=colors.HexColor("#b36b00"),
                                      borderWidth=0.8, borderPadding=4, backColor=colors.HexColor("#fff4e0"),
                                      spaceBefore=6, spaceAfter=6, leftIndent=4, rightIndent=4)


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
    header = getattr(canvas, "_tumls_header", "")
    canvas.drawString(15 * mm, height - 10 * mm, f"tumls-qp {__version__} report · {header}")
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


# Units of the feature columns whose names do not end in one (the others end in "um", "um^2", "mm^2", ...).
_UNITS = {f.name: f.unit for f in (*TISSUE_FEATURES, *NUCLEUS_FEATURES)}
_UNIT_SUFFIX = re.compile(r"^(.*\S)(?<! per) (µm²|µm|mm²|px|%)$")


def _feature_label(column: str) -> str:
    """A feature column as a label with its unit: "Nucleus area mean (µm²)", "GLCM contrast (unitless)".

    A name that already says its unit ("Nuclei per mm²", "haematoxylin OD mean") is kept as it is.
    """
    name = display_name(column)
    found = _UNIT_SUFFIX.match(name)
    if found:
        return f"{found.group(1)} ({found.group(2)})"
    unit = _UNITS.get(column)
    if column == "Nuclei":
        return "Nuclei (count)"
    if unit is None or re.search(r" per \S+$", name) or (unit and unit in name.split()):
        return name
    return f"{name} ({unit or 'unitless'})"


def _headline_label(column: str) -> str:
    """A feature's label on a summary line: with its unit, without "(unitless)" or "(count)"."""
    return re.sub(r" \((unitless|count)\)$", "", _feature_label(column))


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
    "textons": "Texton histograms, no network: a dictionary of local haematoxylin and eosin structures "
               "(rotation-invariant filter responses at 2 to 16 µm, grouped by k-means) learned from the slide's "
               "own pixels; each tile is described by how often it shows each structure.",
    "pretrained": "A pretrained encoder supplied by the lab, no training: each tile's view goes through the network "
                  "and its pooled features are the tile's vector.",
}
_LOSS_LABEL = {"contrastive": "contrastive loss (NT-Xent)", "vade": "negative ELBO"}


def _k_explanation(run: RunFolder) -> str:
    k = run.k
    source = run.manifest.clusters.k_source
    statistic = run.manifest.clusters.split_statistic
    test = "" if not isinstance(statistic, (int, float)) else (
        f" The one-tissue split test (G-means, Anderson-Darling) gave A*² = {statistic:.4g}, "
        f"{'above' if statistic > SPLIT_CRITICAL_VALUE else 'at most'} its critical value {SPLIT_CRITICAL_VALUE}.")
    gaps = run.manifest.clusters.gaps
    candidates = f" among k = {min(gaps)} to {max(gaps)}" if gaps else ""
    widest = max(gaps, key=lambda kk: (gaps[kk], -kk)) if gaps else k
    if source == "dendrogram":
        gap = f" ({_fmt(gaps[k])} latent units)" if k in gaps else ""
        return (f"k = {k}, chosen from the Ward dendrogram of the tile embeddings: the largest gap between merge "
                f"heights{gap} is at the cut into {k} tissues{candidates}.{test}")
    if source == "resample vote":
        one = isinstance(statistic, (int, float)) and statistic <= SPLIT_CRITICAL_VALUE
        on_all = "the split test finds one tissue" if one or not gaps else (
            f"the largest gap between merge heights is at the cut into {widest} tissues ({_fmt(gaps[widest])} "
            f"latent units{f'; {_fmt(gaps[k])} at k = {k}' if k in gaps else ''}){candidates}")
        return (f"k = {k}{' (one tissue)' if k == 1 else ''}, chosen by the vote of resamples of the tiles, each "
                f"cutting its Ward dendrogram of the tile embeddings at the largest gap between merge heights, or "
                f"finding one tissue by the split test. On all tiles {on_all}.{test}")
    if source.startswith("split test"):
        return (f"k = 1 (one tissue): the tiles' embeddings are no less Gaussian along their best two-group axis than "
                f"a single cloud, so no split is supported.{test}")
    if source == "user":
        return f"k = {k}, set by the user (--k or clusters.k); the dendrogram rule was not used."
    if source.startswith("VaDE"):
        bic = run.manifest.embedding.bic
        listed = ", ".join(f"k = {kk}: {v:.0f}" for kk, v in sorted(bic.items()))
        return (f"k = {k}, chosen by the embedding itself: VaDE's Gaussian mixture has the lowest BIC with {k} "
                f"components ({listed}); each tile goes to its most probable component.")
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
    """Per-tissue values the run folder itself gives (tiles, uncertainty, thumbnail): labels and (k, n) values."""
    k, tiles = run.k, run.tiles
    present = [(tiles.tissue == t).any() for t in range(1, k + 1)]
    mean_u, mean_c = (np.array([v[tiles.tissue == t].mean() if present[t - 1] else np.nan for t in range(1, k + 1)])
                      for v in (tiles.uncertainty, tiles.confidence))
    fraction = np.array([np.nanmean(tiles.tissue_fraction[tiles.tissue == t]) if present[t - 1] else np.nan
                         for t in range(1, k + 1)])
    names = ["Share of tissue area (%)", "Mean uncertainty (unitless)", "Mean confidence (unitless)",
             "Mean tissue fraction of tiles (unitless)", "Tissue-level luminance mean (0-255)"]
    return names, np.stack([_shares(run), mean_u, mean_c, fraction, _tile_luminance(run)], axis=1)


def _tissue_values(run: RunFolder) -> tuple[list[str], np.ndarray]:
    """Every per-tissue value of a run, labelled with its unit: the tile descriptors, then ``features.csv``."""
    names, values = _tile_descriptors(run)
    columns = _feature_columns(run)
    if columns:
        features = np.full((run.k, len(columns)), np.nan)
        for t in range(1, run.k + 1):
            row = run.feature_row(t)
            if row is not None:
                features[t - 1] = [row.get(c, math.nan) for c in columns]
        names = names + [_feature_label(c) for c in columns]
        values = np.concatenate([values, features], axis=1)
    return names, values


# --- what the pages draw ----------------------------------------------------------------------------------------------

def _grid_shape(run: RunFolder) -> tuple[int, int]:
    h, w = run.thumbnail.shape[:2]
    rows, cols = h // run.tile_px, w // run.tile_px
    boxes = run.tiles.boxes
    if len(boxes):
        rows = max(rows, int((boxes[:, 1] // run.tile_size_px).max()) + 1)
        cols = max(cols, int((boxes[:, 0] // run.tile_size_px).max()) + 1)
    return rows, cols


def _tile_map(run: RunFolder, values: np.ndarray | None) -> np.ndarray:
    """A per-tile value (None: the tissue number) on the tile grid."""
    return figures.tissue_grid(run.tiles.boxes, run.tiles.tissue, values, run.tile_size_px, _grid_shape(run))


def _regions(run: RunFolder) -> tuple[np.ndarray, float]:
    """The tissue regions as drawn (``regions.png``, the thumbnail's size) and the thumbnail pixels per label pixel."""
    return run.regions, 1.0


def _annotation_name(tissue: int, rank: int) -> str:
    """The name of a representative's annotation in QuPath (``outputs.geojson.tissue_features``)."""
    return f"{tissue_class_name(tissue - 1)} representative {rank}"


def _marks(run: RunFolder, tissue: int | None = None) -> list[figures.Mark]:
    """The representatives as boxes on a map: all, labelled "t.r", or one tissue's, labelled by rank.

    A box is the area read at full resolution, the geometry of the representative's QuPath annotation.
    """
    reps = run.representatives if tissue is None else run.representatives_of(tissue)
    return [(f"{r.tissue}.{r.rank}" if tissue is None else str(r.rank), r.tissue, r.patch_box) for r in reps]


def _load_patch(path: Path | None) -> np.ndarray | None:
    if path is None:
        return None
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError:
        return None


def _best_labels(run: RunFolder, best: Any, patch: np.ndarray | None) -> tuple[np.ndarray | None, str | None]:
    """The nucleus label image of a representative, and a note when there is none."""
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


def _gland_labels(best: Any, patch: np.ndarray) -> np.ndarray | None:
    """The gland label image of a representative (``glands.enabled``); None when the run has none or it is unusable."""
    if best.glands is None:
        return None
    try:
        return load_labels(best.glands, patch.shape[:2])
    except InvalidInputError:
        return None


def _nuclei_count(labels: np.ndarray) -> int:
    return len(np.unique(labels[labels > 0]))


def _warnings(run: RunFolder) -> list[str]:
    """Everything the reader should know before trusting the pages: the run's warnings, then missing files."""
    return [*run.manifest.warnings, *run.notes]


def _tissue_warnings(run: RunFolder, t: int) -> list[str]:
    """What should make the reader of one tissue's page careful."""
    warnings = []
    few = _few_nuclei(run, t)
    if few:
        warnings.append(few)
    if (run.tiles.tissue == t).any() and run.tissue_areas_um2()[t - 1] == 0:
        warnings.append("No region: every tile of this tissue lies on a border between other tissues, and the border "
                        "refinement gave its area to them. Its tiles stay in QuPath's tile layer.")
    return warnings + [f"patch image of {_annotation_name(t, r.rank)} missing" for r in run.representatives_of(t)
                       if r.patch is None]


def _few_nuclei(run: RunFolder, t: int) -> str | None:
    """A warning in words when a tissue's features rest on fewer than FEW_NUCLEI nuclei; None otherwise."""
    row = run.feature_row(t)
    if row is None or not math.isfinite(row.get("Nuclei", math.nan)):
        return None
    count = int(row["Nuclei"])
    if count >= FEW_NUCLEI:
        return None
    return (f"Few nuclei: its nucleus features rest on {count} nuclei, fewer than {FEW_NUCLEI}; a few nuclei more or "
            "less could change them a lot. Read them as an example, not a measurement.")


# --- layout helpers ---------------------------------------------------------------------------------------------------

def _height(flowables: Sequence[Any]) -> float:
    """The height ``flowables`` take in the frame, spacing included (points)."""
    total = 0.0
    for f in flowables:
        total += f.wrap(_FRAME_WIDTH, _FRAME_HEIGHT)[1] + f.getSpaceBefore() + f.getSpaceAfter()
    return total


def _fit(story: Sequence[Any], image: Any, smallest: float = 0.7) -> None:
    """Shrink ``image`` (one of ``story``) so that ``story`` fits one page, to ``smallest`` of its size at most."""
    over = _height(story) - (_FRAME_HEIGHT - 14)  # the frame's top and bottom padding, and a little slack
    if over > 0:
        factor = max(smallest, 1 - over / image.drawHeight)
        image.drawWidth *= factor
        image.drawHeight *= factor


def _box(title: str, lines: Sequence[str], styles: _Styles) -> Any:
    """A framed box: a bold title, then one line per item."""
    text = f"<b>{_escape(title)}</b>" + "".join(f"<br/>• {_escape(line)}" for line in lines)
    return _para(text, styles.warning)


def _grid_table(pairs: Sequence[tuple[str, str]], styles: _Styles, widths: Sequence[float]) -> Any:
    """(label, value) pairs in two column pairs, filled down then across: half the height of a list."""
    half = math.ceil(len(pairs) / 2)
    rows: list[list[Any]] = []
    for i in range(half):
        right = pairs[i + half] if i + half < len(pairs) else ("", "")
        rows.append([pairs[i][0], pairs[i][1], right[0], right[1]])
    return _table(rows, styles, widths=widths, header=False)


# --- case report ------------------------------------------------------------------------------------------------------

def _case_story(styles: _Styles, run: RunFolder) -> list[Any]:
    from reportlab.platypus import PageBreak

    # A tissue of a cohort that does not occur on this slide gets no page (the summary table shows it with 0 tiles).
    present = [t for t in range(1, run.k + 1) if (run.tiles.tissue == t).any()]
    sections = [
        ("Case summary", lambda: _overview_page(styles, run, "Case summary")),
        *[(f"Tissue {t}", lambda t=t: _tissue_page(styles, run, t)) for t in present],
        ("Comparison across tissues", lambda: _comparison_page(styles, run)),
        ("Method and quality", lambda: _method_page(styles, run)),
        ("Appendix: parameters and provenance", lambda: _provenance_page(styles, run)),
    ]
    story: list[Any] = [_marker(run.slide_name, None, 0)]
    for i, (title, build) in enumerate(sections):
        if i:
            story.append(PageBreak())
        story.append(_marker(None, title, 0))
        story += build()
    return story


def _overview_page(styles: _Styles, run: RunFolder, title: str) -> list[Any]:
    """The slide, its tissue map with every representative, uncertainty, the tissues in a table, warnings."""
    m = run.manifest
    k = run.k
    head: list[Any] = [_para(_escape(title), styles.title), _para(f"<b>{_escape(run.slide_name)}</b>", styles.h2)]
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
    head.append(_table(info, styles, widths=[58, 197, 70, 185], header=False,
                       extra=[("FONTNAME", (0, 0), (0, -1), styles.bold), ("FONTNAME", (2, 0), (2, -1), styles.bold)]))
    head.append(_para(f"<b>How k was chosen.</b> {_k_explanation(run)}{_vote_explanation(run)}", styles.small))

    drawn = ("borders drawn within the tiles from the image (multi-scale segmentation)"
             if m.regions.method == "felzenszwalb" else "whole tiles")
    tail: list[Any] = [_para(
        "<b>Slide</b>: the slide at the tissue level. <b>Tissue map</b>: the tissue regions, " + drawn + ", in QuPath "
        "class colours and hatches, each tissue's number at its largest region; each box is a representative patch, "
        "labelled <b>t.r</b> for its QuPath annotation “Tissue t representative r”. <b>Uncertainty</b>: how "
        "atypical each tile is of its tissue (its distance to the tissue's centre in the embedding; 1 is as atypical "
        "as the most atypical 1 % of tiles). <b>Confidence</b>: each tile's confidence, how sure its assignment is (1: "
        "far nearer its own tissue's centre than any other; 0: as near another tissue); a tile between two tissues "
        "can be typical enough yet unsure. Faded areas were not mapped (background or artefact).", styles.small)]
    tail.append(_tissue_table(styles, run))
    warnings = _warnings(run)
    tail.append(_box("Warnings", warnings, styles) if warnings else
                _para("<b>Warnings.</b> None: the run raised no warning and the run folder is complete.", styles.small))
    tail.append(_para(DISCLAIMER, styles.box))

    room = _FRAME_HEIGHT - _height(head) - _height(tail) - 10
    regions, regions_px = _regions(run)
    png = figures.overview_figure(run.thumbnail, regions, regions_px, _tile_map(run, run.tiles.uncertainty),
                                  _tile_map(run, run.tiles.confidence), k, run.tile_px, run.thumbnail_scale,
                                  run.thumbnail_mpp, _shares(run), _marks(run),
                                  max_height_in=room / 72)
    return head + [_image(png)] + tail


def _tissue_table(styles: _Styles, run: RunFolder) -> Any:
    """One line per tissue: tiles, region area and share, mean uncertainty and confidence, headline features; its
    colour as a swatch."""
    k, tiles = run.k, run.tiles
    headline = _headline_columns(run)
    header = ["", "Tissue", "Tiles", "Area (µm²)", "Share (%)", "Mean uncer­tainty", "Mean confi­dence",
              "Headline features" if headline else "Nucleus features"]
    rows: list[list[Any]] = [header]
    extra: list[tuple] = []
    counts = run.tiles_per_tissue()
    areas = run.tissue_areas_um2()
    shares = _shares(run)
    for t in range(1, k + 1):
        mask = tiles.tissue == t
        feature_row = run.feature_row(t)
        if not mask.any():
            text = "not on this slide (a tissue of the cohort)"
        elif headline and feature_row is not None:
            text = "; ".join(f"{_headline_label(c)} {_fmt(feature_row.get(c, math.nan))}" for c in headline)
        elif headline:
            text = "no row in features.csv"
        else:
            text = "none in this run folder"
        rows.append([_swatch_cell(t, styles), tissue_class_name(t - 1), _fmt(int(counts[t - 1])),
                     _area(areas[t - 1]), f"{shares[t - 1]:.1f}",
                     f"{tiles.uncertainty[mask].mean():.3f}" if mask.any() else "n/a",
                     f"{tiles.confidence[mask].mean():.3f}" if mask.any() else "n/a", text])
        extra += _swatch_commands(t, t)
    return _table(rows, styles, widths=[16, 50, 34, 64, 40, 46, 46, 214], extra=extra)


def _tissue_page(styles: _Styles, run: RunFolder, t: int) -> list[Any]:
    """One tissue on one page: where it lies, its uncertainty, its representatives, their nuclei, its features."""
    mask = run.tiles.tissue == t
    count = int(mask.sum())
    values = run.tiles.uncertainty[mask]
    share = _shares(run)[t - 1]
    story: list[Any] = [_para(tissue_class_name(t - 1), styles.title)]
    confidence = run.tiles.confidence[mask]
    area = run.tissue_areas_um2()[t - 1]
    story.append(_para(f"{_fmt(count)} tiles · region area {_area(area)} µm² ({share:.1f} % of the slide's tissue)"
                       f" · mean uncertainty {values.mean():.3f} · mean confidence {confidence.mean():.3f}",
                       styles.body))
    warnings = _tissue_warnings(run, t)
    if warnings:
        story.append(_box("Read with care", warnings, styles))

    reps = run.representatives_of(t)
    regions, regions_px = _regions(run)
    locator = _image(figures.locator_figure(run.thumbnail, regions, regions_px, t, _marks(run, t),
                                            run.thumbnail_scale, run.thumbnail_mpp))
    histogram = _image(figures.uncertainty_histogram(values, run.tiles.uncertainty, [r.uncertainty for r in reps], t))
    names, descriptors = _tile_descriptors(run)
    stats = [["Tiles", _fmt(count)],
             ["Uncertainty mean", f"{values.mean():.3f}"], ["Uncertainty median", f"{np.median(values):.3f}"],
             ["90th percentile", f"{np.percentile(values, 90):.3f}"],
             ["Tiles with u > 0.8", f"{int((values > 0.8).sum())} ({100 * (values > 0.8).mean():.1f} %)"],
             ["Tiles with confidence < 0.2",
              f"{int((confidence < 0.2).sum())} ({100 * (confidence < 0.2).mean():.1f} %)"],
             *[[n, _fmt(v)] for n, v in zip(names[2:], descriptors[t - 1, 2:])]]
    rest = _FRAME_WIDTH - locator.drawWidth - histogram.drawWidth - 12
    story.append(_row([locator, histogram, _table(stats, styles, widths=[0.6 * rest, 0.4 * rest], header=False)],
                      [locator.drawWidth + 6, histogram.drawWidth + 6, rest]))
    story.append(_para(
        "Left: where the tissue lies on the slide, its representatives boxed and numbered by rank. Middle: its tiles' "
        "uncertainty over that of all tissue tiles (dashed); dotted lines: the representatives.", styles.small))
    if not reps:
        story.append(_para("This tissue has no representative on this slide.", styles.body))
        return story

    patches = [_load_patch(r.patch) for r in reps]
    titles = [f"{_annotation_name(t, r.rank)}\nu {r.uncertainty:.2f} · c {r.confidence:.2f}" for r in reps]
    story.append(_para(f"The {len(reps)} best representatives", styles.h2))
    gallery = _image(figures.representatives_figure(run.thumbnail, run.thumbnail_scale, run.thumbnail_mpp, reps,
                                                    patches, titles))
    story.append(gallery)
    story.append(_para(
        "The confident tiles closest to the tissue's centre in the embedding, best first, named as their annotations "
        "in QuPath (u: uncertainty, c: confidence). Top: the tile at the tissue level, as the embedding saw it. "
        f"Bottom: {_patch_size(run, reps[0])} centred on the tile, at full resolution (the annotation's area).",
        styles.small))

    best, patch = reps[0], patches[0]
    labels, note = _best_labels(run, best, patch)
    story.append(_para(f"Nuclei of the best representative ({_annotation_name(t, best.rank)})", styles.h2))
    if patch is not None:
        # One panel per overlay of the patch, beside the patch itself; further layers go in this list.
        overlays = []
        if labels is not None:
            overlays.append((f"nuclei outlined ({_nuclei_count(labels)})", figures.outlined(patch, labels,
                                                                                           NUCLEUS_COLOUR)))
        glands = _gland_labels(best, patch)
        if glands is not None:
            overlays.append((f"glands outlined ({_nuclei_count(glands)})", figures.outlined(patch, glands,
                                                                                           GLAND_COLOUR)))
        picture = _image(figures.overlay_figure(patch, overlays, best.patch_mpp))
        rest = _FRAME_WIDTH - picture.drawWidth - 6
        if rest >= 180:
            story.append(_row([picture, _nuclei_listing(styles, run, best, labels, rest - 4)],
                              [picture.drawWidth + 6, rest]))
        else:  # too many panels for the listing beside them: it goes below
            story += [picture, _nuclei_listing(styles, run, best, labels, 300)]
    else:
        story.append(_nuclei_listing(styles, run, best, labels, 300))
    if note:
        story.append(_para(note, styles.small))

    row = run.feature_row(t)
    story.append(_para(f"Features of {tissue_class_name(t - 1)}" + (
        f"<font name='{styles.sans}' size='7'> · pooled over its segmented representatives (features.csv)</font>"
        if row is not None else ""), styles.h2))
    if row is not None:
        pairs = [(_feature_label(c), _fmt(row.get(c, math.nan))) for c in _feature_columns(run)]
        story.append(_grid_table(pairs, styles, widths=[160, 95, 160, 95]))
    elif run.features is not None:
        story.append(_para(f"features.csv has no row for tissue {t}.", styles.body))
    else:
        story.append(_para("No nucleus or texture features in this run folder (features.csv is absent).",
                           styles.body))
    _fit(story, gallery)
    return story


def _patch_size(run: RunFolder, rep: Any) -> str:
    return f"a {rep.patch_box[2] * run.mpp:.0f} µm square"


def _row(cells: Sequence[Any], widths: Sequence[float]) -> Any:
    """Flowables side by side, top-aligned."""
    from reportlab.platypus import Table, TableStyle

    table = Table([list(cells)], colWidths=list(widths), hAlign="LEFT")
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0),
                               ("RIGHTPADDING", (0, 0), (-1, -1), 4), ("TOPPADDING", (0, 0), (-1, -1), 0),
                               ("BOTTOMPADDING", (0, 0), (-1, -1), 2)]))
    return table


def _nuclei_listing(styles: _Styles, run: RunFolder, best: Any, labels: np.ndarray | None, width: float) -> Any:
    """The nuclei of one representative (nuclei.csv): their number, and the mean ± sd of each measurement."""
    rows: list[list[Any]] = [["Nuclei of this patch", "mean ± sd"]]
    nuclei = run.nuclei_of(best.tissue, best.rank)
    if nuclei is not None:
        rows.append(["Nuclei (count, nuclei.csv)", _fmt(len(nuclei))])
        measures = ([c for c in run.nuclei.columns if c not in _ID_COLUMNS | _POSITION_COLUMNS]
                    if run.nuclei is not None else [])
        for c in measures:
            v = np.array([n[c] for n in nuclei], dtype=np.float64)
            v = v[np.isfinite(v)]
            rows.append([_feature_label(c), f"{_fmt(v.mean())} ± {_fmt(v.std())}" if len(v) else "undefined"])
    elif labels is not None:
        rows.append(["Nuclei (count, label image)", _fmt(_nuclei_count(labels))])
    else:
        rows.append(["Nuclei", "none segmented"])
    return _table(rows, styles, widths=[0.6 * width, 0.4 * width])


def _comparison_page(styles: _Styles, run: RunFolder) -> list[Any]:
    k = run.k
    story: list[Any] = [_para("Comparison across tissues", styles.title)]
    names, values = _tissue_values(run)
    texts = [[_fmt(v) if np.isfinite(v) else "n/a" for v in row] for row in values]
    story.append(_para("Every value per tissue", styles.h2))
    story.append(_image(figures.feature_panels_figure(names, values, texts, list(range(1, k + 1)))))
    text = ("One panel per value, in its own unit and on its own scale; the bars are numbered by tissue. The first "
            f"{len(_tile_descriptors(run)[0])} come from the tiles and regions, the others from the nuclei of the "
            "representatives (features.csv). ")
    if k == 1:
        text += "With one tissue there is nothing to compare on this slide. "
    if not _feature_columns(run):
        text += "No nucleus or texture features in this run folder (features.csv is absent)."
    story.append(_para(text, styles.small))
    story += _embedding_colours_block(styles, run)
    return story


def _embedding_colours_block(styles: _Styles, run: RunFolder) -> list[Any]:
    colours = run.embedding_colours
    if colours is None:
        return []
    names = [tissue_class_name(t) for t in range(run.k)]
    png = figures.embedding_colours_figure(colours, boxes=run.tiles.boxes, labels=run.tiles.tissue - 1,
                                           label_names=names, width_in=figures.PAGE_WIDTH_IN)
    return [
        _para("The tiles in the embedding", styles.h2),
        _image(png),
        _para(f"Each tile coloured by its embedding reduced to three dimensions ({colours.method.upper()}; red, green, "
              "blue = dimensions 1, 2, 3): similar colours mean similar embeddings. Left: the tiles in the first two "
              "dimensions; middle: the same colours where the tiles lie; right: the tiles by tissue. A view for "
              "people; the tissues come from the full embeddings. In QuPath: the tile layer "
              f"{_escape(run.manifest.outputs.embedding_colours)}.", styles.small),
    ]


def _method_page(styles: _Styles, run: RunFolder, slide: bool = True) -> list[Any]:
    """How k was chosen and how the tiles were embedded; with ``slide``, this slide's background filtering too."""
    m = run.manifest
    story: list[Any] = [_para("Method and quality", styles.title)]
    story.append(_para("Number of tissues", styles.h2))
    story.append(_para(_k_explanation(run) + _vote_explanation(run), styles.small))
    story.append(_image(figures.dendrogram_figure(run.linkage, m.clusters.gaps, run.k, m.clusters.k_source)))
    story += _embedding_block(styles, run)
    story.append(_para("Background filtering and embedding quality" if slide else "Embedding quality", styles.h2))
    story.append(_grid_table(_quality(run, slide), styles, widths=[140, 115, 140, 115]))
    return story


def _embedding_block(styles: _Styles, run: RunFolder) -> list[Any]:
    """How the tiles became vectors: the autoencoder's losses and reconstructions, or the method and its loss."""
    embedding = run.manifest.embedding
    training = run.training
    if embedding.method == "tumls-ae":
        left: Any = _para("training.csv is missing: no loss curve.", styles.small)
        if training is not None and training.rows:
            left = _image(figures.loss_figure(training.column("epoch"), training.column("train_mse"),
                                              training.column("val_mse"), embedding.best_epoch))
        right: Any = _para("reconstructions.npz is missing: no examples.", styles.small)
        if run.reconstructions is not None and len(run.reconstructions[0]):
            right = [_image(figures.reconstruction_figure(*run.reconstructions, run.thumbnail_mpp)),
                     _para(f"Tissue-level tiles of {run.tile_um:g} µm (top) and the autoencoder's reconstructions "
                           "(bottom).", styles.small)]
        return [_para("Embedding: the TUMLS autoencoder", styles.h2),
                _row([left, right], [_FRAME_WIDTH / 2, _FRAME_WIDTH / 2])]
    source = "" if embedding.architecture is None else (
        f" Architecture {_escape(embedding.architecture)}, weights {_escape(embedding.checkpoint or '')} "
        f"(SHA-256 {_escape((embedding.checkpoint_sha256 or '')[:16])}...).")
    training_text = (f"{_fmt(embedding.epochs)} training epochs, {_fmt(embedding.train_seconds)} s" if embedding.epochs
                     else f"no network trained ({_fmt(embedding.train_seconds)} s to prepare)")
    text = _para(_METHOD_TEXT.get(embedding.method, "") + source + (
        f" Each tile was seen in a field of {_fmt(embedding.view_um)} µm at {_fmt(embedding.view_mpp)} µm/px; "
        f"{training_text}; vectors of {_fmt(embedding.dim)} values."), styles.small)
    story: list[Any] = [_para(f"Embedding: {_escape(embedding.method)}", styles.h2)]
    loss = training.column("loss") if training is not None and training.rows and "loss" in training.columns \
        else np.array([])
    keep = np.isfinite(loss)
    if keep.any():
        picture = _image(figures.loss_figure(training.column("epoch")[keep], loss[keep], None, None,
                                             ylabel=_LOSS_LABEL.get(embedding.method, "loss")))
        story.append(_row([picture, text], [picture.drawWidth + 8, _FRAME_WIDTH - picture.drawWidth - 8]))
    else:
        story.append(text)
    return story


def _quality(run: RunFolder, slide: bool = True) -> list[tuple[str, str]]:
    """The numbers of the background filtering (``slide``) and of the embedding's training."""
    m = run.manifest
    embedding = m.embedding
    rows = [
        ("Tiles in the grid", _fmt(m.tiles.total)),
        ("Tissue tiles kept", _fmt(m.tiles.kept)),
        ("Dropped as background", _fmt(m.tiles.dropped.get("background"))),
        ("Dropped as artefact (near-black)", _fmt(m.tiles.dropped.get("artefact"))),
        ("Tiles per tissue", ", ".join(_fmt(int(v)) for v in run.tiles_per_tissue())),
    ] if slide else []
    rows += [("Embedding method (embedding.method)", embedding.method),
             ("Uncertainty scale (99th percentile distance, latent units)", _fmt(m.clusters.uncertainty_scale))]
    if embedding.method == "tumls-ae":
        rows += [
            ("Autoencoder epochs (best)", f"{_fmt(embedding.epochs)} ({_fmt(embedding.best_epoch)})"),
            ("Early stopping", _fmt(embedding.early_stopped)),
            ("Reconstruction MSE train / val / test (pixel values 0-1)",
             " / ".join(_fmt(embedding.mse.get(s)) for s in ("train", "val", "test"))),
            ("Tiles train / val / test", " / ".join(_fmt(embedding.n_tiles.get(s)) for s in ("train", "val", "test"))),
            ("Encoder initialised from", embedding.initialised_from or "scratch (no pretrained weights)"),
        ]
    else:
        rows.append(("Training epochs, final loss", f"{_fmt(embedding.epochs)}, {_fmt(embedding.final_loss)}"
                     if embedding.epochs else "none (no network is trained)"))
    return rows + [("Embeddings", "reused from the cache" if embedding.cache == "hit" else "computed in this run")]


def _provenance_rows(run: RunFolder) -> list[list[str]]:
    m = run.manifest
    slide, environment = m.slide, m.environment
    return [
        ["Tool", f"tumls-qp {m.version} (report by tumls-qp {__version__})"],
        ["Analysed", m.created],
        ["Seed", _fmt(m.seed)],
        ["Device", environment.device],
        ["Python, platform", f"{environment.python}, {environment.platform}"],
        ["Slide file", slide.path],
        ["Slide quick hash (SHA-256)", slide.quickhash],
        ["Vendor, objective", _vendor(run)],
        ["Pyramid levels (px)", "; ".join(f"{a} × {b}" for a, b in slide.levels) if slide.levels else "n/a"],
        ["Pixel size", f"{_fmt(run.mpp)} µm/px ({slide.mpp_source})"],
        ["Cohort", ", ".join(m.cohort) if m.cohort is not None else "no (slide analysed alone)"],
        ["Peak memory", f"{_fmt(environment.peak_rss_mb)} MB"],
    ]


def _vendor(run: RunFolder) -> str:
    slide = run.manifest.slide
    objective = f"{_fmt(slide.objective_power)}×" if slide.objective_power is not None else "objective unknown"
    return f"{slide.vendor or 'vendor unknown'}, {objective}"


def _provenance_page(styles: _Styles, run: RunFolder) -> list[Any]:
    story: list[Any] = [_para("Appendix: parameters and provenance", styles.title)]
    story.append(_table([["Item", "Value"]] + _provenance_rows(run), styles, widths=[130, 380]))
    timings = run.manifest.timings_s
    if timings:
        story.append(_para("Timings of the stages (seconds, from manifest.json)", styles.h2))
        story.append(_table([list(timings)] + [[_fmt(float(v), 3) for v in timings.values()]], styles))
    story += _versions_and_config(styles, run)
    story.append(_para(
        "Reproduce the run with <font name='%s'>tumls-qp analyze SLIDE --config config.toml</font>; re-render this "
        "report with <font name='%s'>tumls-qp report RUN_DIR</font>." % (styles.mono, styles.mono), styles.small))
    return story


def _versions_and_config(styles: _Styles, run: RunFolder) -> list[Any]:
    from reportlab.platypus import Preformatted, Table, TableStyle

    story: list[Any] = []
    dependencies = run.manifest.environment.dependencies
    if dependencies:
        story.append(_para("Versions", styles.h2))
        items = list(dependencies.items())
        half = math.ceil(len(items) / 2)
        rows = [["Package", "Version", "Package", "Version"]]
        for i in range(half):
            a = items[i]
            b = items[i + half] if i + half < len(items) else ("", "")
            rows.append([a[0], str(a[1]), b[0], str(b[1])])
        story.append(_table(rows, styles, widths=[90, 150, 90, 150]))
    story.append(_para("Effective configuration (config.toml)", styles.h2))
    text = run.config_text if run.config_text is not None else "config.toml is missing from the run folder"
    left, right = _two_columns(_compact_toml(_glands_off_in_short(text)))
    columns = Table([[Preformatted(left, styles.mono_style), Preformatted(right, styles.mono_style)]],
                    colWidths=[255, 255])
    columns.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)]))
    story.append(columns)
    return story


def _glands_off_in_short(text: str) -> str:
    """The TOML text with a ``[glands]`` section that is off shortened to ``enabled = false`` (its settings did not act;
    config.toml keeps them)."""
    out, skipping = [], False
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("["):
            skipping = line.strip() == "[glands]" and "enabled = false" in lines[i + 1:i + 2]
            out.append(line)
            if skipping:
                out.append("enabled = false")
            continue
        if not skipping:
            out.append(line)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


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
    """The cohort: a summary, each slide's overview, each tissue across the slides, the features side by side,
    the method, and an appendix; each slide's own case report holds the rest."""
    from reportlab.platypus import PageBreak

    same = _one_cohort(runs)
    n = len(runs)
    header = f"cohort of {n} slides"
    story: list[Any] = [_marker(header, "Cohort summary", 0)]
    story += _cohort_summary(styles, runs, same)
    for i, run in enumerate(runs):
        story += [PageBreak(), _marker(run.slide_name, f"Slide {i + 1}: {run.slide_name}", 0)]
        story += _overview_page(styles, run, f"Slide {i + 1} of {n}")
        if not same:
            story += [PageBreak(), _marker(None, "Its tissues", 1)]
            story += _slide_tissues_page(styles, run)
    if same:
        for t in range(1, runs[0].k + 1):
            story += [PageBreak(), _marker(header, f"Tissue {t} across the slides", 0)]
            story += _tissue_across_page(styles, runs, t)
    story += [PageBreak(), _marker(header, "Features per tissue and slide", 0)]
    story += _cohort_features_page(styles, runs, same)
    story += [PageBreak(), _marker(header, "Method and quality", 0)]
    story += _cohort_method_page(styles, runs, same)
    story += [PageBreak(), _marker(header, "Appendix: parameters and provenance", 0)]
    story += _cohort_provenance_page(styles, runs)
    return story


def _cohort_summary(styles: _Styles, runs: list[RunFolder], same: bool) -> list[Any]:
    from reportlab.platypus import KeepTogether

    k = max(r.k for r in runs)
    names = [r.slide_name for r in runs]
    story: list[Any] = [_para(f"Cohort report: {len(runs)} slides", styles.title)]
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
                     _fmt(len(_warnings(run))), run.manifest.slide.quickhash[:12]])
    story.append(_table(rows, styles, widths=[110, 40, 65, 48, 58, 52, 44, 93]))

    story.append(_para("Tissue distribution per slide", styles.h2))
    story.append(_image(figures.distribution_figure(names, shares, k)))
    header = ["Slide"] + [f"Tissue {t} (%)" for t in range(1, k + 1)]
    width = min(55.0, 380.0 / k)
    story.append(_table([header] + [[nm] + [f"{v:.1f}" for v in shares[i]] for i, nm in enumerate(names)], styles,
                        widths=[130] + [width] * k))
    story.append(_para("Share of each slide's mapped tissue area in each tissue's regions.", styles.small))
    story.append(KeepTogether([
        _para("Each tissue over the slides", styles.h2),
        _image(figures.cohort_tissue_figure(names, areas, k, "area (mm²)")),
        _para("The area of each tissue's regions on each slide.", styles.small),
    ]))
    reports = [[r.slide_name, str(r.report_path) if r.report_path.is_file() else
                f"not rendered: tumls-qp report {r.path}"] for r in runs]
    story.append(KeepTogether([
        _para("Each slide's case report", styles.h2),
        _para("This report shows each slide's overview and its best representatives. Each slide's case report holds "
              "the rest: every representative with its nuclei, the uncertainty per tissue, every feature, the "
              "method and the provenance of that run.", styles.small),
        _table([["Slide", "Case report"]] + reports, styles, widths=[130, 380]),
    ]))
    story.append(_para(DISCLAIMER, styles.box))
    return story


def _gallery_row(styles: _Styles, run: RunFolder, t: int, title: str, n_reps: int = 3) -> list[Any]:
    """A heading and one row of images: where tissue t lies on this slide, its best representatives, their nuclei."""
    from reportlab.platypus import KeepTogether

    reps = run.representatives_of(t)[:n_reps]
    images: list[tuple[str, np.ndarray | None, float | None]] = []
    for i, rep in enumerate(reps):
        patch = _load_patch(rep.patch)
        images.append((_annotation_name(t, rep.rank), patch, rep.patch_mpp))
        if i == 0 and patch is not None:
            labels, _ = _best_labels(run, rep, patch)
            if labels is not None:
                images.append((f"nuclei outlined ({_nuclei_count(labels)})",
                               figures.outlined(patch, labels, NUCLEUS_COLOUR), rep.patch_mpp))
    regions, regions_px = _regions(run)
    png = figures.gallery_row_figure(run.thumbnail, regions, regions_px, t, _marks(run, t)[:n_reps],
                                     run.thumbnail_scale, run.thumbnail_mpp, images)
    mask = run.tiles.tissue == t
    count = int(mask.sum())
    summary = (f"<b>{_escape(title)}</b> · {_fmt(count)} tiles, {_shares(run)[t - 1]:.1f} % of the slide's tissue · "
               f"uncertainty mean {run.tiles.uncertainty[mask].mean():.3f}, confidence mean "
               f"{run.tiles.confidence[mask].mean():.3f}")
    return [KeepTogether([_para(summary, styles.row), _image(png)])]


def _slide_tissues_page(styles: _Styles, run: RunFolder) -> list[Any]:
    story: list[Any] = [_para(f"The tissues of {_escape(run.slide_name)}", styles.title)]
    for t in range(1, run.k + 1):
        if (run.tiles.tissue == t).any():
            story += _gallery_row(styles, run, t, tissue_class_name(t - 1))
    story.append(_para(_GALLERY_CAPTION, styles.small))
    return story


_GALLERY_CAPTION = ("Each row: where the tissue lies on the slide (its regions in colour, its representatives boxed by "
                    "rank), then its best representatives at full resolution, named as their annotations in QuPath, "
                    "with the nuclei of the best one outlined. Every representative and feature is in the slide's "
                    "case report.")


def _tissue_across_page(styles: _Styles, runs: list[RunFolder], t: int) -> list[Any]:
    story: list[Any] = [_para(f"{tissue_class_name(t - 1)} across the slides", styles.title)]
    rows: list[list[Any]] = [["Slide", "Tiles", "Area (µm²)", "Share (%)", "Mean uncertainty", "Headline features"]]
    for run in runs:
        mask = run.tiles.tissue == t
        count = int(mask.sum())
        row = run.feature_row(t)
        headline = _headline_columns(run)
        if not count:
            text = "not on this slide"
        elif row is None or not headline:
            text = "none in this run folder"
        else:
            text = "; ".join(f"{_headline_label(c)} {_fmt(row.get(c, math.nan))}" for c in headline)
        rows.append([run.slide_name, _fmt(count), _area(run.tissue_areas_um2()[t - 1]),
                     f"{_shares(run)[t - 1]:.1f}",
                     f"{run.tiles.uncertainty[mask].mean():.3f}" if count else "n/a", text])
    story.append(_table(rows, styles, widths=[110, 36, 62, 42, 56, 204]))
    for run in runs:
        if (run.tiles.tissue == t).any():
            story += _gallery_row(styles, run, t, run.slide_name)
    story.append(_para(_GALLERY_CAPTION, styles.small))
    return story


def _cohort_features_page(styles: _Styles, runs: list[RunFolder], same: bool) -> list[Any]:
    """Every per-tissue value side by side: per tissue, one column per slide (one cohort); else per slide."""
    story: list[Any] = [_para("Features per tissue and slide", styles.title)]
    if same:
        k = runs[0].k
        values = [_tissue_values(run) for run in runs]
        names = values[0][0]
        for run, (other, _) in zip(runs, values):
            for name in other:
                if name not in names:
                    names.append(name)
        lookup = [dict(zip(n, v.T)) for n, v in values]
        present = [run.tiles_per_tissue() > 0 for run in runs]
        width = min(70.0, (_FRAME_WIDTH - 170) / len(runs))
        for t in range(1, k + 1):
            header = ["", tissue_class_name(t - 1)] + [_short_name(r.slide_name) for r in runs]
            rows: list[list[Any]] = [header]
            for j, name in enumerate(names):
                # A tissue absent from a slide has a share of 0 there and no other value.
                rows.append(["", name] + [_fmt(lk[name][t - 1]) if name in lk and (here[t - 1] or j == 0) else "n/a"
                                          for lk, here in zip(lookup, present)])
            extra = [("BACKGROUND", (0, 0), (0, -1), _colour(t)), ("SPAN", (0, 0), (0, -1))]
            story.append(_table(rows, styles, widths=[8, 162] + [width] * len(runs), extra=extra))
            story.append(_para("", styles.small))
    else:
        for run in runs:
            names, values = _tissue_values(run)
            header = [run.slide_name] + [tissue_class_name(t - 1) for t in range(1, run.k + 1)]
            width = min(60.0, (_FRAME_WIDTH - 170) / run.k)
            story.append(_table([header] + [[n] + [_fmt(v) for v in values[:, j]] for j, n in enumerate(names)],
                                styles, widths=[170] + [width] * run.k))
            story.append(_para("", styles.small))
    story.append(_para(f"The first {len(_tile_descriptors(runs[0])[0])} values come from the tiles and regions, the "
                       "others from the nuclei of the representatives "
                       "(features.csv of each run folder); n/a: not measured on that slide.", styles.small))
    return story


def _short_name(name: str, length: int = 22) -> str:
    return name if len(name) <= length else name[: length - 1] + "…"


def _colour(tissue: int) -> Any:
    from reportlab.lib import colors

    r, g, b = class_colour(tissue - 1)
    return colors.Color(r / 255, g / 255, b / 255)


def _cohort_method_page(styles: _Styles, runs: list[RunFolder], same: bool) -> list[Any]:
    story: list[Any] = []
    if same:
        story += _method_page(styles, runs[0], slide=False)
        story.append(_para("The slides share one embedding and one clustering: the figures above are the cohort's.",
                           styles.small))
    else:
        story.append(_para("Method and quality", styles.title))
        story.append(_para("Each slide was analysed on its own; how k was chosen on each:", styles.body))
        for run in runs:
            story.append(_para(f"<b>{_escape(run.slide_name)}</b>: {_k_explanation(run)}{_vote_explanation(run)}",
                               styles.small))
    story.append(_para("Per slide", styles.h2))
    header = ["Slide", "Tiles in the grid", "Kept", "Back­ground", "Artefact", "Tiles per tissue", "Warnings"]
    rows: list[list[Any]] = [header]
    for i, run in enumerate(runs, start=1):
        m = run.manifest
        # The warnings themselves are on the slide's overview page; a list here could fill the page.
        count = len(_warnings(run))
        rows.append([run.slide_name, _fmt(m.tiles.total), _fmt(m.tiles.kept), _fmt(m.tiles.dropped.get("background")),
                     _fmt(m.tiles.dropped.get("artefact")), ", ".join(_fmt(int(v)) for v in run.tiles_per_tissue()),
                     f"{count} (on the page of slide {i})" if count else "none"])
    story.append(_table(rows, styles, widths=[130, 50, 40, 48, 42, 90, 110]))
    return story


def _cohort_provenance_page(styles: _Styles, runs: list[RunFolder]) -> list[Any]:
    first = runs[0]
    story: list[Any] = [_para("Appendix: parameters and provenance", styles.title)]
    rows: list[list[Any]] = [["Slide", "Quick hash (SHA-256)", "Vendor, objective", "Pixel size", "Analysed",
                              "Peak memory"]]
    for run in runs:
        m = run.manifest
        rows.append([run.slide_name, m.slide.quickhash[:16] + "…", _vendor(run),
                     f"{_fmt(run.mpp)} µm/px ({m.slide.mpp_source})", m.created,
                     f"{_fmt(m.environment.peak_rss_mb)} MB"])
    story.append(_table(rows, styles, widths=[100, 90, 70, 95, 100, 55]))
    shared = [r for r in _provenance_rows(first) if r[0] in ("Tool", "Seed", "Device", "Python, platform")]
    story.append(_para("Common to the slides (from the first)", styles.h2))
    story.append(_table([["Item", "Value"]] + shared, styles, widths=[130, 380]))
    timings = [run.manifest.timings_s for run in runs]
    stages = list(dict.fromkeys(s for t in timings for s in t))
    if stages:
        story.append(_para("Timings of the stages (seconds, from each manifest.json)", styles.h2))
        story.append(_table([["Slide"] + stages] + [[run.slide_name] + [_fmt(float(t[s]), 3) if s in t else "n/a"
                                                                        for s in stages]
                                                    for run, t in zip(runs, timings)], styles))
    differ = [r.slide_name for r in runs[1:] if r.config_text != first.config_text]
    story += _versions_and_config(styles, first)
    story.append(_para(
        (f"The configuration of {', '.join(differ)} differs from this one: see its run folder's config.toml. "
         if differ else "Every slide was analysed with this configuration. ")
        + "Each run folder holds its own manifest.json and config.toml.", styles.small))
    return story
