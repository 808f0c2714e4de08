"""The app factory, ``create_app(settings, runner)``, and ``serve(settings)`` (uvicorn).

Every request passes, in this order: the Host check (:class:`HostCheck`: a page from another
site cannot reach the server through DNS rebinding), the token check (:class:`TokenCheck`, before
the body is read), the body size limit (:class:`BodyLimit`) and :class:`~.errors.CatchAll` (no
exception leaves without a JSON answer); then the routes.
"""

from __future__ import annotations

import hmac
import logging
import re
import socket
import threading
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware

from .. import __version__
from .dictionaries import DictionaryService
from .errors import CatchAll, ServerStartError, install_error_handlers, send_error
from .jobs import JobService
from .routes import protected, public
from .runner import ProcessRunner, Runner
from .settings import ServerSettings, is_ip_address
from .store import JobStore

__all__ = ["create_app", "serve", "HostCheck", "TokenCheck", "BodyLimit", "RETENTION_INTERVAL_S"]

log = logging.getLogger(__name__)

#: Seconds between two retention passes (``JobService.enforce_retention``); one runs at start.
RETENTION_INTERVAL_S = 60.0
#: Paths that answer without the token.
PUBLIC_PATHS = frozenset({"/health"})
_HOST_HEADER = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]/@\s]+)(?::[0-9]{1,5})?$")


def _headers(scope: dict) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in scope.get("headers") or []}


class HostCheck:
    """ASGI middleware: answer 400 unless the Host header names this server (``settings.trusted_hosts``)
    or is an IP address.

    A web page's scripts can reach a loopback server under the page's own host name after DNS
    rebinding; the browser then sends that name as Host, which this check refuses. An IP address
    cannot be rebound, so a client may use any of the server's addresses (e.g. with ``--host 0.0.0.0``).
    """

    def __init__(self, app: Any, trusted: frozenset[str]) -> None:
        self.app, self.trusted = app, trusted

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = _headers(scope).get(b"host", b"").decode("latin-1")
        match = _HOST_HEADER.match(header)
        name = match.group(1).strip("[]").lower() if match else None
        if name is not None and (name in self.trusted or is_ip_address(name)):
            await self.app(scope, receive, send)
            return
        names = ", ".join(sorted(self.trusted))
        await send_error(send, 400, f"the Host header {header[:100]!r} is not a name of this server ({names}, or "
                                    "one of its IP addresses); to reach it under another name, start it with "
                                    "--allowed-host NAME", "Host")


class TokenCheck:
    """ASGI middleware: with a token, every request but ``/health`` (the docs included) must carry
    ``Authorization: Bearer <token>``; checked before the body is read (constant-time compare)."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.expected = token.encode("utf-8") if token else None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if self.expected is None or scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        scheme, _, supplied = _headers(scope).get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(supplied.strip(), self.expected):
            await self.app(scope, receive, send)
            return
        await send_error(send, 401, "missing or wrong token: send 'Authorization: Bearer <token>' with the token the "
                                    "server was started with (TOKEN in the QuPath script's settings)",
                         headers={"WWW-Authenticate": "Bearer"})

_DESCRIPTION = """\
Runs TUMLS (unsupervised tissue segmentation of H&E slides) for QuPath.
The QuPath script `groovy/tumls_analyze.groovy` submits the current image (`POST /jobs`), polls
`GET /jobs/{id}`, then imports `GET /jobs/{id}/geojson` and colours the classes from
`GET /jobs/{id}/classes`. On a succeeded analysis, `tumls_seeded.groovy` sends the user's
classified annotations (`POST /jobs/{id}/seeded`), `tumls_prototypes.groovy` fetches clusters to
name (`GET /jobs/{id}/prototypes`) and saves the names as a dictionary (`POST /dictionaries`), and
`tumls_dictionary.groovy` labels an image with one (`POST /dictionaries/{id}/apply`).
Errors have the body `{"detail": ..., "field": ...}`.
"""


class BodyLimit:
    """ASGI middleware: refuse request bodies larger than ``max_bytes`` with 413."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                await self._reply(send, 400, "the Content-Length header is not a byte count")
                return
            if declared > self.max_bytes:
                await self._reply(send, 413, self._too_large())
                return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException passes through FastAPI's body parsing unchanged (a 413, not a 400).
                    raise StarletteHTTPException(413, self._too_large())
            return message

        await self.app(scope, limited_receive, send)

    def _too_large(self) -> str:
        return f"request body larger than the server's limit of {self.max_bytes} bytes"

    @staticmethod
    async def _reply(send: Callable, status: int, detail: str) -> None:
        await send_error(send, status, detail)


