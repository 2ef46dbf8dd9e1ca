"""Agents: login, sessions, /open/com, /open/finduserlist, blocks, shop isolation."""
from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl, urlsplit

import pytest

from kefu.api.common import COOKIE_SESSION
from kefu.store import agent_mid
from tests.api_fixtures import *  # noqa: F403

pytestmark = pytest.mark.asyncio


async def _json(resp):
    return resp.status, await resp.json()


# -- login ----------------------------------------------------------------------
async def test_login_sets_httponly_session(api):
    s = api.session()
    async with s.post(api.url("/open/login"), data={"shop_id": "8000", "password": PASSWORD["8000"]}) as r:
        st, body = await _json(r)
    assert st == 200 and body["success"] and body["shop_id"] == "8000" and body["mid"] == "agent:8000"
    cookie = {c.key: c for c in s.cookie_jar}[COOKIE_SESSION]
    assert cookie["httponly"] and cookie["samesite"] == "Lax"
    assert api.signer.verify_session(cookie.value) == "8000"
    async with s.get(api.url("/open/session")) as r:
        assert r.status == 200 and (await r.json())["shop_id"] == "8000"


@pytest.mark.parametrize("form,status", [
    ({"shop_id": "8000", "password": "wrong"}, 403),
    ({"shop_id": "7777", "password": "whatever"}, 403),
    ({"shop_id": "8000"}, 400),
    ({"password": "x"}, 400),
    ({"shop_id": "bad id", "password": "x"}, 400),
], ids=["wrong-password", "unknown-shop", "no-password", "no-shop", "bad-shop"])
async def test_login_failures(api, form, status):
    s = api.session()
    async with s.post(api.url("/open/login"), data=form) as r:
        st, body = await _json(r)
    assert st == status and body["success"] is False
    assert COOKIE_SESSION not in {c.key for c in s.cookie_jar}


async def test_login_brute_force_throttled(api):
    s = api.session()
    statuses = []
    for _ in range(api.settings.login_attempts + 1):
        async with s.post(api.url("/open/login"), data={"shop_id": "8000", "password": "guess"}) as r:
            statuses.append(r.status)
            retry = r.headers.get("Retry-After")
    assert statuses[:-1] == [403] * api.settings.login_attempts and statuses[-1] == 429
    assert int(retry) >= 30
    async with s.post(api.url("/open/login"), data={"shop_id": "8000", "password": PASSWORD["8000"]}) as r:
        assert r.status == 429                     # even the right password waits
    async with s.post(api.url("/open/login"), data={"shop_id": "9000", "password": PASSWORD["9000"]}) as r:
        assert r.status == 200                     # another shop from this IP still may


async def test_logout_clears_session(api):
    s = await api.agent("8000")
    async with s.post(api.url("/open/logout")) as r:
        assert r.status == 200
    async with s.get(api.url("/open/finduserlist")) as r:
        assert r.status == 401


# -- sessions -------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/open/finduserlist", "/open/com?shop_id=8000&mid=abc", "/open/session"])
async def test_agent_routes_refuse_without_session(api, path):
    async with api.session().get(api.url(path)) as r:
        st, body = await _json(r)
    assert st == 401 and body["success"] is False and "login" in body["msg"]


async def test_expired_and_forged_sessions(api):
    for cookie, word in ((api.signer.mint_session("8000", -10), "expired"),
                         ("eyJ4IjoxfQ.AAAA", "session"),
                         (api.signer.mint_key("agent:8000", "8000_x", shop="8000", role="agent", ttl=60), "session")):
        s = api.session()
        s.cookie_jar.update_cookies({COOKIE_SESSION: cookie})
        async with s.get(api.url("/open/finduserlist"), params={"shop_id": "8000"}) as r:
            st, body = await _json(r)
        assert st == 401 and word in body["msg"], body


