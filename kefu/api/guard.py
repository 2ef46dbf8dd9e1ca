"""Who may do what: keys, agent sessions, blocks and token buckets.

Every write route calls into here before touching the store.  Limits are
Redis token buckets (the store's bucket script, as `store.allow` runs it),
so they hold across API processes and machines; a rate of 0 switches one
off.  All checks of one request (its buckets and the shop's blocks) cost
one Redis round trip together: see `admit`.
"""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from .. import names
from ..errors import AuthError, RateLimited
from .common import (COOKIE_KEY, COOKIE_SESSION, Forbidden, LoginRequired, client_ip,
                     ctx_of, ip_bucket, same_origin)

BURST_MESSAGES = 20        # per sender (issue: "burst 20")
BURST_VISITORS = 20        # new visitors per IP
BURST_UPLOADS = 5
IP_BURST_FACTOR = 5        # per-IP buckets hold this many seconds' worth
LOGIN_WINDOW = 300.0       # login_attempts per shop+IP per this many seconds
LOGIN_IP_FACTOR = 4        # an IP may try this many times more across all shops


@dataclass(frozen=True, slots=True)
class Sender:
    """The authenticated author of a write: a visitor/user key or an agent session."""

    mid: str
    room: str
    shop: str | None
    role: str            # "visitor", "user" or "agent"
    via: str             # "key", "cookie" or "session"


# -- agents -------------------------------------------------------------------
def session_shop(request: web.Request) -> str | None:
    """The shop of a valid agent session cookie, None without one; LoginRequired if bad."""
    cookie = request.cookies.get(COOKIE_SESSION)
    if not cookie:
        return None
    try:
        return ctx_of(request).signer.verify_session(cookie)
    except AuthError as exc:
        raise LoginRequired(f"{exc}: log in again") from None


def require_agent(request: web.Request, shop: str | None) -> str:
    """The logged-in agent's shop, which must be `shop` when one is named."""
    own = session_shop(request)
    if own is None:
        raise LoginRequired("login required")
    if request.method != "GET" and not same_origin(request):
        raise Forbidden("cross-site request refused")
    if shop is not None and shop != own:
        raise Forbidden("wrong shop")
    return own


# -- keys ---------------------------------------------------------------------
def sender_for(request: web.Request, p: dict[str, str], *, room: str, mid: str | None,
               agent_mid) -> Sender:
    """Authenticate a write to `room`.

    In order: an explicit `key` parameter (must bind mid and room); the
    `kefu_key` cookie, same-origin requests only, when it binds this room;
    an agent session whose shop owns the room (the author is then the
    shop's agent identity).  `agent_mid(shop)` names that identity.
    """
    ctx = ctx_of(request)
    key = p.get("key")
    if key:
        claims = ctx.signer.verify_key(key, room=room, **({"mid": mid} if mid else {}))
        return Sender(claims.mid, claims.room, claims.shop, claims.role, "key")
    cookie = request.cookies.get(COOKIE_KEY)
    if cookie and same_origin(request):
        try:
            claims = ctx.signer.verify_key(cookie, room=room, **({"mid": mid} if mid else {}))
        except AuthError:
            claims = None       # a stale or other-room cookie: try the session next
        if claims is not None:
            return Sender(claims.mid, claims.room, claims.shop, claims.role, "cookie")
    shop = session_shop(request)
    if shop is not None:
        if not same_origin(request):
            raise Forbidden("cross-site request refused")
        if names.shop_of(room) != shop:
            raise Forbidden("wrong shop")
        who = agent_mid(shop)
        if mid and mid != who:
            raise Forbidden("agents post as their shop's agent identity")
        return Sender(who, room, shop, "agent", "session")
    if cookie and not same_origin(request):
        raise Forbidden("cross-site request refused")
    raise AuthError("missing key" if not cookie else "key does not match this room")


