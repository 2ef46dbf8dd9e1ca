"""Connection, error translation, script calls and the post batcher.

Every Redis failure that means "Redis is not there" (connection refused,
reset, timeout) leaves the store as errors.StoreUnavailable, so callers
handle one exception; a script or command bug stays a ResponseError (a
programming error, not an outage).
"""
from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ConfigError, StoreUnavailable
from .scripts import ALL, Script

log = logging.getLogger("kefu.store")

OUTAGES = (RedisConnectionError, RedisTimeoutError, OSError)
Command = tuple[Script, Sequence[str], Sequence[Any]]
BATCH_TIMEOUT = 15.0        # seconds for one whole batch pipeline, retries included


def unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"redis unavailable: {exc or type(exc).__name__}")


def guarded(fn):
    """Turn Redis outages raised by `fn` into StoreUnavailable."""
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except OUTAGES as exc:
            raise unavailable(exc) from exc
    return wrapper


def client_for(url: str, *, socket_timeout: float | None = 10.0, max_connections: int = 64
               ) -> aioredis.Redis:
    """A redis.asyncio client for redis://, rediss:// or unix:// URLs.

    A blocking pool makes bursts wait for a free connection instead of
    failing; retries are few and short so an outage surfaces quickly.
    """
    if not url:
        raise ConfigError("no redis_url: start the embedded Redis first or pass --redis-url")
    if url.startswith("redis+cluster://"):
        raise ConfigError("redis+cluster:// is not supported by the store yet; use redis:// or unix://")
    tcp = {} if url.startswith("unix://") else {"socket_keepalive": True}
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=10, decode_responses=False,
        socket_timeout=socket_timeout, socket_connect_timeout=5, health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2), **tcp)
    return aioredis.Redis(connection_pool=pool)


async def close_client(client: aioredis.Redis) -> None:
    """Close a client built by client_for, its pool's sockets included."""
    await client.aclose()
    await client.connection_pool.disconnect()


async def load_scripts(redis: aioredis.Redis) -> None:
    """SCRIPT LOAD every script (after connect, and after a NOSCRIPT)."""
    pipe = redis.pipeline(transaction=False)
    for script in ALL:
        pipe.script_load(script.source)
    await pipe.execute()


def queue(pipe, script: Script, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Add one EVALSHA to a pipeline (no SCRIPT EXISTS round trip, unlike redis-py's Script)."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)


async def run_pipeline(redis: aioredis.Redis, commands: Sequence[Command],
                       *, transaction: bool = False) -> list:
    """EVALSHA each command in one round trip; results or exceptions, in order.

    A NOSCRIPT answer (Redis restarted or SCRIPT FLUSH) means that script
    did not run, so it is safe to load the scripts and send those again.
    """
    results: list = [None] * len(commands)
    todo = list(range(len(commands)))
    for attempt in range(2):
        pipe = redis.pipeline(transaction=transaction)
        for i in todo:
            queue(pipe, *commands[i])
        out = await pipe.execute(raise_on_error=False)
        for i, res in zip(todo, out):
            results[i] = res
        todo = [i for i in todo if isinstance(results[i], NoScriptError)]
        if not todo:
            break
        await load_scripts(redis)
    return results


async def run_script(redis: aioredis.Redis, script: Script, keys: Sequence[str],
                     args: Sequence[Any]) -> Any:
    try:
        return await redis.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        await load_scripts(redis)
        return await redis.evalsha(script.sha, len(keys), *keys, *args)


class Batcher:
    """Coalesces concurrent callers' commands into one pipeline per round trip.

    While one pipeline is in flight, new calls queue; when it returns, the
    whole queue (up to `max_batch` calls) goes out as the next pipeline.
    One pipeline at a time keeps execution order == call order, which is
    what keeps a process's ids, stores and publishes in the same order.
    Each caller gets its own results; an outage fails every caller of
    that batch with StoreUnavailable.
    """

    def __init__(self, redis: aioredis.Redis, max_batch: int = 512):
        self._redis = redis
        self._max = max_batch
        self._queue: list[tuple[Sequence[Command], asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self.batches = 0            # pipelines sent (for tests and metrics)

    async def call(self, commands: Sequence[Command]) -> list:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((commands, fut))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[:self._max], self._queue[self._max:]
                await self._send(batch)
        finally:
            self._task = None

    async def _send(self, batch) -> None:
        flat = [cmd for commands, _ in batch for cmd in commands]
        self.batches += 1
        try:
            async with asyncio.timeout(BATCH_TIMEOUT):
                results = await run_pipeline(self._redis, flat)
        except (*OUTAGES, TimeoutError) as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(unavailable(exc))
            return
        except BaseException as exc:        # a bug or cancellation: never strand a caller
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else StoreUnavailable("store closing"))
            if not isinstance(exc, Exception):
                raise
            return
        pos = 0
        for commands, fut in batch:
            part = results[pos:pos + len(commands)]
            pos += len(commands)
            if not fut.done():
                fut.set_result(part)

    async def close(self) -> None:
        if self._task is not None:
            try:
                await self._task
            except Exception:       # already reported to its callers
                pass
