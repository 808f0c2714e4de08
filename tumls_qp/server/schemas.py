"""Request and response bodies: the contract with ``groovy/tumls_analyze.groovy``.

``groovy/README.md`` holds an example request that a test validates against
:class:`JobRequest`; change both together (and ``API_VERSION`` when incompatible).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .store import Job

__all__ = [
    "JobRequest",
    "JobResult",
    "JobStatus",
    "JobList",
    "ClassInfo",
    "ClassList",
    "Health",
    "Version",
    "ErrorBody",
    "job_status",
]

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobRequest(BaseModel):
    """One image to analyse, as QuPath describes it (``POST /jobs``)."""

    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra={"examples": [{
        "uris": ["file:/data/slides/CMU-1-Small-Region.svs"],
        "width": 2220,
        "height": 2967,
        "pixel_size_um": 0.499,
        "image_name": "CMU-1-Small-Region.svs",
        "server_type": "OpenslideImageServer",
        "parameters": {"tiles": {"tile_um": 32}},
    }]})

    uris: list[str] = Field(
        min_length=1, max_length=16,
        description="The image's file URI(s), as QuPath's server.getURIs() gives them (e.g. file:/data/x.svs).")
    width: int = Field(ge=1, le=10_000_000, description="Width in pixels of QuPath's image (server.getWidth()).")
    height: int = Field(ge=1, le=10_000_000, description="Height in pixels of QuPath's image (server.getHeight()).")
    pixel_size_um: float | None = Field(
        default=None, ge=0.01, le=100, allow_inf_nan=False,
        description="QuPath's averaged pixel size in µm, or null when QuPath has none.")
    image_name: str = Field(min_length=1, max_length=1000, description="The image's name in QuPath.")
    server_type: str = Field(
        default="unknown", max_length=200,
        description="Class of QuPath's image server (e.g. OpenslideImageServer, BioFormatsImageServer).")
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Pipeline options, nested by section as in `tumls-qp config` (e.g. {\"clusters\": {\"k\": 4}}).")


class JobResult(BaseModel):
    """What a succeeded job produced."""

    k: int | None = Field(description="Number of tissues found.")
    tissue_tiles: int | None = Field(description="Tissue tiles analysed.")
    features: int = Field(description="QuPath objects in the GeoJSON.")
    embedding_cache: str | None = Field(description="'hit' when cached embeddings were reused, else 'miss'.")
    warnings: list[str]
    report: bool = Field(description="Whether the run has a PDF report (GET /jobs/{id}/report).")
    run_dir: str = Field(description="The run folder on the server.")


class JobStatus(BaseModel):
    """A job's state (``GET /jobs/{id}``)."""

    id: str
    number: int = Field(description="Job number; objects from this job carry it as the 'TUMLS-QP job' measurement.")
    state: State
    progress: float = Field(description="Overall progress in [0, 1].")
    stage: str | None = Field(description="Current pipeline stage (tiles, train, embed, cluster, outputs, ...).")
    message: str | None
    image_name: str
    image_path: str = Field(description="The slide file on the server (symlinks resolved).")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    elapsed_s: float | None = Field(description="Seconds since the job started (to its end when finished).")
    attempt: int = Field(description="How many times the job has started (a server restart re-queues it once).")
    warnings: list[str]
    error: str | None
    result: JobResult | None
    links: dict[str, str]


class JobList(BaseModel):
    jobs: list[JobStatus]


class ClassInfo(BaseModel):
    name: str
    color: list[int] = Field(description="[r, g, b], each 0-255.")
    objects: int = Field(description="Objects of this class in the GeoJSON.")


class ClassList(BaseModel):
    """Classes of a job's objects, for the QuPath script to colour them (``GET /jobs/{id}/classes``)."""

    job: str
    classes: list[ClassInfo]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    workers_alive: int
    workers: int


class Version(BaseModel):
    tool: str
    version: str
    api: int


class ErrorBody(BaseModel):
    detail: str
    field: str | None


def _time(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, tz=timezone.utc) if value is not None else None


def job_status(job: Job, now: float) -> JobStatus:
    """The public view of a job."""
    elapsed = None
    if job.started_at is not None:
        elapsed = round((job.finished_at if job.finished_at is not None else now) - job.started_at, 3)
    links = {"self": f"/jobs/{job.id}"}
    result = None
    if job.state == "succeeded" and job.summary is not None:
        result = JobResult(**job.summary)
        links.update(geojson=f"/jobs/{job.id}/geojson", classes=f"/jobs/{job.id}/classes")
        if result.report:
            links["report"] = f"/jobs/{job.id}/report"
    return JobStatus(
        id=job.id, number=job.number, state=job.state, progress=round(job.progress, 4), stage=job.stage,  # type: ignore[arg-type]
        message=job.message, image_name=job.image_name, image_path=job.image_path,
        created_at=_time(job.created_at), started_at=_time(job.started_at),  # type: ignore[arg-type]
        finished_at=_time(job.finished_at), elapsed_s=elapsed, attempt=job.attempt, warnings=job.warnings,
        error=job.error, result=result, links=links,
    )
