"""Delivery accounting against a real system: a `kefu run` subprocess,
readers that reconnect and resync like a real page, writers that post
through the API, and a ledger of what the API acknowledged.

The promise checked (DESIGN.md, quality bars): every acknowledged message
reaches every member of its room exactly once after resync, in id order.
A reader keeps, per room, the ids it accepted; it accepts a message only
when its id is above the last one it holds (what a real client does with
a live message it already got from a sync), and counts anything out of
order as a violation.  At the end each reader's view must equal the
ledger's, room by room.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from kefu import client as kclient
from kefu.protocol import Op

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A free port BELOW the kernel's ephemeral range (32768+ here), so that no
    client's outgoing connection can take it between this check and the
    server's bind (tests open thousands of connections)."""
    low, high = 20000, 32000
    with contextlib.suppress(OSError, ValueError):
        low_eph = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        high = min(high, low_eph - 1)
        low = min(low, high - 2000)
    for _ in range(200):
        port = random.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_pids(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def listening_inodes(port: int) -> set[int]:
    """Socket inodes listening on loopback/any `port` (state 0A in /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    found.add(int(cols[9]))
    return found


def socket_inodes(pid: int) -> set[int]:
    out = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    out.add(int(target[8:-1]))
    return out


def rss_kb(pid: int) -> int:
    """Resident set size of `pid` in KiB (0 when it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class System:
    """One `python -m kefu run` on free loopback ports (embedded Redis unless given one)."""

    def __init__(self, data_dir: Path, *, redis_url: str = "", workers: int = 2, extra=(), env=None):
        self.data_dir = Path(data_dir)
        self.redis_url = redis_url
        self.workers = workers
        self.extra = list(extra)
        self.env = dict(os.environ, **(env or {}))
        self.api_port, self.comet_port, self.tcp_port = free_port(), free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir / "kefu-run.log"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.comet_port}/sub"

    @property
    def tcp(self) -> str:
        return f"tcp://127.0.0.1:{self.tcp_port}"

    def start(self, timeout: float = 60.0) -> "System":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "kefu", "run", "--data-dir", str(self.data_dir),
               "--api-port", str(self.api_port), "--comet-port", str(self.comet_port),
               "--tcp-port", str(self.tcp_port), "--workers", str(self.workers), *self.extra]
        if self.redis_url:
            cmd += ["--redis-url", self.redis_url]
        self._log = open(self.log_path, "ab")
        self._log_from = self._log.tell()          # a restart on the same data dir appends
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kefu run exited {self.proc.returncode}:\n{self.log()}")
            if "kefu is running" in self.log():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"kefu run did not start within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        """What this start of `kefu run` has printed so far."""
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as fh:
            fh.seek(getattr(self, "_log_from", 0))
            return fh.read().decode(errors="replace")

    def children(self) -> list[int]:
        return child_pids(self.proc.pid) if self.proc else []

    def redis_pid(self) -> int | None:
        for name in ("redis.pid", "redis-server.pid"):
            path = self.data_dir / name
            if path.exists():
                with contextlib.suppress(ValueError):
                    return int(path.read_text().strip())
        return None

    def worker_pids(self) -> list[int]:
        """Comet and API worker pids (the supervisor's children other than redis-server)."""
        rpid = self.redis_pid()
        return [p for p in self.children() if p != rpid]

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def listeners(self, port: int) -> list[int]:
        """Worker pids holding a listening socket on `port` (via /proc/net/tcp inodes)."""
        inodes = listening_inodes(port)
        return [p for p in self.worker_pids() if inodes & socket_inodes(p)]

    def api_pid(self) -> int | None:
        found = self.listeners(self.api_port)
        return found[0] if found else None

    def comet_pids(self) -> list[int]:
        return self.listeners(self.tcp_port)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill_all(self) -> None:
        """Last resort for a test that failed half-way: nothing may linger."""
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def demo_credentials(self) -> tuple[str, str]:
        shop, password = (self.data_dir / "demo-credentials.txt").read_text().split()[:2]
        return shop, password


@dataclass
class Visitor:
    params: dict

    @property
    def room(self) -> str:
        return self.params["room_id"]


async def new_visitor(http: aiohttp.ClientSession, api: str, shop: str) -> Visitor:
    # A fresh cookie jar per visitor: the API keeps a returning visitor's identity by cookie.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as fresh:
        async with fresh.get(f"{api}/open/im", params={"shop_id": shop, "format": "json"}) as r:
            assert r.status == 200, await r.text()
            return Visitor(await r.json())


async def agent_session(api: str, shop: str, password: str) -> aiohttp.ClientSession:
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with http.post(f"{api}/open/login", data={"shop_id": shop, "password": password}) as r:
        assert r.status == 200, await r.text()
    return http


async def agent_params(http: aiohttp.ClientSession, api: str, shop: str, visitor_mid: str) -> dict:
    async with http.get(f"{api}/open/com", params={"shop_id": shop, "mid": visitor_mid, "format": "json"}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


@dataclass
class Ledger:
    """What the API acknowledged, per room, in id order (and who sent each message)."""

    rooms: dict[str, list[int]] = field(default_factory=dict)
    failures: int = 0            # posts answered with an error (never acknowledged)
    senders: dict[int, str] = field(default_factory=dict)     # id -> sender mid

    def add(self, room: str, msg_id: int, sender: str | None = None) -> None:
        self.rooms.setdefault(room, []).append(msg_id)
        if sender is not None:
            self.senders[msg_id] = sender

    def expected(self, room: str) -> list[int]:
        return sorted(self.rooms.get(room, []))

    def total(self) -> int:
        return sum(map(len, self.rooms.values()))

    def last_by(self, room: str, mid: str) -> int:
        """The newest id `mid` posted in `room` (its read offset moves there), else 0."""
        return max((i for i in self.rooms.get(room, []) if self.senders.get(i) == mid), default=0)

    def unread(self, room: str, offset: int) -> int:
        return sum(1 for i in self.rooms.get(room, []) if i > offset)


class Reader:
    """One recipient: connects, authenticates, resyncs, reads live, reconnects on loss.

    lean: the bare-asyncio WebSocket client (thousands of readers in one test).
    heartbeat: seconds between op-2 heartbeats (None: none, like the old tests).
    ack_every: every n-th accepted message of a room is acknowledged (op 16);
    `acked` keeps the offsets the server confirmed, `ack_tried` every id sent
    (an ack cut off by a fault may have landed without its reply).
    """

    def __init__(self, url: str, auth: dict, rooms: list[str], *, agent: bool = False,
                 lean: bool = False, heartbeat: float | None = None, ack_every: int = 0):
        self.url, self.auth, self.rooms, self.agent = url, auth, rooms, agent
        self.lean, self.heartbeat_every, self.ack_every = lean, heartbeat, ack_every
        self.seen: dict[str, list[int]] = {r: [] for r in rooms}
        self.acked: dict[str, int] = {}
        self.ack_tried: dict[str, set[int]] = {}
        self.violations: list[str] = []
        self.reconnects = 0
        self.heartbeats = 0
        self.servers: list[str] = []
        self.closes: list = []           # (code, reason) of every server-side close
        self._task: asyncio.Task | None = None
        self._stop = False
        self._acking = 0
        self.client: kclient.Client | None = None

    def start(self) -> "Reader":
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop = True
        deadline = time.monotonic() + 5
        while self._acking and time.monotonic() < deadline:     # let an ack in flight land
            await asyncio.sleep(0.02)
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), 5)
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def drop(self) -> None:
        """Cut the connection now, as a network loss would; the reader comes back and resyncs."""
        c = self.client
        if c is None:
            return
        transport = getattr(c, "transport", None) or getattr(getattr(c, "proto", None), "transport", None)
        if transport is not None:
            transport.abort()
        elif getattr(c, "ws", None) is not None:
            asyncio.ensure_future(c.ws.close())

    def last(self, room: str) -> int:
        ids = self.seen.get(room)
        return ids[-1] if ids else 0

    def _accept(self, msg: dict) -> int | None:
        room, msg_id = msg.get("room_id"), msg.get("id")
        if room not in self.seen or not isinstance(msg_id, int):
            if room is not None and not self.agent and msg.get("type") != "read":
                self.violations.append(f"message of foreign room {room!r}")
            return None
        if msg_id > self.last(room):
            self.seen[room].append(msg_id)
            return msg_id
        return None

    async def _maybe_ack(self, c: kclient.Client, msg: dict) -> None:
        room = msg["room_id"]
        if not self.ack_every or len(self.seen[room]) % self.ack_every:
            return
        msg_id = msg["id"]
        self.ack_tried.setdefault(room, set()).add(msg_id)
        self._acking += 1
        try:
            offset = await c.ack(msg_id, room_id=room if self.agent else None, timeout=10)
        finally:
            self._acking -= 1
        if offset < msg_id:
            self.violations.append(f"ack of {msg_id} in {room} answered the lower offset {offset}")
        self.acked[room] = max(self.acked.get(room, 0), offset)

    async def _resync(self, c: kclient.Client) -> None:
        many = len(self.rooms) > 10
        for room in self.rooms:
            if many:        # 2 frames a room: stay under the comet's inbound rate (50/s, burst 100)
                await asyncio.sleep(0.05)
            kw = {"room_id": room} if self.agent else {}
            for msg in await c.sync_all(after=self.last(room), **kw):
                if msg.get("type") != "gap" and self._accept(msg) is not None:
                    await self._maybe_ack(c, msg)

    async def _beat(self, c: kclient.Client) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_every * (0.5 + random.random()))
            await c.heartbeat(timeout=30)
            self.heartbeats += 1

    async def _session(self) -> None:
        c = self.client = await kclient.connect(self.url, timeout=10, lean=self.lean)
        beat = None
        try:
            reply = await c.auth(self.auth["key"], mid=self.auth["mid"], room_id=self.auth["room_id"],
                                 accepts=[5, 9], timeout=10)
            self.servers.append(str(reply.get("server", "")))
            await self._resync(c)
            if self.heartbeat_every:
                beat = asyncio.create_task(self._beat(c))
            while not self._stop:
                frame = await c.recv(timeout=3600)
                if frame.op == Op.MESSAGE:
                    msg = frame.json()
                    if self._accept(msg) is not None:
                        await self._maybe_ack(c, msg)
                elif frame.op == Op.DISCONNECT:
                    return
                if beat is not None and beat.done():
                    beat.result()               # a heartbeat went unanswered: reconnect
        except kclient.Closed as exc:
            self.closes.append((exc.code, exc.reason))
            raise
        finally:
            if beat is not None:
                beat.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.close(), 5)

    async def _run(self) -> None:
        delay = 0.05
        while not self._stop:
            try:
                await self._session()
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - any loss of the connection means: reconnect
                pass
            if self._stop:
                return
            self.reconnects += 1
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    def check(self, ledger: Ledger) -> list[str]:
        problems = list(self.violations)
        for room in self.rooms:
            want, got = ledger.expected(room), self.seen[room]
            if got != want:
                missing = sorted(set(want) - set(got))
                extra = sorted(set(got) - set(want))
                problems.append(f"{room}: {len(got)} seen vs {len(want)} acknowledged; "
                                f"missing {missing[:5]}, unexpected {extra[:5]}")
        return problems



