"""Large-slide benchmark: time per stage and peak memory at two slide sizes, and the cost of reading alone.

Writes two synthetic pyramidal slides (two tissues on glass, 0.25 µm/px) of N x N and
2N x 2N px, analyses each with ``tumls-qp analyze`` in its own process (default settings:
256 µm tiles seen at 16 µm/px), then, again in separate processes, only reads the same
tissue-level pixels. Prints a Markdown report (and writes it with ``--report``).

    python benchmarks/large_slide.py --size 20000 --report reports/large_slide.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READ_ONLY = """
import json, resource, sys, time
from tumls_qp.config import TileConfig
from tumls_qp.slide import open_slide
from tumls_qp.tiles import plan_grid, read_thumbnail
start = time.perf_counter()
with open_slide(sys.argv[1]) as slide:
    grid = plan_grid(slide, TileConfig())
    thumbnail = read_thumbnail(slide, grid)
print(json.dumps({"seconds": time.perf_counter() - start, "shape": list(thumbnail.shape),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=20000, help="side of the smaller slide in px (default 20000)")
    parser.add_argument("--mpp", type=float, default=0.25)
    parser.add_argument("--workdir", help="where slides and runs go (default: a temporary folder)")
    parser.add_argument("--report", help="also write the Markdown report here")
    args = parser.parse_args()

    from tumls_qp.testing import write_synthetic_slide

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tumls-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for side in (args.size, 2 * args.size):
        slide = work / f"synthetic-{side}.tif"
        if not slide.exists():
            start = time.perf_counter()
            write_synthetic_slide(slide, side, side, args.mpp, layout="two-tissues", tile=512)
            print(f"wrote {slide.name} ({slide.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - start:.0f} s",
                  file=sys.stderr)
        out = work / f"run-{side}"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tumls_qp.cli", "analyze", str(slide), "--out", str(out),
                        "--no-cache", "--device", "cpu", "-q"], check=True)
        wall = time.perf_counter() - start
        manifest = json.loads((out / slide.stem / "manifest.json").read_text())
        read = json.loads(subprocess.run([sys.executable, "-c", READ_ONLY, str(slide)], check=True,
                                         capture_output=True, text=True).stdout)
        rows.append({"side": side, "wall": wall, "manifest": manifest, "read": read})

    lines = [
        "# Large-slide benchmark",
        "",
        "Synthetic pyramidal slides (two tissues on glass, generic tiled JPEG TIFF, "
        f"{args.mpp} µm/px), default settings (256 µm tiles seen at 16 µm/px), CPU.",
        "",
        "Command:",
        "",
        "```",
        f"python benchmarks/large_slide.py --size {args.size}" + (f" --report {args.report}" if args.report else ""),
        "```",
        "",
        f"Machine: {_cpu()}, {os.cpu_count()} cores, Python {platform.python_version()}.",
        "",
        "| slide (px) | tissue tiles | tiles s | train s (epochs) | embed s | cluster s | outputs s | "
        "total s | peak RSS MB | read-only s | read-only peak RSS MB | pipeline / read |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m, t = row["manifest"], row["manifest"]["timings_s"]
        total = sum(t.values())
        lines.append(
            f"| {row['side']} x {row['side']} | {m['tiles']['kept']} | {t['tiles']:.1f} | "
            f"{t['train']:.1f} ({m['embedding']['epochs']}) | {t['embed']:.2f} | {t['cluster']:.1f} | "
            f"{t['outputs']:.1f} | {total:.1f} | {m['peak_rss_mb']:.0f} | {row['read']['seconds']:.1f} | "
            f"{row['read']['peak_rss_mb']:.0f} | {total / row['read']['seconds']:.1f} |"
        )
    small, large = rows
    area = (large["side"] / small["side"]) ** 2
    ratio_read = large["manifest"]["timings_s"]["tiles"] / small["manifest"]["timings_s"]["tiles"]
    ratio_tiles = large["manifest"]["tiles"]["kept"] / small["manifest"]["tiles"]["kept"]
    lines += [
        "",
        f"Area ratio {area:.0f}x; tissue tiles {ratio_tiles:.2f}x; reading time {ratio_read:.2f}x; "
        f"peak RSS {large['manifest']['peak_rss_mb'] / small['manifest']['peak_rss_mb']:.2f}x.",
        "Stage times are from each run's `manifest.json`; peak RSS is the analysing process's maximum resident set.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.report:
        Path(args.report).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
