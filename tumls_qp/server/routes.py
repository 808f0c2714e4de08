"""HTTP routes: thin functions that call the services, which they receive as dependencies
(``Jobs``: the job service, ``Dictionaries``: the dictionary service; both live in ``app.state``).

``protected`` holds every route that needs the token when the server has one, ``public`` the
others (``/health``); the check itself is ``app.TokenCheck``, before the body is read."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Annotated, Any, Iterator

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from .. import __version__
from .dictionaries import DictionaryService
from .jobs import JobService
from .schemas import (ApplyRequest, ClassList, DictionaryInfo, DictionaryList, ErrorBody, Health, JobList, JobRequest,
                      JobStatus, NamingRequest, SeedRequest, Version)
from .settings import API_VERSION

__all__ = ["public", "protected"]

_CHUNK = 1 << 16


#: Response header of ``POST /jobs/{id}/seeded`` with the request's summary (ASCII JSON).
SUMMARY_HEADER = "X-TUMLS-QP-Summary"
_GEOJSON = {200: {"content": {"application/geo+json": {}}}}


def _job_service(request: Request) -> JobService:
    return request.app.state.jobs


def _dictionary_service(request: Request) -> DictionaryService:
    return request.app.state.dictionaries


Jobs = Annotated[JobService, Depends(_job_service)]
Dictionaries = Annotated[DictionaryService, Depends(_dictionary_service)]


_errors = {status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 413, 422, 429, 507)}
public = APIRouter()
protected = APIRouter(responses=_errors)


@public.get("/health", response_model=Health,
            summary="Liveness: is the server up, are its workers running and responding")
def health(jobs: Jobs) -> Health:
    return Health(**jobs.health())


@protected.get("/version", response_model=Version, summary="Tool version and API version")
def version() -> Version:
    return Version(tool="tumls-qp", version=__version__, api=API_VERSION)


@protected.post("/jobs", status_code=202, response_model=JobStatus, summary="Submit an image for analysis")
def submit_job(body: JobRequest, jobs: Jobs, response: Response) -> JobStatus:
    status = jobs.submit(body)
    response.headers["Location"] = status.links["self"]
    return status


@protected.get("/jobs", response_model=JobList, summary="Recent jobs, newest first")
def list_jobs(
    jobs: Jobs,
    image_uri: str | None = Query(None, max_length=4096, description="Only jobs of this file: URI."),
    image_name: str | None = Query(None, max_length=1000, description="Only jobs of this QuPath image name."),
    state: str | None = Query(None, max_length=20, description="Only jobs in this state."),
    kind: str | None = Query(None, max_length=20, description="Only jobs of this kind: analysis or dictionary."),
    limit: int = Query(50, ge=1, le=1000),
) -> JobList:
    return JobList(jobs=jobs.list(image_uri=image_uri, image_name=image_name, state=state, kind=kind, limit=limit))


@protected.get("/jobs/{job_id}", response_model=JobStatus, summary="A job's state, progress, timings and error")
def get_job(job_id: str, jobs: Jobs) -> JobStatus:
    return jobs.status(job_id)


@protected.delete("/jobs/{job_id}", response_model=JobStatus,
                  responses={204: {"description": "The finished job and its files were deleted."}},
                  summary="Cancel a queued or running job (200), or delete a finished one with its files (204)")
def cancel_or_delete_job(job_id: str, jobs: Jobs) -> Any:
    """A queued or running job is cancelled and kept (as `cancelled`) until deleted; a finished job (succeeded,
    failed, cancelled) is deleted with its results and log, and its id answers 404 from then on."""
    status = jobs.cancel_or_delete(job_id)
    return status if status is not None else Response(status_code=204)


@protected.get("/jobs/{job_id}/geojson", summary="The job's QuPath objects (gzip-encoded when the client accepts it)",
               response_class=Response, responses={200: {"content": {"application/geo+json": {}}}})
def get_geojson(job_id: str, jobs: Jobs, request: Request) -> Response:
    path = jobs.geojson_path(job_id)
    return _gzip_file_response(path, _accepts_gzip(request.headers.get("accept-encoding", "")), "application/geo+json")


@protected.get("/jobs/{job_id}/classes", response_model=ClassList, summary="Class names and colours of the objects")
def get_classes(job_id: str, jobs: Jobs) -> ClassList:
    return jobs.classes(job_id)


@protected.get("/jobs/{job_id}/report", summary="The run's PDF report, when it has one", response_class=FileResponse,
               responses={200: {"content": {"application/pdf": {}}}})
def get_report(job_id: str, jobs: Jobs) -> FileResponse:
    path, filename = jobs.report_path(job_id)
    return FileResponse(path, media_type="application/pdf", filename=filename)


@protected.get("/jobs/{job_id}/embedding-colours", response_class=Response, responses=_GEOJSON,
               summary="The analysis's embedding-colour tile layer (gzip-encoded when the client accepts it)")
def get_embedding_colours(job_id: str, jobs: Jobs, request: Request) -> Response:
    path = jobs.embedding_colours_path(job_id)
    return _gzip_file_response(path, _accepts_gzip(request.headers.get("accept-encoding", "")), "application/geo+json")


@protected.post("/jobs/{job_id}/seeded", response_class=Response, responses=_GEOJSON,
                summary="Seeded iterative clustering of the job's tiles from the user's classified annotations")
def post_seeded(job_id: str, body: SeedRequest, jobs: Jobs, request: Request) -> Response:
    """Every tile of the image gets one of the seeds' classes, from the job's cached embeddings (no retraining).

    The answer is QuPath GeoJSON: one annotation per class ("<class> (SIC)", the union of its tiles)
    and one tile object per tile with its class and "SIC confidence", each tagged "TUMLS-QP seeded"
    (the job number). The header X-TUMLS-QP-Summary holds counts, seed F1, seconds and warnings.
    """
    collection, summary = jobs.seeded(job_id, body)
    headers = {SUMMARY_HEADER: json.dumps(summary, ensure_ascii=True, separators=(",", ":"))}
    return _json_response(collection, request, "application/geo+json", headers)


@protected.get("/jobs/{job_id}/prototypes", response_class=Response, responses=_GEOJSON,
               summary="Prototype clusters of an analysis job's tiles, for the user to name")
def get_prototypes(
    job_id: str, jobs: Jobs, request: Request,
    k: int | None = Query(None, ge=2, le=200, description="Number of clusters; default from the elbow rule (2-50)."),
    t: int | None = Query(None, ge=1, le=100, description="Central tiles per cluster (default 10)."),
) -> Response:
    """Each cluster j: an annotation over its tiles and its t central tiles, class "Cluster j", tagged
    "TUMLS-QP prototypes". Give a cluster's objects a class (or "mixed") in QuPath, then POST /dictionaries."""
    return _json_response(jobs.prototypes(job_id, k, t), request, "application/geo+json")


