"""The Redis store against a real redis-server: every operation, its round trips,
and the contracts (stored before pushed, ids increasing per room, offsets
only forwards, idempotent stores, exact unread counts, retention)."""
from __future__ import annotations

import asyncio
import random
import time

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from kefu import envelope, tlv
from kefu.errors import BadRequest, StoreUnavailable
from kefu.ids import Snowflake, timestamp_ms
from kefu.protocol import Op
from kefu.store import Store, agent_mid

SHOP, VISITOR = "8000", "v1"
ROOM = f"{SHOP}_{VISITOR}"


async def post(store, msg="hi", room=ROOM, mid=VISITOR, **kw):
    return await store.post(room=room, mid=mid, shop=kw.pop("shop", SHOP), type="text", msg=msg, **kw)


@pytest.fixture
def roundtrips(monkeypatch):
    """Counts writes to Redis: one per command, one per pipeline."""
    counter = {"n": 0}
    original = AbstractConnection.send_packed_command

    async def counting(self, command, check_health=True):
        counter["n"] += 1
        return await original(self, command, check_health)
    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    from kefu.store.fastpipe import RespPipe
    original_flush = RespPipe._flush

    def flush_counting(self):
        counter["n"] += 1
        return original_flush(self)
    monkeypatch.setattr(RespPipe, "_flush", flush_counting)

    class Measure:
        def __enter__(self):
            self.start = counter["n"]
            return self

        def __exit__(self, *exc):
            self.count = counter["n"] - self.start
    return Measure


class Subscriber:
    """A real pub/sub client collecting frames from channels."""

    def __init__(self, url):
        self.client = aioredis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.got: list[tuple[bytes, bytes]] = []

    async def __aenter__(self):
        return self

    async def subscribe(self, *channels):
        await self.pubsub.subscribe(*channels)
        for _ in channels:
            await self.pubsub.get_message(timeout=1)      # the subscribe confirmations

    async def collect(self, n, timeout=10.0, on_message=None):
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            m = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if m:
                self.got.append((m["channel"], m["data"]))
                if on_message:
                    await on_message(m["data"])
        return self.got

    async def __aexit__(self, *exc):
        await self.pubsub.aclose()
        await self.client.aclose()


# -- post and the stored-before-pushed contract ----------------------------
async def test_post_stores_the_message_json(store):
    p = await post(store, "hello", extra={"nickname": "Ann", "id": 1})
    doc = orjson.loads(p.json)
    assert doc == {"id": p.id, "room_id": ROOM, "mid": VISITOR, "shop_id": SHOP, "type": "text",
                   "msg": "hello", "dateline": doc["dateline"], "nickname": "Ann"}
    assert abs(doc["dateline"] - time.time()) < 5 and not p.duplicate
    assert (await store.history(ROOM)).messages == [p.json]
    assert await store.redis.sismember(store.keys.shops(), SHOP)
    assert await store.redis.zscore(store.keys.visitors(SHOP), VISITOR) is not None
    assert await store.redis.zscore(store.keys.notices(SHOP), VISITOR) is not None


async def test_post_refuses_a_room_of_another_shop(store):
    with pytest.raises(BadRequest):
        await store.post(room="8001_v1", mid="v1", shop="8000", type="text", msg="x")


async def test_message_is_stored_before_it_is_pushed(store, settings):
    """A real subscriber looks each pushed message up in Redis the moment it arrives."""
    checker = aioredis.Redis.from_url(settings.redis_url)
    missing = []

    async def check(frame):
        op, _seq, body = tlv.decode(frame)
        assert op == Op.MESSAGE
        msg_id = orjson.loads(body)["id"]
        if await checker.zrangebyscore(store.keys.room(ROOM), msg_id, msg_id) != [body]:
            missing.append(msg_id)

    async with Subscriber(settings.redis_url) as sub:
        await sub.subscribe(store.keys.room_channel(ROOM), store.keys.shop_channel(SHOP))
        posts = await asyncio.gather(*(post(store, f"m{i}") for i in range(50)))
        got = await sub.collect(100, on_message=check)
    await checker.aclose()
    assert len(got) == 100 and not missing
    channels = {c for c, _ in got}
    assert channels == {store.keys.room_channel(ROOM).encode(), store.keys.shop_channel(SHOP).encode()}
    assert sorted(tlv.decode(f)[2] for _, f in got[::1]) == sorted([p.json for p in posts] * 2)


