"""Session state machine, hub routing and the bus, without the transports.

The session and the hub are driven directly with fake transports (no
sockets); the bus runs against the real test redis-server.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from types import SimpleNamespace

import orjson
import pytest
import redis.asyncio as aioredis

from kefu import envelope, tlv
from kefu.bus import Bus, _PyReader, command
from kefu.comet.transports import batch_pushes
from kefu.comet.ws_lean import ws_frame
from kefu.errors import FrameError, FrameTooBig, StoreUnavailable
from kefu.hub import Hub, goim_op, id_floor
from kefu.ids import Snowflake, timestamp_ms
from kefu.keys import Keys
from kefu.protocol import (
    CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, CLOSE_TRY_AGAIN, Op,
)
from kefu.session import AUTHING, CLOSED, OPEN, Context, Session, sweep
from kefu.config import Settings
from kefu.tokens import Signer
from tests.comet_fixtures import wait_for

SECRET = b"k" * 32


# -- fakes ----------------------------------------------------------------------------
class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.pushed: list[list[bytes]] = []
        self.closed = None
        self.aborted = False
        self.backlog = 0

    def send(self, frame): self.sent.append(frame)
    def send_many(self, frames): self.sent.extend(frames)
    def push(self, frames): self.pushed.append(list(frames))
    def close(self, code, reason): self.closed = (code, reason)
    def abort(self): self.aborted = True
    def buffered(self): return self.backlog

    def ops(self) -> list[int]:
        return [tlv.decode(f)[0] for f in self.sent]

    def frames(self) -> list[tuple[int, int, bytes]]:
        return [tlv.decode(f) for f in self.sent]


class FakeBus:
    def __init__(self) -> None:
        self.connected = True
        self.wanted: Counter = Counter()
        self.log: list = []
        self.gate: asyncio.Event | None = None

    def want(self, ch):
        self.wanted[ch] += 1
        self.log.append(("want", ch))

    def unwant(self, ch):
        self.wanted[ch] -= 1
        self.log.append(("unwant", ch))

    async def ready(self, channels, timeout):
        if self.gate is not None:
            try:
                await asyncio.wait_for(self.gate.wait(), timeout)
            except asyncio.TimeoutError:
                raise StoreUnavailable("not confirmed") from None


class FakeMarks:
    def __init__(self) -> None:
        self.rooms: Counter = Counter()
        self.mids: Counter = Counter()

    def connect(self, mid, room):
        self.mids[mid] += 1
        self.rooms[room] += 1

    def disconnect(self, mid, room):
        self.mids[mid] -= 1
        self.rooms[room] -= 1


class FakeStore:
    """history/ack over an in-memory room, with the store's contracts."""

    def __init__(self) -> None:
        self.rooms: dict[str, list[int]] = {}
        self.offsets: dict[tuple, int] = {}
        self.calls: list = []
        self.down = False

    async def history(self, room, *, after=None, before=None, limit=None):
        self.calls.append(("history", room, after, before, limit))
        if self.down:
            raise StoreUnavailable("down")
        await asyncio.sleep(0)
        ids = self.rooms.get(room, [])
        if after is not None:
            page = [i for i in ids if i > after]
            more, page = len(page) > limit, page[:limit]
        elif before is not None:
            page = [i for i in ids if i < before]
            more, page = len(page) > limit, page[-limit:]
        else:
            more, page = len(ids) > limit, ids[-limit:]
        return SimpleNamespace(messages=[orjson.dumps({"id": i}) for i in page], gap_oldest=None, more=more)

    async def ack(self, mid, room, msg_id):
        self.calls.append(("ack", mid, room, msg_id))
        key = (mid, room)
        self.offsets[key] = max(self.offsets.get(key, 0), msg_id)
        return self.offsets[key]

    async def mark_read(self, mid, room, msg_id):
        self.calls.append(("read notice", mid, room))
        return await self.ack(mid, room, msg_id)


def make_ctx(**overrides) -> Context:
    settings = Settings(**{"inbound_rate": 50.0, **overrides})
    keys = Keys(settings.prefix)
    hub = Hub(keys)
    bus = FakeBus()
    hub.start(bus)
    return Context(settings, signer=Signer(SECRET), store=FakeStore(), hub=hub, bus=bus,
                   marks=FakeMarks(), server_id="0:0:1", stats=hub.stats)


