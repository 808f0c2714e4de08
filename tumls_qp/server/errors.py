"""The server's errors and their HTTP statuses: mapped here and only here (``STATUS_CODES``).

Every error response has the same body, ``{"detail": "<what was wrong and what to do>",
"field": "<request field or null>"}``; validation errors add ``"errors"``, one entry per
field. Bad input is always a 4xx; a 500 means a bug in tumls-qp.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import InvalidInputError, TumlsQpError

__all__ = [
    "RequestError",
    "ForbiddenPathError",
    "UnauthorizedError",
    "JobNotFoundError",
    "DictionaryNotFoundError",
    "ResultNotFoundError",
    "JobStateError",
    "QueueFullError",
    "BodyTooLargeError",
    "ServerStartError",
    "STATUS_CODES",
    "status_for",
    "install_error_handlers",
]

log = logging.getLogger(__name__)


class RequestError(InvalidInputError):
    """A request field is not usable as given (422)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ForbiddenPathError(RequestError):
    """A file outside the server's allowed roots (403)."""


class UnauthorizedError(TumlsQpError):
    """Missing or wrong bearer token (401)."""


class JobNotFoundError(TumlsQpError):
    """No job with this id (404)."""


class DictionaryNotFoundError(TumlsQpError):
    """No dictionary with this id (404)."""


class ResultNotFoundError(TumlsQpError):
    """The job has no such result, e.g. no PDF report (404)."""


class JobStateError(TumlsQpError):
    """The job is not in a state that allows this, e.g. results before it succeeded (409)."""


class QueueFullError(TumlsQpError):
    """Too many jobs are queued (429)."""


class BodyTooLargeError(TumlsQpError):
    """The request body exceeds the server's limit (413)."""


class ServerStartError(TumlsQpError):
    """The server cannot start (port in use, data folder in use by another server)."""


#: HTTP status per error class; the first matching class (in this order) wins.
STATUS_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (UnauthorizedError, 401),
    (ForbiddenPathError, 403),
    (JobNotFoundError, 404),
    (DictionaryNotFoundError, 404),
    (ResultNotFoundError, 404),
    (JobStateError, 409),
    (BodyTooLargeError, 413),
    (QueueFullError, 429),
    (InvalidInputError, 422),
    (TumlsQpError, 500),
)


def status_for(exc: BaseException) -> int:
    for cls, status in STATUS_CODES:
        if isinstance(exc, cls):
            return status
    return 500


def _location(loc: Any) -> str:
    """``("body", "uris", 0)`` -> ``"uris[0]"``."""
    out = ""
    for i, part in enumerate(loc):
        if i == 0 and part in ("body", "query", "path", "header"):  # where, not what (a field may be named "query")
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def install_error_handlers(app: Any) -> None:
    """Register one handler per error family on a FastAPI app."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    def body(detail: str, field: str | None, **extra: Any) -> dict[str, Any]:
        return {"detail": detail, "field": field, **extra}

    async def on_tumls_error(request: Any, exc: TumlsQpError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.error("error on %s %s: %s", request.method, request.url.path, exc, exc_info=exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status == 429:
            headers = {"Retry-After": "30"}
        return JSONResponse(body(str(exc), getattr(exc, "field", None)), status_code=status, headers=headers)

    async def on_validation_error(request: Any, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for error in exc.errors():
            field = _location(error.get("loc", ()))
            message = str(error.get("msg", "invalid"))
            if error.get("type") == "json_invalid":
                message = f"malformed JSON ({(error.get('ctx') or {}).get('error', 'decode error')})"
            errors.append({"field": field, "message": message})
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
        return JSONResponse(body(detail, errors[0]["field"] if errors else None, errors=errors), status_code=422)

    async def on_http_error(request: Any, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        return JSONResponse(body(detail, None), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def on_unexpected(request: Any, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(body(f"internal error ({type(exc).__name__}); see the server log", None), status_code=500)

    app.add_exception_handler(TumlsQpError, on_tumls_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
