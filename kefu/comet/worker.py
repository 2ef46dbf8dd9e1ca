"""One comet worker: listeners, the shared session context, periodic chores.

    Worker.start()     Store, Bus (one pub/sub connection), Hub, Context;
                       /sub on settings.comet_port and goim TCP on
                       settings.tcp_port, each a SO_REUSEPORT socket bound
                       here, so every worker of a node binds the same ports
                       and the kernel spreads connections over them
    chores             sweep (timeouts) once a second; online marks and this
                       worker's figures flushed in one pipeline per
                       settings.online_flush_interval, which also brings back
                       the room online counts heartbeats answer with
    Worker.shutdown()  op 6 + close (1001) to every connection, marks removed,
                       Redis closed
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter

from .. import tlv
from ..errors import ConfigError, StoreUnavailable
from ..ids import node_owner
from ..keys import Keys
from ..protocol import CLOSE_GOING_AWAY
from ..session import Context, sweep
from .transports import TcpConnection
from .ws_lean import WsServer

log = logging.getLogger("kefu.comet")

BUS_CONNECT_TIMEOUT = 10.0
SHUTDOWN_GRACE = 5.0          # seconds the WebSocket close handshakes may take at stop
BACKLOG = 4096


def bind_socket(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A listening TCP socket with SO_REUSEADDR + SO_REUSEPORT (shared by the workers)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"comet: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"comet: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def make_bus(url: str, hub, name: str):
    """The worker's pub/sub: one connection (kefu.bus), or per shard on a Redis Cluster."""
    from ..store.base import is_cluster_url
    if is_cluster_url(url):
        from ..cluster_bus import ClusterBus
        return ClusterBus(url, hub.deliver, hub.flush, hub.recovered, sharded=hub.keys.is_room_channel,
                          name=name)
    from ..bus import Bus
    return Bus(url, hub.deliver, hub.flush, hub.recovered, name=name)


def server_id(settings, index: int) -> str:
    return f"{settings.node_id}:{index}:{os.getpid()}"


