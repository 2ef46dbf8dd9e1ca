"""A small asyncio client of the comet: tests, benchmarks, the load harness.

    c = await connect("ws://127.0.0.1:3102/sub")     # or "tcp://127.0.0.1:3101"; lean=True: no aiohttp
    reply = await c.auth(key)                        # op 7 -> op 8 JSON
    online = await c.heartbeat()                     # op 2 -> op 3 count
    msgs = await c.sync(after=last_id)               # op 14 -> op 15 JSON list
    offset = await c.ack(msg_id)                     # op 16 -> op 17
    frame = await c.recv()                           # next live Frame (op 5, pushes, op 6)
    await c.close()

Requests are matched by sequence number.  A sync's end is found without
any extension of the protocol: the client sends a heartbeat right behind
the op 14, and the server handles a connection's frames in order, so its
op 3 arrives after the last op 15.  op-9 batches are unpacked into their
frames.  `closed` resolves with (WebSocket close code or None for TCP,
reason of the op 6 if one came).
"""
from __future__ import annotations

import asyncio
import base64
import itertools
import os
from typing import NamedTuple
from urllib.parse import urlsplit

import orjson

from . import tlv
from .protocol import Op

__all__ = ["Client", "Closed", "Frame", "LeanWsClient", "TcpClient", "WsClient", "connect", "unpack_batch"]


class Frame(NamedTuple):
    op: int
    seq: int
    body: bytes

    def json(self):
        return orjson.loads(self.body)


