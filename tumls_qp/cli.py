"""The ``tumls-qp`` command line: ``main(argv) -> int``.

Each command is declared next to its handler: a ``_add_<command>`` function adds its
parser and names the handler with ``set_defaults(handler=...)``; :func:`_parser` lists the
commands in the order ``--help`` shows them. Errors are mapped to exit codes here and only
here (``EXIT_CODES``). Subcommands import what they need when they run, so that
``tumls-qp --help`` starts at once.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .config import EMBEDDING_METHODS, EmbeddingConfig, PipelineConfig, dump_config, load_config, replace_in
from .errors import (
    ConfigError,
    DeviceError,
    EngineError,
    InvalidInputError,
    OutputError,
    TumlsQpError,
)

__all__ = ["main", "EXIT_CODES", "DEMO_SLIDE"]

log = logging.getLogger("tumls_qp")

#: Exit status per error class; the first matching class (in this order) wins.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigError, 2),
    (InvalidInputError, 3),
    (OutputError, 4),
    (DeviceError, 5),
    (EngineError, 6),
    (TumlsQpError, 1),
)

#: The real sample slide shipped with the package (CC0; see tumls_qp/data/PROVENANCE.md).
DEMO_SLIDE = Path(__file__).parent / "data" / "CMU-1-Small-Region.svs"
#: Settings that suit the demo slide's size (1.1 x 1.5 mm at 0.499 µm/px): 32 µm tiles give
#: about 700 tissue tiles where the 256 µm default would give about 10.
DEMO_OPTIONS = {"tiles.tile_um": 32.0}


def _exit_code(exc: BaseException) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 1


class _StageBars:
    """One tqdm progress bar per pipeline stage, on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.stage: str | None = None
        self.bar: Any = None

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=100, desc=f"{stage:>8}", unit="%", leave=True, file=sys.stderr,
                            bar_format="{desc} {percentage:3.0f}%|{bar:30}| {elapsed} {postfix}")
        self.bar.n = max(self.bar.n, min(100, int(round(fraction * 100))))
        self.bar.set_postfix_str(message, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.stage = None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tumls-qp",
        description="Unsupervised tissue and nucleus segmentation of H&E whole slide images (TUMLS), for QuPath.",
    )
    parser.add_argument("--version", action="version", version=f"tumls-qp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (stage by stage)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_analyze, _add_demo, _add_eval, _add_report, _add_config, _add_serve, _add_qupath_project,
                _add_seeded, _add_prototypes, _add_make_dictionary, _add_apply_dictionary, _add_embedding_colours,
                _add_cluster_tiles):
        add(sub)
    return parser


# --- analysis ---------------------------------------------------------------------------------------------------------

