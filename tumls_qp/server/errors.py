"""The server's errors and their HTTP statuses: mapped here and only here (``STATUS_CODES``); the
middlewares of ``app`` answer 400 (Host), 401 (token) and 413 (body size) before a route runs.

Every error response has the same body, ``{"detail": "<what was wrong and what to do>",
"field": "<request field or null>"}``; validation errors add ``"errors"``, one entry per
field. Bad input is always a 4xx; a full data folder is a 507; a 500 means a bug in tumls-qp.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import sqlite3
from pathlib import Path
from typing import Any, Callable

from ..errors import InvalidInputError, TumlsQpError

__all__ = [
    "RequestError",
    "ForbiddenPathError",
    "JobNotFoundError",
    "DictionaryNotFoundError",
    "ResultNotFoundError",
    "JobStateError",
    "QueueFullError",
    "InsufficientStorageError",
    "ServerStartError",
    "STATUS_CODES",
    "status_for",
    "is_disk_full",
    "data_folder_full",
    "error_body",
    "send_error",
    "CatchAll",
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


class InsufficientStorageError(TumlsQpError):
    """The data folder is full, or a storage limit of the server is reached (507)."""


class ServerStartError(TumlsQpError):
    """The server cannot start (port in use, data folder in use by another server)."""


#: HTTP status per error class; the first matching class (in this order) wins.
STATUS_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ForbiddenPathError, 403),
    (JobNotFoundError, 404),
    (DictionaryNotFoundError, 404),
    (ResultNotFoundError, 404),
    (JobStateError, 409),
    (QueueFullError, 429),
    (InsufficientStorageError, 507),
    (InvalidInputError, 422),
    (TumlsQpError, 500),
)


def status_for(exc: BaseException) -> int:
    for cls, status in STATUS_CODES:
        if isinstance(exc, cls):
            return status
    return 500


#: SQLite's result code for "database or disk is full".
_SQLITE_FULL = 13


def is_disk_full(exc: BaseException) -> bool:
    """Whether an exception (or one it was raised from) means "no space left" (ENOSPC, a disk quota, SQLITE_FULL)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(current, sqlite3.Error) and (getattr(current, "sqlite_errorcode", None) == _SQLITE_FULL
                                                   or "database or disk is full" in str(current)):
            return True
        current = current.__cause__ or current.__context__
    return False


def data_folder_full(data_dir: Path, needed_mb: float | None = None) -> InsufficientStorageError:
    """The 507 error for a full data folder, with the space left on its file system."""
    try:
        free_mb = shutil.disk_usage(data_dir).free / 2**20
    except OSError:
        free_mb = 0.0
    need = f"; the server keeps at least {needed_mb:g} MB free (--min-free-mb)" if needed_mb else ""
    return InsufficientStorageError(
        f"data folder full ({free_mb:.1f} MB free in {data_dir}{need}): delete finished jobs "
        "(DELETE /jobs/{id}) or dictionaries, lower --keep-days / --max-data-gb, or free space on that disk"
    )


def error_body(detail: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    """The body of every error response."""
    return {"detail": detail, "field": field, **extra}


async def send_error(send: Callable, status: int, detail: str, field: str | None = None,
                     headers: dict[str, str] | None = None) -> None:
    """Send a whole JSON error response from ASGI middleware (before the app has answered)."""
    body = json.dumps(error_body(detail, field)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class CatchAll:
    """ASGI middleware: an exception no handler took becomes a JSON answer, and the connection stays usable.

    Starlette's last-resort handler answers 500 but then re-raises, and uvicorn closes a keep-alive
    connection on an exception (the client's next request on it is reset). Here the exception ends
    with the answer: 507 for a full disk (``data_dir``'s free space in the detail), else 500.
    """

    def __init__(self, app: Any, data_dir: Path) -> None:
        self.app, self.data_dir = app, data_dir

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            where = f"{scope.get('method')} {scope.get('path')}"
            if started:  # nothing can be said any more: the status line is out
                log.error("error on %s after the answer had started", where, exc_info=exc)
                raise
            if is_disk_full(exc):
                log.error("data folder full on %s: %s", where, exc)
                await send_error(send, 507, str(data_folder_full(self.data_dir)))
            else:
                log.error("internal error on %s", where, exc_info=exc)
                await send_error(send, 500, f"internal error ({type(exc).__name__}); see the server log")


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

    async def on_tumls_error(request: Any, exc: TumlsQpError) -> JSONResponse:
        if is_disk_full(exc):  # e.g. an OutputError raised from ENOSPC
            exc = data_folder_full(request.app.state.settings.data_dir)
        status = status_for(exc)
        if status >= 500:
            log.error("error on %s %s: %s", request.method, request.url.path, exc, exc_info=exc)
        headers = {"Retry-After": "30"} if status == 429 else None
        return JSONResponse(error_body(str(exc), getattr(exc, "field", None)), status_code=status, headers=headers)

    async def on_validation_error(request: Any, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for error in exc.errors():
            field = _location(error.get("loc", ()))
            message = str(error.get("msg", "invalid"))
            if error.get("type") == "json_invalid":
                message = f"malformed JSON ({(error.get('ctx') or {}).get('error', 'decode error')})"
            errors.append({"field": field, "message": message})
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
        return JSONResponse(error_body(detail, errors[0]["field"] if errors else None, errors=errors),
                            status_code=422)

    async def on_http_error(request: Any, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        return JSONResponse(error_body(detail), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    app.add_exception_handler(TumlsQpError, on_tumls_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
