"""goim's push API and /goim/token, over HTTP, checked on the Redis bus."""
from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis

from kefu import envelope, tlv
from kefu.protocol import Op
from tests.api_fixtures import *  # noqa: F403

pytestmark = pytest.mark.asyncio


class Bus:
    """A plain Redis subscriber to the channels the comet workers listen on."""

    def __init__(self, api, *channels):
        self.client = aioredis.Redis.from_url(api.settings.redis_url)
        self.ps = self.client.pubsub()
        self.channels = channels

    async def __aenter__(self):
        await self.ps.subscribe(*self.channels)
        for _ in self.channels:
            await self.ps.get_message(timeout=1)          # subscribe confirmations
        return self

    async def next(self, timeout: float = 2.0) -> tuple[str, bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = await self.ps.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if m:
                return m["channel"].decode(), m["data"]
        raise AssertionError("nothing published")

    async def __aexit__(self, *exc):
        await self.ps.aclose()
        await self.client.aclose()


def inner(frame: bytes) -> tuple[int, bytes]:
    """The single frame inside an op-9 batch -> (op, body)."""
    op, _seq, body = tlv.decode(frame)
    assert op == Op.RAW
    dec = tlv.StreamDecoder()
    (frames,) = [dec.feed(body)]
    assert len(frames) == 1
    return frames[0][0], frames[0][2]


async def _post(api, path, params=None, data=b"", headers=None):
    async with api.session().post(api.url(path), params=params, data=data,
                                  headers=api.goim if headers is None else headers) as r:
        return r.status, await r.json()


async def test_push_keys_mids_all(api):
    async with Bus(api, api.store.keys.push_channel()) as bus:
        st, body = await _post(api, "/goim/push/keys", [("operation", "1000"), ("keys", "k1"), ("keys", "k2")],
                               b"to keys")
        assert (st, body) == (200, {"code": 0, "message": ""})
        kind, targets, frame = envelope.unpack((await bus.next())[1])
        assert (kind, targets) == (b"keys", ["k1", "k2"]) and inner(frame) == (1000, b"to keys")

        st, body = await _post(api, "/goim/push/mids", [("operation", "1001"), ("mids", "u1"), ("mids", "u2")],
                               "中文".encode())
        assert st == 200 and body["code"] == 0
        kind, targets, frame = envelope.unpack((await bus.next())[1])
        assert (kind, targets) == (b"mids", ["u1", "u2"]) and inner(frame) == (1001, "中文".encode())

        st, body = await _post(api, "/goim/push/all", {"operation": "1002", "speed": "100"}, b"")
        assert st == 200 and body["code"] == 0
        kind, targets, frame = envelope.unpack((await bus.next())[1])
        assert (kind, targets) == (b"all", []) and inner(frame) == (1002, b"")


async def test_push_keys_accepts_hundreds_of_signed_keys(api):
    keys = [api.signer.mint_key(f"u{i}", f"live_{i}", ttl=60) for i in range(250)]
    async with Bus(api, api.store.keys.push_channel()) as bus:
        st, body = await _post(api, "/goim/push/keys", [("operation", "1000")] + [("keys", k) for k in keys],
                               b"many")
        assert st == 200 and body["code"] == 0
        kind, targets, _ = envelope.unpack((await bus.next())[1])
        assert targets == keys


@pytest.mark.parametrize("room,typ", [("live_1000", ""), ("live://live_1000", ""), ("live_1000", "live")])
async def test_push_room(api, room, typ):
    async with Bus(api, api.store.keys.room_channel("live_1000")) as bus:
        st, body = await _post(api, "/goim/push/room", {"operation": "1000", "room": room, "type": typ},
                               b'{"notice": 1}')
        assert st == 200 and body == {"code": 0, "message": ""}
        channel, frame = await bus.next()
        assert inner(frame) == (1000, b'{"notice": 1}')


async def test_pushes_are_not_stored(api):
    page, _ = await api.visitor("8000")
    await _post(api, "/goim/push/room", {"operation": "1000", "room": page["room_id"]}, b"live only")
    assert (await api.store.history(page["room_id"])).messages == []


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-secret"},
                                     {"Authorization": "Basic Zm9vOmJhcg=="}],
                         ids=["none", "wrong", "basic"])
async def test_goim_requires_push_secret(api, headers):
    for method, path in (("POST", "/goim/push/all?operation=1000"), ("GET", "/goim/online/total"),
                         ("POST", "/goim/token?mid=a&room_id=r")):
        async with api.session().request(method, api.url(path), headers=headers) as r:
            st, body = r.status, await r.json()
        assert st == 401 and body["code"] == -401 and body["message"]


