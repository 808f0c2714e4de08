"""Autoencoder training speed on each available device, side by side in one run.

Tiles are cut from a synthetic two-tissue scene at the tissue level (16 x 16 px at
16 µm/px, the defaults). Each device trains the same number of epochs from the same
seed (early stopping off); the report gives seconds per epoch, tiles per second, the
final validation MSE, and how far the CUDA and CPU embeddings of one model differ.

    python benchmarks/autoencoder_devices.py --tiles 20000 --epochs 5
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np


def _tiles(n: int, seed: int) -> np.ndarray:
    from tumls_qp.testing import render_scene

    side = int(np.ceil(np.sqrt(n)))
    size_um = (side * 256.0, side * 256.0)
    scene = render_scene("two-tissues", 0, 0, side * 16, side * 16, 16.0, size_um, seed)
    tiles = scene.reshape(side, 16, side, 16, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 16, 16, 3)
    return np.ascontiguousarray(tiles[:n])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    import torch

    from tumls_qp.config import EmbeddingConfig
    from tumls_qp.tissue.embeddings import embed_tiles, train_autoencoder

    tiles = _tiles(args.tiles, 0)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, Python {platform.python_version()}"
          + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no CUDA device"))
    print(f"{len(tiles)} tiles of 16 x 16 px, {args.epochs} epochs, batch 128\n")
    print("| device | s/epoch | tiles/s (training) | val MSE | embed s |")
    print("|---|---|---|---|---|")
    models = {}
    for device in devices:
        cfg = EmbeddingConfig(device=device, max_epochs=args.epochs, patience=args.epochs)
        start = time.perf_counter()
        trained = train_autoencoder(tiles, cfg, seed=0)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        embed_tiles(trained, tiles)
        embed_s = time.perf_counter() - start
        n_train = trained.history.n_tiles["train"]
        print(f"| {device} | {seconds / args.epochs:.2f} | {n_train * args.epochs / seconds:.0f} | "
              f"{trained.history.mse['val']:.5f} | {embed_s:.2f} |")
        models[device] = trained.model
    if "cuda" in models:
        model = models["cuda"]
        cpu = embed_tiles(model, tiles[:2048], device="cpu")
        gpu = embed_tiles(model, tiles[:2048], device="cuda")
        print(f"\nsame weights, CPU vs CUDA latents: max |difference| {np.abs(cpu - gpu).max():.2e}, "
              f"latent std {cpu.std():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
