"""The job service the routes call: submit, look up, list, cancel, and find a job's results.

Results are handed out only for ``succeeded`` jobs, whose files are complete by
construction (see ``worker``); every other state answers 409 with the state.

Two results are computed on request, in the API process, from a succeeded job's run
folder (its cached embeddings; nothing is retrained): seeded iterative clustering
(:meth:`JobService.seeded`, seconds) and the prototype clusters to name
(:meth:`JobService.prototypes`, written once into the run folder and reused).

Storage: requests that write answer 507 while the data folder's disk is nearly full
(``--min-free-mb``) or the folder is over ``--max-data-gb`` with nothing left to delete;
:meth:`JobService.enforce_retention` deletes old finished jobs and cache entries
(:mod:`~tumls_qp.server.retention`), and ``DELETE /jobs/{id}`` deletes a finished job.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import FormatVersionError, InvalidInputError
from ..outputs.run_folder import REPORT_PDF, read_run
from .errors import (InsufficientStorageError, JobNotFoundError, JobStateError, QueueFullError, RequestError,
                     ResultNotFoundError, data_folder_full)
from .intake import admit, config_dict, slide_path
from .retention import Entry, disk_bytes, select
from .runner import Runner
from .schemas import ClassInfo, ClassList, JobRequest, JobStatus, SeedRequest, job_status
from .settings import ServerSettings
from .store import KINDS, STATES, Job, JobStore

__all__ = ["JobService"]

log = logging.getLogger(__name__)

#: Job ids and the names of embedding-cache entries: 32 hex digits.
_HEX_ID = re.compile(r"^[0-9a-f]{32}$")


class JobService:
    """Jobs as the API sees them; one per app."""

    def __init__(self, settings: ServerSettings, store: JobStore, runner: Runner) -> None:
        self.settings, self.store, self.runner = settings, store, runner
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        #: Bytes in the data folder after the last retention pass (None before the first).
        self.data_bytes: int | None = None

    def job_lock(self, job_id: str) -> threading.Lock:
        """One lock per job, held while its run folder's prototypes are written or read for a dictionary, and
        while the job is deleted."""
        with self._locks_guard:
            return self._locks.setdefault(job_id, threading.Lock())

    def _job(self, job_id: str) -> Job:
        job = self.store.get(job_id) if _HEX_ID.match(job_id) else None
        if job is None:
            kept = (f"; finished jobs are deleted {self.settings.keep_days:g} days after they end"
                    if self.settings.keep_days is not None else "")
            raise JobNotFoundError(f"no job {job_id!r} on this server (job ids come from POST /jobs{kept})")
        return job

    def require_space(self) -> None:
        """Refuse a request that writes (507) while the data folder is full or over its size limit."""
        settings = self.settings
        try:
            free = shutil.disk_usage(settings.data_dir).free
        except OSError:
            free = None
        if free is not None and free < settings.min_free_mb * 2**20:
            raise data_folder_full(settings.data_dir, settings.min_free_mb)
        if settings.max_data_gb is not None and self.data_bytes is not None \
                and self.data_bytes > settings.max_data_gb * 2**30:
            raise InsufficientStorageError(
                f"data folder full: it holds {self.data_bytes / 2**30:.2f} GB, over the server's --max-data-gb "
                f"{settings.max_data_gb:g}, and what is left cannot be deleted automatically (queued and running "
                "jobs, dictionaries): delete dictionaries (DELETE /dictionaries/{id}) or raise --max-data-gb")

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
        self.require_space()
        admitted = admit(request, self.settings.roots, self.settings.base_parameters)
        job = self.store.add(
            image_path=str(admitted.path), image_name=request.image_name, request=request.model_dump(),
            config=config_dict(admitted.config), warnings=admitted.warnings,
        )
        return job_status(job, time.time())

    def status(self, job_id: str) -> JobStatus:
        return job_status(self._job(job_id), time.time())

    def list(self, *, image_uri: str | None, image_name: str | None, state: str | None, limit: int,
             kind: str | None = None) -> list[JobStatus]:
        if state is not None and state not in STATES:
            raise RequestError(f"state must be one of {', '.join(STATES)}; got {state!r}", field="state")
        if kind is not None and kind not in KINDS:
            raise RequestError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}", field="kind")
        image_path = str(slide_path([image_uri], self.settings.roots)) if image_uri is not None else None
        jobs = self.store.list(image_path=image_path, image_name=image_name, state=state, kind=kind, limit=limit)
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

    def cancel_or_delete(self, job_id: str) -> JobStatus | None:
        """``DELETE /jobs/{id}``: cancel a queued or running job (returns it), delete a finished one (None)."""
        if self._job(job_id).is_final:
            self.delete(job_id)
            return None
        try:
            return self.cancel(job_id)
        except JobStateError:  # it ended in the meantime
            self.delete(job_id)
            return None

    def delete(self, job_id: str) -> None:
        """Delete a finished job: its record, then its folder (results, log)."""
        with self.job_lock(job_id):
            job = self.store.delete(job_id)
            if job is None:
                current = self._job(job_id)
                raise JobStateError(f"job {job_id} is {current.state}; cancel it first (DELETE /jobs/{job_id} "
                                    "cancels a queued or running job)")
            shutil.rmtree(self.settings.jobs_dir / job_id, ignore_errors=True)
        with self._locks_guard:
            self._locks.pop(job_id, None)

    def enforce_retention(self, now: float | None = None) -> list[Entry]:
        """Delete finished jobs and cache entries by ``keep_days`` and ``max_data_gb``; returns what went."""
        settings = self.settings
        now = time.time() if now is None else now
        entries = [Entry("job", job_id, finished, disk_bytes(settings.jobs_dir / job_id))
                   for job_id, finished in self.store.finished()]
        if settings.cache_dir.is_dir():
            for folder in settings.cache_dir.iterdir():
                if _HEX_ID.match(folder.name):  # not the staging folders of a cache entry being written
                    try:
                        made = folder.stat().st_mtime
                    except OSError:
                        continue
                    entries.append(Entry("cache", folder.name, made, disk_bytes(folder)))
        max_bytes = None if settings.max_data_gb is None else int(settings.max_data_gb * 2**30)
        chosen, remaining = select(entries, disk_bytes(settings.data_dir), now, settings.keep_days, max_bytes)
        deleted = []
        for entry in chosen:
            if entry.kind == "job":
                try:
                    self.delete(entry.key)
                except (JobNotFoundError, JobStateError):  # deleted by a client meanwhile
                    continue
            else:
                shutil.rmtree(settings.cache_dir / entry.key, ignore_errors=True)
            deleted.append(entry)
        if deleted:
            log.info("retention: deleted %d finished job(s) and %d cache entr(ies), %.1f MB",
                     sum(e.kind == "job" for e in deleted), sum(e.kind == "cache" for e in deleted),
                     sum(e.size for e in deleted) / 2**20)
        self.data_bytes = remaining
        return deleted

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
        path = Path(job.run_dir or "") / REPORT_PDF
        if not path.is_file():
            raise ResultNotFoundError(
                f"job {job_id} has no PDF report: its run folder {job.run_dir} holds no {REPORT_PDF} (this tumls-qp "
                "version does not write one, or the report failed; see the job's warnings)"
            )
        stem = os.path.basename(job.run_dir or "report")
        return path, f"{stem}-tumls-report.pdf"

    def embedding_colours_path(self, job_id: str) -> Path:
        """The served embedding-colour layer of a succeeded analysis."""
        from .worker import SERVED_EMBEDDING_COLOURS

        job = self._succeeded(job_id)
        if not (job.summary or {}).get("embedding_colours"):
            raise ResultNotFoundError(
                f"job {job_id} has no embedding-colour layer: it is a {job.kind} job, or its analysis ran with "
                "output.embedding_colours = 'none'"
            )
        path = Path(job.geojson_path or "").parent / SERVED_EMBEDDING_COLOURS
        if not path.is_file():
            raise ResultNotFoundError(f"the embedding-colour layer of job {job_id} is missing from the data folder "
                                      f"({path}); it was removed by hand: run the job again")
        return path

    def run_folder(self, job_id: str, kind: str | None = None) -> tuple[Job, Path]:
        """A succeeded job (of ``kind``, when given) and its run folder with the cached embeddings."""
        job = self._succeeded(job_id)
        if kind is not None and job.kind != kind:
            raise RequestError(
                f"job {job_id} is a {job.kind} job; this needs an {kind} job of the image (POST /jobs), whose "
                "run folder holds the encoder and its embeddings", field="job")
        run_dir = Path(job.run_dir or "")
        try:
            read_run(run_dir, kinds=(job.kind,))
        except FormatVersionError as exc:
            raise JobStateError(f"job {job_id} was run by an earlier tumls-qp: {exc} Submit the image again "
                                "(POST /jobs) to analyse it with this version.") from exc
        except InvalidInputError as exc:
            raise ResultNotFoundError(f"the run folder of job {job_id} is incomplete ({exc}); it was changed by "
                                      "hand: run the job again") from exc
        return job, run_dir

    def seeded(self, job_id: str, body: SeedRequest) -> tuple[dict[str, Any], dict[str, Any]]:
        """Seeded iterative clustering of a job's tiles; returns (tagged FeatureCollection, summary).

        Raises
        ------
        RequestError
            Unusable seeds (422): malformed geometry, one class only, a seed off the tissue.
        """
        from ..labelling import parse_seed_request, seeded_classification
        from ..outputs.qupath import SEEDED_TAG, tag_features

        job, run_dir = self.run_folder(job_id)
        seeds_body = {"seeds": [s.model_dump(by_alias=True) for s in body.seeds]}
        try:
            seeds = parse_seed_request(seeds_body)
            if body.positive is not None and body.positive not in {name for name, _, _ in seeds}:
                raise RequestError(f"positive: {body.positive!r} is not the class of any seed (the seeds' classes: "
                                   f"{sorted({name for name, _, _ in seeds})})", field="positive")
            answer = seeded_classification(run_dir, seeds, positive=body.positive, seed=int(job.config.get("seed") or 0))
        except RequestError:
            raise
        except InvalidInputError as exc:
            raise RequestError(f"seeds: {exc}", field="seeds") from exc
        collection = answer.feature_collection
        tag_features(collection["features"], job.number, SEEDED_TAG)
        return collection, answer.summary()

    def prototypes(self, job_id: str, k: int | None, t: int | None) -> dict[str, Any]:
        """The prototype clusters of an analysis job's tiles as QuPath GeoJSON, for the user to name.

        Each cluster j is an annotation over its tiles plus its ``t`` central tiles, all of class
        "Cluster j" in the cluster's colour, with the measurements ``Prototype`` (j) and
        ``Prototype clusters`` (k), tagged ``TUMLS-QP prototypes``. Computed on the first request
        (k from the elbow rule unless given) and kept in the run folder (``prototypes/``), which
        ``POST /dictionaries`` then reads; a request with another ``k`` or ``t`` replaces them.
        """
        from ..interactive.prototypes import DEFAULT_T
        from ..labelling import load_overclustering, write_prototypes
        from ..outputs.geojson import read_geojson, require_valid
        from ..outputs.qupath import PROTOTYPES_TAG, tag_features

        job, run_dir = self.run_folder(job_id, kind="analysis")
        want_t = DEFAULT_T if t is None else t
        with self.job_lock(job.id):
            try:
                _, manifest = load_overclustering(run_dir)
            except InvalidInputError:
                manifest = None
            stale = (manifest is None or manifest.t != want_t
                     or (manifest.k != k if k is not None else manifest.k_source != "elbow"))
            if stale:
                self.require_space()
                try:
                    write_prototypes(run_dir, k=k, t=want_t)
                except InvalidInputError as exc:
                    raise RequestError(f"k: {exc}", field="k") from exc
                _, manifest = load_overclustering(run_dir)
            data = read_geojson(read_run(run_dir).prototypes_geojson_path)
        features = data["features"]
        for feature in features:
            properties = feature["properties"]
            cluster = int(properties["measurements"]["Prototype"])
            properties["classification"] = {"name": f"Cluster {cluster}", "color": list(properties["color"])}
            properties["measurements"]["Prototype clusters"] = float(manifest.k)
        tag_features(features, job.number, PROTOTYPES_TAG)
        return require_valid(data, "the prototype GeoJSON")

    def health(self) -> dict[str, Any]:
        alive, stalled = self.runner.workers_alive(), self.runner.workers_stalled()
        return {"status": "ok" if alive >= 1 and not stalled else "degraded", "workers_alive": alive,
                "workers": self.settings.workers, "workers_stalled": stalled}
