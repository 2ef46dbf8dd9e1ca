"""/open/im and /open/push over real HTTP on a real Redis."""
from __future__ import annotations

import asyncio
import subprocess
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest

from kefu import names
from kefu.api.common import COOKIE_KEY, COOKIE_MID
from kefu.ids import MAX_ID
from tests.api_fixtures import *  # noqa: F403
from tests.conftest import REDIS_SERVER, free_port

pytestmark = pytest.mark.asyncio

PAGE_FIELDS = {"room_id", "accepts", "key", "mid", "nickname", "face", "shop_id", "shop_name",
               "shop_face", "platform", "suburl", "pushurl"}


# -- /open/im -------------------------------------------------------------------
async def test_im_json_new_visitor(api):
    page, s = await api.visitor("8000", nickname="Ann")
    assert PAGE_FIELDS <= set(page)
    assert page["room_id"] == names.room_for("8000", page["mid"])
    assert page["nickname"] == "Ann" and page["shop_name"] == "Shop 8000"
    assert page["pushurl"].endswith("/open/push") and page["suburl"] == api.settings.ws_url
    assert orjson.loads(page["accepts"]) == [1000, 1001, 1002]
    claims = api.signer.verify_key(page["key"], mid=page["mid"], room=page["room_id"])
    assert claims.shop == "8000" and claims.role == "visitor"
    cookies = {c.key: c for c in s.cookie_jar}
    assert cookies[COOKIE_MID].value == page["mid"]
    assert cookies[COOKIE_KEY].value == page["key"]
    for c in cookies.values():
        assert c["httponly"] and c["samesite"] == "Lax"
    prof = await api.store.profile(page["mid"])
    assert prof["nickname"] == "Ann" and prof["room_id"] == page["room_id"]


async def test_im_redirects_to_chat_page_with_params(api):
    s = api.session()
    async with s.get(api.url("/open/im"), params={"shop_id": "8000", "nickname": "Bo"},
                     allow_redirects=False) as r:
        assert r.status == 302
        loc = urlsplit(r.headers["Location"])
    assert loc.path == "/chat.html"
    q = dict(parse_qsl(loc.query, keep_blank_values=True))
    assert PAGE_FIELDS <= set(q) and q["nickname"] == "Bo" and q["shop_id"] == "8000"
    api.signer.verify_key(q["key"], mid=q["mid"], room=q["room_id"])


async def test_im_returning_visitor_keeps_mid_by_cookie(api):
    first, s = await api.visitor("8000")
    again, _ = await api.visitor("8000", session=s)
    assert again["mid"] == first["mid"] and again["room_id"] == first["room_id"]
    other, _ = await api.visitor("8000")          # fresh cookie jar: a new visitor
    assert other["mid"] != first["mid"]


async def test_im_mid_parameter_is_the_merchants_user_id(api):
    page, _ = await api.visitor("8000", mid="user-42")
    assert page["mid"] == "user-42" and page["room_id"] == "8000_user-42"


async def test_im_foreign_mid_ignored_when_im_accept_mid_off(api_factory):
    api = await api_factory(im_accept_mid=False)
    mine, s = await api.visitor("8000")
    page, _ = await api.visitor("8000", session=s, mid="user-42")
    assert page["mid"] == mine["mid"]
    same, _ = await api.visitor("8000", session=s, mid=mine["mid"])
    assert same["mid"] == mine["mid"]


@pytest.mark.parametrize("params,status", [
    ({}, 400),
    ({"shop_id": "no_such"}, 400),          # "_" is not allowed in a shop id
    ({"shop_id": "x" * 40}, 400),
    ({"shop_id": "7777"}, 404),             # well-formed, never created
    ({"shop_id": "8000", "mid": "a b"}, 400),
    ({"shop_id": "8000", "mid": "agent:8000"}, 400),
    ({"shop_id": "8000", "face": "javascript:alert(1)"}, 400),
    ({"shop_id": "8000", "nickname": "x" * 65}, 400),
], ids=["missing-shop", "bad-shop", "long-shop", "unknown-shop", "bad-mid", "agent-mid", "js-face",
        "long-nick"])
async def test_im_rejects(api, params, status):
    async with api.session().get(api.url("/open/im"), params={**params, "format": "json"}) as r:
        assert r.status == status
        body = await r.json()
    assert body["success"] is False and body["msg"]


