"""Worker processes: each claims queued jobs from the store and runs the pipeline, one job at a time.

A worker is a separate process, so a CPU-heavy analysis never slows the API, and a
cancel can stop it at once (SIGTERM, then SIGKILL). A worker ends itself when the
server process disappears (``kill -9`` included), so no orphan keeps computing.

Each attempt of a job writes into its own folder, ``jobs/<id>/attempt-<n>/``; the
pipeline builds the run folder in a hidden staging folder and renames it into place,
and the job becomes ``succeeded`` only after the served GeoJSON is complete, so a
result is either whole or absent. A job that runs out of disk space fails with "data folder
full" (its partial outputs removed first, which frees the space to record that); so does a
job that starts while less than ``min_free_mb`` is free.

A heartbeat thread touches ``DATA_DIR/workers/<pid>`` every second (see ``runner``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..cpu import cpu_share, cpu_threads
from ..errors import TumlsQpError
from .errors import data_folder_full, is_disk_full
from .settings import HEARTBEAT_INTERVAL_S, ServerSettings
from .store import Job, JobStore

__all__ = ["worker_main", "main", "run_job", "publish_geojson", "run_name", "settings_to_json", "SERVED_GEOJSON",
           "SERVED_EMBEDDING_COLOURS", "JOB_LOG"]

log = logging.getLogger(__name__)

#: The GeoJSON the server hands to QuPath: the run's, each object tagged with the job number, gzipped.
SERVED_GEOJSON = "served.geojson.gz"
#: The run's embedding-colour tile layer as served (``GET /jobs/{id}/embedding-colours``), tagged like the objects.
SERVED_EMBEDDING_COLOURS = "served-embedding-colours.geojson.gz"
#: Per-job log file (in ``jobs/<id>/``).
JOB_LOG = "job.log"
#: Relative share of the overall progress bar per pipeline stage (others count 1).
_STAGE_WEIGHTS = {"train": 6.0, "outputs": 2.0}
#: Stages of a dictionary job (``labelling.apply_dictionary``) and their shares of the progress bar.
_DICTIONARY_STAGES = ("tiles", "embed", "outputs")
_DICTIONARY_WEIGHTS = {"tiles": 1.0, "embed": 2.0, "outputs": 1.0}
#: Seconds between progress writes to the store (stage changes are written at once).
_PROGRESS_INTERVAL_S = 0.5


def run_name(image_name: str) -> str:
    """A safe folder name from QuPath's image name: ``"CMU-1 (2).svs"`` -> ``"CMU-1_2"``."""
    stem = image_name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    stem = stem.split(".")[0] if not stem.startswith(".") else stem
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:80]
    return safe or "image"


class _JobGone(Exception):
    """The job was cancelled (or handed to another attempt) while this worker ran it."""


class _Progress:
    """Pipeline progress callback that writes the overall fraction to the store, throttled."""

    def __init__(self, store: JobStore, job: Job, stages: tuple[str, ...] | None = None,
                 stage_weights: dict[str, float] | None = None) -> None:
        from ..pipeline import STAGES

        self.store, self.job = store, job
        stages = STAGES if stages is None else stages
        stage_weights = _STAGE_WEIGHTS if stage_weights is None else stage_weights
        weights = [stage_weights.get(s, 1.0) for s in stages]
        total = sum(weights)
        self.offsets, start = {}, 0.0
        for stage, weight in zip(stages, weights):
            self.offsets[stage] = (start / total, weight / total)
            start += weight
        self.overall = 0.0
        self.last_stage: str | None = None
        self.last_write = 0.0

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        if stage in self.offsets:
            offset, weight = self.offsets[stage]
            self.overall = max(self.overall, offset + weight * min(max(fraction, 0.0), 1.0))
        now = time.monotonic()
        if stage == self.last_stage and now - self.last_write < _PROGRESS_INTERVAL_S:
            return
        self.last_stage, self.last_write = stage, now
        if not self.store.progress(self.job.id, self.job.attempt, min(self.overall, 0.99), stage, message):
            raise _JobGone(self.job.id)


