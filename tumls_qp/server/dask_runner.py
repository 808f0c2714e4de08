"""Runs the server's jobs on a Dask cluster (``tumls-qp serve --scheduler ADDRESS``).

The server keeps its SQLite job table, its API and its rules; only where a job runs changes. A
dispatcher thread claims queued jobs while the cluster has a free task thread and submits each
as one task, which runs :func:`tumls_qp.server.worker.run_job` on a Dask worker: the worker
records the job's progress and result in the job table itself, as a local worker process does.
So the data folder (job table and outputs) and the slides must be on storage that every worker
mounts at the same paths, with the file locking SQLite relies on (one machine, or a shared file
system that honours POSIX locks).

Cancel: the job is marked cancelled in the table and its task is released; a task that runs
stops at its next progress report (``run_job`` finds the job no longer its own) and removes its
outputs.

A worker that dies (killed, out of memory): Dask runs the task again on another worker, up to
``distributed.scheduler.allowed-failures`` times; each try starts the attempt's folder afresh.
When every try died, the job fails with a message saying so.

Server restart: as with worker processes, jobs left running go back to the queue and unfinished
outputs are removed (:meth:`JobStore.recover`, :func:`~tumls_qp.server.runner.sweep_outputs`); a
task of the previous server that still runs on the cluster finds its attempt superseded at its
next progress report and removes its own outputs.

Bad input: a scheduler that does not answer stops the server from starting within a few seconds;
workers that run other software than the server are refused in words (Dask's version check) at
start, and a worker with other software that joins later stops new jobs from being dispatched
(logged, ``/health`` degraded) until it leaves. Without workers, jobs wait in the queue.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
from typing import Any

from ..errors import EngineError
from .runner import _RESTART_REASON, _DataDirLock, open_store, sweep_outputs
from .settings import ServerSettings
from .store import Job, JobStore

__all__ = ["DaskRunner"]

log = logging.getLogger(__name__)

_DISPATCH_INTERVAL_S = 0.2


class DaskRunner:
    """Hands jobs to the Dask cluster of ``settings.scheduler`` (a :class:`~tumls_qp.server.runner.Runner`)."""

    def __init__(self, settings: ServerSettings) -> None:
        if not settings.scheduler:
            raise ValueError("DaskRunner needs settings.scheduler")
        self.settings = settings
        self.store: JobStore | None = None
        self.client: Any = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: job id -> (the job as claimed, its Dask future).
        self._running: dict[str, tuple[Job, Any]] = {}
        self._workers: dict[str, int] = {}  # address -> task threads
        self._threads: dict[str, int] = {}  # address -> CPU threads per task
        self._mismatch: str | None = None
        self._data_lock = _DataDirLock(settings.data_dir)

    # --- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to the scheduler, check the workers, recover the job table, start dispatching."""
        if self._thread is not None:
            return
        from ..dask_engine import check_versions, connect

        self.client = connect(str(self.settings.scheduler))  # EngineError within seconds when none answers
        try:
            check_versions(self.client)
            self._data_lock.acquire()
            self.store = open_store(self.settings)
        except BaseException:
            self._data_lock.release()
            self.client.close()
            raise
        self._thread = threading.Thread(target=self._dispatch, name="tumls-qp-dask-dispatcher", daemon=True)
        self._thread.start()
        log.info("jobs run on the Dask cluster at %s", self.settings.scheduler)

    def stop(self) -> None:
        """Stop dispatching and release the tasks; jobs that were running go back to the queue."""
        if self._thread is None or self._stopping.is_set():
            return
        self._stopping.set()
        self._thread.join(timeout=10)
        with self._lock:
            futures = [future for _, future in self._running.values()]
            self._running.clear()
        if futures:
            self.client.cancel(futures)
        assert self.store is not None
        self.store.recover(_RESTART_REASON)
        sweep_outputs(self.settings, self.store)
        self.store.close()
        self.store = None
        self.client.close()
        self._data_lock.release()

    def workers_alive(self) -> int:
        """Dask workers connected to the scheduler."""
        with self._lock:
            return len(self._workers)

    def workers_stalled(self) -> int:
        """Workers that may not run jobs (other software than the server); Dask itself removes frozen workers."""
        with self._lock:
            return len(self._workers) if self._mismatch else 0

    def cancel(self, job: Job) -> None:
        """Release ``job``'s task: a queued one is dropped, a running one stops at its next progress report."""
        with self._lock:
            entry = self._running.pop(job.id, None)
        if entry is None:
            self._remove_outputs(job.id)
            return
        # A task that has not started writes nothing; one that runs removes its outputs when it stops.
        self.client.cancel([entry[1]])

    # --- dispatching ------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tick()
            except Exception:  # never let the dispatcher die; log and go on
                log.exception("Dask job dispatcher error")
            self._stopping.wait(_DISPATCH_INTERVAL_S)

    def _tick(self) -> None:
        self._watch_workers()
        with self._lock:
            done = [(job, future) for job, future in self._running.values() if future.done()]
            for job, _ in done:
                del self._running[job.id]
        for job, future in done:
            self._finished(job, future)
        assert self.store is not None
        while not self._stopping.is_set():
            with self._lock:
                if self._mismatch or len(self._running) >= sum(self._workers.values()):
                    return
            job = self.store.claim(os.getpid())
            if job is None:
                return
            future = self.client.submit(_run_on_worker, _for_workers(self.settings), job, self._threads,
                                        key=f"tumls-qp-job-{job.id}-{job.attempt}", pure=False)
            with self._lock:
                self._running[job.id] = (job, future)
            log.info("job %s (attempt %d) handed to the Dask cluster", job.id, job.attempt)

    def _watch_workers(self) -> None:
        """Follow the workers joining and leaving; check the software of the ones that join."""
        workers = dict(self.client.nthreads())
        if workers == self._workers:
            return
        from ..dask_engine import check_versions, cpu_shares

        mismatch = None
        if workers:
            try:
                check_versions(self.client)
            except EngineError as exc:
                mismatch = str(exc)
                log.error("no new job is started until the workers match: %s", exc)
        threads = cpu_shares(self.client) if workers and not mismatch else {}
        with self._lock:
            self._workers, self._mismatch, self._threads = workers, mismatch, threads
        log.info("%d Dask worker(s), %d task thread(s)", len(workers), sum(workers.values()))

    def _finished(self, job: Job, future: Any) -> None:
        """A task ended: the worker recorded the job's end itself, unless the task failed or was lost."""
        if future.status == "finished":
            return
        from ..dask_engine import explain_failure

        assert self.store is not None
        if future.status == "error":
            error = explain_failure(future.exception(), "this job")
            message = str(error) if isinstance(error, EngineError) else (
                f"the Dask task failed ({type(error).__name__}: {error}); see the Dask workers' logs")
        else:  # released by the scheduler (e.g. the client lost it), not by a cancel
            message = "the Dask cluster lost this job's task; submit it again"
        if self.store.finish(job.id, job.attempt, "failed", error=message):
            log.error("job %s failed: %s", job.id, message)
        self._remove_outputs(job.id, attempt=job.attempt)

    def _remove_outputs(self, job_id: str, attempt: int | None = None) -> None:
        """Remove a job's attempt folders (``attempt``: that one only), the job folder when the job was deleted."""
        job_dir = self.settings.jobs_dir / job_id
        if self.store is not None and self.store.get(job_id) is None:
            shutil.rmtree(job_dir, ignore_errors=True)
            return
        pattern = f"attempt-{attempt}" if attempt is not None else "attempt-*"
        for folder in job_dir.glob(pattern) if job_dir.is_dir() else []:
            shutil.rmtree(folder, ignore_errors=True)


def _for_workers(settings: ServerSettings) -> ServerSettings:
    """The settings a worker needs: no token (it never serves requests)."""
    return dataclasses.replace(settings, token=None, host="127.0.0.1")


def _run_on_worker(settings: ServerSettings, job: Job, threads: dict[str, int]) -> str:
    """A job on a Dask worker (one try of one attempt); returns its final state as :func:`run_job` does."""
    from ..dask_engine import task_cpus
    from .worker import run_job

    with task_cpus(threads):
        # A previous try of this attempt died on another worker: start from nothing.
        shutil.rmtree(settings.jobs_dir / job.id / f"attempt-{job.attempt}", ignore_errors=True)
        store = JobStore(settings.db_path)
        try:
            return run_job(store, settings, job)  # the manifest's engine names this worker
        finally:
            store.close()
