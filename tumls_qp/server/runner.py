"""Runs jobs: a supervisor thread in the server keeps ``workers`` worker processes alive.

Crash and restart policy
------------------------
At start, before any worker runs, jobs that the previous server left ``running`` go back
to the queue (a job runs at most ``store.MAX_ATTEMPTS`` times in all; then it fails with a
message saying so), queued jobs simply run, and folders that can never be served are
removed: staging folders (``.partial``, in run folders too), temporary dictionary files,
the outputs of unfinished attempts, everything but the result of succeeded jobs, and the
folders of jobs that were deleted. A graceful stop does the same for the jobs it interrupts.
A worker that dies while the server lives (out of memory, killed) fails its job with the
exit status. A cancel stops the worker (SIGTERM, then SIGKILL after ``cancel_grace_s``);
once it is gone the supervisor removes the outputs of every job it was running and starts a
fresh worker.

Heartbeats: each worker touches ``DATA_DIR/workers/<pid>`` every second. A worker whose
heartbeat has not moved for :data:`STALE_AFTER_S` counts as stalled (``/health`` says
``degraded``); after ``stall_timeout_s`` (a stopped or frozen process) its job fails, saying
so, and the worker is killed and replaced. The age is measured on the supervisor's monotonic
clock, so a suspended computer does not look like a stalled worker.

Only one server may use a data folder at a time: an exclusive ``flock`` on the data folder
itself, held for the server's life (deleting a file cannot release it); ``server.lock``
only tells which process holds it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from .errors import ServerStartError
from .settings import ServerSettings
from .store import Job, JobStore

__all__ = ["Runner", "ProcessRunner", "sweep_outputs", "STALE_AFTER_S"]

log = logging.getLogger(__name__)

_SUPERVISE_INTERVAL_S = 0.2
_RESTART_REASON = "the server stopped while this job was running"
#: A worker whose heartbeat is this much older counts as stalled in ``/health``.
STALE_AFTER_S = 10.0


class Runner(Protocol):
    """What the app needs from whatever runs jobs (tests may pass their own)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def cancel(self, job: Job) -> None:
        """``job`` (as it was before it was marked cancelled) must stop; its outputs must go."""

    def workers_alive(self) -> int: ...

    def workers_stalled(self) -> int:
        """Running workers whose heartbeat is late (stopped or frozen processes)."""


def sweep_outputs(settings: ServerSettings, store: JobStore) -> int:
    """Remove every folder under the data folder that can never be served; returns how many were removed."""
    removed = 0
    for stale in list(settings.cache_dir.glob(".*.partial")) if settings.cache_dir.is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True)
        removed += 1
    # Dictionaries are written to a hidden temporary file, then renamed.
    for stale in list(settings.dictionaries_dir.glob(".*")) if settings.dictionaries_dir.is_dir() else []:
        stale.unlink(missing_ok=True)
        removed += 1
    for beat in list(settings.heartbeats_dir.iterdir()) if settings.heartbeats_dir.is_dir() else []:
        beat.unlink(missing_ok=True)
    if not settings.jobs_dir.is_dir():
        return removed
    for job_dir in settings.jobs_dir.iterdir():
        if not job_dir.is_dir():
            continue
        job = store.get(job_dir.name)
        if job is None:  # deleted (DELETE /jobs/{id}, retention) while a worker still wrote into it
            shutil.rmtree(job_dir, ignore_errors=True)
            removed += 1
            continue
        keep: Path | None = None
        if job is not None and job.state == "succeeded" and job.run_dir:
            keep = Path(job.run_dir).parent
        elif job is not None and job.state == "running":
            continue  # not ours to touch (only called when no worker runs, but be safe)
        for attempt in job_dir.glob("attempt-*"):
            if keep is not None and attempt == keep:
                # Staging folders of the run, and of what is written into the run folder later (prototypes).
                for partial in [*attempt.glob(".*.partial"), *attempt.glob(".*.old"),
                                *attempt.glob("*/.*.partial"), *attempt.glob("*/.*.old")]:
                    shutil.rmtree(partial, ignore_errors=True)
                    removed += 1
                continue
            shutil.rmtree(attempt, ignore_errors=True)
            removed += 1
    return removed


def open_store(settings: ServerSettings) -> JobStore:
    """Open the job store of a data folder this server holds, recovering from the previous run.

    Jobs that were running go back to the queue (or fail when interrupted too often) and unfinished
    outputs are removed (:func:`sweep_outputs`).
    """
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(settings.db_path)
    requeued, failed = store.recover(_RESTART_REASON)
    for job in requeued:
        log.warning("job %s was running when the server stopped: queued to run again", job.id)
    for job in failed:
        log.warning("job %s was interrupted too often: marked failed", job.id)
    removed = sweep_outputs(settings, store)
    if removed:
        log.info("removed %d unfinished output folder(s)", removed)
    return store


