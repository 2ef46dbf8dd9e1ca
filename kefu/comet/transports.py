"""The two transports of a comet worker, both thin adapters around Session.

WebSocket (aiohttp, path /sub): one binary message per frame.  Reading
uses aiohttp; writing does not go through aiohttp's coroutine `send_bytes`:
the adapter frames each binary message itself (server frames are never
masked, and compression is off) and writes it straight to the transport,
so the hub's fan-out is plain synchronous writes with no coroutine per
recipient.  Control frames (close, pong) stay aiohttp's.

TCP (asyncio.Protocol): goim's raw stream, cut into frames by
tlv.StreamDecoder.  Nothing runs per connection but the protocol's
callbacks: no task, no buffer beyond the decoder's leftover bytes.

Both check the worker's connection limit when a client arrives and
refuse with op 6 then close (WebSocket code 1013).
"""
from __future__ import annotations

import asyncio
import struct

from aiohttp import WSMsgType, web
from aiohttp.http_websocket import WebSocketError

from .. import tlv
from ..errors import FrameError
from ..protocol import CLOSE_TOO_BIG, CLOSE_TRY_AGAIN, HEADER_SIZE, OP_OFFSET, Op
from ..session import Context, Session

_RAW = int(Op.RAW).to_bytes(4, "big")
_OP_BINARY = 0x82                 # FIN + binary opcode
_LEN2 = struct.Struct("!BBH").pack
_LEN8 = struct.Struct("!BBQ").pack
WS_CLOSE_TIMEOUT = 3.0            # how long a close waits for the client's close frame


def ws_frame(payload: bytes) -> bytes:
    """One unmasked binary WebSocket frame (RFC 6455 §5.2) carrying `payload`."""
    n = len(payload)
    if n < 126:
        return bytes((_OP_BINARY, n)) + payload
    if n < 65536:
        return _LEN2(_OP_BINARY, 126, n) + payload
    return _LEN8(_OP_BINARY, 127, n) + payload


def batch_pushes(frames: list[bytes]) -> bytes:
    """Several live frames as one op-9 frame; op-9 pushes are flattened, not nested."""
    return tlv.encode(Op.RAW, 0, b"".join(
        f[HEADER_SIZE:] if f[OP_OFFSET:OP_OFFSET + 4] == _RAW else f for f in frames))


def refuse_message(ctx: Context) -> bytes:
    return b"server shutting down" if ctx.stopping else b"server full"


# -- WebSocket -------------------------------------------------------------------
class WsTransport:
    __slots__ = ("ws", "raw", "ctx")

    def __init__(self, ws: web.WebSocketResponse, raw: asyncio.Transport, ctx: Context) -> None:
        self.ws, self.raw, self.ctx = ws, raw, ctx

    def _write(self, data: bytes) -> None:
        if not self.raw.is_closing():
            self.raw.write(data)
            self.ctx.stats["bytes_out_total"] += len(data)

    def send(self, frame: bytes) -> None:
        self._write(ws_frame(frame))

    def send_many(self, frames: list[bytes]) -> None:
        self._write(b"".join([ws_frame(f) for f in frames]))

    def push(self, frames: list[bytes]) -> None:
        self._write(ws_frame(frames[0] if len(frames) == 1 else batch_pushes(frames)))

    def close(self, code: int, reason: str) -> None:
        self.ctx.background(self.ws.close(code=code, message=reason.encode()))

    def abort(self) -> None:
        self.raw.abort()

    def buffered(self) -> int:
        return self.raw.get_write_buffer_size()


async def ws_handler(ctx: Context, request: web.Request) -> web.StreamResponse:
    """GET /sub: one WebSocket connection, fed to one Session."""
    ws = web.WebSocketResponse(compress=False, max_msg_size=ctx.settings.max_frame,
                               autoping=True, heartbeat=None, timeout=WS_CLOSE_TIMEOUT)
    if not ws.can_prepare(request).ok:
        return web.Response(status=426, text="WebSocket (binary goim frames) only\n")
    await ws.prepare(request)
    if ctx.full() or ctx.stopping:
        ctx.stats["refused_total"] += 1
        reason = refuse_message(ctx)
        await ws.send_bytes(tlv.encode(Op.DISCONNECT, 0, reason))
        await ws.close(code=CLOSE_TRY_AGAIN, message=reason)
        return ws
    session = Session(ctx, WsTransport(ws, request.transport, ctx))
    stats, max_frame, decode = ctx.stats, ctx.settings.max_frame, tlv.decode
    try:
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.BINARY:
                data = msg.data
                stats["bytes_in_total"] += len(data)
                try:
                    op, seq, body = decode(data, max_frame)
                except FrameError as exc:
                    session.fail(exc)
                    continue
                session.feed(op, seq, body)
            elif kind is WSMsgType.TEXT:
                session.fail(FrameError("text messages are not part of the protocol"))
            elif kind is WSMsgType.ERROR:
                exc = ws.exception()
                if isinstance(exc, WebSocketError) and exc.code == CLOSE_TOO_BIG:
                    stats["errors_frame_too_big_total"] += 1     # aiohttp closed it with 1009
                elif isinstance(exc, WebSocketError):
                    stats["errors_bad_frame_total"] += 1
                break
            else:                       # CLOSE, CLOSING, CLOSED
                break
    finally:
        session.gone()
    return ws


# -- TCP ---------------------------------------------------------------------------
class TcpConnection(asyncio.Protocol):
    """goim's TCP transport: frames back to back on a raw stream."""

    __slots__ = ("ctx", "t", "decoder", "session")

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.t = None
        self.decoder = None
        self.session = None

    def connection_made(self, transport) -> None:
        ctx = self.ctx
        self.t = transport
        if ctx.full() or ctx.stopping:
            ctx.stats["refused_total"] += 1
            transport.write(tlv.encode(Op.DISCONNECT, 0, refuse_message(ctx)))
            transport.close()
            return
        self.decoder = tlv.StreamDecoder(ctx.settings.max_frame)
        self.session = Session(ctx, self)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None:
            return
        self.ctx.stats["bytes_in_total"] += len(data)
        try:
            frames = self.decoder.feed(data)
        except FrameError as exc:
            session.fail(exc)
            return
        for op, seq, body in frames:
            session.feed(op, seq, body)

    def eof_received(self):
        return False                    # half-closed by the client: close our side too

    def connection_lost(self, exc) -> None:
        if self.session is not None:
            self.session.gone()
            self.session = None

    # -- the Session's transport interface --
    def send(self, frame: bytes) -> None:
        t = self.t
        if not t.is_closing():
            t.write(frame)
            self.ctx.stats["bytes_out_total"] += len(frame)

    def send_many(self, frames: list[bytes]) -> None:
        self.send(frames[0] if len(frames) == 1 else b"".join(frames))

    push = send_many

    def close(self, code: int, reason: str) -> None:
        self.t.close()                  # after the queued bytes (op 6) are written

    def abort(self) -> None:
        self.t.abort()

    def buffered(self) -> int:
        return self.t.get_write_buffer_size()


__all__ = ["TcpConnection", "WsTransport", "batch_pushes", "ws_frame", "ws_handler"]
