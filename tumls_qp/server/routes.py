"""HTTP routes: thin functions that call the job service (``app.state.jobs``)."""

from __future__ import annotations

import gzip
import hmac
from pathlib import Path
from typing import Iterator

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .. import __version__
from .errors import UnauthorizedError
from .jobs import JobService
from .schemas import ClassList, ErrorBody, Health, JobList, JobRequest, JobStatus, Version
from .settings import API_VERSION

__all__ = ["public", "protected"]

_bearer = HTTPBearer(auto_error=False, description="The token given to `tumls-qp serve --token` (when set).")
_CHUNK = 1 << 16


def _service(request: Request) -> JobService:
    return request.app.state.jobs


def require_token(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """Check ``Authorization: Bearer <token>`` when the server has a token (constant-time compare)."""
    expected = request.app.state.settings.token
    if expected is None:
        return
    supplied = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(supplied.encode("utf-8"), expected.encode("utf-8")):
        raise UnauthorizedError("missing or wrong token: send 'Authorization: Bearer <token>' with the token the "
                                "server was started with (TOKEN in the QuPath script's settings)")


_errors = {status: {"model": ErrorBody} for status in (401, 403, 404, 409, 413, 422, 429)}
public = APIRouter()
protected = APIRouter(dependencies=[Depends(require_token)], responses=_errors)


@public.get("/health", response_model=Health, summary="Liveness: is the server up, are its workers running")
def health(request: Request) -> Health:
    return Health(**_service(request).health())


@protected.get("/version", response_model=Version, summary="Tool version and API version")
def version() -> Version:
    return Version(tool="tumls-qp", version=__version__, api=API_VERSION)


@protected.post("/jobs", status_code=202, response_model=JobStatus, summary="Submit an image for analysis")
def submit_job(body: JobRequest, request: Request, response: Response) -> JobStatus:
    status = _service(request).submit(body)
    response.headers["Location"] = status.links["self"]
    return status


@protected.get("/jobs", response_model=JobList, summary="Recent jobs, newest first")
def list_jobs(
    request: Request,
    image_uri: str | None = Query(None, max_length=4096, description="Only jobs of this file: URI."),
    image_name: str | None = Query(None, max_length=1000, description="Only jobs of this QuPath image name."),
    state: str | None = Query(None, max_length=20, description="Only jobs in this state."),
    limit: int = Query(50, ge=1, le=1000),
) -> JobList:
    return JobList(jobs=_service(request).list(image_uri=image_uri, image_name=image_name, state=state, limit=limit))


@protected.get("/jobs/{job_id}", response_model=JobStatus, summary="A job's state, progress, timings and error")
def get_job(job_id: str, request: Request) -> JobStatus:
    return _service(request).status(job_id)


@protected.delete("/jobs/{job_id}", response_model=JobStatus, summary="Cancel a queued or running job")
def cancel_job(job_id: str, request: Request) -> JobStatus:
    return _service(request).cancel(job_id)


@protected.get("/jobs/{job_id}/geojson", summary="The job's QuPath objects (gzip-encoded when the client accepts it)",
               response_class=Response, responses={200: {"content": {"application/geo+json": {}}}})
def get_geojson(job_id: str, request: Request) -> Response:
    path = _service(request).geojson_path(job_id)
    return _gzip_file_response(path, _accepts_gzip(request.headers.get("accept-encoding", "")), "application/geo+json")


@protected.get("/jobs/{job_id}/classes", response_model=ClassList, summary="Class names and colours of the objects")
def get_classes(job_id: str, request: Request) -> ClassList:
    return _service(request).classes(job_id)


@protected.get("/jobs/{job_id}/report", summary="The run's PDF report, when it has one", response_class=FileResponse,
               responses={200: {"content": {"application/pdf": {}}}})
def get_report(job_id: str, request: Request) -> FileResponse:
    path, filename = _service(request).report_path(job_id)
    return FileResponse(path, media_type="application/pdf", filename=filename)


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
