"""Memory per idle authenticated connection of one comet worker, next to baselines.

For each transport (goim TCP, WebSocket /sub) it starts a fresh
`python -m kefu comet` process, opens W warm-up connections, reads the
worker's RSS, opens N more (each authenticated with its own signed key in
its own room, as visitors are: one Redis subscription each), waits for
them to settle and reads RSS again:  per connection = RSS delta / N.

The worker's online marks are flushed every 2 s here (default 10 s) and
each reading waits 3 s, so it includes a flush of all N marks: that
pipeline's transient memory is part of the steady state, as in production.

Baselines, measured the same way in the same run with the same client:
a bare asyncio TCP echo server (the floor of one asyncio connection:
both kefu transports are asyncio protocols) and an aiohttp WebSocket
echo server at /sub (what one connection would cost with aiohttp's
WebSocket handler instead of kefu.comet.ws_lean).

    .venv/bin/python bench/bench_conn_memory.py [--connections 10000]
    .venv/bin/python bench/bench_conn_memory.py --smoke       # 200 connections, seconds

It raises its own file-descriptor limit as far as the hard limit allows;
N + W must stay below it (the client holds one socket per connection).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _comet_harness import (  # noqa: E402
    Processes, auth_bodies, close_clients, fmt_bytes, free_port, open_clients, raise_nofile, rss_bytes,
)

from kefu.protocol import Op  # noqa: E402

FLUSH_EVERY = 2.0   # online marks flush (default 10 s), shortened so that every reading
SETTLE = 3.0        # ... is taken after a flush at full size: its peak counts, as in production


async def measure(url: str, pid: int, n: int, warm: int, *, kind: str, want_op: int,
                  figures=None) -> dict:
    warm_clients = await open_clients(url, auth_bodies(f"w{kind}", [f"warm_{i}" for i in range(warm)]),
                                      want_op=want_op)
    await asyncio.sleep(SETTLE)
    before = rss_bytes(pid)
    t0 = time.monotonic()
    clients = await open_clients(url, auth_bodies(f"v{kind}", [f"8000_{kind}{i}" for i in range(n)]),
                                 want_op=want_op)
    connect_s = time.monotonic() - t0
    await asyncio.sleep(SETTLE)
    after = rss_bytes(pid)
    out = {"before": before, "after": after, "per_conn": (after - before) / n, "connect_s": connect_s,
           "authenticated": figures()["authenticated"] if figures else None}
    await close_clients(warm_clients + clients)
    return out


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
        return json.load(r)


BASELINES = {"tcp": ("echo-tcp", "baseline: bare asyncio TCP echo"),
             "ws": ("echo-ws", "baseline: aiohttp WebSocket echo")}


async def run(args) -> list[dict]:
    rows = []
    transports = args.transports.split(",")
    with tempfile.TemporaryDirectory(prefix="kefu-bench-mem-") as tmp:
        procs = Processes(Path(tmp))
        try:
            redis_url = procs.redis()
            for transport in transports:
                proc, ws_port, tcp_port = procs.comet(
                    redis_url, max_connections=args.connections + args.warmup + 100,
                    heartbeat=1800, heartbeat_timeout=3600, handshake_timeout=120,
                    online_flush_interval=args.flush_interval)
                url = f"tcp://127.0.0.1:{tcp_port}" if transport == "tcp" else f"ws://127.0.0.1:{ws_port}/sub"
                m = await measure(url, proc.pid, args.connections, args.warmup, kind=transport,
                                  want_op=Op.AUTH_REPLY, figures=lambda: health(ws_port))
                m.update(server=f"kefu comet ({transport})", transport=transport, kefu=True)
                m["stop_s"] = procs.stop(proc)
                rows.append(m)
            for transport in transports:
                kind, name = BASELINES[transport]
                port = free_port()
                base = procs.python("bench/_baselines.py", kind, str(port))
                url = f"tcp://127.0.0.1:{port}" if transport == "tcp" else f"ws://127.0.0.1:{port}/sub"
                m = await measure(url, base.pid, args.connections, args.warmup, kind=f"b{transport}",
                                  want_op=Op.AUTH)
                m.update(server=name, transport=transport, kefu=False)
                procs.stop(base)
                rows.append(m)
        finally:
            procs.stop_all()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--transports", default="tcp,ws", help="comma-separated: tcp, ws")
    p.add_argument("--flush-interval", type=float, default=FLUSH_EVERY,
                   help="the worker's online_flush_interval; 3600 leaves the marks flush out")
    p.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    p.add_argument("--smoke", action="store_true", help="200 connections: checks the bench works")
    args = p.parse_args()
    if args.smoke:
        args.connections, args.warmup = 200, 20
    limit = raise_nofile()
    if args.connections + args.warmup + 64 > limit:
        raise SystemExit(f"file descriptor limit {limit} is too low for {args.connections} connections")
    rows = asyncio.run(asyncio.wait_for(run(args), args.timeout))
    print(f"# per-connection memory, {platform.python_implementation()} {platform.python_version()}, "
          f"{platform.machine()}, N = {args.connections:,} idle authenticated connections (+{args.warmup} warm-up)")
    print(f"{'server':34} {'RSS before':>12} {'RSS after':>12} {'per conn':>11} {'connect':>9}")
    for r in rows:
        print(f"{r['server']:34} {fmt_bytes(r['before']):>12} {fmt_bytes(r['after']):>12} "
              f"{fmt_bytes(r['per_conn']):>11} {r['connect_s']:>8.1f}s")
    floor = next((b for b in rows if b["server"] == BASELINES["tcp"][1]), None)
    for r in rows:
        if r["kefu"]:
            vs = (f" = bare asyncio connection + {fmt_bytes(r['per_conn'] - floor['per_conn'])}"
                  if floor else "")
            print(f"kefu {r['transport']}: {fmt_bytes(r['per_conn'])} per idle authenticated connection{vs}; "
                  f"worker authenticated {r['authenticated']:,}; stopped (op 6 to all) in {r['stop_s']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
