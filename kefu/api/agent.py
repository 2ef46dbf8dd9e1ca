"""The agent's routes: login/logout, /open/com, /open/finduserlist, blocks.

An agent session is a signed cookie naming one shop (tokens.mint_session).
Every route here requires it and refuses any other shop: the shop is
taken from the session, and a `shop_id` parameter naming another shop is
a 403, so an agent can never read or write another shop's conversations.
Logins are throttled per shop+IP and per IP (Redis token buckets), before
the password is even checked.
"""
from __future__ import annotations

import ipaddress
import time

from aiohttp import web

from .. import names
from ..errors import AuthError, BadRequest, NotFound
from ..store.base import OUTAGES, unavailable
from . import guard
from .common import COOKIE_KEY, COOKIE_SESSION, cookie_args, ctx_of, int_param, need, ok, params
from .identity import agent_mid
from .visitor import page_answer, page_params

PAGE_DEFAULT, PAGE_MAX = 50, 200
BLOCK_DEFAULT, BLOCK_MAX = 3600, 30 * 24 * 3600
SINCE_COOKIE = "kefu_since"      # ms of the last finduserlist call, for flag=1


def _shop_param(p: dict) -> str | None:
    return names.shop_id(p["shop_id"]) if p.get("shop_id") else None


async def login(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    p = await params(request)
    shop = names.shop_id(need(p, "shop_id"))
    password = need(p, "password")
    await guard.admit(request, guard.login_admission(request, shop))
    if not await ctx.store.check_agent(shop, password):
        raise AuthError("wrong shop id or password")
    info = await ctx.store.shop_info(shop) or {}
    ttl = ctx.settings.session_ttl
    resp = ok({"shop_id": shop, "shop_name": str(info.get("name", "")),
               "shop_face": str(info.get("face", "")), "mid": agent_mid(shop),
               "expires": int(time.time()) + ttl})
    resp.set_cookie(COOKIE_SESSION, ctx.signer.mint_session(shop, ttl), **cookie_args(request, "/", ttl))
    return resp


async def logout(request: web.Request) -> web.Response:
    resp = ok()
    for name, path in ((COOKIE_SESSION, "/"), (COOKIE_KEY, "/"), (SINCE_COOKIE, "/open")):
        resp.del_cookie(name, path=path)
    return resp


async def whoami(request: web.Request) -> web.Response:
    """GET /open/session: the logged-in shop, or 401 (the console's first call)."""
    shop = guard.require_agent(request, None)
    info = await ctx_of(request).store.shop_info(shop) or {}
    return ok({"shop_id": shop, "shop_name": str(info.get("name", "")),
               "shop_face": str(info.get("face", "")), "mid": agent_mid(shop)})


async def open_com(request: web.Request) -> web.Response:
    """An agent opens the conversation with visitor `mid` (`seq`: read up to it).

    Without `mid`: a shop-wide agent key (room `<shop>_agent:<shop>`, which
    is no conversation) for a console that only needs its socket: an agent
    connection receives every conversation of its shop whatever its room.
    """
    ctx = ctx_of(request)
    p = await params(request)
    shop = guard.require_agent(request, _shop_param(p))
    visitor = names.mid(p["mid"]) if p.get("mid") else None
    seq = int_param(p, "seq")
    me = agent_mid(shop)
    room = names.room_for(shop, visitor or me)
    info = await ctx.store.shop_info(shop)
    if info is None:
        raise NotFound("unknown shop")
    if seq and visitor:
        await mark_read(ctx, room, me, seq)
    key = ctx.signer.mint_key(me, room, shop=shop, role="agent", ttl=ctx.settings.key_ttl)
    out = page_params(ctx, room=room, key=key, mid=me, nickname=str(info.get("name", "")),
                      face=str(info.get("face", "")), shop=shop, info=info)
    out["visitor"] = visitor or ""
    resp = page_answer(p, "/info.html", out)
    resp.set_cookie(COOKIE_KEY, key, **cookie_args(request, "/", ctx.settings.key_ttl))
    return resp


async def mark_read(ctx, room: str, reader: str, seq: int) -> int:
    """Move reader's offset forward and tell the room's live members (store.mark_read)."""
    try:
        return await ctx.store.mark_read(reader, room, seq)
    except OUTAGES as exc:
        raise unavailable(exc) from exc


def _paging(p: dict) -> tuple[int, int]:
    limit = int_param(p, "limit", PAGE_DEFAULT, 1, PAGE_MAX)
    page = int_param(p, "page", None, 1, 1_000_000)
    offset = int_param(p, "offset", 0, 0, 10_000_000)
    if page is not None:
        offset = (page - 1) * limit
    return offset, limit


async def find_user_list(request: web.Request) -> web.Response:
    """The shop's conversations, newest first (PROTOCOL.md §5).

    flag=1: only those changed since `since` (ms) if given, else since this
    browser's previous call (remembered in a cookie; the answer's `now` is
    what a client that tracks it itself passes back as `since`).
    """
    ctx = ctx_of(request)
    p = await params(request)
    shop = guard.require_agent(request, _shop_param(p))
    offset, limit = _paging(p)
    now = int(time.time() * 1000)
    since = None
    if p.get("flag") == "1":
        since = int_param(p, "since", None, 0, 1 << 53)
        if since is None:
            raw = request.cookies.get(SINCE_COOKIE, "")
            since = int(raw) if raw.isdigit() and len(raw) < 16 else 0
    rows = await ctx.store.conversations(shop, changed_since_ms=since, offset=offset, limit=limit,
                                         reader=agent_mid(shop))
    resp = ok({"data": rows, "now": now, "offset": offset, "limit": limit,
               "more": len(rows) >= limit})
    resp.set_cookie(SINCE_COOKIE, str(now), **cookie_args(request, "/open", ctx.settings.session_ttl))
    return resp


async def block(request: web.Request) -> web.Response:
    """Block a visitor (mid) and/or an IP for `seconds` (0 unblocks) in the agent's shop.

    `ip=1` blocks the address the visitor last came from (from its profile),
    so the agent never needs to see it; `ip=<address>` blocks that one.
    """
    ctx = ctx_of(request)
    p = await params(request)
    shop = guard.require_agent(request, _shop_param(p))
    seconds = int_param(p, "seconds", BLOCK_DEFAULT, 0, BLOCK_MAX)
    whos = []
    mid = names.mid(p["mid"]) if p.get("mid") else None
    if mid:
        whos.append(mid)
    ip_arg = p.get("ip", "")
    if ip_arg in ("1", "true"):
        if not mid:
            raise BadRequest("ip=1 needs the visitor's mid")
        ip = await _visitor_ip(ctx, mid)
        if not ip:
            raise NotFound("no known address for this visitor")
        whos.append(guard.block_ip_id(ip))
    elif ip_arg and ip_arg not in ("0", "false"):
        whos.append(guard.block_ip_id(_ip(ip_arg)))
    if not whos:
        raise BadRequest("missing mid or ip")
    for who in whos:
        if seconds:
            await ctx.store.block(shop, who, seconds)
        else:
            await ctx.store.unblock(shop, who)
    return ok({"blocked": whos, "seconds": seconds})


def _ip(raw: str) -> str:
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise BadRequest("invalid ip") from None


async def _visitor_ip(ctx, mid: str) -> str | None:
    prof = await ctx.store.profile(mid)
    ip = prof.get("ip") if isinstance(prof, dict) else None
    return ip if isinstance(ip, str) and ip else None


def setup(app: web.Application) -> None:
    r = app.router
    r.add_route("POST", "/open/login", login)
    r.add_route("POST", "/open/logout", logout)
    r.add_route("GET", "/open/session", whoami)
    r.add_route("GET", "/open/com", open_com)
    r.add_route("POST", "/open/com", open_com)
    r.add_route("GET", "/open/finduserlist", find_user_list)
    r.add_route("POST", "/open/finduserlist", find_user_list)
    r.add_route("POST", "/open/block", block)

