"""What `kefu run` does once before forking: secrets on disk, a demo shop.

Runs in the supervisor before any worker exists, so every worker reads the
same generated secrets, and the event loop and Redis client it uses are
gone again before the first fork.

Secrets on several nodes: with an external Redis (`--redis-url`, so
possibly other nodes on it) a secret that is not configured is shared
through Redis: the first node stores its generated (or data-dir) value
with SET NX under `secret:<name>`, every node then uses that value and
writes it into its data dir, where the workers read it.  A configured
secret (`KEFU_SECRET`, `KEFU_PUSH_SECRET`, config file) is never written
to Redis: configure the same value on every node, or on none.

Node ids on several nodes: a node id that a live node elsewhere uses is
refused before anything starts (check_node_id).
"""
from __future__ import annotations

import asyncio
import logging
import secrets

from . import tlv, tokens
from .config import Settings
from .errors import ConfigError
from .ids import node_owner

log = logging.getLogger("kefu.bootstrap")

DEMO_FILE = "demo-credentials.txt"


async def share_secrets(store, settings: Settings) -> None:
    """Make every unconfigured secret the one all nodes of this Redis share (one round trip each)."""
    for name in tokens.SECRET_FIELDS:
        if getattr(settings, name):
            continue                     # configured: the operator keeps the nodes in step
        path = settings.data_path / name
        try:
            mine = path.read_bytes().strip().decode()
        except FileNotFoundError:
            mine = secrets.token_urlsafe(32)
        key = store.keys.shared_secret(name)
        pipe = store.redis.pipeline(transaction=False)     # SET NX then GET: the GET sees the winner
        pipe.set(key, mine, nx=True)
        pipe.get(key)
        _, shared = await pipe.execute()
        shared = shared.decode()
        if shared != mine:
            if path.exists():
                log.warning("%s: using the value shared by the nodes of this Redis instead of %s",
                            name, path)
            tokens.write_secret(path, shared)
        elif not path.exists():
            tokens.write_secret(path, shared, exclusive=True)


async def check_node_id(store, settings: Settings) -> None:
    """Refuse a node id that a live node elsewhere (another host or data dir) uses.

    Two nodes with one node id would draw ids from the same worker fields;
    the comet workers' reports (store.servers) name their node and owner.
    Two nodes started at the very same moment are not caught: neither has
    reported yet.
    """
    mine = node_owner(settings.data_path)
    for sid, doc in (await store.servers()).items():
        owner = doc.get("node_owner")
        if sid.split(":", 1)[0] == str(settings.node_id) and owner and owner != mine:
            raise ConfigError(f"node id {settings.node_id} is in use by a live node on this Redis "
                              f"({owner}, comet worker {sid}); give every node its own --node-id")


async def _demo_shop(settings: Settings, shared: bool = False) -> str | None:
    """Create the demo shop on the very first start; return its password if we know it."""
    from .store import Store
    path = settings.data_path / DEMO_FILE
    store = await Store.connect(settings)
    try:
        if shared:
            await check_node_id(store, settings)
            await share_secrets(store, settings)
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


def _safe(url: str) -> str:
    """A Redis URL without its password."""
    head, at, tail = url.rpartition("@")
    return f"{url.split('://')[0]}://***@{tail}" if at else url


def prepare(settings: Settings, shared: bool = False) -> str:
    """Generate secrets, create the demo shop; return the banner to print.

    shared: Redis is external (other nodes may use it): unconfigured secrets
    are shared through it (module docstring).
    """
    password = asyncio.run(_demo_shop(settings, shared))
    tokens.load_secret(settings, "secret")
    tokens.load_secret(settings, "push_secret")
    api = settings.api_url
    creds = (f"shop {settings.demo_shop}, password {password}" if password
             else "log in with a shop created by `kefu shop create`")
    return "\n".join([
        f"kefu is running: node {settings.node_id}, {settings.comet_workers} comet worker(s), {settings.api_workers} API worker(s), "
        f"codec {tlv.IMPLEMENTATION}, redis {_safe(settings.redis_url)}",
        f"  visitor page : {api}/open/im?shop_id={settings.demo_shop}",
        f"  agent console: {api}/info.html   ({creds})",
        f"  WebSocket    : {settings.ws_url}    goim TCP: {settings.host}:{settings.tcp_port}",
        "Stop with Ctrl-C (SIGTERM); SIGHUP restarts the comet workers one by one.",
    ])
