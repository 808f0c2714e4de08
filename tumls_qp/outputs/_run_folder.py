"""Reading a run folder back for the report: everything comes from its files, nothing is recomputed.

Required: ``manifest.json``, ``tiles.csv``, ``representatives.csv`` and ``thumbnail.png``.
Everything else (training curve, dendrogram, reconstructions, patches, nucleus files) is
optional: the report says what is missing instead of failing.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InvalidInputError

__all__ = ["RunFolder", "Representative", "Table", "read_run_folder", "display_name", "load_labels", "REQUIRED_FILES"]

#: Files without which a folder is not a run folder the report can read.
REQUIRED_FILES = ("manifest.json", "tiles.csv", "representatives.csv", "thumbnail.png")

_TILE_COLUMNS = ("x", "y", "w", "h", "tissue", "uncertainty")
_REP_COLUMNS = ("tissue", "rank", "x", "y", "w", "h", "uncertainty")


@dataclass(frozen=True)
class Table:
    """A CSV table with numeric values: ``columns`` in file order, ``rows`` as dicts of floats (NaN when empty)."""

    columns: tuple[str, ...]
    rows: tuple[dict[str, float], ...]

    def column(self, name: str) -> np.ndarray:
        """Values of one column as a float array."""
        return np.array([r[name] for r in self.rows], dtype=np.float64)


@dataclass(frozen=True)
class Representative:
    """One representative tile: ``tissue`` 1..k, ``rank`` 1..N, ``box`` (x, y, width, height) in level-0 px."""

    tissue: int
    rank: int
    box: tuple[int, int, int, int]
    uncertainty: float
    patch: Path | None
    patch_mpp: float | None
    labels: Path | None


@dataclass
class RunFolder:
    """The contents of a run folder, as the report needs them.

    Attributes
    ----------
    path : Path
    manifest : dict
        ``manifest.json`` as written by the pipeline.
    boxes : (n, 4) int64 ndarray
        Tissue tiles (x, y, width, height) in level-0 px.
    tissue : (n,) int64 ndarray
        Tissue of each tile, 1..k.
    uncertainty : (n,) float64 ndarray
        Uncertainty of each tile in [0, 1].
    tissue_fraction : (n,) float64 ndarray or None
    representatives : list of Representative
    thumbnail : (H, W, 3) uint8 ndarray
        The tiled area at the tissue level.
    training : Table or None
        ``epoch, train_mse, val_mse``.
    linkage : (m - 1, 4) ndarray or None
    gaps : dict of int to float
    reconstructions : tuple of two (n, h, w, 3) uint8 ndarrays, or None
    config_text : str or None
        ``config.toml``.
    features : Table or None
        ``features.csv`` (one row per tissue).
    nuclei : Table or None
        ``nuclei.csv`` (one row per nucleus).
    embedding_colours : EmbeddingColours or None
        ``embedding_colours.npz``: the tiles' embeddings reduced to 3-D and their colours, one row
        per row of ``tiles.csv``.
    notes : list of str
        What was missing or unreadable among the optional files.
    """

    path: Path
    manifest: dict[str, Any]
    boxes: np.ndarray
    tissue: np.ndarray
    uncertainty: np.ndarray
    tissue_fraction: np.ndarray | None
    representatives: list[Representative]
    thumbnail: np.ndarray
    training: Table | None = None
    linkage: np.ndarray | None = None
    gaps: dict[int, float] = field(default_factory=dict)
    reconstructions: tuple[np.ndarray, np.ndarray] | None = None
    config_text: str | None = None
    features: Table | None = None
    nuclei: Table | None = None
    embedding_colours: Any = None
    notes: list[str] = field(default_factory=list)

    # --- values derived from the manifest, None when it does not have them -------------------------------------------

    @property
    def slide_name(self) -> str:
        """The slide's file name (the run folder's name when the manifest lacks it)."""
        return str(_get(self.manifest, "slide", "name") or self.path.name)

    @property
    def k(self) -> int:
        """Number of tissues."""
        k = _get(self.manifest, "clusters", "k")
        return int(k) if isinstance(k, int) and k >= 1 else int(self.tissue.max(initial=1))

    @property
    def mpp(self) -> float | None:
        """Level-0 pixel size in µm/px."""
        return _positive(_get(self.manifest, "slide", "mpp"))

    @property
    def tile_size_px(self) -> int:
        """Tile side in level-0 px."""
        value = _get(self.manifest, "tiles", "tile_size_px")
        if isinstance(value, int) and value > 0:
            return value
        return int(self.boxes[0, 2]) if len(self.boxes) else 1

    @property
    def tile_px(self) -> int:
        """Tile side in pixels of the thumbnail (the tissue level)."""
        value = _get(self.manifest, "tiles", "tile_px") or _get(self.manifest, "config", "tiles", "tile_px")
        return int(value) if isinstance(value, int) and value > 0 else 16

    @property
    def thumbnail_scale(self) -> float:
        """Thumbnail pixels per level-0 pixel."""
        return self.tile_px / self.tile_size_px

    @property
    def thumbnail_mpp(self) -> float | None:
        """Pixel size of the thumbnail in µm/px."""
        lowres = _positive(_get(self.manifest, "tiles", "lowres_mpp"))
        if lowres is not None:
            return lowres
        return self.mpp / self.thumbnail_scale if self.mpp is not None else None

    @property
    def tile_um(self) -> float | None:
        """Tile side in µm."""
        value = _positive(_get(self.manifest, "tiles", "tile_um"))
        if value is not None:
            return value
        return self.tile_size_px * self.mpp if self.mpp is not None else None

    @property
    def tile_area_um2(self) -> float | None:
        """Area of one tile in µm²."""
        return self.tile_um ** 2 if self.tile_um is not None else None

    def tiles_per_tissue(self) -> np.ndarray:
        """Tissue tiles per tissue, index 0 = tissue 1."""
        return np.bincount(self.tissue - 1, minlength=self.k)[: self.k] if len(self.tissue) else np.zeros(self.k, int)

    def representatives_of(self, tissue: int) -> list[Representative]:
        """Representatives of tissue ``tissue`` (1..k), best first."""
        return sorted((r for r in self.representatives if r.tissue == tissue), key=lambda r: r.rank)

    def feature_row(self, tissue: int) -> dict[str, float] | None:
        """The ``features.csv`` row of tissue ``tissue`` (1..k)."""
        if self.features is None:
            return None
        for row in self.features.rows:
            if row.get("tissue") == tissue:
                return row
        return None

    def nuclei_of(self, tissue: int, rank: int) -> list[dict[str, float]] | None:
        """``nuclei.csv`` rows of one representative; None when there is no ``nuclei.csv``."""
        if self.nuclei is None:
            return None
        return [r for r in self.nuclei.rows if r.get("tissue") == tissue and r.get("rank") == rank]


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _positive(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def _damaged(folder: Path, name: str, problem: Any) -> InvalidInputError:
    return InvalidInputError(
        f"cannot read {name} in the run folder {str(folder)!r}: {problem}. Re-run `tumls-qp analyze` on the slide "
        "to write the run folder again."
    )


def _read_csv(folder: Path, name: str, required: tuple[str, ...] = ()) -> Table:
    """Read a CSV of numbers; an empty cell is NaN; a missing required column is an error."""
    path = folder / name
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise _damaged(folder, name, "the file is empty")
            header = [h.strip() for h in header]
            missing = [c for c in required if c not in header]
            if missing:
                raise _damaged(folder, name, f"column(s) {', '.join(missing)} missing (found {', '.join(header)})")
            rows = []
            for line, values in enumerate(reader, start=2):
                if not values:
                    continue
                if len(values) != len(header):
                    raise _damaged(folder, name, f"line {line} has {len(values)} values for {len(header)} columns")
                rows.append({h: _number(v, name, line, h, folder) for h, v in zip(header, values)})
    except OSError as exc:
        raise _damaged(folder, name, exc.strerror or exc) from exc
    except UnicodeDecodeError as exc:
        raise _damaged(folder, name, "not a text file") from exc
    return Table(columns=tuple(header), rows=tuple(rows))


def _number(value: str, name: str, line: int, column: str, folder: Path) -> float:
    value = value.strip()
    if value == "" or value.lower() in ("nan", "na", "none"):
        return math.nan
    try:
        return float(value)
    except ValueError as exc:
        raise _damaged(folder, name, f"line {line}, column {column!r}: {value!r} is not a number") from exc


def read_run_folder(path: str | Path) -> RunFolder:
    """Read a run folder written by ``tumls-qp analyze``.

    Parameters
    ----------
    path : path-like
        The run folder (it holds ``manifest.json``).

    Returns
    -------
    RunFolder

    Raises
    ------
    InvalidInputError
        When ``path`` is not a folder, a required file is missing, or a file is damaged;
        the message names the file and what to do.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InvalidInputError(
            f"run folder not found: {str(folder)!r}. Give a folder written by `tumls-qp analyze` (one per slide, "
            "inside its --out folder)."
        )
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    inside = sorted(p.name for p in folder.iterdir() if (p / "manifest.json").is_file()) if missing else []
    if inside:
        raise InvalidInputError(
            f"{str(folder)!r} is an output folder, not a run folder: it holds the run folder(s) "
            f"{', '.join(inside[:5])}{', ...' if len(inside) > 5 else ''}. Give those instead, e.g. "
            f"`tumls-qp report {folder / inside[0]}` (or all of them for a cohort report)."
        )
    if missing:
        raise InvalidInputError(
            f"{str(folder)!r} is not a complete tumls-qp run folder: {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing. Give a folder written by `tumls-qp analyze` "
            f"(it holds {', '.join(REQUIRED_FILES)}), or re-run the analysis to write it again."
        )
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(folder, "manifest.json", exc) from exc
    if not isinstance(manifest, dict) or manifest.get("tool") != "tumls-qp":
        raise _damaged(folder, "manifest.json", "it is not a tumls-qp manifest (no \"tool\": \"tumls-qp\")")

    tiles = _read_csv(folder, "tiles.csv", _TILE_COLUMNS)
    boxes = np.array([[r[c] for c in ("x", "y", "w", "h")] for r in tiles.rows], dtype=np.float64).reshape(-1, 4)
    tissue = tiles.column("tissue") if tiles.rows else np.zeros(0)
    if not np.all(np.isfinite(boxes)) or not np.all(np.isfinite(tissue)) or np.any(tissue < 1):
        raise _damaged(folder, "tiles.csv", "a box or tissue value is missing or not positive")
    uncertainty = np.nan_to_num(tiles.column("uncertainty"), nan=0.0) if tiles.rows else np.zeros(0)
    fraction = tiles.column("tissue_fraction") if "tissue_fraction" in tiles.columns and tiles.rows else None

    try:
        with Image.open(folder / "thumbnail.png") as image:
            thumbnail = np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise _damaged(folder, "thumbnail.png", exc) from exc

    run = RunFolder(
        path=folder, manifest=manifest, boxes=boxes.astype(np.int64), tissue=tissue.astype(np.int64),
        uncertainty=uncertainty, tissue_fraction=fraction, representatives=[], thumbnail=thumbnail,
    )
    run.representatives = _read_representatives(run)
    _read_optional(run)
    return run


