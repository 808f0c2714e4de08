"""Sample PDF reports from real slides, previews of their pages, and the time to render reports.

1. Analyses the bundled CMU-1-Small-Region.svs (H&E, CC0) as ``tumls-qp demo`` does (32 µm
   tiles, seed 0, no cache), and a cohort of 3 slides (the bundled slide, the TCGA slide of
   ../shared/data when it is there, a synthetic two-tissue slide) analysed together with
   ``--cohort``. The cohort's autoencoder is capped at ``--cohort-epochs`` epochs: training
   time does not change what is rendered.
2. Copies the case's ``report.pdf`` and the cohort's ``cohort-report.pdf`` to
   ``reports/sample/`` with a PNG preview of every page and a README that shows them.
3. Times ``tumls-qp report`` (rendering only: the run folders exist), each run in a fresh
   process, the median of ``--repeat`` runs, for the case and the cohort. With ``--baseline
   REF`` the same run folders are also rendered by the package of git revision REF (extracted
   with ``git archive`` into the work folder), alternating with this tree's renders in the same
   run, so that pages and seconds compare side by side under the same load.
4. Writes ``reports/report_timing.md`` with the command, the machine and the numbers.

    python benchmarks/report_sample.py                    # or: make sample-report
    python benchmarks/report_sample.py --baseline main    # also render with main's code
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tumls_qp.provenance import cpu_name

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "reports" / "sample"
TIMING = ROOT / "reports" / "report_timing.md"
TCGA = ROOT.parent / "shared" / "data" / "wsi" / "tcga-cr-7395-01a-01-ts1.svs"
#: Scale of the page previews: 1.25 × 72 = 90 dots per inch (an A4 page is 744 × 1052 px).
PREVIEW_SCALE = 1.25




def _cli(*args: str, source: Path = ROOT) -> str:
    """Run ``tumls-qp`` in a fresh process from the source tree ``source``; returns its standard output."""
    env = dict(os.environ, PYTHONPATH=str(source))
    done = subprocess.run([sys.executable, "-m", "tumls_qp.cli", *args], cwd=source, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"tumls-qp {' '.join(args)} failed with exit status {done.returncode}")
    return done.stdout


def _time_renders(run_dirs: list[Path], out: Path, repeat: int, sources: dict[str, Path]) -> dict[str, dict]:
    """Per source tree: median wall and render seconds of ``tumls-qp report`` over ``repeat`` fresh processes.

    The sources take turns within each repetition, so that a change of load affects them alike.
    """
    walls: dict[str, list[float]] = {name: [] for name in sources}
    renders: dict[str, list[float]] = {name: [] for name in sources}
    lines: dict[str, str] = {}
    outs = {name: out.with_name(f"{out.stem}-{name}{out.suffix}") for name in sources}
    for _ in range(repeat):
        for name, source in sources.items():
            start = time.perf_counter()
            lines[name] = _cli("report", *map(str, run_dirs), "--out", str(outs[name]), source=source).strip()
            walls[name].append(time.perf_counter() - start)
            renders[name].append(float(re.search(r"([0-9.]+) s$", lines[name]).group(1)))
    return {name: {"wall_s": statistics.median(walls[name]), "render_s": statistics.median(renders[name]),
                   "pages": int(re.search(r"(\d+) pages", lines[name]).group(1)),
                   "size_mb": outs[name].stat().st_size / 1e6, "line": lines[name], "pdf": outs[name]}
            for name in sources}


#: Renders a report with every figure checked by this tree's ``legibility_problems`` as it is saved; prints a count
#: of the problems as JSON. Run in the tree whose package draws the figures (another revision's, too).
_LEGIBILITY_DRIVER = """
import ast, json, sys
from typing import Any
source = open(sys.argv[1], encoding="utf-8").read()
wanted = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)
          and n.name in ("_drawn_texts", "legibility_problems")]
checks = {"Any": Any, "MIN_FONT_PT": 6.0}
exec(compile(ast.Module(body=wanted, type_ignores=[]), sys.argv[1], "exec"), checks)
from tumls_qp.outputs import _report_figures as figures
from tumls_qp.outputs.pdf_report import render_report
found = []
encode = figures._encode
def checked(fig, *args, **kwargs):
    if not hasattr(fig.canvas, "get_renderer"):  # a figure without a canvas of its own: give it matplotlib's Agg
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        FigureCanvasAgg(fig)
    found.append(checks["legibility_problems"](fig))
    return encode(fig, *args, **kwargs)
figures._encode = checked
render_report(sys.argv[3:], sys.argv[2])
problems = [p for f in found for p in f]
print(json.dumps({"figures": len(found), "illegible": sum(bool(f) for f in found),
                  "overlaps": sum("overlaps" in p for p in problems), "cut_off": sum("cut off" in p for p in problems),
                  "too_small": sum(" pt, below " in p for p in problems)}))