def key(mid="v1", room="8000_v1", role="visitor", shop="8000", ttl=600) -> str:
    return Signer(SECRET).mint_key(mid, room, shop=shop, role=role, ttl=ttl)


def auth_body(**doc) -> bytes:
    return orjson.dumps(doc)


async def settle(session: Session) -> None:
    """Let the session's store task (if any) run to the end."""
    for _ in range(100):
        if session._task is None:
            return
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.shield(session._task), 2)


async def open_session(ctx=None, **claims) -> tuple[Session, FakeTransport]:
    ctx = ctx or make_ctx()
    t = FakeTransport()
    s = Session(ctx, t)
    s.feed(Op.AUTH, 1, auth_body(key=key(**claims)))
    await settle(s)
    assert s.state is OPEN, t.frames()
    return s, t


# -- the state machine ------------------------------------------------------------------
async def test_first_frame_must_be_auth():
    ctx = make_ctx()
    t = FakeTransport()
    s = Session(ctx, t)
    s.feed(Op.HEARTBEAT, 1, b"")
    assert t.ops() == [Op.DISCONNECT]
    assert t.closed[0] == CLOSE_PROTOCOL_ERROR
    assert s.state is CLOSED and s not in ctx.sessions
    assert ctx.stats["errors_before_auth_total"] == 1
    s.feed(Op.AUTH, 2, auth_body(key=key()))          # nothing after the close
    assert t.ops() == [Op.DISCONNECT]


async def test_auth_reply_and_pipelined_frames_keep_their_order():
    ctx = make_ctx()
    ctx.store.rooms["8000_v1"] = [10, 20, 30]
    t = FakeTransport()
    s = Session(ctx, t)
    s.feed(Op.AUTH, 1, auth_body(key=key(), mid="v1", room_id="8000_v1"))
    s.feed(Op.HEARTBEAT, 2, b"")
    s.feed(Op.SYNC, 3, b"10")
    s.feed(Op.ACK, 4, b"30")
    s.feed(Op.HEARTBEAT, 5, b"")
    assert s.state is AUTHING
    await settle(s)
    frames = t.frames()
    assert [(op, seq) for op, seq, _ in frames] == [(8, 1), (3, 2), (15, 3), (15, 3), (17, 4), (3, 5)]
    assert orjson.loads(frames[0][2]) == {"heartbeat": ctx.settings.heartbeat, "room_id": "8000_v1",
                                          "mid": "v1", "server": "0:0:1"}
    assert frames[1][2] == (1).to_bytes(4, "big")       # this connection's own mark counts
    assert [orjson.loads(b)["id"] for _, _, b in frames[2:4]] == [20, 30]
    assert frames[4][2] == b"30"


async def test_heartbeat_count_is_the_flushed_figure_or_the_local_one():
    s, t = await open_session()
    s.ctx.counts["8000_v1"] = 7                         # what the last marks flush returned
    s.feed(Op.HEARTBEAT, 9, b"")
    assert t.sent[-1] == tlv.heartbeat_reply(9, 7)
    s.ctx.counts.clear()
    s.feed(Op.HEARTBEAT, 10, b"")
    assert t.sent[-1] == tlv.heartbeat_reply(10, 1)
    assert s.ctx.store.calls == []                      # no store call per heartbeat


async def test_auth_waits_for_the_subscription_and_holds_pushes():
    ctx = make_ctx()
    ctx.bus.gate = asyncio.Event()
    t = FakeTransport()
    s = Session(ctx, t)
    s.feed(Op.AUTH, 1, auth_body(key=key()))
    await asyncio.sleep(0.01)
    assert s.state is AUTHING and t.sent == []
    push = tlv.encode(Op.MESSAGE, 0, b'{"id": 1}')
    ctx.hub.deliver(ctx.hub.room_channel("8000_v1"), push)
    ctx.hub.flush()
    assert t.pushed == []                               # not before op 8
    ctx.bus.gate.set()
    await settle(s)
    assert t.ops() == [Op.AUTH_REPLY] and t.pushed == [[push]]