def _read_representatives(run: RunFolder) -> list[Representative]:
    folder = run.path
    table = _read_csv(folder, "representatives.csv", _REP_COLUMNS)
    listed = {(r.get("tissue"), r.get("rank")): r for r in run.manifest.get("representatives") or []
              if isinstance(r, dict)}
    reps = []
    for row in table.rows:
        t, rank = int(row["tissue"]), int(row["rank"])
        box = tuple(int(row[c]) for c in ("x", "y", "w", "h"))
        entry = listed.get((t, rank), {})
        patch = folder / str(entry.get("patch") or f"patches/tissue{t}-rank{rank}.jpg")
        patch_mpp = _positive(entry.get("patch_mpp"))
        if patch_mpp is None and run.mpp is not None and patch.is_file():
            try:
                with Image.open(patch) as image:
                    patch_mpp = run.mpp * box[2] / image.size[0]
            except OSError:
                patch_mpp = None
        labels = patch.with_name(f"tissue{t}-rank{rank}.labels.png")
        reps.append(Representative(
            tissue=t, rank=rank, box=box, uncertainty=row["uncertainty"],  # type: ignore[arg-type]
            patch=patch if patch.is_file() else None, patch_mpp=patch_mpp,
            labels=labels if labels.is_file() else None,
        ))
    return reps


