"""Scale-out on Dask distributed: slides analysed as tasks on the workers of a Dask cluster.

The one home of ``distributed`` (the ``dask`` extra: ``pip install 'tumls-qp[dask]'``), imported
only when a cluster is asked for (``--scheduler`` or ``--workers``).

What runs where
---------------
Slides analysed alone: one task per slide, on any worker. It runs the whole of
:func:`tumls_qp.pipeline.analyze_group` (tiles, training, embedding, clustering, nuclei of the
representatives, run folder) and writes the run folder itself, atomically.

A cohort (one model for all slides): a ``tiles`` task per slide; one ``model`` task that trains,
embeds and clusters the tiles of all slides, on a worker that declares the resource ``GPU``
(``dask worker ADDRESS --resources GPU=1``) when there is one; then a ``slide`` task per slide
(nuclei, run folder staged) and one ``commit`` task that renames the run folders into place
together and renders the cohort report.

Storage: the workers read the slides and write ``--out`` (and the embedding cache) under the
same paths as the client gives (relative paths are made absolute on the client): shared
storage that every worker mounts at the same place. Before any work, every worker is asked
whether it can read each slide and write ``--out``; a path a worker cannot use is an error
that names the worker and the path.

Faults: the run folders of one run are built in the run's own hidden staging folder,
``OUT/.tumls-qp-dask-<id>.partial/``. A worker that dies (killed, out of memory) loses its
task; Dask runs it again on another worker (up to ``distributed.scheduler.allowed-failures``
times, 3 by default) while the other slides go on. The dead attempt's half-written staging
folder is removed with the run's staging folder at the end; a run folder appears complete or
not at all.

Bad input: an unreachable scheduler is an error after ``CONNECT_TIMEOUT_S`` seconds; a cluster
without workers is waited for ``wait_for_workers_s`` seconds (``--wait-for-workers``), then an
error; client and workers must run the same versions of Python (major.minor), tumls-qp, torch,
numpy and Dask's own packages (Dask's version check, its table quoted in the error).

CPU threads: each task uses its worker's share of the machine's cores (the cores divided by
the task threads of all workers on that machine) for torch, OpenCV and BLAS.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .config import PipelineConfig
from .cpu import cpu_share, cpu_threads
from .errors import ConfigError, EngineError, InvalidInputError, OutputError, TumlsQpError
from .files import writable_dir
from .outputs.run_folder import EngineInfo, RunStaging, SlideInfo, StagedRun
from .pipeline import (
    STAGES,
    GroupModel,
    ProgressFn,
    RunResult,
    SlideTiles,
    StageTimer,
    analyse_slide,
    analyze_group,
    fit_group,
    group_cache_key,
    plan_runs,
    read_slide_tiles,
    stage_run,
    write_cohort_report,
)

__all__ = ["analyze_on_dask", "dask_client", "connect", "check_versions", "cpu_shares", "task_cpus", "explain_failure",
           "CONNECT_TIMEOUT_S", "WAIT_FOR_WORKERS_S", "PROGRESS_STAGE", "MATCHING_PACKAGES", "StopRequested"]

log = logging.getLogger(__name__)

#: Seconds to reach the scheduler before giving up.
CONNECT_TIMEOUT_S = 5.0
#: Default seconds to wait for a first worker to join the scheduler.
WAIT_FOR_WORKERS_S = 60.0
#: The stage name of the progress :func:`analyze_on_dask` reports: the fraction of all slides' work done.
PROGRESS_STAGE = "slides"
#: Packages whose versions must be the same on the client and every worker (Python: major.minor).
MATCHING_PACKAGES = ("python", "tumls-qp", "torch", "numpy", "dask", "distributed", "cloudpickle", "msgpack")
#: Seconds between two progress events of one task (stage changes are sent at once).
_EVENT_INTERVAL_S = 0.5


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ConfigError("--scheduler and --workers need Dask distributed: pip install 'tumls-qp[dask]'") from exc
    return distributed


# --- the cluster -------------------------------------------------------------------------------------------------------

@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, *,
                wait_for_workers_s: float = WAIT_FOR_WORKERS_S) -> Iterator[Any]:
    """A ``distributed.Client``, checked, for the block.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``; ``dask scheduler`` prints it).
    workers : int, optional
        Instead: start a ``distributed.LocalCluster`` of this many worker processes (one task
        thread each) on this machine for the block.
    wait_for_workers_s : float
        How long a scheduler without workers is waited for.

    Raises
    ------
    EngineError
        The scheduler cannot be reached within ``CONNECT_TIMEOUT_S`` s, no worker joined within
        ``wait_for_workers_s`` s, or the workers run other versions than this client.
    ConfigError
        Neither or both of ``scheduler`` and ``workers``, or a malformed address.
    """
    if (scheduler is None) == (workers is None):
        raise ConfigError("give one of --scheduler ADDRESS (an existing Dask cluster) or --workers N (a cluster of N "
                          "processes on this machine)")
    distributed = _distributed()
    cluster = None
    if workers is not None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ConfigError(f"--workers must be a whole number of worker processes, 1 or more; got {workers!r}")
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None)
        client = distributed.Client(cluster)
    else:
        client = connect(str(scheduler))
    try:
        if cluster is None:
            _wait_for_workers(client, str(scheduler), wait_for_workers_s)
            check_versions(client)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def connect(address: str) -> Any:
    """A ``distributed.Client`` of the scheduler at ``address``, or EngineError within ``CONNECT_TIMEOUT_S`` s.

    The scheduler is asked first with a deadline of our own: a Client waits forever on a peer that
    accepts and never answers. Both run in a thread of their own, so that this may be called from
    a running event loop (a server's start-up).
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="tumls-qp-connect") as pool:
        return pool.submit(_connect, address).result()


