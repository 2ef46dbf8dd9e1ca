"""Messages: store-and-publish, history, read offsets, unread counts, goim pushes.

THE CONTRACT: a message is stored before it is pushed.  `post` runs one
Lua script that ZADDs the message to its room and only then PUBLISHes its
op-5 frame on the room's channel (and the shop's), inside Redis, atomically.
So a subscriber never sees a message that history does not have, publish
order equals id order within a room, and a failure can only leave the
message unstored-and-unpublished or stored-and-published, never
published-but-lost.  If Redis fails mid-call, `post` raises
StoreUnavailable: it never reports success for something not stored.

Ids are strictly increasing within a room even across API processes whose
clocks differ: the script refuses an id not above the room's newest and
returns that newest id; this process's Snowflake observes it and retries.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from .. import envelope, names, tlv
from ..errors import BadRequest, StoreUnavailable
from ..ids import MAX_ID
from ..protocol import HEADER_SIZE, Op
from .base import guarded, run_script
from .scripts import ACK, EXPIRE, POST, TOUCH, TOUCH_SHOP, UNREAD

MAX_PAGE = 1000
_ID_ATTEMPTS = 16


@dataclass(frozen=True, slots=True)
class Posted:
    id: int
    json: bytes               # the stored message JSON (b"" if a duplicate was trimmed since)
    duplicate: bool           # True: the client_msg_id was already stored; nothing new happened


@dataclass(frozen=True, slots=True)
class History:
    messages: list            # raw stored JSON (bytes), oldest first
    gap_oldest: int | None    # set when asked-for messages are gone: lowest id still servable
    more: bool                # another page exists in the direction asked


def _score(raw) -> int:
    return int(float(raw))


def _check_id(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise BadRequest(f"invalid {what}")
    return value


class MessagesMixin:
    """Part of Store; see kefu.store.Store for the attributes used here."""

    # -- store and publish ---------------------------------------------
    def _message(self, msg_id: int, room, mid, shop, type, msg, extra, client_msg_id) -> bytes:
        doc = {"id": msg_id, "room_id": room, "mid": mid, "shop_id": shop or "",
               "type": type, "msg": msg, "dateline": int(time.time())}
        if client_msg_id is not None:
            doc["client_msg_id"] = client_msg_id
        if extra:
            for k, v in extra.items():
                doc.setdefault(k, v)          # extras never override the core fields
        return orjson.dumps(doc)

    def _post_commands(self, msg_id, frame, room, room_shop, client_msg_id, mid, ack_as):
        k, s = self.keys, self.settings
        room_keys = [k.room(room), k.trimmed(room)]
        if client_msg_id is not None:
            room_keys.append(k.idempotency(room, f"{mid}:{client_msg_id}"))
        cmds = []
        visitor = names.visitor_of(room)
        if room_shop and visitor:
            now_ms = int(time.time() * 1000)
            if self.cluster:    # one slot per script; the shop set is kept by entries and creation
                cmds.append((TOUCH_SHOP, [k.visitors(room_shop), k.notices(room_shop)], [visitor, now_ms]))
                cmds.append((EXPIRE, [k.user(visitor)], [self._profile_ttl]))
            else:
                cmds.append((TOUCH, [k.visitors(room_shop), k.notices(room_shop), k.shops(), k.user(visitor)],
                             [visitor, now_ms, room_shop, self._profile_ttl]))
        cmds.append((POST, room_keys, [msg_id, frame, HEADER_SIZE, s.room_max_messages,
                                       s.idempotency_ttl, k.room_channel(room),
                                       k.shop_channel(room_shop) if room_shop else "",
                                       "1" if self.cluster else "0"]))
        if ack_as is not None:
            cmds.append((ACK, [k.offsets(ack_as)], [room, msg_id]))
        return cmds, len(cmds) - (2 if ack_as is not None else 1)

    async def post(self, *, room: str, mid: str, shop: str | None, type: str, msg: str,
                   extra: dict | None = None, client_msg_id: str | None = None,
                   ack_as: str | None = None) -> Posted:
        """Store one message, then publish it; one round trip (shared with concurrent posts).

        client_msg_id makes a retried call return the first call's result
        (duplicate=True) instead of storing twice.  ack_as: a member whose
        read offset moves to this message (the sender has read what it sent).
        """
        room_shop = names.shop_of(names.room_id(room))
        if shop and room_shop and shop != room_shop:
            raise BadRequest("room does not belong to shop")
        shop = shop or room_shop
        for _ in range(_ID_ATTEMPTS):
            msg_id = self.ids()
            body = self._message(msg_id, room, mid, shop, type, msg, extra, client_msg_id)
            frame = tlv.encode(Op.MESSAGE, 0, body)
            cmds, at = self._post_commands(msg_id, frame, room, room_shop, client_msg_id, mid, ack_as)
            results = await self._batcher.call(cmds)
            for res in results:
                if isinstance(res, Exception):
                    raise res
            code, *rest = results[at]
            if code in (b"ok", b"same"):
                if self.cluster and at and results[0] == 1:     # a new conversation of the shop
                    await self._add_shop(room_shop)
                return Posted(msg_id, body, False)
            if code == b"dup":
                return Posted(int(rest[0]), rest[1], True)
            self.ids.observe(_score(rest[0]))       # b"low": another process is ahead
        raise StoreUnavailable("could not allocate an increasing message id")

    @guarded
    async def _add_shop(self, shop: str) -> None:
        """Cluster: the shop set is one key on one shard, so posts do not SADD it
        each time (the single-Redis TOUCH script does); only a new visitor does."""
        await self.redis.sadd(self.keys.shops(), shop)

    # -- history ---------------------------------------------------------
    @guarded
    async def history(self, room: str, *, after: int | None = None, before: int | None = None,
                      limit: int | None = None) -> History:
        """A page of a room's messages, oldest first; one round trip (MULTI).

        No bound: the newest `limit` (default settings.sync_limit).  after=X:
        messages newer than X, `more` when the caller should continue from
        the last id.  before=Y: the page just older than Y, `more` when older
        pages exist.  gap_oldest is set when messages the caller asked for
        were removed by retention (exact: the room keeps a watermark of the
        highest id it ever removed).
        """
        limit = max(1, min(int(limit or self.settings.sync_limit), MAX_PAGE))
        key = self.keys.room(names.room_id(room))
        # MULTI on one Redis.  Not on a cluster: redis-py 8's asyncio cluster
        # transactions run each queued command through asyncio.run() in a thread,
        # whose connections outlive that loop; the three reads go to the room's
        # node in one write instead (a concurrent trim can at worst add a
        # spurious gap notice to a page that still holds the trimmed messages).
        pipe = self.redis.pipeline(transaction=not self.cluster)
        if after is not None:
            _check_id(after, "after")
            pipe.zrangebyscore(key, f"({after}", "+inf", start=0, num=limit + 1)
        elif before is not None:
            _check_id(before, "before")
            pipe.zrevrangebyscore(key, f"({before}", "-inf", start=0, num=limit + 1)
        else:
            pipe.zrange(key, -(limit + 1), -1)
        pipe.get(self.keys.trimmed(room))
        pipe.zrange(key, 0, 0, withscores=True)
        page, mark, oldest = await pipe.execute()
        more = len(page) > limit
        if after is not None:
            page = page[:limit]
        elif before is not None:
            page = page[:limit][::-1]
        else:
            page = page[1:] if more else page
        return History(page, self._gap(after, more, mark, oldest), more)

    @staticmethod
    def _gap(after, more, mark, oldest) -> int | None:
        if mark is None:
            return None                 # never trimmed: nothing is missing
        mark = _score(mark)
        if after is not None:
            missing = after < mark      # the caller has not seen everything up to the mark
        else:
            missing = not more          # the page reached the start of what is kept
        if not missing:
            return None
        return int(oldest[0][1]) if oldest else mark + 1

    # -- read offsets ----------------------------------------------------
    @guarded
    async def ack(self, mid: str, room: str, msg_id: int) -> int:
        """Move mid's read offset in room forward to msg_id; returns the offset in force."""
        _check_id(msg_id, "message id")
        return int(await run_script(self.redis, ACK, [self.keys.offsets(mid)], [room, msg_id]))

    async def mark_read(self, reader: str, room: str, msg_id: int) -> int:
        """ack(), then tell the room's live members with a `read` notice (op 5, not stored).

        The visitor page shows 已读 from it while the agent reads live.
        """
        offset = await self.ack(reader, room, msg_id)
        notice = orjson.dumps({"type": "read", "room_id": room, "mid": reader, "seq": offset})
        await self.publish_room(room, tlv.encode(Op.MESSAGE, 0, notice))
        return offset

    @guarded
    async def offset(self, mid: str, room: str) -> int:
        raw = await self.redis.hget(self.keys.offsets(mid), room)
        return int(raw) if raw is not None else 0

    @guarded
    async def unread(self, mid: str, room: str) -> int:
        """Messages in room above mid's read offset (ZCOUNT (offset +inf); one round trip
        (two on a cluster: the offset and the room live in different slots)."""
        if self.cluster:
            off = await self.redis.hget(self.keys.offsets(mid), room)
            return int(await self.redis.zcount(self.keys.room(room), f"({int(off or 0)}", "+inf"))
        _off, count = await run_script(self.redis, UNREAD, [self.keys.offsets(mid), self.keys.room(room)], [room])
        return int(count)

    # -- goim pushes -----------------------------------------------------
    @guarded
    async def push(self, kind: str, targets, operation: int, body: bytes) -> int:
        """goim push by "keys", "mids" or to "all": one op-9 batch on the push channel."""
        frame = tlv.batch([tlv.encode(operation, 0, body)])
        return await self.redis.publish(self.keys.push_channel(), envelope.pack(kind, targets, frame))

    @guarded
    async def push_room(self, room: str, operation: int, body: bytes) -> int:
        """goim push to a room: an op-9 batch on the room's channel (not stored)."""
        return await self.publish_room(room, tlv.batch([tlv.encode(operation, 0, body)]))

    @guarded
    async def publish_room(self, room: str, frame: bytes) -> int:
        """Publish a frame to the room's live members, not stored (read notices, goim room pushes).

        PUBLISH on one Redis; SPUBLISH (sharded: only the room's shard) on a cluster.
        """
        channel = self.keys.room_channel(room)
        if self.cluster:
            return await self.redis.spublish(channel, frame)
        return await self.redis.publish(channel, frame)
