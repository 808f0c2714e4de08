"""Request and response bodies: the contract with the scripts in ``groovy/``.

``groovy/README.md`` holds an example request that a test validates against
:class:`JobRequest`; change both together (and ``API_VERSION`` when incompatible).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

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
    "SeedAnnotation",
    "SeedRequest",
    "NamingRequest",
    "DictionaryClass",
    "DictionaryInfo",
    "DictionaryList",
    "ApplyRequest",
    "DictionaryQuery",
    "job_status",
    "check_json_tree",
    "MAX_PARAMETER_DEPTH",
    "MAX_GEOMETRY_DEPTH",
    "MAX_COORDINATE",
]

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]
Kind = Literal["analysis", "dictionary"]

#: Deepest nesting of ``parameters`` (the config's sections are one level; 8 leaves room, refuses abuse).
MAX_PARAMETER_DEPTH = 8
#: Deepest nesting of a seed's geometry (a GeometryCollection of MultiPolygons is 7 levels).
MAX_GEOMETRY_DEPTH = 8
#: Largest absolute coordinate of a seed, in px (QuPath's images are at most 10 million px wide).
MAX_COORDINATE = 1e9
#: Most values (numbers, strings, ...) in ``parameters`` or in one seed's geometry.
MAX_JSON_ITEMS = 200_000


def check_json_tree(value: Any, max_depth: int, *, max_number: float | None = None) -> Any:
    """``value`` (parsed JSON) unchanged, or ValueError naming where it breaks a rule: nested deeper than
    ``max_depth`` (dicts and lists count one level each), a number that is NaN or infinite (``NaN``,
    ``1e400``) or larger than ``max_number``, a text with a NUL byte, more than ``MAX_JSON_ITEMS`` values.
    Iterative: no depth can exhaust the stack."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    count = 0
    while stack:
        item, depth, where = stack.pop()
        at = f"{where}: " if where else ""
        count += 1
        if count > MAX_JSON_ITEMS:
            raise ValueError(f"more than {MAX_JSON_ITEMS} values")
        if isinstance(item, (dict, list)):
            if depth + 1 > max_depth:
                raise ValueError(f"{at}nested more than {max_depth} levels deep")
            if isinstance(item, dict):
                for key, child in item.items():
                    if "\0" in str(key):
                        raise ValueError(f"{at}a key contains a NUL byte")
                    stack.append((child, depth + 1, f"{where}.{key}" if where else str(key)))
            else:
                stack.extend((child, depth + 1, f"{where}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{at}numbers must be finite; got {item!r}")
        elif (max_number is not None and isinstance(item, (int, float)) and not isinstance(item, bool)
              and abs(item) > max_number):
            raise ValueError(f"{at}numbers must be within ±{max_number:g}; got {item!r}")
        elif isinstance(item, str) and "\0" in item:
            raise ValueError(f"{at}the text contains a NUL byte")
    return value


Parameters = Annotated[dict[str, Any], AfterValidator(lambda v: check_json_tree(v, MAX_PARAMETER_DEPTH))]
Geometry = Annotated[dict[str, Any], AfterValidator(
    lambda v: check_json_tree(v, MAX_GEOMETRY_DEPTH, max_number=MAX_COORDINATE))]


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
    parameters: Parameters = Field(
        default_factory=dict,
        description="Pipeline options, nested by section as in `tumls-qp config` (e.g. {\"clusters\": {\"k\": 4}}); "
                    f"at most {MAX_PARAMETER_DEPTH} levels deep, finite numbers only.")


class DictionaryQuery(BaseModel):
    """How a dictionary job labelled its image."""

    id: str = Field(description="The dictionary (GET /dictionaries/{id}).")
    name: str | None
    query: Literal["dq", "cq"] = Field(description="The query shown in the GeoJSON: Direct-Query or Cluster-then-Query.")
    gamma: int = Field(description="Cluster-then-Query's γ (groups = γ · classes found by Direct-Query).")
    groups: int = Field(description="Cluster-then-Query's number of groups.")
    tiles_per_class: dict[str, int] = Field(description="Tiles of each class in the GeoJSON.")
    agreement_dq_cq: float = Field(description="Share of tiles on which the two queries agree.")


class JobResult(BaseModel):
    """What a succeeded job produced."""

    k: int | None = Field(description="Number of tissues found.")
    tissue_tiles: int | None = Field(description="Tissue tiles analysed.")
    features: int = Field(description="QuPath objects in the GeoJSON.")
    embedding_cache: str | None = Field(description="'hit' when cached embeddings were reused, else 'miss'.")
    warnings: list[str]
    report: bool = Field(description="Whether the run has a PDF report (GET /jobs/{id}/report).")
    run_dir: str = Field(description="The run folder on the server.")
    embedding_colours: bool = Field(
        default=False, description="Whether the run has the embedding-colour layer (GET /jobs/{id}/embedding-colours).")
    dictionary: DictionaryQuery | None = Field(default=None, description="A dictionary job's query (else null).")


class JobStatus(BaseModel):
    """A job's state (``GET /jobs/{id}``)."""

    id: str
    number: int = Field(description="Job number; objects from this job carry it as a measurement: 'TUMLS-QP job' "
                                    "(analysis) or 'TUMLS-QP dictionary' (dictionary).")
    kind: Kind = Field(description="'analysis' (POST /jobs) or 'dictionary' (POST /dictionaries/{id}/apply).")
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
    status: Literal["ok", "degraded"] = Field(
        description="'degraded' when no worker runs, or one has stopped responding.")
    workers_alive: int
    workers: int
    workers_stalled: int = Field(
        default=0, description="Workers whose heartbeat is late (stopped or frozen); their job fails after the "
                               "server's --stall-timeout.")


class Version(BaseModel):
    tool: str
    version: str
    api: int


class ErrorBody(BaseModel):
    detail: str
    field: str | None


RGB = Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=3, max_length=3)]