async def test_subscription_timeout_refuses_with_1013():
    ctx = make_ctx(handshake_timeout=0.1)
    ctx.bus.gate = asyncio.Event()
    t = FakeTransport()
    s = Session(ctx, t)
    s.feed(Op.AUTH, 1, auth_body(key=key()))
    await settle(s)
    assert t.closed[0] == CLOSE_TRY_AGAIN and t.ops() == [Op.DISCONNECT]
    assert ctx.hub.members == set() and ctx.marks.rooms["8000_v1"] == 0
    assert ctx.bus.wanted[ctx.hub.room_channel("8000_v1")] == 0


async def test_auth_while_redis_is_down_is_1013():
    ctx = make_ctx()
    ctx.bus.connected = False
    t = FakeTransport()
    s = Session(ctx, t)
    s.feed(Op.AUTH, 1, auth_body(key=key()))
    await settle(s)
    assert t.closed[0] == CLOSE_TRY_AGAIN
    assert ctx.stats["errors_store_unavailable_total"] == 1


@pytest.mark.parametrize("body", [
    b"", b"[]", b"null", b'{"key": 5}', b'{"key": ""}',
    auth_body(key=key(), mid="v2"), auth_body(key=key(), room_id="8000_v2"),
    auth_body(key=key(), mid=True), auth_body(key=key(ttl=-1)), auth_body(key=key() + "x"),
])
async def test_bad_auth_is_1008(body):
    ctx = make_ctx()
    t = FakeTransport()
    s = Session(ctx, t)
    s.feed(Op.AUTH, 1, body)
    await settle(s)
    assert t.closed[0] == CLOSE_POLICY and t.ops() == [Op.DISCONNECT]
    assert ctx.stats["errors_auth_total"] == 1 and not ctx.hub.members


async def test_goim_numeric_mid_and_empty_room_are_accepted():
    ctx = make_ctx()
    t = FakeTransport()
    s = Session(ctx, t)
    s.feed(Op.AUTH, 1, auth_body(key=key("42", "1000", role="user", shop=None), mid=42, room_id=""))
    await settle(s)
    assert s.state is OPEN and (s.mid, s.room) == ("42", "1000")


async def test_agent_joins_its_shop_channel_not_the_room_channel():
    ctx = make_ctx()
    s, _ = await open_session(ctx, mid="agent", room="8000_v1", role="agent", shop="8000")
    assert s.channels == (ctx.hub.shop_channel("8000"),)
    g, _ = await open_session(ctx, mid="agent", room="lobby", role="agent", shop="8000")
    assert set(g.channels) == {ctx.hub.shop_channel("8000"), ctx.hub.room_channel("lobby")}
    v, _ = await open_session(ctx, mid="v1", room="8000_v1", role="visitor", shop="8000")
    assert v.channels == (ctx.hub.room_channel("8000_v1"),)     # a visitor's shop claim adds nothing


async def test_agent_requests_other_rooms_of_its_shop_only():
    ctx = make_ctx()
    ctx.store.rooms = {"8000_v2": [5], "9000_v3": [6]}
    s, t = await open_session(ctx, mid="agent", room="8000_v1", role="agent", shop="8000")
    s.feed(Op.SYNC, 2, b'{"room_id": "8000_v2", "after": 0}')
    s.feed(Op.SYNC, 3, b'{"room_id": "9000_v3", "after": 0}')
    s.feed(Op.ACK, 4, b'{"room_id": "8000_v2", "id": 5}')
    s.feed(Op.ACK, 5, b'{"room_id": "9000_v3", "id": 6}')
    await settle(s)
    assert [(op, seq) for op, seq, _ in t.frames()[1:]] == [(15, 2), (17, 4)]
    assert ctx.stats["errors_forbidden_room_total"] == 2
    assert ("agent", "9000_v3") not in ctx.store.offsets
    assert ("read notice", "agent", "8000_v2") in ctx.store.calls    # the visitor's page shows 已读 live


