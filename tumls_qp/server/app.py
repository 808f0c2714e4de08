"""The app factory, ``create_app(settings, runner)``, and ``serve(settings)`` (uvicorn)."""

from __future__ import annotations

import logging
import socket
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from .dictionaries import DictionaryService
from .errors import ServerStartError, install_error_handlers
from .jobs import JobService
from .routes import protected, public
from .runner import ProcessRunner, Runner
from .settings import ServerSettings
from .store import JobStore

__all__ = ["create_app", "serve"]

log = logging.getLogger(__name__)

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
        import json

        body = json.dumps({"detail": detail, "field": None}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(settings: ServerSettings, runner: Runner | None = None) -> FastAPI:
    """The FastAPI app.

    Parameters
    ----------
    settings : ServerSettings
    runner : Runner, optional
        What runs the jobs; default :class:`~tumls_qp.server.runner.ProcessRunner` (worker
        processes). Started and stopped with the app (lifespan).
    """
    runner = runner if runner is not None else ProcessRunner(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner.start()
        store = JobStore(settings.db_path)
        app.state.jobs = JobService(settings, store, runner)
        app.state.dictionaries = DictionaryService(app.state.jobs)
        try:
            yield
        finally:
            runner.stop()
            store.close()

    app = FastAPI(title="tumls-qp", version=__version__, description=_DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(public)
    app.include_router(protected)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


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
        runner = ProcessRunner(settings)
        runner.start()
        try:
            app = create_app(settings, runner)
            config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=5,
                                    lifespan="on")
            if announce is not None:
                roots = ", ".join(str(r) for r in settings.roots)
                announce(f"tumls-qp server {__version__} listening on {settings.url} (data: {settings.data_dir}; "
                         f"slides from: {roots}; workers: {settings.workers})")
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            runner.stop()
    finally:
        sock.close()
