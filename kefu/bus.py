"""The worker's single Redis pub/sub connection.

One raw connection per worker, read by an `asyncio.Protocol`: every chunk
the socket yields goes through one RESP reader (hiredis when installed)
and each `message` reply is handed to the hub synchronously, with one
`flush` call per chunk.  No task, future or decode runs per message: with
redis.asyncio's PubSub every message costs a coroutine round trip through
`get_message`, which is the per-message overhead this avoids (measured by
bench/bench_bus.py).

Subscriptions converge on a wanted set that the hub edits synchronously
(`want` on a room's first local member, `unwant` on its last).  Commands
go out once per event-loop tick, as one SUBSCRIBE and one UNSUBSCRIBE for
everything that changed, and Redis answers them in order, so a member
that comes and goes while a SUBSCRIBE is in flight cannot leave the
worker subscribed to nothing or to a room nobody holds.  A channel counts
as *ready* only when no command for it is still unanswered: `ready()`
waits for exactly that, which is what lets the session send the auth
reply only once the room's live stream is flowing.

The connection is supervised by one task: on loss it reconnects with
capped exponential backoff and jitter, logs once per outage, re-subscribes
every wanted channel and reports them to `on_recovered` with the time the
outage began, so the hub can catch up what was published meanwhile.  A
bad payload, or an exception from the hub, is logged and counted; it never
kills the reader.  A PING every `ping_interval` detects a half-open link.
"""
from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from typing import Callable, Iterable

from redis.asyncio.connection import parse_url

from .errors import StoreUnavailable

try:
    from hiredis import Reader as _Reader
except ImportError:            # pragma: no cover - exercised with hiredis uninstalled
    _Reader = None

log = logging.getLogger("kefu.bus")

BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0
CONNECT_TIMEOUT = 5.0
CHUNK = 512                    # channels per SUBSCRIBE/UNSUBSCRIBE command

_MESSAGE, _SMESSAGE = b"message", b"smessage"
_SUB, _UNSUB = b"subscribe", b"unsubscribe"


def command(*args: bytes | str | int) -> bytes:
    """One RESP command as bytes."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = b"%d" % a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class _PyReader:
    """The RESP2 subset pub/sub answers with (hiredis.Reader's interface)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def gets(self):
        try:
            value, end = self._parse(0)
        except IndexError:
            return False
        del self._buf[:end]
        return value

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self._buf.index(b"\r\n", pos)      # ValueError if incomplete
        return bytes(self._buf[pos:end]), end + 2

    def _parse(self, pos: int):
        try:
            line, pos = self._line(pos)
        except ValueError:
            raise IndexError from None
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return (int(rest) if kind == b":" else rest), pos
        if kind == b"-":
            return RuntimeError(rest.decode(errors="replace")), pos
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None, pos
            if len(self._buf) < pos + n + 2:
                raise IndexError
            return bytes(self._buf[pos:pos + n]), pos + n + 2
        if kind == b"*":
            items = []
            for _ in range(int(rest)):
                item, pos = self._parse(pos)
                items.append(item)
            return items, pos
        raise ValueError(f"unexpected RESP type {kind!r}")


def _reader():
    return _Reader() if _Reader is not None else _PyReader()


class _Link(asyncio.Protocol):
    """One live connection; parses replies and hands them to the Bus."""

    def __init__(self, bus: "Bus") -> None:
        self.bus = bus
        self.reader = _reader()
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.lost = loop.create_future()
        self.early: list = []               # replies before the link is attached
        self.early_ready = asyncio.Event()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        bus = self.bus
        bus.last_rx = time.monotonic()
        reader = self.reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not False:
                if bus.link is self:
                    bus._reply(reply)
                else:
                    self.early.append(reply)
                    self.early_ready.set()
        except Exception:           # a protocol error: the stream is unusable now
            log.exception("bad data from redis; reconnecting")
            self.transport.abort()
        finally:
            if bus.link is self:
                bus._end_of_chunk()

    def connection_lost(self, exc) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)
        self.early_ready.set()

    async def handshake(self, required: list[bytes], optional: list[bytes]) -> None:
        """Send commands before any subscription; an error answer to a required one fails."""
        self.transport.write(b"".join(required + optional))
        while len(self.early) < len(required) + len(optional):
            if self.lost.done():
                raise ConnectionError("redis closed the connection")
            self.early_ready.clear()
            await self.early_ready.wait()
        for reply in self.early[:len(required)]:
            if isinstance(reply, Exception):
                raise ConnectionError(f"redis refused the pub/sub connection: {reply}")


