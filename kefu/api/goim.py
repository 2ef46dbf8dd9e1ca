"""goim's push API for the merchant's own back end, plus key minting.

Same routes, query parameters and answers as goim's logic service
(`{"code": 0, "message": "", "data": ...}`), guarded by the server-wide
push secret sent as `Authorization: Bearer <secret>`.  Errors keep goim's
shape with `code` = minus the HTTP status (-400, -401, -413, -503...).

Pushes are live, not stored: the body becomes one frame whose op is the
push's `operation`, wrapped in an op-9 batch (PROTOCOL.md §5).  Rooms:
goim names a room `type://id`; kefu rooms are plain ids, so `room` may be
given either way and `type` is only a label (`live://1000` and
`type=live&room=1000` both mean kefu room `1000`).
"""
from __future__ import annotations

import hmac

import orjson
from aiohttp import web

from .. import names
from ..errors import AuthError, BadRequest
from ..protocol import HEADER_SIZE, Op
from .common import JSON_TYPE, PayloadTooLarge, ctx_of, int_param, params

CLIENT_OPS = frozenset({Op.HEARTBEAT, Op.AUTH, Op.SYNC, Op.ACK})   # never pushed to clients
MAX_TARGETS = 1000
MAX_SCAN_ROOMS = 100_000
KEY_MAX = 2048
INT32 = (-(1 << 31), (1 << 31) - 1)


class Unauthorized(AuthError):
    http_status = 401


def answer(data=None) -> web.Response:
    body = {"code": 0, "message": ""}
    if data is not None:
        body["data"] = data
    return web.Response(body=orjson.dumps(body), content_type=JSON_TYPE)


