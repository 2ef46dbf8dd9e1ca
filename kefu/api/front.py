"""The API port's connections: the message route on a lean path, the rest by aiohttp.

Why: at saturation aiohttp's request machinery (Request and Response
objects, routing, middleware, StreamWriter) was about half of the API
worker's CPU per `POST /open/push` (profile in BENCHMARKS.md), more than
the handler itself.  So every connection starts on `Front`, a plain
asyncio protocol.  A request it can serve exactly as aiohttp would is
answered here, through the same handler (`visitor.push`), error mapping
(`app.error_parts`) and metrics (`app.record`) as the aiohttp route:

    POST /open/push HTTP/1.1, Content-Length (no Transfer-Encoding, no
    Expect), Content-Type application/x-www-form-urlencoded (with no
    charset or UTF-8, as aiohttp then decodes the body), a query and
    body in plain form (no `%` or `+` in the query, UTF-8 body, no value
    over MAX_PARAM_LEN), and a non-empty `key` parameter: a key names the
    sender, so cookies and sessions (aiohttp's job) are never consulted.

Anything else, from its first byte on, and every later request of that
connection, goes to aiohttp: the connection's transport is handed to a
fresh aiohttp RequestHandler with the unparsed bytes, once the answers
already owed on it are written (answers keep request order).  This module
only decides whether a request is plain; aiohttp parses all the others,
so the two cannot disagree about where a request ends.

Connections are owned by a FrontDoor, which closes idle or stalled ones
after `settings.handshake_timeout` (as aiohttp's keep-alive timeout did)
and closes the rest on stop.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import socket
import time
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qsl

from ..errors import KefuError
from .app import JSON_CSP, error_body, error_parts, record
from .common import CTX, JSON_TYPE, MAX_PARAM_LEN

log = logging.getLogger("kefu.api")

ROUTE = "/open/push"
MAX_HEAD = 16 * 1024                 # a plain request's head; longer ones go to aiohttp
MAX_QUEUED = 32                      # pipelined requests parsed ahead of their answers
_TARGET = b"/open/push"
_FORMS = ("application/x-www-form-urlencoded",            # lower case, spaces removed
          "application/x-www-form-urlencoded;charset=utf-8")   # jQuery's default
_SINGLE = (b"content-length", b"content-type", b"host", b"connection")   # twice: not plain
_NOT_PLAIN = (b"transfer-encoding", b"expect", b"upgrade")
_QUERY_BAD = (b"%", b"+", b"#")


class _Headers(dict):
    """Request headers by lower-case name (first value), with aiohttp's `get` spelling."""

    def get(self, name: str, default=None):
        return dict.get(self, name.lower(), default)


class LeanRequest:
    """What the shared handler, error mapping and metrics read of a request."""

    __slots__ = ("app", "headers", "remote", "method", "path")

    def __init__(self, app, headers: _Headers, remote: str | None) -> None:
        self.app, self.headers, self.remote = app, headers, remote
        self.method, self.path = "POST", ROUTE


class FrontDoor:
    """The API worker's listening side: makes Front protocols and keeps them in check."""

    def __init__(self, app, fallback, settings, handler) -> None:
        self.app = app
        self.ctx = app[CTX]
        self.fallback = fallback                 # aiohttp web.Server: makes RequestHandlers
        self.handler = handler                   # async (request, params) -> JSON bytes
        self.timeout = settings.handshake_timeout
        self.body_max = settings.body_max_bytes
        self.conns: set[Front] = set()
        self.stats = collections.Counter()
        self._date = (0, b"")
        self._static = (f"Content-Type: {JSON_TYPE}\r\n"
                        "X-Content-Type-Options: nosniff\r\nReferrer-Policy: same-origin\r\n"
                        f"Content-Security-Policy: {JSON_CSP}\r\nCache-Control: no-store\r\n"
                        "Server: kefu\r\n").encode()
        self._sweeper: asyncio.Task | None = None

    def protocol(self) -> "Front":
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="kefu-api-front-sweep")
        return Front(self)

    def date(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return self._date[1]

    async def answer(self, conn: "Front", p: dict[str, str], headers: _Headers, close: bool) -> bytes:
        """One whole HTTP answer: the handler's JSON, or the error aiohttp's edge would give."""
        ctx = self.ctx
        req = LeanRequest(self.app, headers, conn.remote)
        t0 = time.perf_counter()
        kind = None
        extra = b""
        ctx.inflight += 1
        try:
            body = await self.handler(req, p)
            status = 200
        except KefuError as exc:
            kind = type(exc).__name__
            status, message, more = error_parts(exc)
            body = error_body(req, status, message)
            if more:
                extra = b"".join(b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in more.items())
        except Exception:  # noqa: BLE001 - the edge: log once, answer 500
            kind = "internal"
            log.exception("POST %s failed", ROUTE)
            status, body = 500, error_body(req, 500, "internal error")
        finally:
            ctx.inflight -= 1
        record(req, ctx, status, kind, time.perf_counter() - t0, route=ROUTE)
        self.stats["answered"] += 1
        return b"".join((
            b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode()),
            b"Content-Length: %d\r\n" % len(body), self._static, extra,
            b"Date: ", self.date(), b"\r\n",
            b"Connection: close\r\n\r\n" if close or ctx.stopping else b"\r\n",
            body))

    async def _sweep(self) -> None:
        """Close connections idle (or stalled mid-request) for longer than the timeout."""
        while True:
            await asyncio.sleep(min(1.0, self.timeout / 2))
            limit = time.monotonic() - self.timeout
            for conn in [c for c in self.conns if c.task is None and c.last < limit]:
                conn.transport.close()

    def close_all(self) -> None:
        for conn in list(self.conns):
            if conn.task is None:
                conn.transport.close()
            else:
                conn.closing = True            # after the answers owed

    async def stop(self) -> None:
        self.close_all()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)


