"""What the benchmark scripts share: progress lines, the machine line, the colour floor, the report output.

The scripts import it from their own folder (``sys.path.insert(0, <benchmarks>)``; ``import _common``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

from tumls_qp.files import atomic_write
from tumls_qp.provenance import cpu_name


def log(message: str) -> None:
    """A progress line on stderr, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine_line(load_start: tuple[float, float, float], load_end: tuple[float, float, float]) -> str:
    """``Machine: <cpu>, <n> cores shared with other work (load average ... at the start, ... at the end)``."""
    start, end = ("/".join(f"{v:.1f}" for v in load) for load in (load_start, load_end))
    return (f"Machine: {cpu_name()}, {os.cpu_count()} cores shared with other work (load average 1/5/15 min "
            f"{start} at the start, {end} at the end)")


def report_head(command: str, report: str | None, load_start: tuple[float, float, float],
                load_end: tuple[float, float, float], started: float) -> list[str]:
    """A report's first lines: the command that reproduces it (with its ``--report``), the machine, the load and the
    minutes since ``started`` (``time.perf_counter()``)."""
    return [f"Command: `{command}" + (f" --report {report}" if report else "") + "`", "",
            f"{machine_line(load_start, load_end)}. Total {(time.perf_counter() - started) / 60:.1f} min.", ""]


def colour_histogram(path: Path) -> np.ndarray:
    """8x8x8 RGB histogram of all pixels, normalised to sum 1 (the floor of the data's PROVENANCE.md)."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB")).reshape(-1, 3) // 32
    index = rgb[:, 0].astype(np.int64) * 64 + rgb[:, 1] * 8 + rgb[:, 2]
    hist = np.bincount(index, minlength=512).astype(np.float64)
    return hist / hist.sum()


def manifest_k(clusters: dict) -> str:
    """The ``clusters`` entry of a run's manifest as ``k (votes for k/resamples; runner-up: votes)``."""
    votes = clusters.get("k_votes") or {}
    if not votes:
        return f"{clusters['k']} ({clusters['k_source']})"
    runner = clusters.get("runner_up")
    return (f"{clusters['k']} ({votes.get(str(clusters['k']), 0)}/{sum(votes.values())}"
            + (f"; {runner[0]}: {runner[1]}" if runner else "") + ")")


def emit_report(lines: list[str], path: str | None) -> int:
    """Print the report's lines and, when ``path`` is given, write them there too (atomically); returns 0."""
    report = "\n".join(lines) + "\n"
    print(report)
    if path:
        with atomic_write(path) as tmp:
            tmp.write_text(report, encoding="utf-8")
    return 0
