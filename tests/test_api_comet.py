"""End to end: HTTP in, WebSocket out, through a real comet worker and Redis."""
from __future__ import annotations

import orjson
import pytest
import pytest_asyncio

from kefu.client import connect
from kefu.comet import Worker
from tests.api_fixtures import *  # noqa: F403

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def comet(settings):
    w = Worker(settings.replace(comet_port=0, tcp_port=0), index=1)
    await w.start()
    yield w
    await w.shutdown("test over")


async def _client(comet, key, page=None):
    c = await connect(f"ws://127.0.0.1:{comet.ws_port}/sub")
    extra = {}
    if page is not None:
        extra = {"mid": page["mid"], "room_id": page["room_id"], "accepts": orjson.loads(page["accepts"])}
    await c.auth(key, **extra)
    return c


async def test_open_push_reaches_comet_connections(api, comet):
    page, _ = await api.visitor("8000")
    visitor = await _client(comet, page["key"], page)
    agent_session = await api.agent("8000")
    async with agent_session.get(api.url("/open/com"), params={"mid": page["mid"], "format": "json"}) as r:
        com = await r.json()
    agent = await _client(comet, com["key"], com)
    try:
        st, body, _ = await api.push(page, "hello <i>agent</i>", client_msg_id="e2e-1")
        assert st == 200
        (got,) = await visitor.messages(1, timeout=5)
        assert got["id"] == body["id"] and got["msg"] == "hello <i>agent</i>" and got["mid"] == page["mid"]
        (seen,) = await agent.messages(1, timeout=5)
        assert seen["id"] == body["id"]
        # a retry is answered from the idempotency record and is not pushed again
        st, again, _ = await api.push(page, "hello <i>agent</i>", client_msg_id="e2e-1")
        assert again["id"] == body["id"] and again["duplicate"] is True
        # the agent answers through its session; the visitor gets it live, after the first
        async with agent_session.post(api.url("/open/push"), data={"room_id": page["room_id"], "msg": "hi!"}) as r:
            reply = await r.json()
        (live,) = await visitor.messages(1, timeout=5)
        assert live["id"] == reply["id"] > body["id"] and live["mid"] == "agent:8000"
        # and history (sync) has both, once each, in order
        assert [m["id"] for m in await visitor.sync_all(0)] == [body["id"], reply["id"]]
    finally:
        await visitor.close()
        await agent.close()


async def test_goim_push_reaches_comet_as_op9_batch(api, comet):
    page, _ = await api.visitor("8000")
    c = await _client(comet, page["key"], page)
    try:
        async with api.session().post(api.url("/goim/push/mids"), params={"operation": 1000, "mids": page["mid"]},
                                      data=b"goim says hi", headers=api.goim) as r:
            assert (await r.json())["code"] == 0
        frame = await c.recv(timeout=5)                 # the client unpacks the op-9 batch
        assert frame.op == 1000 and frame.body == b"goim says hi"
        async with api.session().post(api.url("/goim/push/room"),
                                      params={"operation": 1001, "room": page["room_id"]},
                                      data=b"room notice", headers=api.goim) as r:
            assert (await r.json())["code"] == 0
        frame = await c.recv(timeout=5)
        assert frame.op == 1001 and frame.body == b"room notice"
        # not in accepts: filtered out by the comet (goim semantics), the next one arrives
        async with api.session().post(api.url("/goim/push/all"), params={"operation": 4242},
                                      data=b"not for you", headers=api.goim) as r:
            assert r.status == 200
        async with api.session().post(api.url("/goim/push/all"), params={"operation": 1002},
                                      data=b"for all", headers=api.goim) as r:
            assert r.status == 200
        frame = await c.recv(timeout=5)
        assert frame.op == 1002 and frame.body == b"for all"
    finally:
        await c.close()


async def test_goim_token_key_authenticates_on_comet(api, comet):
    async with api.session().post(api.url("/goim/token"), params={"mid": "u-7", "shop_id": "8000"},
                                  headers=api.goim) as r:
        data = (await r.json())["data"]
    c = await _client(comet, data["key"])
    try:
        page = {"mid": "u-7", "room_id": data["room_id"], "key": data["key"], "shop_id": "8000"}
        st, body, _ = await api.push(page, "from a merchant user")
        assert st == 200
        (got,) = await c.messages(1, timeout=5)
        assert got["id"] == body["id"]
    finally:
        await c.close()


async def test_metrics_aggregate_live_comet_figures(api, comet):
    page, _ = await api.visitor("8000")
    c = await _client(comet, page["key"], page)
    try:
        await comet.flush_marks()
        async with api.session().get(api.url("/metrics")) as r:
            text = await r.text()
        assert "kefu_comet_servers 1" in text and "kefu_comet_connections 1" in text
        async with api.session().get(api.url("/goim/online/room"), params={"rooms": page["room_id"]},
                                     headers=api.goim) as r:
            assert (await r.json())["data"] == {page["room_id"]: 1}
        async with api.session().get(api.url("/goim/online/total"), headers=api.goim) as r:
            assert (await r.json())["data"]["conn_count"] == 1
        agent = await api.agent("8000")
        async with agent.get(api.url("/open/finduserlist")) as r:
            rows = (await r.json())["data"]
        assert [row["online"] for row in rows if row["mid"] == page["mid"]] == [True]
    finally:
        await c.close()


async def test_agent_read_is_announced_live_to_the_visitor(api, comet):
    page, _ = await api.visitor("8000")
    c = await _client(comet, page["key"], page)
    try:
        st, body, _ = await api.push(page, "read me")
        await c.messages(1, timeout=5)
        agent = await api.agent("8000")
        async with agent.get(api.url("/open/com"), params={"mid": page["mid"], "seq": body["id"],
                                                           "format": "json"}) as r:
            assert r.status == 200
        (notice,) = await c.messages(1, timeout=5)
        assert notice == {"type": "read", "room_id": page["room_id"], "mid": "agent:8000", "seq": body["id"]}
        # a shop-wide agent key (no mid) authenticates and sees the shop's conversations
        async with agent.get(api.url("/open/com"), params={"format": "json"}) as r:
            wide = await r.json()
        console = await _client(comet, wide["key"], wide)
        try:
            st, body2, _ = await api.push(page, "seen by the console")
            (got,) = await console.messages(1, timeout=5)
            assert got["id"] == body2["id"]
        finally:
            await console.close()
    finally:
        await c.close()