"""


def _legibility(run_dirs: list[Path], out: Path, sources: dict[str, Path]) -> dict[str, dict]:
    """Per source tree: its report's figures checked for overlapping, cut-off and too small text (this tree's check)."""
    checker = ROOT / "tumls_qp" / "outputs" / "_report_figures.py"
    counts = {}
    for name, source in sources.items():
        env = dict(os.environ, PYTHONPATH=str(source))
        done = subprocess.run([sys.executable, "-c", _LEGIBILITY_DRIVER, str(checker), str(out),
                               *map(str, run_dirs)], cwd=source, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"the legibility check of {name} failed with exit status {done.returncode}")
        counts[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return counts


def _extract(ref: str, folder: Path) -> str:
    """The package of git revision ``ref`` of this repository, extracted into ``folder``; returns its short hash."""
    commit = subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", commit, "tumls_qp"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return commit


def _previews(pdf: Path, folder: Path, prefix: str) -> list[Path]:
    import pypdfium2 as pdfium

    for old in folder.glob(f"{prefix}-*.png"):
        old.unlink()
    document = pdfium.PdfDocument(str(pdf))
    paths = []
    try:
        for i, page in enumerate(document, start=1):
            path = folder / f"{prefix}-{i}.png"
            page.render(scale=PREVIEW_SCALE).to_pil().convert("RGB").save(path, optimize=True)
            paths.append(path)
    finally:
        document.close()
    return paths


def _titles(pdf: Path) -> list[str]:
    """The first line of each page below the running header: the page's title."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(str(pdf))
    try:
        titles = []
        for page in document:
            lines = [ln.strip() for ln in page.get_textpage().get_text_range().splitlines() if ln.strip()]
            titles.append(lines[0] if lines else "")
        return titles
    finally:
        document.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="renders per measurement (median; default 3)")
    parser.add_argument("--cohort-epochs", type=int, default=10, help="autoencoder epochs of the cohort (default 10)")
    parser.add_argument("--baseline", metavar="REF",
                        help="also render the same run folders with the package of this git revision (e.g. main)")
    parser.add_argument("--workdir", help="where runs go (default: a temporary folder, removed at the end)")
    args = parser.parse_args()
    command = "python benchmarks/report_sample.py" + "".join(f" {a}" for a in sys.argv[1:])

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tumls-report-"))
    work.mkdir(parents=True, exist_ok=True)
    sources = {"this": ROOT}
    baseline = ""
    try:
        if args.baseline:
            baseline = _extract(args.baseline, work / "baseline")
            sources = {"baseline": work / "baseline", "this": ROOT}
        print("analysing the bundled slide (as `tumls-qp demo`) ...", flush=True)
        _cli("demo", "--out", str(work / "case"), "--no-cache", "-q")
        case = work / "case" / "CMU-1-Small-Region"

        print("analysing a 3-slide cohort ...", flush=True)
        from tumls_qp.testing import write_synthetic_slide

        third = write_synthetic_slide(work / "synthetic-two-tissues.tif", 6144, 4096, 0.5, layout="two-tissues")
        second = TCGA if TCGA.is_file() else write_synthetic_slide(work / "synthetic-homogeneous.tif", 4096, 4096,
                                                                   0.5, layout="homogeneous")
        from tumls_qp.cli import DEMO_SLIDE

        capped = work / "cohort.toml"
        capped.write_text(f"[embedding]\nmax_epochs = {args.cohort_epochs}\n")
        cohort_slides = [DEMO_SLIDE, second, third]
        _cli("analyze", *map(str, cohort_slides), "--cohort", "--out", str(work / "cohort"), "--tile-um", "64",
             "--mpp", "1.0", "--config", str(capped), "--no-cache", "-q")
        cohort_runs = sorted(p for p in (work / "cohort").iterdir() if (p / "manifest.json").is_file())

        print("timing the renders ...", flush=True)
        case_t = _time_renders([case], work / "case-report.pdf", args.repeat, sources)
        cohort_t = _time_renders(cohort_runs, work / "cohort-report.pdf", args.repeat, sources)
        # The case report of the cohort's first slide: a case with the cohort's k tissues (the demo's k may be 2).
        member = cohort_runs[0]
        member_k = json.loads((member / "manifest.json").read_text())["clusters"]["k"]
        member_t = _time_renders([member], work / "member-report.pdf", args.repeat, sources)
        print("checking the figures' legibility ...", flush=True)
        case_l = _legibility([case], work / "legibility.pdf", sources)
        cohort_l = _legibility(cohort_runs, work / "legibility.pdf", sources)

        SAMPLE.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(case_t["this"]["pdf"], SAMPLE / "report.pdf")
        shutil.copyfile(cohort_t["this"]["pdf"], SAMPLE / "cohort-report.pdf")
        samples = {name: (_previews(SAMPLE / name, SAMPLE, prefix), _titles(SAMPLE / name))
                   for name, prefix in (("report.pdf", "page"), ("cohort-report.pdf", "cohort-page"))}
        printed = "\n".join(f"{t[name]['line']}" for name in sources for t in (case_t, member_t, cohort_t))
        printed = printed.replace(str(work), "WORKDIR")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    code = {"baseline": f"`{args.baseline}` ({baseline})", "this": "this tree"}
    table = ["| report | code | pages | PDF size (MB) | render (s) | whole command (s) |",
             "|---|---|---|---|---|---|"]
    for label, timing in (("case: CMU-1-Small-Region, k chosen by the tool", case_t),
                          (f"case of the cohort's {member.name} ({member_k} tissues)", member_t),
                          (f"cohort of 3 slides ({', '.join(p.name for p in cohort_slides)})", cohort_t)):
        for name in sources:
            t = timing[name]
            table.append(f"| {label} | {code[name]} | {t['pages']} | {t['size_mb']:.2f} | {t['render_s']:.2f} | "
                         f"{t['wall_s']:.2f} |")
    table += ["", "| report | code | figures | illegible figures | overlapping texts | texts cut off | "
              "texts below 6 pt |", "|---|---|---|---|---|---|---|"]
    for label, legibility in (("case", case_l), ("cohort", cohort_l)):
        for name in sources:
            c = legibility[name]
            table.append(f"| {label} | {code[name]} | {c['figures']} | {c['illegible']} | {c['overlaps']} | "
                         f"{c['cut_off']} | {c['too_small']} |")
    output = "\n".join(table)
    print(output)
    compared = (f" Each render by this tree alternates with one by the package of `{args.baseline}` ({baseline}, "
                "extracted with `git archive`), on the same run folders." if args.baseline else "")
    TIMING.write_text(
        "# Rendering the PDF report\n\n"
        f"Made by `{command}` on {time.strftime('%Y-%m-%d')}: "
        f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load} at the end (the machine is shared).\n\n"
        "*render*: the seconds `tumls-qp report` prints (reading the run folders, drawing the figures, laying out "
        "and writing the PDF); *whole command*: the same command's wall time in a fresh process, Python start-up "
        f"and imports included. Each is the median of {args.repeat} runs.{compared} The run folders exist "
        "beforehand: the slides are not read again and nothing is recomputed. The cohort was analysed with "
        f"`--cohort --tile-um 64 --mpp 1.0` and the autoencoder capped at {args.cohort_epochs} epochs (training time "
        "does not change what is rendered). The second table checks every figure of each report as it is saved, "
        "with this tree's `_report_figures.legibility_problems` (texts that overlap, are cut off at the figure's edge "
        "or are smaller than 6 pt at print size).\n\n" + output + "\n\nLast lines printed by `tumls-qp report`:\n\n```\n"
        + printed + "\n```\n",
        encoding="utf-8",
    )

    def pages(previews: list[Path], titles: list[str]) -> str:
        return "\n".join(f"### Page {i}: {t}\n\n![page {i}]({p.name})\n" for i, (p, t) in
                         enumerate(zip(previews, titles), start=1))

    case_pages, cohort_pages = samples["report.pdf"], samples["cohort-report.pdf"]
    (SAMPLE / "README.md").write_text(
        "# Sample reports\n\n"
        "[`report.pdf`](report.pdf) is the report `tumls-qp demo` writes for the bundled slide "
        "`CMU-1-Small-Region.svs` (H&E skin, CC0; `tumls_qp/data/PROVENANCE.md`), with the demo settings "
        "(32 µm tiles, seed 0): the overview with every representative on the tissue map, a page per tissue, the "
        "comparison, the method and the provenance. [`cohort-report.pdf`](cohort-report.pdf) is the cohort report of "
        f"{', '.join(p.name for p in cohort_slides)} analysed together (`--cohort --tile-um 64 --mpp 1.0`, "
        f"{args.cohort_epochs} autoencoder epochs). Regenerate both, the previews below and "
        "[`../report_timing.md`](../report_timing.md) with:\n\n"
        f"```\nmake sample-report      # or: {command}\n```\n\n"
        f"## The case report\n\nPreviews of its {len(case_pages[0])} pages ({PREVIEW_SCALE * 72:.0f} dpi):\n\n"
        + pages(*case_pages) +
        f"\n## The cohort report\n\nPreviews of its {len(cohort_pages[0])} pages ({PREVIEW_SCALE * 72:.0f} dpi):\n\n"
        + pages(*cohort_pages),
        encoding="utf-8",
    )
    print(f"wrote {SAMPLE / 'report.pdf'}, {SAMPLE / 'cohort-report.pdf'}, their previews, {TIMING}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
