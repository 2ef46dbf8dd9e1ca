"""Connection, error translation, script calls and the post batcher.

Every Redis failure that means "Redis is not there" (connection refused,
reset, timeout) leaves the store as errors.StoreUnavailable, so callers
handle one exception; a script or command bug stays a ResponseError (a
programming error, not an outage).

`redis+cluster://host:port,...` gives redis-py's asyncio RedisCluster
(`GatedCluster`: callers wait for a connection instead of failing); the
store then keeps every script within one slot (see Store.cluster and
docs/redis.md, "Redis Cluster").
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from typing import Any, Sequence

from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import ConfigError, StoreUnavailable
from .scripts import ALL, Script

log = logging.getLogger("kefu.store")

# ClusterError (ClusterDownError, MasterDownError, "TTL exhausted" after too
# many redirections) and TryAgainError: a cluster mid-failover or resharding,
# unable to serve the slot for now (retry later, like an outage).
# RedisClusterException: redis-py's cluster client raises it when no node is
# reachable ("Redis Cluster cannot be connected"); it also names misuse of
# the client, which the cluster tests would show, never a silent success.
OUTAGES = (RedisConnectionError, RedisTimeoutError, OSError, ClusterError, TryAgainError,
           RedisClusterException)
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


CLUSTER_SCHEME = "redis+cluster://"


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEME)


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict]:
    """(host, port) seed nodes and credentials of a redis+cluster:// URL.

    redis+cluster://[user:password@]host:port[,host:port...][/]
    """
    rest = url[len(CLUSTER_SCHEME):]
    creds, at, hosts = rest.rpartition("@")
    opts: dict = {}
    if at:
        user, colon, password = creds.partition(":")
        if not colon:                       # redis+cluster://password@...
            user, password = "", user
        opts = {"username": unquote(user) or None, "password": unquote(password) or None}
    nodes = []
    for part in hosts.split("/", 1)[0].split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"redis+cluster:// needs host:port seed nodes, got {part!r}")
        nodes.append((host.strip("[]"), int(port)))
    return nodes, opts


def client_for(url: str, *, socket_timeout: float | None = 10.0, max_connections: int = 64):
    """A redis.asyncio client for redis://, rediss:// or unix:// URLs, or a
    redis.asyncio.cluster.RedisCluster for redis+cluster:// seed nodes.

    A blocking pool makes bursts wait for a free connection instead of
    failing; retries are few and short so an outage surfaces quickly.
    """
    if not url:
        raise ConfigError("no redis_url: start the embedded Redis first or pass --redis-url")
    if is_cluster_url(url):
        nodes, opts = cluster_nodes(url)
        return GatedCluster(max_connections,
            startup_nodes=[ClusterNode(h, p) for h, p in nodes], decode_responses=False,
            socket_timeout=socket_timeout, socket_connect_timeout=5, max_connections=max_connections,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3), reinitialize_steps=1, **opts)
    tcp = {} if url.startswith("unix://") else {"socket_keepalive": True}
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=10, decode_responses=False,
        socket_timeout=socket_timeout, socket_connect_timeout=5, health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2), **tcp)
    return aioredis.Redis(connection_pool=pool)


_inside_gate: contextvars.ContextVar[bool] = contextvars.ContextVar("kefu_cluster_gate", default=False)


class GatedCluster(RedisCluster):
    """redis-py's RedisCluster whose callers wait for a free connection.

    Its per-node pools fail with MaxConnectionsError when exhausted, where
    the single-Redis client's BlockingConnectionPool makes a burst wait; a
    semaphore of the same size in front of every command and pipeline gives
    the cluster that behaviour (each call holds at most one connection per
    node).  Nested calls (redis-py calling itself) pass the gate.
    """

    def __init__(self, limit: int, **kwargs):
        super().__init__(**kwargs)
        self._gate = asyncio.Semaphore(limit)

    async def execute_command(self, *args, **kwargs):
        if _inside_gate.get():
            return await super().execute_command(*args, **kwargs)
        async with self._gate:
            token = _inside_gate.set(True)
            try:
                return await super().execute_command(*args, **kwargs)
            finally:
                _inside_gate.reset(token)

    def pipeline(self, transaction=None, shard_hint=None):
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute
        gate = self._gate

        async def gated(*args, **kwargs):
            if _inside_gate.get():
                return await execute(*args, **kwargs)
            async with gate:
                token = _inside_gate.set(True)
                try:
                    return await execute(*args, **kwargs)
                finally:
                    _inside_gate.reset(token)
        pipe.execute = gated
        return pipe


async def close_client(client) -> None:
    """Close a client built by client_for, its pool's sockets included."""
    await client.aclose()
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        await pool.disconnect()


async def load_scripts(redis) -> None:
    """SCRIPT LOAD every script (after connect, and after a NOSCRIPT).

    On a cluster every master gets them (redis-py sends SCRIPT LOAD to all
    primaries); a replica promoted later answers NOSCRIPT once, which
    loads them again.
    """
    if isinstance(redis, RedisCluster):
        for script in ALL:
            await redis.script_load(script.source)
        return
    pipe = redis.pipeline(transaction=False)
    for script in ALL:
        pipe.script_load(script.source)
    await pipe.execute()


def queue(pipe, script: Script, keys: Sequence[str], args: Sequence[Any]) -> None:
    """Add one EVALSHA to a pipeline (no SCRIPT EXISTS round trip, unlike redis-py's Script).

    Through execute_command: redis-py's cluster pipeline blocks its evalsha
    method, yet routes a raw EVALSHA by its keys' slot.
    """
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


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
    for res in results:             # a cluster pipeline reports a shard it could not reach here
        if isinstance(res, OUTAGES):
            raise res
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

    def __init__(self, redis: aioredis.Redis, max_batch: int = 512, pipe=None):
        self._redis = redis
        self._pipe = pipe           # a fastpipe.RespPipe (single Redis): redis-py's pipeline otherwise
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
                if self._pipe is not None:
                    from .fastpipe import run_commands
                    results = await run_commands(self._pipe, flat, ALL)
                else:
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
