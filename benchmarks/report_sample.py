"""Sample PDF report from the bundled real slide, previews of its pages, and the time to render reports.

1. Analyses the bundled CMU-1-Small-Region.svs (H&E, CC0) as ``tumls-qp demo`` does (32 µm
   tiles, seed 0, no cache) and copies its ``report.pdf`` to ``reports/sample/`` with a PNG
   preview of every page and a README that shows them.
2. Times ``tumls-qp report`` (rendering only: the run folders exist), each run in a fresh
   process, the median of ``--repeat`` runs: the case above, and a cohort of 3 slides (the
   bundled slide, the TCGA slide of ../shared/data when it is there, a synthetic two-tissue
   slide) analysed together with ``--cohort``. The cohort's autoencoder is capped at
   ``--cohort-epochs`` epochs: training time does not change what is rendered.
3. Writes ``reports/report_timing.md`` with the command, the machine and the numbers.

    python benchmarks/report_sample.py          # or: make sample-report
"""

from __future__ import annotations

import argparse
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




def _cli(*args: str) -> str:
    """Run ``tumls-qp`` in a fresh process from this source tree; returns its standard output."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "tumls_qp.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"tumls-qp {' '.join(args)} failed with exit status {done.returncode}")
    return done.stdout


def _time_render(run_dirs: list[Path], out: Path, repeat: int) -> dict:
    """Median wall and render seconds of ``tumls-qp report`` over ``repeat`` fresh processes."""
    walls, renders, line = [], [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        line = _cli("report", *map(str, run_dirs), "--out", str(out)).strip()
        walls.append(time.perf_counter() - start)
        renders.append(float(re.search(r"([0-9.]+) s$", line).group(1)))
    pages = int(re.search(r"(\d+) pages", line).group(1))
    return {"wall_s": statistics.median(walls), "render_s": statistics.median(renders), "pages": pages,
            "size_mb": out.stat().st_size / 1e6, "line": line}


def _previews(pdf: Path, folder: Path) -> list[Path]:
    import pypdfium2 as pdfium

    for old in folder.glob("page-*.png"):
        old.unlink()
    document = pdfium.PdfDocument(str(pdf))
    paths = []
    try:
        for i, page in enumerate(document, start=1):
            path = folder / f"page-{i}.png"
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
    parser.add_argument("--workdir", help="where runs go (default: a temporary folder, removed at the end)")
    args = parser.parse_args()
    command = "python benchmarks/report_sample.py" + "".join(
        f" {a}" for a in sys.argv[1:])

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tumls-report-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print("analysing the bundled slide (as `tumls-qp demo`) ...", flush=True)
        _cli("demo", "--out", str(work / "case"), "--no-cache", "-q")
        case = work / "case" / "CMU-1-Small-Region"

        SAMPLE.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(case / "report.pdf", SAMPLE / "report.pdf")
        previews = _previews(SAMPLE / "report.pdf", SAMPLE)
        titles = _titles(SAMPLE / "report.pdf")

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
        case_t = _time_render([case], work / "case-report.pdf", args.repeat)
        cohort_t = _time_render(cohort_runs, work / "cohort-report.pdf", args.repeat)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    table = [
        "| report | pages | PDF size (MB) | render (s) | whole command (s) |",
        "|---|---|---|---|---|",
        f"| case: CMU-1-Small-Region, k from the dendrogram | {case_t['pages']} | {case_t['size_mb']:.2f} | "
        f"{case_t['render_s']:.2f} | {case_t['wall_s']:.2f} |",
        f"| cohort of 3 slides ({', '.join(p.name for p in cohort_slides)}) | {cohort_t['pages']} | "
        f"{cohort_t['size_mb']:.2f} | {cohort_t['render_s']:.2f} | {cohort_t['wall_s']:.2f} |",
    ]
    output = "\n".join(table)
    printed = f"{case_t['line']}\n{cohort_t['line']}".replace(str(work), "WORKDIR")
    print(output)
    TIMING.write_text(
        "# Rendering the PDF report\n\n"
        f"Made by `{command}` (`make sample-report`) on {time.strftime('%Y-%m-%d')}: "
        f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load} at the end (the machine is shared).\n\n"
        "*render*: the seconds `tumls-qp report` prints (reading the run folders, drawing the figures, laying out "
        "and writing the PDF); *whole command*: the same command's wall time in a fresh process, Python start-up "
        f"and imports included. Each is the median of {args.repeat} runs. The run folders exist beforehand: the "
        "slides are not read again and nothing is recomputed. The cohort was analysed with `--cohort --tile-um 64 "
        f"--mpp 1.0` and the autoencoder capped at {args.cohort_epochs} epochs (training time does not change what "
        "is rendered).\n\n" + output + "\n\nLast lines printed by `tumls-qp report`:\n\n```\n" + printed + "\n```\n",
        encoding="utf-8",
    )
    pages = "\n".join(f"### Page {i}: {t}\n\n![page {i}]({p.name})\n" for i, (p, t) in
                      enumerate(zip(previews, titles), start=1))
    (SAMPLE / "README.md").write_text(
        "# Sample report\n\n"
        "[`report.pdf`](report.pdf) is the report `tumls-qp demo` writes for the bundled slide "
        "`CMU-1-Small-Region.svs` (H&E skin, CC0; `tumls_qp/data/PROVENANCE.md`), with the demo settings "
        "(32 µm tiles, seed 0): per tissue, a page at the tissue level (representatives, uncertainty) and one at "
        "the cell level (the best representative's nuclei and features). Regenerate it, the previews below and "
        "[`../report_timing.md`](../report_timing.md) with:\n\n"
        f"```\nmake sample-report      # or: {command}\n```\n\n"
        f"Previews of its {len(previews)} pages ({PREVIEW_SCALE * 72:.0f} dpi):\n\n" + pages,
        encoding="utf-8",
    )
    print(f"wrote {SAMPLE / 'report.pdf'}, {len(previews)} previews, {TIMING}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