async def test_500_concurrent_posts_one_room(store, settings):
    """Unique strictly increasing ids; all stored; publish order == id order; coalesced."""
    async with Subscriber(settings.redis_url) as sub:
        await sub.subscribe(store.keys.room_channel(ROOM))
        before = store.batches
        posts = await asyncio.gather(*(post(store, f"m{i}") for i in range(500)))
        got = await sub.collect(500)
    ids = [p.id for p in posts]
    assert len(set(ids)) == 500 and ids == sorted(ids)          # call order == id order
    pushed = [orjson.loads(tlv.decode(f)[2])["id"] for _, f in got]
    assert pushed == sorted(ids)
    stored = await store.redis.zrange(store.keys.room(ROOM), 0, -1, withscores=True)
    assert [int(s) for _, s in stored] == sorted(ids)
    assert store.batches - before < 50                          # far fewer round trips than posts


async def test_processes_with_skewed_clocks_keep_room_ids_increasing(store, settings):
    """Two API processes, one 10 s behind: ids in the room still strictly increase."""
    late = await Store.connect(settings, worker=1)
    late.ids = Snowflake(late.ids.worker, clock=lambda: time.time_ns() - 10 * 10**9)
    try:
        tasks = [post(random.choice((store, late)), f"m{i}") for i in range(300)]
        posts = await asyncio.gather(*tasks)
    finally:
        await late.close()
    stored = await store.redis.zrange(store.keys.room(ROOM), 0, -1, withscores=True)
    assert len(stored) == 300 and len({p.id for p in posts}) == 300
    scores = [int(s) for _, s in stored]
    assert scores == sorted(set(scores))
    assert {orjson.loads(m)["id"] for m, _ in stored} == {p.id for p in posts}


async def test_many_writers_exact_unread(store, settings):
    writers = [await Store.connect(settings, worker=w) for w in range(1, 5)]
    try:
        first = await post(store, "start")
        await store.ack(agent_mid(SHOP), ROOM, first.id)
        await asyncio.gather(*(post(writers[i % 4], f"m{i}", mid=f"w{i % 4}") for i in range(400)))
        assert await store.unread(agent_mid(SHOP), ROOM) == 400
        assert await store.unread("nobody", ROOM) == 401
        history = await store.history(ROOM, limit=1000)
        mid_id = orjson.loads(history.messages[150])["id"]
        await store.ack(agent_mid(SHOP), ROOM, mid_id)
        assert await store.unread(agent_mid(SHOP), ROOM) == 250
    finally:
        for w in writers:
            await w.close()


# -- idempotency -----------------------------------------------------------
async def test_client_msg_id_makes_retries_idempotent(store):
    a = await post(store, "once", client_msg_id="c-1")
    b = await post(store, "once", client_msg_id="c-1")
    assert (b.id, b.json, b.duplicate) == (a.id, a.json, True)
    assert orjson.loads(a.json)["client_msg_id"] == "c-1"
    other = await post(store, "once", mid="v2", client_msg_id="c-1")       # another sender
    assert not other.duplicate and other.id != a.id
    racing = await asyncio.gather(*(post(store, "race", client_msg_id="c-2") for _ in range(20)))
    assert len({p.id for p in racing}) == 1 and sum(not p.duplicate for p in racing) == 1
    assert await store.redis.zcard(store.keys.room(ROOM)) == 3