def _read_optional(run: RunFolder) -> None:
    """Fill the optional parts of ``run``; what is missing goes to ``run.notes``."""
    folder = run.path
    if (folder / "training.csv").is_file():
        run.training = _read_csv(folder, "training.csv", ("epoch", "train_mse", "val_mse"))
    else:
        run.notes.append("training.csv is missing: no autoencoder loss curve")
    if (folder / "dendrogram.npz").is_file():
        try:
            with np.load(folder / "dendrogram.npz") as npz:
                if "linkage" in npz.files:
                    run.linkage = np.asarray(npz["linkage"], dtype=np.float64)
                if "gaps_k" in npz.files and "gaps" in npz.files:
                    run.gaps = {int(k): float(g) for k, g in zip(npz["gaps_k"], npz["gaps"])}
        except (OSError, ValueError) as exc:
            raise _damaged(folder, "dendrogram.npz", exc) from exc
    else:
        run.notes.append("dendrogram.npz is missing: no dendrogram")
    if (folder / "reconstructions.npz").is_file():
        try:
            with np.load(folder / "reconstructions.npz") as npz:
                run.reconstructions = (np.asarray(npz["tiles"]), np.asarray(npz["reconstructed"]))
        except (OSError, ValueError, KeyError) as exc:
            raise _damaged(folder, "reconstructions.npz", exc) from exc
    else:
        run.notes.append("reconstructions.npz is missing: no reconstruction examples")
    if (folder / "config.toml").is_file():
        run.config_text = (folder / "config.toml").read_text(encoding="utf-8")
    if (folder / "features.csv").is_file():
        run.features = _read_csv(folder, "features.csv", ("tissue",))
    if (folder / "nuclei.csv").is_file():
        run.nuclei = _read_csv(folder, "nuclei.csv", ("tissue", "rank", "label"))
    if (folder / "embedding_colours.npz").is_file():
        run.embedding_colours = _read_embedding_colours(folder, len(run.boxes))
    absent = [f"tissue{r.tissue}-rank{r.rank}" for r in run.representatives if r.patch is None]
    if absent:
        run.notes.append(f"patch image(s) missing from patches/: {', '.join(absent)}")


