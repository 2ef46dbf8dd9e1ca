"""The comet worker end to end: real WebSocket and TCP clients, real Redis.

Most tests run once per transport (the `transport` fixture), since both
feed the same session state machine and must behave the same.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import orjson
import pytest

from kefu import tlv
from kefu.client import Closed, connect
from kefu.protocol import (
    CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, CLOSE_TRY_AGAIN, Op,
)
from tests.comet_fixtures import *  # noqa: F403
from tests.comet_fixtures import free_port, wait_for


def expect_code(transport: str, code: int | None, want: int) -> None:
    """WebSocket carries the close code; TCP can only close (op 6 said why)."""
    if transport.startswith("ws"):
        assert code == want
    else:
        assert code is None


async def refused(c, transport: str, want: int) -> str:
    code, reason = await c.closed_with(10)
    expect_code(transport, code, want)
    return reason


# -- every op --------------------------------------------------------------------
async def test_every_op(comet, transport):
    c = await comet.connect(transport)
    reply = await c.auth(comet.key("v1", "8000_v1", shop="8000"), mid="v1", room_id="8000_v1",
                         platform="web", nickname="Ann")
    assert reply["heartbeat"] == comet.settings.heartbeat
    assert reply["room_id"] == "8000_v1" and reply["mid"] == "v1"
    assert reply["server"] == comet.worker.server_id
    assert await c.heartbeat() >= 1

    ids = [await comet.post(msg=f"m{i}") for i in range(3)]
    live = await c.messages(3)
    assert [m["id"] for m in live] == ids
    assert [m["msg"] for m in live] == ["m0", "m1", "m2"]

    assert [m["id"] for m in await c.sync()] == ids
    assert [m["id"] for m in await c.sync(ids[0])] == ids[1:]
    assert await c.ack(ids[1]) == ids[1]
    assert await c.ack(ids[0]) == ids[1]             # offsets only move forward
    assert await comet.store.offset("v1", "8000_v1") == ids[1]


async def test_goim_client_with_nothing_but_a_key(comet, transport):
    """goim's own client: numeric mid, a goim room, accepts = operations, no kefu fields."""
    c = await comet.connect(transport)
    key = comet.key("123", "1000", role="user", shop=None)
    reply = await c.auth(key, mid=123, accepts=[1000, 1001])
    assert reply["room_id"] == "1000" and reply["mid"] == "123"
    assert await c.heartbeat() == 1
    await comet.store.push_room("1000", 1000, b"room push")
    f = await c.recv()
    assert (f.op, f.body) == (1000, b"room push")
    await comet.store.push_room("1000", 2000, b"not accepted")   # op not in accepts
    await comet.store.push("mids", ["123"], 1001, b"to my mid")
    f = await c.recv()
    assert (f.op, f.body) == (1001, b"to my mid")

    bare = await comet.connect(transport)                        # just {"key": ...}
    assert (await bare.auth(comet.key("124", "1000", role="user")))["mid"] == "124"


# -- isolation -----------------------------------------------------------------------
async def test_rooms_do_not_see_each_other(comet, transport):
    a = await comet.client(transport, "va", "8000_va")
    b = await comet.client(transport, "vb", "8000_vb")
    id_a = await comet.post("8000_va", "for a", "va")
    id_b = await comet.post("8000_vb", "for b", "vb")
    assert [m["id"] for m in await a.messages(1)] == [id_a]
    assert [m["id"] for m in await b.messages(1)] == [id_b]
    await comet.post("8000_va", "again a", "va")
    await a.messages(1)
    assert b.frames.empty() and a.frames.empty()


async def test_accepts_never_grants_a_room(comet, transport):
    """The seed let `accepts` list any room number; here it grants nothing."""
    secret_id = await comet.post("8000_victim", "private", "victim")
    c = await comet.client(transport, "thief", "8000_thief",
                           accepts=["8000_victim", 8000, "1000", 5, 9])
    await comet.post("8000_victim", "private live", "victim")
    await comet.store.push_room("8000_victim", 1000, b"room push")
    assert await c.sync(room_id="8000_victim") == []              # refused, no answer
    assert await c.sync(body=b'{"room_id": "8000_victim", "after": 0}') == []
    with pytest.raises(asyncio.TimeoutError):
        await c.ack(secret_id, room_id="8000_victim", timeout=0.5)
    own = await comet.post("8000_thief", "mine", "thief")
    assert [m["id"] for m in await c.messages(1)] == [own]         # the first live frame is its own
    assert c.frames.empty()
    assert comet.stats["errors_forbidden_room_total"] == 3


