"""WebSocket /sub on a bare asyncio protocol: the HTTP upgrade and RFC 6455 framing.

Why not aiohttp here (it served /sub first; bench/bench_conn_memory.py measured it): an aiohttp WebSocket holds a request, a response, a
reader, a writer, a task and their buffers for as long as it lives, about
14 KiB per idle connection and a coroutine round trip per frame read.  One
object of this class per connection (with __slots__) does the same job:
parse one HTTP request, answer 101, then cut masked client frames out of
the byte stream and hand each binary message to the Session, exactly as
the TCP transport hands it TLV frames.  Writes were already raw (server
frames are unmasked and uncompressed): they stay the same.

What it accepts and refuses (the behaviour the aiohttp handler had):

* GET /sub with a valid upgrade (version 13, a 16-byte key) -> 101; the
  same path without one -> 426; GET /health -> the worker's figures (JSON);
  any other path 404, other methods 405; a request head over 8 KiB -> 431.
  Every plain HTTP answer closes the connection.
* The HTTP request must arrive within settings.handshake_timeout; after the
  upgrade the Session's own handshake and heartbeat timeouts apply.
* Binary messages (fragmented or not) up to settings.max_frame, else close
  1009 before the payload is even buffered; text messages close 1002 (via
  the Session, op 6 first); reserved opcodes, RSV bits and malformed
  control frames close 1002; ping -> pong; close -> close echoed.
  An unmasked client frame closes 1002 (RFC 6455 §5.1: the server MUST
  close; aiohttp's reader tolerated them).
* A worker that is full or stopping upgrades, sends op 6 and closes 1013.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import struct

import orjson

from .. import tlv
from ..errors import FrameError
from ..protocol import CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, CLOSE_TRY_AGAIN, Op
from ..session import Context, Session
from .transports import batch_pushes, refuse_message

try:                     # aiohttp's compiled unmasking (in place); pure Python below otherwise
    from aiohttp._websocket.helpers import websocket_mask as _mask
except ImportError:      # pragma: no cover
    _mask = None

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HEAD_MAX = 8192
CLOSE_TIMEOUT = 3.0          # a close we start waits this long for the client's close frame
_OP_BINARY = 0x82            # FIN + binary
_LEN2 = struct.Struct("!BBH").pack
_LEN8 = struct.Struct("!BBQ").pack
HTTP, OPEN, CLOSING, CLOSED = 0, 1, 2, 3


def unmask(key: bytes, data: bytearray) -> bytearray:
    if _mask is not None:
        _mask(key, data)
        return data
    n = len(data)
    return bytearray((int.from_bytes(data, "big") ^ int.from_bytes((key * (n // 4 + 1))[:n], "big"))
                     .to_bytes(n, "big"))


def ws_frame(payload: bytes) -> bytes:
    """One unmasked binary WebSocket frame carrying `payload`."""
    n = len(payload)
    if n < 126:
        return bytes((_OP_BINARY, n)) + payload
    if n < 65536:
        return _LEN2(_OP_BINARY, 126, n) + payload
    return _LEN8(_OP_BINARY, 127, n) + payload


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return control_frame(0x8, code.to_bytes(2, "big") + reason.encode()[:121])


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def http_answer(status: str, body: bytes = b"", ctype: str = "text/plain; charset=utf-8",
                extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"{extra}Connection: close\r\n\r\n").encode() + body


class WsServer:
    """The protocol factory of one worker's /sub listener; tracks closes in progress."""

    def __init__(self, ctx: Context, health) -> None:
        self.ctx = ctx
        self.health = health                 # () -> dict, answered on GET /health
        self.closing: set = set()

    def __call__(self) -> "WsConnection":
        return WsConnection(self)

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) until the close handshakes in progress are over."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.closing and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for c in list(self.closing):
            c._drop()


