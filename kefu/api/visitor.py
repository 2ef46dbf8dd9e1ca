"""The visitor's routes: /open/im (entry) and /open/push (send a message).

/open/im finds or makes the visitor's identity and hands the chat page
everything it needs, with a fresh signed key bound to the visitor's mid
and room.  Identity, in order: a `mid` parameter (the merchant's own user
id; honoured when `im_accept_mid` is on, which is the seed's behaviour),
else the `kefu_mid` cookie, else a new random mid.  Trade-off of the mid
parameter: whoever can put a mid in the URL becomes that visitor and reads
their history, exactly as in the seed; generated mids are 71 random bits,
so only merchant-chosen (guessable) ids are exposed.  A merchant who logs
its users in should mint keys server-side (POST /goim/token) and turn
`im_accept_mid` off; then a foreign `mid` parameter is ignored.

/open/push authenticates the sender (see guard.sender_for), validates the
message, checks blocks and rate limits, then stores it once and publishes
it (`store.post`), in that order: nothing is published that is not stored.
"""
from __future__ import annotations

import asyncio
import secrets
import time
from urllib.parse import urlencode, urlsplit

import orjson
from aiohttp import web

from .. import names
from ..errors import BadRequest, NotFound
from . import guard
from .common import (COOKIE_KEY, COOKIE_MID, MID_COOKIE_AGE, client_ip, cookie_args, ctx_of,
                     need, ok, params, raw_json)
from .identity import agent_mid, is_agent_mid, sender_mid
from .uploads import is_upload_url

ACCEPTS = "[1000,1001,1002]"     # goim's demo operations; chat messages (op 5) always arrive
PLATFORM = "web"
NICK_MAX, FACE_MAX, URL_MAX = 64, 512, 1024


MID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
MID_LENGTH = 12                  # 71 random bits: not guessable, valid for names.MID_RE


def new_mid() -> str:
    """A fresh visitor id, letters and digits only (no leading "-" to trip a CLI)."""
    return "".join(secrets.choice(MID_ALPHABET) for _ in range(MID_LENGTH))


def _text(p: dict, name: str, limit: int) -> str:
    value = p.get(name, "").strip()
    if len(value) > limit or any(ord(c) < 32 for c in value):
        raise BadRequest(f"invalid {name}")
    return value


def _url(p: dict, name: str, limit: int) -> str:
    value = _text(p, name, limit)
    if value and not (value.startswith("/") and not value.startswith("//")) \
            and urlsplit(value).scheme not in ("http", "https"):
        raise BadRequest(f"invalid {name}")
    return value


def page_params(ctx, *, room: str, key: str, mid: str, nickname: str, face: str, shop: str,
                info: dict) -> dict[str, str]:
    """The parameter set of the chat pages (PROTOCOL.md §5), all strings."""
    api = ctx.settings.api_url
    return {"room_id": room, "accepts": ACCEPTS, "key": key, "mid": mid, "nickname": nickname,
            "face": face, "shop_id": shop, "shop_name": str(info.get("name", "")),
            "shop_face": str(info.get("face", "")), "platform": PLATFORM,
            "suburl": ctx.settings.ws_url, "pushurl": api + "/open/push",
            "uploadurl": api + "/upload/file"}


def page_answer(p: dict, page: str, out: dict[str, str]) -> web.Response:
    if p.get("format") == "json":
        return web.Response(body=orjson.dumps(out), content_type="application/json")
    return web.Response(status=302, headers={"Location": f"{page}?{urlencode(out)}"})


def _identity(request: web.Request, p: dict) -> tuple[str, bool]:
    """(mid, is_new) for this visitor; see the module docstring for the order."""
    ctx = ctx_of(request)
    cookie = request.cookies.get(COOKIE_MID, "")
    if not names.MID_RE.fullmatch(cookie):
        cookie = ""
    asked = p.get("mid", "")
    if asked:
        mid = names.mid(asked)        # never an agent identity: those contain ":"
        if mid == cookie:
            return mid, False
        if ctx.settings.im_accept_mid:
            # counted like a new visitor: otherwise inventing mids would bypass
            # rate_visitors_per_ip (a returning browser has the mid in its cookie)
            return mid, True
    if cookie:
        return cookie, False
    return new_mid(), True