async def test_agent_sees_every_room_of_its_shop_once(comet, transport):
    agent = await comet.client(transport, "agent-8000", "8000_v1", role="agent", shop="8000")
    v2 = await comet.client(transport, "v2", "8000_v2")
    ids = [await comet.post("8000_v1", "one", "v1"), await comet.post("8000_v2", "two", "v2"),
           await comet.post("9000_v3", "other shop", "v3"), await comet.post("8000_v1", "three", "v1")]
    got = await agent.messages(3)
    assert [m["id"] for m in got] == [ids[0], ids[1], ids[3]]       # once each, nothing of 9000
    assert [m["id"] for m in await v2.messages(1)] == [ids[1]]
    assert [m["id"] for m in await agent.sync(room_id="8000_v2")] == [ids[1]]
    assert await agent.sync(room_id="9000_v3") == []
    assert await agent.ack(ids[1], room_id="8000_v2") == ids[1]
    assert await comet.store.offset("agent-8000", "8000_v2") == ids[1]
    await asyncio.sleep(0.2)
    assert agent.frames.empty()


async def test_visitor_cannot_name_another_room(comet, transport):
    c = await comet.client(transport, "v1", "8000_v1")
    other = await comet.post("8000_v9", "not yours", "v9")
    assert await c.sync(room_id="8000_v9") == []
    with pytest.raises(asyncio.TimeoutError):
        await c.ack(other, room_id="8000_v9", timeout=0.5)


# -- auth errors -------------------------------------------------------------------
async def test_frame_before_auth_closes_1002(comet, transport):
    c = await comet.connect(transport)
    c.send_frame(Op.HEARTBEAT, 1)
    reason = await refused(c, transport, CLOSE_PROTOCOL_ERROR)
    assert "auth" in reason
    assert comet.stats["errors_before_auth_total"] == 1


@pytest.mark.parametrize("case", ["forged", "expired", "wrong_mid", "wrong_room", "not_json",
                                  "no_key", "not_object", "other_purpose"])
async def test_bad_keys_close_1008(comet, transport, case):
    good = comet.key("v1", "8000_v1", shop="8000")
    payload, mac = good.split(".")
    bodies = {
        "forged": {"key": payload + "." + mac[:-2] + ("AA" if mac[-2:] != "AA" else "BA")},
        "expired": {"key": comet.key("v1", "8000_v1", shop="8000", ttl=-5)},
        "wrong_mid": {"key": good, "mid": "v2"},
        "wrong_room": {"key": good, "room_id": "8000_v2"},
        "no_key": {"mid": "v1", "room_id": "8000_v1"},
        "not_object": ["key", good],
        "other_purpose": {"key": comet.signer.mint_session("8000", 60)},
    }
    c = await comet.connect(transport)
    body = b"{not json" if case == "not_json" else orjson.dumps(bodies[case])
    c.send_frame(Op.AUTH, 1, body)
    await refused(c, transport, CLOSE_POLICY)
    assert comet.stats["errors_auth_total"] == 1
    assert comet.worker.metrics()["authenticated"] == 0


async def test_handshake_timeout(comet_factory, transport):
    comet = await comet_factory(handshake_timeout=0.3)
    c = await comet.connect(transport)
    reason = await refused(c, transport, CLOSE_POLICY)
    assert reason == "handshake timeout"
    assert comet.stats["errors_handshake_timeout_total"] == 1


async def test_heartbeat_timeout(comet_factory, transport):
    comet = await comet_factory(heartbeat=1, heartbeat_timeout=1.2)
    quiet = await comet.client(transport)
    chatty = await comet.client(transport, "v2", "8000_v2")
    for _ in range(8):
        await chatty.heartbeat()
        await asyncio.sleep(0.25)
        if quiet.closed.done():
            break
    reason = await refused(quiet, transport, CLOSE_POLICY)
    assert reason == "heartbeat timeout"
    assert not chatty.closed.done()
    assert comet.stats["errors_heartbeat_timeout_total"] == 1


# -- frame errors ------------------------------------------------------------------------
async def test_oversize_frame_closes_1009(comet_factory, transport):
    comet = await comet_factory(max_frame=1024)
    big = await comet.client(transport)
    big.send_raw(tlv.encode(Op.HEARTBEAT, 1, b"x" * 2000))
    await refused(big, transport, CLOSE_TOO_BIG)
    claims = await comet.client(transport, "v2", "8000_v2")      # a header that claims too much
    claims.send_raw((1 << 20).to_bytes(4, "big") + tlv.encode(Op.HEARTBEAT, 1)[4:])
    await refused(claims, transport, CLOSE_TOO_BIG)
    assert comet.stats["errors_frame_too_big_total"] == 2
    ok = await comet.client(transport, "v3", "8000_v3")            # nobody else affected
    assert await ok.heartbeat() >= 1