async def test_idempotency_record_expires(store, settings):
    s = await Store.connect(settings.replace(idempotency_ttl=1))
    try:
        a = await post(s, "x", client_msg_id="c")
        assert 0 < await s.redis.ttl(s.keys.idempotency(ROOM, f"{VISITOR}:c")) <= 1
        await asyncio.sleep(1.2)
        assert (await post(s, "x", client_msg_id="c")).id != a.id
    finally:
        await s.close()


async def test_a_replayed_pipeline_does_not_store_twice(store):
    """A connection retry may resend a post script: the same id is recognised, not re-stored."""
    from kefu.protocol import HEADER_SIZE
    from kefu.store.base import run_script
    from kefu.store.scripts import POST
    p = await post(store, "retried")
    frame = tlv.encode(Op.MESSAGE, 0, p.json)
    k = store.keys
    res = await run_script(store.redis, POST, [k.room(ROOM), k.trimmed(ROOM)],
                           [p.id, frame, HEADER_SIZE, 100, 60, k.room_channel(ROOM), ""])
    assert res == [b"same", str(p.id).encode()]
    assert await store.redis.zcard(k.room(ROOM)) == 1


async def test_scripts_reload_after_script_flush(store):
    await post(store, "a")
    await store.redis.script_flush()
    assert (await post(store, "b")).id
    await store.redis.script_flush()
    await store.ack("m", ROOM, 5)
    assert await store.offset("m", ROOM) == 5


# -- history -----------------------------------------------------------------
async def test_history_pages(store):
    ids = [(await post(store, f"m{i}")).id for i in range(25)]
    h = await store.history(ROOM, limit=10)
    assert [orjson.loads(m)["id"] for m in h.messages] == ids[-10:] and h.more and h.gap_oldest is None
    assert (await store.history(ROOM)).messages == (await store.history(ROOM, limit=50)).messages
    # after: continue from the last id until `more` is False; everything once, in order
    seen, cursor = [], 0
    while True:
        page = await store.history(ROOM, after=cursor, limit=7)
        seen += [orjson.loads(m)["id"] for m in page.messages]
        if not page.more:
            break
        cursor = seen[-1]
    assert seen == ids
    assert (await store.history(ROOM, after=ids[-1])).messages == []
    # before: scroll back
    older = await store.history(ROOM, before=ids[10], limit=4)
    assert [orjson.loads(m)["id"] for m in older.messages] == ids[6:10] and older.more
    start = await store.history(ROOM, before=ids[3], limit=4)
    assert [orjson.loads(m)["id"] for m in start.messages] == ids[:3] and not start.more
    assert start.gap_oldest is None                              # never trimmed: no gap
    assert await store.history("8000_empty") == (await store.history("8000_empty"))
    assert (await store.history("8000_empty")).messages == []
    with pytest.raises(BadRequest):
        await store.history(ROOM, after=-1)


async def test_trimmed_rooms_report_the_gap_exactly(settings, store):
    s = await Store.connect(settings.replace(room_max_messages=5))
    try:
        ids = [(await post(s, f"m{i}")).id for i in range(12)]
        kept = ids[-5:]
        assert await s.redis.zcard(s.keys.room(ROOM)) == 5
        h = await s.history(ROOM, after=ids[0])
        assert h.gap_oldest == kept[0] and [orjson.loads(m)["id"] for m in h.messages] == kept
        assert (await s.history(ROOM, after=ids[5])).gap_oldest == kept[0]   # ids[6] is gone
        assert (await s.history(ROOM, after=ids[5])).messages[0] == h.messages[0]
        assert (await s.history(ROOM, after=ids[6])).gap_oldest is None      # saw the last trimmed one
        assert (await s.history(ROOM, after=kept[0])).gap_oldest is None
        assert (await s.history(ROOM, before=kept[2])).gap_oldest == kept[0]
        assert (await s.history(ROOM, before=kept[4], limit=1)).gap_oldest is None   # more exist
        assert (await s.history(ROOM, limit=50)).gap_oldest == kept[0]
    finally:
        await s.close()


