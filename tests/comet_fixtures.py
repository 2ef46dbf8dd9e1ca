"""Fixtures for the comet tests: real workers, real sockets, real Redis.

    comet_factory     async factory: `await comet_factory(**setting_overrides)` -> Comet,
                      a Worker running in the test's event loop on ephemeral ports
    comet             a Comet with default settings
    transport         "ws", "tcp" or "ws-lean" (tests taking it run once per client kind)
    restartable_redis a private redis-server (append-only, fsync always) that a
                      test may stop and start again on the same port

Import with `from tests.comet_fixtures import *  # noqa: F403`.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time

import pytest
import pytest_asyncio
import redis

from kefu.client import connect
from kefu.comet import Worker
from kefu.store import Store
from kefu.tokens import Signer, load_secret

__all__ = ["Comet", "RedisProcess", "comet", "comet_factory", "free_port",
           "restartable_redis", "transport", "wait_for"]

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for(predicate, timeout: float = 10.0, every: float = 0.02, what: str = "condition"):
    """Poll `predicate()` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(every)


class Comet:
    """One in-process worker plus what a test needs around it."""

    def __init__(self, worker: Worker, store: Store, signer: Signer) -> None:
        self.worker, self.store, self.signer = worker, store, signer
        self.settings = worker.settings
        self.clients: list = []

    def url(self, transport: str) -> str:
        if transport.startswith("ws"):
            return f"ws://127.0.0.1:{self.worker.ws_port}/sub"
        return f"tcp://127.0.0.1:{self.worker.tcp_port}"

    def key(self, mid: str, room: str, *, role: str = "visitor", shop: str | None = None,
            ttl: int = 600) -> str:
        return self.signer.mint_key(mid, room, shop=shop, role=role, ttl=ttl)

    async def connect(self, transport: str):
        c = await connect(self.url(transport), lean=transport == "ws-lean")
        self.clients.append(c)
        return c

    async def client(self, transport: str, mid: str = "v1", room: str = "8000_v1", *,
                     role: str = "visitor", shop: str | None = "8000", **auth):
        """A connected, authenticated client (mid and room sent as the kefu page does)."""
        c = await self.connect(transport)
        auth.setdefault("mid", mid)
        auth.setdefault("room_id", room)
        await c.auth(self.key(mid, room, role=role, shop=shop), **auth)
        return c

    async def post(self, room: str = "8000_v1", msg: str = "hello", mid: str = "v1") -> int:
        return (await self.store.post(room=room, mid=mid, shop=None, type="text", msg=msg)).id

    @property
    def stats(self):
        return self.worker.stats

    async def close(self) -> None:
        for c in self.clients:
            try:
                await asyncio.wait_for(c.close(), 5)
            except Exception:
                pass
        await self.worker.shutdown("test over")
        await self.store.close()


@pytest.fixture(params=["ws", "tcp", "ws-lean"])
def transport(request) -> str:
    """aiohttp's WebSocket client, raw TCP, and kefu.client's own lean WebSocket."""
    return request.param


@pytest_asyncio.fixture
async def comet_factory(settings):
    """Start workers in this event loop; each may override settings."""
    made: list[Comet] = []
    flushed = False

    async def make(**overrides) -> Comet:
        nonlocal flushed
        overrides.setdefault("comet_port", 0)
        overrides.setdefault("tcp_port", 0)
        s = settings.replace(**overrides)
        store = await Store.connect(s, worker=7)
        if not flushed:
            await store.redis.flushall()
            flushed = True
        worker = Worker(s, index=len(made))
        await worker.start()
        c = Comet(worker, store, Signer(load_secret(s, "secret")))
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


@pytest_asyncio.fixture
async def comet(comet_factory) -> Comet:
    return await comet_factory()


class RedisProcess:
    """A redis-server that can be stopped and started again on the same port."""

    def __init__(self, workdir, port: int, password: str = "") -> None:
        self.workdir, self.port, self.password = str(workdir), port, password
        self.url = f"redis://{':' + password + '@' if password else ''}127.0.0.1:{port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", self.workdir,
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"redis-server did not start on port {self.port}")
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()           # SIGTERM: the AOF is flushed, then it exits
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def restartable_redis(tmp_path):
    r = RedisProcess(tmp_path / "redis-r", free_port())
    os.makedirs(r.workdir)
    r.start()
    yield r
    r.stop()
