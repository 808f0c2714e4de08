"""The TUMLS autoencoder: a ResNet18-style encoder to a 2 x 2 x 64 latent and a small CNN decoder.

The encoder's first layers carry torchvision's ResNet18 names and shapes (``conv1``,
``bn1``, ``layer1``), so a torchvision-format state dict can initialise them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Autoencoder", "Encoder", "Decoder", "LATENT_CHANNELS", "LATENT_SIDE", "IMAGENET_MEAN", "IMAGENET_STD"]

LATENT_CHANNELS = 64
LATENT_SIDE = 2
#: Input normalisation of ResNet18's ImageNet weights; applied always, so that an
#: initialised encoder sees the inputs it was trained on.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions and a skip), torchvision's parameter names."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class Encoder(nn.Module):
    """(n, 3, p, p) images in [0, 1] -> (n, 64, 2, 2) latents.

    ResNet18's stem (7x7 stride-2 convolution, batch norm, 3x3 stride-2 max pool) and
    ``layer1`` (two basic blocks, 64 channels) bring a p-pixel tile to p/4; stride-2
    3x3 convolutions then bring it to 2 x 2. The last one has batch norm and no
    activation, so latents are centred and signed.
    """

    def __init__(self, tile_px: int) -> None:
        super().__init__()
        if tile_px < 8 or tile_px & (tile_px - 1):
            raise ValueError(f"tile_px must be a power of two >= 8; got {tile_px}")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(64), BasicBlock(64))
        n_down = int(math.log2(tile_px // 4)) - 1
        head: list[nn.Module] = []
        for _ in range(max(n_down - 1, 0)):
            head += [nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
        head += [
            nn.Conv2d(64, LATENT_CHANNELS, 3, stride=2 if n_down >= 1 else 1, padding=1, bias=False),
            nn.BatchNorm2d(LATENT_CHANNELS),
        ]
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.head(self.layer1(x))


class Decoder(nn.Module):
    """(n, 64, 2, 2) latents -> (n, 3, p, p) images in [0, 1]: transposed convolutions, batch norm, ReLU."""

    def __init__(self, tile_px: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = LATENT_CHANNELS
        side = LATENT_SIDE
        while side < tile_px:
            out = max(32, channels // 2) if side * 2 >= tile_px // 2 else channels
            layers += [nn.ConvTranspose2d(channels, out, 4, stride=2, padding=1), nn.BatchNorm2d(out), nn.ReLU(True)]
            channels, side = out, side * 2
        layers += [nn.Conv2d(channels, 3, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Autoencoder(nn.Module):
    """Encoder + decoder for ``tile_px`` x ``tile_px`` RGB tiles."""

    def __init__(self, tile_px: int) -> None:
        super().__init__()
        self.tile_px = tile_px
        self.encoder = Encoder(tile_px)
        self.decoder = Decoder(tile_px)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def init_from_resnet18(self, state_dict: dict[str, torch.Tensor]) -> list[str]:
        """Copy ``conv1``, ``bn1`` and ``layer1`` from a torchvision ResNet18 state dict; returns the keys copied."""
        own = self.encoder.state_dict()
        wanted = [k for k in own if k.startswith(("conv1.", "bn1.", "layer1."))]
        missing = [k for k in wanted if k not in state_dict]
        if missing:
            raise KeyError(f"not a torchvision ResNet18 state dict: missing {', '.join(missing[:5])}")
        bad = [k for k in wanted if tuple(state_dict[k].shape) != tuple(own[k].shape)]
        if bad:
            raise KeyError(f"not a torchvision ResNet18 state dict: wrong shape for {', '.join(bad[:5])}")
        self.encoder.load_state_dict({k: state_dict[k] for k in wanted}, strict=False)
        return wanted
