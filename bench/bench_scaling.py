"""Beyond one machine: one node vs two nodes vs two nodes on Redis Cluster (not a test).

Same run, same load, same machine, loopback only.  Each configuration
starts its own Redis and its own `kefu run` node(s), then the same load:

    1 node            one `kefu run` (N comet workers + the API) on a
                      standalone redis-server (TCP, like the other two)
    2 nodes           two `kefu run` (node ids 1 and 2) on that one redis-server;
                      visitors connect to node A, agents to node B, half the
                      messages are posted through each node's API
    2 nodes, cluster  the same two nodes on a local 3-master Redis Cluster
                      (sharded pub/sub for room channels)

C conversations (a shop each, a visitor connection and an agent
connection), messages posted through POST /open/push at rising rates
(half by the visitor, half by the agent, as bench_chat does), each step
reporting what the API acknowledged per second, end-to-end latency, loss
(acknowledged messages a recipient never got: must be 0), and what one
message cost Redis: commands per message (INFO commandstats summed over
every Redis node, background chores included) and Redis CPU per message.
A configuration stops rising at the first step that misses its rate by
more than 10 %, has a p99 above 1 s, or loses a message; its best step
is its throughput.

    .venv/bin/python bench/bench_scaling.py                     # C = 300, rates up to 8,000/s
    .venv/bin/python bench/bench_scaling.py --smoke             # a few seconds per configuration
    .venv/bin/python bench/bench_scaling.py --configs 1,2 --rates 1000,2000

On one 2-core machine every process shares the same two cores, so two
nodes cannot be faster than one here: what this shows is that sharing a
Redis (or a cluster) between nodes delivers everything, and what each
layout costs per message.  Real scaling needs real machines.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _kefu_run import KefuRun, Pool, machine, make_shops, pct, split  # noqa: E402
from bench_chat import Poster, Receivers, fmt_ms, lat_array  # noqa: E402

import redis  # noqa: E402

CONFIGS = {"1": "1 node", "2": "2 nodes", "c": "2 nodes, cluster"}


# -- Redis under the nodes -----------------------------------------------------------
class StandaloneRedis:
    def __init__(self, workdir: Path) -> None:
        from _kefu_run import free_port
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        c = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                c.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start")
                time.sleep(0.02)
        c.close()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.ports = [self.port]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


class ClusterRedis:
    def __init__(self, workdir: Path, masters: int) -> None:
        from cluster_fixtures import LocalCluster
        # append-only but fsync once a second, like a production cluster; no replicas
        self.cluster = LocalCluster(workdir, masters=masters, fsync="everysec").start()
        self.url = self.cluster.url
        self.ports = self.cluster.ports

    def stop(self) -> None:
        self.cluster.stop()


def redis_figures(ports: list[int]) -> tuple[collections.Counter, float]:
    """(calls per command, CPU seconds) summed over Redis nodes."""
    calls: collections.Counter = collections.Counter()
    cpu = 0.0
    for port in ports:
        c = redis.Redis(port=port)
        try:
            for name, st in c.info("commandstats").items():
                calls[name.removeprefix("cmdstat_")] += int(st["calls"])
            info = c.info("cpu")
            cpu += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        finally:
            c.close()
    return calls, cpu


class NodePoster(Poster):
    """bench_chat's Poster with an index unique across nodes: the index is part of
    each client_msg_id, and two posters sharing one would post "retries" of each other."""

    def __init__(self, index: int, offset: int, *args) -> None:
        super().__init__(index + offset, *args)


# -- one configuration -------------------------------------------------------------------
class Layout:
    """Redis + node(s) + load processes of one configuration; stopped on exit."""

    def __init__(self, kind: str, args, workdir: Path) -> None:
        self.kind, self.a, self.workdir = kind, args, workdir
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> "Layout":
        a = self.a
        try:
            if self.kind == "c":
                self.redis = ClusterRedis(self.workdir / "cluster", a.masters)
            else:
                self.redis = StandaloneRedis(self.workdir)
            self.stack.callback(self.redis.stop)
            n = 1 if self.kind == "1" else 2
            self.nodes = []
            for i in range(n):
                k = KefuRun(self.workdir / f"node{i}", workers=a.workers, redis_url=self.redis.url,
                            env={"KEFU_NODE_ID": str(i + 1), "KEFU_MAX_CONNECTIONS": "20000"})
                self.stack.callback(k.stop)
                self.nodes.append(k.start())
            make_shops(self.redis.url, [f"b{i}" for i in range(a.conns)])
            a_node, b_node = self.nodes[0], self.nodes[-1]
            nrecv = max(1, math.ceil(2 * a.conns / 15_000))
            self.recv = Pool(nrecv, Receivers, (a_node.api, a_node.ws, b_node.ws, "b"))
            self.stack.callback(self.recv.close)
            per = max(1, a.posters // n)
            self.posts = [Pool(per, NodePoster, (j * per, "127.0.0.1", node.api_port, a.http_conns, a.depth))
                          for j, node in enumerate(self.nodes)]
            for p in self.posts:
                self.stack.callback(p.close)
            got = self.recv.call("visitors", [(part,) for part in split(list(range(a.conns)), nrecv)])
            convs = sorted((c for part in got for c in part), key=lambda c: c["i"])
            res = self.recv.call("connect", [(part, ["127.0.0.1"]) for part in split(convs, nrecv)])
            if sum(r["failures"] for r in res):
                raise SystemExit(f"{sum(r['failures'] for r in res)} connections failed")
            for p in self.posts:
                p.call("set_rooms", [(part,) for part in split(convs, len(p.conns))])
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    def cpu(self) -> float:
        return sum(sum(k.cpu().get(r, 0.0) for r in ("api", "comet")) for k in self.nodes)

    def step(self, rate: float) -> dict:
        a = self.a
        self.recv.call("take")
        calls0, rcpu0 = redis_figures(self.redis.ports)
        cpu0 = self.cpu()
        w0 = time.monotonic()
        per_pool = rate / len(self.posts)
        outs = []
        for p in self.posts:                   # every poster process of every node at once
            for conn, margs in zip(p.conns, [(per_pool / len(p.conns), a.step_seconds, 0.5)] * len(p.conns)):
                conn.send(("run", margs))
        for p in self.posts:
            for conn in p.conns:
                status, value = conn.recv()
                if status != "ok":
                    raise SystemExit(f"poster failed: {value}")
                outs.append(value)
        acked: dict[int, int] = collections.Counter()
        for p in self.posts:
            for part in p.call("acked_counts"):
                for i, n in part:
                    acked[i] += n
        slots = self.recv.call("slots")
        deadline = time.monotonic() + a.settle
        while True:
            got_v: dict[int, int] = collections.Counter()
            got_a: dict[int, int] = collections.Counter()
            for (v, ag, _bad), part in zip(self.recv.call("counts"), slots):
                for slot, i in enumerate(part):
                    got_v[i] += v[slot]
                    got_a[i] += ag[slot]
            missing = sum(max(0, n - got_v[i]) + max(0, n - got_a[i]) for i, n in acked.items())
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if missing and self.a.verbose:
            print(f"  missing: visitors {sum(max(0, n - got_v[i]) for i, n in acked.items())}, "
                  f"agents {sum(max(0, n - got_a[i]) for i, n in acked.items())}")
        calls1, rcpu1 = redis_figures(self.redis.ports)
        cpu1 = self.cpu()
        lat = lat_array(self.recv.call("take"))
        posted = sum(o["statuses"].get(200, 0) for o in outs)
        seconds = max(o["seconds"] for o in outs)
        calls = calls1 - calls0
        calls.pop("info", None)
        return {"rate": rate, "achieved": posted / seconds, "posted": posted, "p50": pct(lat, 0.5),
                "p99": pct(lat, 0.99), "loss": missing,
                "errors": sum(n for o in outs for s, n in o["statuses"].items() if s != 200),
                "cmds": sum(calls.values()) / max(posted, 1), "calls": calls,
                "redis_us": (rcpu1 - rcpu0) / max(posted, 1) * 1e6,
                "kefu_us": (cpu1 - cpu0) / max(posted, 1) * 1e6, "wall": time.monotonic() - w0}


def head() -> None:
    print(f"{'offered/s':>9} {'posted/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'loss':>5} {'errors':>6} "
          f"{'redis cmds/msg':>14} {'redis µs/msg':>12} {'kefu µs/msg':>11}")


def row(r: dict) -> None:
    print(f"{r['rate']:>9,.0f} {r['achieved']:>9,.0f} {fmt_ms(r['p50']):>7} {fmt_ms(r['p99']):>7} "
          f"{r['loss']:>5} {r['errors']:>6} {r['cmds']:>14.2f} {r['redis_us']:>12.1f} {r['kefu_us']:>11.1f}")


def breakdown(r: dict, top: int = 8) -> str:
    posted = max(r["posted"], 1)
    rows = sorted(r["calls"].items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{name} {n / posted:.2f}" for name, n in rows if n / posted >= 0.01)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="1,2,c", help="1 = one node, 2 = two nodes, c = two nodes on a cluster")
    ap.add_argument("--conns", type=int, default=300, help="conversations (2 connections each)")
    ap.add_argument("--rates", default="500,1000,2000,3000,4000,5000,6000,7000,8000",
                    help="offered messages/s, rising")
    ap.add_argument("--ref-rate", type=float, default=1000,
                    help="the step whose Redis cost per message is compared (same load everywhere)")
    ap.add_argument("--step-seconds", type=float, default=4.0)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=1, help="comet workers per node")
    ap.add_argument("--masters", type=int, default=3, help="cluster masters")
    ap.add_argument("--posters", type=int, default=2, help="poster processes in all")
    ap.add_argument("--http-conns", type=int, default=32, help="keep-alive HTTP connections per poster")
    ap.add_argument("--depth", type=int, default=8, help="pipelined requests per HTTP connection")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the bench itself works")
    ap.add_argument("--verbose", action="store_true", help="say which side missed messages")
    a = ap.parse_args(argv)
    a.rates = [float(x) for x in a.rates.split(",")]
    if a.smoke:
        a.conns, a.rates, a.step_seconds, a.settle, a.http_conns, a.ref_rate = 20, [100, 200], 1.0, 5.0, 4, 100
    print(f"kefu scaling bench — {machine()}")
    print(f"{a.conns} conversations, {a.workers} comet worker(s) per node, steps of {a.step_seconds:g} s, "
          f"{a.posters} poster process(es) x {a.http_conns} HTTP connections, loopback only")
    best: dict[str, dict] = {}
    ref: dict[str, dict] = {}
    failed = False
    for kind in a.configs.split(","):
        name = CONFIGS[kind]
        with tempfile.TemporaryDirectory(prefix="kefu-scaling-") as tmp:
            t0 = time.monotonic()
            with Layout(kind, a, Path(tmp)) as lay:
                print(f"\n{name} (ready in {time.monotonic() - t0:.1f} s; "
                      f"load average {os.getloadavg()[0]:.1f} before it)")
                head()
                for rate in a.rates:
                    r = lay.step(rate)
                    row(r)
                    if rate == a.ref_rate:
                        ref[kind] = r
                    if r["loss"]:
                        failed = True
                    ok = not r["loss"] and r["p99"] <= 1_000_000 and r["achieved"] >= 0.9 * rate
                    if ok and (kind not in best or r["achieved"] > best[kind]["achieved"]):
                        best[kind] = r
                    if not ok:
                        break
                if kind in ref:
                    print(f"  redis commands per message at {a.ref_rate:,.0f}/s (script bodies included): "
                          f"{breakdown(ref[kind], 40)}")
    print("\nthroughput (best step without loss, within 10 % of its rate, p99 <= 1 s), and the Redis cost "
          f"of one message at {a.ref_rate:,.0f}/s:")
    base = best.get("1")
    for kind, r in best.items():
        rel = f" ({r['achieved'] / base['achieved']:.2f}x one node)" if base and kind != "1" else ""
        cost = ref.get(kind)
        cost_s = (f"{cost['cmds']:.1f} redis cmds/msg, {cost['redis_us']:.0f} µs redis CPU/msg, "
                  f"{cost['kefu_us']:.0f} µs kefu CPU/msg") if cost else ""
        print(f"  {CONFIGS[kind]:<18} {r['achieved']:>7,.0f} msg/s{rel:<18} p99 {fmt_ms(r['p99']):>5} ms   {cost_s}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
