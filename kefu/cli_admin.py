"""Admin subcommands of `python -m kefu`: shops, keys, secrets.

    kefu shop create SHOP_ID --name NAME --password PW [--face URL]
    kefu token --mid M --room R [--ttl S] [--role visitor|agent|user]
    kefu secret show-push
    kefu secret set-push [VALUE]

They work whether or not `kefu run` is up: with --redis-url they use that
Redis; otherwise the embedded Redis of --data-dir, the running one if
there is one, else started for the moment and stopped afterwards.
Failures are KefuError subclasses, which `kefu.__main__` prints as one
line with a non-zero exit.
"""
from __future__ import annotations

import asyncio
import contextlib
import getpass
import secrets
import sys
from pathlib import Path

from . import names
from .errors import BadRequest, ConfigError
from .redis_server import EmbeddedRedis
from .tokens import ROLES, Signer, load_secret, write_secret


@contextlib.contextmanager
def redis_url(settings):
    """settings.redis_url, or the data dir's embedded Redis (running or started for now)."""
    if settings.redis_url:
        yield settings.redis_url
        return
    embedded = EmbeddedRedis(settings.data_dir)
    url = embedded.running_url() or embedded.start()
    try:
        yield url
    finally:
        embedded.stop(only_if_idle=True)


async def _with_store(settings, work):
    from .store import Store
    store = await Store.connect(settings)
    try:
        return await work(store)
    finally:
        await store.close()


def run_with_store(settings, work):
    """Run `await work(store)` against the Redis the settings point at."""
    with redis_url(settings) as url:
        return asyncio.run(_with_store(settings.replace(redis_url=url), work))


# -- shop ---------------------------------------------------------------
def _shop_create(settings, args) -> int:
    shop = names.shop_id(args.shop_id)
    password = args.password
    if password is None:
        if not sys.stdin.isatty():
            raise BadRequest("--password is required")
        password = getpass.getpass(f"password for shop {shop}: ")
    if not password:
        raise BadRequest("the password must not be empty")
    name = args.name if args.name is not None else shop

    async def work(store):
        await store.create_shop(shop, name=name, password=password, face=args.face or "")
    run_with_store(settings, work)
    print(f"shop {shop} saved")
    return 0


def _shop_help(parser):
    def run(settings, args) -> int:
        parser.print_help(sys.stderr)
        return 2
    return run


# -- token --------------------------------------------------------------
def _token(settings, args) -> int:
    mid, room = names.mid(args.mid), names.room_id(args.room)
    shop = args.shop or names.shop_of(room)
    if shop is not None:
        names.shop_id(shop)
    ttl = args.ttl if args.ttl is not None else settings.key_ttl
    if ttl <= 0:
        raise BadRequest("--ttl must be positive")
    signer = Signer(load_secret(settings, "secret"))
    print(signer.mint_key(mid, room, shop=shop, role=args.role, ttl=ttl))
    return 0


# -- secret -------------------------------------------------------------
def _show_push(settings, args) -> int:
    print(load_secret(settings, "push_secret").decode())
    return 0


def _set_push(settings, args) -> int:
    if settings.push_secret:
        raise ConfigError("push_secret is set in the configuration (file or KEFU_PUSH_SECRET); change it there")
    value = args.value or secrets.token_urlsafe(32)
    write_secret(Path(settings.data_dir) / "push_secret", value)
    if settings.redis_url:      # nodes sharing this Redis take it at their next start (kefu.bootstrap)
        async def work(store):
            await store.redis.set(store.keys.shared_secret("push_secret"), value)
        run_with_store(settings, work)
    print(value)
    print("restart kefu run for the API to use it", file=sys.stderr)
    return 0


def add_parsers(subparsers) -> None:
    """Register `shop`, `token` and `secret`; each leaf sets func(settings, args) -> int."""
    shop = subparsers.add_parser("shop", help="create or update a shop and its agent password")
    shop_sub = shop.add_subparsers(dest="shop_command", metavar="ACTION")
    shop.set_defaults(func=_shop_help(shop))
    create = shop_sub.add_parser("create", help="create or update a shop (works with or without kefu run)")
    create.add_argument("shop_id", metavar="SHOP_ID")
    create.add_argument("--name", help="display name (default: the id)")
    create.add_argument("--password", help="agent password (asked for when omitted on a terminal)")
    create.add_argument("--face", help="logo URL")
    create.add_argument("--redis-url", help="redis://, unix://; none = the data dir's embedded Redis")
    create.set_defaults(func=_shop_create)

    token = subparsers.add_parser("token", help="print a signed connection key")
    token.add_argument("--mid", required=True)
    token.add_argument("--room", required=True)
    token.add_argument("--shop", help="shop the key binds (default: read off the room id)")
    token.add_argument("--role", choices=ROLES, default="visitor")
    token.add_argument("--ttl", type=int, help="lifetime in seconds (default: key_ttl)")
    token.set_defaults(func=_token)

    secret = subparsers.add_parser("secret", help="the goim push API secret")
    secret_sub = secret.add_subparsers(dest="secret_command", metavar="ACTION")
    secret.set_defaults(func=_shop_help(secret))
    show = secret_sub.add_parser("show-push", help="print the push API secret (generated on first use)")
    show.set_defaults(func=_show_push)
    set_push = secret_sub.add_parser("set-push", help="set (or regenerate) the push API secret")
    set_push.add_argument("value", nargs="?", help="the new secret (default: a random one)")
    set_push.add_argument("--redis-url", help="also share it with every node of this Redis")
    set_push.set_defaults(func=_set_push)
