"""The API worker as a process: `python -m kefu api`, readiness, SO_REUSEPORT, SIGTERM drain."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

from kefu.api.worker import serve
from kefu.errors import ConfigError
from tests.api_fixtures import png_bytes
from tests.conftest import free_port

pytestmark = pytest.mark.asyncio
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


async def _wait_healthy(url: str, proc=None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"worker exited early: {proc.stderr.read().decode()}")
            try:
                async with s.get(url + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("worker never became healthy")


async def test_serve_in_process_two_workers_share_a_port(settings):
    port = free_port()
    s = settings.replace(api_port=port)
    stop1, stop2 = asyncio.Event(), asyncio.Event()
    ready1, ready2 = asyncio.Event(), asyncio.Event()
    t1 = asyncio.create_task(serve(s, ready=ready1, stop=stop1))
    await asyncio.wait_for(ready1.wait(), 10)
    t2 = asyncio.create_task(serve(s.replace(api_index=6), ready=ready2, stop=stop2))
    await asyncio.wait_for(ready2.wait(), 10)        # SO_REUSEPORT: both bound
    await _wait_healthy(f"http://127.0.0.1:{port}")
    stop1.set()
    await asyncio.wait_for(t1, 10)
    await _wait_healthy(f"http://127.0.0.1:{port}")  # the other one still answers
    stop2.set()
    await asyncio.wait_for(t2, 10)


async def test_bind_failure_is_one_config_error(settings):
    with pytest.raises(ConfigError, match="cannot bind"):
        await serve(settings.replace(host="192.0.2.1", api_port=free_port()), stop=asyncio.Event())


async def test_kefu_api_subprocess_finishes_in_flight_request_on_sigterm(settings, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kefu", "api", "--api-port", str(port), "--redis-url", settings.redis_url,
         "--data-dir", str(tmp_path / "var"), "--push-secret", "p" * 32, "--log-level", "warning"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "KEFU_PREFIX": settings.prefix, "KEFU_STOP_TIMEOUT": "5"})
    base = f"http://127.0.0.1:{port}"
    try:
        await _wait_healthy(base, proc)
        async with aiohttp.ClientSession() as s:
            # the push secret flag is honoured
            async with s.get(base + "/goim/online/total", headers={"Authorization": "Bearer " + "p" * 32}) as r:
                assert r.status == 200
            from kefu.store import Store
            store = await Store.connect(settings)
            await store.create_shop("8000", name="x", password="pw-8000-secret")
            await store.close()
            async with s.get(base + "/open/im", params={"shop_id": "8000", "format": "json"}) as r:
                page = await r.json()
            gate = asyncio.Event()

            async def slow_body():
                yield b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
                yield png_bytes()[:20]
                await gate.wait()                 # the request is in flight when SIGTERM lands
                yield png_bytes()[20:]
                yield b"\r\n--B--\r\n"

            async def upload():
                async with s.post(base + "/upload/file", params={"key": page["key"]}, data=slow_body(),
                                  headers={"Content-Type": "multipart/form-data; boundary=B"}) as r:
                    return r.status, await r.json()

            task = asyncio.create_task(upload())
            await asyncio.sleep(1.0)                  # headers and the first bytes reach the handler
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            assert proc.poll() is None                # still draining
            gate.set()
            status, body = await asyncio.wait_for(task, 10)
            assert status == 200 and body["url"].endswith(".png")
        assert await asyncio.to_thread(proc.wait, 10) == 0
        with pytest.raises(aiohttp.ClientError):      # and it is gone
            async with aiohttp.ClientSession() as s2:
                async with s2.get(base + "/healthz"):
                    pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_silent_connections_are_closed(settings):
    """A connection that never sends a request is closed after handshake_timeout."""
    import socket as socketlib
    port = free_port()
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(settings.replace(api_port=port, handshake_timeout=1.0),
                                     ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        socks = [socketlib.create_connection(("127.0.0.1", port)) for _ in range(20)]
        t0 = time.monotonic()
        for s in socks:
            s.settimeout(10)
            assert await asyncio.to_thread(s.recv, 1) == b""      # EOF: closed by the server
            s.close()
        assert time.monotonic() - t0 < 8
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