async def test_agent_cannot_touch_another_shop(api):
    page9, _ = await api.visitor("9000")
    await api.push(page9, "secret of 9000")
    s = await api.agent("8000")
    for path, params in (("/open/finduserlist", {"shop_id": "9000"}),
                         ("/open/com", {"shop_id": "9000", "mid": page9["mid"], "format": "json"})):
        async with s.get(api.url(path), params=params) as r:
            st, body = await _json(r)
        assert st == 403 and body["msg"] == "wrong shop"
    # posting into 9000's room with the 8000 session
    async with s.post(api.url("/open/push"), data={"room_id": page9["room_id"], "msg": "hi"}) as r:
        assert r.status == 403
    # /open/com for shop 8000 with 9000's visitor: a room of 8000, never 9000's history
    async with s.get(api.url("/open/com"), params={"shop_id": "8000", "mid": page9["mid"], "format": "json"}) as r:
        st, body = await _json(r)
    assert st == 200 and body["room_id"] == f"8000_{page9['mid']}"
    async with s.get(api.url("/open/finduserlist")) as r:
        rows = (await r.json())["data"]
    assert all(row["room_id"].startswith("8000_") for row in rows)


# -- /open/com ------------------------------------------------------------------
async def test_com_json_and_redirect(api):
    page, _ = await api.visitor("8000")
    s = await api.agent("8000")
    async with s.get(api.url("/open/com"), params={"shop_id": "8000", "mid": page["mid"], "format": "json"}) as r:
        st, body = await _json(r)
    assert st == 200 and body["room_id"] == page["room_id"] and body["mid"] == agent_mid("8000")
    claims = api.signer.verify_key(body["key"], mid=agent_mid("8000"), room=page["room_id"])
    assert claims.role == "agent" and claims.shop == "8000"
    async with s.get(api.url("/open/com"), params={"mid": page["mid"]}, allow_redirects=False) as r:
        assert r.status == 302
        loc = urlsplit(r.headers["Location"])
    q = dict(parse_qsl(loc.query, keep_blank_values=True))
    assert loc.path == "/info.html" and q["room_id"] == page["room_id"] and q["visitor"] == page["mid"]


@pytest.mark.parametrize("params", [{"mid": "bad mid"}, {"mid": "a:b"}, {"mid": "ok", "seq": "abc"},
                                    {"mid": "ok", "seq": str(1 << 60)}],
                         ids=["bad-mid", "colon-mid", "bad-seq", "huge-seq"])
async def test_com_bad_params(api, params):
    s = await api.agent("8000")
    async with s.get(api.url("/open/com"), params={**params, "format": "json"}) as r:
        assert r.status == 400


async def test_com_seq_marks_read_and_agent_replies(api):
    page, _ = await api.visitor("8000")
    ids = [(await api.push(page, f"m{i}"))[1]["id"] for i in range(3)]
    s = await api.agent("8000")
    async with s.get(api.url("/open/finduserlist")) as r:
        row = (await r.json())["data"][0]
    assert row["num"] == 3 and row["seq"] == 0 and row["last"]["id"] == ids[-1]
    async with s.get(api.url("/open/com"), params={"mid": page["mid"], "seq": ids[1], "format": "json"}) as r:
        com = await r.json()
    async with s.get(api.url("/open/finduserlist")) as r:
        row = (await r.json())["data"][0]
    assert row["seq"] == ids[1] and row["num"] == 1
    # the agent answers with its key (explicit) and with its session alone
    async with s.post(api.url("/open/push"), params={"mid": com["mid"], "shop_id": "8000"},
                      data={"room_id": page["room_id"], "msg": "hi, how can I help?", "key": com["key"]}) as r:
        st, body = await _json(r)
    assert st == 200 and body["data"]["mid"] == "agent:8000"
    async with s.post(api.url("/open/push"), data={"room_id": page["room_id"], "msg": "by session"}) as r:
        st, body = await _json(r)
    assert st == 200 and body["data"]["mid"] == "agent:8000"
    async with s.get(api.url("/open/finduserlist")) as r:
        row = (await r.json())["data"][0]
    assert row["num"] == 0 and row["last"]["msg"] == "by session"   # replying marks it read


