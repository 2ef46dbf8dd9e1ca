"""One connection's state machine, the same for WebSocket and TCP.

No sockets here: a transport adapter (kefu.comet) decodes frames and
calls `feed`, and the session answers through a small interface:

    send(frame)          one frame now (a WebSocket message of its own)
    send_many(frames)    several frames, each its own message, one write
    push(frames)         live pushes; WebSocket may pack them in one op-9
    close(code, reason)  orderly close (the session sent op 6 before)
    abort()              drop now, discarding what is queued (slow client)
    buffered() -> int    bytes queued in the kernel-side send buffer

States: HANDSHAKE --op 7--> AUTHING --key ok, channels ready--> OPEN --> CLOSED.

* Auth first, within settings.handshake_timeout; any other op before it
  closes with 1002.  The key (kefu.tokens) binds mid and room; the auth
  JSON may omit both (a goim client may send nothing but its key) but
  must not contradict them.  The connection joins its key's room, or, for
  an agent key, its shop's channel (every message of every conversation
  of the shop); `accepts` only filters goim pushes by operation and never
  adds a room.  op 8 is sent once Redis confirmed the subscriptions, so
  every message published after op 8 reaches the client live, and what
  came before is in history: a client that syncs after op 8 misses nothing.
* op 2 -> op 3 with the room's online count: the figure the last batched
  flush of online marks returned, never a Redis call per heartbeat.
* op 14 -> op 15 frames (a gap notice first when retention removed asked-
  for messages); op 16 -> op 17 with the read offset in force (offsets
  only move forward, so a stale ack answers the newer offset).  Agents may
  name another room of their own shop with "room_id"; any room outside
  what the key grants is refused without an answer (counted).
* Frames are handled strictly in order; heartbeats are answered inline,
  store calls run in one task per session only while there is work.
* Inbound frames pass a token bucket (settings.inbound_rate, burst 2x);
  emptying it closes with 1008.  Unknown ops are counted and ignored.
* Every close the server starts sends op 6 with the reason first.

Timeouts need no timer per connection: `sweep` runs once a second over
all sessions and checks the one timestamp each keeps.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque

import orjson

from . import names, tlv
from .errors import AuthError, BadRequest, FrameTooBig, KefuError, StoreUnavailable
from .protocol import (
    CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR, CLOSE_TRY_AGAIN, Op,
)

log = logging.getLogger("kefu.session")

HANDSHAKE, AUTHING, OPEN, CLOSED = "handshake", "authing", "open", "closed"
MAX_ACCEPTS = 64             # goim ops a connection may list
ACCEPTS_SHARED = 1024        # distinct accepts sets kept for sharing between connections
SUBSCRIBE_TIMEOUT = 5.0      # Redis must confirm a new room's SUBSCRIBE within this
REASON_MAX = 120             # bytes of a close reason (WebSocket allows 123)

_HEARTBEAT, _AUTH, _SYNC, _ACK = int(Op.HEARTBEAT), int(Op.AUTH), int(Op.SYNC), int(Op.ACK)


class Context:
    """What every session of one worker shares (built by kefu.comet.Worker)."""

    def __init__(self, settings, *, signer, store, hub, bus, marks, server_id: str,
                 stats: Counter | None = None) -> None:
        self.settings = settings
        self.signer = signer
        self.store = store
        self.hub = hub
        self.bus = bus
        self.marks = marks
        self.server_id = server_id
        self.stats = Counter() if stats is None else stats
        self.sessions: set[Session] = set()
        self.counts: dict[str, int] = {}           # room -> online count, from the marks flush
        self.stopping = False
        self.rate = float(settings.inbound_rate)
        self.burst = 2.0 * self.rate
        self.inbox_max = max(8, int(self.burst))
        self.send_limit = settings.send_buffer_limit
        self._accepts: dict[tuple, frozenset] = {}
        self.tasks: set[asyncio.Task] = set()

    def background(self, coro) -> asyncio.Task:
        """Run `coro` as a task the worker waits for at shutdown."""
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def full(self) -> bool:
        return len(self.sessions) >= self.settings.max_connections

    def accepts(self, raw) -> frozenset | None:
        """goim's accepts as a shared frozenset of ops; None (= every op) if none.

        Entries that are not operation numbers (the seed's room names) are
        ignored: they can never grant anything.
        """
        if not isinstance(raw, list) or not raw:
            return None
        ops = []
        for item in raw[:MAX_ACCEPTS]:
            if isinstance(item, str) and len(item) < 12 and item[item.startswith("-"):].isdigit():
                item = int(item)
            if isinstance(item, int) and not isinstance(item, bool) and -(1 << 31) <= item < (1 << 31):
                ops.append(item)
        if not ops:
            return None
        key = tuple(sorted(set(ops)))
        found = self._accepts.get(key)
        if found is None:
            found = frozenset(key)
            if len(self._accepts) < ACCEPTS_SHARED:   # clients choose these: keep the cache bounded
                self._accepts[key] = found
        return found


def _optional_id(value) -> str | None:
    """An auth field that may be absent: None or "" mean absent; numbers (goim mids) as text."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise AuthError("mid and room_id must be strings or numbers")
    return str(value)


def _msg_id(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest("message ids are non-negative integers")
    return value


def _parse_body(body: bytes) -> dict | int | None:
    """A sync/ack body: empty -> None, a decimal -> int, else a JSON object."""
    text = body.strip()
    if not text:
        return None
    if text.isdigit():
        return int(text)
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BadRequest("body is neither a decimal id nor JSON") from None
    if isinstance(doc, bool) or not isinstance(doc, (dict, int)):
        raise BadRequest("body must be a decimal id or a JSON object")
    return doc


class Session:
    """One client connection.  Lean on purpose: 10,000+ live in one worker."""

    __slots__ = ("ctx", "transport", "state", "seen", "tokens", "key", "mid", "room",
                 "shop", "channels", "accepts", "out", "_inbox", "_task")

    def __init__(self, ctx: Context, transport) -> None:
        self.ctx = ctx
        self.transport = transport
        self.state = HANDSHAKE
        self.seen = time.monotonic()       # last frame (handshake: creation) time
        self.tokens = ctx.burst
        self.key: str | None = None        # set once indexed by the hub
        self.mid: str | None = None
        self.room: str | None = None
        self.shop: str | None = None       # agents only
        self.channels: tuple = ()
        self.accepts: frozenset | None = None
        self.out: list | None = None       # hub outbox for this tick
        self._inbox: deque | None = None
        self._task: asyncio.Task | None = None
        ctx.sessions.add(self)
        ctx.stats["connections_total"] += 1

    # -- inbound -------------------------------------------------------------
    def feed(self, op: int, seq: int, body: bytes) -> None:
        """One decoded frame from the client."""
        if self.state is CLOSED:
            return
        ctx = self.ctx
        now = time.monotonic()
        tokens = self.tokens + (now - self.seen) * ctx.rate
        if tokens > ctx.burst:
            tokens = ctx.burst
        if tokens < 1.0:
            self.error("rate_limited", CLOSE_POLICY, "inbound rate limit exceeded")
            return
        self.tokens = tokens - 1.0
        self.seen = now
        ctx.stats["frames_in_total"] += 1
        if self._task is not None:             # keep order behind the store call in flight
            inbox = self._inbox
            if inbox is None:
                inbox = self._inbox = deque()
            if len(inbox) >= ctx.inbox_max:
                self.error("rate_limited", CLOSE_POLICY, "too many requests in flight")
                return
            inbox.append((op, seq, body))
            return
        work = self._dispatch(op, seq, body)
        if work is not None:
            self._task = asyncio.get_running_loop().create_task(self._run(work))

    def fail(self, exc: KefuError) -> None:
        """The transport could not decode what the client sent."""
        kind = "frame_too_big" if isinstance(exc, FrameTooBig) else "bad_frame"
        self.error(kind, exc.close_code, str(exc))

    def _dispatch(self, op: int, seq: int, body: bytes):
        """Handle one frame; a coroutine is returned when a store call is needed."""
        if self.state is OPEN:
            if op == _HEARTBEAT:
                self._heartbeat(seq)
            elif op == _SYNC:
                return self._sync(seq, body)
            elif op == _ACK:
                return self._ack(seq, body)
            else:
                self.ctx.stats["ignored_ops_total"] += 1
            return None
        if self.state is HANDSHAKE:
            if op != _AUTH:
                self.error("before_auth", CLOSE_PROTOCOL_ERROR, "auth (op 7) must come first")
                return None
            self.state = AUTHING
            return self._auth(seq, body)
        return None

    async def _run(self, work) -> None:
        try:
            await work
            while self._inbox and self.state is not CLOSED:
                op, seq, body = self._inbox.popleft()
                work = self._dispatch(op, seq, body)
                if work is not None:
                    await work
        except Exception:
            log.exception("session of %s failed", self.mid)
            self.error("internal", CLOSE_TRY_AGAIN, "internal error")
        finally:
            self._task = None

    # -- auth ----------------------------------------------------------------
    async def _auth(self, seq: int, body: bytes) -> None:
        ctx = self.ctx
        try:
            req = orjson.loads(body)
            if not isinstance(req, dict):
                raise AuthError("auth body must be a JSON object")
            key = req.get("key")
            if not isinstance(key, str) or not key:
                raise AuthError("auth needs a key")
            claims = ctx.signer.verify_key(key, mid=_optional_id(req.get("mid")),
                                           room=_optional_id(req.get("room_id")))
            if ctx.stopping:
                raise StoreUnavailable("server is shutting down")
            if not ctx.bus.connected:
                raise StoreUnavailable("redis unavailable, try again")
        except orjson.JSONDecodeError:
            self.error("auth", CLOSE_POLICY, "auth body is not JSON")
            return
        except AuthError as exc:
            self.error("auth", exc.close_code, str(exc))
            return
        except StoreUnavailable as exc:
            self.error("store_unavailable", exc.close_code, str(exc))
            return
        self._join(key, claims, req.get("accepts"))
        try:
            await ctx.bus.ready(self.channels, min(SUBSCRIBE_TIMEOUT, ctx.settings.handshake_timeout))
        except StoreUnavailable as exc:
            self.error("store_unavailable", exc.close_code, str(exc))
            return
        if self.state is not AUTHING:
            return
        self.state = OPEN
        ctx.stats["auth_ok_total"] += 1
        self.send(tlv.encode(Op.AUTH_REPLY, seq, orjson.dumps({
            "heartbeat": ctx.settings.heartbeat, "room_id": self.room, "mid": self.mid,
            "server": ctx.server_id})))
        held, self.out = self.out, None          # pushes that arrived while subscribing
        if held:
            self.push(held)

    def _join(self, key: str, claims, accepts) -> None:
        hub = self.ctx.hub
        self.mid, self.room = claims.mid, claims.room
        self.accepts = self.ctx.accepts(accepts)
        channels = []
        if claims.role == "agent" and claims.shop:
            self.shop = claims.shop
            channels.append(hub.shop_channel(claims.shop))
        if self.shop is None or names.shop_of(claims.room) != self.shop:
            channels.append(hub.room_channel(claims.room))
        self.channels = tuple(channels)
        self.key = key
        hub.join(self, claims.room)
        self.ctx.marks.connect(self.mid, self.room)

    # -- requests ------------------------------------------------------------
    def _heartbeat(self, seq: int) -> None:
        ctx = self.ctx
        room = self.room
        online = max(ctx.counts.get(room, 0), ctx.marks.rooms.get(room, 0))
        self.send(tlv.heartbeat_reply(seq, online))

    def _room_for(self, requested) -> str | None:
        """The room a sync/ack applies to, or None when the key does not grant it."""
        if requested is None or requested == self.room:
            return self.room
        if self.shop is not None and isinstance(requested, str) and names.shop_of(requested) == self.shop:
            return requested
        return None

    def _request(self, body: bytes, kind: str):
        """-> (room, doc) for a sync/ack body, or None after counting why not."""
        try:
            doc = _parse_body(body)
        except BadRequest:
            self.ctx.stats[f"errors_bad_{kind}_total"] += 1
            return None
        room = self._room_for(doc.get("room_id") if isinstance(doc, dict) else None)
        if room is None:
            self.ctx.stats["errors_forbidden_room_total"] += 1
            return None
        return room, doc

    async def _sync(self, seq: int, body: bytes) -> None:
        ctx = self.ctx
        req = self._request(body, "sync")
        if req is None:
            return
        room, doc = req
        after = before = None
        limit = ctx.settings.sync_limit
        try:
            if isinstance(doc, int):
                after = _msg_id(doc)
            elif isinstance(doc, dict):
                if doc.get("after") is not None:
                    after = _msg_id(doc["after"])
                elif doc.get("before") is not None:
                    before = _msg_id(doc["before"])
                if doc.get("limit") is not None:
                    limit = min(max(1, _msg_id(doc["limit"])), limit)
            page = await ctx.store.history(room, after=after, before=before, limit=limit)
        except BadRequest:
            ctx.stats["errors_bad_sync_total"] += 1
            return
        except StoreUnavailable:
            ctx.stats["errors_store_unavailable_total"] += 1
            return
        frames = []
        if page.gap_oldest is not None:
            frames.append(tlv.encode(Op.SYNC_REPLY, seq, orjson.dumps(
                {"type": "gap", "truncated": True, "oldest": page.gap_oldest})))
        frames.extend([tlv.encode(Op.SYNC_REPLY, seq, raw) for raw in page.messages])
        ctx.stats["sync_total"] += 1
        if frames:
            self.send_many(frames)

    async def _ack(self, seq: int, body: bytes) -> None:
        ctx = self.ctx
        req = self._request(body, "ack")
        if req is None:
            return
        room, doc = req
        try:
            msg_id = _msg_id(doc.get("id") if isinstance(doc, dict) else doc)
            if self.shop is not None:     # an agent read: the visitor's page shows 已读 live
                offset = await ctx.store.mark_read(self.mid, room, msg_id)
            else:
                offset = await ctx.store.ack(self.mid, room, msg_id)
        except BadRequest:
            ctx.stats["errors_bad_ack_total"] += 1
            return
        except StoreUnavailable:
            ctx.stats["errors_store_unavailable_total"] += 1
            return
        ctx.stats["ack_total"] += 1
        self.send(tlv.encode(Op.ACK_REPLY, seq, b"%d" % offset))

    # -- outbound ------------------------------------------------------------
    def send(self, frame: bytes) -> None:
        if self.state is CLOSED:
            return
        self.ctx.stats["frames_out_total"] += 1
        self.transport.send(frame)
        self._check_backlog()

    def send_many(self, frames: list[bytes]) -> None:
        if self.state is CLOSED:
            return
        self.ctx.stats["frames_out_total"] += len(frames)
        self.transport.send_many(frames)
        self._check_backlog()

    def push(self, frames: list[bytes]) -> None:
        """Hub delivery of this tick's live frames (held back until op 8 is sent)."""
        if self.state is not OPEN:
            if self.state is AUTHING:
                self.out = frames
            return
        self.transport.push(frames)              # counted by the hub, once per message
        self._check_backlog()

    def _check_backlog(self) -> None:
        if self.transport.buffered() > self.ctx.send_limit:
            self.ctx.stats["errors_slow_consumer_total"] += 1
            log.info("dropping %s: client not reading (%d bytes queued)", self.mid, self.transport.buffered())
            self._cleanup()
            self.transport.abort()

    # -- closing -------------------------------------------------------------
    def error(self, kind: str, code: int, reason: str) -> None:
        """A protocol error of this connection: count it, tell the client, close."""
        self.ctx.stats[f"errors_{kind}_total"] += 1
        self.kick(code, reason)

    def kick(self, code: int = CLOSE_GOING_AWAY, reason: str = "shutdown") -> None:
        """Server-initiated close: op 6 with the reason, then close with `code`."""
        if self.state is CLOSED:
            return
        reason = reason.encode()[:REASON_MAX].decode(errors="ignore")
        self.ctx.stats["frames_out_total"] += 1
        self.transport.send(tlv.encode(Op.DISCONNECT, 0, reason.encode()))
        self._cleanup()
        self.transport.close(code, reason)

    def gone(self) -> None:
        """The transport is closed (by the client, the network, or us)."""
        self._cleanup()

    def _cleanup(self) -> None:
        if self.state is CLOSED:
            return
        self.state = CLOSED
        ctx = self.ctx
        ctx.sessions.discard(self)
        if self.key is not None:
            ctx.hub.leave(self)
            ctx.marks.disconnect(self.mid, self.room)
        self.out = None
        self._inbox = None


def sweep(ctx: Context, now: float | None = None) -> int:
    """Close sessions past their handshake or heartbeat timeout; -> how many."""
    now = time.monotonic() if now is None else now
    handshake = now - ctx.settings.handshake_timeout
    heartbeat = now - ctx.settings.heartbeat_timeout
    late = [s for s in ctx.sessions
            if s.seen < (heartbeat if s.state is OPEN else handshake)]
    for s in late:
        if s.state is OPEN:
            s.error("heartbeat_timeout", CLOSE_POLICY, "heartbeat timeout")
        else:
            s.error("handshake_timeout", CLOSE_POLICY, "handshake timeout")
    return len(late)
