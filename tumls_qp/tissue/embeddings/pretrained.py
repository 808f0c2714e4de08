"""Bring your own encoder: a timm architecture with the weights of a local checkpoint file.

The architecture is built by its timm name with ``pretrained=False`` and no classifier
(``num_classes=0``: the model's output is its pooled feature vector); names that would make
timm fetch a configuration from a hub are refused, so nothing is ever downloaded. Its weights
come from the lab's own file: a torch state dict (``.pth``, ``.pt``, ``.bin``, read with
``torch.load(..., weights_only=True)``), one nested under ``"state_dict"`` or ``"model"``, or
safetensors. The file's classifier-head weights, which the headless model lacks, are dropped
(logged); every other key must fit the architecture exactly.

Each view is resized to the model's input side (from timm's configuration of the
architecture, 224 px for most) and normalised with the model's own mean and standard
deviation; a tile's vector is the model's pooled output. timm is an optional dependency
(``pip install 'tumls-qp[pretrained]'``) and is imported here only.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ...errors import ConfigError

__all__ = ["PretrainedNet", "import_timm", "check_encoder", "load_pretrained", "read_checkpoint", "encode"]

log = logging.getLogger(__name__)

#: Views per forward pass.
BATCH = 64
INSTALL = "pip install 'tumls-qp[pretrained]'"


@dataclass
class PretrainedNet:
    """A headless timm model with its checkpoint's weights, and how it wants its input.

    Attributes
    ----------
    model : torch.nn.Module
        In eval mode; ``model(x)`` gives (n, ``dim``) pooled features.
    architecture : str
        The timm name it was built from.
    checkpoint : Path
        The weights file (resolved).
    sha256 : str
        SHA-256 of that file.
    input_px : int
        Side of the square input the model was built for.
    mean, std : tuple of 3 floats
        Per-channel normalisation of RGB in [0, 1].
    dropped : tuple of str
        Classifier-head keys of the file that the headless model has no place for.
    """

    model: torch.nn.Module
    architecture: str
    checkpoint: Path
    sha256: str
    input_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dropped: tuple[str, ...] = ()

    @property
    def dim(self) -> int:
        return int(self.model.num_features)


def import_timm() -> ModuleType:
    """timm, or a ConfigError that says how to install it."""
    try:
        import timm
    except ImportError as exc:
        raise ConfigError(f"embedding.method = 'pretrained' needs timm, which is not installed ({exc}): {INSTALL}; "
                          "or choose another embedding.method") from exc
    return timm


def _check_architecture(timm: ModuleType, name: str) -> None:
    """``name`` is a model timm builds here (optionally ``name.tag``), else a ConfigError with close names."""
    if name in timm.list_models() or name in timm.list_pretrained():
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(f"embedding.encoder = {name!r} is not an architecture timm {timm.__version__} knows; {hint}"
                      "python -c \"import timm; print(timm.list_models('*vit*'))\" lists them by pattern")


def _checkpoint_file(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise ConfigError(f"embedding.checkpoint = {str(path)!r} {what}: give the path of the encoder's weights file "
                          "(.pth, .pt, .bin or .safetensors)")
    return p.resolve()


def check_encoder(architecture: str, checkpoint: str | Path) -> None:
    """The checks that need no weights read: timm is installed, knows ``architecture``, and ``checkpoint`` is a file.

    Raises
    ------
    ConfigError
    """
    _check_architecture(import_timm(), architecture)
    _checkpoint_file(checkpoint)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a torch or safetensors file (unwrapped from ``"state_dict"`` or ``"model"``), on the CPU.

    Raises
    ------
    ConfigError
        Missing, not a torch/safetensors file, or no mapping of names to tensors in it.
    """
    p = _checkpoint_file(path)
    with p.open("rb") as f:
        head = f.read(9)
    try:
        if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch's zip format, or its legacy pickle
            obj: Any = torch.load(p, map_location="cpu", weights_only=True)
        elif len(head) == 9 and head[8:9] == b"{":  # safetensors: a little-endian header length, then JSON
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                obj = load_file(p, device="cpu")
            except SafetensorError as exc:
                raise ValueError(str(exc)) from exc
        else:
            raise ValueError("it is neither a torch file nor a safetensors file")
    except pickle.UnpicklingError as exc:  # torch's message suggests loading it unsafely: say what to do instead
        raise ConfigError(f"embedding.checkpoint = {str(path)!r} holds Python objects besides tensors (e.g. a whole "
                          "pickled model), which are never loaded: save the model's state_dict() (torch.save("
                          "model.state_dict(), ...)) or a safetensors file instead") from exc
    except (OSError, ValueError, RuntimeError, EOFError) as exc:
        raise ConfigError(f"embedding.checkpoint = {str(path)!r} cannot be read as a torch state dict (.pth, .pt, "
                          f".bin) or a safetensors file: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise ConfigError(f"embedding.checkpoint = {str(path)!r} holds no state dict (a mapping of parameter names to "
                          f"tensors, possibly under 'state_dict' or 'model'); it holds {type(obj).__name__}")
    others = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if others:
        raise ConfigError(f"embedding.checkpoint = {str(path)!r} is not a state dict: {', '.join(others[:3])} "
                          "are not named tensors")
    return dict(obj)


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _fit_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], architecture: str,
                 path: str | Path) -> tuple[str, ...]:
    """Load ``state`` into ``model`` strictly, less its classifier head's keys; returns the keys dropped."""
    own = model.state_dict()
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    dropped = tuple(k for k in state if k not in own and any(k == h or k.startswith(h + ".") for h in heads))
    state = {k: v for k, v in state.items() if k not in dropped}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    where = f"embedding.checkpoint = {str(path)!r} does not fit embedding.encoder = {architecture!r}"
    fix = "name the architecture the checkpoint was saved from (timm's name for it), or give its own checkpoint"
    if missing or unexpected:
        parts = ([f"{len(missing)} weights missing from the file ({_names(missing)})"] if missing else []) + \
                ([f"{len(unexpected)} unexpected ({_names(unexpected)})"] if unexpected else [])
        raise ConfigError(f"{where}: {'; '.join(parts)}; {fix}")
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ConfigError(f"{where}: {key} has shape {tuple(state[key].shape)} in the file, "
                              f"{tuple(value.shape)} in the architecture; {fix}")
    model.load_state_dict(state, strict=True)
    if dropped:
        log.info("%s: dropped the classifier head's weights (%s); the encoder's output is its pooled features",
                 Path(path).name, _names(list(dropped)))
    return dropped