def _connect(address: str) -> Any:
    import asyncio

    distributed = _distributed()

    async def identity() -> dict[str, Any]:
        async with distributed.core.rpc(address, timeout=CONNECT_TIMEOUT_S) as scheduler:
            return await scheduler.identity()

    start = time.monotonic()
    try:
        info = asyncio.run(asyncio.wait_for(identity(), CONNECT_TIMEOUT_S))
    except ValueError as exc:
        raise ConfigError(f"--scheduler {address!r} is not a Dask scheduler address ({exc}); give it as "
                          "tcp://HOST:PORT, as `dask scheduler` prints it") from exc
    except Exception as exc:
        raise EngineError(
            f"no Dask scheduler answered at {address} (gave up after {time.monotonic() - start:.0f} s: "
            f"{type(exc).__name__}: {str(exc)[:200] or 'no answer'}). Check the address (the scheduler's, as `dask "
            "scheduler` prints it, not its dashboard's) and that the scheduler runs and is reachable from here."
        ) from exc
    if info.get("type") != "Scheduler":
        raise EngineError(f"{address} is a Dask {info.get('type', 'process')}, not the scheduler: give the address "
                          "of the scheduler the workers joined (`dask scheduler` prints it)")
    with warnings.catch_warnings():
        # Dask warns of mismatched versions on connecting; check_versions makes that an error with the same table.
        warnings.simplefilter("ignore", distributed.versions.VersionMismatchWarning)
        return distributed.Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)


def _wait_for_workers(client: Any, address: str, seconds: float) -> None:
    try:
        client.wait_for_workers(1, timeout=seconds)
    except (TimeoutError, OSError) as exc:
        raise EngineError(
            f"the Dask scheduler at {address} has no worker (waited {seconds:g} s). Start workers with "
            f"`dask worker {address}` on machines that see the slides, or wait longer with --wait-for-workers SECONDS."
        ) from exc


def check_versions(client: Any) -> None:
    """Raise EngineError when a worker runs other versions of ``MATCHING_PACKAGES`` than this client.

    Dask's own check (``distributed.versions``) compares the client, the scheduler and the workers;
    its table of mismatches is quoted in the error. Mismatches of other packages are logged.
    """
    from distributed.versions import error_message

    versions = client.get_versions(packages=["tumls-qp", "torch"])
    mine = versions["client"]["packages"]
    table = error_message(versions["scheduler"], versions["workers"], versions["client"])["warning"]
    differ = set()
    for address, info in versions["workers"].items():
        theirs = info.get("packages", {}) if isinstance(info, dict) else {}
        for package in MATCHING_PACKAGES:
            a, b = mine.get(package), theirs.get(package)
            if package == "python":
                a, b = (".".join(str(v).split(".")[:2]) if v else v for v in (a, b))
            if a != b:
                differ.add(package)
    if differ:
        raise EngineError(
            f"the Dask workers do not run the same software as this client: {', '.join(sorted(differ))} "
            "differ. Install the same versions on the client and every worker (e.g. the same environment file). "
            f"Dask's version check reports:\n{table}"
        )
    if table:
        log.warning("Dask's version check: %s", table)


