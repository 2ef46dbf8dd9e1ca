"""What the comet benchmarks share: processes, measurements, mass connections.

Not a benchmark itself.  Everything runs on loopback ports chosen at run
time; every process started here is stopped by `Processes.stop_all()`.
The servers measured are separate processes, so the load generator's own
CPU and memory never count in their figures (on a small box it competes
with them for CPU, which slows it down but does not bias the per-message
CPU figures, which are read from the server's own counters).
"""
from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from kefu import tlv  # noqa: E402
from kefu.client import Client, connect  # noqa: E402
from kefu.protocol import Op  # noqa: E402
from kefu.tokens import Signer  # noqa: E402

SECRET = "bench-secret-" + "x" * 24
PAGE = os.sysconf("SC_PAGE_SIZE")


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    except (ValueError, OSError):
        return soft


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def cpu_seconds(pid: int) -> float:
    """CPU time of a process, all threads, in nanosecond resolution (schedstat).

    /proc/<pid>/stat counts clock ticks (10 ms), too coarse for short windows.
    """
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1e9


class Processes:
    """Subprocesses started by a bench, stopped in reverse order at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []

    def redis(self) -> str:
        port = free_port()
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--maxclients", "1000",
                                 "--dir", str(self.workdir)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        url = f"redis://127.0.0.1:{port}/0"
        import redis
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                client.close()
                return url
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start")
                time.sleep(0.02)

    def comet(self, redis_url: str, **settings) -> tuple[subprocess.Popen, int, int]:
        """`python -m kefu comet` with the given KEFU_* settings; -> (proc, ws port, tcp port)."""
        ws_port, tcp_port = free_port(), free_port()
        env = {**os.environ, "KEFU_SECRET": SECRET, "KEFU_LOG_LEVEL": "info",
               **{f"KEFU_{k.upper()}": str(v) for k, v in settings.items()}}
        proc = subprocess.Popen(
            [sys.executable, "-m", "kefu", "comet", "--redis-url", redis_url, "--comet-port", str(ws_port),
             "--tcp-port", str(tcp_port), "--data-dir", str(self.workdir)],
            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        self._wait_line(proc, "listening")
        return proc, ws_port, tcp_port

    def python(self, *args: str) -> subprocess.Popen:
        """A helper server (bench/_baselines.py ...) that prints 'listening' when ready."""
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        self._wait_line(proc, "listening")
        return proc

    @staticmethod
    def _wait_line(proc: subprocess.Popen, word: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                raise SystemExit(f"server exited with {proc.wait()} before {word!r}")
            if word in line:
                # keep draining stderr so a chatty server never blocks on a full pipe;
                # pass its errors on
                threading.Thread(target=_relay_errors, args=(proc,), daemon=True).start()
                return
        raise SystemExit(f"server did not say {word!r} within {timeout}s")

    def stop(self, proc: subprocess.Popen, timeout: float = 60) -> float:
        """SIGTERM, wait; -> seconds it took."""
        t0 = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)
        return time.monotonic() - t0

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs.clear()


def _relay_errors(proc: subprocess.Popen) -> None:
    for line in proc.stderr:
        if " ERROR " in line or "Traceback" in line or " CRITICAL " in line:
            sys.stderr.write(line)


def keys_for(prefix: str, rooms: list[str]) -> list[str]:
    signer = Signer(SECRET.encode())
    return [signer.mint_key(f"{prefix}{i}", room, shop=None, role="visitor", ttl=3600)
            for i, room in enumerate(rooms)]


async def open_clients(url: str, bodies: list[bytes], *, lean: bool = True, parallel: int = 200,
                       want_op: int | None = Op.AUTH_REPLY) -> list[Client]:
    """Connect and send each auth body (op 7, seq 1); wait for a reply frame to each.

    want_op: the op of the awaited reply (op 8 from kefu; a baseline echo answers op 7).
    """
    gate = asyncio.Semaphore(parallel)
    clients: list[Client | None] = [None] * len(bodies)

    async def one(i: int, body: bytes) -> None:
        async with gate:
            for attempt in range(5):
                try:
                    # spread over source addresses: each has its own ephemeral ports
                    c = await connect(url, lean=lean, timeout=30, local_addr=(f"127.0.{i // 250 % 250 + 1}.{i % 250 + 2}", 0))
                    break
                except OSError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
            c.send_frame(Op.AUTH, 1, body)
            frame = await c.recv(timeout=60)
            if want_op is not None and frame.op != want_op:
                raise SystemExit(f"connection {i}: expected op {want_op}, got {frame.op} {frame.body[:80]!r}")
            clients[i] = c

    await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
    return clients          # type: ignore[return-value]


_RESET = struct.pack("ii", 1, 0)       # SO_LINGER on, 0 s: close with RST, no TIME_WAIT


async def close_clients(clients: list[Client]) -> None:
    """Drop every client at once with a reset: thousands of client-side
    TIME_WAIT sockets would hold ephemeral ports for a minute."""
    for c in clients:
        t = getattr(c, "transport", None) or getattr(getattr(c, "proto", None), "transport", None)
        if t is not None:
            sock = t.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                except OSError:
                    pass
            t.abort()
    await asyncio.sleep(0.2)


def auth_bodies(prefix: str, rooms: list[str]) -> list[bytes]:
    return [orjson.dumps({"key": k}) for k in keys_for(prefix, rooms)]


def chat_frame(n: int, size: int = 200) -> bytes:
    """An op-5 frame like the store publishes (JSON of about `size` bytes)."""
    doc = {"id": n, "room_id": "bench", "mid": "bench", "shop_id": "", "type": "text",
           "msg": "x" * max(0, size - 110), "dateline": int(time.time())}
    return tlv.encode(Op.MESSAGE, 0, orjson.dumps(doc))


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)
