"""The job store: one SQLite database (standard library, WAL mode) in the data folder.

The API process and the worker processes open it side by side; every state change is
one short ``BEGIN IMMEDIATE`` transaction, and a worker's updates name the attempt they
belong to, so that a stale worker (cancelled, or left over from before a restart) can
never overwrite a newer state.

States: ``queued -> running -> succeeded | failed``; ``queued | running -> cancelled``.
After a crash or restart, :meth:`JobStore.recover` puts jobs that were running back in
the queue (at most :data:`MAX_ATTEMPTS` attempts in all; then they fail).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

__all__ = ["Job", "JobStore", "STATES", "FINAL_STATES", "KINDS", "MAX_ATTEMPTS"]

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
#: What a job does: ``analysis`` runs the pipeline on an image (``POST /jobs``); ``dictionary`` labels an
#: image with a saved prototype dictionary (``POST /dictionaries/{id}/apply``).
KINDS = ("analysis", "dictionary")
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
#: A job interrupted by server restarts runs at most this many times in all.
MAX_ATTEMPTS = 2
_SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    number INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL DEFAULT 'analysis',
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    progress REAL NOT NULL DEFAULT 0,
    stage TEXT,
    message TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    image_path TEXT NOT NULL,
    image_name TEXT NOT NULL,
    request TEXT NOT NULL,
    config TEXT NOT NULL,
    warnings TEXT NOT NULL DEFAULT '[]',
    attempt INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER,
    run_dir TEXT,
    geojson_path TEXT,
    classes TEXT,
    summary TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, number);
CREATE INDEX IF NOT EXISTS jobs_image ON jobs (image_path, number);
"""


@dataclass(frozen=True)
class Job:
    """One row of the jobs table. Times are seconds since the epoch (UTC)."""

    number: int
    id: str
    kind: str
    state: str
    progress: float
    stage: str | None
    message: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    image_path: str
    image_name: str
    request: dict[str, Any]
    config: dict[str, Any]
    warnings: list[str]
    attempt: int
    worker_pid: int | None
    run_dir: str | None
    geojson_path: str | None
    classes: list[dict[str, Any]] | None
    summary: dict[str, Any] | None
    error: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        data = dict(row)
        for key in ("request", "config", "warnings", "classes", "summary"):
            if data[key] is not None:
                data[key] = json.loads(data[key])
        return cls(**data)

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


