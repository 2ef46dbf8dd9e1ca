"""Bad input, class by class: a clear error for the sender, no harm to anyone else.

* The TLV codec, both twins: mutated streams (hypothesis) and a coverage-less
  atheris run when atheris is installed; same outcome on both, only FrameError,
  bounded buffering.
* The session, over real TCP and WebSocket connections to a real comet worker
  (a `kefu run` subprocess): hypothesis-generated frames before and after auth,
  with the outcome predicted by a model of the protocol (closed with the right
  code, or still answering); then a concurrent campaign of random connections
  after which the worker still serves and its memory is bounded.
* HTTP, against a real API on a real port: malformed JSON and forms, wrong
  types, huge bodies, path traversal, disguised uploads, forged/expired keys,
  another room's key, another shop's agent, rate-limit bypass attempts, and
  XSS payloads end to end (stored and served back as the same text, pages
  under a CSP that runs no inline script).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kefu import _tlv_py, tlv
from kefu import client as kclient
from kefu.errors import FrameError, FrameTooBig
from kefu.protocol import DEFAULT_MAX_FRAME, Op
from ledger import ROOT, System, record, rss_kb

try:
    from kefu import _tlv as _tlv_c
except ImportError:            # pragma: no cover - no compiler
    _tlv_c = None

from tests.api_fixtures import *  # noqa: F401,F403,E402
from tests.api_fixtures import PASSWORD, png_bytes  # noqa: E402

pytestmark = pytest.mark.reliability

TWINS = [t for t in (_tlv_c, _tlv_py) if t is not None]
HEADER = struct.Struct(">ihhii")


# =============================================================== the TLV codec
def _frame(op: int, seq: int, body: bytes) -> bytes:
    return HEADER.pack(16 + len(body), 16, 1, op, seq) + body


frames_st = st.lists(st.tuples(st.integers(-(1 << 31), (1 << 31) - 1), st.integers(-(1 << 31), (1 << 31) - 1),
                               st.binary(max_size=64)), max_size=8)
mutation_st = st.lists(st.tuples(st.sampled_from(["flip", "set", "cut", "insert", "i32"]),
                                 st.integers(0, 10_000), st.integers(0, 255),
                                 st.sampled_from([0, 1, 15, 16, 17, 65536, 65537, 1 << 20, (1 << 31) - 1,
                                                  -1, -(1 << 31)])), max_size=6)


def mutate(data: bytes, mutations) -> bytes:
    buf = bytearray(data)
    for kind, pos, byte, i32 in mutations:
        if kind == "cut":
            del buf[pos % (len(buf) + 1):]
            continue
        if kind == "insert":
            buf[pos % (len(buf) + 1):pos % (len(buf) + 1)] = bytes([byte]) * (1 + byte % 7)
            continue
        if not buf:
            continue
        at = pos % len(buf)
        if kind == "flip":
            buf[at] ^= 1 << (byte % 8)
        elif kind == "set":
            buf[at] = byte
        else:                                    # an extreme int32 over a (header) field
            buf[at:at + 4] = struct.pack(">i", i32)
    return bytes(buf)


def stream_outcome(impl, data: bytes, cuts: list[int], max_size: int):
    """Frames and the error of one StreamDecoder fed `data` in pieces; pending stays bounded."""
    dec = impl.StreamDecoder(max_size)
    frames, bounds = [], sorted({c % (len(data) + 1) for c in cuts} | {len(data)})
    start = 0
    try:
        for end in bounds:
            frames += dec.feed(data[start:end])
            start = end
            assert dec.pending < max(max_size, 16), f"decoder holds {dec.pending} bytes (max {max_size})"
        return frames, None, dec.pending
    except FrameError as exc:
        return frames, (type(exc), str(exc)), None


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(frames=frames_st, mutations=mutation_st, cuts=st.lists(st.integers(0, 1 << 16), max_size=5),
       max_size=st.sampled_from([17, 64, 1024, DEFAULT_MAX_FRAME]))
def test_mutated_streams_get_the_same_verdict_from_both_codecs(frames, mutations, cuts, max_size):
    data = mutate(b"".join(_frame(*f) for f in frames), mutations)
    outcomes = [stream_outcome(impl, data, cuts, max_size) for impl in TWINS]
    assert all(o == outcomes[0] for o in outcomes), outcomes
    single = []
    for impl in TWINS:
        try:
            single.append(("ok", impl.decode(data, max_size)))
        except FrameError as exc:
            single.append(("err", type(exc), str(exc)))
    assert all(s == single[0] for s in single), single


@pytest.mark.parametrize("impl", TWINS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_codec_memory_and_time_are_bounded(impl):
    # a header announcing the maximum, fed one byte at a time: never more than max buffered
    dec = impl.StreamDecoder(4096)
    data = _frame(2, 1, b"x" * (4096 - 16))
    for i in range(len(data) - 1):
        assert dec.feed(data[i:i + 1]) == []
        assert dec.pending <= 4096
    assert dec.feed(data[-1:]) == [(2, 1, b"x" * (4096 - 16))]
    # a header announcing 2 GiB is refused at its 16th byte, nothing buffered for it
    dec = impl.StreamDecoder(4096)
    with pytest.raises(FrameTooBig):
        dec.feed(HEADER.pack((1 << 31) - 1, 16, 1, 7, 1))
    with pytest.raises(FrameError):
        dec.feed(b"more")                      # and it stays closed
    # 4 MiB of back-to-back tiny frames decode in linear time
    many = _frame(2, 0, b"") * (1 << 18)
    t0 = time.perf_counter()
    assert len(impl.StreamDecoder(4096).feed(many)) == 1 << 18
    assert time.perf_counter() - t0 < 20


ATHERIS_TARGET = ROOT / "tests" / "fuzz_tlv.py"


def test_atheris_finds_no_disagreement_or_crash_in_the_codecs(tmp_path):
    pytest.importorskip("atheris")
    runs = int(os.environ.get("KEFU_FUZZ_RUNS", "200000"))
    proc = subprocess.run([sys.executable, str(ATHERIS_TARGET), f"-runs={runs}", "-max_len=512",
                           "-seed=1234", f"-artifact_prefix={tmp_path}/"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Done" in proc.stderr or "Done" in proc.stdout, proc.stderr[-2000:]


# =============================================================== the session on the wire
HANDSHAKE = 1.0


@pytest.fixture(scope="module")
def comet(tmp_path_factory):
    """One comet worker (plus API) in a `kefu run`, with a 1 s handshake timeout."""
    env = {"KEFU_HANDSHAKE_TIMEOUT": str(HANDSHAKE), "KEFU_RATE_VISITORS_PER_IP": "100000",
           "KEFU_RATE_MESSAGES_PER_SENDER": "1000", "KEFU_RATE_MESSAGES_PER_IP": "0",
           "KEFU_ONLINE_FLUSH_INTERVAL": "1"}
    s = System(tmp_path_factory.mktemp("fuzz") / "var", workers=1, env=env).start()
    shop, password = s.demo_credentials()
    q = urllib.parse.urlencode({"shop_id": shop, "format": "json"})
    with urllib.request.urlopen(f"{s.api}/open/im?{q}") as r:
        s.visitor = json.loads(r.read())
    s.worker = s.comet_pids()[0]
    yield s
    s.kill_all()


class SyncWs:
    """The smallest blocking WebSocket client: any payload, any opcode, reads frames back."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /sub HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the upgrade")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0], head

    def send(self, payload: bytes, opcode: int = 2, masked: bool = True) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        bit = 0x80 if masked else 0
        if n < 126:
            head += bytes([bit | n])
        elif n < 65536:
            head += bytes([bit | 126]) + n.to_bytes(2, "big")
        else:
            head += bytes([bit | 127]) + n.to_bytes(8, "big")
        if masked:
            mask = os.urandom(4)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            head += mask
        with contextlib.suppress(OSError):
            self.sock.sendall(head + payload)

    def events(self, until: float):
        """Yield ("frame", (op, seq, body)) and finally ("close", code) or ("eof", None)."""
        while True:
            while True:
                ev = self._parse()
                if ev is None:
                    break
                yield ev
                if ev[0] == "close":
                    return
            remaining = until - time.monotonic()
            if remaining <= 0:
                yield ("timeout", None)
                return
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                yield ("timeout", None)
                return
            except OSError:
                chunk = b""
            if not chunk:
                yield ("eof", None)
                return
            self.buf += chunk

    def _parse(self):
        b = self.buf
        if len(b) < 2:
            return None
        opcode, n, pos = b[0] & 0x0F, b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, pos = int.from_bytes(b[2:4], "big"), 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, pos = int.from_bytes(b[2:10], "big"), 10
        if len(b) < pos + n:
            return None
        payload, self.buf = b[pos:pos + n], b[pos + n:]
        if opcode == 8:
            return ("close", int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005)
        if opcode == 2:
            return ("frame", tlv.decode(payload, 1 << 24))
        return ("other", opcode)

    def close(self) -> None:
        self.sock.close()