@pytest.mark.parametrize("path,params,status", [
    ("/goim/push/all", {}, 400),
    ("/goim/push/all", {"operation": "abc"}, 400),
    ("/goim/push/all", {"operation": str(1 << 31)}, 400),
    ("/goim/push/all", {"operation": "7"}, 400),             # auth: a client op
    ("/goim/push/all", {"operation": "14"}, 400),            # sync
    ("/goim/push/keys", {"operation": "1000"}, 400),         # no keys
    ("/goim/push/mids", {"operation": "1000", "mids": "bad mid"}, 400),
    ("/goim/push/room", {"operation": "1000"}, 400),         # no room
    ("/goim/push/room", {"operation": "1000", "room": "a/b"}, 400),
], ids=["no-op", "text-op", "op-overflow", "op-auth", "op-sync", "no-keys", "bad-mid", "no-room", "bad-room"])
async def test_push_bad_params(api, path, params, status):
    st, body = await _post(api, path, params, b"x")
    assert st == status and body["code"] == -status and body["message"]


async def test_push_body_too_big(api):
    big = b"x" * api.settings.max_frame
    st, body = await _post(api, "/goim/push/all", {"operation": "1000"}, big)
    assert st == 413 and body["code"] == -413


async def test_online_room_top_total(api):
    a, b = api.store.marks("comet-a"), api.store.marks("comet-b")
    for i in range(3):
        a.connect(f"m{i}", "live_1")
    b.connect("m9", "live_1")
    b.connect("m8", "live_2")
    await a.flush({"connections": 3, "ips": 2})
    await b.flush({"connections": 2, "ips": 2})
    async with api.session().get(api.url("/goim/online/room"), params=[("rooms", "live_1"), ("rooms", "live_2"),
                                                                       ("rooms", "none")],
                                 headers=api.goim) as r:
        body = await r.json()
    assert body == {"code": 0, "message": "", "data": {"live_1": 4, "live_2": 1, "none": 0}}
    async with api.session().get(api.url("/goim/online/total"), headers=api.goim) as r:
        body = await r.json()
    assert body["data"] == {"ip_count": 4, "conn_count": 5}
    async with api.session().get(api.url("/goim/online/top"), params={"type": "live", "limit": 1},
                                 headers=api.goim) as r:
        body = await r.json()
    assert body["data"] == [{"room_id": "live_1", "count": 4}]
    async with api.session().get(api.url("/goim/online/top"), params={"type": "", "limit": 10},
                                 headers=api.goim) as r:
        body = await r.json()
    assert body["data"] == [{"room_id": "live_1", "count": 4}, {"room_id": "live_2", "count": 1}]
    async with api.session().get(api.url("/goim/online/top"), params={"type": "live"}, headers=api.goim) as r:
        assert r.status == 400


async def test_token_minted_for_merchant_user(api):
    st, body = await _post(api, "/goim/token", {"mid": "u-1", "room_id": "8000_u-1"})
    assert st == 200 and body["code"] == 0
    data = body["data"]
    claims = api.signer.verify_key(data["key"], mid="u-1", room="8000_u-1")
    assert claims.role == "visitor" and claims.shop == "8000"
    # the key works on /open/push like one from /open/im
    page = {"mid": "u-1", "room_id": "8000_u-1", "key": data["key"], "shop_id": "8000"}
    assert (await api.push(page))[0] == 200
    st, body = await _post(api, "/goim/token", {"mid": "u-2", "shop_id": "9000"})
    assert body["data"]["room_id"] == "9000_u-2"
    st, body = await _post(api, "/goim/token", {"mid": "u-3", "room_id": "live_1000", "ttl": "120"})
    claims = api.signer.verify_key(body["data"]["key"])
    assert claims.role == "user" and claims.room == "live_1000" and claims.exp <= time.time() + 121


@pytest.mark.parametrize("params", [{"room_id": "r"}, {"mid": "a"}, {"mid": "a b", "room_id": "r"},
                                    {"mid": "a", "room_id": "8000_a", "shop_id": "9000"},
                                    {"mid": "a", "room_id": "r", "ttl": "1"}],
                         ids=["no-mid", "no-room", "bad-mid", "room-of-other-shop", "ttl-too-short"])
async def test_token_bad_params(api, params):
    st, body = await _post(api, "/goim/token", params)
    assert st == 400 and body["code"] == -400


async def test_pushes_counted_in_metrics(api):
    await _post(api, "/goim/push/all", {"operation": "1000"}, b"x")
    async with api.session().get(api.url("/metrics")) as r:
        text = await r.text()
    assert 'kefu_goim_pushes_total{kind="all"} 1' in text