# -- offsets and unread --------------------------------------------------------
async def test_offsets_only_move_forward(store):
    assert await store.offset("m", ROOM) == 0
    assert await store.ack("m", ROOM, 100) == 100
    assert await store.ack("m", ROOM, 50) == 100
    assert await store.offset("m", ROOM) == 100
    acks = list(range(1, 301))
    random.shuffle(acks)
    await asyncio.gather(*(store.ack("n", ROOM, a) for a in acks))
    assert await store.offset("n", ROOM) == 300
    big = 2**53 - 1
    assert await store.ack("n", ROOM, big) == big                  # exact at the top of the range
    for bad in (-1, 2**53, "5", 1.5, True):
        with pytest.raises(BadRequest):
            await store.ack("n", ROOM, bad)


async def test_unread_counts_above_the_offset(store):
    ids = [(await post(store, f"m{i}")).id for i in range(10)]
    assert await store.unread("agent", ROOM) == 10
    await store.ack("agent", ROOM, ids[3])
    assert await store.unread("agent", ROOM) == 6
    await store.ack("agent", ROOM, ids[-1])
    assert await store.unread("agent", ROOM) == 0
    await post(store, "new")
    assert await store.unread("agent", ROOM) == 1


async def test_ack_as_marks_the_senders_own_message_read(store):
    await post(store, "from visitor")
    reply = await store.post(room=ROOM, mid="staff", shop=SHOP, type="text", msg="hi", ack_as=agent_mid(SHOP))
    assert await store.offset(agent_mid(SHOP), ROOM) == reply.id
    assert await store.unread(agent_mid(SHOP), ROOM) == 0


# -- profiles, shops, agents -----------------------------------------------------
async def test_profiles(store):
    assert await store.profile("v9") is None
    await store.save_profile("v9", "phone", {"nickname": "A"})
    await store.save_profile("v9", "laptop", {"nickname": "B"}, shop=SHOP)
    assert await store.profile("v9") == {"nickname": "B"}
    assert await store.redis.hget(store.keys.user("v9"), "phone") == b'{"nickname":"A"}'
    assert await store.redis.ttl(store.keys.user("v9")) > 86_400
    assert await store.redis.zscore(store.keys.visitors(SHOP), "v9") is not None
    with pytest.raises(BadRequest):
        await store.save_profile("v9", "@latest", {})


async def test_shops_and_agent_passwords(store):
    assert await store.shop_info(SHOP) is None
    assert not await store.check_agent(SHOP, "pw")
    await store.create_shop(SHOP, name="Shop", password="pw1", face="http://x/f.png")
    info = await store.shop_info(SHOP)
    assert info["name"] == "Shop" and info["face"] == "http://x/f.png" and "pw" not in info
    assert all("scrypt" not in str(v) for v in info.values())
    assert await store.check_agent(SHOP, "pw1") and not await store.check_agent(SHOP, "pw2")
    created = info["created"]
    await store.create_shop(SHOP, name="Renamed", password="pw2")
    info = await store.shop_info(SHOP)
    assert info["name"] == "Renamed" and info["created"] == created
    assert await store.check_agent(SHOP, "pw2") and not await store.check_agent(SHOP, "pw1")
    assert await store.shops() == [SHOP]
    with pytest.raises(BadRequest):
        await store.create_shop("bad_id", name="x", password="p")