def tcp_events(sock: socket.socket, until: float):
    dec = tlv.StreamDecoder(1 << 24)
    while True:
        remaining = until - time.monotonic()
        if remaining <= 0:
            yield ("timeout", None)
            return
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            yield ("timeout", None)
            return
        except OSError:
            chunk = b""
        if not chunk:
            yield ("eof", None)
            return
        for f in dec.feed(chunk):
            yield ("frame", f)


def auth_frame(v: dict, seq: int = 1) -> bytes:
    return tlv.encode(Op.AUTH, seq, orjson.dumps({"key": v["key"], "mid": v["mid"], "room_id": v["room_id"]}))


def predict(payloads: list[bytes], authed: bool, ws: bool, max_frame: int = DEFAULT_MAX_FRAME):
    """What the server must do with these client bytes: ("close", codes) or ("alive"|"pending", None).

    TCP: the payloads are one stream.  WebSocket: one message each.  Before auth
    the first frame must be a valid op 7, which random input never is (keys are
    signed), so every pre-auth input ends in a close.
    """
    if ws:
        for p in payloads:
            if len(p) > max_frame:
                return "close", {1009}
            try:
                op, _, _ = tlv.decode(p, max_frame)
            except FrameTooBig:
                return "close", {1009}
            except FrameError:
                return "close", {1002}
            if not authed:
                return "close", ({1008} if op == Op.AUTH else {1002})
        return ("alive", None) if authed else ("close", {1008})       # handshake timeout
    dec = tlv.StreamDecoder(max_frame)
    try:
        frames = dec.feed(b"".join(payloads))
    except FrameError:
        return "close", None
    if not authed:
        return "close", None
    return ("pending" if dec.pending else "alive"), None


op_st = st.one_of(st.sampled_from([2, 3, 5, 6, 7, 8, 9, 14, 15, 16, 17, 0, -1, 1000]),
                  st.integers(-(1 << 31), (1 << 31) - 1))