async def test_a_visitor_ack_sends_no_read_notice():
    ctx = make_ctx()
    ctx.store.rooms = {"8000_v1": [5]}
    s, t = await open_session(ctx, mid="v1", room="8000_v1", role="visitor", shop="8000")
    s.feed(Op.ACK, 2, b"5")
    await settle(s)
    assert [(op, seq, body) for op, seq, body in t.frames()[1:]] == [(17, 2, b"5")]
    assert not [c for c in ctx.store.calls if c[0] == "read notice"]


@pytest.mark.parametrize("body,want", [
    (b"", (None, None, 50)), (b"  ", (None, None, 50)), (b"7", (7, None, 50)),
    (b'{"after": 7}', (7, None, 50)), (b'{"before": 9, "limit": 3}', (None, 9, 3)),
    (b'{"before": 9, "limit": 500}', (None, 9, 50)), (b'{"limit": 0}', (None, None, 1)),
    (b"{}", (None, None, 50)),
])
async def test_sync_bodies(body, want):
    ctx = make_ctx()
    s, t = await open_session(ctx)
    s.feed(Op.SYNC, 2, body)
    await settle(s)
    assert ctx.store.calls[-1] == ("history", "8000_v1", *want)


@pytest.mark.parametrize("op,body", [
    (Op.SYNC, b"abc"), (Op.SYNC, b'{"after": -1}'), (Op.SYNC, b'{"after": "x"}'), (Op.SYNC, b"[1]"),
    (Op.ACK, b""), (Op.ACK, b"x"), (Op.ACK, b'{"id": true}'), (Op.ACK, b"-3"),
])
async def test_bad_request_bodies_are_counted_not_fatal(op, body):
    ctx = make_ctx()
    s, t = await open_session(ctx)
    s.feed(op, 2, body)
    await settle(s)
    kind = "sync" if op == Op.SYNC else "ack"
    assert ctx.stats[f"errors_bad_{kind}_total"] == 1
    assert s.state is OPEN and t.ops() == [Op.AUTH_REPLY]


async def test_store_outage_during_sync_keeps_the_connection():
    ctx = make_ctx()
    s, t = await open_session(ctx)
    ctx.store.down = True
    s.feed(Op.SYNC, 2, b"")
    await settle(s)
    assert s.state is OPEN and ctx.stats["errors_store_unavailable_total"] == 1


async def test_unknown_ops_ignored():
    s, t = await open_session()
    for op in (0, 1, 4, 99, -5, Op.AUTH):
        s.feed(op, 1, b"")
    assert s.state is OPEN and s.ctx.stats["ignored_ops_total"] == 6


async def test_inbound_rate_limit_closes_1008():
    ctx = make_ctx(inbound_rate=5.0)
    s, t = await open_session(ctx)
    for i in range(12):
        s.feed(Op.HEARTBEAT, i, b"")
    assert s.state is CLOSED and t.closed[0] == CLOSE_POLICY
    assert ctx.stats["errors_rate_limited_total"] == 1


async def test_rate_refills_over_time():
    ctx = make_ctx(inbound_rate=5.0)
    s, t = await open_session(ctx)
    for i in range(40):
        s.seen -= 0.25                       # a quarter second between frames: under the rate
        s.feed(Op.HEARTBEAT, i, b"")
    assert s.state is OPEN


async def test_too_many_frames_behind_a_store_call():
    ctx = make_ctx(inbound_rate=1000.0)
    ctx.bus.gate = asyncio.Event()
    t = FakeTransport()
    s = Session(ctx, t)
    s.feed(Op.AUTH, 1, auth_body(key=key()))
    for i in range(ctx.inbox_max + 1):
        s.feed(Op.HEARTBEAT, i, b"")
    assert s.state is CLOSED and t.closed[0] == CLOSE_POLICY


async def test_frame_errors_map_to_close_codes():
    for exc, code, kind in ((FrameTooBig("frame too big"), CLOSE_TOO_BIG, "frame_too_big"),
                            (FrameError("bad header length"), CLOSE_PROTOCOL_ERROR, "bad_frame")):
        ctx = make_ctx()
        t = FakeTransport()
        s = Session(ctx, t)
        s.fail(exc)
        assert t.closed == (code, str(exc)) and ctx.stats[f"errors_{kind}_total"] == 1
        assert tlv.decode(t.sent[0]) == (Op.DISCONNECT, 0, str(exc).encode())


