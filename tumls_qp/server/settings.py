"""The server's settings: one frozen dataclass, filled from ``tumls-qp serve`` options.

No FastAPI here: the command line builds and checks settings before the web stack loads.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..config import config_from_dict
from ..errors import ConfigError

__all__ = ["ServerSettings", "default_data_dir", "is_loopback", "is_ip_address", "API_VERSION", "MIN_TOKEN_LENGTH",
           "LOOPBACK_NAMES", "HEARTBEAT_INTERVAL_S"]

#: Version of the HTTP contract with ``groovy/``; bumped on incompatible changes.
API_VERSION = 1
#: Shortest accepted token (``python -c "import secrets; print(secrets.token_urlsafe())"`` gives 43 characters).
MIN_TOKEN_LENGTH = 16
#: Seconds between a worker's heartbeats (the modification time of ``ServerSettings.heartbeat_path(pid)``).
HEARTBEAT_INTERVAL_S = 1.0
#: Host names every server answers to (the Host header of a request must be one of its names).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_HOST_NAME = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")


def default_data_dir() -> Path:
    """``$TUMLS_QP_DATA``, else ``$XDG_DATA_HOME/tumls-qp/server``, else ``~/.local/share/tumls-qp/server``."""
    if os.environ.get("TUMLS_QP_DATA"):
        return Path(os.environ["TUMLS_QP_DATA"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tumls-qp" / "server"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_ip_address(text: str) -> bool:
    """True for an IPv4 or IPv6 address (without brackets)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class ServerSettings:
    """Everything the server needs; checked when built (a bad value raises ``ConfigError`` naming the option).

    Attributes
    ----------
    host : str
        Address to listen on. Anything but loopback needs ``token``.
    port : int
        TCP port; 0 picks a free one (printed at start).
    data_dir : Path
        Job database (``jobs.sqlite3``), job folders (``jobs/<id>/``), the embedding cache (``cache/``) and
        saved prototype dictionaries (``dictionaries/<id>.tumlsdict``).
    roots : tuple of Path
        Folders whose slides the server may read (symlinks resolved). Default: the home folder.
    workers : int
        Worker processes, i.e. jobs that run at the same time. Each uses its share of the CPU cores
        (cores // workers threads, at least 1) for torch, OpenCV and the BLAS/OpenMP pools.
    token : str or None
        Bearer token every request but ``/health`` must carry (``Authorization: Bearer <token>``).
    allowed_hosts : tuple of str
        Further names of this server that a request's Host header may give (besides an IP address,
        ``localhost``, and for another ``host`` this computer's names): a page from any other site
        cannot reach the server by DNS rebinding.
    base_parameters : mapping
        Pipeline options applied to every job before the request's own ``parameters``.
    max_body_bytes : int
        Largest accepted request body.
    max_queued : int
        Largest number of queued jobs; further submissions get 429.
    poll_interval_s : float
        How often an idle worker looks for a queued job.
    max_jobs_per_worker : int
        A worker process is replaced after this many jobs (bounds memory growth).
    cancel_grace_s : float
        After a cancel, seconds a worker gets to stop before it is killed.
    stall_timeout_s : float
        A worker whose heartbeat is older than this (stopped, frozen) is killed and its job fails.
    keep_days : float or None
        Finished jobs (their records and files) and embedding-cache entries are deleted this many
        days after they were made; None keeps them until deleted (``DELETE /jobs/{id}``).
    max_data_gb : float or None
        When the data folder holds more, finished jobs and cache entries are deleted, oldest first,
        until it holds less; never a queued or running job, never a dictionary.
    max_dictionaries : int
        Most saved dictionaries; ``POST /dictionaries`` answers 507 beyond.
    min_free_mb : float
        Requests that write (a job, a dictionary, prototype clusters) answer 507 when the data folder's
        disk has less free space; 0 turns the check off.
    scheduler : str or None
        The address of a Dask scheduler: jobs run on its cluster's workers instead of ``workers``
        local worker processes (:mod:`tumls_qp.server.dask_runner`).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    data_dir: Path = field(default_factory=default_data_dir)
    roots: tuple[Path, ...] = field(default_factory=lambda: (Path.home(),))
    workers: int = 1
    token: str | None = None
    base_parameters: Mapping[str, Any] = field(default_factory=dict)
    max_body_bytes: int = 1 << 20
    max_queued: int = 100
    poll_interval_s: float = 0.25
    max_jobs_per_worker: int = 50
    cancel_grace_s: float = 2.0
    allowed_hosts: tuple[str, ...] = ()
    stall_timeout_s: float = 120.0
    keep_days: float | None = 30.0
    max_data_gb: float | None = None
    max_dictionaries: int = 200
    min_free_mb: float = 500.0
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be an integer in 0-65535; got {self.port!r}")
        if not isinstance(self.workers, int) or not 1 <= self.workers <= 64:
            raise ConfigError(f"--workers must be an integer in 1-64; got {self.workers!r}")
        if self.token is not None and len(self.token) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"--token must have at least {MIN_TOKEN_LENGTH} characters; got {len(self.token)}. Generate one with "
                "python -c \"import secrets; print(secrets.token_urlsafe())\""
            )
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(
                f"--host {self.host} makes the server reachable from other computers: give a token with --token "
                "(or TUMLS_QP_TOKEN) so that only holders of it can submit jobs, or keep the default 127.0.0.1"
            )
        if not self.roots:
            raise ConfigError("give at least one --root folder the server may read slides from")
        roots = []
        for root in self.roots:
            real = Path(os.path.realpath(Path(root).expanduser()))
            if not real.is_dir():
                raise ConfigError(f"--root {str(root)!r} is not an existing folder")
            roots.append(real)
        object.__setattr__(self, "roots", tuple(roots))
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().absolute())
        try:
            config_from_dict(dict(self.base_parameters))
        except ConfigError as exc:
            raise ConfigError(f"default job parameters (--config): {exc}") from exc
        hosts = []
        for name in self.allowed_hosts:
            plain = str(name).strip().lower().removeprefix("[").removesuffix("]")
            if not (_HOST_NAME.match(plain) or is_ip_address(plain)):
                raise ConfigError(f"--allowed-host {name!r} is not a host name or an IP address (give the name "
                                  "clients put in the server's URL, without port or scheme)")
            hosts.append(plain)
        object.__setattr__(self, "allowed_hosts", tuple(hosts))
        for name in ("max_body_bytes", "max_queued", "max_jobs_per_worker", "max_dictionaries"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer; got {value!r}")
        for name in ("poll_interval_s", "cancel_grace_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value <= 60:
                raise ConfigError(f"{name} must be a number of seconds in (0, 60]; got {value!r}")
        if not isinstance(self.stall_timeout_s, (int, float)) or not 10 <= self.stall_timeout_s <= 86400:
            raise ConfigError("--stall-timeout must be a number of seconds in [10, 86400]; "
                              f"got {self.stall_timeout_s!r}")
        for name, option in (("keep_days", "--keep-days"), ("max_data_gb", "--max-data-gb")):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or not 0 < value < 1e6):
                raise ConfigError(f"{option} must be a positive number (or unset); got {value!r}")
        if not isinstance(self.min_free_mb, (int, float)) or not 0 <= self.min_free_mb < 1e9:
            raise ConfigError(f"--min-free-mb must be a number >= 0; got {self.min_free_mb!r}")

    @property
    def trusted_hosts(self) -> frozenset[str]:
        """Names a request's Host header may give (lower case, IPv6 without brackets); any IP address may be
        given too."""
        names = set(LOOPBACK_NAMES) | set(self.allowed_hosts)
        if not is_loopback(self.host):
            names.add(self.host.lower().strip("[]"))
            try:  # this computer's own names: what clients on the network put in the URL
                names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
            except OSError:
                pass
        return frozenset(names - {"0.0.0.0", "::", ""})

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def heartbeats_dir(self) -> Path:
        """The workers' heartbeat files."""
        return self.data_dir / "workers"

    def heartbeat_path(self, pid: int) -> Path:
        """The file whose modification time is worker ``pid``'s heartbeat."""
        return self.heartbeats_dir / str(pid)

    @property
    def dictionaries_dir(self) -> Path:
        """Saved prototype dictionaries, ``<id>.tumlsdict``."""
        return self.data_dir / "dictionaries"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"