class WsConnection(asyncio.Protocol):
    """One /sub connection: HTTP upgrade, then frames; the Session's transport interface."""

    __slots__ = ("server", "ctx", "t", "buf", "state", "session", "frag", "timer")

    def __init__(self, server: WsServer) -> None:
        self.server = server
        self.ctx = server.ctx
        self.t = None
        self.buf = bytearray()
        self.state = HTTP
        self.session: Session | None = None
        self.frag: bytearray | None = None   # a fragmented message being assembled
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.t = transport
        self.timer = asyncio.get_running_loop().call_later(
            self.ctx.settings.handshake_timeout, self._drop)

    def data_received(self, data: bytes) -> None:
        if self.state is OPEN or self.state is CLOSING:
            buf = self.buf
            if buf:
                buf += data
                self._frames(buf)
            else:
                self._frames(data)
        elif self.state is HTTP:
            self.buf += data
            self._http()

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        self.state = CLOSED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.server.closing.discard(self)
        self.buf = self.frag = None
        if self.session is not None:
            self.session.gone()
            self.session = None

    # -- HTTP --------------------------------------------------------------------
    def _http(self) -> None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > HEAD_MAX:
                self._answer(http_answer("431 Request Header Fields Too Large", b"request head too large\n"))
            return
        if end > HEAD_MAX:
            self._answer(http_answer("431 Request Header Fields Too Large", b"request head too large\n"))
            return
        try:
            head = bytes(buf[:end]).decode("latin-1")
        except UnicodeDecodeError:      # pragma: no cover - latin-1 decodes anything
            head = ""
        rest = bytes(buf[end + 4:])
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._answer(http_answer("400 Bad Request", b"bad request line\n"))
            return
        method, target = parts[0], parts[1]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                self._answer(http_answer("400 Bad Request", b"bad header line\n"))
                return
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        path = target.split("?", 1)[0]
        if path == "/health":
            if method not in ("GET", "HEAD"):
                self._answer(http_answer("405 Method Not Allowed", b"", extra="Allow: GET\r\n"))
                return
            body = orjson.dumps(self.server.health())
            self._answer(http_answer("200 OK", b"" if method == "HEAD" else body, "application/json"))
            return
        if path != "/sub":
            self._answer(http_answer("404 Not Found", b"not found\n"))
            return
        if method != "GET":
            self._answer(http_answer("405 Method Not Allowed", b"", extra="Allow: GET\r\n"))
            return
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        if headers.get("upgrade", "").lower() != "websocket" or "upgrade" not in tokens:
            self._answer(http_answer("426 Upgrade Required", b"WebSocket (binary goim frames) only\n",
                                     extra="Upgrade: websocket\r\n"))
            return
        if headers.get("sec-websocket-version") != "13":
            self._answer(http_answer("426 Upgrade Required", b"WebSocket version 13 only\n",
                                     extra="Sec-WebSocket-Version: 13\r\n"))
            return
        key = headers.get("sec-websocket-key", "")
        try:
            ok = len(base64.b64decode(key, validate=True)) == 16
        except (ValueError, TypeError):
            ok = False
        if not ok:
            self._answer(http_answer("400 Bad Request", b"bad Sec-WebSocket-Key\n"))
            return
        self._upgrade(key, rest)

    def _answer(self, data: bytes) -> None:
        self.state = CLOSED
        self.buf = bytearray()
        self.t.write(data)
        self.t.close()

    def _upgrade(self, key: str, rest: bytes) -> None:
        ctx = self.ctx
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.t.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n")
        self.buf = bytearray()
        if ctx.full() or ctx.stopping:
            ctx.stats["refused_total"] += 1
            reason = refuse_message(ctx)
            self.state = OPEN
            self.t.write(ws_frame(tlv.encode(Op.DISCONNECT, 0, reason)))
            self.close(CLOSE_TRY_AGAIN, reason.decode())
            return
        self.state = OPEN
        self.session = Session(ctx, self)
        if rest:
            self.data_received(rest)

    # -- frames ------------------------------------------------------------------
    def _frames(self, data) -> None:
        """Cut whole frames out of `data` (the new bytes, or self.buf with them appended)."""
        n_buf = len(data)
        off = 0
        max_frame = self.ctx.settings.max_frame
        while n_buf - off >= 2:
            b0, b1 = data[off], data[off + 1]
            n, pos = b1 & 0x7F, off + 2
            if n == 126:
                if n_buf - pos < 2:
                    break
                n, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
            elif n == 127:
                if n_buf - pos < 8:
                    break
                n, pos = int.from_bytes(data[pos:pos + 8], "big"), pos + 8
            opcode = b0 & 0x0F
            if b0 & 0x70:
                return self._fail(CLOSE_PROTOCOL_ERROR, "bad_frame", "reserved bits set")
            if opcode >= 8:
                if not b0 & 0x80 or n > 125:
                    return self._fail(CLOSE_PROTOCOL_ERROR, "bad_frame", "bad control frame")
            elif n + (len(self.frag) if self.frag is not None and opcode == 0 else 0) > max_frame:
                return self._fail(CLOSE_TOO_BIG, "frame_too_big", "message too big")
            if not b1 & 0x80:
                return self._fail(CLOSE_PROTOCOL_ERROR, "bad_frame", "unmasked client frame")
            if n_buf - pos < 4:
                break
            mask, pos = data[pos:pos + 4], pos + 4
            if n_buf - pos < n:
                break
            payload = data[pos:pos + n]
            off = pos + n
            if n:
                payload = unmask(bytes(mask), bytearray(payload))
            self._frame(opcode, b0 & 0x80, payload)
            if self.state is not OPEN and self.state is not CLOSING:
                return
        if data is self.buf:
            if off:
                del data[:off]
        else:
            self.buf = bytearray(data[off:])

    def _frame(self, opcode: int, fin: int, payload) -> None:
        if opcode == 0x2 or opcode == 0x0:
            if opcode == 0x0:
                if self.frag is None:
                    return self._fail(CLOSE_PROTOCOL_ERROR, "bad_frame", "continuation without a start")
                self.frag += payload
                if not fin:
                    return
                payload, self.frag = self.frag, None
            elif not fin:
                if self.frag is not None:
                    return self._fail(CLOSE_PROTOCOL_ERROR, "bad_frame", "new message inside a fragmented one")
                self.frag = bytearray(payload)
                return
            elif self.frag is not None:
                return self._fail(CLOSE_PROTOCOL_ERROR, "bad_frame", "new message inside a fragmented one")
            if self.state is OPEN and self.session is not None:
                self._message(bytes(payload))
        elif opcode == 0x1:
            if self.session is not None and self.state is OPEN:
                self.session.fail(FrameError("text messages are not part of the protocol"))
            else:
                self._fail(CLOSE_PROTOCOL_ERROR, "bad_frame", "text message")
        elif opcode == 0x8:
            self._closed_by_client(payload)
        elif opcode == 0x9:
            if self.state is OPEN:
                self._write(control_frame(0xA, bytes(payload)))
        elif opcode == 0xA:
            pass
        else:
            self._fail(CLOSE_PROTOCOL_ERROR, "bad_frame", f"reserved opcode {opcode}")

    def _message(self, data: bytes) -> None:
        ctx = self.ctx
        ctx.stats["bytes_in_total"] += len(data)
        try:
            op, seq, body = tlv.decode(data, ctx.settings.max_frame)
        except FrameError as exc:
            self.session.fail(exc)
            return
        self.session.feed(op, seq, body)

    def _closed_by_client(self, payload) -> None:
        if self.state is OPEN:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000
            if code < 1000 or code in (1004, 1005, 1006) or 1015 <= code < 3000 or code >= 5000:
                code = CLOSE_PROTOCOL_ERROR
            self.t.write(close_frame(code if code != 1005 else 1000))
        self._end()

    def _fail(self, code: int, kind: str, reason: str) -> None:
        """A WebSocket-level error: counted, a close frame with `code`, then the connection is
        closed at once (the stream is out of step: nothing after this can be parsed)."""
        self.ctx.stats[f"errors_{kind}_total"] += 1
        if self.session is not None:
            session, self.session = self.session, None
            session.gone()
        if self.state is OPEN:
            self._write(close_frame(code, reason))
        self._end()

    def _end(self) -> None:
        """Close the TCP connection (after what is queued is written)."""
        self.state = CLOSED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.server.closing.discard(self)
        self.t.close()

    def _drop(self) -> None:
        self.timer = None
        self.state = CLOSED
        self.server.closing.discard(self)
        self.t.abort()

    # -- the Session's transport interface -------------------------------------------
    def _write(self, data: bytes) -> None:
        t = self.t
        if not t.is_closing():
            t.write(data)
            self.ctx.stats["bytes_out_total"] += len(data)

    def send(self, frame: bytes) -> None:
        if self.state is OPEN:
            self._write(ws_frame(frame))

    def send_many(self, frames: list[bytes]) -> None:
        if self.state is OPEN:
            self._write(b"".join([ws_frame(f) for f in frames]))

    def push(self, frames: list[bytes]) -> None:
        if self.state is OPEN:
            if len(frames) == 1:
                self._write(ws_frame(frames[0]))
            else:
                self._write(ws_frame(batch_pushes(frames)))

    def close(self, code: int, reason: str) -> None:
        """Start the close handshake; the TCP connection closes on the client's answer or in 3 s."""
        if self.state is not OPEN:
            return
        self.state = CLOSING
        self._write(close_frame(code, reason))
        self.server.closing.add(self)
        self.timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._end)

    def abort(self) -> None:
        self.state = CLOSED
        self.t.abort()

    def buffered(self) -> int:
        return self.t.get_write_buffer_size()


__all__ = ["WsConnection", "WsServer", "accept_key", "ws_frame"]