def _add_analysis_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config file (see `tumls-qp config` for every option)")
    p.add_argument("--mpp", type=float, metavar="UM_PER_PX",
                   help="level-0 pixel size in µm/px, for slides that do not state it (e.g. 0.25 at 40x, 0.5 at 20x)")
    p.add_argument("--k", type=int, metavar="K", help="number of tissues (default: chosen from the dendrogram)")
    p.add_argument("--tile-um", type=float, metavar="UM", help="tile side in µm (default 256)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="device for the autoencoder (default auto)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--gzip", action="store_true", default=None, help="write tissue.geojson.gz")
    p.add_argument("--allow-non-he", action="store_true", default=None,
                   help="analyse slides that do not look like brightfield H&E")
    p.add_argument("--cache-dir", metavar="DIR", help="embedding cache (default $XDG_CACHE_HOME/tumls-qp)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _analysis_config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> PipelineConfig:
    config = load_config(args.config) if args.config else PipelineConfig()
    if base:
        config = replace_in(config, **base)
    return replace_in(
        config,
        **{
            "slide.mpp": args.mpp,
            "clusters.k": args.k,
            "tiles.tile_um": args.tile_um,
            "embedding.device": args.device,
            "seed": args.seed,
            "output.gzip": args.gzip,
            "slide.allow_non_he": args.allow_non_he,
        },
    )


def _run_analysis(args: argparse.Namespace, slides: list[str], config: PipelineConfig, cohort: bool) -> int:
    from .tissue.cache import default_cache_dir

    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    bars = _StageBars(enabled=not args.quiet)
    scheduler, workers = getattr(args, "scheduler", None), getattr(args, "workers", None)
    try:
        if scheduler is not None or workers is not None:
            from .dask_engine import analyze_on_dask  # Dask loads only here

            results = analyze_on_dask(slides, args.out, config, scheduler=scheduler, workers=workers, cohort=cohort,
                                      cache_dir=cache, progress=bars, wait_for_workers_s=args.wait_for_workers)
        else:
            from .pipeline import analyze

            results = analyze(slides, args.out, config, cohort=cohort, cache_dir=cache, progress=bars)
    finally:
        bars.close()
    for result in results:
        m = result.manifest
        where = f" (Dask worker {m.engine.worker})" if m.engine.worker else ""
        print(f"{result.slide.name}: {m.clusters.k} tissue(s), {m.tiles.kept} tissue tiles -> {result.run_dir}{where}")
    return 0


def _add_analyze(sub: Any) -> None:
    p = sub.add_parser("analyze", help="analyse slides; one run folder per slide",
                       description="Analyse slides and write one run folder per slide into --out.")
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files (.svs, .ndpi, .tif, ...)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--cohort", action="store_true",
                   help="one autoencoder and one clustering for all slides (tissue numbers agree across slides)")
    _add_analysis_options(p)
    engine = p.add_argument_group(
        "scale-out on Dask (needs the dask extra: pip install 'tumls-qp[dask]')",
        "The workers read the slides and write --out (and the cache) themselves: with --scheduler, give paths on "
        "storage that every worker mounts at the same place.")
    where = engine.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on an existing Dask cluster: its scheduler's address (tcp://HOST:8786, as `dask "
                            "scheduler` prints it); with --cohort, a worker started with --resources GPU=1 trains "
                            "the model")
    where.add_argument("--workers", type=int, metavar="N",
                       help="run on N worker processes on this machine (a local Dask cluster for the run)")
    engine.add_argument("--wait-for-workers", type=float, default=60.0, metavar="SECONDS",
                        help="with --scheduler: how long to wait for a first worker to join (default 60)")
    p.set_defaults(handler=_cmd_analyze)


def _cmd_analyze(args: argparse.Namespace) -> int:
    return _run_analysis(args, args.slides, _analysis_config(args), cohort=args.cohort)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="analyse the bundled sample slide",
                       description=f"Analyse the bundled CMU-1-Small-Region.svs (CC0) with {DEMO_OPTIONS}.")
    p.add_argument("--out", default="tumls-qp-demo", metavar="DIR", help="output folder (default ./tumls-qp-demo)")
    _add_analysis_options(p)
    p.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .outputs.run_folder import REPORT_PDF, TISSUE_GEOJSON

    if not DEMO_SLIDE.is_file():
        raise InvalidInputError(f"the bundled demo slide is missing from the installation: {DEMO_SLIDE}")
    code = _run_analysis(args, [str(DEMO_SLIDE)], _analysis_config(args, DEMO_OPTIONS), cohort=False)
    run = Path(args.out) / "CMU-1-Small-Region"
    print(f"\nDemo outputs in {run.resolve()}:")
    for path in sorted(run.iterdir()):
        print(f"  {path.name}")
    print(f"Import {TISSUE_GEOJSON} in QuPath (File > Import objects) over CMU-1-Small-Region.svs to see the tissues.")
    if (run / REPORT_PDF).is_file():
        print(f"Read the per-case PDF: {(run / REPORT_PDF).resolve()}")
    return code


# --- benchmarks -------------------------------------------------------------------------------------------------------

def _add_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="benchmarks against annotated data",
                       description="Score tumls-qp against annotated public data.")
    bench = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    _add_eval_monuseg(bench)
    _add_eval_glas(bench)


def _add_eval_monuseg(bench: Any) -> None:
    q = bench.add_parser("monuseg", help="nucleus segmentation on MoNuSeg-style folders",
                         description="Segment every image of one or more MoNuSeg-style folders (<id>.tif + Aperio "
                                     "<id>.xml, optional organs.csv) and score masks 1-3: pixel Dice and IoU, AJI, "
                                     "object F1 at IoU > 0.5, seconds per image on one thread. Several folders (e.g. "
                                     "the development and the test images) give one report with a section each.")
    q.add_argument("folders", nargs="+", metavar="DIR")
    q.add_argument("--report", default="reports/monuseg.md", metavar="PATH",
                   help="Markdown report to write (default reports/monuseg.md)")
    q.add_argument("--limit", type=int, metavar="N", help="score only the first N images of each folder")
    q.add_argument("--repeats", type=int, default=3, metavar="N",
                   help="time each image N times and keep the fastest (default 3)")
    q.set_defaults(handler=_cmd_eval_monuseg)


