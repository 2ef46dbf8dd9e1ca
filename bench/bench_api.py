"""Throughput of one API worker on POST /open/push, next to GET /healthz (not a test).

Starts its own redis-server and one `python -m kefu api` process on free
loopback ports, creates a shop and V visitors, then for each route runs C
concurrent aiohttp clients for T seconds and prints requests per second
and latency percentiles.  /healthz (one Redis PING) is the baseline: the
same HTTP stack and the same client, so the ratio shows what a message
costs beyond a plain request.  Both are measured in the same run.

It also counts the Redis round trips one POST costs, by driving the same
app in-process with a counting Redis client: sequentially (no sharing),
then concurrently (the post pipeline is shared by concurrent posts).

    .venv/bin/python bench/bench_api.py [--seconds 10] [--concurrency 64] [--visitors 500]
    .venv/bin/python bench/bench_api.py --smoke        # tiny sizes, a few seconds

Rate limits stay ON (their Redis scripts are part of the cost) but with
rates so high they never refuse: every request of the bench comes from
127.0.0.1.  The load generator runs on the same machine, so on a small
box it competes with the worker and Redis for CPU; the figures are a
floor, and the /healthz baseline suffers the same handicap.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

SHOP, PASSWORD = "8000", "bench-password-8000"
UNLIMITED = {"KEFU_RATE_MESSAGES_PER_SENDER": "1000000", "KEFU_RATE_MESSAGES_PER_IP": "1000000",
             "KEFU_RATE_VISITORS_PER_IP": "1000000", "KEFU_RATE_UPLOADS_PER_IP": "1000000"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, f"redis://127.0.0.1:{port}/0"


async def wait_http(url: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"kefu api exited with {proc.returncode}")
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit("kefu api did not become healthy")


async def make_shop(redis_url: str, prefix: str) -> None:
    from kefu.config import Settings
    from kefu.store import Store
    for _ in range(200):
        try:
            store = await Store.connect(Settings(redis_url=redis_url, prefix=prefix))
            break
        except Exception:  # noqa: BLE001 - redis-server still starting
            await asyncio.sleep(0.05)
    else:
        raise SystemExit("redis-server did not start")
    await store.create_shop(SHOP, name="Bench shop", password=PASSWORD)
    await store.close()


async def make_visitors(base: str, n: int, concurrency: int) -> list[dict]:
    out: list[dict] = []
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        async def one():
            for _ in range(50):
                async with sem, s.get(base + "/open/im", params={"shop_id": SHOP, "format": "json"}) as r:
                    if r.status == 200:
                        out.append(await r.json())
                        return
                    if r.status != 429:      # 429: more than a burst within one millisecond
                        raise SystemExit(f"/open/im answered {r.status}: {await r.text()}")
                await asyncio.sleep(0.01)
            raise SystemExit("/open/im kept answering 429")
        await asyncio.gather(*(one() for _ in range(n)))
    return out


async def drive(base: str, seconds: float, concurrency: int, request) -> dict:
    """C loops issuing `request(session, i)` for `seconds`; -> figures."""
    lat: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.perf_counter() + seconds
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(base_url=base, connector=conn,
                                     cookie_jar=aiohttp.DummyCookieJar()) as s:
        async def loop(worker: int):
            i = worker
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                async with request(s, i) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1
                lat.append(time.perf_counter() - t0)
                i += concurrency
        t0 = time.perf_counter()
        await asyncio.gather(*(loop(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - t0
    lat.sort()
    pct = (lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000) if lat else (lambda p: 0.0)
    return {"n": len(lat), "rps": len(lat) / elapsed, "p50": pct(0.50), "p99": pct(0.99),
            "mean": statistics.fmean(lat) * 1000 if lat else 0.0, "statuses": statuses}


def healthz(s, i):
    return s.get("/healthz")


def pusher(visitors: list[dict]):
    def push(s, i):
        v = visitors[i % len(visitors)]
        return s.post("/open/push", params={"mid": v["mid"], "shop_id": SHOP},
                      data={"type": "text", "msg": f"bench message {i}", "room_id": v["room_id"],
                            "key": v["key"], "client_msg_id": f"b{i}"})
    return push


async def round_trips(redis_url: str, data_dir: str, prefix: str, posts: int) -> dict:
    """Redis round trips per POST /open/push, counted in-process on the real app."""
    import redis.asyncio.client as rc
    from aiohttp import web

    from kefu.api.app import make_app
    from kefu.api.worker import listen_socket
    from kefu.config import Settings
    from kefu.store import Store
    counts = {"commands": 0, "pipelines": 0}
    orig_exec, orig_pipe = rc.Redis.execute_command, rc.Pipeline.execute

    async def exec_counted(self, *a, **kw):
        counts["commands"] += 1
        return await orig_exec(self, *a, **kw)

    async def pipe_counted(self, *a, **kw):
        counts["pipelines"] += 1
        return await orig_pipe(self, *a, **kw)
    settings = Settings(redis_url=redis_url, data_dir=data_dir, prefix=prefix, **{
        k[5:].lower(): float(v) for k, v in UNLIMITED.items()})
    store = await Store.connect(settings, worker=6)
    sock = listen_socket("127.0.0.1", 0)
    runner = web.AppRunner(make_app(settings.replace(api_port=sock.getsockname()[1]), store))
    await runner.setup()
    await web.SockSite(runner, sock).start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    out = {}
    try:
        visitors = await make_visitors(base, 8, 8)
        push = pusher(visitors)
        async with aiohttp.ClientSession(base_url=base) as s:
            rc.Redis.execute_command, rc.Pipeline.execute = exec_counted, pipe_counted
            for i in range(posts):
                async with push(s, 10_000 + i) as r:
                    assert r.status == 200, await r.text()
            out["sequential"] = (counts["commands"] + counts["pipelines"]) / posts
            counts.update(commands=0, pipelines=0)
            before = store.batches
            async with aiohttp.ClientSession(base_url=base) as s:
                async def one(i):
                    async with push(s, 20_000 + i) as r:
                        assert r.status == 200
                await asyncio.gather(*(one(i) for i in range(posts)))
            out["concurrent"] = (counts["commands"] + counts["pipelines"]) / posts
            out["post_pipelines"] = (store.batches - before) / posts
    finally:
        rc.Redis.execute_command, rc.Pipeline.execute = orig_exec, orig_pipe
        await runner.cleanup()
        sock.close()
        await store.close()
    return out


def line(name: str, f: dict) -> str:
    bad = {k: v for k, v in f["statuses"].items() if k != 200}
    return (f"{name:<18} {f['rps']:>9.0f} req/s   p50 {f['p50']:6.2f} ms   p99 {f['p99']:6.2f} ms   "
            f"n={f['n']}{'   non-200: ' + str(bad) if bad else ''}")


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each measurement")
    ap.add_argument("--concurrency", type=int, default=64, help="concurrent client loops")
    ap.add_argument("--visitors", type=int, default=500, help="distinct senders (rooms)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the bench itself works")
    args = ap.parse_args()
    if args.smoke:
        args.seconds, args.concurrency, args.visitors = 1.0, 8, 16
    from kefu import tlv
    work = Path(tempfile.mkdtemp(prefix="kefu-bench-"))
    redis_proc, redis_url = start_redis(work)
    api_proc = None
    try:
        prefix = "bench:"
        await make_shop(redis_url, prefix)
        port = free_port()
        env = {**os.environ, **UNLIMITED, "KEFU_PREFIX": prefix, "KEFU_LOG_LEVEL": "warning"}
        api_proc = subprocess.Popen([sys.executable, "-m", "kefu", "api", "--api-port", str(port),
                                     "--redis-url", redis_url, "--data-dir", str(work / "var")],
                                    cwd=ROOT, env=env)
        base = f"http://127.0.0.1:{port}"
        await wait_http(base + "/healthz", api_proc)
        visitors = await make_visitors(base, args.visitors, 32)
        print(f"kefu API bench: python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
              f"codec {tlv.IMPLEMENTATION}, {os.cpu_count()} CPU(s); one API worker, "
              f"{args.concurrency} concurrent clients, {args.seconds:.0f} s per route, "
              f"{len(visitors)} senders")
        await drive(base, min(1.0, args.seconds), args.concurrency, healthz)          # warm-up
        await drive(base, min(1.0, args.seconds), args.concurrency, pusher(visitors))
        h = await drive(base, args.seconds, args.concurrency, healthz)
        p = await drive(base, args.seconds, args.concurrency, pusher(visitors))
        print(line("GET /healthz", h))
        print(line("POST /open/push", p))
        print(f"/open/push throughput = {p['rps'] / h['rps']:.2f} x /healthz")
        rt = await round_trips(redis_url, str(work / "var"), prefix, 20 if args.smoke else 200)
        print(f"Redis round trips per POST: {rt['sequential']:.2f} one at a time; "
              f"{rt['concurrent']:.2f} with {20 if args.smoke else 200} concurrent "
              f"(store pipelines per post: {rt['post_pipelines']:.2f})")
        return 0 if p["statuses"].get(200) and h["statuses"].get(200) else 1
    finally:
        if api_proc is not None and api_proc.poll() is None:
            api_proc.send_signal(signal.SIGTERM)
            api_proc.wait(15)
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