async def test_sweep_closes_late_handshakes_and_silent_connections():
    ctx = make_ctx(handshake_timeout=10.0, heartbeat_timeout=90.0)
    waiting = Session(ctx, FakeTransport())
    live, lt = await open_session(ctx)
    quiet, qt = await open_session(ctx, mid="v2", room="8000_v2")
    now = time.monotonic()
    live.seen = now - 80
    quiet.seen = now - 91
    waiting.seen = now - 11
    assert sweep(ctx, now) == 2
    assert waiting.state is CLOSED and waiting.transport.closed == (CLOSE_POLICY, "handshake timeout")
    assert quiet.state is CLOSED and qt.closed == (CLOSE_POLICY, "heartbeat timeout")
    assert live.state is OPEN
    assert ctx.marks.rooms["8000_v2"] == 0 and ctx.marks.rooms["8000_v1"] == 1


async def test_slow_consumer_is_dropped_on_push():
    ctx = make_ctx(send_buffer_limit=1000)
    s, t = await open_session(ctx)
    t.backlog = 5000
    ctx.hub.deliver(ctx.hub.room_channel("8000_v1"), tlv.encode(Op.MESSAGE, 0, b"{}"))
    ctx.hub.flush()
    assert t.aborted and s.state is CLOSED and t.closed is None
    assert ctx.stats["errors_slow_consumer_total"] == 1
    assert not ctx.hub.members and ctx.marks.rooms["8000_v1"] == 0


async def test_kick_sends_op6_and_cleans_up():
    ctx = make_ctx()
    s, t = await open_session(ctx)
    s.kick(CLOSE_GOING_AWAY, "shutdown")
    assert tlv.decode(t.sent[-1]) == (Op.DISCONNECT, 0, b"shutdown")
    assert t.closed == (CLOSE_GOING_AWAY, "shutdown")
    assert not ctx.sessions and not ctx.hub.members and not ctx.hub.by_key and not ctx.hub.by_mid
    assert ctx.bus.wanted[ctx.hub.room_channel("8000_v1")] == 0
    s.kick()                                  # idempotent
    s.gone()
    assert ctx.marks.rooms["8000_v1"] == 0


def test_accepts_are_operations_only():
    ctx = make_ctx()
    assert ctx.accepts(None) is None and ctx.accepts([]) is None and ctx.accepts("1000") is None
    assert ctx.accepts([1000, "1001", "8000_v2", True, 2.5, None, "-1", "--5", "-", "", 1 << 40]) == {
        1000, 1001, -1}
    assert ctx.accepts(["8000_v2", "room"]) is None      # nothing usable: no filter, no room
    assert ctx.accepts([1001, 1000]) is ctx.accepts([1000, 1001, 1000])   # shared
    assert len(ctx.accepts(list(range(500)))) == 64
    for i in range(2000):                                     # clients cannot grow the cache
        ctx.accepts([i])
    assert len(ctx._accepts) <= 1024


# -- hub --------------------------------------------------------------------------------
class Member:
    """What the hub needs of a session."""

    def __init__(self, mid, channels, key, accepts) -> None:
        self.channels, self.key, self.mid, self.accepts = tuple(channels), key, mid, accepts
        self.out = None
        self.got: list[list[bytes]] = []

    def push(self, frames) -> None:
        self.got.append(list(frames))


def member(hub: Hub, mid: str, channels, key: str | None = None, accepts=None) -> Member:
    s = Member(mid, channels, key, accepts)
    hub.join(s)
    return s


def test_hub_reference_counts_drive_subscriptions():
    hub, bus = Hub(Keys()), FakeBus()
    hub.start(bus)
    a = b"ch:a"
    s1, s2 = member(hub, "m1", [a]), member(hub, "m2", [a])
    assert bus.log[1:] == [("want", a)]
    assert s1.channels is s2.channels                     # one shared tuple per channel
    hub.leave(s1)
    assert bus.log[1:] == [("want", a)]
    hub.leave(s2)
    hub.leave(s2)
    assert bus.log[1:] == [("want", a), ("unwant", a)] and not hub.channels
    member(hub, "m3", [a])
    assert bus.log[-1] == ("want", a)