class Closed(Exception):
    """The server closed the connection (code: WebSocket close code, None on TCP)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed ({code}): {reason}")
        self.code, self.reason = code, reason


def unpack_batch(body: bytes, max_size: int = 1 << 30) -> list[tuple[int, int, bytes]]:
    """The frames inside an op-9 body."""
    return tlv.StreamDecoder(max_size).feed(body)


class Client:
    """Transport-independent part; see connect()."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self.closed: asyncio.Future = loop.create_future()
        self.reason = ""                 # body of the last op 6
        self.wire_frames = 0             # top-level frames received (an op-9 batch counts once)
        self.on_live = None              # callable(Frame): live frames go there instead of `frames`
        self._seq = itertools.count(1)
        self._waiting: dict[int, tuple[asyncio.Future, list | None]] = {}

    # -- to implement per transport --
    def send_frame(self, op: int, seq: int, body: bytes = b"") -> None:
        raise NotImplementedError

    def send_raw(self, data: bytes) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    # -- inbound --
    def _on_frame(self, op: int, seq: int, body: bytes) -> None:
        if op == Op.RAW:
            for inner in unpack_batch(body):
                self._on_frame(*inner)
            return
        if op == Op.DISCONNECT:
            self.reason = body.decode(errors="replace")
        waiting = self._waiting.get(seq) if seq else None
        if waiting is not None:
            fut, collect = waiting
            if op == Op.SYNC_REPLY and collect is not None:
                collect.append(body)
                return
            if op in (Op.AUTH_REPLY, Op.HEARTBEAT_REPLY, Op.ACK_REPLY):
                del self._waiting[seq]
                if not fut.done():
                    fut.set_result(body)
                return
        if self.on_live is not None:
            self.on_live(Frame(op, seq, body))
        else:
            self.frames.put_nowait(Frame(op, seq, body))

    def _on_close(self, code: int | None) -> None:
        if not self.closed.done():
            self.closed.set_result((code, self.reason))
        for fut, _ in self._waiting.values():
            if not fut.done():
                fut.set_exception(Closed(code, self.reason))
        self._waiting.clear()

    # -- requests --
    async def _request(self, op: int, body: bytes, timeout: float, collect: list | None = None) -> bytes:
        seq = next(self._seq)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[seq] = (fut, collect)
        self.send_frame(op, seq, body)
        return await self._wait(fut, timeout)

    async def _wait(self, fut: asyncio.Future, timeout: float):
        closed = self.closed
        done, _ = await asyncio.wait({fut, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if fut in done:
            return fut.result()
        if closed.done():
            raise Closed(*closed.result())
        raise asyncio.TimeoutError("no reply from the server")

    async def auth(self, key: str, *, mid=None, room_id=None, accepts=None, timeout: float = 10.0,
                   **extra) -> dict:
        """op 7; returns the op-8 JSON, raises Closed if the server refuses."""
        doc = {"key": key, **extra}
        for name, value in (("mid", mid), ("room_id", room_id), ("accepts", accepts)):
            if value is not None:
                doc[name] = value
        return orjson.loads(await self._request(Op.AUTH, orjson.dumps(doc), timeout))

    async def heartbeat(self, timeout: float = 10.0) -> int:
        body = await self._request(Op.HEARTBEAT, b"", timeout)
        return int.from_bytes(body[:4], "big", signed=True)

    async def sync(self, after: int | None = None, *, before: int | None = None,
                   limit: int | None = None, room_id: str | None = None, body: bytes | None = None,
                   timeout: float = 10.0) -> list[dict]:
        """op 14; returns the op-15 JSON documents (gap notice included), oldest first."""
        if body is None:
            doc = {k: v for k, v in (("after", after), ("before", before), ("limit", limit),
                                     ("room_id", room_id)) if v is not None}
            body = orjson.dumps(doc) if doc else b""
        collect: list[bytes] = []
        seq = next(self._seq)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[seq] = (fut, collect)
        end = next(self._seq)
        end_fut = asyncio.get_running_loop().create_future()
        self._waiting[end] = (end_fut, None)
        self.send_frame(Op.SYNC, seq, body)
        self.send_frame(Op.HEARTBEAT, end, b"")
        try:
            await self._wait(end_fut, timeout)
        finally:
            self._waiting.pop(seq, None)
        return [orjson.loads(b) for b in collect]

    async def sync_all(self, after: int = 0, **kw) -> list[dict]:
        """Every message newer than `after`, following pages."""
        out: list[dict] = []
        while True:
            page = [m for m in await self.sync(after, **kw) if "id" in m]
            out.extend(page)
            if not page:
                return out
            after = page[-1]["id"]

    async def ack(self, msg_id: int, *, room_id: str | None = None, timeout: float = 10.0) -> int:
        body = b"%d" % msg_id if room_id is None else orjson.dumps({"id": msg_id, "room_id": room_id})
        return int(await self._request(Op.ACK, body, timeout))

    async def recv(self, timeout: float = 10.0) -> Frame:
        """The next frame no request consumed (live messages, pushes, op 6)."""
        getter = asyncio.ensure_future(self.frames.get())
        try:
            return await self._wait(getter, timeout)
        finally:
            if not getter.done():
                getter.cancel()

    async def messages(self, n: int, timeout: float = 10.0) -> list[dict]:
        """The next n live chat messages (op 5) as JSON; other frames are skipped."""
        out = []
        while len(out) < n:
            f = await self.recv(timeout)
            if f.op == Op.MESSAGE:
                out.append(f.json())
        return out

    async def closed_with(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """Wait until the server closes; -> (code, op-6 reason)."""
        return await asyncio.wait_for(asyncio.shield(self.closed), timeout)


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, client: "TcpClient", max_frame: int) -> None:
        self.client = client
        self.decoder = tlv.StreamDecoder(max_frame)

    def data_received(self, data: bytes) -> None:
        client = self.client
        for frame in self.decoder.feed(data):
            client.wire_frames += 1
            client._on_frame(*frame)

    def connection_lost(self, exc) -> None:
        self.client._on_close(None)


class TcpClient(Client):
    def __init__(self) -> None:
        super().__init__()
        self.transport: asyncio.Transport | None = None

    def send_frame(self, op: int, seq: int, body: bytes = b"") -> None:
        self.transport.write(tlv.encode(op, seq, body))

    def send_raw(self, data: bytes) -> None:
        self.transport.write(data)

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), 5)
        except asyncio.TimeoutError:
            self.transport.abort()


class WsClient(Client):
    def __init__(self) -> None:
        super().__init__()
        self.ws = None
        self._session = None
        self._reader: asyncio.Task | None = None
        self._sending: set[asyncio.Task] = set()

    def send_frame(self, op: int, seq: int, body: bytes = b"") -> None:
        self.send_raw(tlv.encode(op, seq, body))

    def send_raw(self, data: bytes) -> None:
        self._later(self.ws.send_bytes(data))

    def send_text(self, text: str) -> None:
        self._later(self.ws.send_str(text))

    def _later(self, coro) -> None:
        """aiohttp's sends are coroutines; they start in call order, so frames keep theirs."""
        task = asyncio.ensure_future(coro)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _read(self, max_frame: int) -> None:
        from aiohttp import WSMsgType
        try:
            async for msg in self.ws:
                if msg.type is WSMsgType.BINARY:
                    self.wire_frames += 1
                    self._on_frame(*tlv.decode(msg.data, max_frame))
        finally:
            self._on_close(self.ws.close_code)
            await self._session.close()

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


