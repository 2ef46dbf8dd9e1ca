"""goim's TCP transport, and what both transports share.

TCP: frames back to back on a raw stream, cut by tlv.StreamDecoder and fed
to the same Session the WebSocket transport (kefu.comet.ws_lean) feeds, so
behaviour cannot drift between them.  `batch_pushes` turns the live frames
of one tick into one op-9 frame; `refuse_message` is the op-6 reason when a
worker is full or stopping.
"""
from __future__ import annotations

import asyncio

from .. import tlv
from ..errors import FrameError
from ..protocol import HEADER_SIZE, OP_OFFSET, Op
from ..session import Context, Session

_RAW = int(Op.RAW).to_bytes(4, "big")


def batch_pushes(frames: list[bytes]) -> bytes:
    """Several live frames as one op-9 frame; op-9 pushes are flattened, not nested."""
    return tlv.encode(Op.RAW, 0, b"".join(
        f[HEADER_SIZE:] if f[OP_OFFSET:OP_OFFSET + 4] == _RAW else f for f in frames))


def refuse_message(ctx: Context) -> bytes:
    return b"server shutting down" if ctx.stopping else b"server full"


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


__all__ = ["TcpConnection", "batch_pushes", "refuse_message"]