async def test_im_new_visitor_rate_limited_per_ip(api_factory):
    from aiohttp import DummyCookieJar
    import aiohttp
    api = await api_factory(rate_visitors_per_ip=0.001)      # burst 20, (almost) no refill
    statuses = []
    async with aiohttp.ClientSession(cookie_jar=DummyCookieJar()) as s:
        for _ in range(22):
            async with s.get(api.url("/open/im"), params={"shop_id": "8000", "format": "json"}) as r:
                statuses.append(r.status)
                retry = r.headers.get("Retry-After")
    assert statuses[:20] == [200] * 20 and statuses[-1] == 429
    assert int(retry) >= 1


# -- /open/push -----------------------------------------------------------------
async def test_push_stores_once_and_answers_id(api):
    page, _ = await api.visitor("8000")
    status, body, headers = await api.push(page, "hello <b>world</b><script>x()</script>")
    assert status == 200 and body["success"] is True
    assert 0 < body["id"] <= MAX_ID and body["id_str"] == str(body["id"])
    data = body["data"]
    assert data["msg"] == "hello <b>world</b><script>x()</script>"    # stored as text, verbatim
    assert data["mid"] == page["mid"] and data["room_id"] == page["room_id"] and data["type"] == "text"
    assert headers["Content-Type"].startswith("application/json")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    hist = await api.store.history(page["room_id"])
    assert [orjson.loads(m)["id"] for m in hist.messages] == [body["id"]]


async def test_push_json_body_and_query_only(api):
    page, _ = await api.visitor("8000")
    s = api.session()
    payload = {"type": "text", "msg": "json", "room_id": page["room_id"], "key": page["key"]}
    async with s.post(api.url("/open/push"), params={"mid": page["mid"], "shop_id": "8000"}, json=payload) as r:
        assert r.status == 200 and (await r.json())["data"]["msg"] == "json"
    async with s.post(api.url("/open/push"), params={**payload, "mid": page["mid"], "msg": "query"}) as r:
        assert r.status == 200 and (await r.json())["data"]["msg"] == "query"


async def test_push_idempotent_retry(api):
    page, _ = await api.visitor("8000")
    s1, b1, _ = await api.push(page, "once", client_msg_id="c-1")
    s2, b2, _ = await api.push(page, "once", client_msg_id="c-1")
    s3, b3, _ = await api.push(page, "twice", client_msg_id="c-2")
    assert s1 == s2 == s3 == 200
    assert b2["id"] == b1["id"] and b2["duplicate"] is True and b1["duplicate"] is False
    assert b3["id"] > b1["id"]
    hist = await api.store.history(page["room_id"])
    assert len(hist.messages) == 2


async def test_push_concurrent_retries_store_once(api):
    page, _ = await api.visitor("8000")
    results = await asyncio.gather(*(api.push(page, "race", client_msg_id="same") for _ in range(8)))
    assert {b["id"] for _, b, _ in results} == {results[0][1]["id"]}
    assert len((await api.store.history(page["room_id"])).messages) == 1


async def test_push_marks_own_message_read(api):
    page, _ = await api.visitor("8000")
    _, body, _ = await api.push(page, "mine")
    assert await api.store.offset(page["mid"], page["room_id"]) == body["id"]


@pytest.mark.parametrize("change,status,msg", [
    ({"type": "video"}, 400, "invalid type"),
    ({"msg": ""}, 400, "missing msg"),
    ({"msg": "   "}, 400, "missing msg"),
    ({"msg": "x" * 4001}, 400, "longer than"),
    ({"room_id": None}, 400, "missing room_id"),
    ({"room_id": "bad room"}, 400, "invalid room_id"),
    ({"type": "image", "msg": "https://evil.example/x.png"}, 400, "image"),
    ({"type": "image", "msg": "/upload/../../etc/passwd"}, 400, "image"),
    ({"client_msg_id": "has space"}, 400, "client_msg_id"),
    ({"key": "forged.key"}, 403, "key"),
], ids=["type", "empty", "blank", "too-long", "no-room", "bad-room", "foreign-image", "traversal-image",
        "bad-cmid", "forged-key"])
async def test_push_rejects(api, change, status, msg):
    page, _ = await api.visitor("8000")
    st, body, _ = await api.push(page, **{"msg": "hello", **change})
    assert st == status and body["success"] is False and msg in body["msg"]


async def test_push_key_of_another_room_or_mid(api):
    a, _ = await api.visitor("8000")
    b, _ = await api.visitor("8000")
    st, body, _ = await api.push({**a, "key": b["key"]})
    assert st == 403 and "key" in body["msg"]
    st, body, _ = await api.push({**a, "mid": b["mid"]})          # a's key, b's mid
    assert st == 403
    other_shop, _ = await api.visitor("9000")
    st, body, _ = await api.push({**a, "room_id": other_shop["room_id"], "shop_id": "9000"})
    assert st == 403


