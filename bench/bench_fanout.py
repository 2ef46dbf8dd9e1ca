"""Fan-out: server CPU per delivered message while connections grow 10x, room size fixed.

One room of M members (default 100) is published to at a steady rate R
while the worker holds N connections in total; the other N - M sit idle,
each in a room of its own (visitors: one conversation each).  N grows
from N1 to N2 = 10 x N1 (default 1,000 -> 10,000) in the same process.
For each size it reads the server's CPU time (/proc, user + system)
over an idle window and over the publishing window of the same length,
and reports

    CPU per delivered message = (publishing CPU - idle CPU) / (K x M)

so the fixed costs of holding N connections (the once-a-second timeout
sweep) are measured apart, as "idle CPU".  Flat per-message CPU from N1
to N2 is the goal.  Messages are whole op-5 frames published to the
room's Redis channel, as the store publishes them, one every 1/R seconds
(no two in one event-loop tick, so no batching flatters the figure);
every member counts what it receives, and the run fails unless each got
all K.

Baselines, on the same Redis reader (kefu.bus), the same clients, the
same schedule, in the same run (bench/_baselines.py):
  floor  a minimal push server: room -> connections index, one write per member
  scan   the seed's design: every message looks at every connection (grows with N)

    .venv/bin/python bench/bench_fanout.py [--members 100] [--sizes 1000,10000]
                                           [--messages 1000] [--rate 250]
    .venv/bin/python bench/bench_fanout.py --smoke           # tiny sizes, seconds
"""
from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _comet_harness import (  # noqa: E402
    Processes, auth_bodies, chat_frame, close_clients, cpu_seconds, free_port, open_clients, raise_nofile,
)

import orjson  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402

from kefu.keys import Keys  # noqa: E402
from kefu.protocol import Op  # noqa: E402

ROOM = "8000_fanout"


def bodies(prefix: str, rooms: list[str]) -> list[bytes]:
    """Auth bodies kefu verifies (key) and the baselines read (room_id)."""
    return [orjson.dumps({**orjson.loads(b), "room_id": room}) for b, room in zip(auth_bodies(prefix, rooms), rooms)]


async def publish(r: aioredis.Redis, n: int, rate: float) -> None:
    channel = Keys("kefu:").room_channel(ROOM)
    frames = [chat_frame(i) for i in range(n)]
    start = time.monotonic()
    for i, frame in enumerate(frames):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await r.publish(channel, frame)


async def one_server(name: str, url: str, pid: int, args, r: aioredis.Redis) -> list[dict]:
    received = [0]

    def count(frame) -> None:
        if frame.op == Op.MESSAGE:
            received[0] += 1

    members = await open_clients(url, bodies(f"m{name}", [ROOM] * args.members))
    for c in members:
        c.on_live = count
    idle: list = []
    rows = []
    for n in args.sizes:
        more = n - args.members - len(idle)
        idle += await open_clients(url, bodies(f"i{name}{len(idle)}-",
                                                [f"8000_idle{len(idle) + i}" for i in range(more)]))
        await asyncio.sleep(args.settle)
        window = args.messages / args.rate
        c0 = cpu_seconds(pid)
        await asyncio.sleep(window)
        idle_cpu = cpu_seconds(pid) - c0
        received[0] = 0
        want = args.messages * args.members
        c0, t0 = cpu_seconds(pid), time.monotonic()
        await publish(r, args.messages, args.rate)
        deadline = time.monotonic() + 60
        while received[0] < want and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        elapsed = time.monotonic() - t0
        busy_cpu = cpu_seconds(pid) - c0
        if received[0] != want:
            raise SystemExit(f"{name} at {n}: delivered {received[0]} of {want}")
        net = busy_cpu - idle_cpu * (elapsed / window)
        rows.append({"server": name, "n": n, "idle_pct": 100 * idle_cpu / window,
                     "busy_cpu": busy_cpu, "elapsed": elapsed, "delivered": want,
                     "us_per_delivery": 1e6 * net / want, "us_per_message": 1e6 * net / args.messages})
    await close_clients(members + idle)
    return rows


async def run(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="kefu-bench-fanout-") as tmp:
        procs = Processes(Path(tmp))
        try:
            redis_url = procs.redis()
            r = aioredis.Redis.from_url(redis_url)
            servers = ["kefu", "floor", "scan"] if not args.only else args.only.split(",")
            for name in servers:
                if name == "kefu":
                    proc, ws_port, tcp_port = procs.comet(
                        redis_url, max_connections=max(args.sizes) + 100, heartbeat=1800,
                        heartbeat_timeout=3600, handshake_timeout=120, online_flush_interval=3600)
                    url = f"tcp://127.0.0.1:{tcp_port}" if args.transport == "tcp" else f"ws://127.0.0.1:{ws_port}/sub"
                else:
                    if args.transport != "tcp":
                        continue
                    port = free_port()
                    proc = procs.python("bench/_baselines.py", "fanout", str(port), redis_url,
                                        "direct" if name == "floor" else "scan")
                    url = f"tcp://127.0.0.1:{port}"
                rows += await one_server(name, url, proc.pid, args, r)
                procs.stop(proc)
            await r.aclose()
        finally:
            procs.stop_all()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=100, help="connections in the published room")
    p.add_argument("--sizes", default="1000,10000", help="total connections, comma-separated")
    p.add_argument("--messages", type=int, default=1000, help="messages published per size")
    p.add_argument("--rate", type=float, default=250.0, help="messages per second")
    p.add_argument("--transport", choices=("tcp", "ws"), default="tcp")
    p.add_argument("--only", help="comma-separated subset of: kefu, floor, scan")
    p.add_argument("--settle", type=float, default=2.0, help="seconds after connecting before measuring")
    p.add_argument("--timeout", type=float, default=1200, help="give up after this many seconds")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the bench works")
    args = p.parse_args()
    args.sizes = [int(x) for x in args.sizes.split(",")]
    if args.smoke:
        args.members, args.sizes, args.messages, args.rate, args.settle = 10, [20, 200], 50, 200.0, 0.3
    limit = raise_nofile()
    if max(args.sizes) + 64 > limit:
        raise SystemExit(f"file descriptor limit {limit} is too low for {max(args.sizes)} connections")
    rows = asyncio.run(asyncio.wait_for(run(args), args.timeout))
    print(f"# fan-out, {platform.python_implementation()} {platform.python_version()}, {platform.machine()}: "
          f"room of {args.members}, {args.messages} messages at {args.rate:g}/s, transport {args.transport}")
    print(f"{'server':7} {'connections':>11} {'idle CPU':>9} {'CPU/delivery':>13} {'CPU/message':>12} {'delivered':>10}")
    for r in rows:
        print(f"{r['server']:7} {r['n']:>11,} {r['idle_pct']:>8.2f}% {r['us_per_delivery']:>11.2f}µs "
              f"{r['us_per_message']:>10.1f}µs {r['delivered']:>10,}")
    for name in dict.fromkeys(r["server"] for r in rows):
        mine = [r for r in rows if r["server"] == name]
        if len(mine) >= 2 and mine[0]["us_per_delivery"] > 0:
            print(f"{name}: CPU per delivery x{mine[-1]['us_per_delivery'] / mine[0]['us_per_delivery']:.2f} "
                  f"while connections grew x{mine[-1]['n'] / mine[0]['n']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
