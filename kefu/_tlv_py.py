"""Pure-Python TLV codec: the reference twin of `_tlv.pyx`.

Installs without a compiler still work, only slower.  Both twins must
agree byte for byte on every input, malformed ones included, so every
check, its order and its message live here exactly as in the `.pyx`.
Import `kefu.tlv`, never this module (tests excepted).
"""
from __future__ import annotations

import operator
import struct

from .errors import FrameError, FrameTooBig
from .protocol import (
    DEFAULT_MAX_FRAME, ERR_BAD_HEADER_LEN, ERR_BAD_PACKET_LEN, ERR_BODY_TOO_BIG,
    ERR_DECODER_CLOSED, ERR_LENGTH_MISMATCH, ERR_OP_RANGE, ERR_SEQ_RANGE,
    ERR_SHORT_HEADER, ERR_TOO_BIG, HEADER_SIZE, HEARTBEAT_BODY_SIZE, VERSION, Op,
)

__all__ = ["DEFAULT_MAX_FRAME", "HEADER_SIZE", "StreamDecoder", "batch",
           "decode", "encode", "heartbeat_reply"]

# packet len, header len, version, op, seq: the §1 layout, big-endian, signed.
_HEADER = struct.Struct(">ihhii")
assert _HEADER.size == HEADER_SIZE
_unpack_from = _HEADER.unpack_from
_pack = _HEADER.pack
_I32_MIN = -(1 << 31)
_I32_MAX = (1 << 31) - 1
_MAX_BODY = _I32_MAX - HEADER_SIZE   # packet length must fit an int32
_OP_RAW = int(Op.RAW)
_OP_HEARTBEAT_REPLY = int(Op.HEARTBEAT_REPLY)
_index = operator.index


def _i32(value: int, msg: str) -> int:
    value = _index(value)
    if not _I32_MIN <= value <= _I32_MAX:
        raise FrameError(msg)
    return value


def _as_bytes(data) -> bytes:
    """bytes as is; any other buffer (bytearray, memoryview) copied flat."""
    if type(data) is bytes:
        return data
    return memoryview(data).tobytes()


def _check_header(plen: int, hlen: int, max_size: int) -> None:
    """The checks shared by `decode` and `StreamDecoder`, in contract order."""
    if plen < HEADER_SIZE:
        raise FrameError(ERR_BAD_PACKET_LEN)
    if hlen != HEADER_SIZE:
        raise FrameError(ERR_BAD_HEADER_LEN)
    if plen > max_size:
        raise FrameTooBig(ERR_TOO_BIG)


def encode(op: int, seq: int, body=b"") -> bytes:
    """One frame; the header length is always 16, the version ours."""
    op = _i32(op, ERR_OP_RANGE)
    seq = _i32(seq, ERR_SEQ_RANGE)
    body = _as_bytes(body)
    if len(body) > _MAX_BODY:
        raise FrameError(ERR_BODY_TOO_BIG)
    return _pack(HEADER_SIZE + len(body), HEADER_SIZE, VERSION, op, seq) + body


def decode(data, max_size: int = DEFAULT_MAX_FRAME) -> tuple[int, int, bytes]:
    """Exactly one frame from one WebSocket message: (op, seq, body)."""
    max_size = _index(max_size)
    data = _as_bytes(data)
    if len(data) < HEADER_SIZE:
        raise FrameError(ERR_SHORT_HEADER)
    plen, hlen, _version, op, seq = _unpack_from(data)
    _check_header(plen, hlen, max_size)
    if plen != len(data):
        raise FrameError(ERR_LENGTH_MISMATCH)
    return op, seq, data[HEADER_SIZE:]


class StreamDecoder:
    """Splits a byte stream (goim TCP) into frames, across any chunking.

    When nothing is pending, frames are cut straight from the fed bytes and
    only the incomplete tail is kept.  Otherwise the data joins one
    bytearray and consumed bytes are dropped with `del buf[:n]`, which
    CPython does in O(1) by moving the array's start: many small frames in
    one feed cost linear time.  A bad header fails as soon as its 16 bytes
    arrive, and the decoder then stays closed.
    """

    __slots__ = ("_buf", "_max", "_closed")

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME) -> None:
        self._max = _index(max_size)
        self._buf = bytearray()
        self._closed = False

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf)

    def feed(self, data) -> list[tuple[int, int, bytes]]:
        """Buffers `data`; returns every frame completed so far, in order."""
        if self._closed:
            raise FrameError(ERR_DECODER_CLOSED)
        buf = self._buf
        direct = not buf and type(data) is bytes
        if not direct:
            buf += data
            data = buf
        frames, off = self._split(data)
        if not direct:
            if off:
                del buf[:off]
        elif off < len(data):
            buf += memoryview(data)[off:]
        return frames

    def _split(self, src) -> tuple[list[tuple[int, int, bytes]], int]:
        """Whole frames of `src` and the number of bytes they span."""
        end = len(src)
        off = 0
        frames = []
        while end - off >= HEADER_SIZE:
            plen, hlen, _version, op, seq = _unpack_from(src, off)
            try:
                _check_header(plen, hlen, self._max)
            except FrameError:
                self._closed = True
                raise
            if end - off < plen:
                break
            frames.append((op, seq, bytes(src[off + HEADER_SIZE:off + plen])))
            off += plen
        return frames, off


def batch(frames, seq: int = 0) -> bytes:
    """One op-9 frame carrying already-encoded frames back to back."""
    seq = _i32(seq, ERR_SEQ_RANGE)
    return encode(_OP_RAW, seq, b"".join(frames))


def heartbeat_reply(seq: int, online: int) -> bytes:
    """The op-3 answer; `online` is clamped into the int32 the body holds."""
    seq = _i32(seq, ERR_SEQ_RANGE)
    online = min(max(_index(online), _I32_MIN), _I32_MAX)
    return encode(_OP_HEARTBEAT_REPLY, seq, online.to_bytes(HEARTBEAT_BODY_SIZE, "big", signed=True))
