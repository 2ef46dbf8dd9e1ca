"""Shops, agents, visitor profiles, the conversation list and retention.

The shop's reader identity: all agents of a shop share ONE read offset per
conversation, stored under the member id `agent:<shop>` (see agent_mid);
visitor mids can never contain ":", so it never collides with a visitor.
"""
from __future__ import annotations

import asyncio
import functools
import time

import orjson

from .. import names
from ..errors import BadRequest
from ..ids import EPOCH_MS, SEQ_BITS, WORKER_BITS
from ..tokens import check_password, hash_password
from .base import guarded, queue, run_pipeline
from .presence import _live_count
from .scripts import SWEEP, SWEEP_ROOM, SWEEP_SHOP, UNREAD

LATEST = "@latest"               # user-hash field holding the newest device's profile


@functools.cache
def _dummy_hash() -> str:
    """Checked for unknown shops, so their logins are as slow as real ones."""
    return hash_password("not a password")


def agent_mid(shop: str) -> str:
    """The member id whose read offsets are the shop's agents' (one per shop)."""
    return f"agent:{shop}"


class ShopsMixin:
    """Part of Store."""

    # -- visitor profiles ------------------------------------------------
    @guarded
    async def save_profile(self, mid: str, device: str, profile: dict, *, shop: str | None = None) -> None:
        """Store mid's profile for one device (also as the newest); one round trip.

        With `shop`, the visitor also enters the shop's visitor list (the
        seed's zadd userlist on entry) and the shop joins the shop set.
        """
        if not device or device.startswith("@"):
            raise BadRequest("invalid device")
        blob = orjson.dumps(profile)
        key = self.keys.user(mid)
        pipe = self.redis.pipeline(transaction=not self.cluster)     # keys of several slots on a cluster
        pipe.hset(key, mapping={device: blob, LATEST: blob})
        pipe.expire(key, self._profile_ttl)
        if shop is not None:
            pipe.zadd(self.keys.visitors(shop), {mid: int(time.time() * 1000)})
            pipe.sadd(self.keys.shops(), shop)
        await pipe.execute()

    @guarded
    async def profile(self, mid: str) -> dict | None:
        """The profile saved last, from whichever device; None if unknown."""
        blob = await self.redis.hget(self.keys.user(mid), LATEST)
        return orjson.loads(blob) if blob else None

    # -- shops and agents ------------------------------------------------
    @guarded
    async def create_shop(self, shop: str, *, name: str, password: str, face: str = "") -> None:
        """Create or update a shop and its agents' password (scrypt); one round trip."""
        names.shop_id(shop)
        if not password:
            raise BadRequest("password must not be empty")
        pw_hash = await asyncio.to_thread(hash_password, password)
        key = self.keys.shop(shop)
        now = int(time.time())
        pipe = self.redis.pipeline(transaction=not self.cluster)
        pipe.hset(key, mapping={"name": name, "face": face, "pw": pw_hash, "updated": now})
        pipe.hsetnx(key, "created", now)
        pipe.sadd(self.keys.shops(), shop)
        await pipe.execute()

    @guarded
    async def check_agent(self, shop: str, password: str) -> bool:
        """True if password is the shop's agent password (constant time, slow hash)."""
        stored = await self.redis.hget(self.keys.shop(shop), "pw")
        ok = await asyncio.to_thread(check_password, password, stored.decode() if stored else _dummy_hash())
        return ok and stored is not None

    @guarded
    async def shop_info(self, shop: str) -> dict | None:
        """name, face, created of a shop (never its password hash); None if unknown."""
        name, face, created = await self.redis.hmget(self.keys.shop(shop), ["name", "face", "created"])
        if name is None:
            return None
        return {"shop_id": shop, "name": name.decode(), "face": (face or b"").decode(),
                "created": int(created or 0)}

    @guarded
    async def shops(self) -> list[str]:
        return sorted(s.decode() for s in await self.redis.smembers(self.keys.shops()))

    # -- the agent's conversation list -----------------------------------
    @guarded
    async def conversations(self, shop: str, *, changed_since_ms: int | None = None, offset: int = 0,
                            limit: int = 50, reader: str | None = None) -> list[dict]:
        """The shop's conversations, newest first, in TWO round trips whatever the page size.

        1: the page of visitor mids (visitor list, or the notices changed
        since `changed_since_ms`); 2: one pipeline with, per visitor, the
        profile, the online mark, the reader's offset with the unread count
        (a script) and the last message.  On a cluster the offset and the
        room are in different slots: THREE round trips (the offsets come
        back in the second, the unread counts are a third pipeline).
        """
        k = self.keys
        reader = reader or agent_mid(shop)
        limit = max(1, min(int(limit), 500))
        if changed_since_ms is None:
            rows = await self.redis.zrevrange(k.visitors(shop), offset, offset + limit - 1)
        else:
            rows = await self.redis.zrevrangebyscore(k.notices(shop), "+inf", f"({int(changed_since_ms)}",
                                                     start=offset, num=limit)
        mids = [m.decode() for m in rows]
        if not mids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for mid in mids:
            room = names.room_for(shop, mid)
            pipe.hget(k.user(mid), LATEST)
            pipe.hgetall(k.online(mid))
            if self.cluster:
                pipe.hget(k.offsets(reader), room)
            else:
                queue(pipe, UNREAD, [k.offsets(reader), k.room(room)], [room])
            pipe.zrange(k.room(room), -1, -1)
        out = await pipe.execute()
        if self.cluster:
            await self._unread_counts(shop, mids, out)
        now_ms = int(time.time() * 1000)
        result = []
        for i, mid in enumerate(mids):
            prof, marks, (off, num), last = out[4 * i:4 * i + 4]
            result.append({
                "user": orjson.loads(prof) if prof else {"mid": mid},
                "online": _live_count(marks, now_ms) > 0,
                "seq": int(off), "num": int(num),
                "last": orjson.loads(last[0]) if last else None,
                "room_id": names.room_for(shop, mid), "mid": mid,
            })
        return result

    async def _unread_counts(self, shop: str, mids: list[str], out: list) -> None:
        """Cluster: turn each row's offset (out[4i+2]) into the (offset, unread) pair."""
        pipe = self.redis.pipeline(transaction=False)
        offsets = [int(out[4 * i + 2] or 0) for i in range(len(mids))]
        for mid, off in zip(mids, offsets):
            pipe.zcount(self.keys.room(names.room_for(shop, mid)), f"({off}", "+inf")
        for i, (off, num) in enumerate(zip(offsets, await pipe.execute())):
            out[4 * i + 2] = (off, num)

    # -- retention -------------------------------------------------------
    @guarded
    async def sweep(self, now_ms: int | None = None, *, max_rooms: int = 1000) -> int:
        """Delete conversations idle longer than settings.retention_days; -> rooms deleted.

        Walks every shop's visitor list by score (last activity), at most
        `max_rooms` deletions per call (call again while it returns
        max_rooms).  Each deletion is a script that re-checks the activity,
        so a conversation that came alive since the scan is kept.  The
        room's watermark outlives it by one retention period, so a client
        returning with an old id is told its history is gone.
        """
        k = self.keys
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        keep_ms = int(self.settings.retention_days * 86_400_000)
        cutoff = now_ms - keep_ms
        shops = [s.decode() for s in await self.redis.smembers(k.shops())]
        pipe = self.redis.pipeline(transaction=False)
        for shop in shops:
            pipe.zrangebyscore(k.visitors(shop), "-inf", cutoff, start=0, num=max_rooms)
        idle = [(shop, m.decode()) for shop, page in zip(shops, await pipe.execute()) for m in page]
        idle = idle[:max_rooms]
        if not idle:
            return 0
        if self.cluster:
            return await self._sweep_by_slot(idle, cutoff, max(keep_ms, 1000))
        cmds = []
        for shop, mid in idle:
            room = names.room_for(shop, mid)
            cmds.append((SWEEP, [k.visitors(shop), k.notices(shop), k.room(room), k.trimmed(room),
                                 k.offsets(mid), k.offsets(agent_mid(shop))],
                         [mid, cutoff, room, max(keep_ms, 1000)]))
        return _count(await run_pipeline(self.redis, cmds))

    async def _sweep_by_slot(self, idle: list[tuple[str, str]], cutoff: int, keep_ms: int) -> int:
        """Cluster sweep: shop side first, then the room side of what it removed (see SWEEP_SHOP)."""
        k = self.keys
        gone = await run_pipeline(self.redis, [(SWEEP_SHOP, [k.visitors(shop), k.notices(shop)], [mid, cutoff])
                                               for shop, mid in idle])
        _count(gone)
        removed = [(shop, mid) for (shop, mid), res in zip(idle, gone) if int(res)]
        if not removed:
            return 0
        rooms = [names.room_for(shop, mid) for shop, mid in removed]
        kept = await run_pipeline(self.redis, [
            (SWEEP_ROOM, [k.room(room), k.trimmed(room)], [cutoff, keep_ms, EPOCH_MS, 1 << (WORKER_BITS + SEQ_BITS)])
            for room in rooms])
        deleted = _count(kept)
        pipe = self.redis.pipeline(transaction=False)
        for (shop, mid), room, res in zip(removed, rooms, kept):
            if int(res):
                pipe.hdel(k.offsets(mid), room)
                pipe.hdel(k.offsets(agent_mid(shop)), room)
        if len(pipe):
            await pipe.execute()
        return deleted


def _count(results: list) -> int:
    for res in results:
        if isinstance(res, Exception):
            raise res
    return sum(int(r) for r in results)
