"""Static pages and their headers, /healthz, /metrics, retention, the edge."""
from __future__ import annotations

import asyncio

import pytest

from kefu.api.metrics import Histogram, Metrics, sum_figures
from tests.api_fixtures import *  # noqa: F403

pytestmark = pytest.mark.asyncio


@pytest.fixture
def frontend(tmp_path):
    root = tmp_path / "front"
    (root / "js").mkdir(parents=True)
    (root / "chat.html").write_text("<!doctype html><title>chat</title>")
    (root / "info.html").write_text("<!doctype html><title>console</title>")
    (root / "js" / "chat.js").write_text("console.log(1)")
    (root / ".hidden").write_text("no")
    (tmp_path / "outside.html").write_text("outside")
    return root


async def test_static_pages_and_headers(api_factory, frontend):
    api = await api_factory(frontend_dir=str(frontend), public_ws_url="wss://push.example.com/sub")
    s = api.session()
    async with s.get(api.url("/"), allow_redirects=False) as r:
        assert r.status == 302 and r.headers["Location"] == "/info.html"
    async with s.get(api.url("/chat.html")) as r:
        assert r.status == 200 and "chat" in await r.text()
        csp, h = r.headers["Content-Security-Policy"], r.headers
    assert "frame-ancestors *" in csp and "script-src 'self'" in csp and "default-src 'self'" in csp
    assert "wss://push.example.com" in csp and "'unsafe-inline'" not in csp
    assert "X-Frame-Options" not in h and h["Cache-Control"] == "no-cache"
    assert h["Content-Type"].startswith("text/html") and h["X-Content-Type-Options"] == "nosniff"
    async with s.get(api.url("/info.html")) as r:
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Frame-Options"] == "DENY"
    async with s.get(api.url("/js/chat.js")) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript")
        assert "max-age" in r.headers["Cache-Control"]


@pytest.mark.parametrize("path", ["/nope.html", "/.hidden", "/../outside.html", "/%2e%2e/outside.html",
                                  "/js/", "/js", "/js/../../outside.html"])
async def test_static_refuses(api_factory, frontend, path):
    api = await api_factory(frontend_dir=str(frontend))
    async with api.session().get(api.url(path)) as r:
        assert r.status == 404
        assert "outside" not in await r.text()


async def test_unknown_api_route_is_json_404(api):
    async with api.session().get(api.url("/open/nothing")) as r:
        assert r.status == 404 and (await r.json())["success"] is False
    async with api.session().get(api.url("/goim/nothing")) as r:
        assert r.status == 404 and (await r.json())["code"] == -404


async def test_healthz(api):
    async with api.session().get(api.url("/healthz")) as r:
        body = await r.json()
    assert r.status == 200 and body["ok"] is True and body["redis"] == "up"


async def test_metrics_counts_requests_messages_errors_and_comets(api):
    page, _ = await api.visitor("8000")
    await api.push(page, "one")
    await api.push(page, "one", client_msg_id="x")
    await api.push(page, "one", client_msg_id="x")
    await api.push({**page, "key": "bad.key"})
    marks = api.store.marks("comet-1")
    marks.connect("m", "r")
    await marks.flush({"connections": 7, "delivered_total": 100, "addr": "ignored", "rooms": {"r": 1}})
    await api.store.marks("comet-2").flush({"connections": 3, "delivered_total": 5})
    async with api.session().get(api.url("/metrics")) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    assert 'kefu_http_requests_total{route="/open/push",method="POST",status="200"} 3' in text
    assert 'kefu_http_requests_total{route="/open/push",method="POST",status="403"} 1' in text
    assert "kefu_messages_stored_total 2" in text and "kefu_messages_published_total 2" in text
    assert "kefu_messages_duplicate_total 1" in text
    assert 'kefu_errors_total{kind="AuthError"} 1' in text
    assert 'kefu_http_request_duration_seconds_count{route="/open/push"} 4' in text
    assert "kefu_comet_servers 2" in text
    assert "kefu_comet_connections 10" in text and "kefu_comet_delivered_total 105" in text
    assert "# TYPE kefu_comet_delivered_total counter" in text
    assert "addr" not in text.replace("address", "")


async def test_histogram_and_figures_units():
    h = Histogram("x_seconds", "x", ("route",), buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 5):
        h.observe(v, "/a")
    lines = list(h.samples())
    assert 'x_seconds_bucket{route="/a",le="0.1"} 1' in lines
    assert 'x_seconds_bucket{route="/a",le="1"} 2' in lines
    assert 'x_seconds_bucket{route="/a",le="+Inf"} 3' in lines
    totals, n = sum_figures([{"a": 1, "b": True, "c": "x", "ts": 5}, {"a": 2.5}, "junk"])
    assert totals == {"a": 3.5} and n == 2
    assert Metrics().render().endswith(b"\n")


async def test_retention_task_sweeps(api_factory):
    api = await api_factory(retention_days=1e-7, sweep_interval=0.05)   # ~9 ms of retention
    page, _ = await api.visitor("8000")
    await api.push(page, "old")
    for _ in range(100):
        await asyncio.sleep(0.05)
        if not (await api.store.history(page["room_id"])).messages:
            break
    assert (await api.store.history(page["room_id"])).messages == []
    async with api.session().get(api.url("/metrics")) as r:
        assert "kefu_retention_deleted_total" in await r.text()


async def test_request_body_limit_applies_to_every_form_route(api):
    big = {"shop_id": "8000", "password": "x" * (api.settings.body_max_bytes + 1)}
    async with api.session().post(api.url("/open/login"), data=big) as r:
        assert r.status == 413 and (await r.json())["success"] is False
    async with api.session().post(api.url("/goim/token"), data=big, headers=api.goim) as r:
        assert r.status == 413 and (await r.json())["code"] == -413


async def test_access_log_one_structured_line_without_secrets(api_factory, caplog):
    api = await api_factory(access_log=True)
    page, _ = await api.visitor("8000")
    caplog.clear()
    with caplog.at_level("INFO", logger="kefu.api.access"):
        await api.push(page, "logged?")
    lines = [r.getMessage() for r in caplog.records if r.name == "kefu.api.access"]
    assert len(lines) == 1
    assert lines[0].startswith("method=POST path=/open/push status=200 ms=")
    assert page["key"] not in lines[0] and "logged" not in lines[0]     # no query, no body


async def test_access_log_off_by_default(api, caplog):
    with caplog.at_level("INFO", logger="kefu.api.access"):
        async with api.session().get(api.url("/healthz")):
            pass
    assert not [r for r in caplog.records if r.name == "kefu.api.access"]
