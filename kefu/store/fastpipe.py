"""An auto-pipelined raw connection to one Redis, for the store's hot paths.

redis-py builds a Pipeline object, packs every command through several
layers, takes a pooled connection and parses each reply in Python: about
100 µs per pipeline here, more than the rest of a /open/push.  This is the
minimum instead: one asyncio connection, commands packed straight to RESP,
replies parsed by hiredis (in C), and every call made during one event-loop
tick written in ONE write.  Redis answers a connection's commands in order,
so replies are matched first-in first-out and several batches may be in
flight at once without reordering anything (the order commands are queued
is the order Redis runs them).

    pipe = RespPipe("unix:///path/redis.sock")        # or redis://, rediss://
    replies = await pipe.execute([(b"EVALSHA", sha, 1, key, arg), (b"EXISTS", k)])
    await pipe.close()

Replies keep redis-py's types (bytes, int, list, None) and an error reply
becomes the redis-py exception redis-py would raise (NoScriptError,
ResponseError...), returned in its slot, never raised, like
`pipeline.execute(raise_on_error=False)`.  A lost, refused or silent
connection fails every pending call with redis-py's ConnectionError or
TimeoutError (the store's OUTAGES); the next call reconnects.  Single Redis
only: a cluster keeps redis-py's cluster client.
"""
from __future__ import annotations

import asyncio
import collections
import ssl
import time
from typing import Any, Sequence

from redis._parsers.base import BaseParser
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .scripts import Script

try:
    from hiredis import ReplyError
    from hiredis import Reader as _Reader
except ImportError:             # pragma: no cover - redis[hiredis] is a dependency
    _Reader = None
    ReplyError = None
try:
    from hiredis import pack_command as _c_pack     # hiredis >= 2.1: the same bytes, in C
except ImportError:             # pragma: no cover
    _c_pack = None

AVAILABLE = _Reader is not None
CONNECT_TIMEOUT = 5.0
REPLY_TIMEOUT = 15.0            # the oldest unanswered command may wait this long, then the link is dropped



_parse_error = BaseParser.parse_error


def pack(args: Sequence[Any]) -> bytes:
    """One command in RESP (str as UTF-8, int/float as decimal, like redis-py)."""
    if _c_pack is not None:
        try:
            return _c_pack(args if type(args) is tuple else tuple(args))
        except TypeError:
            if any(isinstance(a, bool) for a in args):
                raise
    return _py_pack(args)