def publish_geojson(run_dir: Path, geojson_name: str, job_number: int, target: Path,
                    tag: str | None = None) -> tuple[list[dict[str, Any]], int]:
    """Write the served GeoJSON: the run's objects, each tagged with the job number, gzipped, atomically.

    ``tag`` is the marker measurement (default ``TAG_MEASUREMENT``, the analysis layer's; see
    :mod:`tumls_qp.outputs.qupath`).

    Returns
    -------
    classes : list of dict
        ``class_table`` of the objects.
    n_features : int
    """
    from ..outputs.geojson import read_geojson, require_valid, write_geojson
    from ..outputs.qupath import TAG_MEASUREMENT, class_table, tag_features

    data = read_geojson(run_dir / geojson_name)
    features = data["features"] if isinstance(data, dict) else data
    tag_features(features, job_number, tag or TAG_MEASUREMENT)
    write_geojson(require_valid(data, "the run's GeoJSON"), target, compress=True)
    return class_table(features), len(features)


def _run_analysis(store: JobStore, settings: ServerSettings, job: Job, slide: Path,
                  out_dir: Path) -> tuple[Path, Path, list[dict[str, Any]], dict[str, Any]]:
    """The pipeline on one image; returns (run folder, served GeoJSON, classes, summary)."""
    from ..config import config_from_dict
    from ..outputs.run_folder import REPORT_PDF
    from ..pipeline import analyze

    config = config_from_dict(job.config)
    results = analyze([slide], out_dir, config, cache_dir=settings.cache_dir, progress=_Progress(store, job),
                      run_names=[run_name(job.image_name)], engine=_engine(settings))
    run = results[0]
    manifest = run.manifest
    store.progress(job.id, job.attempt, 0.99, "publish", "preparing the GeoJSON for QuPath")
    served = out_dir / SERVED_GEOJSON
    classes, n_features = publish_geojson(run.run_dir, manifest.outputs.geojson, job.number, served)
    colours_name = manifest.outputs.embedding_colours
    if colours_name:
        publish_geojson(run.run_dir, colours_name, job.number, out_dir / SERVED_EMBEDDING_COLOURS)
    summary = {
        "k": manifest.clusters.k,
        "tissue_tiles": manifest.tiles.kept,
        "features": n_features,
        "embedding_cache": manifest.embedding.cache,
        "warnings": list(job.warnings) + list(manifest.warnings),
        "report": (run.run_dir / REPORT_PDF).is_file(),
        "run_dir": str(run.run_dir),
        "embedding_colours": bool(colours_name),
    }
    return run.run_dir, served, classes, summary


def _engine(settings: ServerSettings) -> Any:
    """The EngineInfo of this job: this process, or (``serve --scheduler``) the Dask worker it runs on."""
    from ..outputs.run_folder import LOCAL_ENGINE, EngineInfo

    if not settings.scheduler:
        return LOCAL_ENGINE
    from distributed import get_worker

    address = get_worker().address
    return EngineInfo(engine="dask", scheduler=settings.scheduler, worker=address, model_worker=address)


