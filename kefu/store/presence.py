"""Online marks: who is connected, kept alive in batches, not per heartbeat.

Each comet worker counts its own connections in memory (`OnlineMarks`);
once per interval `flush()` writes them all in ONE pipeline:

    online:<mid>           hash  server id -> "<count>:<expires at ms>"
    roomonline:{r:<room>}  hash  server id -> "<count>:<expires at ms>"

plus EXPIRE on each key.  A key's TTL covers the whole hash, so the
expiry is also written into each field: a worker that died without
cleaning up stops counting once its fields' time has passed, even while
other workers keep the key alive.  Readers sum the live fields.
"""
from __future__ import annotations

import time
from collections import Counter

import orjson

from .base import guarded


def _live_count(fields: dict, now_ms: int) -> int:
    total = 0
    for raw in fields.values():
        count, _, exp = raw.partition(b":")
        try:
            if int(exp) > now_ms:
                total += int(count)
        except ValueError:
            continue
    return total


class OnlineMarks:
    """One worker's connection counts and their batched refresh.

    connect()/disconnect() are pure in-memory; flush() costs one round trip
    whatever the number of connections, and returns the cluster-wide
    connection count of every room this worker has members in (for the
    goim heartbeat reply), read in that same round trip.
    """

    def __init__(self, store, server_id: str):
        self.store = store
        self.server_id = server_id
        self.mids: Counter[str] = Counter()
        self.rooms: Counter[str] = Counter()
        self._gone_mids: set[str] = set()
        self._gone_rooms: set[str] = set()

    def connect(self, mid: str, room: str) -> None:
        self.mids[mid] += 1
        self.rooms[room] += 1
        self._gone_mids.discard(mid)
        self._gone_rooms.discard(room)

    def disconnect(self, mid: str, room: str) -> None:
        for counter, gone, name in ((self.mids, self._gone_mids, mid), (self.rooms, self._gone_rooms, room)):
            if counter[name] <= 1:
                counter.pop(name, None)
                gone.add(name)
            else:
                counter[name] -= 1

    @guarded
    async def flush(self, figures: dict | None = None) -> dict[str, int]:
        """Write every local mark in one pipeline; -> room -> connections (all servers)."""
        st, k, sid = self.store.settings, self.store.keys, self.server_id
        ttl = st.online_ttl
        now_ms = int(time.time() * 1000)
        value = f":{now_ms + ttl * 1000}"
        gone_mids, gone_rooms = self._gone_mids, self._gone_rooms
        self._gone_mids, self._gone_rooms = set(), set()
        rooms = list(self.rooms)
        if getattr(self.store, "fast", None) is not None:
            try:
                return await self._flush_fast(rooms, gone_mids, gone_rooms, value, ttl, now_ms, figures)
            except BaseException:
                self._gone_mids |= gone_mids - set(self.mids)     # retry the removals next time
                self._gone_rooms |= gone_rooms - set(self.rooms)
                raise
        pipe = self.store.redis.pipeline(transaction=False)
        for key, counts, gone in ((k.online, self.mids, gone_mids), (k.room_online, self.rooms, gone_rooms)):
            for name, n in counts.items():
                pipe.hset(key(name), sid, f"{n}{value}")
                pipe.expire(key(name), ttl)
            for name in gone:
                pipe.hdel(key(name), sid)
        if figures is not None:
            pipe.hset(k.servers(), sid, orjson.dumps({**figures, "ts": now_ms}))
        for room in rooms:
            pipe.hgetall(k.room_online(room))
        try:
            out = await pipe.execute()
        except BaseException:
            self._gone_mids |= gone_mids - set(self.mids)     # retry the removals next time
            self._gone_rooms |= gone_rooms - set(self.rooms)
            raise
        tail = out[len(out) - len(rooms):] if rooms else []
        return {room: _live_count(fields, now_ms) for room, fields in zip(rooms, tail)}

    async def _flush_fast(self, rooms, gone_mids, gone_rooms, value, ttl, now_ms, figures) -> dict[str, int]:
        """flush() on the store's raw pipe: the same commands, packed without redis-py
        (100,000 marks are 500,000 commands a minute; redis-py's per-command cost was
        most of an idle worker's CPU)."""
        k, sid = self.store.keys, self.server_id
        cmds: list = []
        add = cmds.append
        for key, counts, gone in ((k.online, self.mids, gone_mids), (k.room_online, self.rooms, gone_rooms)):
            for name, n in counts.items():
                name = key(name)
                add((b"HSET", name, sid, f"{n}{value}"))
                add((b"EXPIRE", name, ttl))
            for name in gone:
                add((b"HDEL", key(name), sid))
        if figures is not None:
            add((b"HSET", k.servers(), sid, orjson.dumps({**figures, "ts": now_ms})))
        for room in rooms:
            add((b"HGETALL", k.room_online(room)))
        out = await self.store.fast.execute(cmds)
        for r in out[:len(out) - len(rooms)]:
            if isinstance(r, Exception):
                raise r
        tail = out[len(out) - len(rooms):] if rooms else []
        return {room: _live_count(dict(zip(flat[::2], flat[1::2])), now_ms) if isinstance(flat, list) else 0
                for room, flat in zip(rooms, tail)}

    @guarded
    async def clear(self) -> None:
        """Remove this worker's marks now (clean shutdown)."""
        for mid in list(self.mids):
            self._gone_mids.add(mid)
        for room in list(self.rooms):
            self._gone_rooms.add(room)
        self.mids.clear()
        self.rooms.clear()
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.hdel(self.store.keys.servers(), self.server_id)
        await pipe.execute()
        await self.flush()


class PresenceMixin:
    """Part of Store: reading the marks OnlineMarks writes."""

    @guarded
    async def online(self, mids) -> list[bool]:
        """For each mid, whether any live connection holds it; one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for mid in mids:
            pipe.hgetall(self.keys.online(mid))
        now_ms = int(time.time() * 1000)
        return [_live_count(f, now_ms) > 0 for f in await pipe.execute()]

    @guarded
    async def room_online_counts(self, rooms) -> list[int]:
        pipe = self.redis.pipeline(transaction=False)
        for room in rooms:
            pipe.hgetall(self.keys.room_online(room))
        now_ms = int(time.time() * 1000)
        return [_live_count(f, now_ms) for f in await pipe.execute()]

    async def room_online_count(self, room: str) -> int:
        """Connections in room, summed over every server; one round trip."""
        return (await self.room_online_counts([room]))[0]

    @guarded
    async def servers(self) -> dict[str, dict]:
        """Live servers' figures as written by OnlineMarks.flush(figures)."""
        raw = await self.redis.hgetall(self.keys.servers())
        cutoff = int(time.time() * 1000) - self.settings.online_ttl * 1000
        out = {}
        for sid, blob in raw.items():
            try:
                doc = orjson.loads(blob)
            except orjson.JSONDecodeError:
                continue
            if doc.get("ts", 0) > cutoff:
                out[sid.decode()] = doc
        return out
