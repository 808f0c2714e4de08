"""Atomic output helpers: a failure leaves the previous output and no temporary files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tumls_qp.errors import OutputError
from tumls_qp.files import atomic_write, replace_dir, run_folder_names, staging_dir, writable_dir, write_csv, write_json
from tumls_qp.provenance import cpu_name, package_versions


def test_write_json_converts_numpy_and_paths(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    write_json(target, {"a": np.int64(3), "b": np.float32(0.5), "c": np.arange(3), "d": Path("/x")})
    assert json.loads(target.read_text()) == {"a": 3, "b": 0.5, "c": [0, 1, 2], "d": "/x"}


def test_write_json_failure_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    write_json(target, {"ok": 1})
    with pytest.raises(ValueError):  # NaN is refused, not written as invalid JSON
        write_json(target, {"bad": float("nan")})
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_write_csv(tmp_path: Path) -> None:
    write_csv(tmp_path / "t.csv", ["a", "b"], [[1, "x,y"], [2, "z"]])
    assert (tmp_path / "t.csv").read_text() == 'a,b\n1,"x,y"\n2,z\n'


def test_staging_then_replace_swaps_whole_folders(tmp_path: Path) -> None:
    target = tmp_path / "run"
    target.mkdir()
    (target / "old.txt").write_text("old")
    stage = staging_dir(tmp_path, "run")
    assert stage.name.startswith(".run.") and stage.name.endswith(".partial")
    (stage / "new.txt").write_text("new")
    replace_dir(stage, target)
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_replace_dir_failure_restores_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "run"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(OSError):
        replace_dir(tmp_path / "missing", target)
    assert (target / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_staging_dir_names_the_folder_it_cannot_write(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="a-file.*choose another output folder"):
        staging_dir(blocker / "out", "run")


def test_provenance() -> None:
    versions = package_versions(["numpy", "surely-not-a-distribution"])
    assert versions == {"numpy": np.__version__, "surely-not-a-distribution": "not installed"}
    assert cpu_name()


def test_run_folder_names_are_unique() -> None:
    slides = [Path("/a/s.svs"), Path("/b/s.ome.tif"), Path("/c/s.tif"), Path("/d/.svs")]
    assert run_folder_names(slides) == ["s", "s-2", "s-3", ".svs"]


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_write(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".out.bin.")
            tmp.write_bytes(b"ne")
            raise RuntimeError("half-way")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # not visible before the block ends
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_writable_dir_names_the_folder_and_the_option(tmp_path: Path) -> None:
    assert writable_dir(tmp_path / "new" / "out") == tmp_path / "new" / "out"
    assert [p.name for p in (tmp_path / "new" / "out").iterdir()] == []
    (tmp_path / "a-file").write_text("")
    with pytest.raises(OutputError, match="a-file.*with --out"):
        writable_dir(tmp_path / "a-file" / "out")
