"""Reading pub/sub: kefu.bus (raw protocol + hiredis) next to redis.asyncio's PubSub.

Why kefu.bus reads the pub/sub connection itself: this measures the CPU
one worker spends to receive K published messages (200-byte op-5 frames)
with each reader, in the same run, on the same Redis.  A separate process
publishes them as fast as it can (pipelined), so the receiver's
`time.process_time()` covers reading only.

    .venv/bin/python bench/bench_bus.py [--messages 200000]
    .venv/bin/python bench/bench_bus.py --smoke
"""
from __future__ import annotations

import argparse
import asyncio
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _comet_harness import ROOT, Processes, chat_frame  # noqa: E402

import redis.asyncio as aioredis  # noqa: E402

from kefu.bus import Bus  # noqa: E402

CHANNEL = b"bench:bus"
PUBLISHER = """
import sys, redis
sys.path.insert(0, {root!r})
from bench._comet_harness import chat_frame
r = redis.Redis.from_url({url!r})
frame = chat_frame(1)
n = {n}
for start in range(0, n, 1000):
    p = r.pipeline(transaction=False)
    for _ in range(min(1000, n - start)):
        p.publish({channel!r}, frame)
    p.execute()
"""


def publish(url: str, n: int) -> subprocess.Popen:
    code = PUBLISHER.format(root=str(ROOT), url=url, n=n, channel=CHANNEL)
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)


async def with_bus(url: str, n: int) -> tuple[float, float]:
    got = [0]
    done = asyncio.Event()

    def on_message(ch, data):
        got[0] += 1
        if got[0] == n:
            done.set()
    bus = Bus(url, on_message)
    await bus.start(wait=10)
    bus.want(CHANNEL)
    await bus.ready([CHANNEL], 10)
    c0, t0 = time.process_time(), time.monotonic()
    proc = publish(url, n)
    await asyncio.wait_for(done.wait(), 300)
    cpu, wall = time.process_time() - c0, time.monotonic() - t0
    proc.wait()
    await bus.close()
    return cpu, wall


async def with_pubsub(url: str, n: int) -> tuple[float, float]:
    r = aioredis.Redis.from_url(url)
    ps = r.pubsub(ignore_subscribe_messages=True)
    await ps.subscribe(CHANNEL)
    got = 0
    c0, t0 = time.process_time(), time.monotonic()
    proc = publish(url, n)
    async for msg in ps.listen():
        if msg["type"] == "message":
            got += 1
            if got == n:
                break
    cpu, wall = time.process_time() - c0, time.monotonic() - t0
    proc.wait()
    await ps.aclose()
    await r.aclose()
    return cpu, wall


async def run(n: int) -> list[tuple[str, float, float]]:
    with tempfile.TemporaryDirectory(prefix="kefu-bench-bus-") as tmp:
        procs = Processes(Path(tmp))
        try:
            url = procs.redis()
            rows = []
            for name, fn in (("kefu.bus (raw + hiredis)", with_bus), ("redis.asyncio PubSub.listen", with_pubsub)):
                cpu, wall = await fn(url, n)
                rows.append((name, cpu, wall))
            return rows
        finally:
            procs.stop_all()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=200_000)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    n = 2_000 if args.smoke else args.messages
    rows = asyncio.run(run(n))
    print(f"# pub/sub reading, {platform.python_implementation()} {platform.python_version()}: "
          f"{n:,} messages of {len(chat_frame(1))} bytes")
    print(f"{'reader':30} {'CPU':>8} {'CPU/message':>12} {'wall':>7}")
    for name, cpu, wall in rows:
        print(f"{name:30} {cpu:>7.2f}s {1e6 * cpu / n:>10.2f}µs {wall:>6.2f}s")
    print(f"kefu.bus uses {rows[0][1] / rows[1][1]:.2f}x the CPU of redis.asyncio PubSub per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
