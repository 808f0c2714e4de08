"""Self-training a small network on the gland method's confident pixels (GlaS train): does it help?

The last stage of the gland-segmentation proposal the method comes from: a segmentation network
trained on the first stage's pseudo-labels. Here the pseudo-labels are the glands of
``segment_glands`` at its working resolution: **confident gland** = gland pixels at least
``--margin`` px inside a gland, **confident background** = pixels at least ``--margin`` px away
from any gland, the band between them left out (class-balanced binary cross-entropy). No GlaS mask
is used in training; the masks only score the result. The network is a 3-level U-Net in plain
torch (``--channels`` wide at full resolution, twice that below), trained from scratch:

* ``--scope image``: one network per image, trained on that image alone (what a case would do on
  each representative patch);
* ``--scope set``: one network for all the images, trained on crops drawn from all of them (what a
  case would do once over its representative patches; the proposal's own protocol).

Its gland probability then replaces or refines the rule's mask; each way is scored:

* ``replace``: the network's mask (p > 0.5, in tissue);
* ``band``: the rule's confident pixels kept, the network decides in the uncertain band;
* ``avg``: the mean of p and the rule's mask blurred over ``--margin`` px, above 0.5;
* ``union0.7/0.8/0.9``: the rule's mask plus the network's confident glands (p above 0.7/0.8/0.9);

each followed by the method's own interior filling and smallest-gland rule. Scores are pooled mIoU at
the working resolution (the GlaS masks area-resampled to it; within 0.0003 of ``tumls-qp eval glas``).
Prints the scores per grade, how well the network fits its pseudo-labels, the seconds of training
and the load average. CPU, one torch thread:

    python benchmarks/glands_self_training.py --scope image --every 4 --inputs maps --iters 60 --crop 64
    python benchmarks/glands_self_training.py --scope set --inputs od --iters 1000 --crop 64 --seed 0
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from tumls_qp.cells import glands as G
from tumls_qp.config import GlandConfig
from tumls_qp.evaluation.glas import list_glas, read_glas_image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GLAS_MPP = 0.62


class UNet(torch.nn.Module):
    """A 3-level U-Net: ``c`` channels at full resolution, ``2c`` at half and quarter."""

    def __init__(self, cin: int, c: int):
        super().__init__()

        def block(a: int, b: int) -> torch.nn.Sequential:
            return torch.nn.Sequential(
                torch.nn.Conv2d(a, b, 3, padding=1), torch.nn.BatchNorm2d(b), torch.nn.ReLU(),
                torch.nn.Conv2d(b, b, 3, padding=1), torch.nn.BatchNorm2d(b), torch.nn.ReLU())

        self.e1, self.e2, self.e3 = block(cin, c), block(c, 2 * c), block(2 * c, 2 * c)
        self.d2, self.d1 = block(4 * c, c), block(2 * c, c)
        self.out = torch.nn.Conv2d(c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.e1(x)
        b = self.e2(F.max_pool2d(a, 2))
        c = self.e3(F.max_pool2d(b, 2))
        d = self.d2(torch.cat([F.interpolate(c, size=b.shape[-2:], mode="bilinear", align_corners=False), b], 1))
        d = self.d1(torch.cat([F.interpolate(d, size=a.shape[-2:], mode="bilinear", align_corners=False), a], 1))
        return self.out(d)


def prepare(item, cfg: GlandConfig, inputs: str, margin: int) -> dict:
    """The image at the working resolution, the rule's glands, the network input and the pseudo-labels."""
    rgb, mask = read_glas_image(item)
    scale = GLAS_MPP / cfg.working_mpp
    h, w = int(round(rgb.shape[0] * scale)), int(round(rgb.shape[1] * scale))
    small = G._resize(rgb, w, h)
    truth = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0.5
    rule = G.segment_glands(small, cfg.working_mpp, cfg).labels > 0  # no resampling at the working mpp
    maps = G._scores(small, cfg)
    od = -np.log10((small.astype(np.float32) + 1.0) / 256.0)
    channels = [od[..., i] for i in range(3)]
    if inputs == "maps":
        channels += [maps.h, maps.texture, maps.score]
    x = np.stack(channels).astype(np.float32)
    x = (x - x.mean(axis=(1, 2), keepdims=True)) / (x.std(axis=(1, 2), keepdims=True) + 1e-6)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
    pos = cv2.erode(rule.view(np.uint8), disk).view(bool)
    neg = ~cv2.dilate(rule.view(np.uint8), disk).view(bool)
    return {"item": item, "truth": truth, "rule": rule, "maps": maps, "x": x, "pos": pos, "neg": neg}


