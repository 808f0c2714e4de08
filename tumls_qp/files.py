"""Writing outputs so that a failure leaves nothing half-written.

Every output folder is built in a hidden staging folder beside its target (:func:`staging_dir`)
and renamed into place when complete (:func:`replace_dir`); single files are written to a
temporary name beside them and renamed (:func:`atomic_write`). A rename within one folder is atomic.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .errors import OutputError

__all__ = ["atomic_write", "write_csv", "write_json", "json_default", "staging_dir", "replace_dir",
           "writable_dir", "run_folder_names"]


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a file under a temporary name beside ``path``; rename it over ``path`` when the block succeeds.

    Yields the temporary path (hidden, in the same folder, so the rename is atomic). When the
    block raises, the temporary file is removed and ``path`` is left as it was::

        with atomic_write(target) as tmp:
            tmp.write_bytes(data)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    """Indented JSON (no NaN), written atomically (:func:`atomic_write`)."""
    text = json.dumps(data, indent=2, allow_nan=False, default=json_default)
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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


def writable_dir(folder: Path, option: str = "--out") -> Path:
    """Create ``folder`` when missing and check that files can be written into it, before any long work.

    Raises
    ------
    OutputError
        Naming the folder and ``option``, the command-line option that chooses it.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".tumls-write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write into the output folder {str(folder)!r}: {exc.strerror or exc}. Choose a folder you can "
            f"write to with {option}."
        ) from exc
    return folder


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