def test_hub_delivers_to_members_only_once_per_tick():
    hub = Hub(Keys())
    a, b = member(hub, "a", [b"ch:a"]), member(hub, "b", [b"ch:b"])
    f1, f2 = tlv.encode(Op.MESSAGE, 0, b"1"), tlv.encode(Op.MESSAGE, 0, b"2")
    hub.deliver(b"ch:a", f1)
    hub.deliver(b"ch:a", f2)
    hub.deliver(b"ch:nobody", f1)
    hub.flush()
    assert a.got == [[f1, f2]] and b.got == []
    assert a.got[0][0] is f1                              # the published bytes, not a copy
    assert hub.stats["deliveries_total"] == 2


def test_hub_goim_pushes_respect_accepts_but_chat_does_not():
    hub = Hub(Keys())
    keys = Keys()
    ch = keys.room_channel("1000").encode()
    picky = member(hub, "u1", [ch], key="k1", accepts=frozenset({1001}))
    open_ = member(hub, "u2", [ch], key="k2")
    push_1000 = tlv.batch([tlv.encode(1000, 0, b"x")])
    push_1001 = tlv.batch([tlv.encode(1001, 0, b"y")])
    chat = tlv.encode(Op.MESSAGE, 0, b"{}")
    for frame in (push_1000, push_1001, chat):
        hub.deliver(ch, frame)
    hub.flush()
    assert picky.got == [[push_1001, chat]]
    assert open_.got == [[push_1000, push_1001, chat]]


def test_hub_push_channel_envelopes():
    hub = Hub(Keys())
    u1 = member(hub, "u1", [b"r1"], key="k1")
    u1b = member(hub, "u1", [b"r2"], key="k1b")
    u2 = member(hub, "u2", [b"r1"], key="k2")
    f = tlv.batch([tlv.encode(1000, 0, b"p")])
    pc = hub.push_channel
    hub.deliver(pc, envelope.pack("keys", ["k2", "nobody"], f))
    hub.flush()
    assert (u1.got, u1b.got, u2.got) == ([], [], [[f]])
    hub.deliver(pc, envelope.pack("mids", ["u1"], f))
    hub.flush()
    assert (len(u1.got), len(u1b.got), len(u2.got)) == (1, 1, 1)
    hub.deliver(pc, envelope.pack("all", [], f))
    hub.flush()
    assert (len(u1.got), len(u1b.got), len(u2.got)) == (2, 2, 2)
    hub.deliver(pc, b"garbage without newlines")
    assert hub.stats["errors_bad_push_total"] == 1


def test_hub_cost_does_not_depend_on_other_connections():
    """Delivery touches the room's members and nobody else."""
    hub = Hub(Keys())
    room = [member(hub, f"r{i}", [b"room"]) for i in range(100)]
    others = [member(hub, f"o{i}", [b"other:%d" % (i % 500)]) for i in range(10_000)]
    touched = []

    class Spy(set):
        def __iter__(self):
            touched.append(len(self))
            return super().__iter__()
    for name, c in hub.channels.items():
        c.members = Spy(c.members)
    hub.deliver(b"room", tlv.encode(Op.MESSAGE, 0, b"{}"))
    hub.flush()
    assert touched == [100]
    assert all(len(s.got) == 1 for s in room) and not any(s.got for s in others)


class Kickable(Member):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.kicked: list = []

    def kick(self, code, reason) -> None:
        self.kicked.append(code)


