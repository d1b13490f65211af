"""gunicorn's configuration, from the environment: `gunicorn -c python:asgi_todo.gunicorn_conf
'asgi_todo.app:create_app()'` (start.sh does exactly that).

The variables are the original image's (WEB_CONCURRENCY, WORKERS_PER_CORE, MAX_WORKERS, HOST,
PORT, BIND, LOG_LEVEL, TIMEOUT, GRACEFUL_TIMEOUT, KEEP_ALIVE, ACCESS_LOG, ERROR_LOG) plus
FORWARDED_ALLOW_IPS; the app's own settings are validated here too. A bad value stops the
master with one line naming the variable, before anything starts.

The master binds its sockets first, then runs RESET_DB / UPDATE_DB once, before any worker
forks (`on_starting`): a port in use stops it with one line before anything is wiped. So the
master imports part of the app (settings, db, startup, models): deploy new code by restarting
gunicorn (a new container), not with SIGHUP, which would mix old and new modules in new workers.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gunicorn import sock
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.glogging import Logger as GunicornLogger
from gunicorn.workers.base import Worker
from uvicorn_worker import UvicornWorker as _UvicornWorker  # type: ignore[import-untyped]

from . import drain, logs, startup
from .protocol import BoundedHeadProtocol
from .settings import ConfigError, Settings, load_settings, refuse

_N = TypeVar("_N", int, float)
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's; see metrics.py
_SHM = "/dev/shm"  # noqa: S108 - see worker_tmp_dir


@dataclass(frozen=True, slots=True)
class Options:
    """The gunicorn side of the environment, validated."""

    bind: list[str]
    workers: int
    timeout: int
    graceful_timeout: int
    keepalive: int
    accesslog: str | None
    errorlog: str
    forwarded_allow_ips: list[str]


def read(environ: Mapping[str, str], *, cores: int) -> Options:
    """The options from the environment; ConfigError names the variable of a bad value."""
    per_core = _number(environ, "WORKERS_PER_CORE", 1.0, float, low=0.01, high=64)
    max_workers = _number(environ, "MAX_WORKERS", 0, int, low=1, high=1024)
    workers = max(int(per_core * cores), 2)
    if max_workers:
        workers = min(workers, max_workers)
    workers = _number(environ, "WEB_CONCURRENCY", workers, int, low=1, high=1024)
    port = _number(environ, "PORT", 8000, int, low=1, high=65535)
    bind = environ.get("BIND") or f"{environ.get('HOST') or '0.0.0.0'}:{port}"  # noqa: S104 - a container's port
    return Options(
        bind=_bind(bind),
        workers=workers,
        timeout=_number(environ, "TIMEOUT", 120, int, low=0, high=86400),
        graceful_timeout=_number(environ, "GRACEFUL_TIMEOUT", 120, int, low=0, high=86400),
        keepalive=_number(environ, "KEEP_ALIVE", 5, int, low=0, high=3600),
        # Unset: standard output; empty or "off": no access log.
        accesslog=_log_target(environ, "ACCESS_LOG", "-", may_be_off=True),
        errorlog=_log_target(environ, "ERROR_LOG", "-", may_be_off=False) or "-",
        forwarded_allow_ips=_networks(environ.get("FORWARDED_ALLOW_IPS") or "127.0.0.1,::1"),
    )


def _number(environ: Mapping[str, str], name: str, default: _N, kind: type[_N], *, low: float, high: float) -> _N:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw[:40]!r} is not a {'whole ' if kind is int else ''}number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be between {low:g} and {high:g}, got {raw[:40]}")
    return value


def _bind(value: str) -> list[str]:
    addresses = [address.strip() for address in value.split(",") if address.strip()]
    for address in addresses:
        if address.startswith(("unix:", "fd://")):
            continue
        port = address.rpartition(":")[2]
        if ":" not in address or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"BIND: {address[:80]!r} is not HOST:PORT, unix:PATH or fd://N")
    if not addresses:
        raise ConfigError("BIND: no address given")
    return addresses


def _log_target(environ: Mapping[str, str], name: str, default: str, *, may_be_off: bool) -> str | None:
    value = environ.get(name, default).strip()
    if may_be_off and value.lower() in ("", "off"):
        return None
    if value in ("", "-"):
        return "-"
    if not Path(value).parent.is_dir():
        raise ConfigError(f"{name}: the directory of {value[:120]!r} does not exist")
    return value


def _networks(value: str) -> list[str]:
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"FORWARDED_ALLOW_IPS: {entry[:80]!r} is not an IP address, a network or *") from None
    return entries


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this container may use
    except AttributeError:
        return os.cpu_count() or 1


class UvicornWorker(_UvicornWorker):  # type: ignore[misc]
    """uvicorn-worker's worker without uvicorn's own access line (ours carries the request id
    and latency) or its `server` header, with our protocol (bounded request heads), and whose
    server drains on SIGTERM (drain.Server)."""

    CONFIG_KWARGS = {
        **_UvicornWorker.CONFIG_KWARGS,
        "access_log": False,
        "server_header": False,
        "http": BoundedHeadProtocol,
    }

    sockets: list[Any]

    def run(self) -> None:
        # The event loop closes the listening sockets it was given when the worker stops: a
        # plain socket it detaches first, gunicorn's wrapper it closes a second time, which
        # logged "Error while closing socket [Errno 9]" on every clean stop.
        self.sockets = [listener.sock for listener in self.sockets]
        super().run()

    async def _serve(self) -> None:
        # uvicorn-worker's own _serve, with our server in place of uvicorn's.
        self.config.app = self.wsgi
        server = drain.Server(self.config, drain_seconds=_settings.drain_seconds)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


try:
    _settings: Settings = load_settings()
    _options = read(os.environ, cores=_cores())
except ConfigError as exc:
    refuse(exc)


class Logger(logs.GunicornLogger):
    """gunicorn's logs in LOG_FORMAT."""

    log_format = _settings.log_format


