"""kefu.cluster_bus against a real local Redis Cluster: room channels on
sharded pub/sub at the master owning their slot, the push and shop channels
on one global link, and subscriptions that follow failovers and restarts
(reported to on_recovered so the hub can replay what was missed)."""
from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from redis.crc import key_slot

from cluster_fixtures import cluster_factory, redis_cluster  # noqa: F401  (fixtures)
from kefu import tlv
from kefu.cluster_bus import ClusterBus
from kefu.config import Settings
from kefu.keys import Keys
from kefu.store import Store

pytestmark = pytest.mark.cluster
SHOP = "8000"


class Sink:
    def __init__(self):
        self.got: list[tuple[bytes, bytes]] = []
        self.recovered: list[tuple[list[bytes], float]] = []

    def on_message(self, ch, payload):
        self.got.append((ch, payload))

    def on_recovered(self, chans, since):
        self.recovered.append((chans, since))

    def ids(self, ch: bytes) -> list[int]:
        return [orjson.loads(tlv.decode(p)[2])["id"] for c, p in self.got if c == ch]


async def until(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def rooms_on_every_master(keys: Keys, cluster, n_per: int = 1) -> list[str]:
    """Room ids whose channels hash to each master in turn."""
    want = {p: n_per for p in cluster.ports[:cluster.masters]}
    rooms, i = [], 0
    while any(want.values()):
        room = f"{SHOP}_v{i}"
        port = cluster.master_of_slot(key_slot(keys.room_channel(room).encode()))
        if want.get(port):
            want[port] -= 1
            rooms.append(room)
        i += 1
    return rooms


async def make(url: str, prefix: str):
    settings = Settings(redis_url=url, prefix=prefix)
    keys = Keys(prefix)
    sink = Sink()
    bus = ClusterBus(url, sink.on_message, on_recovered=sink.on_recovered, sharded=keys.is_room_channel,
                     ping_interval=1.0, refresh_interval=1.0)
    await bus.start(wait=10)
    store = await Store.connect(settings)
    return keys, sink, bus, store


async def test_room_channels_are_sharded_per_master(redis_cluster):   # noqa: F811
    keys, sink, bus, store = await make(redis_cluster.url, f"cb{time.time_ns() % 10**6}:")
    try:
        rooms = rooms_on_every_master(keys, redis_cluster)
        chans = [keys.room_channel(r).encode() for r in rooms]
        for ch in chans + [keys.shop_channel(SHOP).encode(), keys.push_channel().encode()]:
            bus.want(ch)
        await bus.ready(chans + [keys.push_channel().encode()], 10)
        assert len(bus.shards) == redis_cluster.masters
        assert {bus.owner[ch] for ch in chans} == {("127.0.0.1", p) for p in redis_cluster.ports[:3]}
        posted = {r: [(await store.post(room=r, mid=r.split("_")[1], shop=SHOP, type="text", msg="x")).id
                      for _ in range(3)] for r in rooms}
        await store.push("all", [], 1000, b"all")
        await until(lambda: len(sink.got) == 3 * 3 + 3 * 3 + 1, what="every frame")
        for r, ch in zip(rooms, chans):
            assert sink.ids(ch) == posted[r]
        shop_ids = sink.ids(keys.shop_channel(SHOP).encode())
        assert sorted(shop_ids) == sorted(i for ids in posted.values() for i in ids)
        bus.unwant(chans[0])
        await asyncio.sleep(0.2)
        before = len(sink.got)
        await store.post(room=rooms[0], mid="v", shop=SHOP, type="text", msg="unheard")
        await asyncio.sleep(0.3)
        assert [c for c, _ in sink.got[before:]] == [keys.shop_channel(SHOP).encode()]
        assert not sink.recovered and bus.stats["slot_moves"] == 0
    finally:
        await bus.close()
        await store.close()


@pytest.mark.slow
async def test_subscriptions_follow_a_failover_and_a_restart(cluster_factory):   # noqa: F811
    cluster = cluster_factory(masters=3, replicas=1)
    keys, sink, bus, store = await make(cluster.url, "fo:")
    try:
        rooms = rooms_on_every_master(keys, cluster)
        chans = [keys.room_channel(r).encode() for r in rooms]
        for ch in chans:
            bus.want(ch)
        await bus.ready(chans, 10)
        victim_room, victim_ch = rooms[0], chans[0]
        master = cluster.master_of_slot(key_slot(victim_ch))
        replica = cluster.replica_of(master)
        t0 = time.time()
        cluster.failover(replica)                      # coordinated: nothing is lost
        await until(lambda: bus.owner.get(victim_ch) == ("127.0.0.1", replica) and bus.is_ready(victim_ch),
                    what="the channel to move to the new master")
        await until(lambda: any(victim_ch in c for c, _ in sink.recovered), what="the move reported")
        since = min(s for c, s in sink.recovered if victim_ch in c)
        assert since <= t0 + 0.5
        p = await store.post(room=victim_room, mid="v", shop=SHOP, type="text", msg="after failover")
        await until(lambda: p.id in sink.ids(victim_ch), what="delivery from the new master")
        # a master killed and started again (no failover: its replica is the old master... of
        # another shard); its link reconnects and reports its channels recovered
        other_ch, other_room = chans[1], rooms[1]
        port = cluster.master_of_slot(key_slot(other_ch))
        n = len(sink.recovered)
        cluster.kill(cluster.replica_of(port))         # keep it a master: no replica to promote
        cluster.kill(port)
        await asyncio.sleep(0.5)
        cluster.restart(port)
        cluster.wait_ok(30)
        await until(lambda: any(other_ch in c for c, _ in sink.recovered[n:]), timeout=30,
                    what="the restarted master's channels recovered")
        deadline = time.monotonic() + 20
        while True:
            try:
                p2 = await store.post(room=other_room, mid="v", shop=SHOP, type="text", msg="after restart")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        await until(lambda: p2.id in sink.ids(other_ch), what="delivery after the restart")
    finally:
        await bus.close()
        await store.close()
