"""The comet worker: WebSocket /sub and goim TCP push, per-room routing.

    transports.py  goim TCP protocol, and the op-9 batching both transports share
    ws_lean.py     WebSocket /sub (and /health) on a bare asyncio protocol
                   both feed kefu.session.Session, so behaviour cannot drift
    worker.py      Worker: sockets (SO_REUSEPORT), store, bus, hub, chores

`run_worker(settings, index)` is the blocking entry point the supervisor
calls in a forked child; `python -m kefu comet` runs one worker alone.
Read top-down, a live message goes Redis -> kefu.bus -> kefu.hub -> the
transports here, and a client frame transports -> kefu.session -> kefu.store.
"""
from __future__ import annotations

import asyncio
import logging
import resource
import signal
from typing import Callable

from ..config import Settings
from .worker import Worker, bind_socket, server_id

__all__ = ["Worker", "add_parsers", "bind_socket", "run_worker", "server_id"]

log = logging.getLogger("kefu.comet")


def raise_fd_limit() -> int:
    """Lift RLIMIT_NOFILE to its hard limit (10,000+ sockets); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def run_worker(settings: Settings, index: int = 0, *, ready: Callable[[], None] | None = None) -> None:
    """Run one comet worker until SIGTERM/SIGINT; returns once it stopped cleanly."""
    fds = raise_fd_limit()
    if fds < settings.max_connections + 64:
        log.warning("file descriptor limit %d is below max_connections %d", fds, settings.max_connections)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(settings, index, ready))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()


async def _serve(settings: Settings, index: int, ready) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    worker = Worker(settings, index)
    await worker.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("comet worker %d (%s) listening: ws://%s:%d/sub, goim tcp %s:%d, codec %s",
             index, worker.server_id, settings.host, worker.ws_port, settings.host, worker.tcp_port,
             worker.metrics()["codec"])
    if ready is not None:
        ready()
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await worker.shutdown("shutdown")


def _run(settings: Settings, args) -> int:
    """`kefu comet`: one worker; joins (or starts) the embedded Redis when no --redis-url."""
    embedded = None
    if not settings.redis_url:
        from ..redis_server import EmbeddedRedis
        embedded = EmbeddedRedis(settings.data_dir)
        settings = settings.replace(redis_url=embedded.start())
    try:
        run_worker(settings, args.index)
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def add_parsers(sub) -> None:
    from ..__main__ import add_server_flags
    p = sub.add_parser("comet", help="run one comet worker (WebSocket /sub and goim TCP)")
    add_server_flags(p)
    p.add_argument("--index", type=int, default=0,
                   help="this worker's number on the node (ids, online marks; default 0)")
    p.set_defaults(func=_run)
