"""Rate limits and blocks shared by every process through Redis.

The token bucket runs on Redis's clock (TIME inside the script), so API
processes on machines with different clocks share one fair bucket.
"""
from __future__ import annotations

from .base import guarded, run_script
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
