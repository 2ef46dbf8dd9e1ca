"""Images for image messages: POST /upload/file, GET /upload/<name>.

What is stored is decided by the bytes, never by the client's file name
or content type: the first bytes must be a PNG, JPEG, GIF or WEBP
signature.  The body is streamed to a temporary file and abandoned as
soon as it passes `upload_max_bytes`; a complete, recognised image is
renamed to a generated name (128 random bits + the sniffed extension) in
`<data_dir>/uploads/`.  Serving accepts only names of exactly that shape,
so no path can reach outside the directory, and answers with the sniffed
type, nosniff, inline disposition and a sandboxing CSP.

Auth: the uploader's key (query `key`, or a form field `key` placed
before the file), the `kefu_key` cookie (same-origin only), or an agent
session.  Rate-limited per uploader and per IP like messages.
"""
from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import AuthError, BadRequest, NotFound
from . import guard
from .common import COOKIE_KEY, PayloadTooLarge, ctx_of, ok, same_origin
from .identity import agent_mid

TYPES = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
NAME_RE = re.compile(r"([A-Za-z0-9_-]{22})\.(png|jpg|gif|webp)")
URL_PREFIX = "/upload/"
SNIFF_BYTES = 12
MULTIPART_SLACK = 16 * 1024          # part headers and boundaries around the file
UPLOAD_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"


def sniff(head: bytes) -> str | None:
    """The image extension of these first bytes, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def is_upload_url(ctx, url: str) -> bool:
    """True for `/upload/<name>` of ours, relative or under settings.api_url."""
    base = ctx.settings.api_url.rstrip("/")
    path = url[len(base):] if base and url.startswith(base + URL_PREFIX) else url
    return path.startswith(URL_PREFIX) and NAME_RE.fullmatch(path[len(URL_PREFIX):]) is not None


def _sender(request: web.Request, key: str | None) -> guard.Sender:
    """The uploader: a key binds no particular room here, any valid one will do."""
    ctx = ctx_of(request)
    for candidate, via in ((key, "key"), (request.cookies.get(COOKIE_KEY), "cookie")):
        if not candidate or (via == "cookie" and not same_origin(request)):
            continue
        try:
            c = ctx.signer.verify_key(candidate)
        except AuthError:
            if via == "key":
                raise
            continue
        return guard.Sender(c.mid, c.room, c.shop, c.role, via)
    shop = guard.session_shop(request)
    if shop is not None:
        if not same_origin(request):
            raise AuthError("cross-site request refused")
        return guard.Sender(agent_mid(shop), "", shop, "agent", "session")
    raise AuthError("missing key")


async def _save(part, directory: Path, limit: int) -> tuple[str, int]:
    """Stream one part to a temporary file; rename it once it is a whole image."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".tmp-{secrets.token_hex(8)}"
    size, ext, head = 0, None, b""
    try:
        with open(tmp, "wb") as fh:       # local disk, small chunks: not worth an executor hop
            while chunk := await part.read_chunk(1 << 16):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"image larger than {limit} bytes")
                if ext is None:
                    head += chunk
                    if len(head) < SNIFF_BYTES:
                        continue
                    ext = _sniffed(head)
                    chunk, head = head, b""
                fh.write(chunk)
        if ext is None:
            ext = _sniffed(head)      # a tiny file: all of it is in head
            with open(tmp, "wb") as fh:
                fh.write(head)
        name = f"{secrets.token_urlsafe(16)}.{ext}"
        os.replace(tmp, directory / name)
        return name, size
    finally:
        tmp.unlink(missing_ok=True)


async def _small_field(part, limit: int = 4096) -> str:
    data = b""
    while chunk := await part.read_chunk(1024):
        data += chunk
        if len(data) > limit:
            raise BadRequest("form field too long")
    return data.decode("utf-8", "replace")


def _sniffed(head: bytes) -> str:
    ext = sniff(head[:SNIFF_BYTES])
    if ext is None:
        raise BadRequest("not an image (PNG, JPEG, GIF or WEBP)")
    return ext


async def upload(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    limit = ctx.settings.upload_max_bytes
    if (request.content_length or 0) > limit + MULTIPART_SLACK:
        raise PayloadTooLarge(f"image larger than {limit} bytes")
    if request.content_type != "multipart/form-data":
        raise BadRequest("expected multipart/form-data with a file field")
    key = request.query.get("key")
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if part.name == "key" and not part.filename:
                key = await _small_field(part)
                continue
            if part.name != "file":
                await part.release()
                continue
            sender = _sender(request, key)
            await guard.admit(request, guard.upload_admission(request, sender))
            name, size = await _save(part, ctx.upload_dir, limit)
            ctx.metrics.uploads.inc()
            ctx.metrics.upload_bytes.inc(by=size)
            return ok({"url": URL_PREFIX + name, "size": size})
    except (ValueError, LookupError, AssertionError, HttpProcessingError):
        # no or a broken boundary, part headers that do not parse, bad charset
        raise BadRequest("invalid multipart body") from None
    raise BadRequest("missing file")


async def serve(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    m = NAME_RE.fullmatch(name)
    if m is None:
        raise NotFound("no such file")
    path = ctx_of(request).upload_dir / name
    if not path.is_file():
        raise NotFound("no such file")
    return web.FileResponse(path, headers={
        "Content-Type": TYPES[m.group(2)], "Content-Disposition": "inline",
        "Cache-Control": "public, max-age=31536000, immutable",
        "Content-Security-Policy": UPLOAD_CSP, "X-Content-Type-Options": "nosniff"})


def setup(app: web.Application) -> None:
    app.router.add_route("POST", "/upload/file", upload)
    app.router.add_get("/upload/{name}", serve)