def on_starting(server: Arbiter) -> None:
    """In the master, before any worker forks: the sockets, so that nothing is wiped before
    the master knows it can serve; the metrics directory of this start; then RESET_DB /
    UPDATE_DB once, and the schema check."""
    try:
        if server.log is not None and not _inherited_sockets(server.cfg):
            server.LISTENERS = listen(server.cfg, server.log)  # type: ignore[misc]  # what start() sets too
        if _settings.metrics:
            _metrics_dir()
        action = startup.prepare_launch(_settings, launcher="gunicorn")
    except ConfigError as exc:
        refuse(exc)
    if _settings.metrics:
        from . import metrics  # only now: prometheus-client reads its directory when imported

        metrics.record_startup(action)


def child_exit(server: Arbiter, worker: Worker) -> None:
    """A worker is gone: its live gauges go with it, its counters stay."""
    if _settings.metrics:
        from . import metrics

        metrics.mark_worker_dead(int(worker.pid))


def on_exit(server: Arbiter) -> None:
    if _own_metrics_dir is not None:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)


_own_metrics_dir: str | None = None


def _metrics_dir() -> None:
    """Every worker writes its metrics to files in one directory, empty at each start:
    METRICS_DIR if set (emptied), otherwise a new temporary one, removed at exit. Set in
    the environment before anything imports prometheus-client, so the workers inherit it."""
    global _own_metrics_dir
    if _settings.metrics_dir is not None:
        path = Path(_settings.metrics_dir)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, mode=0o700)
    else:
        _own_metrics_dir = tempfile.mkdtemp(prefix="asgi_todo-metrics-")
        path = Path(_own_metrics_dir)
    os.environ[_MULTIPROC_ENV] = str(path)


def listen(cfg: Config, log: GunicornLogger) -> list[sock.BaseSocket]:
    """gunicorn's listening sockets, bound once: a port in use is one line (ConfigError), where
    gunicorn itself would log two errors a second for five seconds."""
    listeners: list[sock.BaseSocket] = []
    for address in cfg.address:
        assert not isinstance(address, int)  # fd://N: see _inherited_sockets
        try:
            listeners.append(_bound(address, cfg, log))
        except OSError as exc:
            for listener in listeners:
                listener.close()
            raise ConfigError(f"BIND: cannot listen on {_address_name(address)}: {exc.strerror or exc}") from None
    return listeners


def _inherited_sockets(cfg: Config) -> bool:
    # systemd's socket activation, a master re-executed on USR2, or fd://N: gunicorn takes over
    # sockets that are already bound.
    inherited = os.environ.get("LISTEN_FDS") or os.environ.get("GUNICORN_FD")
    return bool(inherited) or any(isinstance(address, int) for address in cfg.address)


def _bound(address: str | tuple[str, int], cfg: Config, log: GunicornLogger) -> sock.BaseSocket:
    if isinstance(address, tuple):
        kind = sock.TCP6Socket if ":" in address[0] else sock.TCPSocket
        return kind(address, cfg, log)  # type: ignore[arg-type]  # the stub knows only paths
    # gunicorn removes a socket file in its way, even one that another server listens on.
    if os.path.exists(address):
        with socket.socket(socket.AF_UNIX) as probe:
            if probe.connect_ex(address) == 0:
                raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
    return sock.UnixSocket(address, cfg, log)


def _address_name(address: str | tuple[str, int]) -> str:
    if isinstance(address, tuple):
        host, port = address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"unix:{address}"


bind = _options.bind
if _settings.metrics and _settings.metrics_port is not None:
    # The metrics port: the same workers, answering only /metrics there (metrics.MetricsPortGuard).
    bind = [*bind, f"{os.environ.get('HOST') or '0.0.0.0'}:{_settings.metrics_port}"]  # noqa: S104
workers = _options.workers
worker_class = UvicornWorker
# The workers' heartbeat files (mkstemp, unlinked at once) in memory, not on the container's disk.
worker_tmp_dir = _SHM if os.path.isdir(_SHM) else None
timeout = _options.timeout
# On SIGTERM the master tells the workers at once; each drains first (DRAIN_SECONDS), then its
# requests in flight get GRACEFUL_TIMEOUT, after which the master kills what is left.
graceful_timeout = _options.graceful_timeout + _settings.drain_seconds
keepalive = _options.keepalive
forwarded_allow_ips = ",".join(_options.forwarded_allow_ips)
loglevel = _settings.log_level
accesslog = _options.accesslog
errorlog = _options.errorlog
logger_class = Logger
# gunicorn's control socket (`gunicornc`) would be one path per user, shared by every master
# on the host; nothing here uses it.
control_socket_disable = True
