"""Training the autoencoder and embedding tiles with it."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ...config import EmbeddingConfig
from ...errors import ConfigError, DeviceError
from .model import Autoencoder

__all__ = [
    "TrainedAutoencoder",
    "TrainingHistory",
    "resolve_device",
    "train_autoencoder",
    "embed_tiles",
    "save_checkpoint",
    "load_checkpoint",
    "reconstruct",
]

log = logging.getLogger(__name__)

CHECKPOINT_WEIGHTS = "model.pt"
CHECKPOINT_CONFIG = "model.json"


@dataclass
class TrainingHistory:
    """What training did, for the manifest and the report."""

    #: Per epoch: mean training MSE, validation MSE.
    train_mse: list[float] = field(default_factory=list)
    val_mse: list[float] = field(default_factory=list)
    #: 1-based epoch whose weights were kept (best validation MSE).
    best_epoch: int = 0
    #: MSE of the kept weights on each split (pixels in [0, 1]).
    mse: dict[str, float] = field(default_factory=dict)
    #: Tiles in each split.
    n_tiles: dict[str, int] = field(default_factory=dict)
    #: True when early stopping ended training; False when max_epochs did.
    early_stopped: bool = False
    seconds: float = 0.0
    device: str = "cpu"
    initialised_from: str | None = None


@dataclass
class TrainedAutoencoder:
    """A trained model with its history."""

    model: Autoencoder
    history: TrainingHistory
    device: torch.device


def set_cpu_threads(n: int) -> None:
    """Let torch use ``n`` CPU threads in this process (``embedding.num_threads`` overrides it per training).

    Processes that share the cores (server workers) each take their share: more threads than
    cores makes the small autoencoder several times slower, not faster.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1; got {n!r}")
    torch.set_num_threads(n)


def resolve_device(name: str) -> torch.device:
    """The torch device for ``auto``, ``cpu``, ``cuda`` or ``mps``; never a silent fallback.

    Raises
    ------
    DeviceError
        ``cuda`` or ``mps`` was asked for and is not available.
    """
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            built = "with" if torch.backends.cuda.is_built() else "without"
            raise DeviceError(
                f"--device cuda was asked for, but no CUDA device is available (torch {torch.__version__} is built "
                f"{built} CUDA). Use --device cpu, or --device auto to take a GPU only when there is one."
            )
        return torch.device("cuda")
    if name == "mps":
        if not mps_ok:
            raise DeviceError("--device mps was asked for, but Apple's MPS is not available here. Use --device cpu or auto.")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"embedding.device must be one of auto, cpu, cuda, mps; got {name!r}")


