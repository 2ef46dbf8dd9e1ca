"""The store against a real local Redis Cluster (3 masters): the same contracts
as tests/test_store.py, re-run here on redis-py's cluster client, plus what
only a cluster has: scripts confined to one slot, room frames on sharded
pub/sub (SPUBLISH reaches the room's shard only), shop frames relayed by
PUBLISH to every node, unread and sweep split by slot.
"""
from __future__ import annotations

import asyncio
import itertools
import time

import orjson
import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from cluster_fixtures import redis_cluster  # noqa: F401  (fixture)
from kefu import tlv
from kefu.config import Settings
from kefu.protocol import Op
from kefu.store import Store, agent_mid

# The store contracts, collected again in this module so that they use the
# cluster `settings` and `store` fixtures below.
from test_store import (  # noqa: F401
    ROOM, SHOP, VISITOR, post,
    test_ack_as_marks_the_senders_own_message_read,
    test_blocks, test_client_msg_id_makes_retries_idempotent, test_conversations_changed_since,
    test_history_pages, test_idempotency_record_expires, test_many_writers_exact_unread,
    test_marks_of_a_dead_worker_expire_per_field, test_offsets_only_move_forward,
    test_post_refuses_a_room_of_another_shop, test_processes_with_skewed_clocks_keep_room_ids_increasing,
    test_profiles, test_shops_and_agent_passwords, test_sweep_is_bounded_and_uses_the_configured_age,
    test_token_bucket_is_shared, test_post_stores_the_message_json,
    test_trimmed_rooms_report_the_gap_exactly, test_unread_counts_above_the_offset,
    test_a_replayed_pipeline_does_not_store_twice,
)

pytestmark = pytest.mark.cluster
_prefixes = itertools.count()


@pytest.fixture
def settings(tmp_path, redis_cluster) -> Settings:   # noqa: F811
    return Settings(redis_url=redis_cluster.url, data_dir=str(tmp_path),
                    prefix=f"c{next(_prefixes)}-{int(time.time() * 1000) % 100000}:")


@pytest.fixture
async def store(settings):
    s = await Store.connect(settings)
    assert s.cluster
    yield s
    await s.close()


def node_client(cluster, key: str) -> aioredis.Redis:
    """A plain client on the master serving `key`'s slot."""
    return aioredis.Redis(host="127.0.0.1", port=cluster.master_of_slot(key_slot(key.encode())))


async def test_room_and_shop_keys_each_live_in_one_slot(store):
    k = store.keys
    room = [k.room(ROOM), k.trimmed(ROOM), k.room_online(ROOM), k.idempotency(ROOM, "x"), k.room_channel(ROOM)]
    shop = [k.shop(SHOP), k.visitors(SHOP), k.notices(SHOP), k.shop_channel(SHOP), k.block(SHOP, "ip")]
    assert len({key_slot(x.encode()) for x in room}) == 1
    assert len({key_slot(x.encode()) for x in shop}) == 1


async def test_post_goes_to_the_rooms_shard_and_the_shops_stream(store, redis_cluster):   # noqa: F811
    k = store.keys
    room_ch, shop_ch = k.room_channel(ROOM), k.shop_channel(SHOP)
    owner = node_client(redis_cluster, room_ch)
    other_port = next(p for p in redis_cluster.ports
                      if p != redis_cluster.master_of_slot(key_slot(room_ch.encode())))
    other = aioredis.Redis(host="127.0.0.1", port=other_port)
    sharded, wrong_shard, shop_sub = owner.pubsub(), other.pubsub(), other.pubsub()
    try:
        await sharded.ssubscribe(room_ch)
        await shop_sub.subscribe(shop_ch)
        await wrong_shard.subscribe(room_ch)          # a plain SUBSCRIBE never sees SPUBLISH
        await asyncio.sleep(0.1)
        p = await post(store, "to the shard")
        got = {}
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            for name, ps in (("room", sharded), ("shop", shop_sub)):
                m = await ps.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if m and m["type"] in ("smessage", "message"):
                    got[name] = m
        assert got["room"]["type"] == "smessage" and got["shop"]["type"] == "message"
        for m in got.values():
            op, _seq, body = tlv.decode(m["data"])
            assert op == Op.MESSAGE and orjson.loads(body)["id"] == p.id
        assert await wrong_shard.get_message(ignore_subscribe_messages=True, timeout=0.3) is None
    finally:
        for ps in (sharded, wrong_shard, shop_sub):
            await ps.aclose()
        await owner.aclose()
        await other.aclose()


async def test_500_concurrent_posts_one_room_in_id_order_on_its_shard(store, redis_cluster):   # noqa: F811
    room_ch = store.keys.room_channel(ROOM)
    owner = node_client(redis_cluster, room_ch)
    ps = owner.pubsub()
    try:
        await ps.ssubscribe(room_ch)
        await asyncio.sleep(0.05)
        posts = await asyncio.gather(*(post(store, f"m{i}") for i in range(500)))
        pushed = []
        deadline = time.monotonic() + 10
        while len(pushed) < 500 and time.monotonic() < deadline:
            m = await ps.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if m:
                pushed.append(orjson.loads(tlv.decode(m["data"])[2])["id"])
    finally:
        await ps.aclose()
        await owner.aclose()
    ids = [p.id for p in posts]
    assert len(set(ids)) == 500 and ids == sorted(ids) and pushed == ids


