"""The API worker process: bind, serve, stop cleanly.

`run_worker` is what `kefu api` and the supervisor's forked child call.
It owns its event loop.  The listening socket is created here with
SO_REUSEADDR and SO_REUSEPORT (a restarted worker can bind while the old
one drains, and several API workers may share the port) and served by
kefu.api.front, which answers the message route itself and hands every
other connection to aiohttp.  SIGTERM/SIGINT only set an event; the loop then
stops accepting, gives in-flight requests `settings.stop_timeout` seconds
to finish, closes the store and returns.  The drain is ours, not only
aiohttp's: aiohttp stops reading from every connection as soon as its
shutdown begins, so a request whose body is still arriving would be cut;
we first stop listening, wait for the handlers in flight (counted by the
edge middleware), and only then let aiohttp close the connections.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import socket

from aiohttp import web

from ..config import Settings
from ..errors import ConfigError

log = logging.getLogger("kefu.api")


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket with SO_REUSEADDR and SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"api: cannot bind {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


MAX_REQUEST_LINE = 64 * 1024      # goim's push/keys lists signed keys in the query string


def runner_options(settings: Settings) -> dict:
    """AppRunner keywords of the API worker (the tests serve with the same)."""
    return {
        "handle_signals": False, "access_log": None,
        # also bounds a connection that never sends a request (aiohttp arms it
        # at connect), so silent sockets cannot pile up
        "keepalive_timeout": settings.handshake_timeout,
        "max_line_size": MAX_REQUEST_LINE,
        # the whole stop fits in stop_timeout (the supervisor's SIGKILL deadline):
        # 75% for our drain, then aiohttp's own close of what is left
        "shutdown_timeout": max(0.5, settings.stop_timeout * 0.15),
    }


def _signal_ready(ready) -> None:
    if ready is None:
        return
    if hasattr(ready, "set"):
        ready.set()
    else:
        ready()


async def serve(settings: Settings, *, ready=None, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT when no event is given)."""
    from ..ids import worker_for
    from ..store import Store
    from .app import make_app
    worker_for(settings.node_id, settings.api_index)        # validates the index early
    sock = listen_socket(settings.host, settings.api_port)
    try:
        store = await Store.connect(settings, worker=settings.api_index)
    except BaseException:
        sock.close()
        raise
    runner = None
    try:
        app = make_app(settings, store)
        runner = web.AppRunner(app, **runner_options(settings))
        await runner.setup()
        door, server = await open_door(settings, app, runner, sock)
        host, port = sock.getsockname()[:2]
        log.info("api worker listening on http://%s:%d (id worker %d)", host, port,
                 worker_for(settings.node_id, settings.api_index))
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
        _signal_ready(ready)
        await stop.wait()
        budget = settings.stop_timeout * 0.75
        log.info("api worker stopping: finishing in-flight requests (up to %.1f s)", budget)
        server.close()                            # no new connections from here on
        await drain(app, budget)
        await door.stop()
    finally:
        if runner is not None:
            await runner.cleanup()
        sock.close()
        await store.close()


async def open_door(settings: Settings, app: web.Application, runner: web.AppRunner,
                    sock: socket.socket) -> tuple:
    """Listen on `sock` with kefu.api.front in front of the runner's aiohttp server."""
    from .front import FrontDoor
    from .visitor import push
    door = FrontDoor(app, runner.server, settings, push)
    server = await asyncio.get_running_loop().create_server(door.protocol, sock=sock, backlog=1024)
    return door, server


async def drain(app: web.Application, timeout: float) -> None:
    """Wait until no request is inside a handler, at most `timeout` seconds."""
    from .common import CTX
    ctx = app[CTX]
    ctx.stopping = True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while ctx.inflight > 0 and loop.time() < deadline:
        await asyncio.sleep(0.02)
    if ctx.inflight:
        log.warning("api worker stopping with %d request(s) still in flight", ctx.inflight)


def run_worker(settings: Settings, *, ready=None) -> None:
    """Blocking: run one API worker in a fresh event loop until SIGTERM/SIGINT."""
    asyncio.run(serve(settings, ready=ready))
