"""kefu.api.front: plain POST /open/push answered on the lean path, exactly as aiohttp would.

Every test speaks raw HTTP/1.1 over a real socket to the real API worker
stack (front door, then aiohttp), on a real Redis.
"""
from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import orjson
import pytest

from tests.api_fixtures import *  # noqa: F401,F403

LATIN1 = b"application/x-www-form-urlencoded; charset=iso-8859-1"
SAME = ("Content-Type", "X-Content-Type-Options", "Referrer-Policy", "Content-Security-Policy",
        "Cache-Control")


class Raw:
    """One keep-alive connection: write raw requests, read whole answers."""

    def __init__(self, api) -> None:
        self.api = api

    async def __aenter__(self):
        host, port = self.api.base.split("//")[1].split(":")
        self.reader, self.writer = await asyncio.open_connection(host, int(port))
        return self

    async def __aexit__(self, *exc):
        self.writer.close()

    def send(self, *requests: bytes) -> None:
        self.writer.write(b"".join(requests))

    async def answer(self, timeout: float = 5) -> tuple[int, dict, bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().title()] = v.strip()
        body = await asyncio.wait_for(self.reader.readexactly(int(headers.get("Content-Length", 0))), timeout)
        return status, headers, body

    async def closed(self, timeout: float) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), timeout) == b""
        except asyncio.TimeoutError:
            return False


def counts(api, before=None) -> tuple[int, int]:
    """(answered by the front, handed to aiohttp) since `before`."""
    now = (api.door.stats["answered"], api.door.stats["handed_off"])
    return now if before is None else (now[0] - before[0], now[1] - before[1])


def post(page: dict, msg: str = "hi", *, query: str | None = None, extra: bytes = b"",
         ctype: bytes = b"application/x-www-form-urlencoded", **fields) -> bytes:
    body = urlencode({"type": "text", "msg": msg, "room_id": page["room_id"], "key": page["key"],
                      **fields}).encode()
    if query is None:
        query = urlencode({"mid": page["mid"], "shop_id": page["shop_id"]})
    return (b"POST /open/push?%s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s"
            % (query.encode(), ctype, len(body), extra, body))


async def test_plain_push_is_answered_by_the_front_like_aiohttp(api):
    page, _ = await api.visitor()
    t0 = counts(api)
    async with Raw(api) as c:
        c.send(post(page, "lean"))
        s1, h1, b1 = await c.answer()
        assert counts(api, t0) == (1, 0)
        # the same request with another charset is not plain: aiohttp answers it
        c.send(post(page, "aiohttp", ctype=LATIN1))
        s2, h2, b2 = await c.answer()
        assert counts(api, t0) == (1, 1)
    assert s1 == s2 == 200
    j1, j2 = orjson.loads(b1), orjson.loads(b2)
    assert j1.keys() == j2.keys() and j1["success"] is j2["success"] is True
    assert j1["data"]["msg"] == "lean" and j2["data"]["msg"] == "aiohttp" and j2["id"] > j1["id"]
    assert {k: h1[k] for k in SAME} == {k: h2[k] for k in SAME}
    hist = await api.store.history(page["room_id"])
    assert [orjson.loads(m)["msg"] for m in hist.messages] == ["lean", "aiohttp"]


@pytest.mark.parametrize("change,status", [
    ({"key": "forged.key"}, 403),
    ({"msg": "  "}, 400),
    ({"type": "video"}, 400),
    ({"room_id": "8000_someoneelse"}, 403),
])
async def test_errors_are_the_same_on_both_paths(api, change, status):
    page, _ = await api.visitor()
    t0 = counts(api)
    async with Raw(api) as c:
        c.send(post(page, **change))
        lean = await c.answer()
        c.send(post(page, ctype=LATIN1, **change))
        full = await c.answer()
    assert counts(api, t0) == (1, 1)
    assert lean[0] == full[0] == status
    assert lean[2] == full[2]
    assert {k: lean[1][k] for k in SAME} == {k: full[1][k] for k in SAME}


async def test_utf8_charset_is_plain_and_decoded_alike(api):
    page, _ = await api.visitor()
    t0 = counts(api)
    async with Raw(api) as c:
        c.send(post(page, "你好 +%", ctype=b"application/x-www-form-urlencoded; charset=UTF-8"))
        status, _, body = await c.answer()
    assert status == 200 and orjson.loads(body)["data"]["msg"] == "你好 +%"
    assert counts(api, t0) == (1, 0)


async def test_rate_limit_answer_carries_retry_after(api_factory):
    api = await api_factory(rate_messages_per_sender=0.5)
    page, _ = await api.visitor()
    t0 = counts(api)
    async with Raw(api) as c:
        statuses = []
        for i in range(25):
            c.send(post(page, f"m{i}"))
            status, headers, body = await c.answer()
            statuses.append(status)
        assert statuses[0] == 200 and statuses[-1] == 429
        assert int(headers["Retry-After"]) >= 1 and orjson.loads(body)["success"] is False
    assert counts(api, t0) == (25, 0)


async def test_pipelined_requests_keep_their_order_across_the_hand_off(api):
    page, _ = await api.visitor()
    t0 = counts(api)
    async with Raw(api) as c:
        c.send(post(page, "one"), post(page, "two"), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
               post(page, "three"))
        answers = [await c.answer() for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 200, 200]
    assert [orjson.loads(a[2]).get("data", {}).get("msg") for a in answers] == ["one", "two", None, "three"]
    assert counts(api, t0) == (2, 1)
    hist = await api.store.history(page["room_id"])
    assert [orjson.loads(m)["msg"] for m in hist.messages] == ["one", "two", "three"]


