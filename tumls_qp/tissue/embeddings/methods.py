"""One interface for every embedding method: tiles in, one vector per tile out.

``fit_embedding(images, cfg, seed)`` trains (or fits) the method named by
``embedding.method`` on the tiles of a slide (or a cohort) and returns a
:class:`TileEmbedding`: per-tile vectors (what clustering, seeded clustering, the prototype
dictionary and the embedding-colour layer consume), per-tile mixture posteriors when the
method has them (``vade``), the fitted :class:`Encoder` (which embeds further tiles, e.g. a
dictionary's queries, and saves itself as ``model.pt`` + ``model.json``) and a summary of the
training for the manifest.

Methods
-------
``tumls-ae``
    The TUMLS autoencoder (``training.train_autoencoder``) on the tissue-level tiles
    (``tiles.tile_px``, 16 px by default); the vector is its 64 x 2 x 2 latent.
``contrastive``
    SimCLR on the tiles' views (``contrastive``), with H&E stain jitter in optical-density
    space, 90° rotations and flips, crops and scale, and blur: an encoder pushed to ignore
    staining and orientation; the vector is the encoder's pooled output, averaged over the
    eight orientations of the view.
``vade``
    Variational deep embedding with a Gaussian-mixture prior on the views (``vade``); the
    vector is the 10-dimensional latent mean, the posterior p(component | tile) comes with
    it, and the mixture chooses k by BIC.
``handcrafted``
    No training: stain-separated colour statistics, texture at two scales and nucleus
    density of each view (``handcrafted``), robustly standardised over the run's tiles.
``textons``
    No network: a dictionary of 32 textons (k-means of rotation-invariant filter responses of
    the haematoxylin and eosin images at 2-16 µm) learned from the run's own pixels; the
    vector is the square root of each view's texton histogram (``textons``).
``pretrained``
    No training: your own encoder, a timm architecture (``embedding.encoder``) with the
    weights of a local file (``embedding.checkpoint``); the vector is its pooled output of
    each view, resized to its input side and normalised its own way (``pretrained``). Needs
    the ``pretrained`` extra (timm).

A *view* is the tile seen in a square field of ``embedding.view_um`` µm centred on it, at
``embedding.view_px`` pixels (64 px of 256 µm: 4 µm/px, where glands, crypts, alveoli and
the arrangement of nuclei are visible); ``tumls-ae`` does not need views.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ...config import EMBEDDING_METHODS, ClusterConfig, EmbeddingConfig
from ...errors import ConfigError, InvalidInputError

__all__ = [
    "METHODS",
    "VIEW_METHODS",
    "MIN_TILES",
    "TileImages",
    "TileEmbedding",
    "Encoder",
    "fit_embedding",
    "load_encoder",
    "needs_views",
    "check_tile_count",
    "training_table",
]

log = logging.getLogger(__name__)

METHODS = EMBEDDING_METHODS
#: Methods that see the tiles' views (the others see the tissue-level tiles).
VIEW_METHODS = ("contrastive", "vade", "handcrafted", "textons", "pretrained")
#: Fewest tiles each method can learn from (contrastive learning needs a batch of negatives,
#: the autoencoder a train/validation/test split, VaDE a mixture, descriptors a spread, clustering a few).
MIN_TILES = {"tumls-ae": 10, "contrastive": 32, "vade": 20, "handcrafted": 10, "textons": 10, "pretrained": 10}

WEIGHTS = "model.pt"
META = "model.json"

#: SimCLR settings (the method's own, fixed here: see reports/embeddings.md for the set that chose them).
CONTRASTIVE_WIDTH = 8
CONTRASTIVE_TEMPERATURE = 0.2
CONTRASTIVE_CROP = (0.35, 1.0)
#: VaDE settings of the CDAC study: 64 x 64 inputs, batch 32, Adam at 1e-4; pretraining epochs as an autoencoder.
VADE_BATCH = 32
VADE_LEARNING_RATE = 1e-4
VADE_PRETRAIN_EPOCHS = 20


def needs_views(method: str) -> bool:
    """Whether ``method`` embeds the tiles' views rather than their tissue-level pixels."""
    _check_method(method)
    return method in VIEW_METHODS


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"embedding.method must be one of {', '.join(METHODS)}; got {method!r}")


