"""What the system benchmarks share (bench_chat, bench_connections, bench_pushall).

Not a benchmark itself.  It starts a real `python -m kefu run` (its
embedded Redis unless a --redis-url is given) on free loopback ports,
tells which pid plays which role (API worker, comet workers, redis-server)
by the listening sockets each holds, reads their CPU and RSS from /proc,
and runs load generators as several worker *processes*, each with its own
asyncio loop, driven over a pipe by the (synchronous) bench script:

    with KefuRun(workdir, workers=2) as k:          # stopped on exit, whatever happens
        cpu0 = k.cpu()                              # {"api": s, "comet": s, "redis": s}
        pool = Pool(n, MyAgent, args)               # n processes, MyAgent(*args) in each
        results = pool.call("method", [per-worker args...])   # parallel RPC, returns a list
        pool.close()

Every process started here dies with the bench: kefu run gets SIGTERM,
then SIGKILL of its whole process group; pool workers get SIGKILL.
Loopback only.  One process here cannot hold more than RLIMIT_NOFILE's
hard limit of descriptors (20,000 on the reference machine), so
connection-heavy benches split connections over processes and over
source addresses 127.0.0.x (ephemeral ports are per source address).
"""
from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SECRET = "bench-secret-" + "k" * 32
PUSH_SECRET = "bench-push-secret-" + "p" * 24
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
UNLIMITED = {                         # the API's token buckets never refuse a bench
    "KEFU_RATE_MESSAGES_PER_SENDER": "100000000", "KEFU_RATE_MESSAGES_PER_IP": "100000000",
    "KEFU_RATE_VISITORS_PER_IP": "100000000", "KEFU_RATE_UPLOADS_PER_IP": "100000000",
    "KEFU_RATE_UPLOADS_PER_SENDER": "100000000",
}


