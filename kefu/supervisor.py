"""`kefu run`: a deliberately dumb supervisor.

It starts (or connects to) Redis, then forks N comet workers and one API
worker *before any event loop or Redis client exists in this process*;
each comet worker binds the shared ports itself with SO_REUSEPORT so the
kernel spreads connections over them.  Signal handlers only record the
signal; one short loop reaps, restarts and stops:

* a worker that dies is restarted with exponential backoff; one that dies
  `CRASH_LIMIT` times within `CRASH_WINDOW` seconds is reported and left
  down, and the supervisor exits 1 when no comet worker or no API is left;
* SIGTERM/SIGINT: every child gets SIGTERM (comets send op 6 and close
  their connections, the API finishes in-flight requests), stragglers get
  SIGKILL after `settings.stop_timeout`, then the embedded Redis stops;
* SIGHUP: rolling restart of the comet workers, one at a time, each
  replacement ready before its predecessor is told to stop, so the port is
  never without a listener.

Children ask the kernel for SIGTERM when the supervisor dies (even by
SIGKILL), so none lingers.
"""
from __future__ import annotations

import collections
import fcntl
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import Settings
from .errors import ConfigError
from .lifetime import die_with_parent

log = logging.getLogger("kefu.supervisor")

CRASH_LIMIT = 5          # deaths ...
CRASH_WINDOW = 60.0      # ... within this many seconds = crash loop
BACKOFF_MAX = 30.0
READY_TIMEOUT = 30.0     # a (re)started worker must be listening within this
TICK = 0.1


@dataclass(eq=False)
class Child:
    role: str                    # "comet" or "api"
    index: int
    pid: int = 0
    ready_fd: int = -1
    ready: bool = False
    deaths: collections.deque = field(default_factory=lambda: collections.deque(maxlen=CRASH_LIMIT))
    restart_at: float = 0.0
    failed: bool = False
    retiring: bool = False       # told to stop on purpose: its exit is not a crash

    @property
    def name(self) -> str:
        return f"{self.role} worker {self.index}"


