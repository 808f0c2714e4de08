"""Seconds per stage and peak memory of ``tumls-qp analyze`` for each embedding method, side by side.

Two slides: the bundled demo slide (CMU-1-Small-Region.svs, 32 µm tiles as ``tumls-qp demo``
uses them, everything else the default) and a synthetic 1 cm² slide at 0.25 µm/px (40,000 x
40,000 px, two tissues, full pyramid, 64 µm tiles, as ``benchmarks/large_slide.py``). Each
analysis runs in its own process with ``--no-cache``; the stage times and peak RSS come from its
``manifest.json``, the process's CPU time from the operating system. ``tumls-ae`` is today's
method, so its row is the baseline of the "× tumls-ae" column. On the large slide the
autoencoder trains for a fixed number of epochs (``--large-epochs``, as the large-slide
benchmark does), the other methods with their defaults.

``pretrained:ARCH`` (e.g. ``pretrained:resnet18``) measures your-own-encoder with the timm
architecture ARCH: its randomly initialised weights (seed 0) are saved as a safetensors file in
the work folder (no trained weights can be had here, so only the cost means something), and the
views are what such a model expects: 224 px of 112 µm (0.5 µm/px). It needs the ``pretrained`` extra.

Each run's wall and CPU seconds and the load at its start and end are kept beside it
(``costs.json`` in its run folder); ``--reuse`` takes finished runs from there instead of running
them again, so that methods can be measured in separate invocations (one at a time on a shared
machine) and the last one prints them all side by side.

    python benchmarks/embedding_costs.py --workdir /tmp/emb-costs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (the benchmarks' shared machine line and report output)
from tumls_qp.files import atomic_write  # noqa: E402

METHODS = "tumls-ae,contrastive,vade,handcrafted,textons"
STAGES = ("tiles", "train", "embed", "cluster", "regions", "nuclei", "outputs")
COSTS = "costs.json"


def run_analysis(slide: Path, out: Path, config: Path, tile_um: float, reuse: bool) -> dict:
    """Analyse ``slide`` into ``out`` in its own process (or, with ``reuse``, take the finished run there)."""
    costs = out / COSTS
    if reuse and costs.exists():
        return json.loads(costs.read_text()) | {"reused": True}
    shutil.rmtree(out, ignore_errors=True)  # an unfinished run of an earlier invocation
    load_start = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start, start_clock = time.perf_counter(), time.time()
    subprocess.run([str(Path(sys.executable).with_name("tumls-qp")), "analyze", str(slide), "--out", str(out),
                    "--no-cache", "--config", str(config), "--tile-um", f"{tile_um:g}", "-q"], check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    manifest = json.loads((out / slide.stem / "manifest.json").read_text())
    result = {"manifest": manifest, "wall": wall, "load": [load_start, os.getloadavg()],
              "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
              "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start_clock))}
    with atomic_write(costs) as tmp:
        tmp.write_text(json.dumps(result), encoding="utf-8")
    return result | {"reused": False}


def random_checkpoint(arch: str, work: Path) -> Path:
    """A safetensors file of timm's ``arch`` at its random initialisation (seed 0), made once in ``work``."""
    path = work / f"{arch}-random-init.safetensors"
    if not path.exists():
        import timm
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = timm.create_model(arch, pretrained=False)
        with atomic_write(path) as tmp:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default=METHODS, help=f"comma-separated embedding methods (default {METHODS})")
    parser.add_argument("--large-size", type=int, default=40000, help="side of the large slide in px (0: skip it)")
    parser.add_argument("--large-epochs", type=int, default=20, help="tumls-ae epochs on the large slide (fixed)")
    parser.add_argument("--threads", type=int, default=0, help="embedding.num_threads (default 0: torch's default)")
    parser.add_argument("--workdir", help="where slides and runs go (default: a temporary folder)")
    parser.add_argument("--report", help="also write the Markdown output here")
    parser.add_argument("--reuse", action="store_true",
                        help=f"take runs finished by an earlier invocation with the same --workdir ({COSTS}) "
                             "instead of running them again")
    args = parser.parse_args()

    from tumls_qp.cli import DEMO_SLIDE
    from tumls_qp.testing import write_synthetic_slide

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tumls-costs-"))
    work.mkdir(parents=True, exist_ok=True)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    targets = [("demo: CMU-1-Small-Region.svs", DEMO_SLIDE, 32.0, None)]
    if args.large_size:
        large = work / f"synthetic-{args.large_size}.tif"
        if not large.exists():
            write_synthetic_slide(large, args.large_size, args.large_size, 0.25, layout="two-tissues", tile=512)
        targets.append((f"large: {args.large_size} x {args.large_size} px at 0.25 µm/px", large, 64.0,
                        args.large_epochs))
    load_start = os.getloadavg()
    started = time.perf_counter()
    rows = []
    for name, slide, tile_um, epochs in targets:
        for method in methods:
            text = f"[embedding]\nmethod = \"{method.split(':')[0]}\"\ndevice = \"cpu\"\nnum_threads = {args.threads}\n"
            if epochs is not None and method == "tumls-ae":
                text += f"max_epochs = {epochs}\npatience = {epochs}\n"
            if method.startswith("pretrained:"):
                arch = method.split(":", 1)[1]
                text += (f"encoder = \"{arch}\"\ncheckpoint = \"{random_checkpoint(arch, work)}\"\n"
                         "view_um = 112.0\nview_px = 224\n")
            config = work / f"{method.replace(':', '-')}-{tile_um:g}.toml"
            config.write_text(text)
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {method}", file=sys.stderr, flush=True)
            result = run_analysis(slide, work / f"run-{slide.stem}-{method.replace(':', '-')}", config, tile_um,
                                  args.reuse)
            rows.append({"target": name, "method": method, **result})
    load_end = os.getloadavg()
    total = time.perf_counter() - started

    command = ("python benchmarks/embedding_costs.py"
               + (f" --methods {args.methods}" if args.methods != METHODS else "")
               + (f" --large-size {args.large_size}" if args.large_size != 40000 else "")
               + (f" --threads {args.threads}" if args.threads else "")
               + (f" --workdir {args.workdir}" if args.workdir else "")
               + (f" --report {args.report}" if args.report else "")
               + (" --reuse" if args.reuse else ""))
    lines = [
        f"Command: `{command}`",
        "",
        f"{_common.machine_line(load_start, load_end)}, embedding.num_threads = {args.threads}, "
        f"Python {platform.python_version()}. Total {total / 60:.1f} min.",
        "",
        "| slide | embedding | tissue tiles | " + " | ".join(f"{s} s" for s in STAGES)
        + " | stages s | process wall s | × tumls-ae (wall) | process CPU s | peak RSS MB | k (votes; runner-up) |",
        "|---|---|---|" + "---|" * len(STAGES) + "---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["manifest"]
        t = m["timings_s"]
        base = next((b for b in rows if b["target"] == r["target"] and b["method"] == "tumls-ae"), None)
        ratio = f"{r['wall'] / base['wall']:.2f}" if base else "-"
        c = m["clusters"]
        k = _common.manifest_k(c)
        lines.append(f"| {r['target']} | {r['method']} | {m['tiles']['kept']} | "
                     + " | ".join(f"{t.get(s, 0):.1f}" for s in STAGES)
                     + f" | {sum(t.values()):.1f} | {r['wall']:.1f} | {ratio} | {r['cpu']:.1f} | "
                       f"{m['environment']['peak_rss_mb']:.0f} | {k} |")
    lines += ["", "Each run (UTC start; load average over 1 min at its start and end):", ""]
    lines += [f"- {r['target']}, {r['method']}: {r['started']}, load {r['load'][0][0]:.1f} -> {r['load'][1][0]:.1f}"
              + (" (finished by an earlier invocation, reused)" if r["reused"] else "") for r in rows]
    return _common.emit_report(lines, args.report)


if __name__ == "__main__":
    sys.exit(main())
