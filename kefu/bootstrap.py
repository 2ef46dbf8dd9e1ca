"""What `kefu run` does once before forking: secrets on disk, a demo shop.

Runs in the supervisor before any worker exists, so every worker reads the
same generated secrets, and the event loop and Redis client it uses are
gone again before the first fork.
"""
from __future__ import annotations

import asyncio
import logging
import secrets

from . import tlv, tokens
from .config import Settings

log = logging.getLogger("kefu.bootstrap")

DEMO_FILE = "demo-credentials.txt"


async def _demo_shop(settings: Settings) -> str | None:
    """Create the demo shop on the very first start; return its password if we know it."""
    from .store import Store
    path = settings.data_path / DEMO_FILE
    store = await Store.connect(settings)
    try:
        if await store.redis.scard(store.keys.shops()) == 0:
            password = secrets.token_urlsafe(9)
            await store.create_shop(settings.demo_shop, name="演示商店 Demo shop", password=password)
            path.write_text(f"{settings.demo_shop}\n{password}\n")
            path.chmod(0o600)
            log.info("created demo shop %s", settings.demo_shop)
    finally:
        await store.close()
    try:
        shop, password = path.read_text().split()[:2]
        return password if shop == settings.demo_shop else None
    except (OSError, ValueError):
        return None


def prepare(settings: Settings) -> str:
    """Generate secrets, create the demo shop; return the banner to print."""
    tokens.load_secret(settings, "secret")
    tokens.load_secret(settings, "push_secret")
    password = asyncio.run(_demo_shop(settings))
    api = settings.api_url
    creds = (f"shop {settings.demo_shop}, password {password}" if password
             else "log in with a shop created by `kefu shop create`")
    return "\n".join([
        f"kefu is running: {settings.comet_workers} comet worker(s), codec {tlv.IMPLEMENTATION}, "
        f"redis {settings.redis_url}",
        f"  visitor page : {api}/open/im?shop_id={settings.demo_shop}",
        f"  agent console: {api}/info.html   ({creds})",
        f"  WebSocket    : {settings.ws_url}    goim TCP: {settings.host}:{settings.tcp_port}",
        "Stop with Ctrl-C (SIGTERM); SIGHUP restarts the comet workers one by one.",
    ])