class JobStore:
    """Jobs in SQLite; safe to share between threads, and between processes (one store per process)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=30000")
        with self._transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} was written by a newer tumls-qp (schema {version}); upgrade tumls-qp")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            if "kind" not in columns:  # schema 1 (before dictionary jobs): every job was an analysis
                conn.execute("ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'analysis'")
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Job | None:
        with self._lock:
            row = self._conn.execute(sql, args).fetchone()
        return Job.from_row(row) if row is not None else None

    # --- the API side -----------------------------------------------------------------------------------------

    def add(self, *, image_path: str, image_name: str, request: dict[str, Any], config: dict[str, Any],
            warnings: list[str], kind: str = "analysis") -> Job:
        """Queue a new job; returns it.

        ``config`` is the pipeline configuration of an analysis, or the options of a dictionary job.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
        now = time.time()
        job_id = uuid.uuid4().hex
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (id, kind, state, stage, message, created_at, updated_at, image_path, image_name, "
                "request, config, warnings) VALUES (?, ?, 'queued', 'queued', 'waiting for a worker', ?, ?, ?, ?, ?, "
                "?, ?)",
                (job_id, kind, now, now, image_path, image_name, json.dumps(request), json.dumps(config),
                 json.dumps(warnings)),
            )
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def list(self, *, image_path: str | None = None, image_name: str | None = None, state: str | None = None,
             kind: str | None = None, number: int | None = None, worker_pid: int | None = None,
             limit: int | None = 50) -> list[Job]:
        """Most recent jobs first, optionally only those of one image, state, kind, number or worker
        process; ``limit=None``: all of them."""
        where, args = [], []
        for column, value in (("image_path", image_path), ("image_name", image_name), ("state", state),
                              ("kind", kind), ("number", number), ("worker_pid", worker_pid)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY number DESC LIMIT ?"
        with self._lock:
            rows = self._conn.execute(sql, (*args, -1 if limit is None else int(limit))).fetchall()
        return [Job.from_row(r) for r in rows]

    def finished(self) -> list[tuple[str, float]]:
        """(id, finished_at) of every finished job, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, COALESCE(finished_at, updated_at) FROM jobs WHERE state IN ('succeeded', 'failed', "
                "'cancelled') ORDER BY 2").fetchall()
        return [(row[0], float(row[1])) for row in rows]

    def delete(self, job_id: str) -> Job | None:
        """Remove a finished job's record; returns it, or None when there is no such finished job."""
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] not in FINAL_STATES:
                return None
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(row)

    def count(self, state: str) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (state,)).fetchone()[0])

    def cancel(self, job_id: str) -> tuple[Job | None, Job | None]:
        """Cancel a queued or running job; returns (job before, job after), after None when it was already final."""
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None, None
            before = Job.from_row(row)
            if before.is_final:
                return before, None
            now = time.time()
            conn.execute(
                "UPDATE jobs SET state = 'cancelled', stage = 'cancelled', message = 'cancelled by the client', "
                "finished_at = ?, updated_at = ? WHERE id = ?",
                (now, now, job_id),
            )
        return before, self.get(job_id)

    # --- the worker side --------------------------------------------------------------------------------------

    def claim(self, worker_pid: int) -> Job | None:
        """Move the oldest queued job to running for ``worker_pid``; None when the queue is empty."""
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY number LIMIT 1").fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET state = 'running', attempt = attempt + 1, worker_pid = ?, started_at = ?, "
                "updated_at = ?, progress = 0, stage = 'starting', message = 'worker started', error = NULL "
                "WHERE id = ?",
                (worker_pid, now, now, row["id"]),
            )
        return self.get(row["id"])

    def progress(self, job_id: str, attempt: int, progress: float, stage: str, message: str) -> bool:
        """Record a running job's progress; False when the job is no longer this attempt's to update."""
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET progress = ?, stage = ?, message = ?, updated_at = ? "
                "WHERE id = ? AND attempt = ? AND state = 'running'",
                (min(max(float(progress), 0.0), 1.0), stage, message[:500], time.time(), job_id, attempt),
            )
            return cursor.rowcount == 1

    def finish(self, job_id: str, attempt: int, state: str, *, error: str | None = None, run_dir: str | None = None,
               geojson_path: str | None = None, classes: list[dict[str, Any]] | None = None,
               summary: dict[str, Any] | None = None) -> bool:
        """End a running attempt as ``succeeded`` or ``failed``; False when it was cancelled or superseded."""
        if state not in ("succeeded", "failed"):
            raise ValueError(f"state must be succeeded or failed; got {state!r}")
        now = time.time()
        with self._transaction() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET state = ?, progress = CASE WHEN ? = 'succeeded' THEN 1 ELSE progress END, stage = ?, "
                "message = ?, finished_at = ?, updated_at = ?, error = ?, run_dir = ?, geojson_path = ?, classes = ?, "
                "summary = ? WHERE id = ? AND attempt = ? AND state = 'running'",
                (state, state, state, "done" if state == "succeeded" else "failed", now, now, error, run_dir,
                 geojson_path, json.dumps(classes) if classes is not None else None,
                 json.dumps(summary) if summary is not None else None, job_id, attempt),
            )
            return cursor.rowcount == 1

    def fail_worker_jobs(self, worker_pid: int, message: str) -> list[Job]:
        """Fail the jobs still running under a worker process that has died; returns them."""
        now = time.time()
        with self._transaction() as conn:
            rows = conn.execute("SELECT id FROM jobs WHERE state = 'running' AND worker_pid = ?",
                                (worker_pid,)).fetchall()
            for row in rows:
                conn.execute(
                    "UPDATE jobs SET state = 'failed', stage = 'failed', message = 'failed', error = ?, "
                    "finished_at = ?, updated_at = ? WHERE id = ?",
                    (message, now, now, row["id"]),
                )
        return [job for job in (self.get(r["id"]) for r in rows) if job is not None]

    def recover(self, reason: str) -> tuple[list[Job], list[Job]]:
        """Deal with jobs left running by a stopped or crashed server.

        Each goes back to the queue when it has run fewer than ``MAX_ATTEMPTS`` times, and
        fails otherwise (a job that keeps taking the server down must not loop for ever).

        Returns
        -------
        requeued, failed : list of Job
        """
        now = time.time()
        with self._transaction() as conn:
            rows = conn.execute("SELECT id, attempt FROM jobs WHERE state = 'running'").fetchall()
            for row in rows:
                if row["attempt"] < MAX_ATTEMPTS:
                    conn.execute(
                        "UPDATE jobs SET state = 'queued', stage = 'queued', progress = 0, worker_pid = NULL, "
                        "message = ?, updated_at = ? WHERE id = ?",
                        (f"{reason}; queued to run again", now, row["id"]),
                    )
                else:
                    conn.execute(
                        "UPDATE jobs SET state = 'failed', stage = 'failed', message = 'failed', error = ?, "
                        "finished_at = ?, updated_at = ? WHERE id = ?",
                        (f"{reason}; this job had already been interrupted {row['attempt'] - 1} time(s) and is not run "
                         "again. Submit it again once the server is stable (check its log and memory).", now, now,
                         row["id"]),
                    )
        jobs = [job for job in (self.get(r["id"]) for r in rows) if job is not None]
        return [j for j in jobs if j.state == "queued"], [j for j in jobs if j.state == "failed"]
