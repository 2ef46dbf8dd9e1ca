"""Operations: /healthz, /metrics and the retention task.

/healthz answers 200 only when Redis answers (one PING), so a load
balancer takes an API worker out when its Redis is gone.  /metrics is
Prometheus text: this worker's own series plus the comet workers'
figures, which they report into Redis (`store.servers()`), summed.
The retention task calls `store.sweep()` every `sweep_interval` seconds
(0 = never) and logs what it removed.
"""
from __future__ import annotations

import asyncio
import logging
import random

import orjson
from redis.exceptions import RedisError
from aiohttp import web

from .. import tlv
from ..errors import StoreUnavailable
from .common import JSON_TYPE, ctx_of

log = logging.getLogger("kefu.api.retention")


async def healthz(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    try:
        await ping(ctx.store)
    except StoreUnavailable as exc:
        body = {"ok": False, "redis": "down", "error": str(exc)}
        return web.Response(body=orjson.dumps(body), status=503, content_type=JSON_TYPE)
    return web.Response(body=orjson.dumps({"ok": True, "redis": "up", "codec": tlv.IMPLEMENTATION}),
                        content_type=JSON_TYPE)


async def ping(store) -> None:
    """One PING; StoreUnavailable when Redis does not answer within 2 s."""
    try:
        await asyncio.wait_for(store.redis.ping(), 2.0)
    except StoreUnavailable:
        raise
    except (RedisError, OSError, asyncio.TimeoutError) as exc:
        raise StoreUnavailable(f"redis unavailable: {exc or type(exc).__name__}") from None


async def metrics(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    comet, servers = {}, 0
    try:
        reports = await ctx.store.servers()
    except StoreUnavailable:
        reports = None
    if reports:
        from .metrics import sum_figures
        comet, servers = sum_figures(reports.values())
    body = ctx.metrics.render(comet, servers)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def retention(app: web.Application) -> None:
    """Sweep forever; one failure is logged and retried next round, never fatal."""
    ctx = ctx_of_app(app)
    interval = ctx.settings.sweep_interval
    await asyncio.sleep(interval * random.uniform(0.1, 0.5))     # spread workers that start together
    while True:
        try:
            result = await ctx.store.sweep()
            n = _count(result)
            if n:
                ctx.metrics.swept.inc(by=n)
                log.info("retention: removed %s", result)
        except StoreUnavailable as exc:
            log.warning("retention skipped: %s", exc)
        except Exception:  # noqa: BLE001 - a background task must outlive one bad round
            log.exception("retention sweep failed")
        await asyncio.sleep(interval)


def _count(result) -> int:
    if isinstance(result, bool):
        return int(result)
    if isinstance(result, (int, float)):
        return int(result)
    if isinstance(result, dict):
        return sum(v for v in result.values() if isinstance(v, int) and not isinstance(v, bool))
    return 0


def ctx_of_app(app: web.Application):
    from .common import CTX
    return app[CTX]


async def _retention_ctx(app: web.Application):
    task = None
    if ctx_of_app(app).settings.sweep_interval > 0:
        task = asyncio.create_task(retention(app), name="kefu-retention")
    yield
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_route("GET", "/metrics", metrics)
    app.cleanup_ctx.append(_retention_ctx)