def _run_dictionary(store: JobStore, settings: ServerSettings, job: Job, slide: Path,
                    out_dir: Path) -> tuple[Path, Path, list[dict[str, Any]], dict[str, Any]]:
    """A saved dictionary applied to one image; returns (result folder, served GeoJSON, classes, summary)."""
    from ..errors import InvalidInputError
    from ..labelling import apply_dictionary
    from ..outputs.qupath import DICTIONARY_TAG

    options = job.config
    path = settings.dictionaries_dir / f"{options['dictionary_id']}.tumlsdict"
    if not path.is_file():
        raise InvalidInputError(f"the dictionary {options['dictionary_id']} was deleted from the server after this "
                                "job was submitted (GET /dictionaries lists those that remain)")
    device = str((settings.base_parameters.get("embedding") or {}).get("device", "auto"))
    progress = _Progress(store, job, _DICTIONARY_STAGES, _DICTIONARY_WEIGHTS)
    [result] = apply_dictionary(path, [slide], out_dir, query=options["query"], gamma=options["gamma"],
                                seed=options.get("seed"), device=device, mpp=options.get("pixel_size_um"),
                                gzip=True, progress=progress)
    manifest = result.manifest
    store.progress(job.id, job.attempt, 0.99, "publish", "preparing the GeoJSON for QuPath")
    served = out_dir / SERVED_GEOJSON
    classes, n_features = publish_geojson(result.out_dir, manifest.outputs.geojson, job.number, served,
                                          tag=DICTIONARY_TAG)
    query = manifest.query
    summary = {
        "k": len(manifest.dictionary.classes),
        "tissue_tiles": manifest.tiles.kept,
        "features": n_features,
        "embedding_cache": None,
        "warnings": list(job.warnings),
        "report": False,
        "run_dir": str(result.out_dir),
        "embedding_colours": False,
        "dictionary": {
            "id": options["dictionary_id"], "name": options.get("dictionary_name"), "query": query.shown,
            "gamma": query.gamma, "groups": query.groups, "tiles_per_class": query.tiles_per_class[query.shown],
            "agreement_dq_cq": round(query.agreement_dq_cq, 4),
        },
    }
    return result.out_dir, served, classes, summary


