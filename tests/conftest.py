"""Shared fixtures.  Tests talk to a REAL redis-server, never a mock.

redis_server  one redis-server per test session on a free loopback port
              (never 6379), no persistence, in a temporary directory
settings      Settings pointing at it, data_dir = the test's tmp_path,
              a unique key prefix
store         a connected Store on a flushed Redis, closed after the test
spawn_redis   starts an extra throwaway redis-server (outage tests kill it)
"""
from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import time

import pytest
import redis

from kefu.config import Settings

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
_prefixes = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(workdir) -> tuple[str, subprocess.Popen]:
    """A redis-server on a free loopback port without persistence; (url, process)."""
    port = free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                client.ping()
                return url, proc
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"redis-server did not start on port {port}")
                time.sleep(0.02)
    finally:
        client.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """URL of a private redis-server for this test session."""
    url, proc = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    _stop(proc)


@pytest.fixture
def spawn_redis(tmp_path):
    """`spawn_redis()` -> (url, process) of an extra redis-server, stopped after the test."""
    procs = []

    def spawn():
        url, proc = start_redis(tmp_path)
        procs.append(proc)
        return url, proc
    yield spawn
    for proc in procs:
        _stop(proc)


@pytest.fixture
def settings(tmp_path, redis_server) -> Settings:
    return Settings(redis_url=redis_server, data_dir=str(tmp_path),
                    prefix=f"t{next(_prefixes)}:")


@pytest.fixture
async def store(settings):
    from kefu.store import Store
    s = await Store.connect(settings)
    await s.redis.flushall()
    yield s
    await s.close()