class FlakyHistory(FakeStore):
    """history() fails `failures` times with an error that is not StoreUnavailable."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def history(self, room, **kw):
        if self.failures:
            self.failures -= 1
            raise AttributeError("'NoneType' object has no attribute 'writelines'")   # redis-py, seen
        return await super().history(room, **{"limit": 10, **kw})


async def _recover(failures: int):
    store = FlakyHistory(failures)
    store.rooms["8000_v1"] = [1, 2, 3, 4]
    hub = Hub(Keys(), store=store)
    ch = hub.room_channel("8000_v1")
    s = Kickable("v1", [ch], None, None)
    hub.join(s, room="8000_v1")
    hub.deliver(ch, tlv.encode(Op.MESSAGE, 0, b'{"id":2,"x":1}'))
    hub.flush()
    hub.recovered([ch], time.time() - 5)
    live = tlv.encode(Op.MESSAGE, 0, b'{"id":5,"x":1}')
    hub.deliver(ch, live)                          # held while the catch-up runs
    await asyncio.wait_for(asyncio.gather(*hub._tasks), 10)
    return hub, s, live, ch


async def test_catch_up_retries_any_error_then_delivers_in_order():
    hub, s, live, ch = await _recover(failures=2)
    got = [tlv.decode(f)[2] for batch in s.got[1:] for f in batch]
    assert got == [b'{"id":3}', b'{"id":4}', tlv.decode(live)[2]] and not s.kicked
    assert hub.channels[ch].held is None and hub.stats["catch_up_errors_total"] == 2


async def test_catch_up_that_keeps_failing_tells_members_to_resync():
    """Never leaves the room's live frames held: the members reconnect and sync instead."""
    hub, s, live, ch = await _recover(failures=99)
    assert s.kicked == [CLOSE_TRY_AGAIN] and hub.channels[ch].held is None
    hub.deliver(ch, live)
    hub.flush()
    assert s.got[-1] == [live]


def test_goim_op_and_batches():
    inner = tlv.encode(1000, 0, b"body")
    assert goim_op(tlv.batch([inner])) == 1000
    assert goim_op(tlv.encode(Op.MESSAGE, 0, b"{}")) is None
    assert goim_op(tlv.encode(Op.RAW, 0, b"")) is None
    chat = tlv.encode(Op.MESSAGE, 0, b"{}")
    merged = batch_pushes([chat, tlv.batch([inner]), chat])
    assert tlv.decode(merged)[0] == Op.RAW
    assert tlv.StreamDecoder().feed(tlv.decode(merged)[2]) == [
        (Op.MESSAGE, 0, b"{}"), (1000, 0, b"body"), (Op.MESSAGE, 0, b"{}")]     # flattened, not nested


@pytest.mark.parametrize("n,head", [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)])
def test_ws_frame_headers(n, head):
    data = ws_frame(b"x" * n)
    assert len(data) == n + head and data[0] == 0x82 and data[1] & 0x80 == 0


def test_id_floor_matches_snowflakes():
    now = time.time()
    issued = Snowflake(5)()
    assert id_floor(now - 1) < issued
    assert abs(timestamp_ms(id_floor(now)) - now * 1000) < 2


# -- bus against the real Redis ------------------------------------------------------------
class Sink:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, bytes]] = []
        self.flushes = 0
        self.recovered: list = []
        self.fail_next = False

    def message(self, ch, data):
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("hub bug")
        self.got.append((ch, data))

    def flush(self):
        self.flushes += 1

    def on_recovered(self, channels, since):
        self.recovered.append((sorted(channels), since))


@pytest.fixture
async def bus_and_sink(redis_server):
    sink = Sink()
    bus = Bus(redis_server, sink.message, sink.flush, sink.on_recovered, ping_interval=0.5)
    await bus.start(wait=5)
    r = aioredis.Redis.from_url(redis_server)
    yield bus, sink, r
    await bus.close()
    await r.aclose()


async def numsub(r, ch: bytes) -> int:
    return dict(await r.pubsub_numsub(ch))[ch]


async def test_bus_subscribes_delivers_and_unsubscribes(bus_and_sink):
    bus, sink, r = bus_and_sink
    bus.want(b"t:a")
    await bus.ready([b"t:a"], 5)
    await r.publish(b"t:a", b"one")
    await wait_for(lambda: sink.got, what="delivery")
    assert sink.got == [(b"t:a", b"one")] and sink.flushes >= 1
    bus.unwant(b"t:a")
    await wait_for(lambda: not bus._inflight, what="unsubscribe answered")
    assert await numsub(r, b"t:a") == 0


async def test_bus_coming_and_going_in_one_tick_converges(bus_and_sink):
    bus, sink, r = bus_and_sink
    bus.want(b"t:b")
    bus.unwant(b"t:b")
    bus.want(b"t:b")
    await bus.ready([b"t:b"], 5)
    assert await numsub(r, b"t:b") == 1
    bus.unwant(b"t:b")
    bus.want(b"t:b")
    bus.unwant(b"t:b")
    await wait_for(lambda: not bus._inflight, what="settled")
    assert await numsub(r, b"t:b") == 0


