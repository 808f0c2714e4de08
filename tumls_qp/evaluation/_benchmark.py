"""What the dataset benchmarks (MoNuSeg, GlaS) share: timing, the machine, the report file."""

from __future__ import annotations

import importlib
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import InvalidInputError, OutputError
from ..provenance import cpu_name

T = TypeVar("T")

#: Report name of a library -> its module.
_MODULES = {"numpy": "numpy", "scipy": "scipy", "scikit-image": "skimage", "scikit-learn": "sklearn",
            "opencv": "cv2"}


def machine(libraries: Sequence[str], extra: dict[str, str] | None = None) -> dict[str, str]:
    """CPU model, core count, one thread, ``extra``, the OS, Python and the versions of ``libraries``.

    ``libraries`` are report names (keys of ``_MODULES``), listed in that order.
    """
    info = {"cpu": cpu_name(), "cores": str(os.cpu_count() or "unknown"), "threads used": "1", **(extra or {}),
            "os": platform.platform(), "python": sys.version.split()[0]}
    for name in libraries:
        info[name] = importlib.import_module(_MODULES[name]).__version__
    return info


def load_average(sep: str = ", ") -> str:
    """The system load averages over 1, 5 and 15 minutes, or "unknown" where the OS has none."""
    try:
        return sep.join(f"{v:.2f}" for v in os.getloadavg())
    except (AttributeError, OSError):
        return "unknown"


def check_limit_repeats(limit: Any, repeats: Any) -> None:
    """Raise InvalidInputError unless ``limit`` is None or an integer >= 1 and ``repeats`` an integer >= 1."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"limit must be an integer >= 1 or None; got {limit!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InvalidInputError(f"repeats must be an integer >= 1; got {repeats!r}")


def fastest(call: Callable[[], T], repeats: int) -> tuple[T, float, float]:
    """Run ``call`` ``repeats`` times: its last result, the least wall seconds and the least thread CPU seconds."""
    seconds = cpu_seconds = math.inf
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.thread_time()
        result = call()
        seconds = min(seconds, time.perf_counter() - start)
        cpu_seconds = min(cpu_seconds, time.thread_time() - start_cpu)
    return result, seconds, cpu_seconds


def nan_mean(values: Iterable[float]) -> float:
    """Mean of the values that are not NaN; NaN when none is left."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


class TimedImages:
    """Per-image times of a result whose ``images`` have ``seconds`` and ``cpu_seconds``."""

    images: list[Any]

    def seconds(self) -> np.ndarray:
        """(n_images,) wall seconds of the method per image."""
        return np.array([im.seconds for im in self.images], dtype=np.float64)

    def cpu_seconds(self) -> np.ndarray:
        """(n_images,) CPU seconds of the method per image (one thread)."""
        return np.array([im.cpu_seconds for im in self.images], dtype=np.float64)


def fmt(value: float, digits: int = 4) -> str:
    """A number for a Markdown table; NaN as an en dash."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def write_report(text: str, path: str | Path) -> Path:
    """Write a Markdown report atomically (a reader never sees half of it; a failed write leaves the old file).

    Raises
    ------
    OutputError
        When the file cannot be written; its folder is created if needed.
    """
    from ..files import atomic_write

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write the report {str(path)!r}: {exc.strerror or exc}") from exc
    return path