def load_pretrained(architecture: str, checkpoint: str | Path, expect_sha256: str | None = None) -> PretrainedNet:
    """Build ``architecture`` headless with timm (nothing downloaded) and load ``checkpoint`` into it, on the CPU.

    Parameters
    ----------
    architecture : str
        A timm model name (``embedding.encoder``).
    checkpoint : path-like
        Its weights (``embedding.checkpoint``).
    expect_sha256 : str, optional
        The file must still be the one a run recorded (an encoder read back from a run folder).

    Raises
    ------
    ConfigError
        timm missing, unknown architecture, unreadable or unfitting checkpoint, or a changed file.
    """
    timm = import_timm()
    _check_architecture(timm, architecture)
    path = _checkpoint_file(checkpoint)
    digest = _sha256(path)
    if expect_sha256 is not None and digest != expect_sha256:
        raise ConfigError(f"embedding.checkpoint = {str(checkpoint)!r} has changed since this encoder was used "
                          f"(SHA-256 {digest[:12]}..., recorded {expect_sha256[:12]}...): put the original file back "
                          "there, or analyse the slides again with the new one")
    state = read_checkpoint(path)
    model = timm.create_model(architecture, pretrained=False, num_classes=0)
    dropped = _fit_weights(model, state, architecture, checkpoint)
    data = timm.data.resolve_model_data_config(model)
    side = data["input_size"][-1]
    return PretrainedNet(model=model.eval(), architecture=architecture, checkpoint=path, sha256=digest,
                         input_px=int(side), mean=tuple(float(v) for v in data["mean"]),
                         std=tuple(float(v) for v in data["std"]), dropped=dropped)


def encode(net: PretrainedNet, views: np.ndarray, device: torch.device,
           progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(n, ``net.dim``) float32 pooled features of (n, p, p, 3) uint8 ``views``, in batches, without gradients.

    Views of another side than ``net.input_px`` are resized to it (bilinear, antialiased).
    """
    model = net.model.to(device).eval()
    side = net.input_px
    mean = torch.tensor(net.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(net.std, device=device).view(1, 3, 1, 1)
    out = []
    batches = -(-len(views) // BATCH)
    with torch.inference_mode():
        for b, start in enumerate(range(0, len(views), BATCH)):
            x = torch.from_numpy(np.ascontiguousarray(views[start : start + BATCH])).to(device)
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            if x.shape[-1] != side or x.shape[-2] != side:
                x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            y = model((x - mean) / std)
            out.append(y.reshape(len(y), -1).float().cpu().numpy())
            if progress is not None:
                progress(b + 1, batches)
    return np.concatenate(out) if out else np.zeros((0, net.dim), dtype=np.float32)
