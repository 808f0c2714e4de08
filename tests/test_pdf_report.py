"""The PDF report: every section, the manifest's numbers, one page per section, legible figures, the edge cases.

PDFs are read back with pypdfium2 (PDFium, an independent reader): its text for the
sections and numbers, and each page rendered to pixels for "not blank". Figures are checked
as matplotlib lays them out, before they are saved: no two texts overlap, none is cut off
or smaller than 6 pt (``_report_figures.legibility_problems``).
"""

import csv
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import tumls_qp.outputs.pdf_report as pdf_report
from tumls_qp.classes import NUCLEUS_COLOUR
from tumls_qp.cli import DEMO_SLIDE, main
from tumls_qp.config import ConfigError, OutputConfig, PipelineConfig, config_from_dict, dump_config, replace_in
from tumls_qp.errors import InvalidInputError
from tumls_qp.outputs import _report_figures as figures
from tumls_qp.outputs.run_folder import display_name, read_run
from tumls_qp.outputs.pdf_report import COHORT_REPORT_NAME, DISCLAIMER, REPORT_NAME, _compact_toml, _fmt, render_report
from tumls_qp.pipeline import analyze

pdfium = pytest.importorskip("pypdfium2")

SECTIONS = ("Case summary", "Tissue 1", "The 5 best representatives", "Nuclei of the best representative",
            "Features of Tissue 1", "Comparison across tissues", "Every value per tissue", "The tiles in the embedding",
            "Method and quality", "Number of tissues", "Background filtering and embedding quality", "Warnings",
            "Appendix: parameters and provenance", "Effective configuration")


def _config(**changes):
    base = {"tiles.tile_um": 64.0, "embedding.max_epochs": 3, "embedding.device": "cpu"}
    return replace_in(PipelineConfig(), **(base | changes))


def _pages_text(path):
    pdf = pdfium.PdfDocument(str(path))
    try:
        return [page.get_textpage().get_text_range().replace("\r\n", "\n") for page in pdf]
    finally:
        pdf.close()


def _text(path):
    # Words wrapped in table cells come back on separate lines: compare with whitespace collapsed.
    return " ".join(" ".join(_pages_text(path)).split())


def _page_images(path, scale=0.6):
    pdf = pdfium.PdfDocument(str(path))
    try:
        return [np.asarray(page.render(scale=scale).to_pil().convert("RGB")) for page in pdf]
    finally:
        pdf.close()


def _assert_pages_not_blank(path):
    images = _page_images(path)
    assert images
    for i, image in enumerate(images):
        h = image.shape[0]
        body = image[int(0.07 * h): int(0.93 * h)]  # below the running header, above the footer
        ink = (body.min(axis=2) < 200).mean()
        assert ink > 0.01, f"page {i + 1} of {path.name} is blank ({ink:.4f} of its body is ink)"


