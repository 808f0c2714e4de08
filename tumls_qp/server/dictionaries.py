"""Prototype dictionaries on the server: save a naming, list, download, and queue applying one to an image.

A dictionary is one file, ``DATA_DIR/dictionaries/<id>.tumlsdict`` (the format of
:func:`tumls_qp.interactive.prototypes.save_dictionary`), written atomically; its ``dictionary.json``
carries what the listing shows (``provenance.server``: the source job and image, the name
the user gave). Applying one is a job of kind ``dictionary`` that a worker runs like an
analysis (:func:`tumls_qp.labelling.apply_dictionary`). The server keeps at most
``max_dictionaries`` of them (``POST /dictionaries`` answers 507 beyond); they are never deleted
automatically.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
import zipfile
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

from ..errors import InvalidInputError
from .errors import DictionaryNotFoundError, InsufficientStorageError, QueueFullError, RequestError
from .intake import admit
from .jobs import JobService
from .schemas import ApplyRequest, DictionaryClass, DictionaryInfo, JobStatus, NamingRequest, job_status

__all__ = ["DictionaryService", "DICTIONARY_SUFFIX"]

#: File name suffix of a saved dictionary.
DICTIONARY_SUFFIX = ".tumlsdict"
_DICTIONARY_ID = re.compile(r"^[0-9a-f]{32}$")


class DictionaryService:
    """Dictionaries as the API sees them; one per app, beside the job service."""

    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.folder = jobs.settings.dictionaries_dir
        self._creating = threading.Lock()  # the count and the new file, together

    def path(self, dictionary_id: str) -> Path:
        """The file of a saved dictionary (404 when there is none)."""
        path = self.folder / f"{dictionary_id}{DICTIONARY_SUFFIX}"
        if not _DICTIONARY_ID.match(dictionary_id) or not path.is_file():
            raise DictionaryNotFoundError(f"no dictionary {dictionary_id!r} on this server (GET /dictionaries lists "
                                          "them; POST /dictionaries saves one)")
        return path

    def create(self, body: NamingRequest) -> DictionaryInfo:
        """Save the named prototype clusters of an analysis job as a dictionary."""
        from ..labelling import load_overclustering, make_dictionary
        from ..interactive.prototypes import naming_from_mapping

        job, run_dir = self.jobs.run_folder(body.job, kind="analysis")
        # The job's lock: the clusters are not read while a GET /jobs/{id}/prototypes replaces them.
        with self._creating, self.jobs.job_lock(job.id):
            self._require_room()
            try:
                over, _ = load_overclustering(run_dir)
            except InvalidInputError as exc:
                raise RequestError(f"job: job {job.id} has no prototype clusters to name yet: get them with "
                                   f"GET /jobs/{job.id}/prototypes, name them, then send the names",
                                   field="job") from exc
            if over.k != body.k:
                raise RequestError(
                    f"k: the names are for {body.k} clusters but job {job.id} now has {over.k} (its clusters were "
                    f"computed again since, e.g. with another k): fetch GET /jobs/{job.id}/prototypes again and "
                    "name those", field="k")
            try:
                naming = naming_from_mapping(body.names, over.k, body.colors)
            except InvalidInputError as exc:
                raise RequestError(f"names: {exc}", field="names") from exc
            dictionary_id = uuid.uuid4().hex
            server = {"id": dictionary_id, "name": body.name, "job": job.id, "job_number": job.number,
                      "image": job.image_name, "image_path": job.image_path}
            path = self.folder / f"{dictionary_id}{DICTIONARY_SUFFIX}"
            make_dictionary(run_dir, naming, path, extra_provenance={"server": server})
        return self._info(path)

    def _require_room(self) -> None:
        """507 when the server holds ``max_dictionaries`` already, or the data folder is full."""
        limit = self.jobs.settings.max_dictionaries
        held = sum(1 for p in self.folder.glob(f"*{DICTIONARY_SUFFIX}") if _DICTIONARY_ID.match(p.stem)) \
            if self.folder.is_dir() else 0
        if held >= limit:
            raise InsufficientStorageError(
                f"this server already keeps {held} dictionaries, its limit (--max-dictionaries {limit}): delete "
                "some you no longer use (GET /dictionaries lists them; DELETE /dictionaries/{id})")
        self.jobs.require_space()

    def list(self) -> list[DictionaryInfo]:
        """Saved dictionaries, newest first."""
        if not self.folder.is_dir():
            return []
        paths = [p for p in self.folder.glob(f"*{DICTIONARY_SUFFIX}") if _DICTIONARY_ID.match(p.stem)]
        infos = []
        for path in paths:
            try:
                infos.append(self._info(path))
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # removed meanwhile, or not ours
                continue
        return sorted(infos, key=lambda i: i.created_at, reverse=True)

    def info(self, dictionary_id: str) -> DictionaryInfo:
        return self._info(self.path(dictionary_id))

    def delete(self, dictionary_id: str) -> None:
        """Remove a saved dictionary (404 when there is none)."""
        self.path(dictionary_id).unlink(missing_ok=True)

    def apply(self, dictionary_id: str, body: ApplyRequest) -> JobStatus:
        """Queue a dictionary job: label one image with a saved dictionary (the image checked as for POST /jobs)."""
        info = self.info(dictionary_id)
        settings, store = self.jobs.settings, self.jobs.store
        if store.count("queued") >= settings.max_queued:
            raise QueueFullError(f"{settings.max_queued} jobs are already queued on this server; wait for some to "
                                 "finish")
        self.jobs.require_space()
        request = SimpleNamespace(**body.model_dump(), parameters={})
        admitted = admit(request, settings.roots, settings.base_parameters)
        options = {"dictionary_id": info.id, "dictionary_name": info.name, "query": body.query, "gamma": body.gamma,
                   "seed": None, "pixel_size_um": body.pixel_size_um}
        job = store.add(image_path=str(admitted.path), image_name=body.image_name, request=body.model_dump(),
                        config=options, warnings=admitted.warnings, kind="dictionary")
        return job_status(job, time.time())

    @staticmethod
    def _info(path: Path) -> DictionaryInfo:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("dictionary.json"))
        provenance = meta.get("provenance") or {}
        server = provenance.get("server") or {}
        counts: dict[int, int] = {}
        for prototype in meta["prototypes"]:
            counts[prototype["class"]] = counts.get(prototype["class"], 0) + 1
        created = provenance.get("created")
        created_at = datetime.fromisoformat(created) if created else datetime.fromtimestamp(path.stat().st_mtime)
        dictionary_id = path.stem
        return DictionaryInfo(
            id=dictionary_id, name=server.get("name"), created_at=created_at,
            classes=[DictionaryClass(name=c["name"], color=c["color"], prototypes=counts.get(i, 0))
                     for i, c in enumerate(meta["classes"])],
            source_job=server.get("job"), source_image=server.get("image") or (provenance.get("slide") or {}).get("name"),
            naming=provenance.get("naming") or {},
            links={"self": f"/dictionaries/{dictionary_id}", "apply": f"/dictionaries/{dictionary_id}/apply"},
        )
