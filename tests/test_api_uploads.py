"""/upload/file and /upload/<name>: images only, by content, bounded, safely served."""
from __future__ import annotations

import aiohttp
import pytest

from tests.api_fixtures import *  # noqa: F403

pytestmark = pytest.mark.asyncio

GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" + b"\x00" * 64 + b"\xff\xd9"
WEBP = b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00/\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88\xfe\x07\x00"


def form(data: bytes, filename="a.png", ctype="image/png", key=None) -> aiohttp.FormData:
    f = aiohttp.FormData()
    if key:
        f.add_field("key", key)
    f.add_field("file", data, filename=filename, content_type=ctype)
    return f


async def upload(api, data, session=None, params=None, **kw):
    s = session or api.session()
    async with s.post(api.url("/upload/file"), params=params, data=form(data, **kw)) as r:
        return r.status, await r.json()


@pytest.mark.parametrize("data,ext,ctype", [(png_bytes(), "png", "image/png"), (GIF, "gif", "image/gif"),
                                            (JPEG, "jpg", "image/jpeg"), (WEBP, "webp", "image/webp")],
                         ids=["png", "gif", "jpeg", "webp"])
async def test_upload_and_serve(api, data, ext, ctype):
    page, _ = await api.visitor("8000")
    st, body = await upload(api, data, params={"key": page["key"]}, filename="photo.exe",
                            ctype="application/octet-stream")
    assert st == 200 and body["success"] and body["url"].endswith("." + ext)
    assert body["size"] == len(data)
    async with api.session().get(api.url(body["url"])) as r:
        assert r.status == 200 and await r.read() == data
        h = r.headers
    assert h["Content-Type"] == ctype and h["X-Content-Type-Options"] == "nosniff"
    assert h["Content-Disposition"] == "inline" and "sandbox" in h["Content-Security-Policy"]
    # the URL is accepted as an image message; a made-up one is not
    st, msg, _ = await api.push(page, body["url"], type="image")
    assert st == 200 and msg["data"]["type"] == "image" and msg["data"]["msg"] == body["url"]
    st, _, _ = await api.push(page, api.base + body["url"], type="image")
    assert st == 200


async def test_upload_key_in_form_field_cookie_or_session(api):
    page, vs = await api.visitor("8000")
    assert (await upload(api, GIF, key=page["key"]))[0] == 200          # field before the file
    assert (await upload(api, GIF, session=vs))[0] == 200               # kefu_key cookie
    agent = await api.agent("8000")
    assert (await upload(api, GIF, session=agent))[0] == 200            # agent session


@pytest.mark.parametrize("data,name", [
    (b"<html><script>alert(1)</script></html>", "x.png"),
    (b"%PDF-1.4 not an image", "x.gif"),
    (b"\x89PN", "tiny.png"),
    (b"", "empty.png"),
    (b"GIF8", "short.gif"),
], ids=["html-as-png", "pdf", "truncated-png", "empty", "short-gif"])
async def test_upload_rejects_non_images(api, data, name):
    page, _ = await api.visitor("8000")
    st, body = await upload(api, data, params={"key": page["key"]}, filename=name)
    assert st == 400 and body["success"] is False
    assert [p.name for p in (api.settings.data_path / "uploads").glob("*")] == []


async def test_upload_too_big(api_factory):
    api = await api_factory(upload_max_bytes=4096)
    page, _ = await api.visitor("8000")
    st, body = await upload(api, png_bytes(extra=8000), params={"key": page["key"]})
    assert st == 413 and body["success"] is False
    assert list((api.settings.data_path / "uploads").glob("*")) == []
    st, body = await upload(api, png_bytes(extra=1000), params={"key": page["key"]})
    assert st == 200


async def test_upload_too_big_streamed_without_length(api_factory):
    """Chunked body (no Content-Length): the limit is enforced while streaming."""
    api = await api_factory(upload_max_bytes=64 * 1024)
    page, _ = await api.visitor("8000")

    async def chunks():
        yield b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
        yield png_bytes()
        for _ in range(40):
            yield b"x" * 8192
        yield b"\r\n--B--\r\n"
    s = api.session()
    try:
        async with s.post(api.url("/upload/file"), params={"key": page["key"]}, data=chunks(),
                          headers={"Content-Type": "multipart/form-data; boundary=B"}) as r:
            assert r.status == 413
    except aiohttp.ClientError:
        pass        # the server may close before the client finished sending: also a refusal
    assert list((api.settings.data_path / "uploads").glob("*")) == []


@pytest.mark.parametrize("how", ["none", "forged", "expired"])
async def test_upload_auth(api, how):
    page, _ = await api.visitor("8000")
    key = {"none": None, "forged": page["key"][:-4] + "AAAA",
           "expired": api.signer.mint_key(page["mid"], page["room_id"], shop="8000", ttl=-1)}[how]
    st, body = await upload(api, GIF, params={"key": key} if key else None)
    assert st == 403 and body["success"] is False


async def test_upload_bad_requests(api):
    page, _ = await api.visitor("8000")
    s = api.session()
    async with s.post(api.url("/upload/file"), params={"key": page["key"]}, data=b"raw") as r:
        assert r.status == 400
    f = aiohttp.FormData()
    f.add_field("other", GIF, filename="a.gif", content_type="image/gif")
    async with s.post(api.url("/upload/file"), params={"key": page["key"]}, data=f) as r:
        assert r.status == 400 and "missing file" in (await r.json())["msg"]


async def test_upload_rate_limited(api_factory):
    api = await api_factory(rate_uploads_per_sender=0.01)
    page, _ = await api.visitor("8000")
    statuses = [(await upload(api, GIF, params={"key": page["key"]}))[0] for _ in range(6)]
    assert statuses == [200] * 5 + [429]


@pytest.mark.parametrize("path", ["/upload/..%2F..%2Fsecret", "/upload/%2e%2e/secret", "/upload/secret",
                                  "/upload/AAAAAAAAAAAAAAAAAAAAAA.exe", "/upload/AAAAAAAAAAAAAAAAAAAAAA.png",
                                  "/upload/.tmp-0123456789abcdef"])
async def test_serve_only_generated_names(api, path):
    (api.settings.data_path / "secret").write_text("top secret")
    async with api.session().get(api.url(path)) as r:
        assert r.status == 404
        assert b"top secret" not in await r.read()
