"""Fixtures for the API worker tests: a real server on a loopback port, real Redis.

    api_factory   async factory: `await api_factory(**setting_overrides)` -> Api
    api           an Api with default settings (shops 8000 and 9000 exist)

An Api serves make_app() through the same socket code as the worker
(SO_REUSEPORT listener, kefu.api.front before aiohttp) and offers small helpers:
fresh client sessions (each its own cookie jar), a visitor entry, an
agent login, goim's bearer header.  Import with
`from tests.api_fixtures import *  # noqa: F403` in test modules.
"""
from __future__ import annotations

import contextlib
import itertools

import aiohttp
import pytest_asyncio
from aiohttp import web

from kefu.api.app import make_app
from kefu.api.worker import listen_socket, open_door, runner_options
from kefu.store import Store
from kefu.tokens import Signer, load_secret

PASSWORD = {"8000": "pw-8000-secret", "9000": "pw-9000-secret"}
_ips = itertools.count(1)

__all__ = ["Api", "api", "api_factory", "PASSWORD", "png_bytes"]


def png_bytes(extra: int = 0) -> bytes:
    """A real 1x1 PNG, optionally padded with a trailing chunk of `extra` bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0))
    body += chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00\xff"))
    if extra:
        body += chunk(b"tEXt", b"c\x00" + b"x" * extra)
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


class Api:
    def __init__(self, settings, store, app, base: str):
        self.settings, self.store, self.app, self.base = settings, store, app, base
        self.signer = Signer(load_secret(settings, "secret"))
        self.push_secret = load_secret(settings, "push_secret").decode()
        self._sessions: list[aiohttp.ClientSession] = []

    def url(self, path: str) -> str:
        return self.base + path

    def session(self, **kw) -> aiohttp.ClientSession:
        """A client with its own cookie jar; closed with the fixture."""
        s = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), **kw)
        self._sessions.append(s)
        return s

    def forwarded(self) -> dict:
        """Headers that make requests come from a fresh client IP (trust_proxy must be on)."""
        return {"X-Forwarded-For": f"10.0.{next(_ips) % 250}.{next(_ips) % 250}"}

    @property
    def goim(self) -> dict:
        return {"Authorization": f"Bearer {self.push_secret}"}

    async def visitor(self, shop: str = "8000", session=None, **params) -> tuple[dict, aiohttp.ClientSession]:
        """Enter as a visitor (format=json); -> (page params, the session holding its cookies)."""
        s = session or self.session()
        async with s.get(self.url("/open/im"), params={"shop_id": shop, "format": "json", **params}) as r:
            assert r.status == 200, await r.text()
            return await r.json(), s

    async def agent(self, shop: str = "8000") -> aiohttp.ClientSession:
        s = self.session()
        async with s.post(self.url("/open/login"), data={"shop_id": shop, "password": PASSWORD[shop]}) as r:
            assert r.status == 200, await r.text()
        return s

    async def push(self, page: dict, msg: str = "hello", session=None, **extra):
        """POST /open/push as the visitor of `page`; -> (status, json, headers)."""
        s = session or self.session()
        data = {"type": "text", "msg": msg, "room_id": page["room_id"], "key": page["key"], **extra}
        data = {k: v for k, v in data.items() if v is not None}
        async with s.post(self.url("/open/push"), params={"mid": page["mid"], "shop_id": page["shop_id"]},
                          data=data) as r:
            return r.status, await r.json(), r.headers

    async def close(self) -> None:
        for s in self._sessions:
            await s.close()


@contextlib.asynccontextmanager
async def running(settings, store):
    sock = listen_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    settings = settings.replace(api_port=port)      # api_url = where this server really is
    app = make_app(settings, store)
    runner = web.AppRunner(app, **runner_options(settings))
    await runner.setup()
    door, server = await open_door(settings, app, runner, sock)
    api = Api(settings, store, app, f"http://127.0.0.1:{port}")
    api.door = door
    try:
        yield api
    finally:
        await api.close()
        server.close()
        await door.stop()
        await runner.cleanup()
        sock.close()


@pytest_asyncio.fixture
async def api_factory(settings):
    """Build Apis on one flushed Redis; each may override settings."""
    stack = contextlib.AsyncExitStack()
    stores = []

    async def make(**overrides) -> Api:
        s = settings.replace(**overrides)
        store = await Store.connect(s, worker=s.api_index)
        stores.append(store)
        if len(stores) == 1:
            await store.redis.flushall()
            for shop, pw in PASSWORD.items():
                await store.create_shop(shop, name=f"Shop {shop}", password=pw)
        return await stack.enter_async_context(running(s, store))

    yield make
    await stack.aclose()
    for store in stores:
        await store.close()


@pytest_asyncio.fixture
async def api(api_factory):
    return await api_factory()