def _copy_run(run, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(run, target)
    (target / REPORT_NAME).unlink(missing_ok=True)
    return target


@pytest.fixture()
def figure_problems(monkeypatch):
    """The legibility problems of every figure drawn while the test runs, one list per figure (checked as laid out)."""
    found = []
    encode = figures._encode

    def checked(fig, photo=False):
        found.append(figures.legibility_problems(fig))
        return encode(fig, photo)

    monkeypatch.setattr(figures, "_encode", checked)
    return found


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The bundled real slide (CMU-1-Small-Region, H&E) analysed with a report, in seconds (3 epochs)."""
    out = tmp_path_factory.mktemp("demo")
    [result] = analyze([DEMO_SLIDE], out, _config(**{"tiles.tile_um": 32.0}))
    return result.run_dir


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """An embedding cache, so that analysing the same slide again skips training."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def synthetic_run(slides, tmp_path_factory, cache):
    """The two-tissue synthetic slide with k = 2, without nuclei or a report (the tests render what they change)."""
    out = tmp_path_factory.mktemp("synthetic")
    [result] = analyze([slides["two-tissues"]], out, _config(**{"clusters.k": 2, "output.report": False,
                                                                "nuclei.enabled": False}),
                       cache_dir=cache)
    return result.run_dir


# --- the real slide ------------------------------------------------------------------------------------------------

def test_pipeline_report_has_every_section_and_the_manifest_numbers(demo_run):
    report = demo_run / REPORT_NAME
    assert report.is_file() and report.read_bytes().startswith(b"%PDF")
    m = json.loads((demo_run / "manifest.json").read_text())
    m |= m.pop("environment")  # the numbers the report prints, wherever the manifest keeps them
    pages = _pages_text(report)
    text = _text(report)
    for section in SECTIONS:
        assert section in text, section
    k = m["clusters"]["k"]
    for t in range(1, k + 1):
        assert f"Tissue {t}" in text
    # Sections come in the order, and each fits on one page: a page per tissue, four more.
    first_page = {s: next(i for i, p in enumerate(pages) if s in " ".join(p.split()))
                  for s in ("Case summary", "Comparison across tissues", "Method and quality",
                            "Appendix: parameters and provenance")}
    assert first_page == {"Case summary": 0, "Comparison across tissues": k + 1, "Method and quality": k + 2,
                          "Appendix: parameters and provenance": k + 3}
    assert [p.split("\n", 1)[0].strip() for p in pages[1: k + 1]] == [f"Tissue {t}" for t in range(1, k + 1)]
    assert len(pages) == k + 4
    assert "not a diagnosis" in text and " ".join(DISCLAIMER.split()[:8]) in text

    numbers = [
        m["slide"]["name"], m["version"], m["slide"]["quickhash"], f"{m['tiles']['kept']:,} of {m['tiles']['total']:,}",
        f"Tiles in the grid {m['tiles']['total']:,}", f"Dropped as background {m['tiles']['dropped']['background']:,}",
        f"Dropped as artefact (near-black) {m['tiles']['dropped']['artefact']:,}",
        f"{m['embedding']['epochs']} ({m['embedding']['best_epoch']})",
        " / ".join(f"{m['embedding']['mse'][s]:.4g}" for s in ("train", "val", "test")),
        f"Seed {m['seed']}", f"Device {m['device']}", f"{m['slide']['mpp']:g} µm/px",
        ", ".join(f"{n:,}" for n in m["clusters"]["tiles_per_tissue"]), f"k = {k}",
    ]
    for value in numbers:
        assert value in text, value
    # Region areas in µm² and shares in %, computed here from the manifest alone.
    areas = list(m["regions"]["area_um2"].values())
    for area in areas:
        assert f"{area:,.0f}" in text
        assert f"{100 * area / sum(areas):.1f}" in text
    # The confidence map's caption (figure text is not extracted).
    assert "each tile's confidence, how sure its assignment is" in text
    # The nuclei of the real run: each tissue's count, from the manifest, on its headline line.
    assert m["nuclei"]["nuclei"] > 0
    for count in m["nuclei"]["per_tissue"].values():
        assert f"Nuclei {count:,}" in text
    assert "No nuclei were segmented" not in text
    assert "The tiles in the embedding" in text and "PCA; red, green, blue" in text


def test_every_page_of_the_real_report_is_drawn(demo_run):
    _assert_pages_not_blank(demo_run / REPORT_NAME)


def test_every_figure_of_the_real_report_is_legible(demo_run, tmp_path, figure_problems):
    render_report(demo_run, tmp_path / "again.pdf")
    k = read_run(demo_run).k
    assert len(figure_problems) >= 4 + 4 * k  # overview, a locator, histogram, representatives, nuclei per tissue, ...
    assert not [p for p in figure_problems if p], figure_problems


def test_representatives_are_drawn_where_their_qupath_annotations_are(demo_run, tmp_path, monkeypatch):
    """Each box on the tissue map is labelled t.r and sits on the annotation "Tissue t representative r"."""
    drawn = []
    encode = figures._encode
    monkeypatch.setattr(figures, "_encode", lambda fig, photo=False: (drawn.append(fig), encode(fig, photo))[1])
    render_report(demo_run, tmp_path / "again.pdf")
    run = read_run(demo_run)
    annotations = {f["properties"]["name"]: f for f in run.geojson() if "representative" in
                   f["properties"].get("name", "")}
    assert len(annotations) == len(run.representatives) > 0

    [tissue_map] = [ax for fig in drawn for ax in fig.axes if ax.get_title() == "Tissue map and representatives"]
    labels = [t.get_text() for t in tissue_map.texts if "." in t.get_text()]
    boxes = [p for p in tissue_map.patches if p.get_edgecolor()[3] > 0 and p.get_facecolor()[3] == 0]
    assert len(labels) == len(boxes) == len(annotations)
    for label, box in zip(labels, boxes):
        t, r = label.split(".")
        feature = annotations.pop(f"Tissue {t} representative {r}")
        xs, ys = zip(*feature["geometry"]["coordinates"][0])
        centre = ((min(xs) + max(xs)) / 2 * run.thumbnail_scale, (min(ys) + max(ys)) / 2 * run.thumbnail_scale)
        assert box.get_x() + box.get_width() / 2 == pytest.approx(centre[0], abs=0.5)
        assert box.get_y() + box.get_height() / 2 == pytest.approx(centre[1], abs=0.5)
        assert box.get_edgecolor()[:3] == pytest.approx(figures.tissue_rgb(int(t)))
    assert not annotations
    # The tissue pages name each representative as its annotation, above its images.
    titles = {ax.get_title().split("\n")[0] for fig in drawn for ax in fig.axes}
    assert {f"Tissue {r.tissue} representative {r.rank}" for r in run.representatives} <= titles


def test_report_command_rerenders_from_the_run_folder_alone(demo_run, tmp_path, capsys):
    run = _copy_run(demo_run, tmp_path)
    # The slide is not needed: the manifest points at a file that no longer exists.
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["slide"]["path"] = str(tmp_path / "moved-away.svs")
    (run / "manifest.json").write_text(json.dumps(manifest))
    before = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{run / REPORT_NAME}: case report" in out and "pages" in out
    after = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert set(after) - set(before) == {REPORT_NAME} and all(after[p] == before[p] for p in before)
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    assert "Appendix: parameters and provenance" in _text(run / REPORT_NAME)
    # --out to a file and to a folder
    assert main(["report", str(run), "--out", str(tmp_path / "elsewhere.pdf")]) == 0
    assert (tmp_path / "elsewhere.pdf").is_file()
    (tmp_path / "folder").mkdir()
    assert main(["report", str(run), "--out", str(tmp_path / "folder")]) == 0
    assert (tmp_path / "folder" / REPORT_NAME).is_file()


# --- edge cases on the synthetic slide -----------------------------------------------------------------------------

def _write_nuclei(run, per_patch=3, features=True, empty=False):
    """Nucleus files in the run-folder contract: disks drawn in each representative's label image (radius 1/21 of
    the patch, so that their outlines are visible however large the patch)."""
    rows = []
    for patch in sorted((run / "patches").glob("tissue*-rank*.jpg")):
        t, r = (int(v) for v in patch.stem.replace("tissue", "").split("-rank"))
        with Image.open(patch) as image:
            w, h = image.size
        radius_px = max(6, w // 21)
        labels = np.zeros((h, w), np.uint16)
        if not empty:
            yy, xx = np.mgrid[:h, :w]
            for i in range(per_patch):
                cx, cy = (i + 1) * w // (per_patch + 1), h // 2
                labels[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius_px ** 2] = i + 1
                area = float((labels == i + 1).sum()) * 0.5 ** 2
                rows.append([t, r, i + 1, f"{area:.3f}", f"{2 * math.pi * radius_px * 0.5:.3f}", "0.98", "0.05"])
        Image.fromarray(labels).save(patch.with_name(f"{patch.stem}.labels.png"))
    with open(run / "nuclei.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["tissue", "rank", "label", "Area um^2", "Perimeter um", "Circularity", "Eccentricity"])
        writer.writerows(rows)
    if features:
        k = json.loads((run / "manifest.json").read_text())["clusters"]["k"]
        with open(run / "features.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["tissue", "GLCM contrast", "GLCM homogeneity", "Nuclei", "Nucleus area mean um^2",
                             "Nuclei per mm^2", "Spread um"])
            for t in range(1, k + 1):
                if empty:
                    writer.writerow([t, 12.5 + t, 0.25, 0, "", 0, "nan"])
                else:
                    writer.writerow([t, 12.5 + t, 0.25, per_patch, 28.25 + t, 1234.5 * t, 7.75])


def _nucleus_pixels(path):
    """Pixels in the nucleus class colour on the pages after the summary (whose uncertainty map has yellows)."""
    colour = np.array(NUCLEUS_COLOUR, dtype=int)
    return [int((np.abs(img.astype(int) - colour).max(axis=2) < 40).sum()) for img in _page_images(path, 3.0)[1:]]


def test_nuclei_files_give_outlines_and_feature_listings(synthetic_run, tmp_path):
    run = _copy_run(synthetic_run, tmp_path)
    _write_nuclei(run)
    result = render_report(run)
    text = _text(result.path)
    for value in ("GLCM contrast (unitless) 13.5", "GLCM contrast (unitless) 14.5", "Nucleus area mean (µm²) 29.25",
                  "Nuclei per mm² 2,469", "Spread (µm) 7.75", "Nuclei (count, nuclei.csv) 3", "Area (µm²)",
                  "Perimeter (µm)", "Circularity (unitless) 0.98 ± 0", "Headline features"):
        assert value in text, value
    # Headline line on the summary: "Nuclei", then density, then area.
    assert "Nuclei 3; Nuclei per mm² 1,234; Nucleus area mean (µm²) 29.25" in text
    assert "No nuclei were segmented" not in text
    # Features that rest on 3 nuclei are flagged on each tissue's page, in words.
    k = read_run(run).k
    assert text.count("Few nuclei: its nucleus features rest on 3 nuclei, fewer than 30") == k
    _assert_pages_not_blank(result.path)
    # The outlines are drawn in the nucleus class colour; a report without nucleus files has none of it.
    bare = render_report(_copy_run(synthetic_run, tmp_path, "bare"))
    assert sum(_nucleus_pixels(bare.path)) == 0
    outlined = _nucleus_pixels(result.path)
    assert outlined[0] > 50 and outlined[1] > 50  # the pages of tissue 1 and tissue 2


def test_a_run_where_no_nuclei_were_found_renders(synthetic_run, tmp_path):
    run = _copy_run(synthetic_run, tmp_path)
    _write_nuclei(run, empty=True)
    result = render_report(run)
    text = _text(result.path)
    assert "No nuclei were found in this patch." in text
    assert "Nuclei (count, nuclei.csv) 0" in text and "undefined" in text
    _assert_pages_not_blank(result.path)


def test_missing_optional_files_are_noted(synthetic_run, tmp_path):
    run = _copy_run(synthetic_run, tmp_path)
    for name in ("training.csv", "dendrogram.npz", "reconstructions.npz", "patches/tissue2-rank3.jpg"):
        (run / name).unlink()
    text = _text(render_report(run).path)
    for note in ("training.csv is missing: no training loss curve", "dendrogram.npz is missing: no dendrogram",
                 "reconstructions.npz is missing: no reconstruction examples",
                 "patch image(s) missing from patches/: tissue2-rank3"):
        assert note in text, note


def test_one_tissue_renders(slides, tmp_path):
    [result] = analyze([slides["homogeneous"]], tmp_path, _config())
    assert result.manifest.clusters.k == 1
    text = _text(result.run_dir / REPORT_NAME)
    assert "k = 1 (one tissue)" in text and "Tissue 1" in text and "Tissue 2" not in text
    assert "With one tissue there is nothing to compare on this slide" in text
    _assert_pages_not_blank(result.run_dir / REPORT_NAME)


def test_another_embedding_method_and_the_k_vote_are_reported(slides, tmp_path, figure_problems):
    [result] = analyze([slides["two-tissues"]], tmp_path,
                       _config(**{"embedding.method": "handcrafted", "nuclei.enabled": False}))
    m = result.manifest
    assert m.embedding.method == "handcrafted" and m.embedding.view_mpp == pytest.approx(4.0)
    assert sum(m.clusters.k_votes.values()) == 10
    text = _text(result.run_dir / REPORT_NAME)
    assert "Embedding: handcrafted" in text and "Hand-crafted descriptors, no training" in text
    assert "resamples of 80 % of the tiles" in text and f"k = {m.clusters.k} was chosen" in text or \
        f"All 10 resamples of 80 % of the tiles chose k = {m.clusters.k}" in text
    assert "reconstructions.npz is missing" not in text  # only the autoencoder reconstructs
    assert "0 training epochs" not in text and "no network trained" in text  # nothing is trained
    _assert_pages_not_blank(result.run_dir / REPORT_NAME)
    assert figure_problems and not [p for p in figure_problems if p], figure_problems


COHORT_PAGES = ("Cohort report: 2 slides", "Slide 1 of 2", "Slide 2 of 2", "Tissue 1 across the slides",
                "Tissue 2 across the slides", "Features per tissue and slide", "Method and quality",
                "Appendix: parameters and provenance")


def test_cohort_report(slides, tmp_path, capsys, figure_problems):
    results = analyze([slides["two-tissues"], slides["homogeneous"]], tmp_path, _config(**{"clusters.k": 2}),
                      cohort=True)
    cohort_pdf = tmp_path / COHORT_REPORT_NAME
    assert cohort_pdf.is_file() and all((r.run_dir / REPORT_NAME).is_file() for r in results)
    pages = _pages_text(cohort_pdf)
    text = _text(cohort_pdf)
    for value in ("Cohort report: 2 slides", "analysed together", "Per-slide summary", "Tissue distribution per slide",
                  "Each tissue over the slides", "two-tissues.tif", "homogeneous.tif", "Tissue map",
                  "Share of tissue area (%)"):
        assert value in text, value
    for r in results:  # shares of the regions' area
        areas = list(r.manifest.regions.area_um2.values())
        assert " ".join(f"{100 * a / sum(areas):.1f}" for a in areas) in text
        # Each slide's case report, which holds every page the cohort report summarises, is named.
        assert str(r.run_dir / REPORT_NAME) in text
    # A summary, an overview per slide, a page per tissue across the slides, then features, method and appendix:
    # the slides' tissue pages are not repeated.
    titles = [p.split("\n", 1)[0].strip() for p in pages]
    assert [t for t in titles if t in COHORT_PAGES] == list(COHORT_PAGES)
    assert len(pages) <= len(COHORT_PAGES) + 1
    assert "Case summary" not in titles and text.count("Appendix: parameters and provenance") == 1
    _assert_pages_not_blank(cohort_pdf)
    assert figure_problems and not [p for p in figure_problems if p]
    # Re-rendered from one member with --cohort: the same cohort, the same pages.
    again = tmp_path / "again.pdf"
    assert main(["report", str(results[0].run_dir), "--cohort", "--out", str(again)]) == 0
    assert "cohort report of 2 slides" in capsys.readouterr().out
    assert len(_pages_text(again)) == len(pages)


def test_run_folders_of_separate_analyses_are_flagged_in_a_cohort_report(synthetic_run, demo_run, tmp_path,
                                                                         figure_problems):
    result = render_report([synthetic_run, demo_run], tmp_path / "mixed.pdf")
    assert result.slides == 2
    text = _text(result.path)
    assert "these slides were not analysed as one cohort" in text
    # Tissue numbers do not compare across these slides: each slide's tissues follow its overview instead.
    assert "The tissues of two-tissues.tif" in text and "The tissues of CMU-1-Small-Region.svs" in text
    assert "across the slides" not in text
    assert figure_problems and not [p for p in figure_problems if p]
    with pytest.raises(InvalidInputError, match="was not analysed with --cohort"):
        render_report(synthetic_run, tmp_path / "x.pdf", cohort=True)


# --- errors and atomicity ------------------------------------------------------------------------------------------

def test_not_a_run_folder_names_the_missing_file(synthetic_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 3
    err = capsys.readouterr().err
    assert "manifest.json" in err and "tumls-qp analyze" in err
    assert "is not a tumls-qp folder" in err

    run = _copy_run(synthetic_run, tmp_path)
    (run / "tiles.csv").unlink()
    assert main(["report", str(run)]) == 3
    err = capsys.readouterr().err
    assert "tiles.csv is missing" in err and "manifest.json" not in err.split("missing")[0]

    run = _copy_run(synthetic_run, tmp_path, "damaged")
    (run / "tiles.csv").write_text("x,y,w,h,tissue,uncertainty\n1,2,3\n")
    assert main(["report", str(run)]) == 3
    assert "cannot read tiles.csv" in capsys.readouterr().err

    assert main(["report", str(synthetic_run.parent)]) == 3
    assert "is an output folder, not a run folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 3
    assert "run folder not found" in capsys.readouterr().err
    assert not (run / REPORT_NAME).exists() and not [p for p in run.iterdir() if p.name.startswith(".")]


def test_a_failed_render_leaves_no_run_folder(slides, synthetic_run, cache, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(pdf_report, "_write_pdf", broken)
    with pytest.raises(RuntimeError, match="renderer broke"):
        analyze([slides["two-tissues"]], tmp_path, _config(**{"clusters.k": 2}), cache_dir=cache)
    assert list(tmp_path.iterdir()) == []


def test_output_report_option():
    assert OutputConfig().report is True
    with pytest.raises(ConfigError, match="output.report must be true or false"):
        OutputConfig(report="yes")
    with pytest.raises(ConfigError, match="output.report"):
        config_from_dict({"output": {"report": 1}})
    config = replace_in(PipelineConfig(), **{"output.report": False})
    assert "report = false" in dump_config(config)


def test_importing_the_report_module_is_light():
    code = ("import sys, tumls_qp.outputs.pdf_report;"
            "print([m for m in ('reportlab', 'matplotlib', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- helpers with known answers ------------------------------------------------------------------------------------

def test_tissue_grid_places_each_tile_in_its_cell():
    boxes = np.array([[0, 0, 64, 64], [128, 64, 64, 64], [64, 128, 64, 64]])
    grid = figures.tissue_grid(boxes, np.array([1, 2, 3]), None, 64, (3, 3))
    assert grid.tolist() == [[1, 0, 0], [0, 0, 2], [0, 3, 0]]
    values = figures.tissue_grid(boxes, np.array([1, 2, 3]), np.array([0.1, 0.5, 0.9]), 64, (3, 3))
    assert values[1, 2] == 0.5 and np.isnan(values[0, 1])


@pytest.mark.parametrize(("target", "expected"), [(7.3, 5), (19.9, 10), (20, 20), (0.3, 0.2), (1234, 1000)])
def test_scale_bar_lengths_are_round(target, expected):
    assert figures._nice_length(target) == pytest.approx(expected)


def test_number_formats_and_names():
    assert _fmt(1234) == "1,234" and _fmt(0.0123456) == "0.01235" and _fmt(float("nan")) == "undefined"
    assert _fmt(None) == "n/a" and _fmt(True) == "yes" and _fmt(3.0) == "3"
    assert display_name("Nucleus area mean um^2") == "Nucleus area mean µm²"
    assert display_name("Spread um") == "Spread µm" and display_name("Nuclei per mm^2") == "Nuclei per mm²"
    assert display_name("Lumen") == "Lumen"
    assert _compact_toml('a = 1\nsplit = [\n    0.7,\n    0.15,\n]\nb = 2') == "a = 1\nsplit = [0.7, 0.15]\nb = 2"


def test_read_run(synthetic_run):
    assert not (synthetic_run / REPORT_NAME).exists()  # output.report = false
    run = read_run(synthetic_run)
    m = json.loads((synthetic_run / "manifest.json").read_text())
    assert run.k == 2 and run.slide_name == "two-tissues.tif" and run.mpp == pytest.approx(0.5)
    assert run.tiles_per_tissue().tolist() == m["clusters"]["tiles_per_tissue"]
    assert run.tile_area_um2 == pytest.approx(64.0 ** 2)
    assert [r.rank for r in run.representatives_of(1)] == [1, 2, 3, 4, 5]
    assert run.thumbnail_scale == pytest.approx(16 / 128)
    assert run.features is None and run.nuclei is None and run.notes == []
    assert run.embedding_colours.rgb.shape == (len(run.tiles.boxes), 3) and run.embedding_colours.method == "pca"


# --- legibility of the figures ---------------------------------------------------------------------------------------

def test_the_legibility_check_finds_overlapping_cut_off_and_tiny_text():
    with figures._figure(2.0, 1.5, layout="constrained") as fig:
        ax = fig.subplots()
        ax.set_xticks(range(8), [f"a long tick label {i}" for i in range(8)])
        assert any("overlaps" in p for p in figures.legibility_problems(fig))
    with figures._figure(2.0, 1.5) as fig:
        ax = fig.subplots()
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.5, 0.5, "tiny", fontsize=4, transform=ax.transAxes)
        ax.text(1.2, 0.5, "beyond the edge", transform=ax.transAxes)
        problems = figures.legibility_problems(fig)
        assert any("'tiny' is 4 pt" in p for p in problems) and any("cut off" in p for p in problems)
        assert not any("overlaps" in p for p in problems)
    with figures._figure(3.0, 2.0, layout="constrained") as fig:
        ax = fig.subplots()
        ax.set_xticks(range(4), ["one", "two", "three", "four"])
        assert figures.legibility_problems(fig) == []


def _blocks(rows, cols, k, seed=0):
    """A tile grid of k tissues in blocks, 0 around it."""
    rng = np.random.default_rng(seed)
    grid = np.zeros((rows, cols), np.int64)
    grid[1:-1, 1:-1] = 1 + (np.add.outer(np.arange(rows - 2) // 3, np.arange(cols - 2) // 4) + rng.integers(
        0, 2, (rows - 2, cols - 2))) % k
    return grid


@pytest.mark.parametrize(("rows", "cols", "k", "with_confidence", "height"),
                         [(60, 40, 8, False, 6.0), (20, 70, 3, True, 3.0), (45, 45, 8, True, 4.0),
                          (30, 22, 1, False, 2.5)])
def test_the_overview_stays_legible_with_many_tissues_and_representatives(rows, cols, k, with_confidence, height,
                                                                           figure_problems):
    tile_px, tile_size = 8, 128
    grid = _blocks(rows, cols, k)
    thumbnail = np.full((rows * tile_px, cols * tile_px, 3), 235, np.uint8)
    rng = np.random.default_rng(1)
    marks = []
    for t in range(1, k + 1):
        cells = np.argwhere(grid == t)
        for r, (y, x) in enumerate(cells[rng.choice(len(cells), size=min(5, len(cells)), replace=False)], start=1):
            marks.append((f"{t}.{r}", t, (x * tile_size, y * tile_size, tile_size, tile_size)))
    values = np.where(grid > 0, rng.random(grid.shape), np.nan)
    figures.overview_figure(thumbnail, grid, tile_px, values, values if with_confidence else None, k, tile_px,
                            tile_px / tile_size, 2.0, [100 / k] * k, marks, max_height_in=height)
    figures.locator_figure(thumbnail, grid, tile_px, 1, [m for m in marks if m[1] == 1], tile_px / tile_size, 2.0)
    assert len(figure_problems) == 2 and not [p for p in figure_problems if p], figure_problems


def test_the_charts_stay_legible_with_many_tissues_slides_and_features(figure_problems):
    rng = np.random.default_rng(0)
    k, n_features, n_slides = 8, 22, 12
    names = [f"A rather long feature name number {i} (µm²)" for i in range(n_features)]
    values = rng.random((k, n_features)) * 10.0 ** rng.integers(-2, 6, n_features)
    values[2, 3] = np.nan
    texts = [[_fmt(v) for v in row] for row in values]
    figures.feature_panels_figure(names, values, texts, list(range(1, k + 1)))
    slides = [f"a-slide-with-a-long-file-name-{i}.svs" for i in range(n_slides)]
    shares = rng.dirichlet(np.ones(k), n_slides) * 100
    figures.distribution_figure(slides, shares, k)
    figures.cohort_tissue_figure(slides, shares * 12.345, k, "area (mm²)")
    figures.uncertainty_histogram(rng.random(200), rng.random(900), [0.1, 0.12, 0.13, 0.2, 0.21], 8)
    from scipy.cluster.hierarchy import linkage

    figures.dendrogram_figure(linkage(rng.random((700, 4)), "ward"), {kk: float(rng.random()) for kk in range(2, 13)},
                              5, "dendrogram")
    assert len(figure_problems) == 5 and not [p for p in figure_problems if p], figure_problems


def test_the_k_explanation_says_when_the_vote_overruled_the_choice_on_all_tiles():
    from types import SimpleNamespace

    from tumls_qp.outputs.pdf_report import _k_explanation, _vote_explanation

    def run(k, source, gaps, votes, runner_up, statistic=None):
        clusters = SimpleNamespace(k_source=source, split_statistic=statistic, gaps=gaps, k_votes=votes,
                                   runner_up=runner_up)
        return SimpleNamespace(k=k, manifest=SimpleNamespace(clusters=clusters))

    overruled = run(2, "resample vote", {2: 30.44, 3: 47.0, 4: 3.0}, {2: 6, 3: 4}, (3, 4), 5.0)
    text = _k_explanation(overruled) + _vote_explanation(overruled)
    assert "chosen by the vote of resamples" in text and "largest gap between merge heights is at the cut into 3 " \
        "tissues (47 latent units; 30.44 at k = 2)" in text
    assert "A*² = 5, above its critical value 1.8692" in text
    assert "k = 2 was chosen 6 times and the runner-up, k = 3, 4 times" in text
    one = _k_explanation(run(1, "resample vote", {2: 30.44, 3: 47.0}, {1: 7, 3: 3}, (3, 3), 5.0))
    assert one.startswith("k = 1 (one tissue), chosen by the vote") and "cut into 3 tissues" in one
    split = _k_explanation(run(3, "resample vote", {2: 1.0, 3: 2.0}, {3: 6, 1: 4}, (1, 4), 1.2))
    assert "On all tiles the split test finds one tissue." in split and "at most its critical value" in split
    agreed = run(3, "dendrogram", {2: 30.44, 3: 47.0, 4: 3.0}, {3: 10}, None)
    text = _k_explanation(agreed) + _vote_explanation(agreed)
    assert "the largest gap between merge heights (47 latent units) is at the cut into 3 tissues" in text
    assert "All 10 resamples of 80 % of the tiles chose k = 3" in text and "vote of resamples" not in text