body_st = st.one_of(st.binary(max_size=80), st.sampled_from([
    b"", b"0", b"-1", b"99999999999999999999999", b"{}", b"[]", b"null", b'{"after": -5}',
    b'{"before": "x"}', b'{"limit": 1e308}', b'{"room_id": "9000_x"}', b'{"id": 1, "room_id": 7}',
    b'{"key": "forged"}', b'{"key": 5}', b"\xff\xfe", b'{"after": 1, "limit": 100000}']))
frame_st = st.tuples(op_st, st.integers(-(1 << 31), (1 << 31) - 1), body_st)
wire_st = st.tuples(st.lists(frame_st, min_size=1, max_size=6), mutation_st.map(lambda m: m[:2]))


def _payloads(frames, mutations, ws: bool) -> list[bytes]:
    encoded = [_frame(*f) for f in frames]
    if ws:
        return [mutate(encoded[0], mutations)] + encoded[1:] if mutations else encoded
    return [mutate(b"".join(encoded), mutations)]


def run_case(comet, frames, mutations, *, ws: bool, authed: bool):
    """Send one generated case; -> (predicted, observed events)."""
    payloads = _payloads(frames, mutations, ws)
    want, codes = predict(payloads, authed, ws)
    marker = 0x5EED
    conn = SyncWs(comet.comet_port) if ws else socket.create_connection(("127.0.0.1", comet.tcp_port), timeout=5)
    send = conn.send if ws else conn.sendall
    try:
        until = time.monotonic() + 8
        if authed:
            send(auth_frame(comet.visitor))
            events = conn.events(until) if ws else tcp_events(conn, until)
            for kind, value in events:
                if kind == "frame" and value[0] == Op.AUTH_REPLY:
                    break
                assert kind == "frame", f"auth failed: {kind} {value}"
        for p in payloads:
            with contextlib.suppress(OSError):
                send(p)
        if want == "pending":
            return want, codes, []
        with contextlib.suppress(OSError):
            send(tlv.encode(Op.HEARTBEAT, marker))
        until = time.monotonic() + HANDSHAKE + 6
        seen = []
        for kind, value in (conn.events(until) if ws else tcp_events(conn, until)):
            seen.append((kind, value[0] if kind == "frame" else value))
            if kind == "frame" and value[0] == Op.HEARTBEAT_REPLY and value[1] == marker:
                break
        return want, codes, seen
    finally:
        conn.close()


def check_case(want, codes, seen):
    if want == "pending":
        return
    last = seen[-1] if seen else ("nothing", None)
    if want == "alive":
        assert last == ("frame", Op.HEARTBEAT_REPLY), f"expected an answer, got {seen}"
    else:
        assert last[0] in ("close", "eof"), f"expected a close, got {seen}"
        if codes is not None:                                   # WebSocket: the close code
            assert last == ("close", last[1]) and last[1] in codes, f"close code {last}, expected {codes}"
        ops = [v for k, v in seen if k == "frame"]
        assert Op.DISCONNECT in ops or not ops or ops[-1] == Op.DISCONNECT or last[0] == "close", seen


