"""Self-supervised contrastive embedding (SimCLR) trained on the slide's own tiles.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations"
(ICML 2020), as Proto2Seg uses it, scaled down to train in minutes on a CPU: two
augmented views of every tile (``augment``: crops and scale, 90° rotations and flips, H&E
stain jitter in optical-density space, blur) go through a small convolutional encoder and
a projection head; the NT-Xent loss pulls the two views of a tile together and pushes
the other tiles of the batch away. What survives the augmentations is what the encoder
learns: tissue architecture and cell arrangement, not staining, orientation or focus.
The tile's vector is the encoder's pooled output (before the projection head).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .augment import Augmentation, augment

__all__ = ["ConvEncoder", "ContrastiveModel", "ContrastiveHistory", "train_contrastive", "encode"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolutions with batch norm and ReLU, the first with stride 2."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class ConvEncoder(nn.Module):
    """(n, 3, p, p) images in [0, 1] -> (n, width * 8) vectors: four stride-2 stages, global average pooling."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.width = width
        chans = [width, width * 2, width * 4, width * 8]
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        stages, c = [], width
        for out in chans:
            stages.append(_block(c, out))
            c = out
        self.stages = nn.Sequential(*stages)
        self.out_dim = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x * 2.0 - 1.0))
        return x.mean(dim=(2, 3))


class ContrastiveModel(nn.Module):
    """Encoder + projection head (a two-layer MLP, as in SimCLR)."""

    def __init__(self, width: int = 16, projection: int = 64) -> None:
        super().__init__()
        self.encoder = ConvEncoder(width)
        d = self.encoder.out_dim
        self.head = nn.Sequential(nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(inplace=True), nn.Linear(d, projection))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


@dataclass
class ContrastiveHistory:
    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    steps: int = 0


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross entropy over the 2n views of a batch."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.T / temperature
    sim.fill_diagonal_(-math.inf)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def _to_tensor(views: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(views)).permute(0, 3, 1, 2).float().div_(255.0)


def train_contrastive(
    views: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    temperature: float,
    width: int,
    aug: Augmentation,
    device: torch.device,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ContrastiveModel, ContrastiveHistory]:
    """Train on ``views`` ((n, p, p, 3) uint8); returns the model (eval mode) and its history.

    Exactly ``steps`` optimiser steps whatever the number of tiles: passes over the tiles in
    a fresh random order each (the last one cut short where the budget ends), so a small slide
    gets many passes and a large one part of one, and training costs the same on both.
    Adam with a cosine learning-rate decay over the ``steps``. Batches are converted to float
    one at a time, so memory does not grow with the tiles either.
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(np.ascontiguousarray(views))
    n = len(data)
    batch = min(batch_size, n)
    per_epoch = max(1, n // batch)
    epochs = math.ceil(steps / per_epoch)
    model = ContrastiveModel(width).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    history = ContrastiveHistory(device=str(device))
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(n, generator=g)
        losses = []
        for step in range(min(per_epoch, steps - history.steps)):
            x = data[order[step * batch : (step + 1) * batch]].permute(0, 3, 1, 2).float().div_(255.0)
            v1, v2 = augment(x, aug, g).to(device), augment(x, aug, g).to(device)
            loss = nt_xent(model(v1), model(v2), temperature)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
            history.steps += 1
        history.loss.append(float(np.mean(losses)))
        if progress is not None:
            progress(epoch, epochs)
    history.seconds = time.perf_counter() - started
    model.eval()
    return model, history


def encode(model: ContrastiveModel, views: np.ndarray, out_px: int, device: torch.device,
           batch_size: int = 256) -> np.ndarray:
    """Encoder vectors of ``views`` resampled to ``out_px`` (the training resolution), averaged over
    the eight 90° rotations and flips, so that a tile's vector does not depend on its orientation."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(views), batch_size):
            x = _to_tensor(views[start : start + batch_size])
            if x.shape[-1] != out_px:
                x = F.interpolate(x, size=(out_px, out_px), mode="area" if x.shape[-1] > out_px else "bilinear")
            x = x.to(device)
            acc = 0
            for flip in (False, True):
                xf = x.flip(-1) if flip else x
                for k in range(4):
                    acc = acc + model.encoder(torch.rot90(xf, k, dims=(2, 3)))
            out.append((acc / 8).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.encoder.out_dim), dtype=np.float32)