@dataclass(frozen=True)
class _Workers:
    """What the workers said when asked (:func:`_survey`): CPU threads for each task, which have a GPU."""

    threads: dict[str, int]
    gpus: list[str]


def _survey(client: Any, slides: Sequence[Path], out: Path) -> _Workers:
    """Ask every worker whether it can read every slide and write ``out``, and what it has; raise what it cannot."""
    answers = client.run(_worker_survey, [str(s) for s in slides], str(out))
    problems = [f"the Dask worker {address} {problem}" for address, a in sorted(answers.items())
                for problem in a["problems"]]
    if problems:
        cls = OutputError if all("cannot write" in p for p in problems) else InvalidInputError
        raise cls("; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
                  + ". The workers read the slides and write --out themselves: give paths on storage that every "
                  "worker mounts at the same place.")
    return _Workers(threads=_shares(answers), gpus=sorted(address for address, a in answers.items() if a["gpus"] > 0))


def cpu_shares(client: Any) -> dict[str, int]:
    """CPU threads for a task on each worker of ``client``'s cluster (:func:`task_cpus`)."""
    return _shares(client.run(_worker_cpus))


def _shares(answers: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The task threads of all workers on a machine share its cores."""
    from distributed.comm import get_address_host

    per_host: dict[str, int] = {}
    for address, a in answers.items():
        per_host[get_address_host(address)] = per_host.get(get_address_host(address), 0) + a["nthreads"]
    return {address: max(1, a["cpus"] // per_host[get_address_host(address)]) for address, a in answers.items()}


def _worker_cpus(dask_worker: Any = None) -> dict[str, int]:
    """On a worker (``Client.run``): its machine's cores and its task threads."""
    return {"cpus": os.cpu_count() or 1, "nthreads": int(dask_worker.state.nthreads)}


def _worker_survey(slides: list[str], out: str, dask_worker: Any = None) -> dict[str, Any]:
    """On a worker (``Client.run``): what it cannot read or write; its cores, task threads and GPU resource."""
    problems = []
    for slide in slides:
        path = Path(slide)
        if not path.exists():
            problems.append(f"cannot find the slide {slide}")
        elif not path.is_file():
            problems.append(f"finds a folder, not a slide file, at {slide}")
        elif not os.access(path, os.R_OK):
            problems.append(f"cannot read the slide {slide} (permission denied)")
    try:
        writable_dir(Path(out))
    except OutputError as exc:
        problems.append(f"cannot write the output folder {out} ({exc.__cause__ or exc})")
    return {"problems": problems, **_worker_cpus(dask_worker),
            "gpus": float(dask_worker.state.total_resources.get("GPU", 0))}


# --- on the workers ---------------------------------------------------------------------------------------------------

def _topic(run: str) -> str:
    """The event topic of run ``run``'s progress."""
    return f"tumls-qp-progress-{run}"


def _stop_event(run: str) -> str:
    """The name of the ``distributed.Event`` that tells run ``run``'s tasks to stop."""
    return f"tumls-qp-stop-{run}"


class StopRequested(Exception):
    """The client stopped the run (interrupted, failed or cancelled) while this task ran."""


class _Events:
    """A pipeline progress callback on a worker: sends throttled events to the client, and stops the task (raises
    StopRequested) when the client has set the run's stop event, so that a task the client gave up writes no more."""

    def __init__(self, run: str, slide: str | None) -> None:
        from distributed import Event, get_worker

        self.worker = get_worker()
        self.topic, self.slide = _topic(run), slide
        self.stop = Event(_stop_event(run))
        self.last_stage: str | None = None
        self.last_sent = 0.0

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        now = time.monotonic()
        if stage == self.last_stage and now - self.last_sent < _EVENT_INTERVAL_S and fraction < 1.0:
            return
        self.last_stage, self.last_sent = stage, now
        if self.stop.is_set():
            raise StopRequested(f"{self.slide or 'the cohort'}: stopped by the client")
        self.worker.log_event(self.topic, {"slide": self.slide, "stage": stage, "fraction": float(fraction),
                                           "message": message, "worker": self.worker.address})


@contextmanager
def task_cpus(threads: dict[str, int]) -> Iterator[str]:
    """Run a task with its worker's share of the cores; a tumls-qp error names the worker. Yields its address."""
    from distributed import get_worker

    from .tissue.embeddings import set_cpu_threads

    worker = get_worker()
    n = threads.get(worker.address) or cpu_share(worker.state.nthreads)
    set_cpu_threads(n)
    try:
        with cpu_threads(n):
            yield worker.address
    except TumlsQpError as exc:
        exc.add_note(f"on the Dask worker {worker.address}")
        raise


def _open(path: Path, config: PipelineConfig) -> Any:
    from .slide import open_slide

    return open_slide(path, mpp=config.slide.mpp, mpp_override=config.slide.mpp_override)


def _slide_task(path: Path, name: str, out: Path, staging: Path, config: PipelineConfig, cache: Path | None,
                scheduler: str, run: str, threads: dict[str, int]) -> RunResult:
    """One slide analysed alone, its run folder written into ``out``."""
    with task_cpus(threads) as address:
        engine = EngineInfo(engine="dask", scheduler=scheduler, worker=address, model_worker=address)
        [result] = analyze_group([path], [name], out, config, cache, _Events(run, name), cohort=False,
                                 engine=engine, staging_in=staging)
        return result


def _tiles_task(path: Path, name: str, index: int, count: int, config: PipelineConfig, run: str,
                threads: dict[str, int]) -> tuple[SlideTiles, dict[str, float]]:
    """A cohort slide's tissue level."""
    from .slide import slide_quickhash

    with task_cpus(threads):
        timer = StageTimer()
        slide = _open(path, config)
        try:
            info = SlideInfo.of(slide, slide_quickhash(slide.path))
            part = read_slide_tiles(slide, info, config, _Events(run, name), timer, index=index, count=count)
        finally:
            slide.close()
        return part, timer.seconds


def _model_task(parts: list[tuple[SlideTiles, dict[str, float]]], config: PipelineConfig, cache: Path | None,
                run: str, threads: dict[str, int]) -> tuple[GroupModel, dict[str, float], str]:
    """The cohort's model and clustering; the model comes back on the CPU."""
    from .tissue.cache import load_cached

    with task_cpus(threads) as address:
        timer = StageTimer()
        tiles = [p for p, _ in parts]
        cached = load_cached(cache, group_cache_key([p.info for p in tiles], config)) if cache else None
        group = fit_group(tiles, config, _Events(run, None), timer, cache=cache, cached=cached)
        group.embedding.encoder.to("cpu")
        return group, timer.seconds, address


def _cohort_slide_task(path: Path, index: int, names: list[str], tiles: tuple[SlideTiles, dict[str, float]],
                       model: tuple[GroupModel, dict[str, float], str], out: Path, staging: Path,
                       config: PipelineConfig, started: datetime, scheduler: str, run: str,
                       threads: dict[str, int]) -> tuple[list[StagedRun], dict[str, float]]:
    """A cohort slide's nuclei and run folder, staged (committed by :func:`_commit_task`)."""
    from .slide import slide_quickhash

    part, group, model_worker = tiles[0], model[0], model[2]
    with task_cpus(threads) as address:
        timer = StageTimer()
        events = _Events(run, names[index])
        slide = _open(path, config)
        try:
            if slide_quickhash(slide.path) != part.info.quickhash:
                raise InvalidInputError(f"the slide {path} changed while the cohort was analysed; run it again")
            engine = EngineInfo(engine="dask", scheduler=scheduler, worker=address, model_worker=model_worker)
            analysis = analyse_slide(slide, part, group, index, config, started, events, timer,
                                     cohort=tuple(names), engine=engine)
        finally:
            slide.close()
        with RunStaging(out, staging) as run_staging:
            stage_run(run_staging, names[index], analysis, events, timer, index=index, count=len(names))
            return run_staging.release(), timer.seconds


def _commit_task(staged: list[tuple[list[StagedRun], dict[str, float]]], out: Path, config: PipelineConfig,
                 seconds: dict[str, float], threads: dict[str, int]) -> list[tuple[Path, Any]]:
    """The cohort's run folders renamed into place together, with the cohort's timings; then its report."""
    with task_cpus(threads):
        timer = StageTimer()
        timer.add(seconds)
        for _, s in staged:
            timer.add(s)
        with RunStaging(out) as run_staging:
            run_staging.adopt([run for runs, _ in staged for run in runs])
            written = run_staging.commit(timer.seconds)
        write_cohort_report([run_dir for run_dir, _ in written], out, config)
        return written


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --- on the client ----------------------------------------------------------------------------------------------------

def analyze_on_dask(
    slides: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    config: PipelineConfig | None = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    cohort: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: ProgressFn | None = None,
    run_names: Sequence[str] | None = None,
    wait_for_workers_s: float = WAIT_FOR_WORKERS_S,
) -> list[RunResult]:
    """:func:`tumls_qp.pipeline.analyze` on a Dask cluster: the same run folders, written by the workers.

    Parameters
    ----------
    slides, out_dir, config, cohort, cache_dir, run_names
        As for :func:`~tumls_qp.pipeline.analyze`. Paths must mean the same on every worker
        (shared storage); relative ones are made absolute here.
    scheduler : str, optional
        Address of a running Dask scheduler.
    workers : int, optional
        Instead of ``scheduler``: a local cluster of this many worker processes for the run.
    progress : callable(stage, fraction, message), optional
        Called with stage ``PROGRESS_STAGE`` and the fraction of all slides' work done; the
        message names the slide, what it is doing and the worker.
    wait_for_workers_s : float
        How long a scheduler without workers is waited for.

    Returns
    -------
    list of RunResult
        In the order of ``slides``; each manifest's ``engine`` names the scheduler and the workers.
        Without ``cohort``, the first failing slide's error is raised after the other slides are done.
    """
    config = config or PipelineConfig()
    paths, names = plan_runs([Path(s).absolute() for s in slides], config, run_names)
    out = Path(out_dir).absolute()
    cache = Path(cache_dir).absolute() if cache_dir is not None else None
    with dask_client(scheduler, workers, wait_for_workers_s=wait_for_workers_s) as client:
        workers_found = _survey(client, paths, out)
        run = _Run(client, names, progress)
        address = str(client.scheduler.address)
        staging = out / f".tumls-qp-dask-{run.token}.partial"
        try:
            if cohort:
                return run.cohort(paths, out, staging, config, cache, address, workers_found)
            return run.each(paths, out, staging, config, cache, address, workers_found.threads)
        finally:
            run.close()
            try:
                client.submit(_remove_tree, staging, pure=False).result(timeout=60)
            except Exception as exc:  # the results stand; only a hidden folder is left
                log.warning("could not remove the staging folder %s: %s", staging, exc)


class _Run:
    """The client's side of one run: tasks submitted, progress events turned into ``progress`` calls."""

    def __init__(self, client: Any, names: list[str], progress: ProgressFn | None) -> None:
        from distributed import Event

        self.client, self.names, self.progress = client, names, progress
        self.token = uuid.uuid4().hex[:10]
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.state = {name: 0.0 for name in names}
        self.futures: list[Any] = []
        self.stop = Event(_stop_event(self.token), client=client)
        client.subscribe_topic(_topic(self.token), lambda event: self.events.put(event[1]))

    def close(self) -> None:
        """Stop what still runs (a running task stops at its next progress report), drop what is queued."""
        unfinished = [f for f in self.futures if not f.done()]
        if unfinished:
            self.stop.set()
            self.client.cancel(unfinished)
        self.client.unsubscribe_topic(_topic(self.token))

    def submit(self, fn: Callable[..., Any], *args: Any, key: str, **options: Any) -> Any:
        future = self.client.submit(fn, *args, key=f"tumls-qp-{key}-{self.token}", pure=False, **options)
        self.futures.append(future)
        return future

    def _report(self, slide: str | None, fraction: float, message: str) -> None:
        """Slide ``slide`` (None: all of them) is ``fraction`` done."""
        for name in [slide] if slide is not None else self.names:
            self.state[name] = max(self.state[name], fraction)
        if self.progress is not None:
            self.progress(PROGRESS_STAGE, sum(self.state.values()) / len(self.state), message)

    def wait(self, futures: dict[Any, str | None], finished: str, fraction: float) -> dict[Any, BaseException | None]:
        """Wait for ``futures``, each a slide's (None: the group's) task, reporting progress (``fraction`` of each
        slide is done when its task is); returns each one's error, or None."""
        outcome: dict[Any, BaseException | None] = {}
        pending = dict(futures)
        while pending:
            self._drain()
            for future, name in list(pending.items()):
                if not future.done():
                    continue
                del pending[future]
                error = future.exception() if future.status == "error" else None
                outcome[future] = explain_failure(error, name or "the cohort's model") if error is not None else None
                if error is None:
                    self._report(name, fraction, f"{name or 'cohort'}: {finished}")
            if pending:
                time.sleep(0.1)
        self._drain()
        return outcome

    def _drain(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            slide, stage = event.get("slide"), event.get("stage")
            if stage not in STAGES:
                continue
            done = _done(stage, float(event["fraction"]))
            label = slide if slide is not None else "cohort"
            self._report(slide, done, f"{label}: {stage}, {event['message']} ({event['worker']})")

    def each(self, paths: list[Path], out: Path, staging: Path, config: PipelineConfig, cache: Path | None,
             scheduler: str, threads: dict[str, int]) -> list[RunResult]:
        futures = {self.submit(_slide_task, path, name, out, staging, config, cache, scheduler, self.token, threads,
                               key=f"slide-{i}"): name
                   for i, (path, name) in enumerate(zip(paths, self.names))}
        outcome = self.wait(futures, "run folder written", 1.0)
        results, first_error = [], None
        for future, name in futures.items():
            error = outcome[future]
            if error is None:
                results.append(future.result())
                continue
            if len(paths) > 1:
                log.error("%s: %s", name, error)
            first_error = first_error or error
        if first_error is not None:
            if len(paths) > 1:
                first_error.add_note(f"{len(results)} of {len(paths)} slides were analysed")
            raise first_error
        return results

    def cohort(self, paths: list[Path], out: Path, staging: Path, config: PipelineConfig, cache: Path | None,
               scheduler: str, workers: _Workers) -> list[RunResult]:
        started = datetime.now(timezone.utc)
        n, threads = len(paths), workers.threads
        tiles = [self.submit(_tiles_task, path, name, i, n, config, self.token, threads, key=f"tiles-{i}")
                 for i, (path, name) in enumerate(zip(paths, self.names))]
        self._raise_first(self.wait(dict(zip(tiles, self.names)), "tiles read", _done("tiles")))
        gpus = workers.gpus if config.embedding.device in ("auto", "cuda") else []
        if gpus:
            log.info("training the cohort's model on a GPU worker (%s)", ", ".join(gpus))
        model = self.submit(_model_task, tiles, config, cache, self.token, threads, key="model",
                            resources={"GPU": 1} if gpus else None)
        self._raise_first(self.wait({model: None}, "model trained, tissues clustered", _done("cluster")))
        staged = [self.submit(_cohort_slide_task, path, i, self.names, tiles[i], model, out, staging, config, started,
                              scheduler, self.token, threads, key=f"slide-{i}")
                  for i, path in enumerate(paths)]
        self._raise_first(self.wait(dict(zip(staged, self.names)), "run folder staged", _done("outputs")))
        seconds = StageTimer()
        for future in tiles:
            seconds.add(future.result()[1])
        seconds.add(model.result()[1])
        commit = self.submit(_commit_task, staged, out, config, seconds.seconds, threads, key="commit")
        self._raise_first(self.wait({commit: None}, "run folders in place", 1.0))
        return [RunResult(slide=path, run_dir=run_dir, manifest=manifest)
                for path, (run_dir, manifest) in zip(paths, commit.result())]

    @staticmethod
    def _raise_first(outcome: dict[Any, BaseException | None]) -> None:
        errors = [e for e in outcome.values() if e is not None]
        if errors:
            raise errors[0]


def _done(stage: str, fraction: float = 1.0) -> float:
    """How much of a slide's work is done when ``stage`` is ``fraction`` done (each stage counts the same)."""
    return (STAGES.index(stage) + min(max(fraction, 0.0), 1.0)) / len(STAGES)


def explain_failure(error: BaseException, name: str) -> BaseException:
    """A task's error as the user should read it: Dask's KilledWorker in words."""
    from distributed.scheduler import KilledWorker

    if isinstance(error, KilledWorker):
        last = getattr(error.last_worker, "address", error.last_worker)
        explained = EngineError(
            f"{name}: every Dask worker that ran it died ({error.allowed_failures + 1} times; the last was {last}). "
            "It may need more memory than a worker has (dask worker --memory-limit), or the workers are being "
            "stopped; see the workers' logs."
        )
        explained.__cause__ = error
        return explained
    return error