class SeedAnnotation(BaseModel):
    """One of the user's classified annotations (a click, a scribble or a polygon)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    class_name: str = Field(alias="class", min_length=1, max_length=200, description="The annotation's class.")
    color: RGB | None = Field(default=None, description="The class colour [r, g, b] (default: a palette colour).")
    geometry: Geometry = Field(description="GeoJSON geometry in level-0 px of the image (QuPath's frame); finite "
                                           f"coordinates within ±{MAX_COORDINATE:g}.")


class SeedRequest(BaseModel):
    """Seeds for seeded iterative clustering (``POST /jobs/{id}/seeded``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"seeds": [
        {"class": "Tumor", "color": [200, 0, 0], "geometry": {"type": "Point", "coordinates": [1500, 1200]}},
        {"class": "Stroma", "color": [150, 200, 150],
         "geometry": {"type": "LineString", "coordinates": [[300, 900], [600, 1100]]}},
    ]}]})

    seeds: list[SeedAnnotation] = Field(min_length=1, max_length=10_000,
                                        description="At least one annotation of each of two or more classes.")
    positive: str | None = Field(
        default=None, max_length=200,
        description="With exactly two classes: the class to treat as Algorithm 1's positive class (default: the "
                    "multi-class scheme).")


class NamingRequest(BaseModel):
    """The user's names for a job's prototype clusters (``POST /dictionaries``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "job": "0123456789abcdef0123456789abcdef", "k": 4,
        "names": {"1": "Tumor", "2": "Stroma", "3": "mixed", "4": None},
        "colors": {"Tumor": [200, 0, 0], "Stroma": [150, 200, 150]}, "name": "breast tumour vs stroma",
    }]})

    job: str = Field(min_length=1, max_length=64, description="The analysis job whose prototype clusters were named.")
    k: int = Field(ge=2, le=1000, description="The number of clusters named (as GET /jobs/{id}/prototypes gave them).")
    names: dict[str, str | None] = Field(
        description="Cluster number (1..k) -> class name, 'mixed' (dropped), or null (unnamed, dropped).")
    colors: dict[str, RGB] = Field(default_factory=dict, description="Class name -> [r, g, b].")
    name: str | None = Field(default=None, max_length=200, description="A name for the dictionary.")


class DictionaryClass(BaseModel):
    name: str
    color: list[int] = Field(description="[r, g, b], each 0-255.")
    prototypes: int = Field(description="Prototypes (named clusters) of this class.")


class DictionaryInfo(BaseModel):
    """A saved dictionary (``GET /dictionaries``)."""

    id: str
    name: str | None
    created_at: datetime
    classes: list[DictionaryClass]
    source_job: str | None = Field(description="The analysis job whose clusters were named.")
    source_image: str | None = Field(description="The image of that job.")
    naming: dict[str, Any] = Field(description="Cluster numbers per class, mixed and unnamed.")
    links: dict[str, str]


class DictionaryList(BaseModel):
    dictionaries: list[DictionaryInfo]


class ApplyRequest(BaseModel):
    """One image to label with a dictionary (``POST /dictionaries/{id}/apply``): the image as for ``POST /jobs``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    uris: list[str] = Field(min_length=1, max_length=16, description="As for POST /jobs.")
    width: int = Field(ge=1, le=10_000_000, description="As for POST /jobs.")
    height: int = Field(ge=1, le=10_000_000, description="As for POST /jobs.")
    pixel_size_um: float | None = Field(default=None, ge=0.01, le=100, allow_inf_nan=False,
                                        description="As for POST /jobs.")
    image_name: str = Field(min_length=1, max_length=1000, description="As for POST /jobs.")
    server_type: str = Field(default="unknown", max_length=200, description="As for POST /jobs.")
    query: Literal["dq", "cq"] = Field(
        default="dq", description="Direct-Query (each tile takes its nearest prototype's class) or Cluster-then-Query.")
    gamma: int | None = Field(default=None, ge=1, le=50,
                              description="Cluster-then-Query's γ (groups = γ · classes; default 5).")


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
        links.update(geojson=f"/jobs/{job.id}/geojson", classes=f"/jobs/{job.id}/classes",
                     seeded=f"/jobs/{job.id}/seeded")
        if job.kind == "analysis":
            links["prototypes"] = f"/jobs/{job.id}/prototypes"
        if result.report:
            links["report"] = f"/jobs/{job.id}/report"
        if result.embedding_colours:
            links["embedding_colours"] = f"/jobs/{job.id}/embedding-colours"
    return JobStatus(
        id=job.id, number=job.number, kind=job.kind, state=job.state, progress=round(job.progress, 4), stage=job.stage,  # type: ignore[arg-type]
        message=job.message, image_name=job.image_name, image_path=job.image_path,
        created_at=_time(job.created_at), started_at=_time(job.started_at),  # type: ignore[arg-type]
        finished_at=_time(job.finished_at), elapsed_s=elapsed, attempt=job.attempt, warnings=job.warnings,
        error=job.error, result=result, links=links,
    )