def _py_pack(args: Sequence[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if type(a) is not bytes:
            if isinstance(a, str):
                a = a.encode()
            elif isinstance(a, (bytes, bytearray, memoryview)):
                a = bytes(a)
            elif isinstance(a, bool):
                raise TypeError("bool is not a Redis argument")
            elif isinstance(a, int):
                a = b"%d" % a
            elif isinstance(a, float):
                a = repr(a).encode()
            else:
                raise TypeError(f"cannot send {type(a).__name__} to Redis")
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _convert(reply):
    """hiredis' ReplyError -> the redis-py exception (nested in arrays too)."""
    if type(reply) is list:
        for i, r in enumerate(reply):
            if isinstance(r, (ReplyError, list)):
                reply[i] = _convert(r)
        return reply
    if isinstance(reply, ReplyError):
        return _parse_error(str(reply))
    return reply


class _Link(asyncio.Protocol):
    def __init__(self, pipe: "RespPipe") -> None:
        self.pipe = pipe
        self.reader = _Reader()
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque = collections.deque()   # [future, wanted, replies, sent_at]
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        reader, waiting = self.reader, self.waiting
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except Exception as exc:  # noqa: BLE001 - a protocol error: this link is unusable
                self.fail(RedisConnectionError(f"bad data from redis: {exc}"))
                self.transport.abort()
                return
            if reply is False:
                return
            if not waiting:                     # nothing asked for it: the stream is out of step
                self.fail(RedisConnectionError("unexpected reply from redis"))
                self.transport.abort()
                return
            head = waiting[0]
            if isinstance(reply, (ReplyError, list)):
                reply = _convert(reply)
            replies = head[2]
            replies.append(reply)
            if len(replies) == head[1]:
                waiting.popleft()
                fut = head[0]
                if not fut.done():
                    fut.set_result(replies)

    def connection_lost(self, exc) -> None:
        self.fail(RedisConnectionError(f"redis connection lost: {exc}" if exc else "redis closed the connection"))

    def fail(self, exc: Exception) -> None:
        self.closed = True
        if self.pipe._link is self:
            self.pipe._link = None
        waiting, self.waiting = self.waiting, collections.deque()
        for fut, *_ in waiting:
            if not fut.done():
                fut.set_exception(exc)


class RespPipe:
    """One auto-pipelined connection to one Redis (see the module docstring)."""

    def __init__(self, url: str, *, name: str = "kefu-store", reply_timeout: float = REPLY_TIMEOUT) -> None:
        if not AVAILABLE:
            raise RuntimeError("hiredis is not installed")
        self.url = url
        self._opts = parse_url(url)
        self.name = name
        self.reply_timeout = reply_timeout
        self._link: _Link | None = None
        self._connecting: asyncio.Future | None = None
        self._out: list[bytes] = []
        self._out_waiting: list = []
        self._flush_handle: asyncio.Handle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self.writes = 0             # socket writes (for tests and figures)
        self.calls = 0

    # -- calls -------------------------------------------------------------
    async def execute(self, commands: Sequence[Sequence[Any]]) -> list:
        """Send the commands (queued behind every earlier call); -> their replies, in order."""
        if not commands:
            return []
        data = b"".join([pack(c) for c in commands])
        link = self._link
        if link is None or link.closed:
            link = await self._connected()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.calls += 1
        self._out.append(data)
        self._out_waiting.append([fut, len(commands), [], 0.0])
        if self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._flush_handle = None
        out, waiting = self._out, self._out_waiting
        self._out, self._out_waiting = [], []
        link = self._link
        if link is None or link.closed:
            err = RedisConnectionError("redis connection lost")
            for fut, *_ in waiting:
                if not fut.done():
                    fut.set_exception(err)
            return
        now = time.monotonic()
        for w in waiting:
            w[3] = now
        link.waiting.extend(waiting)
        link.transport.write(b"".join(out))
        self.writes += 1
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(self.reply_timeout / 3, self._watch)

    def _watch(self) -> None:
        """Drop a link whose oldest command waits too long (Redis hung, or a half-open socket)."""
        self._watchdog = None
        link = self._link
        if link is None or not link.waiting:
            return
        if time.monotonic() - link.waiting[0][3] > self.reply_timeout:
            link.fail(RedisTimeoutError("redis did not answer in time"))
            link.transport.abort()
            return
        self._watchdog = asyncio.get_running_loop().call_later(self.reply_timeout / 3, self._watch)

    # -- connection ------------------------------------------------------------
    async def _connected(self) -> _Link:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        fut = self._connecting
        try:
            return await asyncio.shield(fut)
        finally:
            if fut.done() and self._connecting is fut:
                self._connecting = None

    async def _connect(self) -> _Link:
        opts = self._opts
        loop = asyncio.get_running_loop()
        link = _Link(self)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                if "path" in opts:
                    await loop.create_unix_connection(lambda: link, opts["path"])
                else:
                    tls = ssl.create_default_context() if self.url.startswith("rediss://") else None
                    await loop.create_connection(lambda: link, opts.get("host", "localhost"),
                                                 opts.get("port", 6379), ssl=tls)
                hello = []
                if opts.get("password"):
                    user = opts.get("username")
                    hello.append((b"AUTH", *([user] if user else []), opts["password"]))
                if opts.get("db"):
                    hello.append((b"SELECT", int(opts["db"])))
                hello.append((b"CLIENT", b"SETNAME", self.name))
                fut = loop.create_future()
                link.waiting.append([fut, len(hello), [], time.monotonic()])
                link.transport.write(b"".join(pack(c) for c in hello))
                replies = await fut
        except (OSError, asyncio.TimeoutError, TimeoutError) as exc:
            if link.transport is not None:
                link.transport.abort()
            raise RedisConnectionError(f"cannot connect to redis: {exc or type(exc).__name__}") from exc
        for r in replies:
            if isinstance(r, Exception):
                link.transport.abort()
                raise RedisConnectionError(f"redis refused the connection: {r}")
        self._link = link
        return link

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush()
        link, self._link = self._link, None
        if link is not None and link.transport is not None:
            link.transport.close()
            link.fail(RedisConnectionError("store closed"))
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        self._connecting = None


async def run_commands(pipe: RespPipe, commands: Sequence, scripts: Sequence = ()) -> list:
    """Commands as the store queues them, in one round trip; results or exceptions, in order.

    A command is a (Script, keys, args) triple (sent as EVALSHA) or a tuple of
    raw arguments.  A NOSCRIPT answer means that script did not run (Redis
    restarted, or SCRIPT FLUSH): `scripts` are loaded again and only those
    commands are sent again, as kefu.store.base.run_pipeline does.
    """
    wire = [(b"EVALSHA", c[0].sha, len(c[1]), *c[1], *c[2]) if len(c) == 3 and type(c[0]) is Script
            else c for c in commands]
    results = await pipe.execute(wire)
    for res in results:
        if type(res) is NoScriptError:
            break
    else:
        return results
    todo = [i for i, res in enumerate(results) if type(res) is NoScriptError]
    if scripts:                          # load the scripts once, resend only what did not run
        loaded = await pipe.execute([(b"SCRIPT", b"LOAD", s.source) for s in scripts])
        for res in loaded:
            if isinstance(res, Exception):
                raise res
        out = await pipe.execute([wire[i] for i in todo])
        for i, res in zip(todo, out):
            results[i] = res
    return results