@pytest.mark.parametrize("garbage", ["header_len", "short", "packet_len", "mismatch"])
async def test_malformed_frame_closes_1002(comet, transport, garbage):
    c = await comet.client(transport)
    good = tlv.encode(Op.HEARTBEAT, 1)
    data = {
        "header_len": good[:4] + (12).to_bytes(2, "big") + good[6:],
        "short": good[:10],
        "packet_len": (8).to_bytes(4, "big") + good[4:],
        "mismatch": (20).to_bytes(4, "big") + good[4:] + b"abcdefgh",
    }[garbage]
    if transport == "tcp" and garbage in ("short", "mismatch"):
        pytest.skip("on a stream, fewer or more bytes than one frame are not an error")
    c.send_raw(data)
    await refused(c, transport, CLOSE_PROTOCOL_ERROR)
    assert comet.stats["errors_bad_frame_total"] == 1


@pytest.mark.parametrize("kind", ["ws", "ws-lean"])
async def test_text_message_closes_1002(comet, kind):
    c = await comet.client(kind)
    c.send_text("hello")
    await refused(c, kind, CLOSE_PROTOCOL_ERROR)


async def test_unknown_ops_are_ignored_and_counted(comet, transport):
    c = await comet.client(transport)
    for op in (99, 4, Op.AUTH, Op.HEARTBEAT_REPLY):
        c.send_frame(op, 5, b"whatever")
    assert await c.heartbeat() >= 1
    assert comet.stats["ignored_ops_total"] == 4
    assert not c.closed.done()


async def test_bad_sync_and_ack_bodies_are_ignored(comet, transport):
    c = await comet.client(transport)
    assert await c.sync(body=b"not json") == []
    assert await c.sync(body=b'{"after": -1}') == []
    with pytest.raises(asyncio.TimeoutError):
        await _ack_raw(c, b"abc")
    assert comet.stats["errors_bad_sync_total"] == 2
    assert comet.stats["errors_bad_ack_total"] == 1
    assert await c.heartbeat() >= 1


async def _ack_raw(c, body: bytes):
    return await c._request(Op.ACK, body, 0.3)


# -- sync -----------------------------------------------------------------------------
async def test_sync_pages(comet_factory, transport):
    comet = await comet_factory(sync_limit=4)
    c = await comet.client(transport)
    ids = [await comet.post(msg=f"m{i}") for i in range(10)]
    await c.messages(10)
    assert [m["id"] for m in await c.sync()] == ids[-4:]               # newest N, oldest first
    assert [m["id"] for m in await c.sync(body=b"%d" % ids[2])] == ids[3:7]   # decimal = after
    assert [m["id"] for m in await c.sync(ids[6])] == ids[7:]
    assert [m["id"] for m in await c.sync_all(0)] == ids                 # resume misses nothing
    assert [m["id"] for m in await c.sync(before=ids[6])] == ids[2:6]
    assert [m["id"] for m in await c.sync(before=ids[6], limit=2)] == ids[4:6]
    assert [m["id"] for m in await c.sync(before=ids[6], limit=99)] == ids[2:6]   # capped
    assert await c.sync(ids[-1]) == []


async def test_sync_reports_a_gap(comet_factory, transport):
    comet = await comet_factory(room_max_messages=5)
    c = await comet.client(transport)
    ids = [await comet.post(msg=f"m{i}") for i in range(8)]
    got = await c.sync(ids[0])
    assert got[0] == {"type": "gap", "truncated": True, "oldest": ids[3]}
    assert [m["id"] for m in got[1:]] == ids[3:]
    assert "msg" not in got[0]                    # the seed page skips it
    assert [m["id"] for m in await c.sync(ids[4])] == ids[5:]      # nothing missing: no gap


