"""The storage layer: the only code that talks to Redis for data.

Nothing above it formats a key (kefu.keys does) or signs a token
(kefu.tokens does).  `Store` gathers the parts:

    messages.py  post (stored before published), history, ack, unread, pushes
    presence.py  OnlineMarks (batched online marks) and their readers
    shops.py     shops and agents, profiles, conversation list, retention
    limits.py    token buckets and blocks
    scripts.py   the Lua scripts;  base.py  connection, errors, batcher

Every method is async and raises errors.StoreUnavailable when Redis is
unreachable.  The Redis keys and the round trips each call costs are in
docs/redis.md.
"""
from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from ..config import Settings
from ..ids import Snowflake, worker_for
from ..keys import Keys
from .base import OUTAGES, Batcher, client_for, close_client, load_scripts, unavailable
from .fastpipe import AVAILABLE as FAST_AVAILABLE
from .fastpipe import RespPipe
from .limits import LimitsMixin
from .messages import History, MessagesMixin, Posted
from .presence import OnlineMarks, PresenceMixin
from .shops import ShopsMixin, agent_mid

__all__ = ["History", "OnlineMarks", "Posted", "Store", "agent_mid"]


class Store(MessagesMixin, PresenceMixin, ShopsMixin, LimitsMixin):
    """Async access to kefu's Redis data.  Build with `await Store.connect(settings)`."""

    def __init__(self, settings: Settings, redis: aioredis.Redis, ids: Snowflake):
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.redis = redis
        self.cluster = isinstance(redis, RedisCluster)   # Redis Cluster: one slot per script
        self.ids = ids
        # the batcher has its own connection without a per-reply read timeout
        # (it bounds each whole batch instead: cheaper per message)
        self._batch_client = client_for(settings.redis_url, socket_timeout=None, max_connections=1)
        # hot paths (posts, the API's admission checks) skip redis-py: one raw auto-pipelined
        # connection, hiredis parsing (kefu.store.fastpipe); a cluster keeps redis-py's client
        self.fast = RespPipe(settings.redis_url) if FAST_AVAILABLE and not self.cluster else None
        self._batcher = Batcher(self._batch_client, pipe=self.fast)
        self._pubsub_client: aioredis.Redis | None = None
        # a visitor's profile lives as long as their conversations may
        self._profile_ttl = max(60, int(settings.retention_days * 86_400))

    @classmethod
    async def connect(cls, settings: Settings, worker: int = 0) -> "Store":
        """Connect to settings.redis_url and load the scripts.

        worker: this process's index on its node (0..7); with
        settings.node_id it makes the id generator unique, so two
        processes sharing a Redis must pass different values.
        """
        redis = client_for(settings.redis_url)
        try:
            await redis.ping()
            await load_scripts(redis)
        except OUTAGES as exc:
            await close_client(redis)
            raise unavailable(exc) from exc
        return cls(settings, redis, Snowflake(worker_for(settings.node_id, worker)))

    def pubsub(self) -> aioredis.client.PubSub:
        """A PubSub on a dedicated client without a read timeout (it idles by design).

        On a cluster: redis-py's ClusterPubSub (ssubscribe for room channels).
        """
        if self._pubsub_client is None:
            self._pubsub_client = client_for(self.settings.redis_url, socket_timeout=None,
                                             max_connections=4)
        return self._pubsub_client.pubsub()

    def marks(self, server_id: str) -> OnlineMarks:
        """A worker's batched online marks (see OnlineMarks)."""
        return OnlineMarks(self, server_id)

    @property
    def batches(self) -> int:
        """Pipelines the post batcher has sent (metrics, tests)."""
        return self._batcher.batches

    async def close(self) -> None:
        await self._batcher.close()
        if self.fast is not None:
            await self.fast.close()
        await close_client(self._batch_client)
        if self._pubsub_client is not None:
            await close_client(self._pubsub_client)
        await close_client(self.redis)
