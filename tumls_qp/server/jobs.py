"""The job service the routes call: submit, look up, list, cancel, and find a job's results.

Results are handed out only for ``succeeded`` jobs, whose files are complete by
construction (see ``worker``); every other state answers 409 with the state.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from .errors import JobNotFoundError, JobStateError, QueueFullError, RequestError, ResultNotFoundError
from .intake import admit, config_dict, slide_path
from .runner import Runner
from .schemas import ClassInfo, ClassList, JobRequest, JobStatus, job_status
from .settings import ServerSettings
from .store import STATES, Job, JobStore

__all__ = ["JobService"]

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class JobService:
    """Jobs as the API sees them; one per app."""

    def __init__(self, settings: ServerSettings, store: JobStore, runner: Runner) -> None:
        self.settings, self.store, self.runner = settings, store, runner

    def _job(self, job_id: str) -> Job:
        job = self.store.get(job_id) if _JOB_ID.match(job_id) else None
        if job is None:
            raise JobNotFoundError(f"no job {job_id!r} on this server (job ids come from POST /jobs)")
        return job

    def _succeeded(self, job_id: str) -> Job:
        job = self._job(job_id)
        if job.state != "succeeded":
            detail = f": {job.error}" if job.error else ""
            raise JobStateError(f"job {job_id} is {job.state}{detail}; results exist only once it has succeeded")
        return job

    def submit(self, request: JobRequest) -> JobStatus:
        if self.store.count("queued") >= self.settings.max_queued:
            raise QueueFullError(
                f"{self.settings.max_queued} jobs are already queued on this server; wait for some to finish"
            )
        admitted = admit(request, self.settings.roots, self.settings.base_parameters)
        job = self.store.add(
            image_path=str(admitted.path), image_name=request.image_name, request=request.model_dump(),
            config=config_dict(admitted.config), warnings=admitted.warnings,
        )
        return job_status(job, time.time())

    def status(self, job_id: str) -> JobStatus:
        return job_status(self._job(job_id), time.time())

    def list(self, *, image_uri: str | None, image_name: str | None, state: str | None, limit: int) -> list[JobStatus]:
        if state is not None and state not in STATES:
            raise RequestError(f"state must be one of {', '.join(STATES)}; got {state!r}", field="state")
        image_path = str(slide_path([image_uri], self.settings.roots)) if image_uri is not None else None
        jobs = self.store.list(image_path=image_path, image_name=image_name, state=state, limit=limit)
        now = time.time()
        return [job_status(job, now) for job in jobs]

    def cancel(self, job_id: str) -> JobStatus:
        self._job(job_id)
        before, after = self.store.cancel(job_id)
        if before is None:
            raise JobNotFoundError(f"no job {job_id!r} on this server")
        if after is None:
            raise JobStateError(f"job {job_id} already {before.state}; only queued or running jobs can be cancelled")
        self.runner.cancel(before)
        return job_status(after, time.time())

    def geojson_path(self, job_id: str) -> Path:
        job = self._succeeded(job_id)
        path = Path(job.geojson_path or "")
        if not path.is_file():
            raise ResultNotFoundError(f"the GeoJSON of job {job_id} is missing from the data folder ({path}); "
                                      "it was removed by hand: run the job again")
        return path

    def classes(self, job_id: str) -> ClassList:
        job = self._succeeded(job_id)
        return ClassList(job=job.id, classes=[ClassInfo(**c) for c in job.classes or []])

    def report_path(self, job_id: str) -> tuple[Path, str]:
        """The run's PDF report and a download name."""
        job = self._succeeded(job_id)
        path = Path(job.run_dir or "") / "report.pdf"
        if not path.is_file():
            raise ResultNotFoundError(
                f"job {job_id} has no PDF report: its run folder {job.run_dir} holds no report.pdf (this tumls-qp "
                "version does not write one, or the report failed; see the job's warnings)"
            )
        stem = os.path.basename(job.run_dir or "report")
        return path, f"{stem}-tumls-report.pdf"

    def health(self) -> dict[str, Any]:
        alive = self.runner.workers_alive()
        return {"status": "ok" if alive >= 1 else "degraded", "workers_alive": alive,
                "workers": self.settings.workers}