async def open_im(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    p = await params(request)
    shop = names.shop_id(need(p, "shop_id"))
    nickname, face, url = _text(p, "nickname", NICK_MAX), _url(p, "face", FACE_MAX), _url(p, "url", URL_MAX)
    mid, new = _identity(request, p)
    await guard.admit(request, guard.visitor_admission(request, shop, mid, new))
    info = await ctx.store.shop_info(shop)
    if info is None:
        raise NotFound("unknown shop")
    room = names.room_for(shop, mid)
    nickname = nickname or f"访客{mid[:6]}"
    profile = {"mid": mid, "nickname": nickname, "face": face, "shop_id": shop, "room_id": room,
               "url": url, "ip": client_ip(request), "ua": request.headers.get("User-Agent", "")[:256],
               "platform": PLATFORM, "ts": int(time.time())}
    await ctx.store.save_profile(mid, PLATFORM, profile, shop=shop)
    key = ctx.signer.mint_key(mid, room, shop=shop, role="visitor", ttl=ctx.settings.key_ttl)
    resp = page_answer(p, "/chat.html", page_params(ctx, room=room, key=key, mid=mid, nickname=nickname,
                                                    face=face, shop=shop, info=info))
    resp.set_cookie(COOKIE_MID, mid, **cookie_args(request, "/", MID_COOKIE_AGE))
    resp.set_cookie(COOKIE_KEY, key, **cookie_args(request, "/", ctx.settings.key_ttl))
    return resp


def _message(ctx, p: dict) -> tuple[str, str]:
    kind = p.get("type", "") or "text"
    if kind not in names.MESSAGE_TYPES:
        raise BadRequest("invalid type")
    msg = p.get("msg", "")
    if kind == "text":
        if not msg.strip():
            raise BadRequest("missing msg")
        if len(msg) > ctx.settings.msg_max_len:
            raise BadRequest(f"msg longer than {ctx.settings.msg_max_len} characters")
    elif not is_upload_url(ctx, msg):
        raise BadRequest("image msg must be a URL returned by /upload/file")
    return kind, msg


async def open_push(request: web.Request) -> web.Response:
    return raw_json(await push(request, await params(request)))


async def push(request, p: dict[str, str]) -> bytes:
    """/open/push on its parameters: the JSON answer.  Also served by kefu.api.front."""
    ctx = ctx_of(request)
    room = names.room_id(need(p, "room_id"))
    mid = sender_mid(p["mid"]) if p.get("mid") else None
    shop = names.shop_id(p["shop_id"]) if p.get("shop_id") else None
    if shop is not None and names.shop_of(room) not in (None, shop):
        raise BadRequest("room_id does not belong to shop_id")
    cmid = names.client_msg_id(p["client_msg_id"]) if p.get("client_msg_id") else None
    if is_agent_mid(names.visitor_of(room) or ""):
        raise BadRequest("room_id is not a conversation")      # the agents' shop-wide key room
    kind, msg = _message(ctx, p)
    sender = guard.sender_for(request, p, room=room, mid=mid, agent_mid=agent_mid)
    await guard.admit(request, guard.message_admission(request, sender))
    posted = await ctx.store.post(room=room, mid=sender.mid, shop=sender.shop or names.shop_of(room) or "",
                                  type=kind, msg=msg, client_msg_id=cmid, ack_as=sender.mid)
    m = ctx.metrics
    if posted.duplicate:
        m.duplicates.inc()
    else:
        m.stored.inc()
        m.published.inc()
    return b'{"success":true,"id":%d,"id_str":"%d","duplicate":%s,"data":%s}' % (
        posted.id, posted.id, b"true" if posted.duplicate else b"false", posted.json or b"null")


async def read_mark(request: web.Request) -> web.Response:
    """How far the other side of a conversation has read (`seq`), and the caller (`own`).

    For a visitor the other side is the shop's agents; for an agent, the
    visitor.  Same credentials as /open/push (key, key cookie, agent session).
    """
    ctx = ctx_of(request)
    p = await params(request)
    room = names.room_id(need(p, "room_id"))
    sender = guard.sender_for(request, p, room=room, mid=None, agent_mid=agent_mid)
    shop, visitor = names.shop_of(room), names.visitor_of(room)
    if shop is None or visitor is None or is_agent_mid(visitor):
        raise BadRequest("room_id is not a conversation")
    other = visitor if sender.role == "agent" else agent_mid(shop)
    seq, own = await asyncio.gather(ctx.store.offset(other, room), ctx.store.offset(sender.mid, room))
    return ok({"room_id": room, "seq": seq, "own": own})


def setup(app: web.Application) -> None:
    app.router.add_route("GET", "/open/readmark", read_mark)
    app.router.add_route("GET", "/open/im", open_im)
    app.router.add_route("POST", "/open/im", open_im)
    app.router.add_route("POST", "/open/push", open_push)