async def test_push_room_of_another_shop_param(api):
    page, _ = await api.visitor("8000")
    st, body, _ = await api.push({**page, "shop_id": "9000"})
    assert st == 400 and "shop" in body["msg"]


async def test_push_expired_key(api):
    page, _ = await api.visitor("8000")
    old = api.signer.mint_key(page["mid"], page["room_id"], shop="8000", role="visitor", ttl=-5)
    st, body, _ = await api.push({**page, "key": old})
    assert st == 403 and "expired" in body["msg"]


async def test_push_missing_key_without_cookie(api):
    page, _ = await api.visitor("8000")
    st, body, _ = await api.push({**page, "key": None})
    assert st == 403 and "missing key" in body["msg"]


async def test_push_with_key_cookie_same_origin_only(api):
    page, s = await api.visitor("8000")
    form = {"type": "text", "msg": "via cookie", "room_id": page["room_id"]}
    q = {"mid": page["mid"], "shop_id": "8000"}
    async with s.post(api.url("/open/push"), params=q, data=form) as r:         # no Origin: non-browser
        assert r.status == 200
    async with s.post(api.url("/open/push"), params=q, data=form, headers={"Origin": api.base}) as r:
        assert r.status == 200
    for origin in ("https://evil.example", "null"):
        async with s.post(api.url("/open/push"), params=q, data=form, headers={"Origin": origin}) as r:
            assert r.status == 403
    async with s.post(api.url("/open/push"), params=q, data=form,
                      headers={"Referer": "https://evil.example/page"}) as r:
        assert r.status == 403


async def test_push_oversized_body(api):
    page, _ = await api.visitor("8000")
    s = api.session()
    big = "x" * (api.settings.body_max_bytes + 10)
    async with s.post(api.url("/open/push"), params={"mid": page["mid"]},
                      data={"room_id": page["room_id"], "key": page["key"], "msg": big}) as r:
        assert r.status == 413
        assert (await r.json())["success"] is False


async def test_push_bad_json(api):
    page, _ = await api.visitor("8000")
    s = api.session()
    for raw in (b"{not json", b"[1,2]", b'{"msg": {"nested": 1}}'):
        async with s.post(api.url("/open/push"), params={"mid": page["mid"]}, data=raw,
                          headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400, raw


async def test_push_get_not_allowed(api):
    async with api.session().get(api.url("/open/push")) as r:
        assert r.status == 405 and (await r.json())["success"] is False


async def test_push_rate_limited_per_sender(api_factory):
    api = await api_factory(rate_messages_per_sender=0.001)   # burst 20, (almost) no refill
    page, _ = await api.visitor("8000")
    statuses, retry = [], None
    for i in range(21):
        st, _, headers = await api.push(page, f"m{i}")
        statuses.append(st)
        retry = headers.get("Retry-After")
    assert statuses[:20] == [200] * 20 and statuses[20] == 429
    assert int(retry) >= 1
    other, _ = await api.visitor("8000")             # another visitor is not affected
    assert (await api.push(other))[0] == 200


async def test_push_rate_limited_per_ip(api_factory):
    api = await api_factory(rate_messages_per_ip=0.2)          # burst 1 per IP, one more per 5 s
    statuses = []
    for _ in range(2):
        page, _ = await api.visitor("8000")
        statuses.append((await api.push(page))[0])
    assert statuses == [200, 429]


async def test_push_store_unavailable_is_503(settings, tmp_path):
    port = free_port()
    proc = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from kefu.store import Store
    from tests.api_fixtures import running
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(200):
        try:
            store = await Store.connect(settings.replace(redis_url=url))
            break
        except Exception:  # noqa: BLE001 - waiting for the server to come up
            await asyncio.sleep(0.02)
    try:
        await store.create_shop("8000", name="x", password="pw-8000-secret")
        async with running(settings.replace(redis_url=url), store) as api:
            page, _ = await api.visitor("8000")
            proc.terminate()
            proc.wait(10)
            st, body, _ = await api.push(page)
            assert st == 503 and body["success"] is False
            async with api.session().get(api.url("/healthz")) as r:
                assert r.status == 503 and (await r.json())["redis"] == "down"
    finally:
        proc.kill()
        await store.close()