# -- online marks ------------------------------------------------------------------
async def test_online_marks_are_batched(store, roundtrips):
    a, b = store.marks("node0:1"), store.marks("node0:2")
    for i in range(200):
        a.connect(f"m{i}", ROOM)
    b.connect("m0", ROOM)
    b.connect("x", "8000_x")
    with roundtrips() as rt:
        counts = await a.flush({"connections": 200})
    assert rt.count == 1 and counts == {ROOM: 200}
    counts = await b.flush()
    assert counts == {ROOM: 201, "8000_x": 1}
    assert await store.online(["m0", "m199", "nobody"]) == [True, True, False]
    assert await store.room_online_count(ROOM) == 201
    assert await store.room_online_counts([ROOM, "8000_x", "none"]) == [201, 1, 0]
    assert 0 < await store.redis.ttl(store.keys.online("m5")) <= store.settings.online_ttl
    assert (await store.servers())["node0:1"]["connections"] == 200
    for i in range(200):
        a.disconnect(f"m{i}", ROOM)
    await a.flush()
    assert await store.online(["m0", "m5"]) == [True, False]       # m0 still on b
    assert await store.room_online_count(ROOM) == 1
    await b.clear()
    assert await store.online(["m0", "x"]) == [False, False]
    assert await store.room_online_count("8000_x") == 0


async def test_marks_of_a_dead_worker_expire_per_field(settings, store):
    short = await Store.connect(settings.replace(online_ttl=1))
    try:
        dead, alive = short.marks("dead"), store.marks("alive")
        dead.connect("m", ROOM)
        alive.connect("m", ROOM)
        await dead.flush()
        await alive.flush()                  # keeps the hash alive for online_ttl (120 s)
        assert await store.room_online_count(ROOM) == 2
        await asyncio.sleep(1.1)
        assert await store.room_online_count(ROOM) == 1
        assert await store.online(["m"]) == [True]
    finally:
        await short.close()


# -- the agent's conversation list ---------------------------------------------------
async def test_conversations(store, roundtrips):
    for i in range(3):
        await store.save_profile(f"v{i}", "d", {"nickname": f"N{i}"}, shop=SHOP)
    ids = {}
    for i in range(3):
        ids[i] = [(await post(store, f"hi{j}", room=f"{SHOP}_v{i}", mid=f"v{i}")).id for j in range(i + 1)]
    await store.ack(agent_mid(SHOP), f"{SHOP}_v2", ids[2][0])
    marks = store.marks("w")
    marks.connect("v1", f"{SHOP}_v1")
    await marks.flush()
    with roundtrips() as rt:
        conv = await store.conversations(SHOP)
    assert rt.count == 2
    assert [c["mid"] for c in conv] == ["v2", "v1", "v0"]                 # newest activity first
    c2, c1, c0 = conv
    assert c2["user"] == {"nickname": "N2"} and c2["room_id"] == f"{SHOP}_v2"
    assert (c2["seq"], c2["num"]) == (ids[2][0], 2) and (c0["seq"], c0["num"]) == (0, 1)
    assert [c["online"] for c in conv] == [False, True, False]
    assert c1["last"]["id"] == ids[1][-1] and c1["last"]["msg"] == "hi1"
    assert [c["mid"] for c in await store.conversations(SHOP, offset=1, limit=1)] == ["v1"]
    assert await store.conversations("nope") == []


async def test_conversation_list_cost_does_not_grow_with_the_page(store, roundtrips):
    for i in range(60):
        await post(store, "x", room=f"{SHOP}_u{i}", mid=f"u{i}")
    with roundtrips() as rt:
        conv = await store.conversations(SHOP, limit=60)
    assert len(conv) == 60 and rt.count == 2


async def test_conversations_changed_since(store):
    await post(store, "old", room=f"{SHOP}_a", mid="a")
    since = int(time.time() * 1000)
    await asyncio.sleep(0.01)
    await post(store, "new", room=f"{SHOP}_b", mid="b")
    changed = await store.conversations(SHOP, changed_since_ms=since)
    assert [c["mid"] for c in changed] == ["b"]
    assert len(await store.conversations(SHOP)) == 2


