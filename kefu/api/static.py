"""The front end (frontend/) served at /, with cache and security headers.

Only plain files under the front-end directory are served: no directory
listings, no dot-files, no path that resolves outside it (symlinks
included).  HTML is revalidated on every load (it names the assets and
carries the CSP); assets are cached for an hour.  `/` goes to the agent
console.  Security headers (CSP, nosniff, frame policy) come from the
app's response hook, per page.
"""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

from ..errors import NotFound
from .common import ctx_of

TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
         ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".webp": "image/webp", ".ico": "image/x-icon", ".json": "application/json",
         ".woff2": "font/woff2", ".woff": "font/woff", ".txt": "text/plain", ".mp3": "audio/mpeg",
         ".map": "application/json", ".webmanifest": "application/manifest+json"}
HTML_CACHE = "no-cache"
ASSET_CACHE = "public, max-age=3600"


def resolve(root: Path, rel: str) -> Path:
    """The file `rel` names under `root`, or NotFound; never a path outside root."""
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") or p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
        raise NotFound("not found")
    root = root.resolve()
    path = (root / rel).resolve()
    if root not in path.parents or not path.is_file() or path.suffix.lower() not in TYPES:
        raise NotFound("not found")
    return path


async def page(request: web.Request) -> web.StreamResponse:
    path = resolve(ctx_of(request).frontend_dir, request.match_info["path"])
    ctype = TYPES[path.suffix.lower()]
    charset = "; charset=utf-8" if ctype.startswith("text/") or ctype.endswith(("json", "+xml")) else ""
    return web.FileResponse(path, headers={
        "Content-Type": ctype + charset,
        "Cache-Control": HTML_CACHE if ctype == "text/html" else ASSET_CACHE})


async def root(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "/info.html"})


def setup(app: web.Application) -> None:
    app.router.add_get("/", root)
    app.router.add_get(r"/{path:(?!open/|goim/|upload/).+}", page)
