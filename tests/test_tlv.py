"""One suite for both TLV twins, plus properties that they agree byte for byte.

Every example test runs on the compiled twin ("cython") and the pure one
("python").  The cython cases skip when the extension is not built or
KEFU_NO_EXTENSIONS is set; with KEFU_EXPECT_EXTENSIONS=1 a guard test
fails instead, so CI cannot silently fall back to the slow twin.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kefu.tlv
from kefu import _tlv_py
from kefu.errors import FrameError, FrameTooBig
from kefu.protocol import CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, DEFAULT_MAX_FRAME, Op

try:
    from kefu import _tlv as _tlv_c
except ImportError:
    _tlv_c = None

ROOT = Path(__file__).resolve().parents[1]
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
_C_MISSING = _tlv_c is None or kefu.tlv.NO_EXTENSIONS
_WHY = "compiled codec not built" if _tlv_c is None else "KEFU_NO_EXTENSIONS is set"

IMPLS = [
    pytest.param(_tlv_c, id="cython", marks=pytest.mark.skipif(_C_MISSING, reason=_WHY)),
    pytest.param(_tlv_py, id="python"),
]
both_twins = pytest.mark.skipif(_C_MISSING, reason=_WHY)
props = settings(deadline=None, max_examples=300,
                 suppress_health_check=[HealthCheck.too_slow])

# The §1 layout written out independently of both twins.
HEADER = struct.Struct(">ihhii")


def raw(plen, hlen=16, ver=1, op=2, seq=0, body=b""):
    """A header with any field values, valid or not, then `body`."""
    return HEADER.pack(plen, hlen, ver, op, seq) + body


def outcome(fn, *args):
    """What a call did, comparable across twins: its value or its error."""
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # noqa: BLE001 - the class is part of the outcome
        return ("raise", type(exc), str(exc))


# --------------------------------------------------------------------- encode

@pytest.mark.parametrize("tlv", IMPLS)
def test_encode_matches_protocol_table(tlv):
    frame = tlv.encode(Op.AUTH, 1, b'{"a":1}')
    assert frame == bytes.fromhex("00000017" "0010" "0001" "00000007" "00000001") + b'{"a":1}'


@pytest.mark.parametrize("tlv", IMPLS)
def test_encode_empty_body_is_bare_header(tlv):
    assert tlv.encode(2, 0) == bytes.fromhex("00000010" "0010" "0001" "00000002" "00000000")


@pytest.mark.parametrize("tlv", IMPLS)
@pytest.mark.parametrize("body", [b"abc", bytearray(b"abc"), memoryview(b"xabcx")[1:4],
                                  memoryview(b"aXbXc")[::2]],
                         ids=["bytes", "bytearray", "memoryview", "strided-memoryview"])
def test_encode_accepts_any_bytes_like_body(tlv, body):
    assert tlv.encode(5, 9, body) == tlv.encode(5, 9, b"abc")


@pytest.mark.parametrize("tlv", IMPLS)
@pytest.mark.parametrize("body", ["text", 3, None], ids=["str", "int", "None"])
def test_encode_rejects_non_buffer_body(tlv, body):
    with pytest.raises(TypeError):
        tlv.encode(5, 9, body)


@pytest.mark.parametrize("tlv", IMPLS)
@pytest.mark.parametrize("op,seq", [(I32_MIN, I32_MAX), (I32_MAX, I32_MIN), (-1, -1), (0, 0)])
def test_encode_int32_bounds_round_trip(tlv, op, seq):
    assert tlv.decode(tlv.encode(op, seq, b"x")) == (op, seq, b"x")


@pytest.mark.parametrize("tlv", IMPLS)
@pytest.mark.parametrize("op,seq,message", [
    (I32_MAX + 1, 0, "op out of range"),
    (I32_MIN - 1, 0, "op out of range"),
    (1 << 100, 0, "op out of range"),
    (0, I32_MAX + 1, "seq out of range"),
    (0, -(1 << 100), "seq out of range"),
    (1 << 40, 1 << 40, "op out of range"),
])
def test_encode_out_of_range(tlv, op, seq, message):
    with pytest.raises(FrameError, match=f"^{message}$"):
        tlv.encode(op, seq)


@pytest.mark.parametrize("tlv", IMPLS)
def test_encode_rejects_non_integer_op(tlv):
    with pytest.raises(TypeError):
        tlv.encode(2.0, 0)


# --------------------------------------------------------------------- decode

@pytest.mark.parametrize("tlv", IMPLS)
def test_decode_heartbeat(tlv):
    assert tlv.decode(bytes.fromhex("00000010001000010000000200000007")) == (2, 7, b"")


@pytest.mark.parametrize("tlv", IMPLS)
@pytest.mark.parametrize("ver", [0, 1, 2, -1])
def test_decode_ignores_version(tlv, ver):
    assert tlv.decode(raw(19, ver=ver, op=5, seq=-3, body=b"abc")) == (5, -3, b"abc")


@pytest.mark.parametrize("tlv", IMPLS)
@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=lambda t: t.__name__)
def test_decode_accepts_any_bytes_like(tlv, wrap):
    op, seq, body = tlv.decode(wrap(raw(18, op=15, seq=4, body=b"hi")))
    assert (op, seq, body) == (15, 4, b"hi") and type(body) is bytes


DECODE_ERRORS = [
    # (id, data, max_size, exception class, message); order of checks matters
    ("empty", b"", DEFAULT_MAX_FRAME, FrameError, "short header"),
    ("15-bytes", raw(16)[:15], DEFAULT_MAX_FRAME, FrameError, "short header"),
    ("plen-15", raw(15), DEFAULT_MAX_FRAME, FrameError, "bad packet length"),
    ("plen-0", raw(0), DEFAULT_MAX_FRAME, FrameError, "bad packet length"),
    ("plen-negative", raw(I32_MIN), DEFAULT_MAX_FRAME, FrameError, "bad packet length"),
    ("plen-before-hlen", raw(3, hlen=0), DEFAULT_MAX_FRAME, FrameError, "bad packet length"),
    ("hlen-0", raw(16, hlen=0), DEFAULT_MAX_FRAME, FrameError, "bad header length"),
    ("hlen-17", raw(17, hlen=17, body=b"x"), DEFAULT_MAX_FRAME, FrameError, "bad header length"),
    ("hlen-negative", raw(16, hlen=-16), DEFAULT_MAX_FRAME, FrameError, "bad header length"),
    ("hlen-before-size", raw(I32_MAX, hlen=20), DEFAULT_MAX_FRAME, FrameError, "bad header length"),
    ("too-big", raw(I32_MAX), DEFAULT_MAX_FRAME, FrameTooBig, "frame too big"),
    ("too-big-small-max", raw(21, body=b"12345"), 20, FrameTooBig, "frame too big"),
    ("too-big-negative-max", raw(16), -5, FrameTooBig, "frame too big"),
    ("size-before-mismatch", raw(DEFAULT_MAX_FRAME + 1), DEFAULT_MAX_FRAME, FrameTooBig,
     "frame too big"),
    ("mismatch-short", raw(20, body=b"abc"), DEFAULT_MAX_FRAME, FrameError, "length mismatch"),
    ("mismatch-long", raw(17, body=b"ab"), DEFAULT_MAX_FRAME, FrameError, "length mismatch"),
    ("two-frames", raw(16) * 2, DEFAULT_MAX_FRAME, FrameError, "length mismatch"),
]


@pytest.mark.parametrize("tlv", IMPLS)
@pytest.mark.parametrize("data,max_size,cls,message", [c[1:] for c in DECODE_ERRORS],
                         ids=[c[0] for c in DECODE_ERRORS])
def test_decode_errors(tlv, data, max_size, cls, message):
    with pytest.raises(FrameError) as info:
        tlv.decode(data, max_size)
    assert type(info.value) is cls and str(info.value) == message


@pytest.mark.parametrize("tlv", IMPLS)
def test_decode_max_size_is_inclusive(tlv):
    frame = tlv.encode(5, 1, b"x" * 84)
    assert tlv.decode(frame, 100) == (5, 1, b"x" * 84)
    with pytest.raises(FrameTooBig):
        tlv.decode(frame, 99)


@pytest.mark.parametrize("tlv", IMPLS)
def test_decode_huge_max_size_is_no_limit(tlv):
    assert tlv.decode(raw(16), 1 << 80) == (2, 0, b"")


def test_error_close_codes():
    assert issubclass(FrameTooBig, FrameError)
    assert FrameError("x").close_code == CLOSE_PROTOCOL_ERROR
    assert FrameTooBig("x").close_code == CLOSE_TOO_BIG


# -------------------------------------------------------------- StreamDecoder

@pytest.mark.parametrize("tlv", IMPLS)
def test_stream_byte_at_a_time(tlv):
    frames = [tlv.encode(5, 1, b"hello"), tlv.encode(2, 2), tlv.encode(7, 3, b"{}")]
    data = b"".join(frames)
    dec, got = tlv.StreamDecoder(), []
    for i in range(len(data)):
        got += dec.feed(data[i:i + 1])
        assert dec.pending == (i + 1) - sum(len(f) for f in frames[:len(got)])
    assert got == [(5, 1, b"hello"), (2, 2, b""), (7, 3, b"{}")]
    assert dec.pending == 0


@pytest.mark.parametrize("tlv", IMPLS)
def test_stream_many_frames_in_one_feed_keeps_partial_tail(tlv):
    frames = [tlv.encode(5, i, str(i).encode()) for i in range(5000)]
    tail = tlv.encode(5, -1, b"tail")
    dec = tlv.StreamDecoder()
    got = dec.feed(bytearray(b"".join(frames) + tail[:10]))
    assert [seq for _, seq, _ in got] == list(range(5000))
    assert got[1234] == (5, 1234, b"1234")
    assert dec.pending == 10
    assert dec.feed(b"") == []
    assert dec.feed(memoryview(tail)[10:]) == [(5, -1, b"tail")]
    assert dec.pending == 0


@pytest.mark.parametrize("tlv", IMPLS)
def test_stream_rejects_oversized_header_without_waiting_for_body(tlv):
    dec = tlv.StreamDecoder(max_size=1024)
    assert dec.feed(raw(1025)[:15]) == []
    with pytest.raises(FrameTooBig, match="^frame too big$"):
        dec.feed(raw(1025)[15:])


@pytest.mark.parametrize("tlv", IMPLS)
@pytest.mark.parametrize("header,cls,message", [
    (raw(15), FrameError, "bad packet length"),
    (raw(-1, hlen=3), FrameError, "bad packet length"),
    (raw(20, hlen=12), FrameError, "bad header length"),
    (raw(DEFAULT_MAX_FRAME + 1, hlen=15), FrameError, "bad header length"),
    (raw(DEFAULT_MAX_FRAME + 1), FrameTooBig, "frame too big"),
], ids=["plen", "plen-before-hlen", "hlen", "hlen-before-size", "too-big"])
def test_stream_errors_then_closed(tlv, header, cls, message):
    dec = tlv.StreamDecoder()
    assert dec.feed(tlv.encode(2, 1)) == [(2, 1, b"")]
    with pytest.raises(FrameError) as info:
        dec.feed(header)
    assert type(info.value) is cls and str(info.value) == message
    for more in (tlv.encode(2, 2), b""):
        with pytest.raises(FrameError, match="^decoder closed$") as info:
            dec.feed(more)
        assert type(info.value) is FrameError


@pytest.mark.parametrize("tlv", IMPLS)
def test_stream_rejects_non_buffer_without_closing(tlv):
    dec = tlv.StreamDecoder()
    with pytest.raises(TypeError):
        dec.feed("text")
    assert dec.feed(tlv.encode(2, 1)) == [(2, 1, b"")]


# -------------------------------------------------------- batch and heartbeat

@pytest.mark.parametrize("tlv", IMPLS)
def test_batch_wraps_frames_in_one_raw_frame(tlv):
    inner = [tlv.encode(Op.MESSAGE, 0, b'{"id":1}'), tlv.encode(Op.MESSAGE, 0, b'{"id":2}')]
    op, seq, body = tlv.decode(tlv.batch(inner, seq=8))
    assert (op, seq, body) == (Op.RAW, 8, b"".join(inner))
    assert tlv.StreamDecoder().feed(body) == [(5, 0, b'{"id":1}'), (5, 0, b'{"id":2}')]
    assert tlv.batch(tuple(inner)) == tlv.encode(Op.RAW, 0, b"".join(inner))


@pytest.mark.parametrize("tlv", IMPLS)
def test_batch_edge_cases(tlv):
    assert tlv.batch([]) == tlv.encode(9, 0)
    with pytest.raises(FrameError, match="^seq out of range$"):
        tlv.batch([], seq=I32_MAX + 1)


@pytest.mark.parametrize("tlv", IMPLS)
@pytest.mark.parametrize("online,expected", [
    (0, 0), (42, 42), (I32_MAX, I32_MAX), (I32_MAX + 1, I32_MAX), (1 << 80, I32_MAX),
    (-7, -7), (I32_MIN - 1, I32_MIN),
])
def test_heartbeat_reply(tlv, online, expected):
    frame = tlv.heartbeat_reply(6, online)
    assert tlv.decode(frame) == (Op.HEARTBEAT_REPLY, 6, expected.to_bytes(4, "big", signed=True))
    assert frame == tlv.encode(3, 6, struct.pack(">i", expected))


# ------------------------------------------------------------ property tests

int32 = st.integers(I32_MIN, I32_MAX)
any_int = st.one_of(int32, st.integers(), st.sampled_from([I32_MIN - 1, I32_MAX + 1]))
frame_parts = st.tuples(int32, int32, st.binary(max_size=300))


@st.composite
def near_frames(draw):
    """Headers that are valid, nearly valid or wild, over random bodies."""
    body = draw(st.binary(max_size=80))
    plen = draw(st.one_of(st.just(16 + len(body)), st.integers(-20, 120), int32))
    hlen = draw(st.one_of(st.just(16), st.integers(-(1 << 15), (1 << 15) - 1)))
    ver, op, seq = draw(st.integers(-(1 << 15), (1 << 15) - 1)), draw(int32), draw(int32)
    return HEADER.pack(plen, hlen, ver, op, seq) + body


garbage = st.one_of(st.binary(max_size=120), near_frames(),
                    st.lists(near_frames(), max_size=4).map(b"".join))
max_sizes = st.one_of(st.just(DEFAULT_MAX_FRAME), st.integers(-5, 200), st.integers())


def split(data, cuts):
    """`data` cut at the given points (any order, duplicates allowed)."""
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])] or [b""]


def oracle_fault(plen, hlen, max_size):
    """PROTOCOL.md §1's header checks, in the contract's order, or None."""
    if plen < 16:
        return ("raise", FrameError, "bad packet length")
    if hlen != 16:
        return ("raise", FrameError, "bad header length")
    if plen > max_size:
        return ("raise", FrameTooBig, "frame too big")
    return None


def oracle_decode(data, max_size):
    if len(data) < 16:
        return ("raise", FrameError, "short header")
    plen, hlen, _ver, op, seq = HEADER.unpack_from(data)
    fault = oracle_fault(plen, hlen, max_size)
    if fault:
        return fault
    if plen != len(data):
        return ("raise", FrameError, "length mismatch")
    return ("ok", (op, seq, data[16:]))


def oracle_stream(data, max_size):
    """All frames of `data` parsed at once; then the fault or bytes left."""
    frames, off = [], 0
    while len(data) - off >= 16:
        plen, hlen, _ver, op, seq = HEADER.unpack_from(data, off)
        fault = oracle_fault(plen, hlen, max_size)
        if fault:
            return frames, fault
        if len(data) - off < plen:
            break
        frames.append((op, seq, data[off + 16:off + plen]))
        off += plen
    return frames, len(data) - off


def feed_all(tlv, chunks, max_size=DEFAULT_MAX_FRAME):
    """Feeds every chunk; returns each feed's outcome and pending count."""
    dec = tlv.StreamDecoder(max_size)
    return [outcome(dec.feed, c) + (dec.pending,) for c in chunks]