class Writer:
    """Posts messages through /open/push at a steady rate; acknowledged ids go to the ledger.

    A post is retried like the page retries it (same client_msg_id, so never a
    duplicate) for up to `retry_for` seconds: through 503s while Redis is down
    and refused connections while the API restarts.  `ok_times` and `statuses`
    record what happened, for recovery times.
    """

    def __init__(self, http: aiohttp.ClientSession, api: str, senders: list[dict], ledger: Ledger,
                 rate: float = 50.0, retry_for: float = 10.0):
        self.http, self.api, self.senders, self.ledger, self.rate = http, api, senders, ledger, rate
        self.retry_for = retry_for
        self.sent = 0
        self.statuses: collections.Counter = collections.Counter()
        self.ok_times: list[float] = []
        self.duplicates = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> "Writer":
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task:
            await self._task

    async def post(self, sender: dict, text: str) -> int | None:
        form = {"type": "text", "msg": text, "room_id": sender["room_id"], "key": sender["key"],
                "client_msg_id": f"c{self.sent}-{random.getrandbits(40)}"}
        deadline = time.monotonic() + self.retry_for
        retried = False
        while True:           # retry like the page: same client_msg_id, never a duplicate
            try:
                async with self.http.post(f"{self.api}/open/push",
                                          params={"mid": sender["mid"], "shop_id": sender["shop_id"]},
                                          data=form, timeout=aiohttp.ClientTimeout(total=5)) as r:
                    self.statuses[r.status] += 1
                    if r.status == 200:
                        body = await r.json()
                        if body.get("duplicate"):
                            self.duplicates += 1
                            if not retried:
                                raise AssertionError(f"first post answered as a duplicate: {body}")
                        msg_id = int(body["id"])
                        if not body.get("duplicate") or msg_id not in self.ledger.senders:
                            self.ledger.add(sender["room_id"], msg_id, sender["mid"])
                        self.ok_times.append(time.monotonic())
                        return msg_id
                    if r.status == 429:
                        await asyncio.sleep(min(float(r.headers.get("Retry-After", "0.2")), 0.5))
                        retried = True
                        continue
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                self.statuses["error"] += 1
            retried = True
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        self.ledger.failures += 1
        return None

    def first_ok_after(self, t: float) -> float | None:
        return next((x for x in self.ok_times if x >= t), None)

    async def _run(self) -> None:
        while not self._stop.is_set():
            sender = random.choice(self.senders)
            self.sent += 1
            await self.post(sender, f"m{self.sent}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 1 / self.rate)


async def settle(readers: list[Reader], ledger: Ledger, timeout: float = 30.0) -> list[str]:
    """Wait until every reader holds the ledger's newest id of each of its rooms; return problems."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(r.last(room) >= (ledger.expected(room) or [0])[-1] for r in readers for room in r.rooms):
            break
        await asyncio.sleep(0.1)
    problems = []
    for i, r in enumerate(readers):
        problems += [f"reader {i}: {p}" for p in r.check(ledger)]
    return problems


def offset_ok(readers: list[Reader], room: str, offset: int, own_posts: int) -> bool:
    """Is a member's read offset what its readers' acks and its own posts account for?

    Exactly the highest confirmed ack or own post; or above it, an ack that was
    sent but whose reply a fault cut off.
    """
    floor = max([own_posts] + [r.acked.get(room, 0) for r in readers])
    return offset == floor or (offset > floor and any(offset in r.ack_tried.get(room, ()) for r in readers))


async def read_json(http: aiohttp.ClientSession, method: str, url: str, retry_for: float = 15.0, **kw):
    """A read as a client makes it: a 503 (Redis unavailable, e.g. a cluster still
    settling after a failover, docs/scaling.md) is retried for `retry_for` seconds;
    any other status but 200 fails at once."""
    deadline = time.monotonic() + retry_for
    while True:
        async with http.request(method, url, **kw) as r:
            if r.status == 503 and time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                continue
            assert r.status == 200, await r.text()
            return await r.json()


async def conversations(agent_http: aiohttp.ClientSession, api: str, shop: str) -> dict[str, dict]:
    """The agent's whole conversation list (every page), by room."""
    rows: dict[str, dict] = {}
    page = 1
    while True:
        body = await read_json(agent_http, "POST", f"{api}/open/finduserlist",
                               data={"shop_id": shop, "limit": "200", "page": str(page)})
        for row in body["data"]:
            rows[row["room_id"]] = row
        if not body.get("more") or not body["data"]:
            return rows
        page += 1


async def unread_problems(api: str, shop: str, agent_http: aiohttp.ClientSession, ledger: Ledger,
                          agent_reader: Reader | None, visitors: dict[str, tuple[dict, list[Reader]]]
                          ) -> list[str]:
    """Every unread count must equal the ledger's, for the shop's agents and each visitor.

    Agents: /open/finduserlist `seq` must be the offset the agent reader's acks
    (and the agents' own posts) account for, and `num` the ledger's count above
    it.  Visitors (room -> (params, their readers)): /open/readmark `own` the
    same, so their unread (messages above it) is the ledger's.
    """
    problems = []
    rows = await conversations(agent_http, api, shop)
    agent = f"agent:{shop}"
    for room in ledger.rooms:
        row = rows.get(room)
        if row is None:
            problems.append(f"{room}: missing from the conversation list")
            continue
        own = ledger.last_by(room, agent)
        seq = int(row["seq"])
        agents = [agent_reader] if agent_reader is not None and room in agent_reader.rooms else []
        if not offset_ok(agents, room, seq, own):
            problems.append(f"{room}: agents' offset {seq}, own posts up to {own}, "
                            f"acked {[a.acked.get(room, 0) for a in agents]}")
        if int(row["num"]) != ledger.unread(room, seq):
            problems.append(f"{room}: agents' unread {row['num']} != ledger {ledger.unread(room, seq)}")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        for room, (params, readers) in visitors.items():
            own = int((await read_json(http, "GET", f"{api}/open/readmark", params={
                "room_id": room, "key": params["key"], "mid": params["mid"]}))["own"])
            posted = ledger.last_by(room, params["mid"])
            if not offset_ok(readers, room, own, posted):
                problems.append(f"{room}: visitor's offset {own}, posted {posted}, "
                                f"acked {[rd.acked.get(room, 0) for rd in readers]}")
            # the visitor's unread is what the room holds above `own`: the readers' check already
            # proved the room holds exactly the ledger, so it equals ledger.unread(room, own)
    return problems


class Traffic:
    """Visitors and the shop's agents talking through a real system, every side accounted.

    n visitors, each with a reader (WebSocket and TCP alternately, lean WebSocket
    every third); one agent reader on every room; writers posting as the
    visitors and as the agents.  `finish()` stops the writers, settles the
    readers against the ledger and checks every unread count.
    """

    def __init__(self, api: str, ws: str, tcp: str, shop: str, password: str, *, visitors: int = 6,
                 rate: float = 40.0, agent_rate: float = 10.0, retry_for: float = 10.0,
                 heartbeat: float | None = None):
        self.api, self.ws, self.tcp, self.shop, self.password = api, ws, tcp, shop, password
        self.n, self.rate, self.agent_rate, self.retry_for = visitors, rate, agent_rate, retry_for
        self.heartbeat = heartbeat
        self.ledger = Ledger()
        self.readers: list[Reader] = []
        self.writers: list[Writer] = []
        self.visitors: list[Visitor] = []
        self.agent_reader: Reader | None = None

    async def start(self, wait: float = 30.0) -> "Traffic":
        self.http = aiohttp.ClientSession()
        self.visitors = [await new_visitor(self.http, self.api, self.shop) for _ in range(self.n)]
        self.agent_http = await agent_session(self.api, self.shop, self.password)
        agents = [await agent_params(self.agent_http, self.api, self.shop, v.params["mid"]) for v in self.visitors]
        rooms = [v.room for v in self.visitors]
        for i, v in enumerate(self.visitors):
            url = self.tcp if i % 2 else self.ws
            self.readers.append(Reader(url, v.params, [v.room], lean=i % 3 == 2, ack_every=2,
                                       heartbeat=self.heartbeat).start())
        self.agent_reader = Reader(self.ws, agents[0], rooms, agent=True, ack_every=3,
                                   heartbeat=self.heartbeat).start()
        self.readers.append(self.agent_reader)
        await wait_until(lambda: all(r.servers for r in self.readers), wait, "readers to authenticate")
        self.writers = [Writer(self.http, self.api, [v.params for v in self.visitors], self.ledger,
                               rate=self.rate, retry_for=self.retry_for).start()]
        if self.agent_rate:
            self.writers.append(Writer(self.http, self.api, agents, self.ledger, rate=self.agent_rate,
                                       retry_for=self.retry_for).start())
        return self

    def ok_times(self) -> list[float]:
        return sorted(t for w in self.writers for t in w.ok_times)

    def first_ok_after(self, t: float) -> float | None:
        return next((x for x in self.ok_times() if x >= t), None)

    def statuses(self) -> collections.Counter:
        total: collections.Counter = collections.Counter()
        for w in self.writers:
            total.update(w.statuses)
        return total

    async def finish(self, timeout: float = 60.0) -> list[str]:
        """Stop writing, settle, check unread counts; -> problems (empty: nothing lost)."""
        try:
            for w in self.writers:
                await w.stop()
            problems = await settle(self.readers, self.ledger, timeout=timeout)
            await asyncio.sleep(0.3)            # acks of the last messages land
            for r in self.readers:
                await r.stop()
            if self.ledger.failures:
                problems.append(f"{self.ledger.failures} posts were never acknowledged")
            if not self.ledger.total():
                problems.append("no message was acknowledged at all")
            visitors = {v.room: (v.params, [self.readers[i]]) for i, v in enumerate(self.visitors)}
            problems += await unread_problems(self.api, self.shop, self.agent_http, self.ledger,
                                              self.agent_reader, visitors)
            return problems
        finally:
            await self.close()

    async def close(self) -> None:
        for w in self.writers:
            w._stop.set()
        for r in self.readers:
            if not r._stop:
                await r.stop()
        await self.http.close()
        await self.agent_http.close()


async def wait_until(pred, timeout: float = 15.0, what: str = "condition", every: float = 0.05) -> float:
    """Poll until pred() is true; -> seconds it took.  AssertionError after `timeout`."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)
    return time.monotonic() - t0


RECORD = ROOT / "tests" / "artifacts" / "reliability.jsonl"


def record(case: str, **figures) -> None:
    """One line of the reliability table (tests/artifacts/reliability.jsonl, and stdout with -s)."""
    import json
    line = json.dumps({"case": case, **figures}, default=str)
    print(f"\nRELIABILITY {line}")
    with contextlib.suppress(OSError):
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        with open(RECORD, "a") as fh:
            fh.write(line + "\n")
