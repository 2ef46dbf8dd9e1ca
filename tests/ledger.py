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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_pids(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


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
    """What the API acknowledged, per room, in id order."""

    rooms: dict[str, list[int]] = field(default_factory=dict)
    failures: int = 0            # posts answered with an error (never acknowledged)

    def add(self, room: str, msg_id: int) -> None:
        self.rooms.setdefault(room, []).append(msg_id)

    def expected(self, room: str) -> list[int]:
        return sorted(self.rooms.get(room, []))


class Reader:
    """One recipient: connects, authenticates, resyncs, reads live, reconnects on loss."""

    def __init__(self, url: str, auth: dict, rooms: list[str], *, agent: bool = False):
        self.url, self.auth, self.rooms, self.agent = url, auth, rooms, agent
        self.seen: dict[str, list[int]] = {r: [] for r in rooms}
        self.violations: list[str] = []
        self.reconnects = 0
        self.servers: list[str] = []
        self._task: asyncio.Task | None = None
        self._stop = False
        self.client: kclient.Client | None = None

    def start(self) -> "Reader":
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop = True
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def last(self, room: str) -> int:
        ids = self.seen.get(room)
        return ids[-1] if ids else 0

    def _accept(self, msg: dict) -> None:
        room, msg_id = msg.get("room_id"), msg.get("id")
        if room not in self.seen or not isinstance(msg_id, int):
            if room is not None and not self.agent:
                self.violations.append(f"message of foreign room {room!r}")
            return
        if msg_id > self.last(room):
            self.seen[room].append(msg_id)

    async def _resync(self, c: kclient.Client) -> None:
        for room in self.rooms:
            kw = {"room_id": room} if self.agent else {}
            for msg in await c.sync_all(after=self.last(room), **kw):
                if msg.get("type") != "gap":
                    self._accept(msg)

    async def _session(self) -> None:
        c = self.client = await kclient.connect(self.url, timeout=5)
        try:
            reply = await c.auth(self.auth["key"], mid=self.auth["mid"], room_id=self.auth["room_id"],
                                 accepts=[5, 9], timeout=5)
            self.servers.append(str(reply.get("server", "")))
            await self._resync(c)
            while not self._stop:
                frame = await c.recv(timeout=3600)
                if frame.op == Op.MESSAGE:
                    self._accept(frame.json())
                elif frame.op == Op.DISCONNECT:
                    return
        finally:
            with contextlib.suppress(Exception):
                await c.close()

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
    """Posts messages through /open/push at a steady rate; acknowledged ids go to the ledger."""

    def __init__(self, http: aiohttp.ClientSession, api: str, senders: list[dict], ledger: Ledger,
                 rate: float = 50.0):
        self.http, self.api, self.senders, self.ledger, self.rate = http, api, senders, ledger, rate
        self.sent = 0
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
        for _attempt in range(20):           # retry like the page: same client_msg_id, never a duplicate
            try:
                async with self.http.post(f"{self.api}/open/push",
                                          params={"mid": sender["mid"], "shop_id": sender["shop_id"]},
                                          data=form, timeout=aiohttp.ClientTimeout(total=5)) as r:
                    if r.status == 200:
                        body = await r.json()
                        self.ledger.add(sender["room_id"], int(body["id"]))
                        return int(body["id"])
                    if r.status == 429:
                        await asyncio.sleep(float(r.headers.get("Retry-After", "0.2")))
                        continue
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.1)
        self.ledger.failures += 1
        return None

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