@pytest.mark.parametrize("tlv", IMPLS)
@props
@given(parts=frame_parts)
def test_prop_round_trip(tlv, parts):
    op, seq, body = parts
    frame = tlv.encode(op, seq, body)
    assert len(frame) == 16 + len(body)
    assert tlv.decode(frame) == (op, seq, body)
    assert frame == HEADER.pack(16 + len(body), 16, 1, op, seq) + body


@pytest.mark.parametrize("tlv", IMPLS)
@props
@given(parts=st.lists(frame_parts, max_size=20), cuts=st.lists(st.integers(0, 10_000)))
def test_prop_stream_split_anywhere(tlv, parts, cuts):
    data = b"".join(tlv.encode(*p) for p in parts)
    dec, got = tlv.StreamDecoder(), []
    for chunk in split(data, cuts):
        got += dec.feed(chunk)
    assert got == [tuple(p) for p in parts] == tlv.StreamDecoder().feed(data)
    assert got == [tlv.decode(tlv.encode(*p)) for p in parts]
    assert dec.pending == 0


@pytest.mark.parametrize("tlv", IMPLS)
@props
@given(data=garbage, max_size=max_sizes)
def test_prop_decode_garbage_matches_spec(tlv, data, max_size):
    assert outcome(tlv.decode, data, max_size) == oracle_decode(data, max_size)