# -- small helpers -------------------------------------------------------------
def exit_on_sigterm() -> None:
    """SIGTERM/SIGHUP become SystemExit, so a killed bench still stops what it started."""
    def stop(signum, _frame):
        raise SystemExit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; -> the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def free_port() -> int:
    """A free loopback port below the ephemeral range (a bench with 100,000 client
    sockets would otherwise take it as a source port before the server binds it)."""
    import random
    low = 20_000
    with contextlib.suppress(OSError, ValueError):
        low = min(low, int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0]))
    for _ in range(200):
        port = random.randrange(10_000, max(10_001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * PAGE
    except OSError:
        return 0


def machine() -> str:
    mem = 0
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    model = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"{os.cpu_count()} CPU ({model or 'unknown'}), {mem / 2**30:.1f} GiB RAM, "
            f"Linux {os.uname().release}, Python {sys.version.split()[0]}")


def pct(values, p: float) -> float:
    """The p-quantile (0..1) of an already sorted sequence; 0 if empty."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(p * len(values)))]


def _listening_inodes(port: int) -> set[str]:
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in open(table).readlines()[1:]:
                f = line.split()
                if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    out.add(f[9])
    return out


def _holds(pid: int, inodes: set[str]) -> bool:
    wanted = {f"socket:[{i}]" for i in inodes}
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return True
    return False


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# -- the system under test ----------------------------------------------------------
class KefuRun:
    """One `python -m kefu run` on free loopback ports, stopped (and reaped) on exit."""

    def __init__(self, workdir: Path | None = None, *, workers: int = 2, redis_url: str = "",
                 env: dict | None = None, host: str = "127.0.0.1") -> None:
        self.own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kefu-bench-"))
        self.data_dir = self.workdir / "var"
        self.workers, self.redis_url_arg, self.host = workers, redis_url, host
        self.api_port, self.comet_port, self.tcp_port = free_port(), free_port(), free_port()
        self.env = {**os.environ, **UNLIMITED, "KEFU_SECRET": SECRET, "KEFU_PUSH_SECRET": PUSH_SECRET,
                    "KEFU_LOG_LEVEL": "warning", "KEFU_SWEEP_INTERVAL": "0", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.roles: dict[str, list[int]] = {}
        self.log_path = self.workdir / "kefu-run.log"

    # urls
    @property
    def api(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def ws(self) -> str:
        return f"ws://{self.host}:{self.comet_port}/sub"

    @property
    def tcp(self) -> str:
        return f"tcp://{self.host}:{self.tcp_port}"

    @property
    def redis_url(self) -> str:
        if self.redis_url_arg:
            return self.redis_url_arg
        return (self.data_dir / "redis.url").read_text().strip()

    def __enter__(self) -> "KefuRun":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> "KefuRun":
        exit_on_sigterm()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "kefu", "run", "--data-dir", str(self.data_dir), "--host", self.host,
               "--api-port", str(self.api_port), "--comet-port", str(self.comet_port),
               "--tcp-port", str(self.tcp_port), "--workers", str(self.workers)]
        if self.redis_url_arg:
            cmd += ["--redis-url", self.redis_url_arg]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True, preexec_fn=raise_nofile)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"kefu run exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            if "kefu is running" in self.log():
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise SystemExit(f"kefu run did not start within {timeout}s:\n{self.log()[-3000:]}")
        self._find_roles()
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _find_roles(self) -> None:
        kids = children(self.proc.pid)
        api_inodes = _listening_inodes(self.api_port)
        comet_inodes = _listening_inodes(self.comet_port)
        roles: dict[str, list[int]] = {"api": [], "comet": [], "redis": []}
        for pid in kids:
            if _holds(pid, api_inodes):
                roles["api"].append(pid)
            elif _holds(pid, comet_inodes):
                roles["comet"].append(pid)
        rpid = self.data_dir / "redis.pid"
        if rpid.exists():
            with contextlib.suppress(ValueError):
                roles["redis"].append(int(rpid.read_text().strip()))
        self.roles = roles

    def pids(self, role: str) -> list[int]:
        return self.roles.get(role, [])

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far per role (api, comet = all comet workers, redis)."""
        return {role: sum(cpu_seconds(p) for p in pids) for role, pids in self.roles.items()}

    def rss(self) -> dict[str, int]:
        return {role: sum(rss_bytes(p) for p in pids) for role, pids in self.roles.items()}

    def comet_rss(self) -> list[int]:
        return [rss_bytes(p) for p in self.pids("comet")]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                self.proc.wait(5)
        for pid in self.roles.get("redis", []):       # the embedded redis runs in its own session
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        notes = [line for line in self.log().splitlines()
                 if (" WARNING " in line or " ERROR " in line) and "file descriptor limit" not in line]
        if notes:
            print(f"kefu run logged {len(notes)} warning(s)/error(s); the last ones:", file=sys.stderr)
            for line in notes[-8:]:
                print("  " + line[:300], file=sys.stderr)
        if self.own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def make_shops(redis_url: str, shops: list[str], prefix: str = "kefu:") -> None:
    """Create many shops at once, on a single Redis or a cluster (one password hash
    shared: scrypt per shop would take minutes)."""
    import redis

    from kefu.keys import Keys
    from kefu.store.base import cluster_nodes, is_cluster_url
    from kefu.tokens import hash_password
    keys, pw, now = Keys(prefix), hash_password("bench-password"), int(time.time())
    if is_cluster_url(redis_url):
        nodes, _ = cluster_nodes(redis_url)
        r = redis.RedisCluster(startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in nodes])
    else:
        r = redis.Redis.from_url(redis_url)
    try:
        for i in range(0, len(shops), 2000):
            pipe = r.pipeline(transaction=False)
            for shop in shops[i:i + 2000]:
                pipe.hset(keys.shop(shop), mapping={"name": f"shop {shop}", "face": "", "pw": pw,
                                                     "updated": now, "created": now})
                pipe.sadd(keys.shops(), shop)
            pipe.execute()
    finally:
        r.close()


def signer():
    from kefu.tokens import Signer
    return Signer(SECRET.encode())


# -- load-generator processes ------------------------------------------------------
def _worker_main(conn, index: int, factory, args) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    raise_nofile()
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG: die with the bench
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(conn, factory, index, args))
    finally:
        os._exit(0)


async def _serve(conn, factory, index, args) -> None:
    """Keep the loop running between commands (connections stay served); one command at a time."""
    loop = asyncio.get_running_loop()
    agent = await _build(factory, index, args)
    inbox: asyncio.Queue = asyncio.Queue()

    def readable() -> None:
        try:
            while conn.poll():
                inbox.put_nowait(conn.recv())
        except (EOFError, OSError):
            inbox.put_nowait(None)
    loop.add_reader(conn.fileno(), readable)
    while True:
        msg = await inbox.get()
        if msg is None:
            break
        method, margs = msg
        try:
            conn.send(("ok", await _call(agent, method, margs)))
        except BaseException as exc:  # noqa: BLE001 - report, keep serving
            conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    loop.remove_reader(conn.fileno())
    with contextlib.suppress(Exception):
        await _call(agent, "close", ())