def _cmd_eval_monuseg(args: argparse.Namespace) -> int:
    from .evaluation.monuseg import run_monuseg_benchmark, write_monuseg_report

    command = ["tumls-qp", "eval", "monuseg", *args.folders, "--report", args.report]
    if args.limit is not None:
        command += ["--limit", str(args.limit)]
    if args.repeats != 3:
        command += ["--repeats", str(args.repeats)]

    def progress(done: int, total: int) -> None:
        print(f"\r{done}/{total} images", end="" if done < total else "\n", file=sys.stderr, flush=True)

    results = []
    for folder in args.folders:
        if len(args.folders) > 1:
            print(folder, file=sys.stderr)
        results.append(run_monuseg_benchmark(folder, limit=args.limit, repeats=args.repeats, progress=progress))
    path = write_monuseg_report(results, args.report, shlex.join(command))
    for folder, result in zip(args.folders, results):
        if len(args.folders) > 1:
            print(f"{folder}:")
        for mask in ("mask1", "mask2", "mask3"):
            print(f"{mask.replace('mask', 'mask ')}: Dice {result.mean(mask, 'dice'):.4f}  "
                  f"IoU {result.mean(mask, 'iou'):.4f}  AJI {result.mean(mask, 'aji'):.4f}  "
                  f"F1 obj {result.mean(mask, 'f1_object'):.4f}")
        print(f"{result.seconds().mean():.3f} s per image (wall), {result.cpu_seconds().mean():.3f} s CPU")
    print(f"report: {path}")
    return 0


def _add_eval_glas(bench: Any) -> None:
    q = bench.add_parser("glas", help="unsupervised gland segmentation on a GlaS folder",
                         description="Segment the glands of every image of one GlaS split (images/<split>_N.png, "
                                     "masks/ beside them, optional grades.csv) without using the masks, and score "
                                     "them: pixel mIoU (gland / background), Dice, approximate object F1 and object "
                                     "Dice, per image and per grade, beside a colour-cluster baseline; seconds per "
                                     "image on one thread.")
    q.add_argument("folder", metavar="DIR")
    q.add_argument("--split", choices=["train", "testA"], default="testA",
                   help="which images: train (design) or testA (report) (default testA)")
    q.add_argument("--report", metavar="PATH", help="Markdown report to write (default reports/glas_<split>.md)")
    q.add_argument("--limit", type=int, metavar="N", help="score only the first N images")
    q.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="time each image N times and keep the fastest (default 1)")
    q.add_argument("--config", metavar="FILE",
                   help="TOML config whose [glands] section sets the method (default: the defaults)")
    q.set_defaults(handler=_cmd_eval_glas)


def _cmd_eval_glas(args: argparse.Namespace) -> int:
    from .evaluation.glas import run_glas_benchmark, write_glas_report

    report = args.report or f"reports/glas_{args.split}.md"
    command = ["tumls-qp", "eval", "glas", args.folder, "--split", args.split, "--report", report]
    if args.limit is not None:
        command += ["--limit", str(args.limit)]
    if args.repeats != 1:
        command += ["--repeats", str(args.repeats)]
    if args.config:
        command += ["--config", args.config]
    cfg = load_config(args.config).glands if args.config else None

    def progress(done: int, total: int) -> None:
        print(f"\r{done}/{total} images", end="" if done < total else "\n", file=sys.stderr, flush=True)

    result = run_glas_benchmark(args.folder, args.split, cfg=cfg, limit=args.limit, repeats=args.repeats,
                                progress=progress)
    path = write_glas_report(result, report, shlex.join(command))
    for which, title in (("method", "glands  "), ("baseline", "baseline")):
        pooled = result.pooled(which)
        print(f"{title}: mIoU {pooled['miou']:.4f} (mean of images {result.mean(which, 'miou'):.4f})  "
              f"Dice {pooled['dice']:.4f}  F1 obj {result.mean(which, 'f1_object'):.4f}  "
              f"Dice obj {result.mean(which, 'dice_object'):.4f}")
    print(f"{result.seconds().mean():.3f} s per image (wall), {result.cpu_seconds().mean():.3f} s CPU; report: {path}")
    return 0