def _to_tensor(tiles: np.ndarray) -> torch.Tensor:
    """(n, p, p, 3) uint8 -> (n, 3, p, p) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float().div_(255.0)


def _split(n: int, fractions: tuple[float, float, float], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    if n < 10:
        raise ConfigError(f"{n} tiles are too few to split into train/validation/test; at least 10 are needed")
    order = rng.permutation(n)
    n_val = max(1, int(round(n * fractions[1])))
    n_test = max(1, int(round(n * fractions[2])))
    n_train = n - n_val - n_test
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def _mse(model: Autoencoder, data: torch.Tensor, device: torch.device, batch_size: int) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data[start : start + batch_size].to(device)
            total += float(nn.functional.mse_loss(model(batch), batch, reduction="sum"))
    return total / max(1, data.numel())


def train_autoencoder(
    tiles: np.ndarray,
    cfg: EmbeddingConfig,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> TrainedAutoencoder:
    """Train the autoencoder on tissue-level tiles (TUMLS section 3.3).

    Adam (``learning_rate``, ``weight_decay``), batches of ``batch_size``, a seeded
    train/validation/test split, early stopping after ``patience`` epochs without a
    better validation MSE; the weights of the best validation epoch are kept.

    Parameters
    ----------
    tiles : (n, p, p, 3) uint8 ndarray
        Tissue-level tiles; p is 8, 16, 32 or 64.
    cfg : EmbeddingConfig
    seed : int
        Seeds the split, the weight initialisation and the batch order.
    progress : callable(epoch, max_epochs), optional
    """
    if tiles.ndim != 4 or tiles.shape[3] != 3 or tiles.dtype != np.uint8:
        raise ValueError(f"tiles must be an (n, p, p, 3) uint8 array; got {tiles.dtype} {tiles.shape}")
    device = resolve_device(cfg.device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    train_idx, val_idx, test_idx = _split(len(tiles), cfg.split, rng)
    if len(train_idx) > cfg.max_train_tiles:
        train_idx = np.sort(rng.choice(train_idx, cfg.max_train_tiles, replace=False))
    data = _to_tensor(tiles)
    train, val, test = data[train_idx], data[val_idx], data[test_idx]

    model = Autoencoder(tiles.shape[1])
    history = TrainingHistory(device=str(device), n_tiles={"train": len(train), "val": len(val), "test": len(test)})
    if cfg.init_resnet18:
        history.initialised_from = _init_from_file(model, cfg.init_resnet18)
    model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    best_val, best_state, since_best = math.inf, copy.deepcopy(model.state_dict()), 0
    started = time.perf_counter()
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(train), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            if len(idx) < 2:  # batch norm needs two samples
                continue
            batch = train[idx].to(device)
            optimiser.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(batch), batch)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        history.train_mse.append(total / max(1, count))
        val_mse = _mse(model, val, device, cfg.batch_size)
        history.val_mse.append(val_mse)
        if val_mse < best_val:
            best_val, best_state, since_best = val_mse, copy.deepcopy(model.state_dict()), 0
            history.best_epoch = epoch
        else:
            since_best += 1
        if progress is not None:
            progress(epoch, cfg.max_epochs)
        if since_best >= cfg.patience:
            history.early_stopped = True
            break
    model.load_state_dict(best_state)
    history.mse = {
        "train": _mse(model, train, device, cfg.batch_size),
        "val": _mse(model, val, device, cfg.batch_size),
        "test": _mse(model, test, device, cfg.batch_size),
    }
    history.seconds = time.perf_counter() - started
    model.eval()
    return TrainedAutoencoder(model=model, history=history, device=device)


def _init_from_file(model: Autoencoder, path: str) -> str:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"embedding.init_resnet18: no such file {str(file)!r}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"embedding.init_resnet18: cannot read {str(file)!r} as a torch state dict: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"embedding.init_resnet18: {str(file)!r} holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        copied = model.init_from_resnet18(state)
    except KeyError as exc:
        raise ConfigError(f"embedding.init_resnet18: {str(file)!r}: {exc.args[0]}") from exc
    log.info("encoder initialised from %s (%d tensors)", file, len(copied))
    return str(file)


def embed_tiles(trained: TrainedAutoencoder | Autoencoder, tiles: np.ndarray, batch_size: int = 512,
                device: torch.device | str | None = None) -> np.ndarray:
    """Latent vectors of tiles.

    Parameters
    ----------
    trained : TrainedAutoencoder or Autoencoder
    tiles : (n, p, p, 3) uint8 ndarray

    Returns
    -------
    latents : (n, 256) float32 ndarray
        The encoder's 64 x 2 x 2 output, flattened.
    """
    if isinstance(trained, TrainedAutoencoder):
        model, device = trained.model, trained.device
    else:
        model = trained
        device = torch.device(device or next(model.parameters()).device)
    model.to(device).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(tiles), batch_size):
            batch = _to_tensor(tiles[start : start + batch_size]).to(device)
            out.append(model.encoder(batch).flatten(1).float().cpu().numpy())
    if not out:
        return np.zeros((0, 256), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def reconstruct(model: Autoencoder, tiles: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """(n, p, p, 3) uint8 reconstructions of tiles (for the report's examples)."""
    model.to(device).eval()
    with torch.no_grad():
        recon = model(_to_tensor(tiles).to(device)).cpu().numpy()
    return (recon.transpose(0, 2, 3, 1) * 255.0).round().clip(0, 255).astype(np.uint8)


def save_checkpoint(model: Autoencoder, folder: str | Path, info: dict) -> None:
    """Write ``model.pt`` (state dict) and ``model.json`` (tile_px and ``info``) into ``folder``."""
    folder = Path(folder)
    torch.save(model.state_dict(), folder / CHECKPOINT_WEIGHTS)
    meta = {"architecture": "tumls-autoencoder", "tile_px": model.tile_px, "latent": [64, 2, 2],
            "torch": torch.__version__, **info}
    (folder / CHECKPOINT_CONFIG).write_text(json.dumps(meta, indent=2, default=_json_default))


def load_checkpoint(folder: str | Path) -> tuple[Autoencoder, dict]:
    """Read a checkpoint written by :func:`save_checkpoint` (on the CPU)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / CHECKPOINT_CONFIG).read_text())
        state = torch.load(folder / CHECKPOINT_WEIGHTS, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"cannot read the model checkpoint in {str(folder)!r}: {exc}") from exc
    model = Autoencoder(int(meta["tile_px"]))
    model.load_state_dict(state)
    model.eval()
    return model, meta


def _json_default(value: object) -> object:
    if isinstance(value, TrainingHistory):
        return asdict(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
