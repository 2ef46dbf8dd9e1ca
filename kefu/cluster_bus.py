"""The comet worker's pub/sub on a Redis Cluster: sharded room channels.

Same interface as kefu.bus.Bus (want/unwant, ready, connected, stats,
start/close, the three callbacks), built from Bus links:

    global link   one Bus to any node: SUBSCRIBE for the channels every node
                  relays (goim push channel, shop channels); a PUBLISH on a
                  cluster reaches every node, so any node will do, and the
                  link moves to another one when its node goes away
    shard links   one per master holding a wanted room channel: SSUBSCRIBE
                  `ch:{r:<room>}` on the master that owns its slot, so a
                  room's frames (SPUBLISHed by the store's post script, in
                  the room's slot) travel to that shard only

The slot map comes from CLUSTER SLOTS, read at start, every
`refresh_interval`, and soon after anything says it changed: a -MOVED
answer to SSUBSCRIBE, an unsolicited `sunsubscribe` (Redis drops a shard
channel's subscribers when its slot leaves the node: resharding or
failover), or a shard link lost.  Each channel whose owner changed is
moved to the new owner's link; once the new SSUBSCRIBE is confirmed,
`on_recovered([channel], since)` reports it with the time the old
subscription was lost, so the hub replays from the store what was
published meanwhile (stored before pushed) -- the same path as a single
Redis outage.  A shard link that reconnects to the same node does the
same through Bus itself.

Delivery itself is Bus's: per link, one RESP reader feeding the hub
synchronously, no task per message.  Each link answers in order, so a
SSUBSCRIBE's reply (or its -MOVED error) is matched to the command by a
FIFO of what was sent, one channel per command (SSUBSCRIBE of several
channels must stay within one slot).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from typing import Callable, Iterable

import redis.asyncio as aioredis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from .bus import Bus, command
from .errors import StoreUnavailable
from .store.base import cluster_nodes

log = logging.getLogger("kefu.bus")

Addr = tuple[str, int]
REFRESH_INTERVAL = 10.0         # seconds between slot-map reads when nothing happens
REFRESH_SOON = 0.05             # after a sign of change (debounce)
REFRESH_UNSETTLED = 0.5         # while a channel waits for a reachable owner
_SSUB, _SUNSUB = b"ssubscribe", b"sunsubscribe"
_SSUB_CMD, _SUNSUB_CMD = b"SSUBSCRIBE", b"SUNSUBSCRIBE"


class _GlobalLink(Bus):
    """A Bus on any node of the cluster, trying the next one when its node is gone."""

    def __init__(self, parent: "ClusterBus", *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.parent = parent
        self._turn = 0

    async def _connect(self):
        addrs = self.parent.node_addrs()
        host, port = addrs[self._turn % len(addrs)]
        self._turn += 1
        self._opts = {"host": host, "port": port, **self.parent.auth}
        self.url = f"redis://{host}:{port}"
        return await super()._connect()


class _ShardLink(Bus):
    """A Bus on one master speaking sharded pub/sub (SSUBSCRIBE/SUNSUBSCRIBE)."""

    def __init__(self, parent: "ClusterBus", addr: Addr, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.parent = parent
        self.addr = addr
        self._opts = {"host": addr[0], "port": addr[1], **parent.auth}
        self._fifo: collections.deque[tuple[bytes, bytes]] = collections.deque()

    def _sync(self) -> None:
        """As Bus._sync, one channel per command, each remembered for its answer."""
        self._flush_handle = None
        link = self.link
        if link is None:
            return
        add = self.wanted - self._sent
        drop = self._sent - self.wanted
        out = []
        for verb, chans in ((_SSUB_CMD, add), (_SUNSUB_CMD, drop)):
            for ch in chans:
                out.append(command(verb, ch))
                self._inflight[ch] = self._inflight.get(ch, 0) + 1
                self._fifo.append((verb, ch))
        self._sent |= add
        self._sent -= drop
        if out:
            link.transport.write(b"".join(out))

    def _reply(self, reply) -> None:
        if isinstance(reply, Exception):
            self._refused(str(reply))
            return
        if type(reply) is list and len(reply) > 1 and reply[0] in (_SSUB, _SUNSUB):
            verb = _SSUB_CMD if reply[0] == _SSUB else _SUNSUB_CMD
            ch = reply[1]
            if self._fifo and self._fifo[0] == (verb, ch):
                self._fifo.popleft()
                self._answered(ch)
                if verb == _SSUB_CMD and ch in self._sent:
                    self.parent._subscribed(ch, self)
            elif verb == _SUNSUB_CMD:
                self._dropped(ch)            # Redis dropped it: the slot left this node
            return
        super()._reply(reply)

    def _settle(self, ch: bytes) -> None:
        n = self._inflight.get(ch, 0) - 1
        if n > 0:
            self._inflight[ch] = n
        else:
            self._inflight.pop(ch, None)

    def _refused(self, text: str) -> None:
        """An error answer: -MOVED, -CLUSTERDOWN, ... to the oldest command still unanswered."""
        if not self._fifo:
            log.warning("redis error on a shard pub/sub connection: %s", text)
            return
        verb, ch = self._fifo.popleft()
        self._settle(ch)
        self._sent.discard(ch)
        if verb == _SSUB_CMD and ch in self.wanted:
            self._give_up(ch, f"answered {text}")

    def _dropped(self, ch: bytes) -> None:
        self._sent.discard(ch)
        if ch in self.wanted:
            self._give_up(ch, "no longer serves its slot")

    def _give_up(self, ch: bytes, why: str) -> None:
        """Hand `ch` back to the parent, with the outage it was recovering from (if any)."""
        self.wanted.discard(ch)
        since = self._outage_since if ch in self._recovering else None
        self._recovering.discard(ch)
        self.parent._lost(ch, f"{self.addr[0]}:{self.addr[1]} {why}", since)

    def _detach(self) -> None:
        super()._detach()
        self._fifo.clear()
        self.parent._link_lost(self)


class ClusterBus:
    """kefu.bus.Bus's interface over a Redis Cluster (module docstring)."""

    def __init__(self, url: str, on_message: Callable[[bytes, bytes], None],
                 on_flush: Callable[[], None] = lambda: None,
                 on_recovered: Callable[[list[bytes], float], None] | None = None, *,
                 sharded: Callable[[bytes], bool], ping_interval: float = 5.0,
                 name: str = "kefu-comet", refresh_interval: float = REFRESH_INTERVAL) -> None:
        self.seeds, self.auth = cluster_nodes(url)
        self.auth = {k: v for k, v in self.auth.items() if v}
        self.on_message, self.on_flush, self.on_recovered = on_message, on_flush, on_recovered
        self.sharded = sharded
        self.ping_interval, self.name = ping_interval, name
        self.refresh_interval = refresh_interval
        self.slots: list[Addr | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self.masters: list[Addr] = []
        self.wanted: set[bytes] = set()
        self.owner: dict[bytes, Addr] = {}          # sharded channel -> master it is wanted on
        self.parked: dict[bytes, float] = {}        # sharded channels waiting for an owner: since
        self.recovering: dict[bytes, float] = {}    # moved channels not yet confirmed: since
        self.shards: dict[Addr, _ShardLink] = {}
        self.moves = 0
        self._prev_refresh = self._last_refresh = time.time()
        self.glob = _GlobalLink(self, f"redis://{self.seeds[0][0]}:{self.seeds[0][1]}", on_message,
                                on_flush, on_recovered, ping_interval=ping_interval, name=f"{name}-g")
        self._kick = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._starts: set[asyncio.Task] = set()
        self._closing = False

    # -- lifecycle -------------------------------------------------------
    async def start(self, wait: float | None = None) -> None:
        try:
            await asyncio.wait_for(self._refresh(), wait or 10.0)
        except Exception as exc:  # noqa: BLE001 - any failure to read the slot map: not reachable
            raise StoreUnavailable(f"redis cluster not reachable at {self.seeds}: "
                                   f"{exc or type(exc).__name__}") from None
        await self.glob.start(wait=wait)
        self._task = asyncio.get_running_loop().create_task(self._topology(), name="kefu-bus-slots")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._starts, return_exceptions=True)
        for link in [self.glob, *self.shards.values()]:
            await link.close()

    @property
    def connected(self) -> bool:
        return self.glob.connected

    @property
    def stats(self) -> dict:
        out = collections.Counter(self.glob.stats)
        for link in self.shards.values():
            out.update(link.stats)
        out["slot_moves"] = self.moves
        return out

    # -- subscriptions ---------------------------------------------------
    def node_addrs(self) -> list[Addr]:
        seen = dict.fromkeys([*self.masters, *self.seeds])
        return list(seen)

    def owner_of(self, ch: bytes) -> Addr | None:
        return self.slots[key_slot(ch)]

    def want(self, ch: bytes) -> None:
        self.wanted.add(ch)
        if not self.sharded(ch):
            self.glob.want(ch)
            return
        addr = self.owner_of(ch)
        if addr is None:
            self.parked.setdefault(ch, time.time())
            self._kick.set()
            return
        self.owner[ch] = addr
        self._link(addr).want(ch)

    def unwant(self, ch: bytes) -> None:
        self.wanted.discard(ch)
        if not self.sharded(ch):
            self.glob.unwant(ch)
            return
        self.parked.pop(ch, None)
        self.recovering.pop(ch, None)
        addr = self.owner.pop(ch, None)
        if addr is not None and addr in self.shards:
            self.shards[addr].unwant(ch)

    def is_ready(self, ch: bytes) -> bool:
        if not self.sharded(ch):
            return self.glob.is_ready(ch)
        addr = self.owner.get(ch)
        return addr is not None and ch not in self.parked and self.shards[addr].is_ready(ch)

    async def ready(self, channels: Iterable[bytes], timeout: float) -> None:
        """Return once every channel is subscribed where it lives; StoreUnavailable on timeout.

        A channel may move while we wait (a -MOVED answer): each round waits
        on the link that holds it now.
        """
        channels = list(channels)
        deadline = time.monotonic() + timeout
        while True:
            todo = [ch for ch in channels if not self.is_ready(ch)]
            if not todo:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreUnavailable("redis did not confirm the subscription")
            by_link: dict[Bus, list[bytes]] = {}
            for ch in todo:
                link = self.glob if not self.sharded(ch) else self.shards.get(self.owner.get(ch))
                if link is not None and ch not in self.parked:
                    by_link.setdefault(link, []).append(ch)
            if not by_link:
                await asyncio.sleep(min(left, 0.05))
                continue
            try:
                await asyncio.gather(*(link.ready(chs, min(left, 0.5)) for link, chs in by_link.items()))
            except StoreUnavailable:
                pass

    def _link(self, addr: Addr) -> _ShardLink:
        link = self.shards.get(addr)
        if link is None:
            link = self.shards[addr] = _ShardLink(
                self, addr, f"redis://{addr[0]}:{addr[1]}", self.on_message, self.on_flush,
                self.on_recovered, ping_interval=self.ping_interval, name=f"{self.name}-s")
            task = asyncio.get_running_loop().create_task(link.start())
            self._starts.add(task)
            task.add_done_callback(self._starts.discard)
        return link

    # -- moves -----------------------------------------------------------
    def _lost(self, ch: bytes, why: str, since: float | None = None) -> None:
        """A shard link no longer holds `ch`: park it until the slot map says where it lives.

        `since`: when the link lost it, if earlier than now (a refusal while
        re-subscribing after a reconnect): the replay must start there.
        """
        log.info("pub/sub channel %r moves (%s); re-reading the slot map", ch[:80], why)
        self.owner.pop(ch, None)
        self.parked.setdefault(ch, since or time.time())
        self._kick.set()

    def _link_lost(self, link: _ShardLink) -> None:
        if not self._closing:
            self._kick.set()

    def _subscribed(self, ch: bytes, link: _ShardLink) -> None:
        """A SSUBSCRIBE was confirmed: report a moved channel as recovered."""
        since = self.recovering.pop(ch, None)
        if since is not None and self.on_recovered is not None:
            try:
                self.on_recovered([ch], since)
            except Exception:
                log.exception("recovery callback failed")

    def _reroute(self) -> None:
        """Put every wanted sharded channel on the link of its slot's master.

        A moved channel is replayed from the earliest moment it may have
        missed something: when its loss was seen, when its old link went
        down, or at the latest the previous slot-map read (the move happened
        after the map that still showed the old owner).
        """
        for ch in [c for c in self.wanted if self.sharded(c)]:
            addr = self.owner_of(ch)
            old = self.owner.get(ch)
            if addr is None or (old == addr and ch not in self.parked):
                continue
            since = [self._prev_refresh]
            if ch in self.parked:
                since.append(self.parked.pop(ch))
            link = self.shards.get(old) if old is not None else None
            if link is not None:
                link.unwant(ch)
                if link._outage_since is not None:
                    since.append(link._outage_since)
            if ch in self.recovering:
                since.append(self.recovering[ch])
            self.recovering[ch] = min(since)
            self.owner[ch] = addr
            self.moves += 1
            self._link(addr).want(ch)

    async def _topology(self) -> None:
        while True:
            unsettled = self.parked or any(not link.connected and link.wanted for link in self.shards.values())
            try:
                await asyncio.wait_for(self._kick.wait(), REFRESH_UNSETTLED if unsettled else self.refresh_interval)
                await asyncio.sleep(REFRESH_SOON)
            except asyncio.TimeoutError:
                pass
            self._kick.clear()
            try:
                await self._refresh()
            except Exception as exc:  # noqa: BLE001 - keep the old map, try again soon
                log.warning("redis cluster slot map not read: %s", exc or type(exc).__name__)
                self._kick.set()
                await asyncio.sleep(REFRESH_UNSETTLED * (0.5 + random.random()))
                continue
            self._reroute()

    async def _refresh(self) -> None:
        """Read CLUSTER SLOTS from the first node that answers with a full map."""
        last: Exception | None = None
        began = time.time()
        for host, port in self.node_addrs():
            client = aioredis.Redis(host=host, port=port, socket_timeout=2, socket_connect_timeout=2,
                                    **self.auth)
            try:
                rows = await client.execute_command("CLUSTER", "SLOTS")
            except Exception as exc:  # noqa: BLE001 - any failure: ask the next node
                last = exc
                continue
            finally:
                await client.aclose()
            slots: list[Addr | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
            masters = []
            for start, end, master, *_replicas in rows:
                addr = ((master[0].decode() if isinstance(master[0], bytes) else master[0]) or host,
                        int(master[1]))
                masters.append(addr)
                slots[start:end + 1] = [addr] * (end - start + 1)
            if None in slots and last is None:
                last = ConnectionError(f"{host}:{port} reports slots without a master")
                continue
            self.slots, self.masters = slots, list(dict.fromkeys(masters))
            self._prev_refresh, self._last_refresh = self._last_refresh, began
            return
        raise last or ConnectionError("no cluster node answered")