def train(images: list[dict], args, seed: int) -> UNet | None:
    """A network fitted to the pseudo-labels of ``images`` (random crops, class-balanced BCE)."""
    npos = sum(int(d["pos"].sum()) for d in images)
    nneg = sum(int(d["neg"].sum()) for d in images)
    if npos < 50 or nneg < 50:
        return None
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = UNet(images[0]["x"].shape[0], args.channels)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    for _ in range(args.iters):
        xb, yb, wb = [], [], []
        for j in rng.integers(0, len(images), args.batch):
            d = images[j]
            hh, ww = d["pos"].shape
            cy, cx = min(args.crop, hh), min(args.crop, ww)
            y, x = rng.integers(0, hh - cy + 1), rng.integers(0, ww - cx + 1)
            sl = (slice(y, y + cy), slice(x, x + cx))
            weight = d["pos"][sl] * (0.5 / npos) + d["neg"][sl] * (0.5 / nneg)
            xb.append(torch.from_numpy(np.ascontiguousarray(d["x"][:, sl[0], sl[1]])))
            yb.append(torch.from_numpy(d["pos"][sl].astype(np.float32))[None])
            wb.append(torch.from_numpy(weight.astype(np.float32))[None])
        weight = torch.stack(wb)
        loss = (F.binary_cross_entropy_with_logits(net(torch.stack(xb)), torch.stack(yb), reduction="none")
                * weight).sum() / weight.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def combine(d: dict, p: np.ndarray, cfg: GlandConfig, margin: int) -> dict[str, np.ndarray]:
    """The ways of using the network's probability ``p`` (module docstring)."""
    maps, rule, tissue = d["maps"], d["rule"], d["maps"].tissue
    min_px = cfg.min_gland_um2 / cfg.working_mpp ** 2

    def post(mask: np.ndarray) -> np.ndarray:
        return G._remove_small(G._fill_interior(mask, maps.h, cfg), min_px)

    soft = G._gaussian(rule.astype(np.float32), margin)
    out = {"rule": rule, "replace": post((p > 0.5) & tissue),
           "band": post(d["pos"] | ((p > 0.5) & ~d["neg"] & tissue)),
           "avg": post(((p + soft) / 2 > 0.5) & tissue)}
    for u in (0.7, 0.8, 0.9):
        out[f"union{u}"] = post(rule | ((p > u) & tissue))
    return out


def miou(cm: np.ndarray) -> float:
    """Mean of the gland and background IoU of a 2 x 2 confusion matrix [truth, prediction]."""
    return float((cm[1, 1] / (cm[1, 1] + cm[0, 1] + cm[1, 0]) + cm[0, 0] / (cm[0, 0] + cm[0, 1] + cm[1, 0])) / 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--glas", type=Path, default=SHARED / "glas")
    parser.add_argument("--split", default="train")
    parser.add_argument("--every", type=int, default=1, help="use every n-th image (a subset)")
    parser.add_argument("--scope", choices=("image", "set"), default="image")
    parser.add_argument("--inputs", choices=("od", "maps"), default="od",
                        help="od: the RGB optical densities; maps: plus the method's haematoxylin, texture, score")
    parser.add_argument("--margin", type=int, default=3, help="uncertain band, working px on each side")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = GlandConfig()
    print(f"load average (1, 5, 15 min) at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    images = [prepare(item, cfg, args.inputs, args.margin) for item in list_glas(args.glas, args.split)[::args.every]]
    t0 = time.perf_counter()
    nets = [train(images, args, args.seed)] if args.scope == "set" else None
    seconds, cms, fits = 0.0, {}, []
    for i, d in enumerate(images):
        t1 = time.perf_counter()
        net = nets[0] if nets else train([d], args, args.seed + i)
        if net is None:
            p = d["rule"].astype(np.float32)
        else:
            with torch.no_grad():
                p = torch.sigmoid(net(torch.from_numpy(d["x"])[None]))[0, 0].numpy()
        seconds += time.perf_counter() - t1
        confident = d["pos"] | d["neg"]
        fits.append(float(((p > 0.5) == d["pos"])[confident].mean()) if confident.any() else 1.0)
        for name, pred in combine(d, p, cfg, args.margin).items():
            truth = d["truth"]
            cm = np.array([[np.sum(~truth & ~pred), np.sum(~truth & pred)],
                           [np.sum(truth & ~pred), np.sum(truth & pred)]], dtype=np.float64)
            per_grade = cms.setdefault(name, {})
            per_grade[d["item"].grade] = per_grade.get(d["item"].grade, 0) + cm
    total = time.perf_counter() - t0
    print(f"{len(images)} {args.split} images; {vars(args)}")
    for name, per_grade in cms.items():
        grades = "  ".join(f"{g} {miou(cm):.4f}" for g, cm in sorted(per_grade.items()))
        print(f"{name:9s} mIoU {miou(sum(per_grade.values())):.4f}  {grades}")
    print(f"pseudo-label fit (confident pixels agreeing with the network): {np.mean(fits):.3f}")
    what = "training once plus predicting" if nets else "training and predicting per image"
    print(f"{what}: {total:.1f} s in all, {total / len(images):.2f} s per image (wall, one torch thread)")
    print(f"load average (1, 5, 15 min) at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
