"""goim pushes to many connections through a whole `kefu run` (not a test).

N connections (default 10,000) authenticate into one goim room; then the
merchant's back end pushes through the API (POST /goim/push/room and
/goim/push/all, bearer push secret), and every connection counts what it
gets.  Three runs, same connections, same run:

    spaced room push   a push every 200 ms: each one reaches every
                       connection in its own write (the same-run baseline:
                       the cost of one write per delivery)
    burst room push    K pushes as fast as the API takes them: the comet
                       workers coalesce what arrives in one read of the
                       Redis stream into one op-9 batch per connection
    burst push/all     the same through the push channel to every
                       connection of every worker

Figures: deliveries/s (pushes x recipients / time until the last
recipient has everything), server CPU per delivery (comet workers; API
and Redis apart; /proc utime+stime), and frames per write (deliveries
per WebSocket message the clients received).  Target: <= 1 µs of comet
CPU per delivery with batching.  Loss must be 0.

    .venv/bin/python bench/bench_pushall.py                       # 10,000 connections
    .venv/bin/python bench/bench_pushall.py --conns 30000 --pushes 300
    .venv/bin/python bench/bench_pushall.py --smoke

Routing cost as the total number of connections grows with the room size
fixed is bench/bench_fanout.py's subject (comet alone, with a scanning
baseline); this one is the whole system, HTTP to socket.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _kefu_run import (PUSH_SECRET, KefuRun, Pool, abort, lean_connect, machine,  # noqa: E402
                       raise_nofile, signer, source_addresses)

from kefu.protocol import HEADER_SIZE, Op  # noqa: E402

ROOM = "live1000"
OPERATION = 1000
BODY = b'{"type":"notice","text":"' + b"x" * 60 + b'"}'        # ~90 bytes, like a goim notice
INNER = HEADER_SIZE + len(BODY)                                   # one pushed frame inside an op-9
PER_PROCESS = 12_000
PER_WORKER = 18_000


class Counter:
    """One load process: connections that count pushed frames without decoding them."""

    def __init__(self, index: int, url: str) -> None:
        self.index, self.url = index, url
        self.clients: list = []
        self.frames = 0          # pushed frames received (inner frames of op-9 batches)
        self.messages = 0        # WebSocket messages / TCP frames received (server writes)
        self.target = 0
        self.done_at = 0.0

    async def open(self, keys: list[str], sources: list[str], parallel: int = 256) -> int:
        gate = asyncio.Semaphore(parallel)
        failed = 0

        async def one(i: int, key: str) -> None:
            nonlocal failed
            async with gate:
                for attempt in range(5):
                    try:
                        c = await lean_connect(self.url, sources[i % len(sources)])
                        await c.auth(key, accepts=[OPERATION], timeout=60)
                        self._count(c)
                        self.clients.append(c)
                        return
                    except Exception:  # noqa: BLE001
                        if attempt == 4:
                            failed += 1
                            return
                        await asyncio.sleep(0.2 * (attempt + 1))
        await asyncio.gather(*(one(i, k) for i, k in enumerate(keys)))
        return failed

    def _count(self, c) -> None:
        """Replace the client's frame parsing by counting (the load generator must stay cheap)."""
        proto = getattr(c, "proto", None)
        if proto is not None:            # WebSocket: server frames are unmasked, FIN, binary
            buf = bytearray(proto.buf)

            def ws_data(data: bytes) -> None:
                nonlocal buf
                buf += data
                off, n_buf = 0, len(buf)
                while n_buf - off >= 2:
                    n, pos = buf[off + 1] & 0x7F, off + 2
                    if n == 126:
                        if n_buf - pos < 2:
                            break
                        n, pos = int.from_bytes(buf[pos:pos + 2], "big"), pos + 2
                    elif n == 127:
                        if n_buf - pos < 8:
                            break
                        n, pos = int.from_bytes(buf[pos:pos + 8], "big"), pos + 8
                    if n_buf - pos < n:
                        break
                    self._tlv(buf, pos, n)
                    off = pos + n
                del buf[:off]
            proto.data_received = ws_data
        else:                            # TCP: TLV frames back to back
            buf2 = bytearray()

            def tcp_data(data: bytes) -> None:
                buf2.extend(data)
                off, n_buf = 0, len(buf2)
                while n_buf - off >= 4:
                    n = int.from_bytes(buf2[off:off + 4], "big")
                    if n_buf - off < n:
                        break
                    self._tlv(buf2, off, n)
                    off += n
                del buf2[:off]
            c.transport.get_protocol().data_received = tcp_data

    def _tlv(self, buf, pos: int, n: int) -> None:
        op = int.from_bytes(buf[pos + 8:pos + 12], "big")
        if op == Op.RAW:
            self.messages += 1
            self.frames += (n - HEADER_SIZE) // INNER
        elif op == OPERATION:
            self.messages += 1
            self.frames += 1
        else:
            return
        if self.target and self.frames >= self.target and not self.done_at:
            self.done_at = time.monotonic()

    def arm(self, per_conn: int) -> int:
        """Expect `per_conn` more frames on every connection; -> connections alive."""
        self.frames = self.messages = 0
        self.target = per_conn * len(self.clients)
        self.done_at = 0.0
        return sum(1 for c in self.clients if not c.closed.done())

    def result(self) -> tuple[int, int, float]:
        return self.frames, self.messages, self.done_at

    async def close(self) -> None:
        for c in self.clients:
            abort(c)
        await asyncio.sleep(0.1)