async def test_session_push_cross_site_refused(api):
    page, _ = await api.visitor("8000")
    s = await api.agent("8000")
    async with s.post(api.url("/open/push"), data={"room_id": page["room_id"], "msg": "x"},
                      headers={"Origin": "https://evil.example"}) as r:
        assert r.status == 403
    async with s.post(api.url("/open/block"), data={"mid": page["mid"]},
                      headers={"Origin": "https://evil.example"}) as r:
        assert r.status == 403


# -- /open/finduserlist -----------------------------------------------------------
async def test_finduserlist_shape_online_and_paging(api):
    pages = []
    for i in range(3):
        page, _ = await api.visitor("8000", nickname=f"v{i}")
        await api.push(page, f"hello {i}")
        pages.append(page)
        await asyncio.sleep(0.002)
    marks = api.store.marks("test-comet")
    marks.connect(pages[0]["mid"], pages[0]["room_id"])
    await marks.flush()
    s = await api.agent("8000")
    async with s.post(api.url("/open/finduserlist"), data={"shop_id": "8000"}) as r:
        st, body = await _json(r)
    assert st == 200 and body["success"] is True
    rows = body["data"]
    assert [row["mid"] for row in rows] == [p["mid"] for p in reversed(pages)]     # newest first
    for row in rows:
        assert {"user", "online", "seq", "num", "last"} <= set(row)
        assert row["num"] == 1 and row["seq"] == 0 and row["last"]["type"] == "text"
    online = {row["mid"]: row["online"] for row in rows}
    assert online == {pages[0]["mid"]: True, pages[1]["mid"]: False, pages[2]["mid"]: False}
    assert rows[0]["user"]["nickname"] == "v2"
    async with s.get(api.url("/open/finduserlist"), params={"limit": 2, "page": 2}) as r:
        body = await r.json()
    assert [row["mid"] for row in body["data"]] == [pages[0]["mid"]]
    async with s.get(api.url("/open/finduserlist"), params={"limit": 0}) as r:
        assert r.status == 400


async def test_finduserlist_flag_returns_only_changes(api):
    a, _ = await api.visitor("8000")
    b, _ = await api.visitor("8000")
    await api.push(a, "a1")
    await api.push(b, "b1")
    s = await api.agent("8000")
    async with s.get(api.url("/open/finduserlist")) as r:
        first = await r.json()
    assert len(first["data"]) == 2
    await asyncio.sleep(0.01)
    await api.push(a, "a2")
    async with s.get(api.url("/open/finduserlist"), params={"flag": 1}) as r:
        changed = await r.json()
    assert [row["mid"] for row in changed["data"]] == [a["mid"]]
    assert changed["data"][0]["last"]["msg"] == "a2"
    async with s.get(api.url("/open/finduserlist"), params={"flag": 1}) as r:
        assert (await r.json())["data"] == []
    async with s.get(api.url("/open/finduserlist"), params={"flag": 1, "since": first["now"]}) as r:
        assert [row["mid"] for row in (await r.json())["data"]] == [a["mid"]]


# -- blocking -------------------------------------------------------------------
async def test_block_visitor_then_unblock(api):
    page, vs = await api.visitor("8000")
    s = await api.agent("8000")
    async with s.post(api.url("/open/block"), data={"mid": page["mid"], "seconds": 60}) as r:
        st, body = await _json(r)
    assert st == 200 and body["blocked"] == [page["mid"]]
    st, body, _ = await api.push(page)
    assert st == 403 and "blocked" in body["msg"]
    async with vs.get(api.url("/open/im"), params={"shop_id": "8000", "format": "json"}) as r:
        assert r.status == 403
    other, _ = await api.visitor("8000")
    assert (await api.push(other))[0] == 200
    page9, _ = await api.visitor("9000", mid=page["mid"])     # blocks are per shop
    assert (await api.push(page9))[0] == 200
    async with s.post(api.url("/open/block"), data={"mid": page["mid"], "seconds": 0}) as r:
        assert r.status == 200
    assert (await api.push(page))[0] == 200