# -- retention ----------------------------------------------------------------------
async def test_sweep_deletes_idle_conversations(store):
    keep = await post(store, "recent", room=f"{SHOP}_keep", mid="keep")
    gone = await post(store, "old", room=f"{SHOP}_gone", mid="gone")
    await store.ack("gone", f"{SHOP}_gone", gone.id)
    await store.ack(agent_mid(SHOP), f"{SHOP}_gone", gone.id)
    await store.ack(agent_mid(SHOP), f"{SHOP}_keep", keep.id)
    eight_days_ago = int(time.time() * 1000) - 8 * 86_400_000
    await store.redis.zadd(store.keys.visitors(SHOP), {"gone": eight_days_ago})     # idle for 8 days
    assert await store.sweep() == 1
    k = store.keys
    assert not await store.redis.exists(k.room(f"{SHOP}_gone"))
    assert await store.redis.zscore(k.visitors(SHOP), "gone") is None
    assert await store.redis.zscore(k.notices(SHOP), "gone") is None
    assert await store.offset("gone", f"{SHOP}_gone") == 0
    assert await store.offset(agent_mid(SHOP), f"{SHOP}_gone") == 0
    assert await store.offset(agent_mid(SHOP), f"{SHOP}_keep") == keep.id
    assert (await store.history(f"{SHOP}_keep")).messages == [keep.json]
    assert [c["mid"] for c in await store.conversations(SHOP)] == ["keep"]
    # a client returning with an old id learns that its history is gone
    again = await post(store, "back", room=f"{SHOP}_gone", mid="gone")
    h = await store.history(f"{SHOP}_gone", after=gone.id - 1)
    assert h.gap_oldest == again.id and h.messages == [again.json]
    assert await store.sweep() == 0


async def test_sweep_is_bounded_and_uses_the_configured_age(store):
    for i in range(5):
        await post(store, "x", room=f"{SHOP}_s{i}", mid=f"s{i}")
        await post(store, "x", room=f"8001_s{i}", mid=f"s{i}", shop="8001")
    now = int(time.time() * 1000)
    assert await store.sweep(now_ms=now + 6 * 86_400_000) == 0       # 6 days: kept
    later = now + 7 * 86_400_000 + 1000
    assert [await store.sweep(now_ms=later, max_rooms=4) for _ in range(4)] == [4, 4, 2, 0]
    assert await store.redis.keys(f"{store.keys.p}room:*") == []


async def test_sweep_keeps_a_conversation_that_came_alive(store):
    await post(store, "x", room=f"{SHOP}_z", mid="z")
    from kefu.store.scripts import SWEEP
    from kefu.store.base import run_script
    k, room = store.keys, f"{SHOP}_z"
    stale_cutoff = int(time.time() * 1000) - 1000          # scanned as idle, then a message came
    kept = await run_script(store.redis, SWEEP, [k.visitors(SHOP), k.notices(SHOP), k.room(room),
                                                 k.trimmed(room), k.offsets("z"), k.offsets(agent_mid(SHOP))],
                            ["z", stale_cutoff, room, 1000])
    assert kept == 0 and await store.redis.exists(k.room(room))


# -- rate limits and blocks ------------------------------------------------------------
async def test_token_bucket_is_shared(store, settings):
    other = await Store.connect(settings, worker=3)
    try:
        assert [await s.allow("ip:1", rate=1, burst=3) for s in (store, other, store)] == [0, 0, 0]
        wait = await other.allow("ip:1", rate=1, burst=3)
        assert 0.5 < wait <= 1.0
        assert await store.allow("ip:2", rate=10, burst=1) == 0
        await asyncio.sleep(0.15)
        assert await store.allow("ip:2", rate=10, burst=1) == 0
        assert await store.redis.pttl(store.keys.ratelimit("ip:2")) > 0
    finally:
        await other.close()