# -- goim pushes ------------------------------------------------------------------------
async def test_goim_pushes_by_key_mid_all_and_accepts(comet, transport):
    k1 = comet.key("u1", "1000", role="user")
    c1 = await comet.connect(transport)
    await c1.auth(k1)
    c2 = await comet.connect(transport)
    await c2.auth(comet.key("u2", "1001", role="user"), accepts=[1001])
    await comet.store.push("keys", [k1], 1000, b"to key 1")
    await comet.store.push("mids", ["u2"], 1001, b"to u2")
    await comet.store.push("all", [], 1000, b"everyone 1000")     # c2 does not accept 1000
    await comet.store.push("all", [], 1001, b"everyone 1001")
    assert [(f.op, f.body) for f in [await c1.recv(), await c1.recv(), await c1.recv()]] == [
        (1000, b"to key 1"), (1000, b"everyone 1000"), (1001, b"everyone 1001")]
    assert [(f.op, f.body) for f in [await c2.recv(), await c2.recv()]] == [
        (1001, b"to u2"), (1001, b"everyone 1001")]
    await asyncio.sleep(0.1)
    assert c1.frames.empty() and c2.frames.empty()


async def test_messages_of_one_tick_go_out_in_one_write(comet):
    """Messages published together reach a WebSocket client as one op-9 batch."""
    c = await comet.client("ws")
    before = c.wire_frames
    frame = tlv.encode(Op.MESSAGE, 0, b'{"id": 1, "msg": "x"}')
    pipe = comet.store.redis.pipeline(transaction=False)
    for _ in range(20):
        pipe.publish(comet.store.keys.room_channel("8000_v1"), frame)
    await pipe.execute()
    got = [await c.recv() for _ in range(20)]
    assert all(f.op == Op.MESSAGE for f in got)
    assert c.wire_frames - before < 20           # typically 1: the whole burst in one op 9


# -- limits ------------------------------------------------------------------------------
async def test_inbound_rate_limit(comet_factory, transport):
    comet = await comet_factory(inbound_rate=5.0)
    c = await comet.client(transport)
    for i in range(30):
        c.send_frame(Op.HEARTBEAT, 100 + i)
    await refused(c, transport, CLOSE_POLICY)
    assert comet.stats["errors_rate_limited_total"] == 1


async def test_max_connections(comet_factory, transport):
    comet = await comet_factory(max_connections=2)
    await comet.client(transport, "v1", "8000_v1")
    await comet.client(transport, "v2", "8000_v2")
    third = await comet.connect(transport)
    reason = await refused(third, transport, CLOSE_TRY_AGAIN)
    assert reason == "server full"
    assert comet.stats["refused_total"] == 1


async def test_slow_consumer_is_disconnected(comet_factory, transport):
    comet = await comet_factory(send_buffer_limit=64 * 1024)
    slow = await comet.client(transport, "slow", "8000_slow")
    if transport == "ws":                 # aiohttp's client: stop its socket from being read
        raw = slow.ws._response.connection.transport
    else:
        raw = slow.transport if transport == "tcp" else slow.proto.transport
    raw.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.pause_reading()
    fast = await comet.client(transport, "fast", "8000_slow")
    frame = tlv.encode(Op.MESSAGE, 0, orjson.dumps({"id": 1, "msg": "x" * 3000}))
    for _ in range(40):                   # up to ~12 MB published; `slow` reads nothing
        pipe = comet.store.redis.pipeline(transaction=False)
        for _ in range(100):
            pipe.publish(comet.store.keys.room_channel("8000_slow"), frame)
        await pipe.execute()
        await fast.messages(100)          # the reading client keeps up
        if comet.stats["errors_slow_consumer_total"]:
            break
    assert comet.stats["errors_slow_consumer_total"] == 1
    assert comet.worker.metrics()["authenticated"] == 1            # only the fast one is left
    assert len(comet.worker.ctx.sessions) == 1                       # its socket is gone on our side
    assert not fast.closed.done()
    raw.abort()