async def test_block_visitor_ip(api_factory):
    api = await api_factory(trust_proxy=True)
    ip = {"X-Forwarded-For": "203.0.113.7"}
    page, _ = await api.visitor("8000", session=api.session(headers=ip))
    s = await api.agent("8000")
    async with s.post(api.url("/open/block"), data={"mid": page["mid"], "ip": "1", "seconds": 60}) as r:
        st, body = await _json(r)
    assert st == 200 and body["blocked"] == [page["mid"], "ip:203.0.113.7"]
    again = api.session(headers=ip)        # same address, new identity: still refused
    async with again.get(api.url("/open/im"), params={"shop_id": "8000", "format": "json"}) as r:
        assert r.status == 403
    elsewhere = api.session(headers={"X-Forwarded-For": "198.51.100.1"})
    async with elsewhere.get(api.url("/open/im"), params={"shop_id": "8000", "format": "json"}) as r:
        assert r.status == 200


@pytest.mark.parametrize("form", [{}, {"mid": "x y"}, {"ip": "999.1.1.1"}, {"mid": "ok", "seconds": "-1"},
                                  {"ip": "1"}],
                         ids=["nothing", "bad-mid", "bad-ip", "negative", "ip-without-mid"])
async def test_block_bad_params(api, form):
    s = await api.agent("8000")
    async with s.post(api.url("/open/block"), data=form) as r:
        assert r.status == 400


async def test_block_needs_session(api):
    async with api.session().post(api.url("/open/block"), data={"mid": "abc"}) as r:
        assert r.status == 401


async def test_com_without_mid_gives_a_shop_wide_agent_key(api):
    s = await api.agent("8000")
    async with s.get(api.url("/open/com"), params={"format": "json"}) as r:
        st, body = await _json(r)
    assert st == 200 and body["mid"] == "agent:8000" and body["visitor"] == ""
    claims = api.signer.verify_key(body["key"], room=body["room_id"])
    assert claims.role == "agent" and claims.shop == "8000"
    # that room is no conversation: nothing can be posted into it
    async with s.post(api.url("/open/push"), json={"room_id": body["room_id"], "msg": "x", "key": body["key"]},
                      params={"mid": body["mid"]}) as r:
        assert r.status == 400


async def test_read_marks_both_ways(api):
    page, vs = await api.visitor("8000")
    ids = [(await api.push(page, f"m{i}"))[1]["id"] for i in range(2)]
    q = {"room_id": page["room_id"], "key": page["key"]}
    async with api.session().get(api.url("/open/readmark"), params=q) as r:
        st, body = await _json(r)
    assert st == 200 and body["seq"] == 0 and body["own"] == ids[1]
    s = await api.agent("8000")
    async with s.get(api.url("/open/com"), params={"mid": page["mid"], "seq": ids[0], "format": "json"}) as r:
        assert r.status == 200
    async with api.session().get(api.url("/open/readmark"), params=q) as r:
        assert (await r.json())["seq"] == ids[0]
    async with s.get(api.url("/open/readmark"), params={"room_id": page["room_id"]}) as r:
        st, body = await _json(r)
    assert st == 200 and body["seq"] == ids[1] and body["own"] == ids[0]
    async with api.session().get(api.url("/open/readmark"), params={"room_id": page["room_id"]}) as r:
        assert r.status == 403
    other, _ = await api.visitor("8000")
    async with api.session().get(api.url("/open/readmark"),
                                 params={"room_id": page["room_id"], "key": other["key"]}) as r:
        assert r.status == 403