def check_tile_count(method: str, n: int) -> None:
    """Raise InvalidInputError when ``n`` tiles are too few for ``method``, saying how many are needed."""
    _check_method(method)
    need = MIN_TILES[method]
    if n < need:
        raise InvalidInputError(
            f"embedding.method = {method!r} needs at least {need} tissue tiles to learn from; this input has {n}. "
            "Use smaller tiles (--tile-um), more slides, or another --embedding."
        )


@dataclass(frozen=True)
class TileImages:
    """What a method may look at, for the same n tiles.

    Attributes
    ----------
    tiles : (n, tile_px, tile_px, 3) uint8 ndarray or None
        The tissue level (``tumls-ae``).
    views : (n, view_px, view_px, 3) uint8 ndarray or None
        Each tile in its field of view (the other methods).
    view_mpp : float or None
        Pixel size of ``views`` in µm/px.
    """

    tiles: np.ndarray | None = None
    views: np.ndarray | None = None
    view_mpp: float | None = None

    def __len__(self) -> int:
        for a in (self.tiles, self.views):
            if a is not None:
                return len(a)
        return 0


class Encoder:
    """A fitted method: embeds tiles, saves itself. Subclasses implement one method each."""

    method: str = ""

    def embed(self, images: TileImages) -> np.ndarray:
        """(n, d) float32 vectors of ``images``."""
        raise NotImplementedError

    def posterior(self, images: TileImages) -> np.ndarray | None:
        """(n, k) float32 mixture posteriors, for methods that have a mixture; None otherwise."""
        return None

    def to(self, device: torch.device | str) -> Encoder:
        """Embed on ``device`` from now on (the network, if any, moves there); returns self."""
        self.device = torch.device(device)
        model = getattr(self, "model", None)
        if model is not None:
            model.to(self.device)
        return self

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors for ``model.pt``, JSON-able settings for ``model.json``)."""
        raise NotImplementedError

    def save(self, folder: str | Path, info: dict[str, Any] | None = None) -> None:
        """Write ``model.pt`` and ``model.json`` (``method``, the settings, torch's version and ``info``) into ``folder``."""
        folder = Path(folder)
        tensors, settings = self.state()
        torch.save(tensors, folder / WEIGHTS)
        meta = {"method": self.method, **settings, "torch": torch.__version__, **(info or {})}
        (folder / META).write_text(json.dumps(meta, indent=2, default=_json_default))


@dataclass
class TileEmbedding:
    """The output of :func:`fit_embedding`.

    Attributes
    ----------
    method : str
    vectors : (n, d) float32 ndarray
        One vector per tile, in the order of the input.
    posterior : (n, k) float32 ndarray or None
        p(component | tile) of the method's mixture (``vade``); None for the other methods.
    encoder : Encoder
        The fitted method.
    history : dict
        What training did, for the manifest: ``epochs``, ``train_seconds`` (fitting) and
        ``embed_seconds`` (computing the vectors), ``device``, and the method's own record
        (``tumls-ae``: ``TrainingHistory``; ``contrastive``: ``loss`` per epoch, ``steps``;
        ``vade``: ``pretrain_loss``, ``loss``, ``bic`` per k, ``k``, ``k_source``, ``train_tiles``).
    view_mpp : float or None
        Pixel size (µm/px) of the views the method saw; None for ``tumls-ae``.
    """

    method: str
    vectors: np.ndarray
    posterior: np.ndarray | None
    encoder: Encoder
    history: dict[str, Any] = field(default_factory=dict)
    view_mpp: float | None = None


def _device(cfg: EmbeddingConfig) -> torch.device:
    from .training import resolve_device

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    return resolve_device(cfg.device)


def _require_views(images: TileImages, method: str) -> tuple[np.ndarray, float]:
    v = images.views
    if v is None or images.view_mpp is None:
        raise InvalidInputError(f"embedding.method = {method!r} needs the tiles' views (TileImages.views, view_mpp)")
    if v.ndim != 4 or v.shape[3] != 3 or v.dtype != np.uint8 or v.shape[1] != v.shape[2]:
        raise InvalidInputError(f"views must be an (n, p, p, 3) uint8 array; got {v.dtype} {v.shape}")
    return v, float(images.view_mpp)


# --- tumls-ae ------------------------------------------------------------------------------------------------------

class AutoencoderEncoder(Encoder):
    method = "tumls-ae"

    def __init__(self, model: Any, device: torch.device | str = "cpu") -> None:
        self.model, self.device = model, torch.device(device)

    def embed(self, images: TileImages) -> np.ndarray:
        from .training import embed_tiles

        if images.tiles is None:
            raise InvalidInputError("embedding.method = 'tumls-ae' needs the tissue-level tiles (TileImages.tiles)")
        if images.tiles.shape[1] != self.model.tile_px:
            raise InvalidInputError(f"the autoencoder takes {self.model.tile_px} px tiles; got "
                                    f"{images.tiles.shape[1]} px (tiles.tile_px must match the encoder's)")
        return embed_tiles(self.model, images.tiles, device=self.device)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return self.model.state_dict(), {"architecture": "tumls-autoencoder", "tile_px": self.model.tile_px,
                                         "latent": [64, 2, 2]}


def _fit_ae(images: TileImages, cfg: EmbeddingConfig, seed: int, progress: Callable[[int, int], None] | None
            ) -> TileEmbedding:
    from .training import embed_tiles, train_autoencoder

    if images.tiles is None:
        raise InvalidInputError("embedding.method = 'tumls-ae' needs the tissue-level tiles (TileImages.tiles)")
    trained = train_autoencoder(images.tiles, cfg, seed, progress=progress)
    started = time.perf_counter()
    vectors = embed_tiles(trained, images.tiles)
    h = trained.history
    history = asdict(h) | {"epochs": len(h.train_mse), "train_seconds": round(h.seconds, 3),
                           "embed_seconds": round(time.perf_counter() - started, 3)}
    return TileEmbedding("tumls-ae", vectors, None, AutoencoderEncoder(trained.model, trained.device), history)


# --- contrastive ---------------------------------------------------------------------------------------------------

class ContrastiveEncoder(Encoder):
    method = "contrastive"

    def __init__(self, model: Any, view_px: int, device: torch.device | str = "cpu") -> None:
        self.model, self.view_px, self.device = model, view_px, torch.device(device)

    def embed(self, images: TileImages) -> np.ndarray:
        from .contrastive import encode

        views, _ = _require_views(images, self.method)
        return encode(self.model, views, self.view_px, self.device)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return self.model.state_dict(), {"architecture": "simclr-convnet", "width": self.model.encoder.width,
                                         "view_px": self.view_px, "dim": self.model.encoder.out_dim}


def _fit_contrastive(images: TileImages, cfg: EmbeddingConfig, seed: int,
                     progress: Callable[[int, int], None] | None) -> TileEmbedding:
    from .augment import Augmentation
    from .contrastive import encode, train_contrastive

    views, _ = _require_views(images, "contrastive")
    device = _device(cfg)
    view_px = views.shape[1]
    aug = Augmentation(out_px=view_px, crop_scale=CONTRASTIVE_CROP)
    model, h = train_contrastive(views, steps=cfg.contrastive_steps, batch_size=cfg.batch_size,
                                 learning_rate=cfg.learning_rate, temperature=CONTRASTIVE_TEMPERATURE,
                                 width=CONTRASTIVE_WIDTH, aug=aug, device=device, seed=seed, progress=progress)
    started = time.perf_counter()
    vectors = encode(model, views, view_px, device)
    history = {"epochs": len(h.loss), "steps": h.steps, "loss": h.loss, "device": h.device,
               "train_seconds": round(h.seconds, 3), "embed_seconds": round(time.perf_counter() - started, 3)}
    return TileEmbedding("contrastive", vectors, None, ContrastiveEncoder(model, view_px, device), history)


# --- vade ----------------------------------------------------------------------------------------------------------

class VadeEncoder(Encoder):
    method = "vade"

    def __init__(self, model: Any, view_px: int, device: torch.device | str = "cpu") -> None:
        self.model, self.view_px, self.device = model, view_px, torch.device(device)

    def _views(self, images: TileImages) -> np.ndarray:
        views, _ = _require_views(images, self.method)
        if views.shape[1] != self.view_px:
            raise InvalidInputError(f"this VaDE model takes {self.view_px} px views; got {views.shape[1]} px "
                                    "(embedding.view_px must match the encoder's)")
        return views

    def embed(self, images: TileImages) -> np.ndarray:
        from .vade import vade_posterior

        return vade_posterior(self.model, self._views(images), self.device)[0]

    def posterior(self, images: TileImages) -> np.ndarray:
        from .vade import vade_posterior

        return vade_posterior(self.model, self._views(images), self.device)[1]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return self.model.state_dict(), {"architecture": "vade-mlp", "view_px": self.view_px, "k": self.model.k,
                                         "latent": self.model.latent, "input_dim": self.model.input_dim}


def _fit_vade(images: TileImages, cfg: EmbeddingConfig, seed: int, clusters: ClusterConfig,
              progress: Callable[[int, int], None] | None) -> TileEmbedding:
    from .vade import train_vade, vade_posterior

    views, _ = _require_views(images, "vade")
    device = _device(cfg)
    train = views
    if len(views) > cfg.vade_train_tiles:
        pick = np.random.default_rng(seed).choice(len(views), cfg.vade_train_tiles, replace=False)
        train = views[np.sort(pick)]
    model, h = train_vade(train, k=clusters.k, k_min=clusters.k_min, k_max=clusters.k_max,
                          pretrain_epochs=VADE_PRETRAIN_EPOCHS, epochs=cfg.vade_epochs, batch_size=VADE_BATCH,
                          learning_rate=VADE_LEARNING_RATE, device=device, seed=seed, progress=progress)
    started = time.perf_counter()
    vectors, posterior = vade_posterior(model, views, device)
    history = asdict(h) | {"epochs": len(h.pretrain_loss) + len(h.loss), "train_tiles": len(train),
                           "train_seconds": round(h.seconds, 3), "embed_seconds": round(time.perf_counter() - started, 3)}
    history["bic"] = {str(k): v for k, v in h.bic.items()}
    return TileEmbedding("vade", vectors, posterior, VadeEncoder(model, views.shape[1], device), history)


# --- handcrafted ---------------------------------------------------------------------------------------------------

class HandcraftedEncoder(Encoder):
    method = "handcrafted"

    def __init__(self, centre: np.ndarray, scale: np.ndarray) -> None:
        self.centre, self.scale = np.asarray(centre, np.float64), np.asarray(scale, np.float64)

    def embed(self, images: TileImages) -> np.ndarray:
        from .handcrafted import describe_views

        views, mpp = _require_views(images, self.method)
        return self.transform(describe_views(views, mpp))

    def transform(self, raw: np.ndarray) -> np.ndarray:
        return np.clip((raw - self.centre) / self.scale, -_CLIP, _CLIP).astype(np.float32)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        from .handcrafted import FEATURE_NAMES

        return ({"centre": torch.as_tensor(self.centre), "scale": torch.as_tensor(self.scale)},
                {"architecture": "handcrafted-descriptors", "features": list(FEATURE_NAMES)})


#: Standardised descriptors are clipped at ±5 robust standard deviations (a few extreme tiles must not dominate).
_CLIP = 5.0


def _fit_handcrafted(images: TileImages, cfg: EmbeddingConfig, progress: Callable[[int, int], None] | None
                     ) -> TileEmbedding:
    from .handcrafted import describe_views, robust_scale

    views, mpp = _require_views(images, "handcrafted")
    started = time.perf_counter()
    raw = describe_views(views, mpp)
    centre, scale = robust_scale(raw)
    encoder = HandcraftedEncoder(centre, scale)
    seconds = time.perf_counter() - started
    if progress is not None:
        progress(1, 1)
    return TileEmbedding("handcrafted", encoder.transform(raw), None, encoder,
                         {"epochs": 0, "train_seconds": 0.0, "embed_seconds": round(seconds, 3), "device": "cpu"})


# --- textons ------------------------------------------------------------------------------------------------------

class TextonEncoder(Encoder):
    method = "textons"

    def __init__(self, textons: Any) -> None:
        self.textons = textons

    def embed(self, images: TileImages) -> np.ndarray:
        from .textons import texton_histograms

        views, mpp = _require_views(images, self.method)
        return texton_histograms(views, mpp, self.textons)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        from .textons import SCALES_UM

        t = self.textons
        return ({"mean": torch.as_tensor(t.mean), "scale": torch.as_tensor(t.scale),
                 "centres": torch.as_tensor(t.centres)},
                {"architecture": "texton-histogram", "scales_um": list(SCALES_UM), "textons": len(t.centres)})


def _fit_textons(images: TileImages, seed: int, progress: Callable[[int, int], None] | None) -> TileEmbedding:
    from .textons import fit_textons, texton_histograms

    views, mpp = _require_views(images, "textons")
    started = time.perf_counter()
    textons = fit_textons(views, mpp, seed)
    fitted = time.perf_counter()
    vectors = texton_histograms(views, mpp, textons, progress)
    history = {"epochs": 0, "train_seconds": round(fitted - started, 3),
               "embed_seconds": round(time.perf_counter() - fitted, 3), "device": "cpu"}
    return TileEmbedding("textons", vectors, None, TextonEncoder(textons), history)


# --- pretrained ----------------------------------------------------------------------------------------------------

class PretrainedEncoder(Encoder):
    """A timm model with a lab's weights. It saves a reference to its checkpoint (path and SHA-256), not the
    weights: a foundation model's gigabytes are not copied into every run folder and cache entry."""

    method = "pretrained"

    def __init__(self, net: Any, device: torch.device | str = "cpu") -> None:
        self.net, self.model, self.device = net, net.model, torch.device(device)

    def embed(self, images: TileImages) -> np.ndarray:
        from .pretrained import encode

        views, _ = _require_views(images, self.method)
        return encode(self.net, views, self.device)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        n = self.net
        return {}, {"architecture": n.architecture, "checkpoint": str(n.checkpoint), "checkpoint_sha256": n.sha256,
                    "input_px": n.input_px, "mean": list(n.mean), "std": list(n.std), "dim": n.dim}


def _fit_pretrained(images: TileImages, cfg: EmbeddingConfig, progress: Callable[[int, int], None] | None
                    ) -> TileEmbedding:
    from .pretrained import encode, load_pretrained

    views, _ = _require_views(images, "pretrained")
    device = _device(cfg)
    started = time.perf_counter()
    net = load_pretrained(cfg.encoder, cfg.checkpoint)
    if views.shape[1] != net.input_px:
        log.warning("embedding.view_px = %d, but %s takes %d px: the views are resized to %d px. Set "
                    "embedding.view_px = %d and embedding.view_um = %d x the µm/px the encoder was trained at "
                    "(e.g. %g for 0.5 µm/px)", views.shape[1], net.architecture, net.input_px, net.input_px,
                    net.input_px, net.input_px, net.input_px * 0.5)
    loaded = time.perf_counter()
    vectors = encode(net, views, device, progress)
    history = {"epochs": 0, "train_seconds": round(loaded - started, 3),
               "embed_seconds": round(time.perf_counter() - loaded, 3), "device": str(device),
               "architecture": net.architecture, "checkpoint": net.checkpoint.name, "checkpoint_sha256": net.sha256,
               "input_px": net.input_px, "dropped_keys": list(net.dropped)}
    return TileEmbedding("pretrained", vectors, None, PretrainedEncoder(net, device), history)


# --- the interface -------------------------------------------------------------------------------------------------

def fit_embedding(
    images: TileImages,
    cfg: EmbeddingConfig,
    seed: int,
    *,
    clusters: ClusterConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TileEmbedding:
    """Fit ``cfg.method`` on the tiles and embed them.

    Parameters
    ----------
    images : TileImages
        The tiles (tissue level and/or views, as the method needs; see :func:`needs_views`).
    cfg : EmbeddingConfig
    seed : int
        Seeds every random choice of the training.
    clusters : ClusterConfig, optional
        ``vade`` fits its mixture with ``clusters.k`` components, or chooses k in
        [``k_min``, ``k_max``] by BIC when it is unset.
    progress : callable(done, total), optional

    Raises
    ------
    ConfigError
        Unknown method; for ``pretrained``: timm missing, an unknown architecture, a checkpoint that is
        missing, unreadable or does not fit it.
    InvalidInputError
        Too few tiles for the method, or the images it needs are missing.
    """
    method = cfg.method
    check_tile_count(method, len(images))
    if method == "tumls-ae":
        return _fit_ae(images, cfg, seed, progress)
    if method == "contrastive":
        fitted = _fit_contrastive(images, cfg, seed, progress)
    elif method == "vade":
        fitted = _fit_vade(images, cfg, seed, clusters or ClusterConfig(), progress)
    elif method == "textons":
        fitted = _fit_textons(images, seed, progress)
    elif method == "pretrained":
        fitted = _fit_pretrained(images, cfg, progress)
    else:
        fitted = _fit_handcrafted(images, cfg, progress)
    fitted.view_mpp = images.view_mpp
    return fitted


def training_table(history: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of ``training.csv``: the loss per epoch of the method's training.

    ``tumls-ae``: epoch, train_mse, val_mse (as the TUMLS report plots them); ``contrastive``:
    epoch, loss (NT-Xent); ``vade``: epoch, pretrain_mse (the autoencoder pretraining), loss
    (the negative ELBO, after it; each column empty in the other phase); ``handcrafted``,
    ``textons`` and ``pretrained``: no rows (no network is trained).
    """
    if "train_mse" in history:
        return ["epoch", "train_mse", "val_mse"], [
            [i + 1, f"{t:.6g}", f"{v:.6g}"] for i, (t, v) in enumerate(zip(history["train_mse"], history["val_mse"]))]
    if "pretrain_loss" in history:
        rows = [[f"{v:.6g}", ""] for v in history["pretrain_loss"]] + [["", f"{v:.6g}"] for v in history["loss"]]
        return ["epoch", "pretrain_mse", "loss"], [[i + 1, *row] for i, row in enumerate(rows)]
    return ["epoch", "loss"], [[i + 1, f"{v:.6g}"] for i, v in enumerate(history.get("loss", []))]


def load_encoder(folder: str | Path) -> Encoder:
    """Read an encoder written by :meth:`Encoder.save` (or a TUMLS autoencoder checkpoint), on the CPU."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / META).read_text())
        state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise ConfigError(f"cannot read the encoder checkpoint in {str(folder)!r}: {exc}") from exc
    method = meta.get("method", "tumls-ae") if isinstance(meta, dict) else None
    try:
        if method == "tumls-ae":
            from .model import Autoencoder

            model = Autoencoder(int(meta["tile_px"]))
            model.load_state_dict(state)
            return AutoencoderEncoder(model.eval())
        if method == "contrastive":
            from .contrastive import ContrastiveModel

            model = ContrastiveModel(int(meta["width"]))
            model.load_state_dict(state)
            return ContrastiveEncoder(model.eval(), int(meta["view_px"]))
        if method == "vade":
            from .vade import VaDE

            model = VaDE(int(meta["input_dim"]), int(meta["k"]), int(meta["latent"]))
            model.load_state_dict(state)
            return VadeEncoder(model.eval(), int(meta["view_px"]))
        if method == "handcrafted":
            return HandcraftedEncoder(state["centre"].numpy(), state["scale"].numpy())
        if method == "textons":
            from .textons import RESPONSES, SCALES_UM, Textons

            textons = Textons(state["mean"].numpy(), state["scale"].numpy(), state["centres"].numpy())
            if [float(v) for v in meta["scales_um"]] != list(SCALES_UM) or textons.centres.shape[1] != RESPONSES:
                raise ValueError(f"the checkpoint's filter bank ({meta['scales_um']} µm, {textons.centres.shape[1]} "
                                 f"responses) is not this version's ({list(SCALES_UM)} µm, {RESPONSES} responses)")
            return TextonEncoder(textons)
        if method == "pretrained":
            from .pretrained import load_pretrained

            return PretrainedEncoder(load_pretrained(str(meta["architecture"]), str(meta["checkpoint"]),
                                                     expect_sha256=str(meta["checkpoint_sha256"])))
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"the encoder checkpoint in {str(folder)!r} is damaged or does not fit its "
                          f"{method!r} architecture: {exc}") from exc
    raise ConfigError(f"the encoder checkpoint in {str(folder)!r} names an unknown method {method!r}")


def _json_default(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
