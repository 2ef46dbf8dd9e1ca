"""Rate limits and blocks shared by every process through Redis.

The token bucket runs on Redis's clock (TIME inside the script), so API
processes on machines with different clocks share one fair bucket.
"""
from __future__ import annotations

from redis.exceptions import NoScriptError

from ..errors import StoreUnavailable
from .base import OUTAGES, guarded, load_scripts, queue, run_script, unavailable
from .fastpipe import run_commands
from .scripts import ALL as ALL_SCRIPTS
from .scripts import BUCKET


class LimitsMixin:
    """Part of Store."""

    @guarded
    async def allow(self, bucket: str, rate: float, burst: int, cost: float = 1) -> float:
        """Take `cost` tokens from `bucket` (refilled at `rate`/s, holding `burst`).

        Returns 0.0 when allowed, else the seconds to wait before it would
        be (nothing is taken then).  One round trip.
        """
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        wait = await run_script(self.redis, BUCKET, [self.keys.ratelimit(bucket)], [rate, burst, cost])
        return float(wait)

    @guarded
    async def block(self, shop: str, who: str, seconds: int) -> None:
        """Block a visitor mid or an IP from the shop for `seconds`."""
        await self.redis.set(self.keys.block(shop, who), b"1", ex=max(1, int(seconds)))

    @guarded
    async def unblock(self, shop: str, who: str) -> None:
        await self.redis.delete(self.keys.block(shop, who))

    @guarded
    async def is_blocked(self, shop: str, *whos: str) -> bool:
        """True if any of `whos` (mid, IP, ...) is blocked by the shop; one EXISTS."""
        whos = [w for w in whos if w]
        if not whos:
            return False
        return await self.redis.exists(*(self.keys.block(shop, w) for w in whos)) > 0

    async def check(self, buckets: list[tuple[str, float, int]], shop: str | None = None,
                    whos: list[str] | tuple = ()) -> tuple[list[float], bool]:
        """Every check of one request in ONE round trip: -> (waits, blocked).

        buckets: (bucket, rate, burst), each taking one token as allow() does;
        waits[i] is 0.0 when bucket i allowed.  blocked: any of `whos` is
        blocked by `shop` (as is_blocked()).
        """
        k = self.keys
        whos = list(whos) if shop else []
        fast = getattr(self, "fast", None)
        if fast is not None:            # one auto-pipelined round trip shared with concurrent requests
            cmds: list = [(BUCKET, [k.ratelimit(name)], [rate, burst, 1]) for name, rate, burst in buckets]
            if whos:
                cmds.append((b"EXISTS", *(k.block(shop, w) for w in whos)))
            try:
                out = await run_commands(fast, cmds, ALL_SCRIPTS)
            except OUTAGES as exc:
                raise unavailable(exc) from exc
            for r in out:
                if isinstance(r, Exception):
                    raise r
            return [float(r) for r in out[:len(buckets)]], bool(whos) and out[-1] > 0
        for attempt in (1, 2):
            pipe = self.redis.pipeline(transaction=False)
            for name, rate, burst in buckets:
                queue(pipe, BUCKET, [k.ratelimit(name)], [rate, burst, 1])
            if whos:
                pipe.exists(*(k.block(shop, w) for w in whos))
            try:
                out = await pipe.execute(raise_on_error=False)
                if attempt == 1 and any(isinstance(r, NoScriptError) for r in out):
                    await load_scripts(self.redis)       # Redis restarted: scripts gone, nothing ran
                    continue
            except OUTAGES as exc:
                raise unavailable(exc) from exc
            for r in out:
                if isinstance(r, OUTAGES):      # a cluster pipeline returns a shard's outage here
                    raise unavailable(r)
                if isinstance(r, Exception):
                    raise r
            return [float(r) for r in out[:len(buckets)]], bool(whos) and out[-1] > 0
        raise StoreUnavailable("rate-limit scripts could not be loaded")
