"""Idle connections a whole `kefu run` holds: memory, idle CPU, reconnect storm (not a test).

Authenticated visitor connections (each in its own room, sending a
heartbeat every 30 s as the server asks in op 8) are added in steps up to
--max (default 100,000) across the comet workers.  At every step:

    RSS/conn     growth of the comet workers' resident memory since the
                 same run's zero-connection baseline, per connection
                 (kernel socket buffers are not in RSS and not counted)
    idle CPU     all server processes (comet + API + redis) over --idle
                 seconds with only heartbeats flowing, as % of one core,
                 and per heartbeat
    redis        redis-server RSS growth per connection (room subscriptions,
                 online marks)

Then a reconnect storm: a share of the connections (--storm, default all)
drops at once and reconnects as fast as the load generator can; the figure
is new authenticated connections per second (TCP connect + WebSocket
upgrade + op 7 -> op 8 with the room subscribed in Redis).  A same-run
baseline of the transport alone is printed too: goim TCP connections
(kefu's bare asyncio protocol) at the first step, next to the WebSocket
ones (aiohttp's upgrade, then raw frames).

    .venv/bin/python bench/bench_connections.py                  # 10k, 25k, 50k, 100k
    .venv/bin/python bench/bench_connections.py --steps 20000,50000 --workers 4
    .venv/bin/python bench/bench_connections.py --smoke          # a few hundred, a few seconds

One process here may hold at most RLIMIT_NOFILE's hard limit of
descriptors (20,000 on the reference machine), so the default is one comet
worker per 15,000 connections and one load process per 14,000; source
addresses 127.0.0.1..x are spread (20,000 connections each) so ephemeral
ports never run out.  Bounded: every wait has a deadline.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _kefu_run import (KefuRun, Pool, abort, lean_connect, machine, raise_nofile,  # noqa: E402
                       rss_bytes, signer, source_addresses)

import orjson  # noqa: E402

from kefu.protocol import Op  # noqa: E402

HEARTBEAT = 30.0
PER_SOURCE = 10_000
PER_PROCESS = 14_000
PER_WORKER = 15_000


class Holder:
    """One load process: many idle authenticated connections, heartbeating."""

    def __init__(self, index: int, url_ws: str, url_tcp: str) -> None:
        self.index, self.urls = index, {"ws": url_ws, "tcp": url_tcp}
        self.clients: list = []
        self.specs: list[tuple] = []             # (transport, key, source) per client, for reconnects
        self.hb_task = None
        self.heartbeats = 0

    async def open(self, specs: list[tuple], parallel: int = 256) -> dict:
        """Connect and authenticate; -> counts and seconds."""
        gate = asyncio.Semaphore(parallel)
        fails: list[str] = []
        t0 = time.perf_counter()

        async def one(spec) -> None:
            transport, key, source = spec
            async with gate:
                for attempt in range(5):
                    try:
                        c = await lean_connect(self.urls[transport], source)
                        await c.auth(key, timeout=60)
                        self.clients.append(c)
                        self.specs.append(spec)
                        return
                    except Exception as exc:  # noqa: BLE001 - retried, then counted
                        if attempt == 4:
                            fails.append(f"{type(exc).__name__}: {exc}")
                            return
                        await asyncio.sleep(0.2 * (attempt + 1))

        await asyncio.gather(*(one(s) for s in specs))
        if self.hb_task is None:
            self.hb_task = asyncio.get_running_loop().create_task(self._heartbeats())
        return {"ok": len(specs) - len(fails), "failed": len(fails), "why": fails[:3],
                "seconds": time.perf_counter() - t0}

    async def _heartbeats(self) -> None:
        """op 2 on every connection once per HEARTBEAT seconds, in 0.1 s slices."""
        seq = itertools.count(1 << 20)
        ticks = int(HEARTBEAT * 10)
        t = 0
        while True:
            clients = self.clients
            n = len(clients)
            for c in clients[t * n // ticks:(t + 1) * n // ticks]:
                try:
                    c.send_frame(Op.HEARTBEAT, next(seq), b"")
                    self.heartbeats += 1
                except Exception:  # noqa: BLE001 - a dropped connection
                    pass
            t = (t + 1) % ticks
            await asyncio.sleep(0.1)

    def count_heartbeats(self) -> int:
        n, self.heartbeats = self.heartbeats, 0
        return n

    def alive(self) -> int:
        return sum(1 for c in self.clients if not c.closed.done())

    async def storm(self, share: float, parallel: int) -> dict:
        """Drop `share` of the connections at once, then reconnect them all; -> timing."""
        k = int(len(self.clients) * share)
        dropped, self.clients = self.clients[:k], self.clients[k:]
        specs, self.specs = self.specs[:k], self.specs[k:]
        for c in dropped:
            abort(c)
        await asyncio.sleep(0.5)                  # the server notices the drops
        res = await self.open(specs, parallel)
        return res

    async def close(self) -> None:
        if self.hb_task:
            self.hb_task.cancel()
        for c in self.clients:
            abort(c)
        self.clients = []
        await asyncio.sleep(0.2)


def keys(start: int, n: int) -> list[str]:
    sign = signer()
    return [sign.mint_key(f"c{i}", f"cb_c{i}", shop="cb", role="visitor", ttl=86400)
            for i in range(start, start + n)]


def transport_baseline(n: int, parallel: int, sources: list[str]) -> dict[str, float]:
    """RSS per connection of each transport, each on a fresh one-worker kefu run."""
    out = {}
    for transport in ("tcp", "ws"):
        with KefuRun(workers=1) as k:
            time.sleep(1.0)
            r0 = sum(k.comet_rss())
            pool = Pool(1, Holder, (k.ws, k.tcp))
            try:
                ks = keys(50_000_000, n)
                res = pool.call("open", [([(transport, key, sources[i % len(sources)])
                                           for i, key in enumerate(ks)], parallel)])
                time.sleep(1.5)
                out[transport] = (sum(k.comet_rss()) - r0) / max(1, res[0]["ok"])
            finally:
                pool.close()
    return out


def fmt_kib(n: float) -> str:
    return f"{n / 1024:.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="10000,25000,50000,100000", help="connection counts, rising")
    ap.add_argument("--workers", type=int, default=0, help="comet workers (default: one per 15,000)")
    ap.add_argument("--procs", type=int, default=0, help="load processes (default: one per 14,000)")
    ap.add_argument("--transport", choices=("ws", "tcp"), default="ws")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement per step")
    ap.add_argument("--storm", type=float, default=1.0, help="share of connections dropped in the storm")
    ap.add_argument("--parallel", type=int, default=256, help="connects in flight per load process")
    ap.add_argument("--redis-url", default="")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the bench itself works")
    a = ap.parse_args(argv)
    steps = [int(x) for x in a.steps.split(",")]
    if a.smoke:
        steps, a.idle = [200, 400], 1.0
    top = steps[-1]
    workers = a.workers or max(2, math.ceil(top / PER_WORKER))
    procs = a.procs or max(2, math.ceil(top / PER_PROCESS))
    nsrc = max(1, math.ceil(top / PER_SOURCE))
    sources = source_addresses(nsrc)
    fd_limit = raise_nofile()
    env = {"KEFU_MAX_CONNECTIONS": str(max(100, fd_limit - 500)), "KEFU_HEARTBEAT": str(int(HEARTBEAT))}
    print(f"kefu connections bench — {machine()}")
    print(f"kefu run --workers {workers} ({'redis ' + a.redis_url if a.redis_url else 'embedded redis'}); "
          f"{procs} load processes, source addresses {sources[0]}..{sources[-1]}, "
          f"descriptor limit per process {fd_limit:,}; {a.transport} connections, heartbeat every {HEARTBEAT:.0f} s")
    rows = []
    with KefuRun(workers=workers, redis_url=a.redis_url, env=env) as k:
        time.sleep(1.0)
        base_comet = sum(k.comet_rss())
        base_redis = k.rss().get("redis", 0)
        pool = Pool(procs, Holder, (k.ws, k.tcp))
        try:
            have = 0
            print(f"\n{'conns':>8} {'connect/s':>9} {'RSS/conn KiB':>12} {'comet RSS MiB':>13} "
                  f"{'redis/conn KiB':>14} {'idle CPU %':>10} {'µs/heartbeat':>12}  per worker")
            for n in steps:
                ks = keys(have, n - have)
                specs = [(a.transport, key, sources[(have + i) % nsrc]) for i, key in enumerate(ks)]
                t0 = time.perf_counter()
                res = pool.call("open", [(specs[i::procs], a.parallel) for i in range(procs)], timeout=600)
                secs = time.perf_counter() - t0
                failed = sum(r["failed"] for r in res)
                have = n
                time.sleep(2.0)
                alive = sum(pool.call("alive"))
                per_worker = k.comet_rss()
                comet = sum(per_worker)
                pool.call("count_heartbeats")
                cpu0, t_idle = k.cpu(), time.monotonic()
                time.sleep(a.idle)
                cpu1, t_idle = k.cpu(), time.monotonic() - t_idle
                beats = sum(pool.call("count_heartbeats"))
                busy = sum(cpu1[r] - cpu0[r] for r in cpu0)
                row = {"n": n, "alive": alive, "rate": (n - (rows[-1]["n"] if rows else 0)) / secs,
                       "rss": (comet - base_comet) / max(alive, 1), "comet": comet,
                       "redis": (k.rss().get("redis", 0) - base_redis) / max(alive, 1),
                       "cpu": busy / t_idle * 100,
                       "split": {r: (cpu1[r] - cpu0[r]) / t_idle * 100 for r in cpu0}, "per_beat": busy / max(beats, 1) * 1e6, "failed": failed,
                       "why": [w for r in res for w in r["why"]][:2],
                       "workers": [rss_bytes(p) for p in k.pids("comet")]}
                rows.append(row)
                note = f"  {failed} FAILED: {row['why']}" if failed else ""
                if alive < n - failed:
                    note += f"  ({n - failed - alive} dropped since)"
                print(f"{alive:>8,} {row['rate']:>9,.0f} {fmt_kib(row['rss']):>12} {comet / 2**20:>13,.0f} "
                      f"{fmt_kib(row['redis']):>14} {row['cpu']:>10.1f} {row['per_beat']:>12.1f}  "
                      f"{' '.join(f'{w / 2**20:.0f}' for w in row['workers'])} MiB; idle CPU comet "
                      f"{row['split']['comet']:.1f} % redis {row['split']['redis']:.1f} % API {row['split']['api']:.1f} %{note}")
                if failed > n * 0.01 or not k.alive():
                    print("stopping: more than 1 % of the connections failed (see above)")
                    break
            # reconnect storm
            n = sum(pool.call("alive"))
            t0 = time.perf_counter()
            res = pool.call("storm", [(a.storm, a.parallel)] * procs, timeout=900)
            secs = max(r["seconds"] for r in res)
            ok = sum(r["ok"] for r in res)
            print(f"\nreconnect storm: {int(n * a.storm):,} connections dropped at once, {ok:,} back and "
                  f"authenticated in {secs:.1f} s = {ok / secs:,.0f} new connections/s "
                  f"({sum(r['failed'] for r in res)} failed); alive now {sum(pool.call('alive')):,}")
        finally:
            pool.close()
    baseline = transport_baseline(min(steps[0], 5000), a.parallel, sources)
    print(f"same-run baseline, {min(steps[0], 5000):,} connections on a fresh one-worker kefu run each: "
          f"goim TCP (kefu's bare asyncio protocol) {fmt_kib(baseline['tcp'])} KiB/conn, "
          f"WebSocket /sub {fmt_kib(baseline['ws'])} KiB/conn")
    best = rows[-1] if rows else None
    if best:
        print(f"\nsummary: {best['alive']:,} idle connections, comet RSS {fmt_kib(best['rss'])} KiB/conn "
              f"(target <= 8 KiB), idle CPU {best['cpu']:.1f} % of one core, "
              f"{best['per_beat']:.1f} µs per heartbeat")
    return 0 if rows and rows[-1]["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
