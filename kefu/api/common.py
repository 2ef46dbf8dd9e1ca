"""What every route shares: the app context, parameters, client identity,
same-origin checks, JSON answers and the API's own error classes.

Parameters are read the way the seed's pages send them: query string,
urlencoded or multipart form, or a JSON object body, merged in that order
(a body value wins over a query value of the same name).  Handlers only
ever see `dict[str, str]`; a nested JSON value for a field is a 400.
"""
from __future__ import annotations

import functools
import ipaddress
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..config import Settings
from ..errors import AuthError, BadRequest, KefuError
from .metrics import Metrics

JSON_TYPE = "application/json"
COOKIE_MID = "kefu_mid"            # visitor id, returns a visitor to their conversation
COOKIE_KEY = "kefu_key"            # visitor/agent key for pages that do not send it (path /open)
COOKIE_SESSION = "kefu_session"    # agent session (signed shop id + expiry)
MID_COOKIE_AGE = 365 * 24 * 3600
MAX_PARAM_LEN = 16 * 1024          # one parameter; messages are bounded again by msg_max_len


class LoginRequired(AuthError):
    """No agent session, or an expired/forged one: log in again."""
    http_status = 401


class Forbidden(AuthError):
    """Authenticated, but not allowed here (other shop, blocked, wrong room)."""
    http_status = 403


class PayloadTooLarge(BadRequest):
    http_status = 413


@dataclass
class Ctx:
    """Everything a handler needs, built once by make_app."""

    settings: Settings
    store: Any
    signer: Any
    push_secret: bytes
    metrics: Metrics = field(default_factory=Metrics)
    secure_cookies: bool = False
    page_csp: str = ""
    chat_csp: str = ""
    upload_dir: Any = None
    frontend_dir: Any = None
    inflight: int = 0                 # requests inside a handler right now (graceful stop)
    stopping: bool = False            # draining: answers close their connection


CTX = web.AppKey("kefu_ctx", Ctx)


def ctx_of(request: web.Request) -> Ctx:
    return request.app[CTX]


# -- answers -------------------------------------------------------------------
def ok(payload: dict | None = None, status: int = 200) -> web.Response:
    body = {"success": True}
    if payload:
        body.update(payload)
    return web.Response(body=orjson.dumps(body), status=status, content_type=JSON_TYPE)


def raw_json(body: bytes, status: int = 200, headers=None) -> web.Response:
    return web.Response(body=body, status=status, content_type=JSON_TYPE, headers=headers)


def retry_after(exc: KefuError) -> str | None:
    seconds = getattr(exc, "retry_after", None)
    return None if seconds is None else str(max(1, math.ceil(seconds)))


# -- parameters ----------------------------------------------------------------
def _scalar(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return "" if value is None else ("1" if value else "0")
    if isinstance(value, (int, float)):
        return str(value)
    raise BadRequest(f"invalid {name}")


async def params(request: web.Request) -> dict[str, str]:
    """Query + form or JSON body, flattened to strings (first value of a repeated name)."""
    out: dict[str, str] = {}
    for k, v in request.query.items():
        out.setdefault(k, v)
    if request.method in ("POST", "PUT", "PATCH") and request.body_exists:
        ctype = request.content_type
        if ctype == JSON_TYPE or ctype.endswith("+json"):
            raw = await request.read()
            if raw.strip():
                try:
                    data = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise BadRequest("invalid JSON body") from None
                if not isinstance(data, dict):
                    raise BadRequest("JSON body must be an object")
                out.update({str(k): _scalar(str(k), v) for k, v in data.items()})
        elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            try:
                form = await request.post()
            except web.HTTPException:
                raise                                   # 413 from client_max_size
            except (ValueError, LookupError, AssertionError, HttpProcessingError):
                # bad UTF-8 (UnicodeDecodeError), an unknown charset (LookupError), a
                # multipart body without or with a broken boundary or part headers
                raise BadRequest("invalid form body") from None
            for k in form.keys():
                v = form.get(k)
                if isinstance(v, str):
                    out[k] = v
    for k, v in out.items():
        if len(v) > MAX_PARAM_LEN:
            raise PayloadTooLarge(f"parameter {k} too long")
    return out


def need(p: dict[str, str], name: str) -> str:
    value = p.get(name, "")
    if value == "":
        raise BadRequest(f"missing {name}")
    return value


def int_param(p: dict[str, str], name: str, default: int | None = None,
              lo: int = 0, hi: int = (1 << 53) - 1) -> int | None:
    raw = p.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"invalid {name}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} out of range")
    return value


# -- who is asking -------------------------------------------------------------
def client_ip(request: web.Request) -> str:
    """The peer address, or the last X-Forwarded-For hop when trust_proxy is set."""
    ip = request.remote or "unknown"
    if ctx_of(request).settings.trust_proxy:
        fwd = request.headers.get("X-Forwarded-For", "")
        last = fwd.rsplit(",", 1)[-1].strip()
        if last:
            ip = last
    return ip


@functools.lru_cache(maxsize=65_536)          # ipaddress parsing was ~3 % of a /open/push
def ip_bucket(ip: str) -> str:
    """Rate-limit identity of an address: IPv4 as is, IPv6 by its /64."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64]
    if addr.version == 6:
        if addr.ipv4_mapped:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False).network_address) + "/64"
    return str(addr)


def same_origin(request: web.Request) -> bool:
    """CSRF guard for cookie-authenticated writes.

    A browser sends Origin (or at least Referer) with a cross-site POST; when
    present, its host must be ours.  No header at all means a non-browser
    client, which cannot be driven by another site, so it passes.  "null"
    (sandboxed frames, privacy modes) does not pass.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        origin = request.headers.get("Referer")
        if origin is None:
            return True
    if origin == "null":
        return False
    host = urlsplit(origin).netloc.lower()
    if not host:
        return False
    ours = {request.host.lower()}
    public = ctx_of(request).settings.public_url
    if public:
        ours.add(urlsplit(public).netloc.lower())
    return host in ours


def cookie_args(request: web.Request, path: str = "/", max_age: int | None = None) -> dict:
    return {"path": path, "max_age": max_age, "httponly": True, "samesite": "Lax",
            "secure": ctx_of(request).secure_cookies or request.secure or None}