# --- run folders --------------------------------------------------------------------------------------------------------

def _add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="render the PDF report of run folders again (no slide needed)",
                       description="Render the PDF report from run folders written by `tumls-qp analyze`, without "
                                   "the slide and without recomputing anything. One run folder gives its case report "
                                   "(RUN_DIR/report.pdf); several give one cohort report (cohort-report.pdf in "
                                   "their common parent folder).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (one per slide)")
    p.add_argument("--cohort", action="store_true",
                   help="the cohort report of the --cohort analysis RUN_DIR belongs to (its run folders beside it)")
    p.add_argument("--out", metavar="FILE",
                   help="the PDF to write, or a folder to write it into (default: beside the run folder(s))")
    p.set_defaults(handler=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from .outputs.pdf_report import render_report

    result = render_report(args.run_dirs, args.out, cohort=args.cohort)
    kind = "case report" if result.slides == 1 else f"cohort report of {result.slides} slides"
    print(f"{result.path}: {kind}, {result.pages} pages, {result.path.stat().st_size / 1e6:.1f} MB, "
          f"{result.seconds:.1f} s")
    return 0


def _add_config(sub: Any) -> None:
    p = sub.add_parser("config", help="print the default configuration as TOML",
                       description="Print the default configuration (or FILE's effective one) as TOML.")
    p.add_argument("file", nargs="?", help="a config file to check and print with defaults filled in")
    p.set_defaults(handler=_cmd_config)


def _cmd_config(args: argparse.Namespace) -> int:
    config = load_config(args.file) if args.file else PipelineConfig()
    sys.stdout.write(dump_config(config))
    return 0


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the analysis server for the QuPath scripts (groovy/)",
                       description="Run the analysis server that groovy/tumls_analyze.groovy talks to. It listens on "
                                   "127.0.0.1 only unless --host says otherwise (which then needs --token).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this computer only)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="job database, results and embedding cache (default $TUMLS_QP_DATA or "
                        "~/.local/share/tumls-qp/server)")
    p.add_argument("--root", action="append", metavar="PATH",
                   help="a folder whose slides the server may read (repeatable; default: your home folder)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=1,
                       help="jobs that run at the same time, each on cores/N CPU threads (default 1)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run the jobs on an existing Dask cluster (its scheduler's address, tcp://HOST:8786) "
                            "instead of local worker processes; the workers must see the data folder and the slides "
                            "at the same paths (needs the dask extra)")
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' (needed with any --host but loopback). "
                                   "Prefer the environment variable TUMLS_QP_TOKEN: other users of this computer "
                                   "can read a command line (ps)")
    p.add_argument("--allowed-host", action="append", metavar="NAME", default=[],
                   help="another name clients use in the server's URL, e.g. behind a proxy (repeatable); requests "
                        "whose Host header names none of the server's names get 400")
    p.add_argument("--config", metavar="FILE", help="TOML file of default pipeline options for every job")
    p.add_argument("--keep-days", type=float, default=30.0, metavar="DAYS",
                   help="delete finished jobs and embedding-cache entries this many days after they were made "
                        "(default 30; 0: keep them until DELETE /jobs/{id})")
    p.add_argument("--max-data-gb", type=float, default=0.0, metavar="GB",
                   help="when the data folder holds more, delete finished jobs and cache entries, oldest first "
                        "(default 0: no limit)")
    p.add_argument("--max-dictionaries", type=int, default=200, metavar="N",
                   help="most saved prototype dictionaries (default 200)")
    p.add_argument("--min-free-mb", type=float, default=500.0, metavar="MB",
                   help="refuse new jobs and dictionaries (507) when the data folder's disk has less free space "
                        "(default 500; 0: no check)")
    p.add_argument("--stall-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="fail the job of a worker whose heartbeat is this much late (a stopped or frozen process), "
                        "and replace the worker (default 120)")
    p.set_defaults(handler=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    from .config import config_to_dict
    from .server.settings import ServerSettings, default_data_dir

    settings = ServerSettings(
        host=args.host,
        port=args.port,
        data_dir=Path(args.data_dir) if args.data_dir else default_data_dir(),
        roots=tuple(Path(r) for r in args.root) if args.root else (Path.home(),),
        workers=args.workers,
        token=args.token or os.environ.get("TUMLS_QP_TOKEN") or None,
        base_parameters=config_to_dict(load_config(args.config)) if args.config else {},
        allowed_hosts=tuple(args.allowed_host),
        keep_days=args.keep_days or None,
        max_data_gb=args.max_data_gb or None,
        max_dictionaries=args.max_dictionaries,
        min_free_mb=args.min_free_mb,
        stall_timeout_s=args.stall_timeout,
        scheduler=args.scheduler,
    )
    if args.token:
        print("tumls-qp serve: warning: a token given with --token can be read by other users of this computer "
              "(ps); set the environment variable TUMLS_QP_TOKEN instead", file=sys.stderr)
    try:  # FastAPI and uvicorn load only here
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise TumlsQpError(f"the server needs the 'server' extra ({exc.name} is missing): "
                           "pip install 'tumls-qp[server]'") from exc
    from .server.app import serve

    serve(settings, log_level="info" if args.verbose else "warning", announce=lambda line: print(line, flush=True))
    return 0


def _add_qupath_project(sub: Any) -> None:
    p = sub.add_parser("qupath-project", help="write run folders' objects into a QuPath project (paquo)",
                       description="Write each run folder's objects into the image entry of the same slide in a "
                                   "QuPath project (needs the qupath extra and a local QuPath). Earlier tumls-qp "
                                   "objects of that image are replaced; close the project in QuPath first.")
    p.add_argument("project", metavar="PROJECT.qpproj", help="the project file (created when missing)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by `tumls-qp analyze`")
    p.add_argument("--add-images", action="store_true", help="add slides that are not in the project yet")
    p.set_defaults(handler=_cmd_qupath_project)


def _cmd_qupath_project(args: argparse.Namespace) -> int:
    from .outputs.qupath_project import write_runs

    for run in write_runs(args.project, args.runs, add_images=args.add_images):
        added = " (image added)" if run.added_image else ""
        print(f"{run.run_dir.name}: {run.added} objects -> image {run.image_name!r}{added}; "
              f"{run.removed} earlier tumls-qp objects removed")
    return 0


# --- label-efficient commands: seeded clustering, prototype dictionaries, embedding colours, tile folders -------------

def _add_seeded(sub: Any) -> None:
    p = sub.add_parser("seeded", help="seeded iterative clustering of a run from seed annotations",
                       description="Classify every tile of a run from a few classified annotations (seeded "
                                   "iterative clustering, no retraining) and write QuPath GeoJSON.")
    p.add_argument("run", metavar="RUN_DIR", help="a run folder of `tumls-qp analyze`")
    p.add_argument("--seeds", required=True, metavar="GEOJSON",
                   help="classified annotations exported from QuPath (points, lines or polygons; level-0 px)")
    p.add_argument("--out", metavar="FILE", help="GeoJSON to write (default RUN_DIR/seeded.geojson)")
    p.add_argument("--positive", metavar="CLASS",
                   help="with two classes: run the paper's binary Algorithm 1 with CLASS as the positive class")
    p.add_argument("--no-conventional-step", action="store_true",
                   help="binary mode: leave out Algorithm 1's extra plain 2-means step")
    p.set_defaults(handler=_cmd_seeded)


def _cmd_seeded(args: argparse.Namespace) -> int:
    from .labelling import seeded_classification, seeds_from_geojson
    from .outputs.geojson import read_geojson, write_geojson

    try:
        data = read_geojson(args.seeds)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read the seeds {args.seeds!r} as GeoJSON: {exc}") from exc
    answer = seeded_classification(args.run, seeds_from_geojson(data), positive=args.positive,
                                   conventional_step=not args.no_conventional_step)
    out = Path(args.out) if args.out else Path(args.run) / "seeded.geojson"
    try:
        write_geojson(answer.feature_collection, out)
    except OSError as exc:
        raise OutputError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from exc
    summary = answer.summary()
    counts = ", ".join(f"{c['name']} {c['tiles']}" for c in summary["classes"])
    print(f"{summary['mode']} SIC: {counts} tiles; seed F1 {summary['seed_f1']:.3f}; "
          f"{summary['seconds']:.2f} s -> {out}")
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _add_prototypes(sub: Any) -> None:
    p = sub.add_parser("prototypes", help="over-cluster a run's tiles for naming (prototype dictionary, step 1)",
                       description="Cluster a run's tiles into prototype clusters (k from the elbow rule) and "
                                   "write RUN_DIR/prototypes/: prototypes.geojson to look at in QuPath and "
                                   "names.toml to fill in.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--k", type=int, metavar="K", help="number of clusters (default: elbow rule over 2..50)")
    p.add_argument("--t", type=int, metavar="T", help="central tiles shown per cluster (default 10)")
    p.add_argument("--seed", type=int, help="random seed (default: the run's)")
    p.set_defaults(handler=_cmd_prototypes)


def _cmd_prototypes(args: argparse.Namespace) -> int:
    from .labelling import load_overclustering, write_prototypes
    from .outputs.run_folder import NAMES_TOML, PROTOTYPES_GEOJSON

    folder = write_prototypes(args.run, k=args.k, t=args.t, seed=args.seed)
    over, _ = load_overclustering(args.run)
    print(f"{over.k} prototype clusters ({over.k_source}) -> {folder}")
    print(f"Look at {folder / PROTOTYPES_GEOJSON} in QuPath, fill in {folder / NAMES_TOML}, then run "
          f"tumls-qp make-dictionary {args.run} --names {folder / NAMES_TOML} --out NAME.tumlsdict")
    return 0


def _add_make_dictionary(sub: Any) -> None:
    p = sub.add_parser("make-dictionary", help="save named prototype clusters as a dictionary (step 2)",
                       description="Build a prototype dictionary file from a run's named prototype clusters.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--names", required=True, metavar="TOML", help="the filled-in RUN_DIR/prototypes/names.toml")
    p.add_argument("--out", required=True, metavar="FILE", help="dictionary file to write (e.g. colon.tumlsdict)")
    p.set_defaults(handler=_cmd_make_dictionary)


def _cmd_make_dictionary(args: argparse.Namespace) -> int:
    from .interactive.prototypes import load_dictionary
    from .labelling import make_dictionary

    path = make_dictionary(args.run, args.names, args.out)
    book = load_dictionary(path)
    naming = book.provenance["naming"]
    print(f"{len(book.prototypes)} prototypes of {len(book.classes)} classes ({', '.join(book.classes)}); "
          f"dropped: mixed {naming['mixed']}, unnamed {naming['unnamed']} -> {path}")
    return 0


def _add_apply_dictionary(sub: Any) -> None:
    p = sub.add_parser("apply-dictionary", help="label new slides with a prototype dictionary (step 3)",
                       description="Tile and embed slides as the dictionary's run did, label every tile from the "
                                   "dictionary (Direct-Query and Cluster-then-Query) and write one folder per slide.")
    p.add_argument("dictionary", metavar="DICT")
    p.add_argument("slides", nargs="+", metavar="SLIDE")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--query", choices=["cq", "dq"], default="cq",
                   help="query shown in the GeoJSON: cq (Cluster-then-Query, default) or dq (Direct-Query)")
    p.add_argument("--gamma", type=int, metavar="G", help="Cluster-then-Query groups per class found (default 5)")
    p.add_argument("--seed", type=int, help="random seed (default: the dictionary's)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    p.add_argument("--mpp", type=float, metavar="UM_PER_PX", help="level-0 pixel size for slides that lack one")
    p.add_argument("--gzip", action="store_true", help="write dictionary.geojson.gz")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_apply_dictionary)