# -- limits -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Bucket:
    name: str            # metric label and bucket family: "msg:mid", "im:ip", ...
    who: str
    rate: float          # tokens per second; <= 0 switches the bucket off
    burst: float


@dataclass(frozen=True, slots=True)
class Admission:
    """Everything one request must pass: token buckets and a shop's blocks."""

    buckets: tuple[Bucket, ...]
    shop: str | None = None
    whos: tuple[str, ...] = ()


async def admit(request: web.Request, adm: Admission) -> None:
    """Blocked -> Forbidden; an empty bucket -> RateLimited; else pass.

    Every bucket and the block check go to Redis in ONE round trip
    (store.check), instead of one round trip each.
    """
    ctx = ctx_of(request)
    buckets = [b for b in adm.buckets if b.rate > 0]
    blocks = list(adm.whos) if adm.shop else []
    if not buckets and not blocks:
        return
    waits, blocked = await ctx.store.check([(f"{b.name}:{b.who}", b.rate, b.burst) for b in buckets],
                                           adm.shop, blocks)
    if blocked:
        raise Forbidden("blocked by the shop")
    for b, wait in zip(buckets, waits):
        if wait > 0:
            family = b.name.split(":", 1)[0]
            ctx.metrics.rate_limited.inc(family)
            raise RateLimited(f"too many requests ({family}), retry later", retry_after=wait)


def block_ip_id(ip: str) -> str:
    """The `who` of an IP block: "ip:<addr>"; a colon never appears in a mid."""
    return "ip:" + ip_bucket(ip)


def message_admission(request: web.Request, sender: Sender) -> Admission:
    """Blocks and token buckets for one chat message."""
    s = ctx_of(request).settings
    ip = ip_bucket(client_ip(request))
    if sender.role == "agent":      # agents answer many rooms: 4x the rate, no IP bucket, never blocked
        return Admission((Bucket("msg:agent", sender.shop or "", s.rate_messages_per_sender * 4,
                                 BURST_MESSAGES * 4),))
    return Admission((Bucket("msg:mid", sender.mid, s.rate_messages_per_sender, BURST_MESSAGES),
                      Bucket("msg:ip", ip, s.rate_messages_per_ip, s.rate_messages_per_ip * IP_BURST_FACTOR)),
                     sender.shop or names.shop_of(sender.room), (sender.mid, "ip:" + ip))


def upload_admission(request: web.Request, sender: Sender) -> Admission:
    s = ctx_of(request).settings
    ip = ip_bucket(client_ip(request))
    if sender.role == "agent":
        return Admission((Bucket("up:agent", sender.shop or "", s.rate_uploads_per_sender * 4,
                                 BURST_UPLOADS * 4),))
    return Admission((Bucket("up:mid", sender.mid, s.rate_uploads_per_sender, BURST_UPLOADS),
                      Bucket("up:ip", ip, s.rate_uploads_per_ip, s.rate_uploads_per_ip * IP_BURST_FACTOR)),
                     sender.shop or names.shop_of(sender.room), (sender.mid, "ip:" + ip))


def visitor_admission(request: web.Request, shop: str, mid: str, new: bool) -> Admission:
    """/open/im: a blocked visitor or IP is refused; new visitors are limited per IP."""
    s = ctx_of(request).settings
    ip = ip_bucket(client_ip(request))
    buckets = (Bucket("im:ip", ip, s.rate_visitors_per_ip, BURST_VISITORS),) if new else ()
    return Admission(buckets, shop, (mid, "ip:" + ip))


def login_admission(request: web.Request, shop: str) -> Admission:
    s = ctx_of(request).settings
    ip = ip_bucket(client_ip(request))
    n = max(1, s.login_attempts)
    return Admission((Bucket("login:shop", f"{shop}:{ip}", n / LOGIN_WINDOW, n),
                      Bucket("login:ip", ip, n * LOGIN_IP_FACTOR / LOGIN_WINDOW, n * LOGIN_IP_FACTOR)))