@pytest.mark.parametrize("head", [
    # framing the front does not judge: aiohttp parses these from their first byte
    b"POST /open/push HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /open/push HTTP/1.1\r\nHost: x\nContent-Length: 5\r\n\r\n",
    b"POST /open/push HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"POST /open/push HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n",
    b"POST /open/push HTTP/1.1\r\nHost: x\r\n Content-Length: 5\r\n\r\n",
    b"POST /open/push HTTP/1.0\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
    b"POST /open/push?a=%41 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
])
async def test_anything_not_plain_goes_to_aiohttp(api, head):
    async with Raw(api) as c:
        c.send(head + b"x=1&y")
        status, headers, _ = await c.answer()
    assert api.door.stats["handed_off"] == 1 and not api.door.stats["answered"]
    assert status in (400, 403) and headers.get("Server", "").startswith("Python")


@pytest.mark.parametrize("seed", [7, 11, 23, 42])
async def test_a_pipelined_stream_cut_anywhere_gets_every_answer_in_order(api_factory, seed):
    """Plain and non-plain requests in one stream, written in random pieces: every
    answer comes, in request order, and the room holds the posts in that order."""
    import random
    api = await api_factory(rate_messages_per_sender=10_000, rate_messages_per_ip=10_000)
    page, _ = await api.visitor()
    rng = random.Random(seed)
    expected = []
    for round_ in range(12):
        reqs = []
        for i in range(rng.randint(2, 6)):
            kind = rng.choice(["plain", "plain", "latin1", "health"])
            if kind == "health":
                reqs.append(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                expected.append(None)
                continue
            msg = f"r{round_}m{i}"
            reqs.append(post(page, msg, ctype=LATIN1) if kind == "latin1" else post(page, msg))
            expected.append(msg)
        stream = b"".join(reqs)
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 12)))
        async with Raw(api) as c:
            for a, b in zip([0, *cuts], [*cuts, len(stream)]):
                c.send(stream[a:b])
                await asyncio.sleep(rng.choice([0, 0, 0.001]))
            answers = [await c.answer() for _ in reqs]
        assert [a[0] for a in answers] == [200] * len(reqs)
        got = [orjson.loads(a[2]).get("data", {}).get("msg") for a in answers]
        assert got == expected[-len(reqs):]
    hist = await api.store.history(page["room_id"], limit=200)
    assert [orjson.loads(m)["msg"] for m in hist.messages] == [m for m in expected if m]


async def test_a_client_pipelining_far_ahead_is_read_as_it_is_answered(api_factory):
    """500 requests in one write: parsing stays at most front.MAX_QUEUED ahead of the
    answers (reading pauses), and every request is answered, in order."""
    from kefu.api.front import MAX_QUEUED
    api = await api_factory(rate_messages_per_sender=100_000, rate_messages_per_ip=100_000)
    page, _ = await api.visitor()
    t0 = counts(api)
    most = 0
    async with Raw(api) as c:
        c.send(*(post(page, f"p{i}") for i in range(500)))
        got = []
        for _ in range(500):
            most = max(most, max((len(f.queue) for f in api.door.conns), default=0))
            status, _, body = await c.answer()
            assert status == 200
            got.append(orjson.loads(body)["data"]["msg"])
    assert got == [f"p{i}" for i in range(500)] and counts(api, t0) == (500, 0)
    assert 0 < most <= MAX_QUEUED


async def test_body_in_pieces_and_connection_close(api):
    page, _ = await api.visitor()
    t0 = counts(api)
    req = post(page, "slow", extra=b"Connection: close\r\n")
    async with Raw(api) as c:
        for i in range(0, len(req), 7):
            c.send(req[i:i + 7])
            await asyncio.sleep(0.001)
        status, headers, body = await c.answer()
        assert status == 200 and headers["Connection"] == "close"
        assert await c.closed(2)
    assert counts(api, t0) == (1, 0)


async def test_push_without_key_uses_the_cookie_through_aiohttp(api):
    page, s = await api.visitor()
    t0 = counts(api)
    status, body, _ = await api.push(page, key=None, session=s)
    assert status == 200 and body["success"]
    assert counts(api, t0)[0] == 0


async def test_idle_and_stalled_connections_are_closed(api_factory):
    api = await api_factory(handshake_timeout=1.0)
    page, _ = await api.visitor()
    async with Raw(api) as idle, Raw(api) as stalled, Raw(api) as used:
        stalled.send(post(page)[:40])
        used.send(post(page))
        assert (await used.answer())[0] == 200
        assert await idle.closed(4) and await stalled.closed(4) and await used.closed(4)
    assert not api.door.conns


async def test_fast_answers_are_counted_in_metrics(api):
    page, _ = await api.visitor()
    async with Raw(api) as c:
        for _ in range(3):
            c.send(post(page))
            assert (await c.answer())[0] == 200
    async with api.session().get(api.url("/metrics")) as r:
        text = await r.text()
    line = next(x for x in text.splitlines()
                if x.startswith("kefu_http_requests_total{") and 'route="/open/push"' in x and 'status="200"' in x)
    assert line.endswith(" 3")