def run_job(store: JobStore, settings: ServerSettings, job: Job) -> str:
    """Run one claimed job to its end; returns its final state as recorded (or ``"superseded"``)."""
    from ..config import EMBEDDING_FILES
    from .intake import check_under_roots

    job_dir = settings.jobs_dir / job.id
    out_dir = job_dir / f"attempt-{job.attempt}"
    package_log = logging.getLogger("tumls_qp")
    handler: logging.Handler | None = None
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(job_dir / JOB_LOG, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package_log.addHandler(handler)
        package_log.setLevel(logging.INFO)
        log.info("job %s (%s, number %d, attempt %d): %s", job.id, job.kind, job.number, job.attempt,
                 job.image_path)
        if shutil.disk_usage(settings.data_dir).free < settings.min_free_mb * 2**20:
            raise data_folder_full(settings.data_dir, settings.min_free_mb)
        # Checked again here: the files may have been swapped for symlinks since the job was admitted.
        slide = check_under_roots(Path(job.image_path), settings.roots, "image")
        for name in EMBEDDING_FILES if job.kind == "analysis" else ():
            named = (job.config.get("embedding") or {}).get(name)
            if named is not None:
                check_under_roots(named, settings.roots, f"parameters.embedding.{name}")
        run = _run_dictionary if job.kind == "dictionary" else _run_analysis
        run_dir, served, classes, summary = run(store, settings, job, slide, out_dir)
        if store.finish(job.id, job.attempt, "succeeded", run_dir=str(run_dir), geojson_path=str(served),
                        classes=classes, summary=summary):
            log.info("job %s succeeded: %d objects", job.id, summary["features"])
            return "succeeded"
        log.info("job %s was cancelled or superseded while finishing; its outputs are removed", job.id)
        shutil.rmtree(out_dir, ignore_errors=True)
        return "superseded"
    except _JobGone:
        log.info("job %s was cancelled; stopping", job.id)
        shutil.rmtree(out_dir, ignore_errors=True)
        return "superseded"
    except TumlsQpError as exc:
        shutil.rmtree(out_dir, ignore_errors=True)
        if is_disk_full(exc):
            exc = data_folder_full(settings.data_dir)
        message = "; ".join([str(exc), *getattr(exc, "__notes__", [])])
        log.error("job %s failed: %s", job.id, message)
        return "failed" if store.finish(job.id, job.attempt, "failed", error=message) else "superseded"
    except Exception as exc:
        if is_disk_full(exc):  # the disk, not a bug: say so, without a traceback to report
            shutil.rmtree(out_dir, ignore_errors=True)
            message = str(data_folder_full(settings.data_dir))
            log.error("job %s failed: %s (%s)", job.id, message, exc)
            return "failed" if store.finish(job.id, job.attempt, "failed", error=message) else "superseded"
        log.exception("job %s failed with an internal error", job.id)
        shutil.rmtree(out_dir, ignore_errors=True)
        message = (f"internal error ({type(exc).__name__}: {exc}); the traceback is in {job_dir / JOB_LOG}. "
                   "Please report it.")
        return "failed" if store.finish(job.id, job.attempt, "failed", error=message) else "superseded"
    finally:
        if handler is not None:
            package_log.removeHandler(handler)
            handler.close()


def _on_sigterm(signum: int, frame: Any) -> None:
    # Unwinds the stack, so the pipeline's finally-blocks remove its staging folders.
    raise SystemExit(128 + signum)


def _exit_when_orphaned(stdin: Any) -> None:
    """End this process as soon as the server process is gone (kill -9 included).

    The server holds the write end of this process's stdin: when the server dies, the
    read below returns end-of-file. On Linux the kernel also sends SIGKILL on the
    parent's death (PR_SET_PDEATHSIG).
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        try:
            while stdin.read(4096):
                pass
        finally:
            os._exit(70)

    threading.Thread(target=watch, name="tumls-qp-orphan-watch", daemon=True).start()


def _start_heartbeat(path: Path) -> None:
    """Touch ``path`` every ``HEARTBEAT_INTERVAL_S`` from a thread of its own, for as long as this process runs
    (a stopped or frozen process stops it; the supervisor watches its modification time)."""
    def beat() -> None:
        while True:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            except OSError as exc:  # e.g. a full disk that has no room for the (empty) file: try again
                log.debug("heartbeat: %s", exc)
            time.sleep(HEARTBEAT_INTERVAL_S)

    threading.Thread(target=beat, name="tumls-qp-heartbeat", daemon=True).start()


def settings_to_json(settings: ServerSettings) -> str:
    """What a worker process needs to rebuild the settings (sent on its stdin, so the token never shows in ps)."""
    import json
    from dataclasses import asdict

    data = asdict(settings)
    data["data_dir"] = str(settings.data_dir)
    data["roots"] = [str(r) for r in settings.roots]
    return json.dumps(data)


def _run_in_share(store: JobStore, settings: ServerSettings, job: Job) -> str:
    """Run a job with this worker's share of the cores for torch, OpenCV and the BLAS/OpenMP pools (a job's
    ``embedding.num_threads`` still overrides it for its training)."""
    from ..tissue.embeddings import set_cpu_threads

    n = cpu_share(settings.workers)
    set_cpu_threads(n)
    with cpu_threads(n):
        return run_job(store, settings, job)


def worker_main(settings: ServerSettings) -> None:
    """Claim and run jobs until ``max_jobs_per_worker`` have run (or a job is cancelled under us)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C in a terminal reaches the whole process group; the server decides what happens to jobs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    store = JobStore(settings.db_path)
    done = 0
    try:
        while done < settings.max_jobs_per_worker:
            job = store.claim(os.getpid())
            if job is None:
                time.sleep(settings.poll_interval_s)
                continue
            if _run_in_share(store, settings, job) == "superseded":
                # Cancelled under us: the server is about to stop this process; never start another job in it.
                return
            done += 1
    finally:
        store.close()


def main() -> None:
    """``python -m tumls_qp.server.worker``: read the settings (one JSON line) from stdin, then work."""
    import json

    line = sys.stdin.readline()
    if not line:
        sys.exit(70)
    data = json.loads(line)
    data["data_dir"] = Path(data["data_dir"])
    data["roots"] = tuple(Path(r) for r in data["roots"])
    settings = ServerSettings(**data)
    _exit_when_orphaned(sys.stdin)
    _start_heartbeat(settings.heartbeat_path(os.getpid()))
    worker_main(settings)


if __name__ == "__main__":
    main()