@pytest.mark.parametrize("tlv", IMPLS)
@props
@given(data=garbage, cuts=st.lists(st.integers(0, 10_000), max_size=6), max_size=max_sizes)
def test_prop_stream_garbage_matches_spec(tlv, data, cuts, max_size):
    trace = feed_all(tlv, split(data, cuts), max_size)
    got = [f for kind, *rest in trace if kind == "ok" for f in rest[0]]
    frames, end = oracle_stream(data, max_size)
    errors = [t[:3] for t in trace if t[0] == "raise"]
    if isinstance(end, tuple):     # the stream breaks: once, then stays closed
        assert errors[0] == end and got == frames[:len(got)]
        assert all(e == ("raise", FrameError, "decoder closed") for e in errors[1:])
    else:
        assert errors == [] and got == frames and trace[-1][-1] == end


@both_twins
@props
@given(parts=frame_parts, online=any_int)
def test_twins_encode_identically(parts, online):
    op, seq, body = parts
    assert _tlv_c.encode(op, seq, body) == _tlv_py.encode(op, seq, body)
    assert _tlv_c.batch([body, body], seq) == _tlv_py.batch([body, body], seq)
    assert outcome(_tlv_c.heartbeat_reply, seq, online) == outcome(_tlv_py.heartbeat_reply, seq, online)


