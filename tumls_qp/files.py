"""Writing outputs so that a failure leaves nothing half-written.

Every output folder is built in a hidden staging folder beside its target (:func:`staging_dir`)
and renamed into place when complete (:func:`replace_dir`); single files are written to a
temporary name and renamed (:func:`write_json`). A rename within one folder is atomic.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import OutputError

__all__ = ["write_csv", "write_json", "json_default", "staging_dir", "replace_dir", "run_folder_names"]


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A CSV with a header row, ``\\n`` line ends (written whole; used inside staging folders)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def json_default(value: Any) -> Any:
    """``json.dumps`` hook for numpy scalars and arrays and paths."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json(path: Path, data: Any) -> None:
    """Indented JSON (no NaN), written to a temporary name and renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False, default=json_default), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def staging_dir(parent: Path, name: str) -> Path:
    """A new hidden folder ``parent/.<name>.<random>.partial`` to build an output folder in."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = parent / f".{name}.{uuid.uuid4().hex[:8]}.partial"
        stage.mkdir()
    except OSError as exc:
        raise OutputError(f"cannot write into {str(parent)!r}: {exc.strerror or exc}; choose another output folder") from exc
    return stage


def replace_dir(new: Path, target: Path) -> None:
    """Rename a finished staging folder to ``target``; an earlier ``target`` goes only once the new one is in place."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_folder_names(slides: Sequence[Path]) -> list[str]:
    """One output folder name per slide: the file name before its first dot, made unique with ``-2``, ``-3``, ..."""
    names: list[str] = []
    for slide in slides:
        base = slide.name.split(".")[0] or slide.name
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names
