"""The embedding cache: a slide group's tissue-level images, tile embeddings and fitted embedding method.

Analysing the same slides with the same tiling, stain checks, embedding parameters and seed
again (e.g. with another k) reuses them instead of training again. One entry per key
(:func:`cache_key`), a folder ``<cache>/<key>/`` holding ``tiles.npz`` (``latents``,
``n_slides``, ``thumbnail_0``, ..., and ``posterior`` for a mixture), ``embedding.json`` (the
method, the training history, the views' pixel size), the fitted method (``model.pt``,
``model.json``) and an empty ``complete`` marker written last. An
entry is built in a hidden staging folder and renamed into place, so a reader never sees
half of one; a damaged entry is ignored with a warning. ``CACHE_FORMAT`` is part of the key:
bump it when the entry's layout changes, and old entries are simply not found.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..config import EMBEDDING_FILES, PipelineConfig
from ..errors import TumlsQpError

__all__ = ["CachedEmbeddings", "cache_key", "load_cached", "store_cached", "default_cache_dir", "CACHE_FORMAT"]

log = logging.getLogger(__name__)

#: Layout version of a cache entry (part of the key).
CACHE_FORMAT = 2


@dataclass(frozen=True)
class CachedEmbeddings:
    """One cache entry: per slide its tissue-level image, and the group's embedding.

    Attributes
    ----------
    thumbnails : list of (H, W, 3) uint8 ndarrays
        One per slide, in the order of the key.
    embedding : TileEmbedding
        Of the tissue tiles of all slides, slide after slide.
    """

    thumbnails: list[np.ndarray]
    embedding: Any


def default_cache_dir() -> Path:
    """``$TUMLS_QP_CACHE``, else ``$XDG_CACHE_HOME/tumls-qp``, else ``~/.cache/tumls-qp``."""
    if os.environ.get("TUMLS_QP_CACHE"):
        return Path(os.environ["TUMLS_QP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tumls-qp"


def cache_key(slides: Sequence[tuple[str, float, tuple[int, int]]], config: PipelineConfig) -> str:
    """The key of a slide group's entry.

    Parameters
    ----------
    slides : sequence of (quick hash, level-0 µm/px, (width, height) px)
        One per slide, in analysis order.
    config : PipelineConfig
        Its tiling, stain check, embedding (but the CPU thread count) and seed enter the key, and the size and
        modification time of the weights files it names (``checkpoint``, ``init_resnet18``), so that a file
        replaced at the same path is not mistaken for the one cached.
    """
    embedding = {k: v for k, v in asdict(config.embedding).items() if k != "num_threads"}
    for name in EMBEDDING_FILES:
        if embedding.get(name):
            try:
                stat = Path(embedding[name]).expanduser().stat()
                embedding[f"{name}_stat"] = [stat.st_size, stat.st_mtime_ns]
            except OSError:
                pass  # a missing file is reported by the method itself
    payload = {
        "format": CACHE_FORMAT,
        "version": __version__,
        "slides": [[h, round(mpp, 6), dims] for h, mpp, dims in slides],
        "tiles": asdict(config.tiles),
        "allow_non_he": config.slide.allow_non_he,
        "embedding": embedding,
        "seed": config.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def load_cached(cache: Path, key: str) -> CachedEmbeddings | None:
    """The entry ``key``, or None when there is none (or it is damaged: logged, then ignored)."""
    folder = cache / key
    if not (folder / "complete").exists():
        return None
    try:
        from .embeddings import TileEmbedding, load_encoder

        with np.load(folder / "tiles.npz") as npz:
            latents = npz["latents"]
            posterior = npz["posterior"] if "posterior" in npz.files else None
            thumbnails = [npz[f"thumbnail_{i}"] for i in range(int(npz["n_slides"]))]
        meta = json.loads((folder / "embedding.json").read_text())
        encoder = load_encoder(folder)
        embedding = TileEmbedding(method=meta["method"], vectors=latents, posterior=posterior, encoder=encoder,
                                  history=meta["history"], view_mpp=meta["view_mpp"])
    except (OSError, ValueError, KeyError, TypeError, TumlsQpError) as exc:
        log.warning("ignoring the damaged cache entry %s: %s", folder, exc)
        return None
    log.info("reusing cached embeddings %s", folder)
    return CachedEmbeddings(thumbnails=thumbnails, embedding=embedding)


def store_cached(cache: Path, key: str, entry: CachedEmbeddings) -> None:
    """Store ``entry`` under ``key``, replacing an older one; a failure is logged, never raised (it is a cache)."""
    folder = cache / key
    tmp = cache / f".{key}.{uuid.uuid4().hex[:8]}.partial"
    try:
        tmp.mkdir(parents=True)
        e = entry.embedding
        arrays = {f"thumbnail_{i}": t for i, t in enumerate(entry.thumbnails)}
        if e.posterior is not None:
            arrays["posterior"] = e.posterior
        np.savez_compressed(tmp / "tiles.npz", latents=e.vectors, n_slides=len(entry.thumbnails), **arrays)
        (tmp / "embedding.json").write_text(json.dumps({"method": e.method, "history": e.history,
                                                        "view_mpp": e.view_mpp}))
        e.encoder.save(tmp)
        (tmp / "complete").write_text("")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError as exc:
        log.warning("could not store the embedding cache in %s: %s", cache, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