def _cmd_apply_dictionary(args: argparse.Namespace) -> int:
    from .labelling import apply_dictionary

    bars = _StageBars(enabled=not args.quiet)
    try:
        results = apply_dictionary(args.dictionary, args.slides, args.out, query=args.query, gamma=args.gamma,
                                   seed=args.seed, device=args.device, mpp=args.mpp, gzip=args.gzip, progress=bars)
    finally:
        bars.close()
    for result in results:
        counts = result.manifest.query.tiles_per_class[args.query]
        print(f"{result.slide.name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + f" -> {result.out_dir}")
    return 0


def _add_embedding_colours(sub: Any) -> None:
    p = sub.add_parser("embedding-colours", help="colour a run's tiles by their embedding (QuPath layer + figure)",
                       description="Reduce a run's tile embeddings to 3-D (UMAP when installed, else PCA) and "
                                   "write RUN_DIR/embedding_colours.geojson and embedding_colours.png.")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--method", choices=["auto", "umap", "pca"], default="auto")
    p.add_argument("--seed", type=int, help="random seed (default: the run's)")
    p.set_defaults(handler=_cmd_embedding_colours)


def _cmd_embedding_colours(args: argparse.Namespace) -> int:
    from .labelling import write_embedding_colours

    geojson, png, method = write_embedding_colours(args.run, method=args.method, seed=args.seed)
    print(f"embedding colours ({method.upper()}) -> {geojson}, {png}")
    return 0


def _add_cluster_tiles(sub: Any) -> None:
    p = sub.add_parser("cluster-tiles", help="embed and cluster a folder of tile images",
                       description="Learn an embedding from a folder of tile images (JPEG/PNG/TIFF, resampled to "
                                   "the tile size), cluster them (automatic k) and write OUT.")
    p.add_argument("folder", metavar="DIR")
    p.add_argument("--out", required=True, metavar="OUT", help="result folder (created or replaced)")
    p.add_argument("--embedding", choices=list(EMBEDDING_METHODS), metavar="METHOD",
                   help=f"embedding method: {', '.join(EMBEDDING_METHODS)} (default: embedding.method, "
                        f"{EmbeddingConfig().method})")
    p.add_argument("--encoder", metavar="NAME",
                   help="--embedding pretrained: the timm architecture of your checkpoint, e.g. resnet50 "
                        "(embedding.encoder)")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="--embedding pretrained: its weights, .pth/.pt/.bin or .safetensors (embedding.checkpoint)")
    p.add_argument("--mpp", type=float, metavar="UM_PER_PX",
                   help="pixel size of the images in µm/px (default: each image spans embedding.view_um)")
    p.add_argument("--tile-px", type=int, choices=[8, 16, 32, 64], help="autoencoder tile size (default 16)")
    p.add_argument("--k", type=int, metavar="K", help="number of clusters (default: from the dendrogram)")
    p.add_argument("--recursive", action="store_true", help="also read images in subfolders")
    p.add_argument("--colours", choices=["auto", "umap", "pca"], default="auto",
                   help="reduction for the embedding-colour figure")
    p.add_argument("--config", metavar="FILE", help="TOML config file (embedding, clusters, seed apply)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--seed", type=int)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_cluster_tiles)