@protected.post("/dictionaries", status_code=201, response_model=DictionaryInfo,
                summary="Save named prototype clusters as a dictionary")
def create_dictionary(body: NamingRequest, dictionaries: Dictionaries, response: Response) -> DictionaryInfo:
    info = dictionaries.create(body)
    response.headers["Location"] = info.links["self"]
    return info


@protected.get("/dictionaries", response_model=DictionaryList, summary="Saved dictionaries, newest first")
def list_dictionaries(dictionaries: Dictionaries) -> DictionaryList:
    return DictionaryList(dictionaries=dictionaries.list())


@protected.get("/dictionaries/{dictionary_id}", response_class=FileResponse,
               responses={200: {"content": {"application/zip": {}}}}, summary="Download a dictionary file")
def get_dictionary(dictionary_id: str, dictionaries: Dictionaries) -> FileResponse:
    path = dictionaries.path(dictionary_id)
    return FileResponse(path, media_type="application/zip", filename=path.name)


@protected.delete("/dictionaries/{dictionary_id}", status_code=204, response_class=Response,
                  summary="Delete a saved dictionary")
def delete_dictionary(dictionary_id: str, dictionaries: Dictionaries) -> Response:
    """The file goes; jobs already queued with it fail, saying that it was deleted."""
    dictionaries.delete(dictionary_id)
    return Response(status_code=204)


@protected.post("/dictionaries/{dictionary_id}/apply", status_code=202, response_model=JobStatus,
                summary="Label an image with a dictionary (a job; results as for an analysis)")
def apply_dictionary(dictionary_id: str, body: ApplyRequest, dictionaries: Dictionaries,
                     response: Response) -> JobStatus:
    status = dictionaries.apply(dictionary_id, body)
    response.headers["Location"] = status.links["self"]
    return status


def _json_response(data: Any, request: Request, media_type: str, headers: dict[str, str] | None = None) -> Response:
    """JSON computed for this request, gzip-compressed for clients that accept gzip."""
    body = json.dumps(data, separators=(",", ":"), allow_nan=False).encode("utf-8")
    headers = {"Vary": "Accept-Encoding", **(headers or {})}
    if _accepts_gzip(request.headers.get("accept-encoding", "")):
        body = gzip.compress(body, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=media_type, headers=headers)


def _accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (``gzip;q=0`` does not)."""
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            q = params.strip()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


def _gzip_file_response(path: Path, client_gzip: bool, media_type: str) -> Response:
    """Serve a gzipped file as is to clients that accept gzip, decompressed to the others."""
    headers = {"Vary": "Accept-Encoding"}
    if client_gzip:
        return FileResponse(path, media_type=media_type, headers={**headers, "Content-Encoding": "gzip"})

    def chunks() -> Iterator[bytes]:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                yield chunk

    return StreamingResponse(chunks(), media_type=media_type, headers=headers)