def _child_main(role: str, index: int, settings: Settings, ready_w: int, parent_pid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    die_with_parent(parent_pid)

    def ready() -> None:
        try:
            os.write(ready_w, b"r")
        except OSError:
            pass

    code = 0
    try:
        if role == "comet":
            from .comet import run_worker
            run_worker(settings, index, ready=ready)
        else:
            from .api import run_worker
            # Each API process has its own id-generator index (7, 6, ...); one sweeps retention.
            run_worker(settings.replace(api_index=7 - index,
                                        sweep_interval=settings.sweep_interval if index == 0 else 0),
                       ready=ready)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - last line of a forked child: log it once, exit non-zero
        logging.getLogger(f"kefu.{role}").exception("%s %s crashed", role, index)
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


class Supervisor:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.children: list[Child] = []
        self.signals: collections.deque = collections.deque()
        self.redis = None           # EmbeddedRedis when we started one
        self._lock_fd = -1
        self.exit_code = 0

    # -- lifecycle -------------------------------------------------------
    def run(self) -> int:
        data = self.settings.data_path
        data.mkdir(parents=True, exist_ok=True)
        self._lock(data)
        try:
            self._start_redis()
            from .bootstrap import prepare   # secrets, demo shop: before any fork
            banner = prepare(self.settings, shared=self.redis is None)   # external Redis: maybe other nodes
            self._install_signals()
            self.children = [Child("comet", i) for i in range(self.settings.comet_workers)]
            self.children += [Child("api", i) for i in range(self.settings.api_workers)]
            for child in self.children:
                self._spawn(child)
            if not self._await_ready(self.children, first_start=True):
                self._stop_children()
                return 1
            print(banner, flush=True)
            self._loop()
            return self.exit_code
        finally:
            self._stop_children()
            self._stop_redis()

    def _lock(self, data: Path) -> None:
        """One supervisor per data dir: a second one would fight over the embedded Redis."""
        self._lock_fd = os.open(data / "kefu.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another `kefu run` is using data dir {data}") from None
        os.ftruncate(self._lock_fd, 0)
        os.write(self._lock_fd, f"{os.getpid()}\n".encode())

    def _start_redis(self) -> None:
        if self.settings.redis_url:
            return
        from .redis_server import EmbeddedRedis
        self.redis = EmbeddedRedis(self.settings.data_dir, die_with_parent=True)
        url = self.redis.start()
        log.info("embedded redis-server started (%s)", url)
        self.settings = self.settings.replace(redis_url=url)

    def _stop_redis(self) -> None:
        if self.redis is not None:
            self.redis.stop()
            log.info("embedded redis-server stopped")
            self.redis = None

    # -- signals -------------------------------------------------------------
    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, _frame: self.signals.append(signum))

    def _loop(self) -> None:
        while True:
            while self.signals:
                sig = self.signals.popleft()
                if sig == signal.SIGHUP:
                    self._rolling_restart()
                else:
                    log.info("%s: stopping", signal.Signals(sig).name)
                    return
            self._reap()
            self._respawn_due()
            if self._hopeless():
                self.exit_code = 1
                return
            time.sleep(TICK)

    # -- children ------------------------------------------------------------
    def _spawn(self, child: Child) -> None:
        r, w = os.pipe()
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            _child_main(child.role, child.index, self.settings, w, parent)
        os.close(w)
        os.set_blocking(r, False)
        child.pid, child.ready_fd, child.ready, child.retiring = pid, r, False, False
        log.debug("started %s (pid %d)", child.name, pid)

    def _poll_ready(self, child: Child) -> bool:
        if not child.ready and child.ready_fd >= 0:
            try:
                child.ready = bool(os.read(child.ready_fd, 16))
            except BlockingIOError:
                pass
            except OSError:
                child.ready = False
            if child.ready:
                os.close(child.ready_fd)
                child.ready_fd = -1
        return child.ready

    def _await_ready(self, children: list[Child], first_start: bool = False) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.signals and first_start:
                return False
            pending = [c for c in children if not self._poll_ready(c)]
            if not pending:
                return True
            dead = self._reap()
            failed = [c for c in dead if c in children]
            if failed:
                if first_start:
                    log.error("%s failed to start (see the error above)", failed[0].name)
                    self.exit_code = 1
                return False
            time.sleep(TICK / 2)
        log.error("timed out waiting for %s to listen",
                  ", ".join(c.name for c in children if not c.ready))
        return False

    def _reap(self) -> list[Child]:
        """Collect exited children; schedule restarts for the ones that crashed."""
        crashed = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            child = next((c for c in self.children if c.pid == pid), None)
            if child is None:
                continue                                  # a retired predecessor
            child.pid = 0
            if child.ready_fd >= 0:
                os.close(child.ready_fd)
                child.ready_fd = -1
            if child.retiring:
                continue
            crashed.append(child)
            self._record_crash(child, status)
        return crashed

    def _record_crash(self, child: Child, status: int) -> None:
        now = time.monotonic()
        child.deaths.append(now)
        how = (f"signal {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status)
               else f"exit code {os.WEXITSTATUS(status)}")
        if len(child.deaths) >= CRASH_LIMIT and now - child.deaths[0] < CRASH_WINDOW:
            child.failed = True
            log.error("%s died %d times within %.0f s (last: %s); not restarting it",
                      child.name, CRASH_LIMIT, CRASH_WINDOW, how)
            return
        delay = min(0.5 * 2 ** (len(child.deaths) - 1), BACKOFF_MAX)
        child.restart_at = now + delay
        log.warning("%s (pid gone) died with %s; restarting in %.1f s", child.name, how, delay)

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if not child.pid and not child.failed and child.restart_at <= now:
                self._spawn(child)

    def _hopeless(self) -> bool:
        comets = [c for c in self.children if c.role == "comet"]
        api_failed = all(c.failed for c in self.children if c.role == "api")
        if api_failed or all(c.failed for c in comets):
            log.error("no %s left running; stopping", "API worker" if api_failed else "comet worker")
            return True
        return False

    def _rolling_restart(self) -> None:
        """Replace each comet worker by a fresh one, waiting for the new one to listen first."""
        log.info("SIGHUP: rolling restart of %d comet workers", sum(c.role == "comet" for c in self.children))
        for i, old in enumerate(list(self.children)):
            if old.role != "comet" or not old.pid:
                continue
            new = Child("comet", old.index)
            self.children.append(new)
            self._spawn(new)
            if not self._await_ready([new]):
                log.error("replacement for %s did not start; keeping the old one", old.name)
                self.children.remove(new)
                self._terminate(new)
                continue
            self._terminate(old)
            self.children.remove(old)
            self._wait_exit([old], self.settings.stop_timeout)
        log.info("rolling restart done")

    def _terminate(self, child: Child) -> None:
        child.retiring = True
        if child.pid:
            try:
                os.kill(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _wait_exit(self, children: list[Child], timeout: float) -> None:
        """Wait for these (retiring) children to exit; SIGKILL after the timeout."""
        pids = {c.pid for c in children if c.pid}
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            for pid in list(pids):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    pids.discard(pid)
            time.sleep(TICK / 2)
        for pid in pids:
            log.warning("pid %d did not stop within %.0f s; killing it", pid, timeout)
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        for c in children:
            c.pid = 0

    def _stop_children(self) -> None:
        live = [c for c in self.children if c.pid]
        for child in live:
            self._terminate(child)
        self._wait_exit(live, self.settings.stop_timeout)


def run(settings: Settings, args) -> int:
    return Supervisor(settings).run()


def add_parsers(sub) -> None:
    from .__main__ import add_server_flags
    p = sub.add_parser("run", help="run the whole system: Redis (embedded by default), comet workers, API")
    add_server_flags(p)
    p.set_defaults(func=run)
