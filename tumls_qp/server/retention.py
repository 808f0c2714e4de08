"""Retention: which finished jobs and embedding-cache entries to delete, so that the data folder stays bounded.

Two rules (``tumls-qp serve --keep-days`` and ``--max-data-gb``): an entry older than
``keep_days`` goes; then, while the data folder holds more than ``max_bytes``, the oldest
remaining entries go. Entries are finished jobs (their record and ``jobs/<id>/``, dated by
when they ended) and cache entries (``cache/<key>/``, dated by when they were written; the
next analysis of that slide computes them again). Queued and running jobs and saved
dictionaries are never entries: nothing a job or a user still needs is deleted.

Only the choice is made here; :meth:`tumls_qp.server.jobs.JobService.enforce_retention` deletes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

__all__ = ["Entry", "select", "disk_bytes"]

DAY_S = 86_400.0


@dataclass(frozen=True)
class Entry:
    """Something that may be deleted: a finished job or a cache entry."""

    kind: str
    key: str
    made: float
    size: int


def disk_bytes(path: Path) -> int:
    """Bytes a file or folder takes on disk (allocated blocks; symlinks not followed; 0 when it is gone)."""
    total = 0
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            info = os.lstat(current)
        except OSError:
            continue
        total += info.st_blocks * 512
        if stat.S_ISDIR(info.st_mode):
            try:
                stack.extend(Path(entry.path) for entry in os.scandir(current))
            except OSError:
                continue
    return total


def select(entries: Iterable[Entry], total_bytes: int, now: float, keep_days: float | None,
           max_bytes: int | None) -> tuple[list[Entry], int]:
    """The entries to delete, oldest first, and the bytes the data folder holds once they are gone.

    Parameters
    ----------
    entries : iterable of Entry
    total_bytes : int
        What the whole data folder holds now (entries included).
    now : float
        Seconds since the epoch.
    keep_days : float or None
        Entries made more than this many days before ``now`` go; None: no age limit.
    max_bytes : int or None
        Then the oldest entries go until the folder holds at most this; None: no size limit.
    """
    chosen: list[Entry] = []
    remaining = total_bytes
    for entry in sorted(entries, key=lambda e: e.made):
        expired = keep_days is not None and now - entry.made > keep_days * DAY_S
        over = max_bytes is not None and remaining > max_bytes
        if not (expired or over):
            break  # oldest first: every later entry is younger, and the folder only shrinks
        chosen.append(entry)
        remaining -= entry.size
    return chosen, max(remaining, 0)