def create_app(settings: ServerSettings, runner: Runner | None = None) -> FastAPI:
    """The FastAPI app.

    Parameters
    ----------
    settings : ServerSettings
    runner : Runner, optional
        What runs the jobs; default :class:`~tumls_qp.server.runner.ProcessRunner` (worker
        processes). Started and stopped with the app (lifespan).
    """
    runner = runner if runner is not None else _runner(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner.start()
        store = JobStore(settings.db_path)
        app.state.jobs = JobService(settings, store, runner)
        app.state.dictionaries = DictionaryService(app.state.jobs)
        stop = threading.Event()
        retention = threading.Thread(target=_retain, args=(app.state.jobs, stop), name="tumls-qp-retention",
                                     daemon=True)
        retention.start()
        try:
            yield
        finally:
            stop.set()
            retention.join(timeout=30)
            runner.stop()
            store.close()

    middleware = [  # outermost first
        Middleware(HostCheck, trusted=settings.trusted_hosts),
        Middleware(TokenCheck, token=settings.token),
        Middleware(BodyLimit, max_bytes=settings.max_body_bytes),
        Middleware(CatchAll, data_dir=settings.data_dir),
    ]
    app = FastAPI(title="tumls-qp", version=__version__, description=_DESCRIPTION, lifespan=lifespan,
                  middleware=middleware)
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(public)
    app.include_router(protected)
    return app


def _runner(settings: ServerSettings) -> Runner:
    """Local worker processes, or the Dask cluster of ``settings.scheduler``."""
    if settings.scheduler:
        from .dask_runner import DaskRunner

        return DaskRunner(settings)
    return ProcessRunner(settings)


def _retain(jobs: JobService, stop: threading.Event) -> None:
    """The retention passes, until ``stop`` is set."""
    while True:
        try:
            jobs.enforce_retention()
        except Exception:  # never let the thread die; log and try again later
            log.exception("retention pass failed")
        if stop.wait(RETENTION_INTERVAL_S):
            return


def _listen(settings: ServerSettings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise ServerStartError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}. Another program (or another "
            "tumls-qp server) may use the port: choose another with --port."
        ) from exc
    sock.listen(128)
    return sock


def serve(settings: ServerSettings, *, log_level: str = "info",
          announce: Callable[[str], None] | None = print) -> None:
    """Run the server until interrupted (Ctrl-C, SIGTERM).

    Parameters
    ----------
    settings : ServerSettings
    log_level : str
        uvicorn's log level.
    announce : callable, optional
        Called once with the URL the server listens on (``--port 0`` picks a free port).

    Raises
    ------
    ServerStartError
        The port is in use or another server uses the data folder.
    """
    import dataclasses

    import uvicorn

    sock = _listen(settings)
    try:
        settings = dataclasses.replace(settings, port=sock.getsockname()[1])
        # Started here rather than in the app's lifespan so that "data folder in use" is a clean error.
        runner = _runner(settings)
        runner.start()
        try:
            app = create_app(settings, runner)
            config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5,
                                    lifespan="on")
            if announce is not None:
                roots = ", ".join(str(r) for r in settings.roots)
                where = (f"jobs run on the Dask cluster at {settings.scheduler}" if settings.scheduler
                         else f"workers: {settings.workers}")
                hosts = ", ".join(sorted(settings.trusted_hosts))
                announce(f"tumls-qp server {__version__} listening on {settings.url} (data: {settings.data_dir}; "
                         f"slides from: {roots}; {where}; host names: {hosts})")
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            runner.stop()
    finally:
        sock.close()