@both_twins
@props
@given(op=any_int, seq=any_int, online=any_int)
def test_twins_agree_on_any_integers(op, seq, online):
    assert outcome(_tlv_c.encode, op, seq) == outcome(_tlv_py.encode, op, seq)
    assert outcome(_tlv_c.batch, [], seq) == outcome(_tlv_py.batch, [], seq)
    assert outcome(_tlv_c.heartbeat_reply, seq, online) == outcome(_tlv_py.heartbeat_reply, seq, online)


@both_twins
@props
@given(data=garbage, max_size=max_sizes)
def test_twins_decode_garbage_identically(data, max_size):
    assert outcome(_tlv_c.decode, data, max_size) == outcome(_tlv_py.decode, data, max_size)


@both_twins
@props
@given(chunks=st.lists(garbage, min_size=1, max_size=6), max_size=max_sizes)
def test_twins_stream_garbage_identically(chunks, max_size):
    assert feed_all(_tlv_c, chunks, max_size) == feed_all(_tlv_py, chunks, max_size)


@both_twins
@pytest.mark.parametrize("call", [
    lambda m: m.encode(1, 2, "str"), lambda m: m.encode(1.5, 2), lambda m: m.decode("str"),
    lambda m: m.decode(b"", 1.5), lambda m: m.batch([b"a", "b"]), lambda m: m.batch(None),
    lambda m: m.heartbeat_reply(1, None), lambda m: m.StreamDecoder("big"),
    lambda m: m.StreamDecoder().feed(7),
], ids=["encode-str", "encode-float", "decode-str", "decode-float-max", "batch-str",
        "batch-none", "heartbeat-none", "decoder-str-max", "feed-int"])