async def test_blocks(store):
    assert not await store.is_blocked(SHOP, "v1", "1.2.3.4")
    await store.block(SHOP, "1.2.3.4", 1)
    assert await store.is_blocked(SHOP, "v1", "1.2.3.4")
    assert not await store.is_blocked("8001", "1.2.3.4")
    assert not await store.is_blocked(SHOP)
    await asyncio.sleep(1.1)
    assert not await store.is_blocked(SHOP, "1.2.3.4")
    await store.block(SHOP, "v1", 60)
    await store.unblock(SHOP, "v1")
    assert not await store.is_blocked(SHOP, "v1")


# -- goim pushes ---------------------------------------------------------------------------
async def test_goim_pushes(store, settings):
    async with Subscriber(settings.redis_url) as sub:
        await sub.subscribe(store.keys.push_channel(), store.keys.room_channel("live"))
        assert await store.push("mids", ["a", "b"], 1000, b"payload") == 1
        assert await store.push_room("live", 1001, b"room payload") == 1
        got = await sub.collect(2)
    kind, targets, frame = envelope.unpack(got[0][1])
    assert (kind, targets) == (b"mids", ["a", "b"])
    assert tlv.decode(frame) == (Op.RAW, 0, tlv.encode(1000, 0, b"payload"))
    assert tlv.decode(got[1][1]) == (Op.RAW, 0, tlv.encode(1001, 0, b"room payload"))
    assert await store.history("live") == (await store.history("live"))   # pushes are not stored
    assert (await store.history("live")).messages == []


# -- round trips per call ----------------------------------------------------------------
async def test_round_trips_per_call(store, roundtrips):
    await post(store, "warm up")
    costs = {}
    for name, call in [
        ("post", lambda: post(store, "x")),
        ("history", lambda: store.history(ROOM)),
        ("history_after", lambda: store.history(ROOM, after=1)),
        ("ack", lambda: store.ack("m", ROOM, 10)),
        ("unread", lambda: store.unread("m", ROOM)),
        ("online", lambda: store.online(["a", "b", "c"])),
        ("allow", lambda: store.allow("b", 1, 5)),
        ("is_blocked", lambda: store.is_blocked(SHOP, "a", "b")),
        ("save_profile", lambda: store.save_profile("m", "d", {}, shop=SHOP)),
        ("sweep", lambda: store.sweep()),
    ]:
        with roundtrips() as rt:
            await call()
        costs[name] = rt.count
    assert costs == {"post": 1, "history": 1, "history_after": 1, "ack": 1, "unread": 1, "online": 1,
                     "allow": 1, "is_blocked": 1, "save_profile": 1, "sweep": 2}


# -- outages ---------------------------------------------------------------------------------
async def test_outage_is_store_unavailable(settings, spawn_redis):
    url, proc = spawn_redis()
    s = await Store.connect(settings.replace(redis_url=url))
    stored = await post(s, "before")
    assert (await s.history(ROOM)).messages == [stored.json]
    proc.kill()
    proc.wait()
    try:
        with pytest.raises(StoreUnavailable):
            await post(s, "after")
        results = await asyncio.gather(*(post(s, f"c{i}") for i in range(20)), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results)
        marks = s.marks("w")
        marks.connect("m", ROOM)
        for call in (s.history(ROOM), s.ack("m", ROOM, 1), s.unread("m", ROOM), s.online(["m"]),
                     s.conversations(SHOP), s.allow("b", 1, 1), marks.flush(), s.sweep(),
                     s.create_shop(SHOP, name="n", password="p"), s.push_room(ROOM, 5, b"")):
            with pytest.raises(StoreUnavailable):
                await call
    finally:
        await s.close()
    with pytest.raises(StoreUnavailable):
        await Store.connect(settings.replace(redis_url=url))


def test_ids_carry_time():
    """Retention and the visitor list rely on ids being millisecond timestamps."""
    assert abs(timestamp_ms(Snowflake(0)()) - time.time() * 1000) < 1000