fuzz_settings = settings(deadline=None, max_examples=int(os.environ.get("KEFU_FUZZ_EXAMPLES", "60")),
                         suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("ws", [False, True], ids=["tcp", "ws"])
@pytest.mark.parametrize("authed", [False, True], ids=["before-auth", "after-auth"])
def test_session_fuzz_gets_the_predicted_verdict(comet, ws, authed):
    pid = comet.worker

    @fuzz_settings
    @given(case=wire_st)
    def one(case):
        frames, mutations = case
        want, codes, seen = run_case(comet, frames, mutations, ws=ws, authed=authed)
        check_case(want, codes, seen)
        assert pid in comet.comet_pids(), "the comet worker died"
    one()
    assert "Traceback" not in comet.log(), comet.log()[-3000:]


def test_websocket_level_garbage_is_refused(comet):
    """Text messages, unmasked frames, reserved opcodes, oversize messages: closed, worker fine."""
    cases = [
        (lambda w: w.send(b"hello", opcode=1), {1002, 1003}),                    # text
        (lambda w: w.send(b"x", opcode=3), {1002}),                              # reserved opcode
        (lambda w: w.send(b"\x00" * (DEFAULT_MAX_FRAME + 1)), {1009}),           # above max_frame
        (lambda w: w.send(_frame(7, 1, b"x" * 100)[:10]), {1002}),               # short TLV header
        (lambda w: w.send(HEADER.pack(1 << 20, 16, 1, 7, 1)), {1009, 1002}),     # announces 1 MiB
        (lambda w: w.send(auth_frame(comet.visitor), masked=False), {1002}),     # unmasked: RFC 6455 §5.1
    ]
    for action, codes in cases:
        w = SyncWs(comet.comet_port)
        try:
            action(w)
            events = list(w.events(time.monotonic() + HANDSHAKE + 6))
            assert events[-1][0] in ("close", "eof"), events
            if events[-1][0] == "close":
                assert events[-1][1] in codes, (events, codes)
        finally:
            w.close()
    assert comet.worker in comet.comet_pids()


async def _campaign_connection(comet, rng: random.Random, stats: dict) -> None:
    """One random connection: TCP or WebSocket, maybe authenticated, then garbage."""
    ws = rng.random() < 0.5
    authed = rng.random() < 0.5
    frames = [(rng.choice([2, 7, 14, 16, 3, 0, 1000, rng.getrandbits(31)]), rng.getrandbits(31),
               rng.randbytes(rng.randrange(0, 200))) for _ in range(rng.randrange(1, 8))]
    data = b"".join(_frame(*f) for f in frames)
    data = mutate(data, [(rng.choice(["flip", "set", "cut", "insert", "i32"]), rng.randrange(10_000),
                          rng.randrange(256), rng.choice([0, 16, 17, 1 << 20, -1, (1 << 31) - 1]))
                         for _ in range(rng.randrange(0, 3))])
    try:
        if ws:
            c = await kclient.connect(comet.ws, lean=True, timeout=10)
        else:
            c = await kclient.connect(comet.tcp, timeout=10)
        if authed:
            v = comet.visitor
            await c.auth(v["key"], mid=v["mid"], room_id=v["room_id"], timeout=10)
        if ws:
            for i in range(0, len(data), 97):
                c.send_raw(data[i:i + 97])
        else:
            c.send_raw(data)
        try:
            await c.heartbeat(timeout=HANDSHAKE + 1)
            stats["alive"] += 1
        except kclient.Closed:
            stats["closed"] += 1
        except asyncio.TimeoutError:
            stats["pending"] += 1
        await asyncio.wait_for(c.close(), 10)
    except (kclient.Closed, ConnectionError, OSError) as exc:
        stats["refused"] += 1
        stats.setdefault("why", set()).add(type(exc).__name__)


async def test_random_connection_campaign_leaves_the_worker_serving_and_bounded(comet):
    """1,500 random connections, 250 at a time: afterwards a real client is served,
    the worker holds no session, and its memory grew by a bounded amount."""
    n = int(os.environ.get("KEFU_FUZZ_CONNECTIONS", "1500"))
    rng = random.Random(20261127)
    stats = {"alive": 0, "closed": 0, "pending": 0, "refused": 0}
    # warm-up round so that allocator arenas exist before the baseline
    await asyncio.gather(*(_campaign_connection(comet, rng, stats) for _ in range(100)))
    await asyncio.sleep(HANDSHAKE + 1.5)
    base = rss_kb(comet.worker)
    t0 = time.monotonic()
    for _ in range(n // 250):
        await asyncio.gather(*(_campaign_connection(comet, rng, stats) for _ in range(250)))
    took = time.monotonic() - t0
    await asyncio.sleep(HANDSHAKE + 1.5)
    after = rss_kb(comet.worker)
    c = await kclient.connect(comet.tcp)
    v = comet.visitor
    await c.auth(v["key"], mid=v["mid"], room_id=v["room_id"])
    assert await c.heartbeat() >= 0
    await c.close()
    assert comet.worker in comet.comet_pids(), "the worker died"
    assert "Traceback" not in comet.log(), comet.log()[-3000:]
    growth = (after - base) / 1024
    assert growth < 24, f"worker RSS grew {growth:.1f} MiB over {n} fuzz connections"
    stats.pop("why", None)
    record("session fuzz campaign (random/mutated frames, TCP+WS)", connections=n + 100,
           outcomes=stats, rss_growth_mib=round(growth, 1), took_s=round(took, 1), lost=0)


# =============================================================== HTTP
NO_UPLOAD_LIMITS = {"rate_uploads_per_sender": 1000.0, "rate_uploads_per_ip": 0.0}

def _json_ok(status, body):
    assert isinstance(body, dict) and body.get("success") is False, body
    assert isinstance(body.get("msg"), str) and body["msg"], body


async def _post_raw(s: aiohttp.ClientSession, url: str, data, ctype: str | None, params=None):
    headers = {"Content-Type": ctype} if ctype else {}
    async with s.post(url, data=data, headers=headers, params=params) as r:
        text = await r.text()
        return r.status, text, r.headers


async def test_malformed_json_is_a_400_never_a_500(api):
    page, s = await api.visitor()
    url, params = api.url("/open/push"), {"mid": page["mid"], "shop_id": page["shop_id"]}
    bodies = [b"{", b"[1, 2]", b'"text"', b"null", b"\xff\xfe\x00", b"{'single': 1}", b"[" * 100_000,
              b'{"msg": NaN}', b'{"msg": {"nested": 1}, "room_id": "x"}', b'{"msg": [1, 2]}',
              b'{"room_id": {"$ne": 1}, "msg": "x"}', b'{"a": 1} trailing', b'{"msg": "\\ud800"}']
    for body in bodies:
        for path in ("/open/push", "/open/login", "/open/im", "/open/finduserlist", "/open/block"):
            status, text, headers = await _post_raw(s, api.url(path), body, "application/json", params)
            assert status in (400, 401, 403, 413), (path, body[:40], status, text)
            _json_ok(status, json.loads(text))
            assert headers["Content-Type"].startswith("application/json")
    status, text, _ = await _post_raw(s, url, b"", "application/json", params)
    assert status in (400, 403)


async def test_malformed_forms_are_a_400_never_a_500(api_factory):
    api = await api_factory(**NO_UPLOAD_LIMITS)
    page, s = await api.visitor()
    params = {"mid": page["mid"], "shop_id": page["shop_id"]}
    cases = [
        (b"msg=%ZZ&room_id=%%%", "application/x-www-form-urlencoded"),
        (b"\xff\xfe=\xff&msg=\x00", "application/x-www-form-urlencoded"),
        (b"--xx\r\nContent-Disposition: form-data; name=\"msg\"\r\n\r\nhi\r\n", "multipart/form-data"),
        (b"garbage without boundary", "multipart/form-data; boundary="),
        (b"--b\r\nbroken", "multipart/form-data; boundary=b"),
        (b"=&=&&&=", "application/x-www-form-urlencoded"),
        (b"msg=hi", "application/x-www-form-urlencoded; charset=ebcdic-xx"),
        (b"msg=hi", "text/plain"),
        (b"\x00" * 100, "application/octet-stream"),
    ]
    wrong = []
    for body, ctype in cases:
        for path in ("/open/push", "/open/login", "/open/im", "/open/finduserlist"):
            status, text, _ = await _post_raw(s, api.url(path), body, ctype, None if path == "/open/im" else params)
            if status not in (400, 401, 403, 404, 413):
                wrong.append((path, body[:30], ctype, status, text[:80]))
            else:
                _json_ok(status, json.loads(text))
    for body, ctype in cases:                           # the upload route reads multipart itself
        status, text, _ = await _post_raw(s, api.url("/upload/file"), body, ctype, {"key": page["key"]})
        if status not in (400, 413, 429):
            wrong.append(("/upload/file", body[:30], ctype, status, text[:80]))
    assert not wrong, "\n".join(map(str, wrong))


async def test_wrong_types_and_ranges_are_refused_with_a_reason(api):
    page, s = await api.visitor()
    agent = await api.agent()
    params = {"mid": page["mid"], "shop_id": page["shop_id"]}
    good = {"type": "text", "msg": "hi", "room_id": page["room_id"], "key": page["key"]}
    bad_push = [{"type": "video"}, {"type": "TEXT"}, {"msg": ""}, {"msg": "   "}, {"msg": "x" * 4001},
                {"room_id": ""}, {"room_id": "../../etc"}, {"room_id": "a" * 5000},
                {"client_msg_id": "has spaces"}, {"client_msg_id": "x" * 65}, {"type": "image", "msg": "http://evil/x.png"},
                {"type": "image", "msg": "/upload/../../secret"}, {"mid": "agent:8000"}]
    for change in bad_push:
        data = {**good, **change}
        q = dict(params, mid=data.pop("mid", params["mid"]))
        async with s.post(api.url("/open/push"), params=q, data=data) as r:
            assert r.status in (400, 403), (change, r.status, await r.text())
            _json_ok(r.status, await r.json())
    async with s.post(api.url("/open/push"), params=params,
                      json={**good, "msg": ["list"]}) as r:
        assert r.status == 400, await r.text()
    for q in ({"limit": "-1"}, {"limit": "abc"}, {"limit": "100000"}, {"page": "0"}, {"offset": "1e9"},
              {"since": "-5", "flag": "1"}, {"limit": str(10 ** 30)}):
        async with agent.post(api.url("/open/finduserlist"), data=q) as r:
            assert r.status == 400, (q, r.status, await r.text())
    for q in ({"mid": page["mid"], "seq": "x"}, {"mid": "bad mid!"}, {"mid": page["mid"], "seq": str(1 << 60)}):
        async with agent.get(api.url("/open/com"), params={**q, "format": "json"}) as r:
            assert r.status == 400, (q, r.status, await r.text())
    for q in ({"shop_id": "8000", "mid": "a:b"}, {"shop_id": "x" * 40}, {"shop_id": "../8000"},
              {"shop_id": "8000", "face": "javascript:alert(1)"}, {"shop_id": "8000", "nickname": "n" * 65}):
        async with api.session().get(api.url("/open/im"), params={**q, "format": "json"}) as r:
            assert r.status in (400, 404), (q, r.status, await r.text())
    # the sender is unharmed by all of it
    async with s.post(api.url("/open/push"), params=params, data=good) as r:
        assert r.status == 200, await r.text()


async def test_huge_bodies_are_refused_before_they_are_read(api):
    page, s = await api.visitor()
    params = {"mid": page["mid"], "shop_id": page["shop_id"]}
    big = b"x" * (api.settings.body_max_bytes + 1)
    status, text, _ = await _post_raw(s, api.url("/open/push"), b"msg=" + big, "application/x-www-form-urlencoded", params)
    assert status == 413, text
    status, text, _ = await _post_raw(s, api.url("/open/push"), b'{"msg": "' + big + b'"}', "application/json", params)
    assert status == 413, text

    async def chunks():
        for _ in range(64):
            yield b"y" * 16384
    async with s.post(api.url("/open/push"), params=params, data=chunks(),
                      headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
        assert r.status == 413, await r.text()
    # an upload over the limit, announced and streamed
    form = aiohttp.FormData()
    form.add_field("file", png_bytes(api.settings.upload_max_bytes + 10), filename="a.png", content_type="image/png")
    async with s.post(api.url("/upload/file"), params={"key": page["key"]}, data=form) as r:
        assert r.status == 413, await r.text()
    # an enormous header and an enormous URL are refused by the HTTP layer, not a handler
    async with s.get(api.url("/open/im"), params={"shop_id": "8000", "x": "y" * 70_000}) as r:
        assert r.status in (400, 414, 431), r.status
    async with s.get(api.url("/healthz"), headers={"X-Big": "z" * 70_000}) as r:
        assert r.status in (400, 431), r.status
    # and the server is fine
    async with s.post(api.url("/open/push"), params=params,
                      data={"type": "text", "msg": "ok", "room_id": page["room_id"], "key": page["key"]}) as r:
        assert r.status == 200, await r.text()


async def _upload(s, api, key, data: bytes, filename: str, ctype: str):
    form = aiohttp.FormData()
    form.add_field("file", data, filename=filename, content_type=ctype)
    async with s.post(api.url("/upload/file"), params={"key": key}, data=form) as r:
        return r.status, await r.json()


async def test_path_traversal_in_upload_names_and_urls_reaches_nothing(api_factory):
    api = await api_factory(**NO_UPLOAD_LIMITS)
    page, s = await api.visitor()
    secret_file = api.settings.data_path / "secret"
    assert secret_file.exists()
    secret = secret_file.read_bytes().strip()
    before = set(api.settings.data_path.rglob("*"))
    for name in ("../../../../etc/passwd.png", "..\\..\\secret.png", "/etc/passwd", "a/../../b.png",
                 "%2e%2e%2fsecret.png", "x.png%00.html", "....//....//secret.png", ".htaccess"):
        status, body = await _upload(s, api, page["key"], png_bytes(), name, "image/png")
        assert status == 200, body
        assert body["url"].startswith("/upload/") and "/" not in body["url"][len("/upload/"):]
        assert ".." not in body["url"] and body["url"].endswith(".png")
    created = set(api.settings.data_path.rglob("*")) - before
    uploads = api.settings.data_path / "uploads"
    assert all(p == uploads or uploads in p.parents for p in created), created
    assert not Path("/etc/passwd.png").exists()
    for path in ("/upload/../secret", "/upload/..%2fsecret", "/upload/%2e%2e/secret", "/upload/%2e%2e%2fsecret",
                 "/upload/....//secret", "/upload/AAAAAAAAAAAAAAAAAAAAAA.png", "/upload/..%5csecret",
                 "/..%2fsecret", "/%2e%2e/%2e%2e/etc/passwd", "/chat.html%00.png", "/.env", "/../secret",
                 "/frontend/../../var/secret", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/upload/",
                 "//etc/passwd", "/%252e%252e/secret"):
        async with s.get(api.url(path), allow_redirects=False) as r:
            data = await r.read()
            assert r.status in (301, 302, 400, 403, 404), (path, r.status)
            assert secret not in data and b"root:x:0" not in data, path


async def test_non_images_disguised_as_images_are_refused(api_factory):
    api = await api_factory(**NO_UPLOAD_LIMITS)
    page, s = await api.visitor()
    disguised = [
        (b"<html><script>alert(1)</script></html>", "cat.png", "image/png"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "cat.svg", "image/svg+xml"),
        (b'<?xml version="1.0"?><svg onload="alert(1)"></svg>', "cat.gif", "image/gif"),
        (b"<?php system($_GET['c']); ?>", "cat.jpg", "image/jpeg"),
        (b"MZ\x90\x00" + os.urandom(200), "cat.webp", "image/webp"),
        (b"%PDF-1.7\n", "cat.png", "image/png"),
        (b"", "empty.png", "image/png"),
        (b"\x89PNG", "short.png", "image/png"),                  # a signature prefix, not the signature
        (b"RIFF\x00\x00\x00\x00WEBX", "cat.webp", "image/webp"),
    ]
    for data, name, ctype in disguised:
        status, body = await _upload(s, api, page["key"], data, name, ctype)
        assert status == 400, (name, data[:20], status, body)
        _json_ok(status, body)
    # a polyglot (real PNG signature, HTML after it) is stored as what its bytes say, served inert
    poly = png_bytes() + b"<html><script>alert(1)</script></html>"
    status, body = await _upload(s, api, page["key"], poly, "x.html", "text/html")
    assert status == 200, body
    async with s.get(api.url(body["url"])) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "image/png"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in r.headers["Content-Security-Policy"]
        assert "script-src" not in r.headers["Content-Security-Policy"]
    # an image message may only name our own uploads
    params = {"mid": page["mid"], "shop_id": page["shop_id"]}
    for url in ("javascript:alert(1)", "data:text/html,<script>alert(1)</script>", "//evil.example/x.png",
                body["url"] + "?x=<script>", body["url"].replace(".png", ".html")):
        async with s.post(api.url("/open/push"), params=params, data={
                "type": "image", "msg": url, "room_id": page["room_id"], "key": page["key"]}) as r:
            assert r.status == 400, (url, await r.text())


async def test_forged_and_expired_keys_are_refused(api_factory):
    api = await api_factory(**NO_UPLOAD_LIMITS)
    page, s = await api.visitor()
    params = {"mid": page["mid"], "shop_id": page["shop_id"]}
    key = page["key"]
    from kefu.tokens import Signer
    forged = [
        key[:-2] + ("AA" if key[-2:] != "AA" else "BB"),                         # signature changed
        key[:5] + ("x" if key[5] != "x" else "y") + key[6:],                     # payload changed
        Signer(b"another-secret-entirely-32-bytes!").mint_key(page["mid"], page["room_id"], shop="8000", ttl=600),
        api.signer.mint_key(page["mid"], page["room_id"], shop="8000", ttl=-5),  # expired
        "", "null", "x" * 16_000, key + key, "..", "\x00" * 10,
    ]
    upload_ok = 0
    for bad in forged:
        async with s.post(api.url("/open/push"), params=params, data={
                "type": "text", "msg": "hi", "room_id": page["room_id"], "key": bad}) as r:
            # an empty key falls back to the same-origin kefu_key cookie: allowed (it is the visitor's own)
            if bad == "":
                assert r.status == 200, await r.text()
                continue
            assert r.status in (403, 413), (bad[:30], r.status, await r.text())
        async with s.get(api.url("/open/readmark"), params={"room_id": page["room_id"], "key": bad}) as r:
            if bad:
                assert r.status in (403, 413), (bad[:30], r.status)
        async with aiohttp.ClientSession() as fresh:   # no cookie to fall back on
            status, body = await _upload(fresh, api, bad, png_bytes(), "a.png", "image/png")
            if status == 200:
                upload_ok += 1
            assert status in (400, 403, 413), (bad[:30], status, body)
    assert upload_ok == 0
    # forged agent sessions
    for cookie in ("8000.9999999999.AAAA", api.signer.mint_session("8000", -5), "", "x" * 5000):
        async with aiohttp.ClientSession(cookies={"kefu_session": cookie}) as fresh:
            async with fresh.post(api.url("/open/finduserlist"), data={"shop_id": "8000"}) as r:
                assert r.status == 401, (cookie[:20], r.status, await r.text())


async def test_a_key_for_one_room_is_refused_on_another(api):
    a, sa = await api.visitor()
    b, _ = await api.visitor()
    async with aiohttp.ClientSession() as s:              # no cookies: only the key speaks
        for room in (b["room_id"], "9000_" + a["mid"], "8000_agent:8000", a["room_id"] + "x"):
            async with s.post(api.url("/open/push"), params={"mid": a["mid"], "shop_id": "8000"},
                              data={"type": "text", "msg": "hi", "room_id": room, "key": a["key"]}) as r:
                assert r.status in (400, 403), (room, r.status, await r.text())
            async with s.get(api.url("/open/readmark"), params={"room_id": room, "key": a["key"]}) as r:
                assert r.status in (400, 403), (room, r.status)
        # claiming to be b with a's key
        async with s.post(api.url("/open/push"), params={"mid": b["mid"], "shop_id": "8000"},
                          data={"type": "text", "msg": "hi", "room_id": b["room_id"], "key": a["key"]}) as r:
            assert r.status == 403, await r.text()
    history = await api.store.history(b["room_id"])
    assert history.messages == []


async def test_an_agent_of_one_shop_gets_nothing_of_another(api):
    v9, _ = await api.visitor("9000")
    agent8 = await api.agent("8000")
    calls = [
        ("POST", "/open/finduserlist", {"shop_id": "9000"}),
        ("GET", "/open/com", {"shop_id": "9000", "mid": v9["mid"], "format": "json"}),
        ("POST", "/open/push", {"room_id": v9["room_id"], "msg": "hi", "type": "text"}),
        ("POST", "/open/push", {"room_id": v9["room_id"], "msg": "hi", "type": "text", "shop_id": "9000"}),
        ("POST", "/open/block", {"shop_id": "9000", "mid": v9["mid"]}),
        ("GET", "/open/readmark", {"room_id": v9["room_id"]}),
        ("GET", "/open/com", {"mid": v9["mid"], "format": "json"}),                  # 8000_<v9 mid>: own shop, fine
    ]
    for method, path, data in calls:
        kw = {"params": data} if method == "GET" else {"data": data}
        async with agent8.request(method, api.url(path), **kw) as r:
            body = await r.json()
            if path == "/open/com" and "shop_id" not in data:
                assert r.status == 200 and body["room_id"] == "8000_" + v9["mid"], body
                agent_key = body["key"]
                continue
            assert r.status == 403, (path, data, r.status, body)
    # the 8000 agent key is no key for a 9000 room either
    async with aiohttp.ClientSession() as s:
        async with s.post(api.url("/open/push"), params={"mid": "agent:8000", "shop_id": "9000"},
                          data={"type": "text", "msg": "hi", "room_id": v9["room_id"], "key": agent_key}) as r:
            assert r.status in (400, 403), await r.text()
    assert (await api.store.history(v9["room_id"])).messages == []
    async with agent8.post(api.url("/open/finduserlist"), data={}) as r:
        rooms = [row["room_id"] for row in (await r.json())["data"]]
        assert all(room.startswith("8000_") for room in rooms), rooms


async def test_rate_limit_bypass_attempts_fail(api_factory):
    api = await api_factory()                      # default limits, trust_proxy off
    # new visitors per IP: rotating X-Forwarded-For, mids and user agents changes nothing
    statuses = []
    for i in range(40):
        s = api.session()
        async with s.get(api.url("/open/im"), params={"shop_id": "8000", "format": "json", "mid": f"m{i}x"},
                         headers={"X-Forwarded-For": f"10.9.{i}.{i}", "X-Real-IP": f"10.8.{i}.1",
                                  "User-Agent": f"agent-{i}"}) as r:
            statuses.append(r.status)
    assert statuses.count(200) <= 21 and 429 in statuses, statuses
    # messages per sender: fresh client_msg_ids, JSON vs form, cookie vs key
    api2 = await api_factory(rate_visitors_per_ip=1000.0, rate_messages_per_ip=0.0)
    page, s = await api2.visitor()
    params = {"mid": page["mid"], "shop_id": page["shop_id"]}
    codes = []
    for i in range(40):
        data = {"type": "text", "msg": f"m{i}", "room_id": page["room_id"], "client_msg_id": f"id-{i}"}
        if i % 2:
            data["key"] = page["key"]
            req = s.post(api2.url("/open/push"), params=params, json=data,
                         headers={"X-Forwarded-For": f"10.1.1.{i}"})
        else:
            req = s.post(api2.url("/open/push"), params=params, data=data)     # the key cookie
        async with req as r:
            codes.append(r.status)
            if r.status == 429:
                assert int(r.headers["Retry-After"]) >= 1
    assert codes.count(200) <= 22 and 429 in codes, codes
    # login brute force: the right password after the limit is still refused (429), rotating XFF too
    api3 = await api_factory()
    s3 = api3.session()
    login = []
    for i in range(8):
        async with s3.post(api3.url("/open/login"), data={"shop_id": "8000", "password": f"wrong{i}"},
                           headers={"X-Forwarded-For": f"10.2.2.{i}"}) as r:
            login.append(r.status)
    async with s3.post(api3.url("/open/login"), data={"shop_id": "8000", "password": PASSWORD["8000"]}) as r:
        login.append(r.status)
    assert login[:5] == [403] * 5 and set(login[5:]) == {429}, login


XSS = ["<img src=x onerror=alert(1)>", "<script>alert(1)</script>", "\"><svg/onload=alert(1)>",
       "javascript:alert(1)", "{{constructor.constructor('alert(1)')()}}", "<iframe srcdoc='<script>alert(1)</script>'>",
       "\u202e<b>rtl</b>", "&lt;script&gt;", "' onmouseover='alert(1)"]


async def test_xss_payloads_are_stored_and_served_back_as_the_same_text(comet):
    """End to end through a real `kefu run`: posted HTML comes back from history (comet
    sync), live delivery and the conversation list as the very same string, every JSON
    answer is JSON under `default-src 'none'`, and the pages run no inline script."""
    shop, password = comet.demo_credentials()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.get(f"{comet.api}/open/im", params={"shop_id": shop, "format": "json",
                                                             "nickname": XSS[0],
                                                             "url": "https://shop.example/?q=" + XSS[1]}) as r:
            assert r.status == 200, await r.text()
            v = await r.json()
            assert v["nickname"] == XSS[0]
            assert r.headers["Content-Type"].startswith("application/json")
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        async with http.get(f"{comet.api}/open/im", params={"shop_id": shop, "nickname": XSS[1] + "\r\nX-Evil: 1"},
                            allow_redirects=False) as r:
            assert r.status in (302, 400)
            assert "X-Evil" not in r.headers
            if r.status == 302:
                assert "<" not in r.headers["Location"] and "\n" not in r.headers["Location"]
        live = await kclient.connect(comet.ws)
        await live.auth(v["key"], mid=v["mid"], room_id=v["room_id"])
        ids = []
        for text in XSS:
            async with http.post(f"{comet.api}/open/push", params={"mid": v["mid"], "shop_id": shop},
                                 data={"type": "text", "msg": text, "room_id": v["room_id"], "key": v["key"]}) as r:
                body = await r.json()
                assert r.status == 200, body
                assert body["data"]["msg"] == text
                ids.append(body["id"])
        got_live = await live.messages(len(XSS))
        assert [m["msg"] for m in got_live] == XSS
        history = await live.sync(after=0)
        assert [m["msg"] for m in history if m.get("id") in ids] == XSS
        await live.close()
        agent = await _agent(comet.api, shop, password)
        async with agent.post(f"{comet.api}/open/finduserlist", data={"shop_id": shop}) as r:
            rows = {row["room_id"]: row for row in (await r.json())["data"]}
            assert rows[v["room_id"]]["last"]["msg"] == XSS[-1]
            assert rows[v["room_id"]]["user"]["nickname"] == XSS[0]
        await agent.close()
        for page in ("/chat.html", "/info.html", "/"):
            async with http.get(f"{comet.api}{page}") as r:
                assert r.status == 200
                csp = r.headers["Content-Security-Policy"]
                script = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
                assert "'unsafe-inline'" not in script and "'unsafe-eval'" not in script, csp
                assert "object-src 'none'" in csp and "base-uri 'none'" in csp
                assert r.headers["X-Content-Type-Options"] == "nosniff"


async def _agent(api: str, shop: str, password: str) -> aiohttp.ClientSession:
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with http.post(f"{api}/open/login", data={"shop_id": shop, "password": password}) as r:
        assert r.status == 200
    return http


async def test_comet_refuses_forged_keys_foreign_rooms_and_other_shops(comet):
    """The comet side of the key checks: auth refused with 1008; an authenticated
    connection asking for a room its key does not grant gets nothing."""
    v = comet.visitor
    from kefu.tokens import Signer, load_secret
    from kefu.config import Settings
    signer = Signer(load_secret(Settings(data_dir=str(comet.data_dir)), "secret"))
    bad_auths = [
        {"key": v["key"][:-2] + "AA", "mid": v["mid"], "room_id": v["room_id"]},
        {"key": signer.mint_key(v["mid"], v["room_id"], shop="8000", ttl=-1)},
        {"key": Signer(b"x" * 32).mint_key(v["mid"], v["room_id"], shop="8000", ttl=600)},
        {"key": v["key"], "room_id": "8000_someoneelse"},
        {"key": v["key"], "mid": "someoneelse"},
        {"key": v["key"], "room_id": {"$ne": 1}},
        {"key": ["list"]},
        {},
    ]
    for doc in bad_auths:
        for url in (comet.ws, comet.tcp):
            c = await kclient.connect(url)
            with pytest.raises(kclient.Closed) as info:
                await c.auth(**{"key": doc.get("key", "")} if "key" in doc else {"key": ""},
                             **{k: x for k, x in doc.items() if k != "key"})
            if url.startswith("ws"):
                assert info.value.code == 1008, (doc, info.value.code)
            await c.close()
    # another room / another shop through sync and ack: no answer, connection kept
    agent = signer.mint_key("agent:8000", "8000_agent:8000", shop="8000", role="agent", ttl=600)
    other_shop_room = "9000_" + v["mid"]
    for key, mid, room in ((v["key"], v["mid"], v["room_id"]), (agent, "agent:8000", "8000_agent:8000")):
        c = await kclient.connect(comet.ws)
        await c.auth(key, mid=mid, room_id=room)
        for foreign in (other_shop_room, "8000_other" if mid != "agent:8000" else other_shop_room):
            assert await c.sync(after=0, room_id=foreign) == []
            with pytest.raises(asyncio.TimeoutError):
                await c.ack(1, room_id=foreign, timeout=0.5)
        assert await c.heartbeat() >= 0
        await c.close()