async def push(api: str, kind: str, count: int, *, concurrency: int, interval: float = 0.0) -> float:
    """`count` pushes; -> seconds the API took to accept them all."""
    import aiohttp
    url = f"{api}/goim/push/{kind}"
    params = {"operation": str(OPERATION)} | ({"room": ROOM} if kind == "room" else {})
    headers = {"Authorization": f"Bearer {PUSH_SECRET}"}
    gate = asyncio.Semaphore(concurrency)
    t0 = time.monotonic()
    async with aiohttp.ClientSession(headers=headers) as http:
        async def one(i: int) -> None:
            if interval:
                await asyncio.sleep(max(0.0, t0 + i * interval - time.monotonic()))
            async with gate, http.post(url, params=params, data=BODY) as r:
                if r.status != 200:
                    raise SystemExit(f"push answered {r.status}: {await r.text()}")
        await asyncio.gather(*(one(i) for i in range(count)))
    return time.monotonic() - t0


def run_case(k: KefuRun, pool: Pool, name: str, kind: str, pushes: int, n: int, *,
             concurrency: int, interval: float = 0.0, timeout: float = 120.0) -> dict:
    alive = sum(pool.call("arm", [(pushes,)] * len(pool.conns)))
    cpu0, t0 = k.cpu(), time.monotonic()
    accepted = asyncio.run(push(k.api, kind, pushes, concurrency=concurrency, interval=interval))
    deadline = time.monotonic() + timeout
    while True:
        res = pool.call("result")
        frames = sum(r[0] for r in res)
        if frames >= pushes * alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    cpu1 = k.cpu()
    end = max((r[2] for r in res), default=0.0) or time.monotonic()
    secs = max(end - t0, 1e-9)
    messages = sum(r[1] for r in res)
    deliveries = frames
    per = {role: (cpu1[role] - cpu0[role]) / max(deliveries, 1) * 1e6 for role in cpu0}
    return {"name": name, "pushes": pushes, "conns": alive, "deliveries": deliveries,
            "loss": pushes * alive - deliveries, "seconds": secs, "api_s": accepted,
            "rate": deliveries / secs, "per_write": deliveries / max(messages, 1),
            "comet": per["comet"], "api": per["api"], "redis": per["redis"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=10_000)
    ap.add_argument("--pushes", type=int, default=200, help="pushes per burst run")
    ap.add_argument("--spaced", type=int, default=10, help="pushes of the spaced (baseline) run, 200 ms apart")
    ap.add_argument("--concurrency", type=int, default=16, help="pushes in flight during a burst")
    ap.add_argument("--workers", type=int, default=0, help="comet workers (default: one per 18,000, at least 2)")
    ap.add_argument("--transport", choices=("ws", "tcp"), default="ws")
    ap.add_argument("--redis-url", default="")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the bench itself works")
    a = ap.parse_args(argv)
    if a.smoke:
        a.conns, a.pushes, a.spaced = 100, 20, 3
    workers = a.workers or max(2, math.ceil(a.conns / PER_WORKER))
    procs = max(1, math.ceil(a.conns / PER_PROCESS))
    sources = source_addresses(max(1, math.ceil(a.conns / 20_000)))
    fd_limit = raise_nofile()
    print(f"kefu push bench — {machine()}")
    print(f"kefu run --workers {workers} ({'redis ' + a.redis_url if a.redis_url else 'embedded redis'}); "
          f"{a.conns:,} {a.transport} connections in goim room {ROOM!r} over {procs} load process(es); "
          f"push body {len(BODY)} B, operation {OPERATION}")
    env = {"KEFU_MAX_CONNECTIONS": str(max(100, fd_limit - 500))}
    rows = []
    with KefuRun(workers=workers, redis_url=a.redis_url, env=env) as k:
        sign = signer()
        keys = [sign.mint_key(f"u{i}", ROOM, shop=None, role="user", ttl=86400) for i in range(a.conns)]
        pool = Pool(procs, Counter, (k.ws if a.transport == "ws" else k.tcp,))
        try:
            t0 = time.perf_counter()
            failed = sum(pool.call("open", [(keys[i::procs], sources) for i in range(procs)], timeout=600))
            print(f"{a.conns - failed:,} connections authenticated in {time.perf_counter() - t0:.1f} s"
                  + (f" ({failed} FAILED)" if failed else ""))
            time.sleep(1.0)
            rows.append(run_case(k, pool, "room push, spaced 200 ms (baseline)", "room", a.spaced, a.conns,
                                 concurrency=1, interval=0.2))
            rows.append(run_case(k, pool, "room push, burst", "room", a.pushes, a.conns,
                                 concurrency=a.concurrency))
            rows.append(run_case(k, pool, "push/all, burst", "all", a.pushes, a.conns,
                                 concurrency=a.concurrency))
        finally:
            pool.close()
    print(f"\n{'case':<38} {'pushes':>6} {'deliveries':>11} {'loss':>5} {'deliv/s':>11} "
          f"{'frames/write':>12} {'comet µs':>9} {'API µs':>7} {'redis µs':>8}   (CPU per delivery)")
    for r in rows:
        print(f"{r['name']:<38} {r['pushes']:>6} {r['deliveries']:>11,} {r['loss']:>5} {r['rate']:>11,.0f} "
              f"{r['per_write']:>12.1f} {r['comet']:>9.2f} {r['api']:>7.2f} {r['redis']:>8.2f}")
    base, best = rows[0], min(rows[1:], key=lambda r: r["comet"])
    if best["comet"] > 0:
        print(f"\nbatching: {base['comet']:.2f} µs -> {best['comet']:.2f} µs of comet CPU per delivery "
              f"({base['comet'] / best['comet']:.1f}x; target <= 1 µs)")
    return 0 if all(r["loss"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