def _read_embedding_colours(folder: Path, n_tiles: int) -> Any:
    """``embedding_colours.npz`` as :class:`~tumls_qp.interactive.embedding_colours.EmbeddingColours`."""
    from ..interactive.embedding_colours import EmbeddingColours

    try:
        with np.load(folder / "embedding_colours.npz", allow_pickle=False) as npz:
            colours = EmbeddingColours(coords=np.asarray(npz["coords"], dtype=np.float32),
                                       rgb=np.asarray(npz["rgb"], dtype=np.uint8), method=str(npz["method"]))
    except (OSError, ValueError, KeyError) as exc:
        raise _damaged(folder, "embedding_colours.npz", exc) from exc
    if colours.coords.shape != (n_tiles, 3) or colours.rgb.shape != (n_tiles, 3):
        raise _damaged(folder, "embedding_colours.npz", f"{len(colours.coords)} rows for {n_tiles} tiles in tiles.csv")
    return colours


def display_name(column: str) -> str:
    """A feature column as people read it: ``um^2`` -> ``µm²``, ``um`` -> ``µm``, ``mm^2`` -> ``mm²``."""
    text = re.sub(r"\bum\^2\b", "µm²", column)
    text = re.sub(r"\bmm\^2\b", "mm²", text)
    return re.sub(r"\bum\b", "µm", text)


def load_labels(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """An instance label PNG as an int array of ``shape``; raises InvalidInputError when it does not fit."""
    try:
        with Image.open(path) as image:
            labels = np.asarray(image)
    except OSError as exc:
        raise _damaged(path.parent.parent, f"patches/{path.name}", exc) from exc
    if labels.ndim != 2 or labels.shape != shape:
        raise _damaged(path.parent.parent, f"patches/{path.name}",
                       f"a label image of shape {shape} was expected; got {labels.shape}")
    return labels.astype(np.int64)
