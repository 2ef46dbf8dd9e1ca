"""A real local Redis Cluster for tests: redis-server --cluster-enabled yes
on free loopback ports, joined by `redis-cli --cluster create`.

    LocalCluster(workdir, masters=3, replicas=0).start()   -> the cluster
    cluster.url                   redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...
    cluster.failover(port)        CLUSTER FAILOVER on a replica (coordinated,
                                  loses nothing), waits for the new topology
    cluster.kill(port) / restart(port)   SIGKILL a node / start it again with
                                  its nodes.conf and append-only file
    cluster.stop()                every node SIGKILLed, nothing lingers

Fixtures: `redis_cluster` (one per test session: 3 masters, no replicas,
tests use their own key prefix) and `cluster_factory` (a private cluster a
test may break; stopped after the test).  Import with
`from cluster_fixtures import *  # noqa: F403`.
"""
from __future__ import annotations

import contextlib
import shutil
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

__all__ = ["LocalCluster", "cluster_factory", "redis_cluster", "HAVE_CLUSTER"]

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
HAVE_CLUSTER = Path(REDIS_SERVER).exists() and Path(REDIS_CLI).exists()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, both below the
    kernel's ephemeral range (Redis refuses ports above 55535)."""
    rng = random.Random()
    while True:
        port = rng.randrange(11000, 22000)
        if port not in _taken and _bindable(port) and _bindable(port + 10000):
            _taken.add(port)
            return port


_taken: set[int] = set()


def _version() -> tuple[int, ...]:
    try:
        out = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True, timeout=10).stdout
        return tuple(int(x) for x in out.split("v=")[1].split()[0].split(".")[:2])
    except (OSError, IndexError, ValueError, subprocess.SubprocessError):
        return (0,)


SHARDED_PUBSUB = _version() >= (7, 0)


class LocalCluster:
    """masters + masters*replicas redis-server processes in `workdir`, one dir each."""

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 0, *,
                 node_timeout_ms: int = 2000, fsync: str = "always"):
        self.workdir = Path(workdir)
        self.masters, self.replicas = masters, replicas
        self.node_timeout_ms, self.fsync = node_timeout_ms, fsync
        self.ports = [cluster_port() for _ in range(masters * (1 + replicas))]
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:self.masters])

    def _spawn(self, port: int) -> None:
        d = self.workdir / str(port)
        d.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(self.node_timeout_ms),
             "--appendonly", "yes", "--appendfsync", self.fsync, "--save", "",
             "--cluster-require-full-coverage", "yes", "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def _wait_ping(self, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with contextlib.closing(self.client(port)) as c:
            while True:
                try:
                    c.ping()
                    return
                except redis.RedisError:
                    if self.procs[port].poll() is not None or time.monotonic() > deadline:
                        log = self.workdir / str(port) / "redis.log"
                        tail = log.read_text()[-2000:] if log.exists() else ""
                        raise RuntimeError(f"cluster node {port} did not start:\n{tail}")
                    time.sleep(0.02)

    def start(self, timeout: float = 30.0) -> "LocalCluster":
        try:
            for port in self.ports:
                self._spawn(port)
            for port in self.ports:
                self._wait_ping(port)
            out = subprocess.run(
                [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{out.stdout}\n{out.stderr}")
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def info(self, port: int) -> dict:
        with contextlib.closing(self.client(port)) as c:
            return c.cluster("info")

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok and agrees on the masters' slots."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                live = [p for p, proc in self.procs.items() if proc.poll() is None]
                states = [self.info(p) for p in live]
                if all(s.get("cluster_state") == "ok" and int(s.get("cluster_slots_ok", 0)) == 16384
                       for s in states) and self._replicas_synced(live):
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def _replicas_synced(self, live: list[int]) -> bool:
        for p in live:
            with contextlib.closing(self.client(p)) as c:
                rep = c.info("replication")
            if rep.get("role") == "slave" and rep.get("master_link_status") != "up":
                return False
        return True

    def role(self, port: int) -> str:
        with contextlib.closing(self.client(port)) as c:
            return c.info("replication")["role"]

    def master_of_slot(self, slot: int) -> int:
        """Port of the master serving `slot`."""
        with contextlib.closing(self.client(self._any_live())) as c:
            for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise LookupError(slot)

    def replica_of(self, master_port: int) -> int:
        for p in self.ports:
            if p == master_port or self.procs[p].poll() is not None:
                continue
            with contextlib.closing(self.client(p)) as c:
                rep = c.info("replication")
            if rep.get("role") == "slave" and int(rep.get("master_port", 0)) == master_port:
                return p
        raise LookupError(f"no replica of {master_port}")

    def _any_live(self) -> int:
        return next(p for p, proc in self.procs.items() if proc.poll() is None)

    def failover(self, replica_port: int, timeout: float = 30.0) -> None:
        """A coordinated (manual) failover: the replica catches up, then takes over."""
        with contextlib.closing(self.client(replica_port)) as c:
            c.execute_command("CLUSTER", "FAILOVER")
        deadline = time.monotonic() + timeout
        while self.role(replica_port) != "master":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{replica_port} did not become master")
            time.sleep(0.05)
        self.wait_ok(timeout)

    def kill(self, port: int) -> None:
        proc = self.procs[port]
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def restart(self, port: int) -> None:
        """Start a killed node again: it rejoins with its nodes.conf and AOF."""
        self._spawn(port)
        self._wait_ping(port)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def _skip_without_cluster() -> None:
    if not HAVE_CLUSTER or not SHARDED_PUBSUB:
        pytest.skip("needs redis-server >= 7.0 and redis-cli (sharded pub/sub, --cluster create)")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A 3-master cluster shared by the session's tests (each uses its own prefix)."""
    _skip_without_cluster()
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_factory(tmp_path):
    """`cluster_factory(masters=3, replicas=1)` -> a started private LocalCluster, stopped after the test."""
    _skip_without_cluster()
    made = []

    def make(**kwargs) -> LocalCluster:
        c = LocalCluster(tmp_path / f"cluster{len(made)}", **kwargs)
        made.append(c)
        return c.start()
    yield make
    for c in made:
        c.stop()