class Worker:
    """A comet worker inside a running event loop (run_worker owns the loop)."""

    def __init__(self, settings, index: int = 0) -> None:
        self.settings = settings
        self.index = index
        self.server_id = server_id(settings, index)
        self.owner = node_owner(settings.data_path)
        self.stats: Counter = Counter()
        self.started = time.time()
        self.ctx: Context | None = None
        self.store = self.bus = self.hub = self.marks = None
        self._ws: WsServer | None = None            # /sub: kefu.comet.ws_lean, no aiohttp
        self._ws_server: asyncio.AbstractServer | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self._chores: list[asyncio.Task] = []
        self._marks_failing = False
        self.ws_port = self.tcp_port = 0

    async def start(self) -> None:
        from ..hub import Hub
        from ..store import Store
        from ..tokens import Signer, load_secret
        st = self.settings
        signer = Signer(load_secret(st, "secret"))
        self.store = await Store.connect(st, worker=self.index)
        try:
            self.hub = Hub(Keys(st.prefix), self.stats, self.store)
            self.bus = make_bus(st.redis_url, self.hub, f"kefu-comet-{self.server_id.replace(':', '-')}")
            self.hub.start(self.bus)
            await self.bus.start(wait=BUS_CONNECT_TIMEOUT)
            self.marks = self.store.marks(self.server_id)
            self.ctx = Context(st, signer=signer, store=self.store, hub=self.hub, bus=self.bus,
                               marks=self.marks, server_id=self.server_id, stats=self.stats)
            await self._listen()
        except BaseException:
            await self._close_backends()
            raise
        self._chores = [asyncio.create_task(self._sweeper(), name="kefu-sweep"),
                        asyncio.create_task(self._flusher(), name="kefu-marks")]

    async def _listen(self) -> None:
        st, ctx = self.settings, self.ctx
        ws_sock = bind_socket(st.host, st.comet_port)
        try:
            tcp_sock = bind_socket(st.host, st.tcp_port)
        except BaseException:
            ws_sock.close()
            raise
        self.ws_port, self.tcp_port = ws_sock.getsockname()[1], tcp_sock.getsockname()[1]
        loop = asyncio.get_running_loop()
        # GET /sub (WebSocket) and GET /health on a bare asyncio protocol (kefu.comet.ws_lean);
        # a connection that never sends its request is dropped after handshake_timeout
        self._ws = WsServer(ctx, self.metrics)
        self._ws_server = await loop.create_server(self._ws, sock=ws_sock, backlog=BACKLOG)
        self._tcp = await loop.create_server(lambda: TcpConnection(ctx), sock=tcp_sock, backlog=BACKLOG)

    # -- chores --------------------------------------------------------------
    async def _sweeper(self) -> None:
        st = self.settings
        every = max(0.05, min(1.0, st.handshake_timeout / 4, st.heartbeat_timeout / 4))
        while True:
            await asyncio.sleep(every)
            try:
                sweep(self.ctx)
            except Exception:
                log.exception("sweep failed")

    async def _flusher(self) -> None:
        while True:
            await self.flush_marks()
            await asyncio.sleep(self.settings.online_flush_interval)

    async def flush_marks(self) -> None:
        """Online marks + figures in one pipeline; keeps the room counts it returns."""
        try:
            self.ctx.counts = await self.marks.flush(self.metrics())
        except StoreUnavailable as exc:
            if not self._marks_failing:
                log.warning("online marks not flushed: %s (retrying every %.0fs)",
                            exc, self.settings.online_flush_interval)
            self._marks_failing = True
            return
        except Exception:
            log.exception("online marks flush failed")
            return
        if self._marks_failing:
            log.info("online marks flushed again")
        self._marks_failing = False

    def metrics(self) -> dict:
        """This worker's figures: gauges, then `*_total` counters (summed by the API's /metrics)."""
        ctx, hub, bus = self.ctx, self.hub, self.bus
        figures = {
            "server": self.server_id,
            "node_owner": self.owner,
            "codec": tlv.IMPLEMENTATION,
            "uptime_seconds": round(time.time() - self.started, 1),
            "connections": len(ctx.sessions) if ctx else 0,
            "authenticated": len(hub.members) if hub else 0,
            "channels": len(hub.channels) if hub else 0,
            "redis_connected": int(bool(bus and bus.connected)),
        }
        if bus is not None:
            figures["bus_messages_total"] = bus.stats["messages"]
            figures["bus_bad_messages_total"] = bus.stats["bad_messages"]
            figures["bus_reconnects_total"] = bus.stats["reconnects"]
        figures.update(sorted(self.stats.items()))
        return figures

    # -- stop ------------------------------------------------------------------
    async def shutdown(self, reason: str = "shutdown") -> None:
        """op 6 + close to every connection, then marks removed and Redis closed."""
        ctx = self.ctx
        if ctx is None or ctx.stopping:
            return
        ctx.stopping = True
        if self._tcp is not None:
            self._tcp.close()
        if self._ws_server is not None:
            self._ws_server.close()      # new clients go to the other workers (SO_REUSEPORT)
        for s in list(ctx.sessions):
            s.kick(CLOSE_GOING_AWAY, reason)
        if ctx.tasks:
            await asyncio.wait(list(ctx.tasks), timeout=SHUTDOWN_GRACE)
        for task in self._chores:
            task.cancel()
        await asyncio.gather(*self._chores, return_exceptions=True)
        if self._ws is not None:
            await self._ws.drain(SHUTDOWN_GRACE)        # close handshakes in progress
        if self._tcp is not None:
            await self._tcp.wait_closed()
        try:
            await self.marks.clear()
        except StoreUnavailable as exc:
            log.warning("online marks not removed at stop (they expire by themselves): %s", exc)
        await self._close_backends()
        log.info("comet worker %d stopped (%s)", self.index, reason)

    async def _close_backends(self) -> None:
        if self.hub is not None:
            await self.hub.close()
        if self.bus is not None:
            await self.bus.close()
        if self.store is not None:
            await self.store.close()