class _LeanWsProtocol(asyncio.Protocol):
    """RFC 6455 client side on a bare asyncio connection: the handshake, masked
    binary frames out, unmasked frames in, close and ping answered."""

    def __init__(self, client: "LeanWsClient", max_frame: int, host: str, path: str) -> None:
        self.client, self.max_frame = client, max_frame
        self.request = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}"
                        "\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        self.buf = bytearray()
        self.upgraded = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded.done():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buf[:self.buf.find(b"\r\n")])
            del self.buf[:end + 4]
            if b" 101 " not in status + b" ":
                self.upgraded.set_exception(ConnectionError(f"upgrade refused: {status.decode(errors='replace')}"))
                self.transport.close()
                return
            self.upgraded.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buf, off, client = self.buf, 0, self.client
        while len(buf) - off >= 2:
            b0, b1 = buf[off], buf[off + 1]
            n, pos = b1 & 0x7F, off + 2
            if n >= 126:
                width = 2 if n == 126 else 8
                if len(buf) < pos + width:
                    break
                n, pos = int.from_bytes(buf[pos:pos + width], "big"), pos + width
            if len(buf) < pos + n:
                break
            payload, off = bytes(buf[pos:pos + n]), pos + n
            opcode = b0 & 0x0F
            if opcode == 0x2:
                client.wire_frames += 1
                client._on_frame(*tlv.decode(payload, self.max_frame))
            elif opcode == 0x8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.send(0x8, payload[:2])
                self.transport.close()
            elif opcode == 0x9:
                self.send(0xA, payload)
        del buf[:off]

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")
                  ).to_bytes(n, "big") if n else b""
        self.transport.write(head + mask + masked)

    def connection_lost(self, exc) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("connection closed during the upgrade"))
        self.client._on_close(self.close_code)


class LeanWsClient(Client):
    """WebSocket without aiohttp: a few hundred bytes per connection (benchmarks, load)."""

    def __init__(self) -> None:
        super().__init__()
        self.proto: _LeanWsProtocol | None = None

    def send_frame(self, op: int, seq: int, body: bytes = b"") -> None:
        self.proto.send(0x2, tlv.encode(op, seq, body))

    def send_raw(self, data: bytes) -> None:
        self.proto.send(0x2, data)

    def send_text(self, text: str) -> None:
        self.proto.send(0x1, text.encode())

    async def close(self) -> None:
        if self.proto.transport is not None and not self.proto.transport.is_closing():
            self.proto.send(0x8, (1000).to_bytes(2, "big"))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), 5)
        except asyncio.TimeoutError:
            self.proto.transport.abort()


async def connect(url: str, *, max_frame: int = 1 << 24, timeout: float = 10.0, lean: bool = False,
                  local_addr: tuple[str, int] | None = None) -> Client:
    """ws://host:port/sub or tcp://host:port.

    WebSocket uses aiohttp's client unless `lean` (a bare-asyncio client for
    thousands of connections); TCP is always a bare asyncio protocol.
    local_addr (TCP and lean only): e.g. ("127.0.0.7", 0), so that tens of
    thousands of loopback connections spread over several source addresses.
    """
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    if parts.scheme == "tcp":
        client = TcpClient()
        transport, _ = await asyncio.wait_for(loop.create_connection(
            lambda: _TcpProtocol(client, max_frame), parts.hostname, parts.port, local_addr=local_addr), timeout)
        client.transport = transport
        return client
    if parts.scheme == "ws" and lean:
        lean_client = LeanWsClient()
        proto = _LeanWsProtocol(lean_client, max_frame, parts.netloc, parts.path or "/")
        await asyncio.wait_for(loop.create_connection(lambda: proto, parts.hostname, parts.port,
                                                      local_addr=local_addr), timeout)
        lean_client.proto = proto
        await asyncio.wait_for(proto.upgraded, timeout)
        return lean_client
    if parts.scheme in ("ws", "wss"):
        import aiohttp
        client = WsClient()
        client._session = aiohttp.ClientSession()
        try:
            client.ws = await client._session.ws_connect(url, max_msg_size=max_frame, autoping=True,
                                                         timeout=aiohttp.ClientWSTimeout(ws_close=timeout))
        except BaseException:
            await client._session.close()
            raise
        client._reader = asyncio.create_task(client._read(max_frame))
        return client
    raise ValueError(f"unsupported URL {url!r}: use ws://host:port/sub or tcp://host:port")
