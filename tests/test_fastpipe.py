"""kefu.store.fastpipe.RespPipe against a real redis-server: replies, errors, order,
coalescing, outages and reconnection, a silent Redis."""
from __future__ import annotations

import asyncio

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from kefu.store.fastpipe import RespPipe, pack


def test_pack_matches_resp() -> None:
    assert pack((b"SET", "k", 12, 1.5)) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$3\r\n1.5\r\n"
    assert pack(("é",)) == b"*1\r\n$2\r\n\xc3\xa9\r\n"
    with pytest.raises(TypeError):
        pack((True,))


async def test_replies_keep_redis_py_types(redis_server) -> None:
    pipe = RespPipe(redis_server)
    try:
        out = await pipe.execute([(b"DEL", "fp:k", "fp:z"), (b"SET", "fp:k", b"v\x00"), (b"GET", "fp:k"),
                                  (b"ZADD", "fp:z", 1, "a", 2, "b"), (b"ZRANGE", "fp:z", 0, -1, "WITHSCORES"),
                                  (b"GET", "fp:missing"), (b"INCR", "fp:k")])
        assert out[1:6] == [b"OK", b"v\x00", 2, [b"a", b"1", b"b", b"2"], None]
        assert isinstance(out[6], ResponseError)          # an error reply stays in its slot
        out = await pipe.execute([(b"EVALSHA", "0" * 40, 0)])
        assert isinstance(out[0], NoScriptError)
        out = await pipe.execute([(b"EVAL", "return {1, redis.error_reply('boom')}", 0)])
        assert out[0][0] == 1 and isinstance(out[0][1], ResponseError)
    finally:
        await pipe.close()


async def test_concurrent_calls_share_writes_and_keep_order(redis_server) -> None:
    pipe = RespPipe(redis_server)
    try:
        await pipe.execute([(b"DEL", "fp:list")])
        writes = pipe.writes
        outs = await asyncio.gather(*(pipe.execute([(b"RPUSH", "fp:list", i), (b"LLEN", "fp:list")])
                                      for i in range(200)))
        assert pipe.writes - writes == 1                  # one tick, one write
        assert [o[0] for o in outs] == list(range(1, 201))
        assert (await pipe.execute([(b"LRANGE", "fp:list", 0, -1)]))[0] == [b"%d" % i for i in range(200)]
    finally:
        await pipe.close()


async def test_outage_fails_pending_then_reconnects(spawn_redis) -> None:
    url, proc = spawn_redis()
    pipe = RespPipe(url)
    try:
        assert await pipe.execute([(b"PING",)]) == [b"PONG"]
        proc.kill()
        proc.wait()
        with pytest.raises(RedisConnectionError):
            await pipe.execute([(b"PING",)])
        with pytest.raises(RedisConnectionError):
            await pipe.execute([(b"PING",)])
    finally:
        await pipe.close()


async def test_reconnects_to_a_restarted_redis(spawn_redis) -> None:
    url, proc = spawn_redis()
    pipe = RespPipe(url)
    try:
        await pipe.execute([(b"PING",)])
        redis.Redis.from_url(url).client_kill_filter(_type="normal", skipme=True)
        await asyncio.sleep(0.1)                             # the link notices it was dropped
        assert await pipe.execute([(b"PING",)]) == [b"PONG"]   # and the next call reconnects
    finally:
        await pipe.close()


async def test_silent_redis_times_out(redis_server) -> None:
    pipe = RespPipe(redis_server, reply_timeout=0.3)
    other = redis.Redis.from_url(redis_server)
    try:
        await pipe.execute([(b"PING",)])
        other.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        with pytest.raises(RedisTimeoutError):
            await pipe.execute([(b"PING",)])
    finally:
        other.execute_command("CLIENT", "UNPAUSE")
        other.close()
        await pipe.close()


async def test_close_fails_nothing_silently(redis_server) -> None:
    pipe = RespPipe(redis_server)
    await pipe.execute([(b"PING",)])
    await pipe.close()
    assert await pipe.execute([(b"PING",)]) == [b"PONG"]     # a closed pipe reconnects on use
    await pipe.close()


async def test_run_commands_reloads_flushed_scripts(redis_server) -> None:
    from kefu.store.fastpipe import run_commands
    from kefu.store.scripts import ACK, ALL
    pipe = RespPipe(redis_server)
    try:
        await pipe.execute([(b"SCRIPT", b"FLUSH"), (b"DEL", "fp:off")])
        out = await run_commands(pipe, [(ACK, ["fp:off"], ["room", 7]), (b"HGET", "fp:off", "room")], ALL)
        assert out == [b"7", None]              # the raw command ran before the reload; ACK after it
        assert (await run_commands(pipe, [(b"HGET", "fp:off", "room")]))[0] == b"7"
        out = await run_commands(pipe, [(ACK, ["fp:off"], ["room", 5])], ALL)
        assert out == [b"7"]                    # loaded now: no second reload needed
    finally:
        await pipe.close()