class Front(asyncio.Protocol):
    """One connection until it hands itself to aiohttp (module docstring)."""

    __slots__ = ("door", "transport", "remote", "buf", "last", "queue", "task", "closing",
                 "handing", "eof", "full")

    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        self.transport = None
        self.remote: str | None = None
        self.buf = bytearray()
        self.last = time.monotonic()
        self.queue: collections.deque = collections.deque()
        self.task: asyncio.Task | None = None
        self.closing = False                    # close once the answers owed are written
        self.handing = False                    # hand to aiohttp once the answers owed are written
        self.eof = False
        self.full = False                       # MAX_QUEUED parsed ahead: reading paused

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.door.conns.add(self)

    def connection_lost(self, exc) -> None:
        self.door.conns.discard(self)
        self.queue.clear()

    def eof_received(self):
        self.eof = True
        if self.task is None and not self.handing:
            return None                          # nothing owed: let the transport close
        return True                              # keep it open for the answers owed

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.last = time.monotonic()
        if self.handing or self.closing or self.full:
            if len(self.buf) > MAX_HEAD:
                self.transport.pause_reading()   # bounded while the answers owed are written
            return
        self._parse()

    # -- requests ---------------------------------------------------------
    def _parse(self) -> None:
        buf = self.buf
        while buf:
            end = buf.find(b"\r\n\r\n", 0, MAX_HEAD)
            if end < 0:
                if len(buf) >= MAX_HEAD:
                    self._hand_off()
                return
            head = self._plain(bytes(buf[:end]))
            if head is None:
                self._hand_off()
                return
            query, headers, length, close = head
            start = end + 4
            if len(buf) < start + length:
                return                           # the body is still coming
            p = self._params(query, bytes(buf[start:start + length]))
            if p is None:
                self._hand_off()
                return
            del buf[:start + length]
            self.queue.append((p, headers, close))
            if self.task is None:
                self.task = asyncio.get_running_loop().create_task(self._serve())
            if close:
                self.closing = True
                return
            if len(self.queue) >= MAX_QUEUED:    # a client pipelining far ahead waits for its answers
                self.full = True
                self.transport.pause_reading()
                return

    def _plain(self, head: bytes):
        """(query, headers, content length, close) of a plain /open/push head, else None."""
        n = head.count(b"\r\n")
        if head.count(b"\n") != n or head.count(b"\r") != n or b"\0" in head:
            return None                          # bare CR or LF: let aiohttp judge it
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
            return None
        target = parts[1]
        path, _, query = target.partition(b"?")
        if path != _TARGET or any(c in query for c in _QUERY_BAD):
            return None
        headers = _Headers()
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name[-1:] in (b" ", b"\t") or line[:1] in (b" ", b"\t"):
                return None
            name = name.lower()
            if name in _NOT_PLAIN or (name in _SINGLE and name.decode("latin-1") in headers):
                return None
            headers.setdefault(name.decode("latin-1"), value.strip(b" \t").decode("latin-1"))
        raw_length = headers.get("content-length", "")
        if not raw_length.isdigit() or not raw_length.isascii() or len(raw_length) > 12:
            return None
        length = int(raw_length)
        if length > self.door.body_max or \
                headers.get("content-type", "").lower().replace(" ", "") not in _FORMS:
            return None
        close = headers.get("connection", "").lower() == "close"
        return query, headers, length, close

    @staticmethod
    def _params(query: bytes, body: bytes) -> dict[str, str] | None:
        """The route's parameters as common.params reads them, or None: not plain, or no key."""
        try:
            out: dict[str, str] = {}
            for k, v in parse_qsl(query.decode("ascii"), keep_blank_values=True):
                out.setdefault(k, v)
            form: dict[str, str] = {}
            for k, v in parse_qsl(body.rstrip().decode("utf-8"), keep_blank_values=True):
                form.setdefault(k, v)
        except (UnicodeDecodeError, ValueError):
            return None
        out.update(form)
        if not out.get("key") or any(len(v) > MAX_PARAM_LEN for v in out.values()):
            return None
        return out

    async def _serve(self) -> None:
        door, transport = self.door, self.transport
        try:
            while self.queue:
                p, headers, close = self.queue.popleft()
                answer = await door.answer(self, p, headers, close)
                if transport.is_closing():
                    return
                transport.write(answer)
                self.last = time.monotonic()
                if close or door.ctx.stopping:
                    self.closing = True
                    self.queue.clear()
                elif self.full and len(self.queue) <= MAX_QUEUED // 2:
                    self.full = False
                    transport.resume_reading()
                    self._parse()                # what was read ahead meanwhile
        finally:
            self.task = None
            if self.closing or (self.eof and not self.handing):
                transport.close()
            elif self.handing:
                self._hand_off()

    def _hand_off(self) -> None:
        """From the first unparsed byte on, this connection is aiohttp's."""
        self.handing = True
        if self.task is not None:
            self.transport.pause_reading()
            return                               # _serve calls again once the answers are out
        transport = self.transport
        self.door.conns.discard(self)
        self.door.stats["handed_off"] += 1
        proto = self.door.fallback()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        data, self.buf = bytes(self.buf), bytearray()
        if data:
            proto.data_received(data)
        if self.eof:
            proto.eof_received()
        else:
            transport.resume_reading()