async def test_bus_ready_waits_for_the_last_command(bus_and_sink):
    """want -> (SUBSCRIBE in flight) unwant -> want: ready only after the final SUBSCRIBE."""
    bus, sink, r = bus_and_sink
    bus.want(b"t:c")
    await asyncio.sleep(0)                         # SUBSCRIBE written
    bus.unwant(b"t:c")
    await asyncio.sleep(0)                         # UNSUBSCRIBE written
    bus.want(b"t:c")
    assert not bus.is_ready(b"t:c")
    await bus.ready([b"t:c"], 5)
    assert bus._inflight == {} and await numsub(r, b"t:c") == 1
    await r.publish(b"t:c", b"after ready")
    await wait_for(lambda: (b"t:c", b"after ready") in sink.got, what="delivery")


async def test_bus_survives_a_failing_handler(bus_and_sink):
    bus, sink, r = bus_and_sink
    bus.want(b"t:d")
    await bus.ready([b"t:d"], 5)
    sink.fail_next = True
    await r.publish(b"t:d", b"boom")
    await r.publish(b"t:d", b"fine")
    await wait_for(lambda: sink.got, what="the second message")
    assert sink.got == [(b"t:d", b"fine")] and bus.stats["bad_messages"] == 1


async def test_bus_reconnects_and_resubscribes(bus_and_sink):
    bus, sink, r = bus_and_sink
    bus.want(b"t:e")
    bus.want(b"t:f")
    await bus.ready([b"t:e", b"t:f"], 5)
    before = time.time()
    await r.client_kill_filter(_type="pubsub")
    await wait_for(lambda: sink.recovered, what="recovery")
    assert sink.recovered[0][0] == [b"t:e", b"t:f"]
    assert before - 1 <= sink.recovered[0][1] <= time.time()
    await r.publish(b"t:e", b"again")
    await wait_for(lambda: (b"t:e", b"again") in sink.got, what="delivery after reconnect")
    assert bus.stats["reconnects"] == 1


async def test_bus_ready_times_out_when_redis_is_gone():
    sink = Sink()
    bus = Bus("redis://127.0.0.1:1/0", sink.message)
    await bus.start()
    bus.want(b"t:x")
    with pytest.raises(StoreUnavailable):
        await bus.ready([b"t:x"], 0.2)
    assert not bus.connected
    await bus.close()


async def test_bus_authenticates(tmp_path):
    from tests.comet_fixtures import RedisProcess, free_port
    server = RedisProcess(tmp_path, free_port(), password="pub-sub-secret")
    server.start()
    try:
        sink = Sink()
        bus = Bus(server.url, sink.message)
        await bus.start(wait=5)
        bus.want(b"t:auth")
        await bus.ready([b"t:auth"], 5)
        await bus.close()
        refused = Bus(server.url.replace("pub-sub-secret", "wrong"), sink.message)
        with pytest.raises(StoreUnavailable):
            await refused.start(wait=0.5)
        await refused.close()
    finally:
        server.stop()


def test_bad_redis_url_fails_at_construction():
    with pytest.raises(ValueError):
        Bus("http://example.com", lambda ch, data: None)


def test_python_resp_reader_matches_hiredis():
    hiredis = pytest.importorskip("hiredis")
    stream = (b"*3\r\n$9\r\nsubscribe\r\n$3\r\nt:a\r\n:1\r\n"
              b"*3\r\n$7\r\nmessage\r\n$3\r\nt:a\r\n$5\r\nhe\r\no\r\n"
              b"+OK\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n$-1\r\n-ERR nope\r\n")
    for cut in range(len(stream)):
        results = []
        for reader in (hiredis.Reader(), _PyReader()):
            out = []
            for part in (stream[:cut], stream[cut:]):
                reader.feed(part)
                while (reply := reader.gets()) is not False:
                    out.append(str(reply) if isinstance(reply, Exception) else reply)
            results.append(out)
        assert results[0] == results[1], cut


def test_command_encoding():
    assert command(b"SUBSCRIBE", "a", 5) == b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\n5\r\n"

