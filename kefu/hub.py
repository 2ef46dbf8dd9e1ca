"""Local routing: which of this worker's connections a published frame reaches.

    channel -> sessions     room channels, shop channels (agents)
    key -> sessions         goim push by keys
    mid -> sessions         goim push by mids
    members                 every authenticated session (goim push to all)

Publishers send whole TLV frames (kefu.store), so delivery never decodes
JSON: the bytes that arrive on a channel are the bytes each member gets,
encoded once, shared by reference.  The cost of a message is one dict
lookup plus one append per *member of its channel*; sessions elsewhere
are never touched (bench/bench_fanout.py shows it flat while the number
of connections grows).

Per-tick coalescing: `deliver` only appends the frame to the session's
outbox and remembers the session once; `flush`, called by the bus after
each chunk it read, hands every outbox to its transport in one write (a
WebSocket packs several frames into one op-9 batch, TCP concatenates).

Reference counts: a channel's set of local members *is* its count.  The
first member makes the hub `want` it from the bus, the last one leaving
`unwant`s it; the bus converges Redis on that wanted set, so a member
arriving while its channel's SUBSCRIBE is still in flight is safe.

goim push filtering: an op-9 frame holds a goim push whose operation is
the first inner frame's op; a session with an `accepts` set gets it only
if that op is in the set (goim semantics; no accepts = every op).  Chat
frames (op 5) reach every member.  accepts never adds a channel.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter

import orjson

from . import envelope, tlv
from .errors import StoreUnavailable
from .ids import EPOCH_MS, SEQ_BITS, WORKER_BITS
from .protocol import CLOSE_TRY_AGAIN, HEADER_SIZE, OP_OFFSET, Op

log = logging.getLogger("kefu.hub")

_RAW = int(Op.RAW).to_bytes(4, "big")
_INNER_OP = HEADER_SIZE + OP_OFFSET          # op of the first frame inside an op-9 body
CATCH_UP_MARGIN = 60.0     # a room channel that delivered nothing yet replays from this long before the outage
CATCH_UP_PARALLEL = 16
CATCH_UP_ATTEMPTS = 4


def goim_op(frame: bytes) -> int | None:
    """The pushed operation of an op-9 frame (its first inner frame's op), else None."""
    if frame[OP_OFFSET:OP_OFFSET + 4] == _RAW and len(frame) >= _INNER_OP + 4:
        return int.from_bytes(frame[_INNER_OP:_INNER_OP + 4], "big", signed=True)
    return None


_ID_PREFIX = b'{"id":'
_MESSAGE = int(Op.MESSAGE).to_bytes(4, "big")


def frame_id(frame: bytes) -> int:
    """The id of a stored chat message's op-5 frame (kefu.store writes "id" first), else 0."""
    if frame[OP_OFFSET:OP_OFFSET + 4] == _MESSAGE and frame.startswith(_ID_PREFIX, HEADER_SIZE):
        start = HEADER_SIZE + len(_ID_PREFIX)
        end = frame.find(b",", start, start + 24)
        if end > 0:
            try:
                return int(frame[start:end])
            except ValueError:
                pass
    return 0


def id_floor(wall_seconds: float) -> int:
    """The lowest snowflake id issued at or after a wall-clock time."""
    ms = max(0, int(wall_seconds * 1000) - EPOCH_MS)
    return ms << (WORKER_BITS + SEQ_BITS)


class Channel:
    """One subscribed channel: its canonical name, local members, and room."""

    __slots__ = ("name", "members", "room", "alone", "last", "held")

    def __init__(self, name: bytes, room: str | None) -> None:
        self.name = name
        self.members: set = set()
        self.room = room                 # set for room channels (catch-up after outages)
        self.alone = (name,)             # shared `channels` tuple of single-channel sessions
        self.last = 0                    # room channels: id of the newest message delivered
        self.held: list | None = None    # live frames held back while a catch-up runs


class Hub:
    """The routing index of one worker.  Sessions need the slots
    `channels` (bytes names), `key`, `mid`, `accepts`, `out` and a
    `push(frames)` method."""

    def __init__(self, keys, stats: Counter | None = None, store=None) -> None:
        self.keys = keys
        self.stats = Counter() if stats is None else stats
        self.store = store
        self.bus = None
        self.channels: dict[bytes, Channel] = {}
        self.by_key: dict[str, object] = {}      # key -> session | set of sessions
        self.by_mid: dict[str, object] = {}
        self.members: set = set()
        self.push_channel = keys.push_channel().encode()
        self._dirty: list = []
        self._tasks: set[asyncio.Task] = set()

    # -- membership --------------------------------------------------------
    def room_channel(self, room: str) -> bytes:
        return self.keys.room_channel(room).encode()

    def shop_channel(self, shop: str) -> bytes:
        return self.keys.shop_channel(shop).encode()

    def start(self, bus) -> None:
        """Attach the bus and keep the process-wide push channel subscribed."""
        self.bus = bus
        bus.want(self.push_channel)

    def join(self, s, room: str | None = None) -> tuple[bytes, ...]:
        """Index an authenticated session under its channels, key and mid.

        `room` names the room whose channel is among s.channels (for the
        catch-up after an outage).  s.channels is replaced by the shared
        canonical names, so 10,000 members of one room hold one copy.
        """
        canon = []
        room_ch = self.room_channel(room) if room is not None else None
        for name in s.channels:
            c = self.channels.get(name)
            if c is None:
                c = self.channels[name] = Channel(name, room if name == room_ch else None)
                if self.bus is not None:
                    self.bus.want(name)
            c.members.add(s)
            canon.append(c)
        s.channels = canon[0].alone if len(canon) == 1 else tuple(c.name for c in canon)
        if s.key:
            _index_add(self.by_key, s.key, s)
        _index_add(self.by_mid, s.mid, s)
        self.members.add(s)
        return s.channels

    def leave(self, s) -> None:
        if s not in self.members:
            return
        self.members.discard(s)
        for name in s.channels:
            c = self.channels.get(name)
            if c is None:
                continue
            c.members.discard(s)
            if not c.members:
                del self.channels[name]
                if self.bus is not None:
                    self.bus.unwant(name)
        if s.key:
            _index_discard(self.by_key, s.key, s)
        _index_discard(self.by_mid, s.mid, s)
        s.out = None

    # -- delivery ------------------------------------------------------------
    def deliver(self, channel: bytes, frame: bytes) -> None:
        """Queue one published frame for every local member of `channel`."""
        if channel == self.push_channel:
            self._push(frame)
            return
        c = self.channels.get(channel)
        if c is not None:
            if c.held is not None:           # catching up after an outage: keep id order
                c.held.append(frame)
                return
            if c.room is not None:
                msg_id = frame_id(frame)
                if msg_id > c.last:
                    c.last = msg_id
            self._queue(c.members, frame)

    def _push(self, payload: bytes) -> None:
        try:
            kind, targets, frame = envelope.unpack(payload)
        except (ValueError, UnicodeDecodeError):
            self.stats["errors_bad_push_total"] += 1
            return
        if kind == b"all":
            self._queue(self.members, frame)
            return
        index = self.by_key if kind == b"keys" else self.by_mid
        for t in targets:
            found = index.get(t)
            if found is not None:
                self._queue(found if type(found) is set else (found,), frame)

    def _queue(self, sessions, frame: bytes) -> None:
        op = goim_op(frame)
        dirty = self._dirty
        n = 0
        for s in sessions:
            if op is not None and s.accepts is not None and op not in s.accepts:
                continue
            out = s.out
            if out is None:
                s.out = [frame]
                dirty.append(s)
            else:
                out.append(frame)
            n += 1
        stats = self.stats
        stats["deliveries_total"] += n
        stats["frames_out_total"] += n

    def flush(self) -> None:
        """Write every queued outbox, one write per session."""
        dirty, self._dirty = self._dirty, []
        for s in dirty:
            frames = s.out
            if frames is not None:
                s.out = None
                s.push(frames)

    # -- after a Redis outage -------------------------------------------------
    def recovered(self, channels: list[bytes], since: float) -> None:
        """Bus callback: these channels are subscribed again after an outage.

        The bus calls this before it hands over any message that arrived on
        them after the new SUBSCRIBE, so their live frames are held back from
        here until the catch-up is done, and members get every message once,
        in id order.  A room channel replays the store (stored before pushed:
        history has everything published meanwhile) from the last id it
        delivered, not from a time: ids come from other processes' clocks.
        One that delivered nothing yet replays from CATCH_UP_MARGIN before the
        outage (clients drop ids they have).  A shop channel carries every
        room of its shop (agents), so its members are told to reconnect and
        sync (op 6, 1013) instead, as are members of a room whose catch-up
        failed: their own sync from their last id is exact.
        """
        if self.store is None:
            return
        rooms = []
        for ch in channels:
            c = self.channels.get(ch)
            if c is None:
                continue
            if c.room is None or c.held is not None:     # a shop channel, or a second outage mid-catch-up
                self._resync(c)
            else:
                c.held = []
                rooms.append(c)
        if not rooms:
            return
        task = asyncio.get_running_loop().create_task(self._catch_up(rooms, id_floor(since - CATCH_UP_MARGIN)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _resync(self, c: Channel) -> None:
        """Tell every member of c to reconnect and sync: its live stream may have a hole."""
        c.held = None
        self.stats["catch_up_resyncs_total"] += len(c.members)
        for s in list(c.members):
            kick = getattr(s, "kick", None)
            if kick is not None:
                kick(CLOSE_TRY_AGAIN, "redis outage: reconnect and sync")

    async def _catch_up(self, rooms: list[Channel], quiet_floor: int) -> None:
        gate = asyncio.Semaphore(CATCH_UP_PARALLEL)

        async def one(c: Channel) -> None:
            # Any failure, not only StoreUnavailable, is retried and at last
            # ends in a resync: a catch-up that gives up without one would
            # leave c.held set, and the room's live frames held for ever.
            # (redis-py's cluster client can raise AttributeError from a
            # connection torn down under it while a master restarts.)
            async with gate:
                for attempt in range(CATCH_UP_ATTEMPTS):
                    try:
                        return await self._replay(c, c.last or quiet_floor)
                    except Exception as exc:
                        if not isinstance(exc, StoreUnavailable):
                            self.stats["catch_up_errors_total"] += 1
                            log.warning("catch-up of %s hit %s: %s", c.room, type(exc).__name__, exc)
                        if attempt == CATCH_UP_ATTEMPTS - 1:
                            if self.channels.get(c.name) is c:
                                self._resync(c)
                            raise
                        await asyncio.sleep(0.2 * 2 ** attempt)

        results = await asyncio.gather(*(one(c) for c in rooms), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.warning("catch-up after the redis outage failed for %d room(s) (their clients resync): %s",
                        len(failed), failed[0])
        else:
            log.info("caught up %d room(s) after the redis outage", len(rooms))

    async def _replay(self, c: Channel, after: int) -> None:
        """Deliver the room's messages above `after`, then the live frames held meanwhile."""
        last = after
        while self.channels.get(c.name) is c:
            page = await self.store.history(c.room, after=last)
            if page.messages:
                for raw in page.messages:
                    self._queue(c.members, tlv.encode(Op.MESSAGE, 0, raw))
                last = max(last, _id_of(page.messages[-1]) or last)
                self.flush()
                self.stats["catch_up_messages_total"] += len(page.messages)
            if not page.more or not page.messages:
                break
        if self.channels.get(c.name) is not c:
            return
        held, c.held = c.held or [], None
        c.last = max(c.last, last)
        for frame in held:
            msg_id = frame_id(frame)
            if msg_id:
                if msg_id <= c.last:
                    continue                 # already replayed from the store
                c.last = msg_id
            self._queue(c.members, frame)
        if held:
            self.flush()

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


# key -> session, or -> set of sessions when several share it: most keys and
# mids have one connection, and a set per connection would cost ~240 bytes.
def _index_add(index: dict, name: str, s) -> None:
    found = index.get(name)
    if found is None:
        index[name] = s
    elif type(found) is set:
        found.add(s)
    elif found is not s:
        index[name] = {found, s}


def _index_discard(index: dict, name: str, s) -> None:
    found = index.get(name)
    if found is s:
        del index[name]
    elif type(found) is set:
        found.discard(s)
        if len(found) == 1:
            index[name] = next(iter(found))


def _id_of(raw: bytes) -> int | None:
    """The id of a stored message (paging the catch-up only; never on the delivery path)."""
    try:
        return int(orjson.loads(raw)["id"])
    except (ValueError, KeyError, TypeError):
        return None
