"""gunicorn's configuration, from the environment: `gunicorn -c python:asgi_todo.gunicorn_conf
'asgi_todo.app:create_app()'` (start.sh does exactly that).

The variables are the original image's (WEB_CONCURRENCY, WORKERS_PER_CORE, MAX_WORKERS, HOST,
PORT, BIND, LOG_LEVEL, TIMEOUT, GRACEFUL_TIMEOUT, KEEP_ALIVE, ACCESS_LOG, ERROR_LOG) plus
FORWARDED_ALLOW_IPS and METRICS_HOST: settings.ServerSettings, which `asgi-todo serve` reads
too; the app's own settings are validated here as well. A bad value stops the master with
one line naming the variable, before anything starts.

The master binds its sockets first, then runs RESET_DB / UPDATE_DB once, before any worker
forks (`on_starting`): a port in use stops it with one line before anything is wiped. So the
master imports part of the app (settings, db, startup, models): deploy new code by restarting
gunicorn (a new container), not with SIGHUP, which would mix old and new modules in new workers.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gunicorn import sock
from gunicorn.arbiter import Arbiter
from gunicorn.config import Config
from gunicorn.glogging import Logger as GunicornLogger
from gunicorn.workers.base import Worker
from uvicorn_worker import UvicornWorker as _UvicornWorker  # type: ignore[import-untyped]

from . import drain, launch, logs, startup
from .protocol import BoundedHeadProtocol
from .settings import (
    MULTIPROC_ENV,
    ConfigError,
    ServerSettings,
    Settings,
    host_port,
    load_server_settings,
    load_settings,
    refuse,
)

_SHM = "/dev/shm"  # noqa: S108 - see worker_tmp_dir


@dataclass(frozen=True, slots=True)
class Options:
    """The gunicorn side of the server settings, in gunicorn's terms."""

    bind: list[str]
    workers: int
    timeout: int
    graceful_timeout: int
    keepalive: int
    accesslog: str | None
    errorlog: str
    forwarded_allow_ips: list[str]


def read(environ: Mapping[str, str] | None = None, *, cores: int) -> Options:
    """The options from the environment (and ./.env), or only from `environ`; ConfigError names
    the variable of a bad value."""
    return options(load_server_settings(environ), cores=cores)


def options(server: ServerSettings, *, cores: int) -> Options:
    workers = max(int(server.workers_per_core * cores), 2)
    if server.max_workers:
        workers = min(workers, server.max_workers)
    return Options(
        bind=list(server.binds("gunicorn")),
        workers=server.web_concurrency or workers,
        timeout=server.timeout,
        graceful_timeout=server.graceful_timeout,
        keepalive=server.keep_alive,
        accesslog=None if server.access_log.lower() == "off" else server.access_log,
        errorlog=server.error_log,
        forwarded_allow_ips=list(server.forwarded_allow_ips),
    )


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


launch.warn_unknown_settings()
try:
    _settings: Settings = load_settings()
    _server = load_server_settings()
    _options = options(_server, cores=_cores())
    if _server.dev:  # start.sh runs `asgi-todo serve --reload` for DEV=1 (or --reload)
        raise ConfigError("DEV: development runs `asgi-todo serve --reload` (start.sh: DEV=1), not gunicorn")
except ConfigError as exc:
    refuse(exc, status=launch.CONFIG_ERROR)
# The metrics port: the same workers, answering only /metrics there (metrics.MetricsPortGuard).
_metrics_bind = (
    host_port(_server.metrics_host_for(_options.bind), _settings.metrics_port)
    if _settings.metrics and _settings.metrics_port is not None
    else None
)


class Logger(GunicornLogger):
    """gunicorn's logger, writing LOG_FORMAT to the targets of ERROR_LOG and ACCESS_LOG.

    As in the original, the app's loggers use gunicorn's error log handlers (through the
    root logger); our access line, with request id and latency, goes to the access log.
    """

    def setup(self, cfg: Config) -> None:
        super().setup(cfg)  # gunicorn opens ERROR_LOG and ACCESS_LOG, on every reload too
        chosen = logs.formatter(_settings.log_format)
        for handler in [*self.error_log.handlers, *self.access_log.handlers]:
            logs.stamp(handler, chosen)
        root = logging.getLogger()
        root.handlers[:] = self.error_log.handlers
        root.setLevel(self.error_log.level)
        access = logging.getLogger(logs.ACCESS_LOGGER)
        access.handlers[:] = self.access_log.handlers
        access.setLevel(logging.INFO)  # like gunicorn's access log, whatever LOG_LEVEL says
        access.propagate = False
        access.disabled = not access.handlers  # ACCESS_LOG off: skip the work of the line
        logs.quiet_sql()


def on_starting(server: Arbiter) -> None:
    """In the master, before any worker forks: the sockets, so that nothing is wiped before
    the master knows it can serve; the metrics directory of this start; then RESET_DB /
    UPDATE_DB once, and the schema check."""
    try:
        if server.log is not None and not _inherited_sockets(server.cfg):
            server.LISTENERS = listen(server.cfg, server.log)  # type: ignore[misc]  # what start() sets too
        if _settings.metrics:
            _metrics_dir()
        launch.check_database_file(_settings, creates=_settings.reset_db or _settings.update_db)
        action = startup.prepare_launch(_settings, launcher="gunicorn")
    except ConfigError as exc:
        refuse(exc, status=launch.CONFIG_ERROR)
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
    os.environ[MULTIPROC_ENV] = str(path)


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
            name = _address_name(address)
            variable = "METRICS_PORT" if name == _metrics_bind else "BIND"
            raise ConfigError(f"{variable}: cannot listen on {name}: {exc.strerror or exc}") from None
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


bind = _options.bind if _metrics_bind is None else [*_options.bind, _metrics_bind]
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
