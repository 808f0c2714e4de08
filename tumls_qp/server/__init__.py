"""The analysis server that QuPath's scripts talk to (``tumls-qp serve``).

Modules: ``settings`` (one settings class), ``schemas`` (the HTTP contract with
``groovy/``), ``intake`` (checks at the edge), ``store`` (SQLite job store), ``worker``
and ``runner`` (worker processes), ``jobs`` (the service the routes call), ``dictionaries``,
``retention`` (which old results to delete), ``routes``, ``errors`` (HTTP statuses, in one
place) and ``app`` (``create_app``, ``serve``, the Host and token checks).

``import tumls_qp.server`` loads no FastAPI; ``create_app`` and ``serve`` do.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve", "ServerSettings"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "serve"):
        from . import app

        return getattr(app, name)
    if name == "ServerSettings":
        from .settings import ServerSettings

        return ServerSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
