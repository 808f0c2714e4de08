"""CPU vs CUDA in one run: every embedding method's training and embedding, nucleus segmentation, one slide end to end.

Real data from ../shared/data (or --data):

- embedding methods: the LC25000 tiles (``lc25000_224``, 617 H&E tiles of 5 classes), with their
  90° rotations when more tiles are asked for; each tile is the method's tissue-level tile
  (``tiles.tile_px``) or its view (``embedding.view_px``). Every method that the embeddings package
  declares (``tumls_qp.tissue.embeddings.METHODS``; the TUMLS autoencoder alone where it declares
  none) is trained for the same number of epochs from the same seed on each device (early
  stopping off); the table gives training and embedding seconds and how far the vectors of one
  trained model differ between the devices;
- nucleus segmentation: the MoNuSeg development images (``monuseg_train``, 1000 x 1000 px at
  0.25 µm/px). It is classical image processing (OpenCV, scikit-image) with no CUDA path: it is
  timed once, on the CPU, and runs there whatever the device;
- one slide end to end: a mosaic of LC25000 tiles (``tumls_qp.evaluation.mosaic``) analysed with
  ``--device cpu`` and ``--device cuda``, seconds per stage.

Without a CUDA device it says so and stops (exit status 0) unless ``--cpu-only`` asks for the CPU
half alone (to check the script). It prints the machine, the device name and the load.

    python benchmarks/gpu.py                      # on a machine with a CUDA GPU
    python benchmarks/gpu.py --cpu-only --tiles 617 --epochs 2 --images 2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _lc25000(folder: Path, n: int) -> list[np.ndarray]:
    from PIL import Image

    files = sorted(folder.glob("*.jpeg"))
    if not files:
        sys.exit(f"no LC25000 tiles in {folder}: give --data (the folder holding lc25000_224/)")
    images = []
    for path in files:
        with Image.open(path) as image:
            images.append(np.asarray(image.convert("RGB")))
    out = [np.rot90(images[i % len(images)], i // len(images)) for i in range(n)]
    return [np.ascontiguousarray(t) for t in out]


def _resize(tiles: list[np.ndarray], px: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(t).resize((px, px), Image.Resampling.BOX)) for t in tiles])


def _methods() -> tuple[str, ...]:
    from tumls_qp.tissue import embeddings

    return tuple(getattr(embeddings, "METHODS", ("tumls-ae",)))


def _embedding_config(method: str, device: str, epochs: int, steps: int):
    from tumls_qp.config import EmbeddingConfig

    names = {f.name for f in dataclasses.fields(EmbeddingConfig)}
    options = {"device": device, "max_epochs": epochs, "patience": epochs, "method": method,
               "contrastive_steps": steps, "vade_epochs": epochs}
    return EmbeddingConfig(**{k: v for k, v in options.items() if k in names})


def _fit(method: str, device: str, tiles: np.ndarray, views: np.ndarray, view_mpp: float, epochs: int,
         steps: int) -> tuple[float, float, object, object]:
    """(training s, embedding s, the fitted model, the images it embeds) of ``method`` on ``device``."""
    from tumls_qp.tissue import embeddings

    cfg = _embedding_config(method, device, epochs, steps)
    if hasattr(embeddings, "fit_embedding"):
        images = embeddings.TileImages(tiles=tiles, views=views, view_mpp=view_mpp)
        start = time.perf_counter()
        fitted = embeddings.fit_embedding(images, cfg, seed=0)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        fitted.encoder.embed(images)
        return train_s, time.perf_counter() - start, fitted.encoder, images
    start = time.perf_counter()
    trained = embeddings.train_autoencoder(tiles, cfg, seed=0)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    embeddings.embed_tiles(trained, tiles)
    return train_s, time.perf_counter() - start, trained.model, tiles


def _vectors(model: object, images: object, device: str) -> np.ndarray:
    from tumls_qp.tissue import embeddings

    if hasattr(model, "embed"):
        return np.asarray(model.to(device).embed(images))  # type: ignore[attr-defined]
    return embeddings.embed_tiles(model, images, device=device)


def _nuclei(folder: Path, n: int) -> tuple[int, float, int]:
    """(images, seconds per image, nuclei) of nucleus segmentation on the MoNuSeg development images."""
    import tifffile

    from tumls_qp.cells.nuclei import segment_nuclei

    files = sorted(folder.glob("*.tif"))[:n]
    if not files:
        sys.exit(f"no MoNuSeg images in {folder}: give --data (the folder holding monuseg_train/)")
    seconds, nuclei = 0.0, 0
    for path in files:
        rgb = tifffile.imread(path)[..., :3].astype(np.uint8)
        start = time.perf_counter()
        result = segment_nuclei(rgb, 0.25)
        seconds += time.perf_counter() - start
        nuclei += int(result.mask2.max())
    return len(files), seconds / len(files), nuclei


def _slide(data: Path, folder: Path, devices: list[str], epochs: int) -> None:
    from tumls_qp.config import PipelineConfig, replace_in
    from tumls_qp.evaluation.mosaic import build_mosaic
    from tumls_qp.pipeline import STAGES, analyze

    mosaic = build_mosaic(data / "lc25000_224", ["colon_aca", "colon_n", "lung_scc"], folder / "mosaic.tif",
                          regions=(3, 3), region_cells=3, mpp=0.5, seed=0)
    print(f"\nOne slide end to end: a {mosaic.slide.name} of LC25000 tiles (3 classes, 9 x 9 cells of 224 px at "
          f"0.5 µm/px), tiles of {mosaic.cell_um / 4:g} µm, autoencoder for {epochs} epochs, no PDF.\n")
    print("| device | " + " | ".join(f"{s} s" for s in STAGES) + " | total s |")
    print("|---|" + "---|" * (len(STAGES) + 1))
    for device in devices:
        config = replace_in(PipelineConfig(), **{"tiles.tile_um": mosaic.cell_um / 4, "embedding.device": device,
                                                 "embedding.max_epochs": epochs, "output.report": False})
        start = time.perf_counter()
        [result] = analyze([mosaic.slide], folder / device, config)
        total = time.perf_counter() - start
        t = result.manifest.timings_s
        print(f"| {device} | " + " | ".join(f"{t.get(s, 0.0):.2f}" for s in STAGES) + f" | {total:.2f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared data folder (default ../shared/data)")
    parser.add_argument("--tiles", type=int, default=2468, help="tiles per method (LC25000 and its rotations)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per method (early stopping off)")
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps of the contrastive method")
    parser.add_argument("--images", type=int, default=13, help="MoNuSeg development images for the nuclei")
    parser.add_argument("--cpu-only", action="store_true", help="run the CPU half without a CUDA device")
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"python {sys.executable} benchmarks/gpu.py " + " ".join(sys.argv[1:]))
    print(f"torch {torch.__version__} (built {'with' if torch.backends.cuda.is_built() else 'without'} CUDA), "
          f"{torch.get_num_threads()} CPU threads, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.platform()}; load average {load}")
    if cuda:
        props = torch.cuda.get_device_properties(0)
        print(f"CUDA device: {torch.cuda.get_device_name(0)}, {props.total_memory / 2**30:.0f} GiB, "
              f"CUDA {torch.version.cuda}")
    else:
        print("No CUDA device: " + ("running the CPU half only (--cpu-only)." if args.cpu_only else
                                    "nothing to compare. Run this on a machine with a CUDA GPU and a CUDA build of "
                                    "torch (install it into .venv first; `make` keeps it), or add --cpu-only."))
        if not args.cpu_only:
            return 0
    devices = ["cpu"] + (["cuda"] if cuda else [])

    from tumls_qp.config import EmbeddingConfig, TileConfig

    tile_px = TileConfig().tile_px
    view_cfg = EmbeddingConfig()
    view_px = getattr(view_cfg, "view_px", 64)
    view_mpp = getattr(view_cfg, "view_um", 256.0) / view_px
    images = _lc25000(args.data / "lc25000_224", args.tiles)
    tiles, views = _resize(images, tile_px), _resize(images, view_px)
    methods = _methods()
    print(f"\nEmbedding methods {', '.join(methods)}: {len(tiles)} LC25000 tiles ({tile_px} px tissue-level tiles, "
          f"{view_px} px views), {args.epochs} epochs ({args.steps} steps for contrastive), seed 0.\n")
    print("| method | device | training s | embedding s | tiles/s embedded | max abs difference of the vectors, "
          "same model, CPU vs CUDA |")
    print("|---|---|---|---|---|---|")
    for method in methods:
        for device in devices:
            train_s, embed_s, model, inputs = _fit(method, device, tiles, views, view_mpp, args.epochs, args.steps)
            agree = "-"
            if device == "cuda":
                cpu, gpu = _vectors(model, inputs, "cpu"), _vectors(model, inputs, "cuda")
                agree = f"{np.abs(cpu - gpu).max():.2e} (vector std {cpu.std():.3f})"
            print(f"| {method} | {device} | {train_s:.2f} | {embed_s:.2f} | {len(tiles) / max(embed_s, 1e-9):.0f} | "
                  f"{agree} |")

    n, per_image, nuclei = _nuclei(args.data / "monuseg_train", args.images)
    print(f"\nNucleus segmentation (CPU only: no CUDA path): {n} MoNuSeg development images, {per_image:.2f} s per "
          f"1000 x 1000 px image, {nuclei} nuclei; the same on a GPU machine.")
    with tempfile.TemporaryDirectory() as folder:
        _slide(args.data, Path(folder), devices, args.epochs)
    print(f"\nload average at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