def test_twins_reject_wrong_types_identically(call):
    c, p = outcome(call, _tlv_c), outcome(call, _tlv_py)
    assert c[0] == "raise" and c == p


# ------------------------------------------------------------------ selector

def test_selector_exports_the_chosen_twin():
    impl = _tlv_c if kefu.tlv.IMPLEMENTATION == "cython" else _tlv_py
    for name in ("encode", "decode", "StreamDecoder", "batch", "heartbeat_reply"):
        assert getattr(kefu.tlv, name) is getattr(impl, name)
    assert (kefu.tlv.HEADER_SIZE, kefu.tlv.DEFAULT_MAX_FRAME) == (16, 64 * 1024)


def test_compiled_codec_loaded_when_expected():
    """The CI guard: a build that silently fell back to Python fails here."""
    if os.environ.get("KEFU_EXPECT_EXTENSIONS") != "1":
        pytest.skip("KEFU_EXPECT_EXTENSIONS is not 1")
    assert kefu.tlv.IMPLEMENTATION == "cython"


@pytest.mark.parametrize("value,forced", [("1", True), ("yes", True), ("0", False), ("", False)],
                         ids=["1", "yes", "0", "empty"])
def test_no_extensions_env_switch(value, forced):
    env = dict(os.environ, KEFU_NO_EXTENSIONS=value,
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", "import kefu.tlv; print(kefu.tlv.IMPLEMENTATION)"],
                         env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    expected = "python" if forced or _tlv_c is None else "cython"
    assert out.stdout.strip() == expected