# -- Redis outage -------------------------------------------------------------------------
@pytest.mark.reliability
async def test_redis_restart_resubscribes_and_nothing_is_lost(restartable_redis, comet_factory, transport):
    comet = await comet_factory(redis_url=restartable_redis.url)
    worker = comet.worker
    c = await comet.client(transport)
    agent = await comet.client(transport, "agent-8000", "8000_v1", role="agent", shop="8000")
    before = [await comet.post(msg=f"before {i}") for i in range(3)]
    assert [m["id"] for m in await c.messages(3)] == before
    await agent.messages(3)

    restartable_redis.stop()
    await wait_for(lambda: not worker.bus.connected, what="the bus to notice the outage")
    assert await c.heartbeat() >= 1                      # connections stay, heartbeats answered
    newcomer = await comet.connect(transport)
    with pytest.raises(Closed) as refusal:
        await newcomer.auth(comet.key("v2", "8000_v2", shop="8000"))
    expect_code(transport, refusal.value.code, CLOSE_TRY_AGAIN)

    # Hold the bus back so that messages are published while it is not subscribed yet.
    gate, reconnect = asyncio.Event(), worker.bus._connect

    async def held():
        await gate.wait()
        return await reconnect()
    worker.bus._connect = held
    restartable_redis.start()
    during = [await comet.post(msg=f"while unsubscribed {i}") for i in range(3)]
    assert not worker.bus.connected
    gate.set()
    room_ch = comet.store.keys.room_channel("8000_v1").encode()
    await wait_for(lambda: worker.bus.is_ready(room_ch), what="the room to be subscribed again")
    after = [await comet.post(msg=f"after {i}") for i in range(2)]

    live = set()
    while not set(during + after) <= live:
        live |= {m["id"] for m in await c.messages(1)}
    assert live <= set(during + after)                   # catch-up resumes after the last id delivered
    resynced = [m["id"] for m in await c.sync_all(before[-1])]
    assert resynced == during + after                    # the resync sees everything once, in order
    assert worker.stats["catch_up_messages_total"] >= len(during)    # replayed from the store
    assert worker.bus.stats["reconnects"] >= 1
    assert not c.closed.done()
    # an agent's shop channel spans every room of the shop: it is told to come back and sync
    code, reason = await agent.closed_with(10)
    expect_code(transport, code, CLOSE_TRY_AGAIN)
    assert "reconnect" in reason
    agent = await comet.client(transport, "agent-8000", "8000_v1", role="agent", shop="8000")
    assert [m["id"] for m in await agent.sync_all(before[-1], room_id="8000_v1")] == during + after


# -- lifecycle ---------------------------------------------------------------------------
async def test_shutdown_sends_op6_then_closes(comet, transport):
    c = await comet.client(transport)
    await comet.worker.shutdown("shutdown")
    code, reason = await c.closed_with(10)
    expect_code(transport, code, CLOSE_GOING_AWAY)
    assert reason == "shutdown"


async def test_figures_reach_redis(comet, transport):
    await comet.client(transport)
    await comet.worker.flush_marks()
    servers = await comet.store.servers()
    mine = servers[comet.worker.server_id]
    assert mine["connections"] == 1 and mine["authenticated"] == 1
    assert mine["auth_ok_total"] == 1
    assert await comet.store.room_online_count("8000_v1") == 1
    assert (await comet.store.online(["v1"])) == [True]


async def test_two_workers_share_the_ports(comet_factory):
    """SO_REUSEPORT: both workers bind the same ports; the kernel spreads connections."""
    ws_port, tcp_port = free_port(), free_port()
    one = await comet_factory(comet_port=ws_port, tcp_port=tcp_port)
    two = await comet_factory(comet_port=ws_port, tcp_port=tcp_port)
    assert (one.worker.ws_port, one.worker.tcp_port) == (two.worker.ws_port, two.worker.tcp_port)
    clients = []
    for i in range(24):
        for t in ("ws", "tcp"):
            clients.append(await one.client(t, f"v{i}{t}", "8000_shared"))
    counts = (one.worker.metrics()["authenticated"], two.worker.metrics()["authenticated"])
    assert sum(counts) == 48 and min(counts) > 0, counts
    msg = await one.post("8000_shared", "to everyone")
    for c in clients:
        assert [m["id"] for m in await c.messages(1)] == [msg]


def test_cli_runs_a_worker_and_stops_on_sigterm(settings, tmp_path):
    ws_port, tcp_port = free_port(), free_port()
    env = {**os.environ, "KEFU_SECRET": "s" * 32, "KEFU_PREFIX": settings.prefix}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kefu", "comet", "--redis-url", settings.redis_url, "--comet-port",
         str(ws_port), "--tcp-port", str(tcp_port), "--data-dir", str(tmp_path), "--index", "3"],
        stderr=subprocess.PIPE, text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        line = proc.stderr.readline()
        while line and "listening" not in line:
            line = proc.stderr.readline()
        assert f"ws://127.0.0.1:{ws_port}/sub" in line and f"127.0.0.1:{tcp_port}" in line

        async def talk():
            c = await connect(f"tcp://127.0.0.1:{tcp_port}")
            from kefu.tokens import Signer
            await c.auth(Signer(b"s" * 32).mint_key("v1", "8000_v1", ttl=60))
            assert await c.heartbeat() == 1
            proc.send_signal(signal.SIGTERM)
            return await c.closed_with(10)
        assert asyncio.run(talk()) == (None, "shutdown")
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
