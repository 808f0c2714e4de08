"""Run-time self-training on MoNuSeg: a small U-Net learns each image from the confident nuclei of mask 2.

No weights are shipped and no annotation is used: for every image a fresh network is trained on
that image alone, with mask 2 of ``segment_nuclei`` as pseudo-labels, then used to segment it.

* Pseudo-labels, at 0.5 µm/px: *nucleus* (objects of mask 2 of 0.4-1.6 times the image's
  typical (median) area), *boundary* (their outer pixels and the lines between touching ones),
  *background* (every other pixel outside mask 2); ignored: the other objects of mask 2 and
  the 2 µm around them (possibly merged or debris), artefact pixels, and with ``--band-um B``
  a band of B µm on either side of each confident outline (so that the network places the
  outlines itself).
* Network: a 3-level U-Net (``--channels`` 16-32-64, batch norm), input the optical density
  of R, G, B standardised over the image; ``--iterations`` steps of Adam (lr 3e-3) on batches
  of 8 random 96 x 96 crops (24 µm at 0.5 µm/px) with flips and quarter turns; weighted
  cross-entropy (boundary x2).
* Output scored two ways (mask 2, means over images): **net** (instances of the network
  alone: cores where nucleus > 0.5 and > boundary, a watershed of boundary - nucleus within
  nucleus + boundary > 0.5), and **net foreground, mask 2 splits** (the network's foreground,
  each pixel to the nearest object of mask 2 within 3 µm).

Times: CPU seconds of the training thread (one thread) and wall seconds, per image; the
segmentation's own time is not included.

    python benchmarks/monuseg_self_train.py                   # dev part
    python benchmarks/monuseg_self_train.py --band-um 0.75 --limit 2
    python benchmarks/monuseg_self_train.py --device cuda     # on a machine with a GPU
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from monuseg_split import DEFAULT_FOLDER, ROOT, split_halves  # noqa: E402

_CROP = 96
_BATCH = 8
_WORK_MPP = 0.5


def _unet(channels: int):
    import torch
    from torch import nn

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                             nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    class UNet(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.e1, self.e2, self.e3 = block(3, c), block(c, 2 * c), block(2 * c, 4 * c)
            self.u2, self.d2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, 2), block(4 * c, 2 * c)
            self.u1, self.d1 = nn.ConvTranspose2d(2 * c, c, 2, 2), block(2 * c, c)
            self.out = nn.Conv2d(c, 3, 1)

        def forward(self, x):
            a = self.e1(x)
            b = self.e2(nn.functional.max_pool2d(a, 2))
            c = self.e3(nn.functional.max_pool2d(b, 2))
            b = self.d2(torch.cat([self.u2(c), b], 1))
            return self.out(self.d1(torch.cat([self.u1(b), a], 1)))

    return UNet(channels)


def pseudo_labels(seg, mpp: float, band_um: float) -> np.ndarray:
    """(H, W) int64: 0 background, 1 nucleus, 2 boundary, -1 ignored (see the module docstring)."""
    labels = seg.mask2
    area = np.bincount(labels.ravel())
    typical = float(np.median(area[1:][area[1:] > 0])) if (area[1:] > 0).any() else 0.0
    confident = (area >= 0.4 * typical) & (area <= 1.6 * typical)
    confident[0] = False
    conf = confident[labels]
    as_float = labels.astype(np.float32)
    k3 = np.ones((3, 3), np.uint8)
    edge = (cv2.dilate(as_float, k3) != cv2.erode(as_float, k3)) & (labels > 0)
    reach = int(2 * 2.0 / mpp) | 1
    near_other = cv2.dilate(((labels > 0) & ~conf).view(np.uint8),
                            cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (reach, reach))) > 0
    y = np.full(labels.shape, -1, dtype=np.int64)
    y[(labels == 0) & ~near_other & ~seg.artefacts] = 0
    y[conf] = 1
    y[conf & edge] = 2
    if band_um > 0:
        inside = cv2.distanceTransform(conf.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
        outside = cv2.distanceTransform((~conf).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_5)
        y[(inside > 0) & (inside <= band_um / mpp) & ~edge] = -1
        y[(outside > 0) & (outside <= band_um / mpp)] = -1
    return y


def self_train(rgb: np.ndarray, mpp: float, seg, *, iterations: int, channels: int, band_um: float,
               device: str) -> tuple[np.ndarray, float, float]:
    """(3, H, W) float32 probabilities (background, nucleus, boundary), training CPU s, training wall s."""
    import torch

    factor = max(1, int(round(_WORK_MPP / mpp)))
    small = cv2.resize(rgb, (rgb.shape[1] // factor, rgb.shape[0] // factor), interpolation=cv2.INTER_AREA)
    y = pseudo_labels(seg, mpp, band_um)[factor // 2::factor, factor // 2::factor][:small.shape[0], :small.shape[1]]
    od = -np.log((small.astype(np.float32) + 1.0) / 256.0)
    od = (od - od.reshape(-1, 3).mean(0)) / (od.reshape(-1, 3).std(0) + 1e-6)
    x_all = torch.from_numpy(od.transpose(2, 0, 1).copy())[None].to(device)
    y_all = torch.from_numpy(y).to(device)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = _unet(channels).to(device)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    weight = torch.tensor([1.0, 1.0, 2.0], device=device)
    height, width = y.shape
    t0, c0 = time.perf_counter(), time.thread_time()
    for _ in range(iterations):
        rows = rng.integers(0, height - _CROP, _BATCH)
        cols = rng.integers(0, width - _CROP, _BATCH)
        xb = torch.stack([x_all[0, :, r:r + _CROP, c:c + _CROP] for r, c in zip(rows, cols)])
        yb = torch.stack([y_all[r:r + _CROP, c:c + _CROP] for r, c in zip(rows, cols)])
        turns = int(rng.integers(4))
        xb, yb = torch.rot90(xb, turns, (2, 3)), torch.rot90(yb, turns, (1, 2))
        if rng.random() < 0.5:
            xb, yb = xb.flip(3), yb.flip(2)
        loss = torch.nn.functional.cross_entropy(net(xb), yb, weight=weight, ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    net.eval()
    h4, w4 = (height // 4) * 4, (width // 4) * 4
    with torch.no_grad():
        prob = torch.softmax(net(x_all[:, :, :h4, :w4]), 1)[0].cpu().numpy()
    full = np.zeros((3,) + rgb.shape[:2], dtype=np.float32)
    full[0] = 1.0
    for i in range(3):
        up = cv2.resize(prob[i], (w4 * factor, h4 * factor), interpolation=cv2.INTER_LINEAR)
        full[i, :up.shape[0], :up.shape[1]] = up[:rgb.shape[0], :rgb.shape[1]]
    return full, cpu, wall


def net_instances(prob: np.ndarray, mpp: float) -> np.ndarray:
    from skimage.segmentation import watershed

    foreground = prob[1] + prob[2] > 0.5
    core = ((prob[1] > 0.5) & (prob[1] > prob[2])).view(np.uint8)
    core = cv2.morphologyEx(core, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    _, seeds = cv2.connectedComponents(core, connectivity=8)
    out = watershed(prob[2] - prob[1], seeds, mask=foreground)
    small = np.bincount(out.ravel()) < 8.0 / mpp ** 2
    small[0] = False
    out[small[out]] = 0
    return out


def net_foreground_mask2_splits(prob: np.ndarray, mask2: np.ndarray, mpp: float) -> np.ndarray:
    from scipy import ndimage as ndi

    distance, index = ndi.distance_transform_edt(mask2 == 0, return_indices=True)
    nearest = mask2[index[0], index[1]]
    return np.where((prob[1] + prob[2] > 0.5) & (distance < 3.0 / mpp), nearest, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=str(DEFAULT_FOLDER))
    parser.add_argument("--half", choices=("dev", "held", "all"), default="dev")
    parser.add_argument("--limit", type=int, default=0, help="only the first N images of the part (0: all)")
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--band-um", type=float, default=0.0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to torch on this machine; use --device cpu")
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from tumls_qp.cells.nuclei import segment_nuclei
    from tumls_qp.evaluation._benchmark import load_average
    from tumls_qp.evaluation.monuseg import image_metrics, list_monuseg, read_monuseg_image

    items = list_monuseg(args.folder)
    dev, held = split_halves(items)
    ids = sorted({"dev": dev, "held": held, "all": dev + held}[args.half])
    if args.limit > 0:
        ids = ids[:args.limit]
    print(f"{args.folder}, {args.half} part, {len(ids)} images; iterations {args.iterations}, channels "
          f"{args.channels}, band {args.band_um} µm, device {args.device}; load average {load_average()}\n")
    print("| image | organ | output | Dice | AJI | F1 obj | training CPU s | training wall s |\n"
          "|---|---|---|---|---|---|---|---|")
    names = ("mask 2", "net", "net foreground, mask 2 splits")
    totals: dict[str, list[dict]] = {n: [] for n in names}
    times = []
    for item in (it for it in items if it.image_id in ids):
        rgb, truth, mpp = read_monuseg_image(item)
        seg = segment_nuclei(rgb, mpp)
        prob, cpu, wall = self_train(rgb, mpp, seg, iterations=args.iterations, channels=args.channels,
                                     band_um=args.band_um, device=args.device)
        times.append((cpu, wall))
        for name, labels in zip(names, (seg.mask2, net_instances(prob, mpp),
                                        net_foreground_mask2_splits(prob, seg.mask2, mpp))):
            m = image_metrics(truth, labels)
            totals[name].append(m)
            print(f"| {item.image_id} | {item.organ} | {name} | {m['dice']:.4f} | {m['aji']:.4f} | "
                  f"{m['f1_object']:.4f} | {cpu:.1f} | {wall:.1f} |", flush=True)
    for name in names:
        mean = {k: float(np.mean([m[k] for m in totals[name]])) for k in ("dice", "aji", "f1_object")}
        print(f"| **mean** | | {name} | {mean['dice']:.4f} | {mean['aji']:.4f} | {mean['f1_object']:.4f} | "
              f"{np.mean([t[0] for t in times]):.1f} | {np.mean([t[1] for t in times]):.1f} |")
    print(f"\nload average after: {load_average()}")
    return 0 if all(math.isfinite(t[0]) for t in times) else 1


if __name__ == "__main__":
    raise SystemExit(main())