def _authorize(request: web.Request) -> None:
    ctx = ctx_of(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("missing Authorization: Bearer <push secret>")
    if not hmac.compare_digest(token.strip().encode(), ctx.push_secret):
        raise Unauthorized("wrong push secret")


def _operation(request: web.Request) -> int:
    raw = request.query.get("operation", "")
    try:
        op = int(raw)
    except ValueError:
        raise BadRequest("missing or invalid operation") from None
    if not INT32[0] <= op <= INT32[1] or op in CLIENT_OPS:
        raise BadRequest("operation not allowed")
    return op


async def _body(request: web.Request) -> bytes:
    """The raw message, bounded so that the op-9 batch fits a comet frame."""
    ctx = ctx_of(request)
    limit = min(ctx.settings.body_max_bytes, ctx.settings.max_frame - 2 * HEADER_SIZE)
    if (request.content_length or 0) > limit:
        raise PayloadTooLarge(f"body larger than {limit} bytes")
    data = bytearray()
    async for chunk in request.content.iter_chunked(1 << 16):
        data += chunk
        if len(data) > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
    return bytes(data)


def _targets(request: web.Request, name: str, check) -> list[str]:
    values = request.query.getall(name, [])
    if not values:
        raise BadRequest(f"missing {name}")
    if len(values) > MAX_TARGETS:
        raise BadRequest(f"at most {MAX_TARGETS} {name}")
    return [check(v) for v in values]


def _key(value: str) -> str:
    if not value or len(value) > KEY_MAX or "," in value or "\n" in value:
        raise BadRequest("invalid keys")
    return value


def room_of(room: str, typ: str = "") -> str:
    """goim's `type://id` (or `id` with type apart) -> the kefu room id."""
    if "://" in room:
        _typ, _, room = room.partition("://")
    return names.room_id(room)


async def push_keys(request: web.Request) -> web.Response:
    _authorize(request)
    op, keys = _operation(request), _targets(request, "keys", _key)
    body = await _body(request)
    await ctx_of(request).store.push("keys", keys, op, body)
    ctx_of(request).metrics.pushes.inc("keys")
    return answer()


async def push_mids(request: web.Request) -> web.Response:
    _authorize(request)
    op, mids = _operation(request), _targets(request, "mids", names.mid)
    body = await _body(request)
    await ctx_of(request).store.push("mids", mids, op, body)
    ctx_of(request).metrics.pushes.inc("mids")
    return answer()


async def push_room(request: web.Request) -> web.Response:
    _authorize(request)
    op = _operation(request)
    room = room_of(request.query.get("room", "") or _missing("room"), request.query.get("type", ""))
    body = await _body(request)
    await ctx_of(request).store.push_room(room, op, body)
    ctx_of(request).metrics.pushes.inc("room")
    return answer()


async def push_all(request: web.Request) -> web.Response:
    """goim's `speed` and `tag` are accepted and ignored: every worker writes at once."""
    _authorize(request)
    op = _operation(request)
    body = await _body(request)
    await ctx_of(request).store.push("all", [], op, body)
    ctx_of(request).metrics.pushes.inc("all")
    return answer()


def _missing(name: str):
    raise BadRequest(f"missing {name}")


async def _room_table(ctx, typ: str) -> dict[str, int]:
    """room -> live connections for every room with an online mark whose id starts with `typ`.

    goim keeps this table in memory; here it is a SCAN over the rooms'
    online hashes (bounded by MAX_SCAN_ROOMS), fine for an admin call.
    """
    store = ctx.store
    pattern = store.keys.room_online("*")
    head, _, tail = store.keys.room_online("\0").partition("\0")
    rooms: list[str] = []
    async for raw in store.redis.scan_iter(match=pattern, count=1000):
        key = raw.decode()
        room = key[len(head):len(key) - len(tail)]
        if room.startswith(typ):
            rooms.append(room)
            if len(rooms) >= MAX_SCAN_ROOMS:
                break
    counts = await store.room_online_counts(rooms) if rooms else []
    return dict(zip(rooms, counts))


async def online_top(request: web.Request) -> web.Response:
    """goim's top rooms by connections; `type` is a room id prefix (goim: the room type)."""
    _authorize(request)
    q = dict(request.query)
    typ = q.get("type", "")
    limit = int_param(q, "limit", None, 1, 1000)
    if limit is None:
        raise BadRequest("missing limit")
    table = await _room_table(ctx_of(request), typ)
    rows = sorted(((r, n) for r, n in table.items() if n > 0),
                  key=lambda rn: (-rn[1], rn[0]))[:limit]
    return answer([{"room_id": r, "count": n} for r, n in rows])


async def online_room(request: web.Request) -> web.Response:
    _authorize(request)
    typ = request.query.get("type", "")
    rooms = _targets(request, "rooms", lambda r: room_of(r, typ))
    counts = await ctx_of(request).store.room_online_counts(rooms)
    return answer(dict(zip(rooms, counts)))


async def online_total(request: web.Request) -> web.Response:
    _authorize(request)
    ips = conns = 0
    for figures in (await ctx_of(request).store.servers()).values():
        conns += _int(figures.get("connections"))
        ips += _int(figures.get("ips"))
    return answer({"ip_count": ips, "conn_count": conns})


def _int(v) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


async def mint_token(request: web.Request) -> web.Response:
    """POST /goim/token?mid=&room_id=[&shop_id=][&ttl=]: a key for a user the merchant logged in.

    Without room_id and with shop_id, the room is the visitor room of
    (shop, mid).  The role is "visitor" for a shop's visitor room of that
    very mid, "user" otherwise.
    """
    _authorize(request)
    ctx = ctx_of(request)
    p = await params(request)
    mid = names.mid(p.get("mid", "") or _missing("mid"))
    shop = names.shop_id(p["shop_id"]) if p.get("shop_id") else None
    if p.get("room_id"):
        room = room_of(p["room_id"])
    elif shop:
        room = names.room_for(shop, mid)
    else:
        raise BadRequest("missing room_id")
    owner = names.shop_of(room)
    if shop and owner != shop:
        raise BadRequest("room_id does not belong to shop_id")
    role = "visitor" if owner and names.visitor_of(room) == mid else "user"
    ttl = int_param(p, "ttl", ctx.settings.key_ttl, 60, ctx.settings.key_ttl)
    key = ctx.signer.mint_key(mid, room, shop=owner, role=role, ttl=ttl)
    return answer({"key": key, "mid": mid, "room_id": room, "shop_id": owner or "", "role": role,
                   "ttl": ttl})


def setup(app: web.Application) -> None:
    r = app.router
    for path, handler in (("keys", push_keys), ("mids", push_mids), ("room", push_room), ("all", push_all)):
        r.add_route("POST", f"/goim/push/{path}", handler)
    for path, handler in (("top", online_top), ("room", online_room), ("total", online_total)):
        r.add_route("GET", f"/goim/online/{path}", handler)
    r.add_route("POST", "/goim/token", mint_token)