async def _build(factory, index, args):
    agent = factory(index, *args)
    if hasattr(agent, "setup"):
        await agent.setup()
    return agent


async def _call(agent, method, margs):
    fn = getattr(agent, method, None)
    if fn is None:
        return None
    out = fn(*margs)
    if asyncio.iscoroutine(out):
        out = await out
    return out


class Pool:
    """n load-generator processes, each running `factory(index, *args)` in its own loop.

    call(method, per_worker_args) runs agent.method(*args_i) in every worker at
    once and returns the results in worker order; a worker's exception is
    re-raised here.  cpu() is the workers' CPU seconds so far.
    """

    def __init__(self, n: int, factory, args: tuple = ()) -> None:
        ctx = mp.get_context("fork")
        self.conns, self.procs = [], []
        for i in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(child, i, factory, args), daemon=True)
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, method: str, per_worker: list[tuple] | None = None, timeout: float = 900.0) -> list:
        per_worker = per_worker if per_worker is not None else [()] * len(self.conns)
        for conn, margs in zip(self.conns, per_worker):
            conn.send((method, tuple(margs)))
        out = []
        deadline = time.monotonic() + timeout
        for i, conn in enumerate(self.conns):
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise SystemExit(f"load worker {i} did not answer {method!r} within {timeout:.0f}s")
            status, value = conn.recv()
            if status != "ok":
                raise SystemExit(f"load worker {i} failed in {method!r}: {value}")
            out.append(value)
        return out

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs if p.pid)

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.send(None)
        deadline = time.monotonic() + 5
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(2)
        self.conns, self.procs = [], []


def split(items: list, n: int) -> list[list]:
    """items dealt round-robin into n lists."""
    return [items[i::n] for i in range(n)]


def source_addresses(n: int) -> list[str]:
    """127.0.0.1 .. 127.0.0.n: loopback source addresses (each has its own ephemeral ports)."""
    return [f"127.0.0.{i}" for i in range(1, n + 1)]


# -- lean client connections with a chosen source address -------------------------------
IP_BIND_ADDRESS_NO_PORT = 24      # Linux: pick the source port at connect(), per destination


async def _socket_from(local_addr: str | None, host: str, port: int, timeout: float) -> socket.socket | None:
    """A connected non-blocking socket from `local_addr` (None: let connect() choose)."""
    if not local_addr:
        return None
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((local_addr, 0))
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        return sock
    except BaseException:
        sock.close()
        raise


async def lean_connect(url: str, local_addr: str | None = None, timeout: float = 30.0):
    """kefu.client's bare-asyncio clients (TCP, or WebSocket without aiohttp), from source
    address `local_addr` when given (20,000+ connections need several loopback addresses;
    the source port is chosen per destination, so ports run out only per 4-tuple)."""
    from urllib.parse import urlsplit

    from kefu import client as kc
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    if local_addr == "127.0.0.1":
        local_addr = None
    sock = await _socket_from(local_addr, parts.hostname, parts.port, timeout)
    where = {"sock": sock} if sock is not None else {"host": parts.hostname, "port": parts.port}
    if parts.scheme == "tcp":
        c = kc.TcpClient()
        transport, _ = await asyncio.wait_for(loop.create_connection(
            lambda: kc._TcpProtocol(c, 1 << 20), **where), timeout)
        c.transport = transport
        return c
    c = kc.LeanWsClient()
    proto = kc._LeanWsProtocol(c, 1 << 20, parts.netloc, parts.path or "/")
    await asyncio.wait_for(loop.create_connection(lambda: proto, **where), timeout)
    c.proto = proto
    await asyncio.wait_for(proto.upgraded, timeout)
    return c


def abort(c) -> None:
    """Drop a lean client's connection at once (no close handshake)."""
    t = getattr(c, "transport", None) or getattr(getattr(c, "proto", None), "transport", None)
    if t is not None:
        t.abort()