def _cmd_cluster_tiles(args: argparse.Namespace) -> int:
    from .evaluation.tile_folder import cluster_tile_folder

    config = load_config(args.config) if args.config else PipelineConfig()
    config = replace_in(config, **{"tiles.tile_px": args.tile_px, "clusters.k": args.k,
                                   "embedding.device": args.device, "embedding.method": args.embedding,
                                   "embedding.encoder": args.encoder, "embedding.checkpoint": args.checkpoint,
                                   "seed": args.seed})
    bars = _StageBars(enabled=not args.quiet)
    try:
        result = cluster_tile_folder(args.folder, args.out, config, recursive=args.recursive,
                                     colour_method=args.colours, mpp=args.mpp, progress=bars)
    finally:
        bars.close()
    m = result.manifest
    runner = m.clusters.runner_up
    close = f"; runner-up k = {runner[0]} in {runner[1]} of {sum(m.clusters.k_votes.values())} resamples" \
        if runner else ""
    print(f"{m.tiles.n} tiles, {m.embedding.method} embedding, {m.clusters.k} cluster(s) "
          f"({m.clusters.k_source}{close}) -> {result.out_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("tumls-qp: interrupted; nothing was left half-written", file=sys.stderr)
        return 130
    except TumlsQpError as exc:
        print(f"tumls-qp: error: {exc}", file=sys.stderr)
        for note in getattr(exc, "__notes__", []):
            print(f"tumls-qp: {note}", file=sys.stderr)
        return _exit_code(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