class _DataDirLock:
    """An exclusive advisory lock (``flock``) on the data folder itself, held on an open descriptor for the
    server's life and released by the OS if the process dies. ``server.lock`` records the holder's pid."""

    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir
        self.path = data_dir / "server.lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one server per data folder is then the user's job
            return
        fd = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            try:
                holder = self.path.read_text(encoding="utf-8").strip()[:20] or "unknown"
            except OSError:
                holder = "unknown"
            raise ServerStartError(
                f"another tumls-qp server (pid {holder}) uses the data folder {self.folder}; stop it, or give "
                "this one another --data-dir"
            ) from None
        self.fd = fd
        try:
            self.path.write_text(str(os.getpid()), encoding="utf-8")
        except OSError as exc:  # informative only; the lock is on the folder
            log.warning("cannot write %s: %s", self.path, exc)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class ProcessRunner:
    """Keeps ``settings.workers`` worker processes running jobs from the store."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.store: JobStore | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._slots: list[Any] = [None] * settings.workers
        self._spawned_at: dict[int, float] = {}
        self._kill_at: dict[int, float] = {}
        #: pid -> (heartbeat file's last mtime seen, monotonic time it was seen to change).
        self._beats: dict[int, tuple[int, float]] = {}
        #: pid -> jobs whose outputs go once that worker has exited (cancelled, or failed as stalled).
        self._cleanup: dict[int, set[str]] = {}
        self._backoff_until = 0.0
        self._failures = 0
        self._data_lock = _DataDirLock(settings.data_dir)

    # --- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Take the data folder, recover from a previous run, start the workers (once; later calls do nothing)."""
        if self._thread is not None:
            return
        self._data_lock.acquire()
        try:
            self.store = open_store(self.settings)
        except BaseException:
            self._data_lock.release()
            raise
        self._thread = threading.Thread(target=self._supervise, name="tumls-qp-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the workers; jobs they were running go back to the queue for the next start."""
        if self._thread is None or self._stopping.is_set():
            return
        self._stopping.set()
        # Workers first: they die with the supervisor thread that started them (PR_SET_PDEATHSIG), so stopping
        # that thread first would SIGKILL them instead of letting them clean up.
        with self._lock:
            procs = [p for p in self._slots if p is not None]
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            deadline = time.monotonic() + self.settings.cancel_grace_s
            for proc in procs:
                try:
                    proc.wait(max(0.01, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
                if proc.stdin is not None:
                    proc.stdin.close()
            self._slots = [None] * len(self._slots)
        self._thread.join(timeout=10)
        if self.store is not None:
            self.store.recover(_RESTART_REASON)
            sweep_outputs(self.settings, self.store)
            self.store.close()
            self.store = None
        self._data_lock.release()

    def workers_alive(self) -> int:
        with self._lock:
            return sum(1 for p in self._slots if p is not None and p.poll() is None)

    def workers_stalled(self) -> int:
        now = time.monotonic()
        with self._lock:
            return sum(1 for p in self._slots
                       if p is not None and p.poll() is None and self._heartbeat_age(p.pid, now) > STALE_AFTER_S)

    def cancel(self, job: Job) -> None:
        """Stop the worker running ``job`` (SIGTERM now, SIGKILL after the grace period)."""
        if job.state != "running" or job.worker_pid is None:
            self._remove_outputs(job.id)
            return
        with self._lock:
            for proc in self._slots:
                if proc is not None and proc.pid == job.worker_pid and proc.poll() is None:
                    proc.terminate()
                    self._kill_at[proc.pid] = time.monotonic() + self.settings.cancel_grace_s
                    self._cleanup.setdefault(proc.pid, set()).add(job.id)
                    return
        # The worker is already gone; the supervisor has reaped (or will reap) it.
        self._remove_outputs(job.id)

    # --- supervision ------------------------------------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tick()
            except Exception:  # never let the supervisor die; log and go on
                log.exception("job supervisor error")
            self._stopping.wait(_SUPERVISE_INTERVAL_S)

    def _heartbeat_age(self, pid: int, now: float) -> float:
        """Seconds (monotonic) since worker ``pid``'s heartbeat file last changed (or since it was started)."""
        try:
            mtime = os.stat(self.settings.heartbeat_path(pid)).st_mtime_ns
        except OSError:
            mtime = -1
        last = self._beats.get(pid)
        if last is None or (mtime != last[0] and mtime != -1):
            seen = now if mtime != -1 else self._spawned_at.get(pid, now)
            self._beats[pid] = last = (mtime, seen)
        return now - last[1]

    def _stalled(self, proc: Any, age: float) -> None:
        """Fail the jobs of a worker that stopped responding, then kill it (reaped and replaced on a later tick)."""
        assert self.store is not None
        message = (f"the worker process running this job stopped responding for {age:.0f} s (it was stopped, e.g. "
                   "by SIGSTOP, or froze); the job failed after the server's stall timeout "
                   f"({self.settings.stall_timeout_s:g} s, --stall-timeout). Submit it again.")
        for job in self.store.fail_worker_jobs(proc.pid, message):
            log.error("job %s failed: worker %d stalled for %.0f s", job.id, proc.pid, age)
            self._cleanup.setdefault(proc.pid, set()).add(job.id)
        log.error("worker %d stopped responding for %.0f s: killing it", proc.pid, age)
        self._kill_at[proc.pid] = time.monotonic()
        proc.kill()

    def _tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            for i, proc in enumerate(self._slots):
                if proc is not None and proc.poll() is None:
                    deadline = self._kill_at.get(proc.pid)
                    if deadline is not None and now > deadline:
                        log.warning("worker %d did not stop in time: killing it", proc.pid)
                        proc.kill()
                    elif deadline is None:
                        age = self._heartbeat_age(proc.pid, now)
                        if age > self.settings.stall_timeout_s:
                            self._stalled(proc, age)
                    continue
                if proc is not None:
                    self._reap(proc)
                    self._slots[i] = None
                if now >= self._backoff_until and not self._stopping.is_set():
                    self._slots[i] = self._spawn()

    def _spawn(self) -> Any:
        from .worker import settings_to_json

        # A fresh interpreter that imports the same tumls_qp as this process (an installed package or a
        # source tree), without re-running this process's main module.
        import tumls_qp

        package_parent = str(Path(tumls_qp.__file__).resolve().parents[1])
        bootstrap = "import sys; sys.path.insert(0, sys.argv[1]); from tumls_qp.server.worker import main; main()"
        proc = subprocess.Popen([sys.executable, "-c", bootstrap, package_parent], stdin=subprocess.PIPE,
                                close_fds=True)
        assert proc.stdin is not None
        # The settings go through stdin (the token never shows in ps); the pipe stays open: when this process
        # dies, the worker reads end-of-file and exits.
        try:
            proc.stdin.write((settings_to_json(self.settings) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:  # died at once; reaped (and reported) on the next tick
            pass
        self._spawned_at[proc.pid] = time.monotonic()
        log.info("started worker %d", proc.pid)
        return proc

    def _reap(self, proc: Any) -> None:
        pid, code = proc.pid, proc.poll()
        if proc.stdin is not None:
            proc.stdin.close()
        stopped_by_us = self._kill_at.pop(pid, None) is not None
        lived = time.monotonic() - self._spawned_at.pop(pid, time.monotonic())
        self._beats.pop(pid, None)
        self.settings.heartbeat_path(pid).unlink(missing_ok=True)
        assert self.store is not None
        if code not in (0, None):
            how = f"signal {-code}" if code < 0 else f"exit status {code}"
            message = (f"the worker process running this job died ({how}); it may have run out of memory. See the "
                       "server log and the job's job.log.")
            for job in self.store.fail_worker_jobs(pid, message):
                log.error("job %s failed: worker %d died (%s)", job.id, pid, how)
                self._remove_outputs(job.id)
        # Jobs this worker had and that were cancelled (all of them, however many) or failed as stalled: their
        # outputs go now that nothing writes them.
        leftovers = self._cleanup.pop(pid, set()) | {j.id for j in self.store.list(state="cancelled", worker_pid=pid,
                                                                                    limit=None)}
        for job_id in leftovers:
            self._remove_outputs(job_id)
        # A worker that keeps dying at once (broken installation) must not be restarted in a tight loop.
        if code not in (0, None) and lived < 5 and not stopped_by_us:
            self._failures += 1
            delay = min(30.0, 0.5 * 2 ** self._failures)
            self._backoff_until = time.monotonic() + delay
            log.error("worker %d exited after %.1f s (%s); restarting in %.0f s", pid, lived, code, delay)
        else:
            self._failures = 0

    def _remove_outputs(self, job_id: str) -> None:
        """Remove a job's attempt folders (the whole job folder when the job itself was deleted meanwhile)."""
        job_dir = self.settings.jobs_dir / job_id
        if self.store is not None and self.store.get(job_id) is None:
            shutil.rmtree(job_dir, ignore_errors=True)
            return
        for attempt in job_dir.glob("attempt-*") if job_dir.is_dir() else []:
            shutil.rmtree(attempt, ignore_errors=True)
