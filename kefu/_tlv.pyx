# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled TLV codec: the fast twin of `_tlv_py.py`.

Same API, same checks in the same order, same exceptions and messages;
only the speed differs.  Headers are packed and read by hand, big-endian,
straight from the bytes / bytearray storage; bodies are one memcpy.
Import `kefu.tlv`, never this module (tests excepted).
"""
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.number cimport PyNumber_Index
from libc.stdint cimport int16_t, int32_t, uint16_t, uint32_t
from libc.string cimport memcpy

from .errors import FrameError, FrameTooBig
from .protocol import (
    DEFAULT_MAX_FRAME, ERR_BAD_HEADER_LEN, ERR_BAD_PACKET_LEN, ERR_BODY_TOO_BIG,
    ERR_DECODER_CLOSED, ERR_LENGTH_MISMATCH, ERR_OP_RANGE, ERR_SEQ_RANGE,
    ERR_SHORT_HEADER, ERR_TOO_BIG, HEADER_SIZE, HEARTBEAT_BODY_SIZE, VERSION, Op,
)
from . import protocol as _p

__all__ = ["DEFAULT_MAX_FRAME", "HEADER_SIZE", "StreamDecoder", "batch",
           "decode", "encode", "heartbeat_reply"]

# The §1 layout, copied once into C globals from kefu/protocol.py.
cdef Py_ssize_t HDR = HEADER_SIZE
cdef Py_ssize_t PLEN_OFF = _p.PACKET_LEN_OFFSET
cdef Py_ssize_t HLEN_OFF = _p.HEADER_LEN_OFFSET
cdef Py_ssize_t VER_OFF = _p.VERSION_OFFSET
cdef Py_ssize_t OP_OFF = _p.OP_OFFSET
cdef Py_ssize_t SEQ_OFF = _p.SEQ_OFFSET
cdef uint16_t VER = VERSION
cdef Py_ssize_t HB_BODY = HEARTBEAT_BODY_SIZE
cdef int32_t OP_RAW = Op.RAW
cdef int32_t OP_HEARTBEAT_REPLY = Op.HEARTBEAT_REPLY
assert HEARTBEAT_BODY_SIZE == sizeof(int32_t)
cdef long long I32_MIN = -2147483648
cdef long long I32_MAX = 2147483647
cdef Py_ssize_t MAX_BODY = I32_MAX - HDR    # packet length must fit an int32


cdef inline void _put32(unsigned char* p, uint32_t v) noexcept nogil:
    p[0] = <unsigned char>(v >> 24)
    p[1] = <unsigned char>(v >> 16)
    p[2] = <unsigned char>(v >> 8)
    p[3] = <unsigned char>v


cdef inline void _put16(unsigned char* p, uint16_t v) noexcept nogil:
    p[0] = <unsigned char>(v >> 8)
    p[1] = <unsigned char>v


cdef inline int32_t _get32(const unsigned char* p) noexcept nogil:
    return <int32_t>((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16)
                     | (<uint32_t>p[2] << 8) | <uint32_t>p[3])


cdef inline int16_t _get16(const unsigned char* p) noexcept nogil:
    return <int16_t>((<uint16_t>p[0] << 8) | <uint16_t>p[1])


cdef long long _clamped(object value) except? -1:
    """operator.index(value) saturated to int64 (only int32 matters)."""
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(PyNumber_Index(value), &overflow)
    if overflow > 0:
        return I32_MAX + 1
    if overflow < 0:
        return I32_MIN - 1
    return v


cdef int32_t _i32(object value, str msg) except? -1:
    cdef long long v = _clamped(value)
    if v < I32_MIN or v > I32_MAX:
        raise FrameError(msg)
    return <int32_t>v


cdef bytes _as_bytes(object data):
    """bytes as is; any other buffer (bytearray, memoryview) copied flat."""
    if type(data) is bytes:
        return <bytes>data
    return memoryview(data).tobytes()


cdef enum HeaderFault:
    HEADER_OK, BAD_PACKET_LEN, BAD_HEADER_LEN, TOO_BIG


cdef inline HeaderFault _header_fault(int32_t plen, int16_t hlen, long long max_size) noexcept nogil:
    """The checks shared by `decode` and `StreamDecoder`, in contract order."""
    if plen < HDR:
        return BAD_PACKET_LEN
    if hlen != HDR:
        return BAD_HEADER_LEN
    if plen > max_size:
        return TOO_BIG
    return HEADER_OK


cdef int _raise_fault(HeaderFault fault) except -1:
    if fault == BAD_PACKET_LEN:
        raise FrameError(ERR_BAD_PACKET_LEN)
    if fault == BAD_HEADER_LEN:
        raise FrameError(ERR_BAD_HEADER_LEN)
    raise FrameTooBig(ERR_TOO_BIG)


cdef bytes _frame(int32_t op, int32_t seq, const char* body, Py_ssize_t n):
    if n > MAX_BODY:
        raise FrameError(ERR_BODY_TOO_BIG)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, HDR + n)
    cdef unsigned char* p = <unsigned char*>PyBytes_AS_STRING(out)
    _put32(p + PLEN_OFF, <uint32_t>(HDR + n))
    _put16(p + HLEN_OFF, <uint16_t>HDR)
    _put16(p + VER_OFF, VER)
    _put32(p + OP_OFF, <uint32_t>op)
    _put32(p + SEQ_OFF, <uint32_t>seq)
    if n:
        memcpy(p + HDR, body, n)
    return out


def encode(op, seq, body=b""):
    """One frame; the header length is always 16, the version ours."""
    cdef int32_t o = _i32(op, ERR_OP_RANGE)
    cdef int32_t s = _i32(seq, ERR_SEQ_RANGE)
    cdef bytes b = _as_bytes(body)
    return _frame(o, s, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


def decode(data, max_size=DEFAULT_MAX_FRAME):
    """Exactly one frame from one WebSocket message: (op, seq, body)."""
    cdef long long cap = _clamped(max_size)
    cdef bytes b = _as_bytes(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    if n < HDR:
        raise FrameError(ERR_SHORT_HEADER)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef int32_t plen = _get32(p + PLEN_OFF)
    cdef HeaderFault fault = _header_fault(plen, _get16(p + HLEN_OFF), cap)
    if fault != HEADER_OK:
        _raise_fault(fault)
    if plen != n:
        raise FrameError(ERR_LENGTH_MISMATCH)
    return (_get32(p + OP_OFF), _get32(p + SEQ_OFF),
            PyBytes_FromStringAndSize(<const char*>p + HDR, n - HDR))


cdef class StreamDecoder:
    """Splits a byte stream (goim TCP) into frames, across any chunking.

    When nothing is pending, frames are cut straight from the fed bytes and
    only the incomplete tail is kept.  Otherwise the data joins one
    bytearray and consumed bytes are dropped with `del buf[:n]`, which
    CPython does in O(1) by moving the array's start: many small frames in
    one feed cost linear time.  A bad header fails as soon as its 16 bytes
    arrive, and the decoder then stays closed.
    """

    cdef bytearray _buf
    cdef long long _max
    cdef bint _closed

    def __init__(self, max_size=DEFAULT_MAX_FRAME):
        self._max = _clamped(max_size)
        self._buf = bytearray()
        self._closed = False

    @property
    def pending(self):
        """Bytes received but not yet returned as a frame."""
        return PyByteArray_GET_SIZE(self._buf)

    def feed(self, data):
        """Buffers `data`; returns every frame completed so far, in order."""
        if self._closed:
            raise FrameError(ERR_DECODER_CLOSED)
        cdef bytearray buf = self._buf
        cdef bint direct = PyByteArray_GET_SIZE(buf) == 0 and type(data) is bytes
        cdef const unsigned char* p
        cdef Py_ssize_t end
        if direct:
            p = <const unsigned char*>PyBytes_AS_STRING(data)
            end = PyBytes_GET_SIZE(data)
        else:
            buf += data
            p = <const unsigned char*>PyByteArray_AS_STRING(buf)
            end = PyByteArray_GET_SIZE(buf)
        # p stays valid: nothing below resizes buf or drops data until the end.
        cdef Py_ssize_t off = 0
        cdef list frames = self._split(p, end, &off)
        if not direct:
            if off:
                del buf[:off]
        elif off < end:
            PyByteArray_Resize(buf, end - off)
            memcpy(PyByteArray_AS_STRING(buf), p + off, end - off)
        return frames

    cdef list _split(self, const unsigned char* p, Py_ssize_t end, Py_ssize_t* consumed):
        """Whole frames of p[0:end]; sets *consumed to the bytes they span."""
        cdef Py_ssize_t off = 0
        cdef int32_t plen
        cdef HeaderFault fault
        cdef list frames = []
        while end - off >= HDR:
            plen = _get32(p + off + PLEN_OFF)
            fault = _header_fault(plen, _get16(p + off + HLEN_OFF), self._max)
            if fault != HEADER_OK:
                self._closed = True
                _raise_fault(fault)
            if end - off < plen:
                break
            frames.append((_get32(p + off + OP_OFF), _get32(p + off + SEQ_OFF),
                           PyBytes_FromStringAndSize(<const char*>p + off + HDR, plen - HDR)))
            off += plen
        consumed[0] = off
        return frames


def batch(frames, seq=0):
    """One op-9 frame carrying already-encoded frames back to back."""
    cdef int32_t s = _i32(seq, ERR_SEQ_RANGE)
    cdef bytes body = b"".join(frames)
    return _frame(OP_RAW, s, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))


def heartbeat_reply(seq, online):
    """The op-3 answer; `online` is clamped into the int32 the body holds."""
    cdef int32_t s = _i32(seq, ERR_SEQ_RANGE)
    cdef long long v = _clamped(online)
    cdef unsigned char body[4]    # == HEARTBEAT_BODY_SIZE, asserted at import
    if v > I32_MAX:
        v = I32_MAX
    elif v < I32_MIN:
        v = I32_MIN
    _put32(body, <uint32_t><int32_t>v)
    return _frame(OP_HEARTBEAT_REPLY, s, <const char*>body, HB_BODY)