class Bus:
    """Subscribe by channel, deliver every message synchronously, survive outages.

    on_message(channel: bytes, payload: bytes) is called per message,
    on_flush() once after each chunk read, on_recovered(channels, since)
    after a reconnect once the listed channels are subscribed again
    (`since`: wall-clock seconds when the outage began).
    """

    def __init__(self, url: str, on_message: Callable[[bytes, bytes], None],
                 on_flush: Callable[[], None] = lambda: None,
                 on_recovered: Callable[[list[bytes], float], None] | None = None, *,
                 ping_interval: float = 5.0, name: str = "kefu-comet") -> None:
        self.url = url
        self._opts = parse_url(url)            # a bad URL fails here, not in the task
        self.on_message = on_message
        self.on_flush = on_flush
        self.on_recovered = on_recovered
        self.ping_interval = ping_interval
        self.name = name
        self.link: _Link | None = None
        self.last_rx = 0.0
        self.wanted: set[bytes] = set()
        self._sent: set[bytes] = set()          # what the current link was told
        self._inflight: dict[bytes, int] = {}   # channel -> commands not yet answered
        self._waiters: dict[bytes, list[asyncio.Future]] = {}
        self._recovering: set[bytes] = set()
        self._recovered: list[bytes] = []
        self._early: list[tuple[bytes, bytes]] = []   # messages of _recovered channels, not yet reported
        self._outage_since: float | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self.stats = {"messages": 0, "bad_messages": 0, "reconnects": 0}
        self._connected_event: asyncio.Event | None = None

    # -- lifecycle -------------------------------------------------------
    async def start(self, wait: float | None = None) -> None:
        """Start the supervising task; optionally wait until connected."""
        self._connected_event = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kefu-bus")
        if wait:
            try:
                await asyncio.wait_for(self._connected_event.wait(), wait)
            except asyncio.TimeoutError:
                raise StoreUnavailable(f"redis pub/sub not reachable at {self._safe_url()}") from None

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.link is not None and self.link.transport is not None:
            self.link.transport.close()
        self.link = None
        for futs in self._waiters.values():
            for f in futs:
                if not f.done():
                    f.set_exception(StoreUnavailable("bus closed"))
        self._waiters.clear()

    @property
    def connected(self) -> bool:
        return self.link is not None

    # -- subscriptions ---------------------------------------------------
    def want(self, channel: bytes) -> None:
        self.wanted.add(channel)
        self._schedule()

    def unwant(self, channel: bytes) -> None:
        self.wanted.discard(channel)
        self._recovering.discard(channel)
        self._schedule()

    def is_ready(self, channel: bytes) -> bool:
        return self.link is not None and channel in self._sent and channel not in self._inflight

    async def ready(self, channels: Iterable[bytes], timeout: float) -> None:
        """Return once every channel's SUBSCRIBE is answered; StoreUnavailable on timeout."""
        loop = asyncio.get_running_loop()
        futs = []
        for ch in channels:
            if not self.is_ready(ch):
                fut = loop.create_future()
                self._waiters.setdefault(ch, []).append(fut)
                futs.append((ch, fut))
        if not futs:
            return
        try:
            await asyncio.wait_for(asyncio.gather(*(f for _, f in futs)), timeout)
        except asyncio.TimeoutError:
            raise StoreUnavailable("redis did not confirm the subscription") from None
        finally:
            for ch, fut in futs:
                waiting = self._waiters.get(ch)
                if waiting and fut in waiting:
                    waiting.remove(fut)
                    if not waiting:
                        del self._waiters[ch]

    def _schedule(self) -> None:
        if self._flush_handle is None and self.link is not None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._sync)

    def _sync(self) -> None:
        """Send what makes Redis' subscription set equal the wanted set."""
        self._flush_handle = None
        link = self.link
        if link is None:
            return
        add = self.wanted - self._sent
        drop = self._sent - self.wanted
        out = []
        for verb, chans in ((b"SUBSCRIBE", add), (b"UNSUBSCRIBE", drop)):
            chans = list(chans)
            for i in range(0, len(chans), CHUNK):
                part = chans[i:i + CHUNK]
                out.append(command(verb, *part))
                for ch in part:
                    self._inflight[ch] = self._inflight.get(ch, 0) + 1
        self._sent |= add
        self._sent -= drop
        if out:
            link.transport.write(b"".join(out))

    # -- replies ---------------------------------------------------------
    def _reply(self, reply) -> None:
        if type(reply) is not list or not reply:
            if isinstance(reply, Exception):
                log.warning("redis error on the pub/sub connection: %s", reply)
            return
        kind = reply[0]
        if kind == _MESSAGE or kind == _SMESSAGE:
            self.stats["messages"] += 1
            if self._recovered and reply[1] in self._recovered:
                self._early.append((reply[1], reply[2]))    # after on_recovered: see _end_of_chunk
                return
            try:
                self.on_message(reply[1], reply[2])
            except Exception:
                self.stats["bad_messages"] += 1
                log.exception("delivering a message of %r failed; skipped", reply[1][:80])
        elif kind == _SUB or kind == _UNSUB:
            self._answered(reply[1])

    def _answered(self, ch: bytes) -> None:
        n = self._inflight.get(ch, 0) - 1
        if n > 0:
            self._inflight[ch] = n
            return
        self._inflight.pop(ch, None)
        if ch not in self._sent:
            return
        for fut in self._waiters.pop(ch, ()):
            if not fut.done():
                fut.set_result(None)
        if ch in self._recovering:
            self._recovering.discard(ch)
            self._recovered.append(ch)

    def _end_of_chunk(self) -> None:
        try:
            self.on_flush()
        except Exception:
            log.exception("hub flush failed")
        if self._recovered and self.on_recovered is not None:
            done, self._recovered = self._recovered, []
            try:
                self.on_recovered(done, self._outage_since or time.time())
            except Exception:
                log.exception("recovery callback failed")
            # messages that came on those channels after their new SUBSCRIBE reach the
            # hub only now, after it was told to catch up: it keeps them in id order
            early, self._early = self._early, []
            for channel, payload in early:
                try:
                    self.on_message(channel, payload)
                except Exception:
                    self.stats["bad_messages"] += 1
                    log.exception("delivering a message of %r failed; skipped", channel[:80])
            if early:
                try:
                    self.on_flush()
                except Exception:
                    log.exception("hub flush failed")
            if not self._recovering:
                self._outage_since = None

    # -- connection ------------------------------------------------------
    def _safe_url(self) -> str:
        head, at, tail = self.url.rpartition("@")
        return f"{self.url.split('://')[0]}://***@{tail}" if at else self.url

    async def _connect(self) -> _Link:
        opts = self._opts
        loop = asyncio.get_running_loop()
        link = _Link(self)
        if "path" in opts:
            await loop.create_unix_connection(lambda: link, opts["path"])
        else:
            tls = None
            if self.url.startswith("rediss://"):
                tls = ssl.create_default_context()
            await loop.create_connection(lambda: link, opts.get("host", "localhost"),
                                         opts.get("port", 6379), ssl=tls)
        auth = []
        if opts.get("password"):
            user = opts.get("username")
            auth.append(command(b"AUTH", *([user] if user else []), opts["password"]))
        name = command(b"CLIENT", b"SETNAME", self.name.replace(" ", "_"))   # for CLIENT LIST; may be refused
        try:
            await link.handshake(auth, [name])
        except BaseException:
            link.transport.close()
            raise
        return link

    async def _run(self) -> None:
        delay = BACKOFF_MIN
        failing = False
        while not self._closing:
            try:
                link = await asyncio.wait_for(self._connect(), CONNECT_TIMEOUT)
            except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
                if not failing:
                    log.warning("redis pub/sub unavailable (%s); retrying with backoff", exc or type(exc).__name__)
                    failing = True
                    self._outage_began()
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            if failing or self.stats["reconnects"] or self._outage_since is not None:
                log.info("redis pub/sub connected again; resubscribing %d channel(s)", len(self.wanted))
            failing = False
            delay = BACKOFF_MIN
            self._attach(link)
            await self._watch(link)
            if self._closing:
                return
            self._detach()
            self.stats["reconnects"] += 1
            log.warning("redis pub/sub connection lost; reconnecting")

    def _outage_began(self) -> None:
        if self._outage_since is None:
            self._outage_since = time.time()

    def _attach(self, link: _Link) -> None:
        self.link = link
        self.last_rx = time.monotonic()
        if self._outage_since is not None:
            self._recovering = set(self.wanted)
            if not self._recovering:
                self._outage_since = None
        self._sync()
        if self._connected_event is not None:
            self._connected_event.set()

    def _detach(self) -> None:
        self._outage_began()
        self.link = None
        self._sent.clear()
        self._inflight.clear()
        self._recovered.clear()
        self._early.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._connected_event is not None:
            self._connected_event.clear()

    async def _watch(self, link: _Link) -> None:
        """Wait for the link to drop; PING it when quiet, abort it when silent.

        Silence is only judged when this check itself ran on time: a worker
        whose event loop was starved (a burst of connects on a busy machine)
        has not read its socket either, and dropping the link then would
        add a resubscription and a catch-up of every room to the overload.
        """
        while True:
            slept = time.monotonic()
            try:
                await asyncio.wait_for(asyncio.shield(link.lost), self.ping_interval)
                return
            except asyncio.TimeoutError:
                pass
            now = time.monotonic()
            if now - slept > 2 * self.ping_interval:      # the loop was starved: judge next round
                link.transport.write(command(b"PING"))
                continue
            quiet = now - link.bus.last_rx
            if quiet > 3 * self.ping_interval:
                log.warning("redis pub/sub silent for %.0fs; dropping the connection", quiet)
                link.transport.abort()
                await link.lost
                return
            if quiet >= self.ping_interval * 0.9:
                link.transport.write(command(b"PING"))
