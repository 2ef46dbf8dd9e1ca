"""make_app(): the API worker's aiohttp application and its edge.

The edge middleware is the only place that turns exceptions into answers:
a KefuError becomes its `http_status` with `{"success": false, "msg": ...}`
(kefu routes) or `{"code": -status, "message": ...}` (goim routes), a
RateLimited adds Retry-After, anything unexpected is logged once and
answered 500 without details.  It also times every request for /metrics
and writes the optional access log line.

Headers every answer carries are added in `on_response_prepare`, so they
reach static files and error pages alike: nosniff, a referrer policy, and
a Content-Security-Policy (strict `default-src 'none'` for JSON; the page
policy for HTML; chat.html alone may be framed, by merchants' widgets).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from ..config import Settings
from ..errors import KefuError
from .common import CTX, JSON_TYPE, Ctx, client_ip, retry_after
from .metrics import Metrics

log = logging.getLogger("kefu.api")
access_log = logging.getLogger("kefu.api.access")

JSON_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
GOIM_PREFIX = "/goim/"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def page_csp(settings: Settings, framable: bool) -> str:
    connect = " ".join(dict.fromkeys(x for x in ("'self'", "ws:", "wss:", _origin(settings.ws_url),
                                                 _origin(settings.api_url)) if x))
    return ("default-src 'self'; "
            f"connect-src {connect}; "
            "img-src 'self' data: blob:; script-src 'self'; style-src 'self'; font-src 'self'; "
            "media-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
            f"frame-ancestors {'*' if framable else chr(39) + 'none' + chr(39)}")


def error_body(request: web.Request, status: int, message: str) -> bytes:
    if request.path.startswith(GOIM_PREFIX):
        return orjson.dumps({"code": -status, "message": message})
    return orjson.dumps({"success": False, "msg": message})


def error_response(request: web.Request, status: int, message: str, headers=None) -> web.Response:
    return web.Response(body=error_body(request, status, message), status=status,
                        content_type=JSON_TYPE, headers=headers)


def error_parts(exc: KefuError) -> tuple[int, str, dict | None]:
    """(status, message, extra headers) of the answer to a KefuError."""
    ra = retry_after(exc)
    return exc.http_status, str(exc) or type(exc).__name__, {"Retry-After": ra} if ra else None


def _route_name(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None or info.http_exception is not None:
        return "unmatched"
    return resource.canonical


@web.middleware
async def edge(request: web.Request, handler):
    ctx: Ctx = request.app[CTX]
    t0 = time.perf_counter()
    kind = None
    ctx.inflight += 1
    try:
        resp = await handler(request)
    except KefuError as exc:
        kind = type(exc).__name__
        status, message, headers = error_parts(exc)
        resp = error_response(request, status, message, headers=headers)
    except web.HTTPException as exc:
        if exc.status < 400:      # a redirect raised by aiohttp itself: count it, let it through
            record(request, ctx, exc.status, None, time.perf_counter() - t0)
            raise
        kind = f"http{exc.status}"
        resp = error_response(request, exc.status, exc.reason, headers=_keep(exc))
    except Exception:  # noqa: BLE001 - the edge: log once, answer 500
        kind = "internal"
        log.exception("%s %s failed", request.method, request.path)
        resp = error_response(request, 500, "internal error")
    finally:
        ctx.inflight -= 1
    record(request, ctx, resp.status, kind, time.perf_counter() - t0)
    return resp


def record(request, ctx: Ctx, status: int, kind: str | None, dt: float, route: str | None = None) -> None:
    """Count and time one answered request (and write its access-log line when on)."""
    route = route or _route_name(request)
    m = ctx.metrics
    m.requests.inc(route, request.method, status)
    m.latency.observe(dt, route)
    if kind:
        m.errors.inc(kind)
    if ctx.settings.access_log:
        access_log.info("method=%s path=%s status=%d ms=%.2f ip=%s%s", request.method, request.path,
                        status, dt * 1000, client_ip(request), f" error={kind}" if kind else "")


def _keep(exc: web.HTTPException) -> dict:
    """Headers of an aiohttp HTTP error worth keeping (Allow on 405)."""
    return {k: v for k, v in exc.headers.items() if k in ("Allow",)}


async def _security_headers(request: web.Request, resp: web.StreamResponse) -> None:
    if request.app[CTX].stopping:
        resp.force_close()            # draining: no keep-alive into a stopping worker
    h = resp.headers
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "same-origin")
    if "Content-Security-Policy" not in h:
        ctype = resp.content_type if hasattr(resp, "content_type") else ""
        if ctype == "text/html":
            ctx = request.app[CTX]
            framable = request.path.rstrip("/").endswith("/chat.html")
            h["Content-Security-Policy"] = ctx.chat_csp if framable else ctx.page_csp
            if not framable:
                h.setdefault("X-Frame-Options", "DENY")
        else:
            h["Content-Security-Policy"] = JSON_CSP
    if request.path.startswith(("/open/", GOIM_PREFIX)) or request.path in ("/healthz", "/metrics"):
        h.setdefault("Cache-Control", "no-store")


def default_frontend() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "frontend"


def make_app(settings: Settings, store, *, signer=None, push_secret: bytes | None = None,
             metrics: Metrics | None = None) -> web.Application:
    """The whole HTTP API on `store`; secrets come from settings/data dir unless given."""
    from .. import tokens
    from . import agent, goim, ops, static, uploads, visitor
    if signer is None:
        signer = tokens.Signer(tokens.load_secret(settings, "secret"))
    if push_secret is None:
        push_secret = tokens.load_secret(settings, "push_secret")
    ctx = Ctx(settings=settings, store=store, signer=signer, push_secret=push_secret,
              metrics=metrics or Metrics(),
              secure_cookies=settings.api_url.startswith("https:"),
              page_csp=page_csp(settings, framable=False), chat_csp=page_csp(settings, framable=True),
              upload_dir=settings.upload_path,
              frontend_dir=Path(settings.frontend_dir) if settings.frontend_dir else default_frontend())
    app = web.Application(middlewares=[edge], client_max_size=settings.body_max_bytes)
    app[CTX] = ctx
    app.on_response_prepare.append(_security_headers)
    for module in (visitor, agent, goim, uploads, ops, static):   # static last: it is the catch-all
        module.setup(app)
    return app