async def test_push_room_and_notices_are_sharded(store, redis_cluster):   # noqa: F811
    room_ch = store.keys.room_channel(ROOM)
    owner = node_client(redis_cluster, room_ch)
    ps = owner.pubsub()
    try:
        await ps.ssubscribe(room_ch)
        await asyncio.sleep(0.05)
        assert await store.push_room(ROOM, 1000, b"hello") == 1
        assert await store.publish_room(ROOM, b"notice") == 1
        seen = []
        deadline = time.monotonic() + 5
        while len(seen) < 2 and time.monotonic() < deadline:
            m = await ps.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if m:
                seen.append(m["data"])
        assert seen[1] == b"notice" and tlv.decode(seen[0])[0] == Op.RAW
    finally:
        await ps.aclose()
        await owner.aclose()


async def test_goim_push_is_a_cluster_wide_publish(store, redis_cluster):   # noqa: F811
    subs = [aioredis.Redis(host="127.0.0.1", port=p) for p in redis_cluster.ports]
    pss = [c.pubsub() for c in subs]
    try:
        for ps in pss:
            await ps.subscribe(store.keys.push_channel())
        await asyncio.sleep(0.1)
        await store.push("all", [], 1000, b"to everyone")
        for ps in pss:
            m = None
            deadline = time.monotonic() + 5
            while m is None and time.monotonic() < deadline:
                m = await ps.get_message(ignore_subscribe_messages=True, timeout=0.2)
            assert m is not None and b"to everyone" in m["data"]
    finally:
        for ps, c in zip(pss, subs):
            await ps.aclose()
            await c.aclose()


async def test_post_keeps_the_shop_lists(store):
    p = await post(store, "hello")
    assert p.id > 0
    assert await store.redis.zscore(store.keys.visitors(SHOP), VISITOR) is not None
    assert await store.redis.zscore(store.keys.notices(SHOP), VISITOR) is not None


async def test_conversations_and_unread_split_by_slot(store):
    for i in range(3):
        await post(store, f"m{i}")
    await store.save_profile(VISITOR, "web", {"nickname": "V"}, shop=SHOP)
    first = (await store.history(ROOM)).messages[0]
    await store.ack(agent_mid(SHOP), ROOM, orjson.loads(first)["id"])
    assert await store.unread(agent_mid(SHOP), ROOM) == 2
    rows = await store.conversations(SHOP)
    assert len(rows) == 1 and rows[0]["num"] == 2 and rows[0]["user"]["nickname"] == "V"
    assert rows[0]["last"]["msg"] == "m2" and rows[0]["seq"] == orjson.loads(first)["id"]


async def test_sweep_on_a_cluster(store):
    k = store.keys
    await post(store, "old", room=f"{SHOP}_gone", mid="gone")
    await store.ack(agent_mid(SHOP), f"{SHOP}_gone", 1)
    await post(store, "fresh")
    later = int(time.time() * 1000) + 8 * 86_400_000
    await store.redis.zadd(k.visitors(SHOP), {VISITOR: later})        # the fresh one stays active
    assert await store.sweep(now_ms=later) == 1
    assert not await store.redis.exists(k.room(f"{SHOP}_gone"))
    assert await store.redis.exists(k.trimmed(f"{SHOP}_gone"))
    assert await store.redis.hget(k.offsets(agent_mid(SHOP)), f"{SHOP}_gone") is None
    assert await store.redis.exists(k.room(ROOM))


async def test_sweep_keeps_a_room_written_between_its_two_halves(store):
    """The shop half removed the visitor, then a message arrived: the room half keeps the room."""
    from kefu.store.scripts import SWEEP_ROOM
    from kefu.store.base import run_script
    from kefu.ids import EPOCH_MS, SEQ_BITS, WORKER_BITS
    k = store.keys
    await post(store, "just now")
    cutoff = int(time.time() * 1000) - 60_000
    kept = await run_script(store.redis, SWEEP_ROOM, [k.room(ROOM), k.trimmed(ROOM)],
                            [cutoff, 1000, EPOCH_MS, 1 << (WORKER_BITS + SEQ_BITS)])
    assert kept == 0 and await store.redis.exists(k.room(ROOM))


async def test_scripts_are_on_every_master(store, redis_cluster):   # noqa: F811
    from kefu.store.scripts import ALL
    for port in redis_cluster.ports[:redis_cluster.masters]:
        c = aioredis.Redis(host="127.0.0.1", port=port)
        try:
            assert all(await c.script_exists(*(s.sha for s in ALL)))
        finally:
            await c.aclose()


def test_cluster_url_parsing():
    from kefu.store.base import cluster_nodes
    assert cluster_nodes("redis+cluster://h1:7000,h2:7001/") == ([("h1", 7000), ("h2", 7001)], {})
    nodes, opts = cluster_nodes("redis+cluster://u:p%40ss@h:1")
    assert nodes == [("h", 1)] and opts == {"username": "u", "password": "p@ss"}
    assert cluster_nodes("redis+cluster://secret@h:1")[1] == {"username": None, "password": "secret"}
