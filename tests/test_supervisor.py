"""`kefu run` as a merchant runs it: a real supervisor subprocess with its
embedded Redis, real workers, real clients, and delivery accounting.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest

from ledger import Ledger, Reader, System, Writer, agent_params, agent_session, alive, new_visitor, settle

pytestmark = [pytest.mark.slow, pytest.mark.reliability]   # SIGKILL/SIGHUP faults of the reliability suite

# Tests open many visitors from one loopback address: lift the per-IP limits.
LOOSE = {"KEFU_RATE_VISITORS_PER_IP": "1000", "KEFU_RATE_MESSAGES_PER_SENDER": "1000"}


@pytest.fixture
def system(tmp_path):
    sys_ = System(tmp_path / "var", workers=2, env=LOOSE).start()
    yield sys_
    sys_.kill_all()


async def _wait_until(pred, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def _traffic(system: System, n_visitors: int = 6):
    """Visitors (each reading its room) plus the shop's agent (reading all rooms)."""
    shop, password = system.demo_credentials()
    http = aiohttp.ClientSession()
    visitors = [await new_visitor(http, system.api, shop) for _ in range(n_visitors)]
    agent_http = await agent_session(system.api, shop, password)
    agent = await agent_params(agent_http, system.api, shop, visitors[0].params["mid"])
    rooms = [v.room for v in visitors]
    readers = [Reader(system.ws if i % 2 else system.tcp, v.params, [v.room]).start()
               for i, v in enumerate(visitors)]
    readers.append(Reader(system.ws, agent, rooms, agent=True).start())
    await _wait_until(lambda: all(r.servers for r in readers), what="readers to authenticate")
    ledger = Ledger()
    writer = Writer(http, system.api, [v.params for v in visitors], ledger, rate=60).start()
    return http, agent_http, readers, writer, ledger


async def _finish(http, agent_http, readers, writer, ledger, timeout=30.0):
    await writer.stop()
    problems = await settle(readers, ledger, timeout=timeout)
    for r in readers:
        await r.stop()
    await http.close()
    await agent_http.close()
    assert ledger.failures == 0, f"{ledger.failures} posts were never acknowledged"
    assert sum(map(len, ledger.rooms.values())) > 0
    assert not problems, "\n".join(problems)


async def test_connections_spread_over_workers(system):
    shop, _ = system.demo_credentials()
    async with aiohttp.ClientSession() as http:
        visitors = [await new_visitor(http, system.api, shop) for _ in range(4)]
    readers = [Reader(system.tcp if i % 2 else system.ws, visitors[i % 4].params, [visitors[i % 4].room]).start()
               for i in range(40)]
    try:
        await _wait_until(lambda: all(r.servers for r in readers), what="40 connections")
        servers = {r.servers[0] for r in readers}
        assert len(servers) == 2, f"all 40 connections landed on {servers}"
    finally:
        for r in readers:
            await r.stop()


async def test_sigkill_of_a_comet_worker_loses_nothing(system):
    http, agent_http, readers, writer, ledger = await _traffic(system)
    await asyncio.sleep(1.0)
    victim = system.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    await asyncio.sleep(1.5)
    await _wait_until(lambda: len(system.worker_pids()) == 3, what="the worker to be restarted")
    assert victim not in system.worker_pids()
    await asyncio.sleep(1.0)
    await _finish(http, agent_http, readers, writer, ledger)
    assert "died with signal SIGKILL" in system.log()


async def test_sighup_rolling_restart_loses_nothing(system):
    http, agent_http, readers, writer, ledger = await _traffic(system)
    before = set(system.worker_pids())
    await asyncio.sleep(0.5)
    system.send(signal.SIGHUP)
    await _wait_until(lambda: "rolling restart done" in system.log(), timeout=60, what="rolling restart")
    after = set(system.worker_pids())
    assert len(before - after) == 2, "both comet workers should have been replaced"
    assert len(after) == 3
    await asyncio.sleep(0.5)
    await _finish(http, agent_http, readers, writer, ledger)
    assert sum(r.reconnects for r in readers) > 0


def test_sigterm_stops_everything_within_the_bound(system):
    children = system.children()
    redis_pid = system.redis_pid()
    assert redis_pid in children and len(children) == 4   # 2 comets, api, redis-server
    started = time.monotonic()
    code = system.stop(signal.SIGTERM, timeout=30)
    took = time.monotonic() - started
    assert code == 0, system.log()
    assert took < 15, f"stopping took {took:.1f}s"
    assert not [p for p in children if alive(p)], "children left behind"
    assert "embedded redis-server stopped" in system.log()


async def test_restart_keeps_conversations(tmp_path):
    data = tmp_path / "var"
    first = System(data, workers=1, env=LOOSE).start()
    try:
        shop, _ = first.demo_credentials()
        async with aiohttp.ClientSession() as http:
            visitor = await new_visitor(http, first.api, shop)
            ledger = Ledger()
            writer = Writer(http, first.api, [visitor.params], ledger)
            for i in range(5):
                assert await writer.post(visitor.params, f"before restart {i}")
    finally:
        assert first.stop() == 0
    second = System(data, workers=1, env=LOOSE).start()
    try:
        assert second.demo_credentials() == (shop, first.demo_credentials()[1])
        reader = Reader(second.ws, visitor.params, [visitor.room]).start()
        problems = await settle([reader], ledger, timeout=15)
        await reader.stop()
        assert not problems, problems
    finally:
        second.kill_all()


def test_second_supervisor_on_the_same_data_dir_is_refused(system):
    other = System(system.data_dir, workers=1)
    with pytest.raises(RuntimeError, match="another `kefu run` is using data dir"):
        other.start(timeout=20)


async def test_sigkill_of_the_supervisor_leaves_no_child_and_a_new_run_recovers(system):
    shop, _ = system.demo_credentials()
    async with aiohttp.ClientSession() as http:
        visitor = await new_visitor(http, system.api, shop)
        ledger = Ledger()
        for i in range(3):
            assert await Writer(http, system.api, [visitor.params], ledger).post(visitor.params, f"m{i}")
    children = system.children()
    system.proc.kill()
    system.proc.wait(10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(p) for p in children):
        await asyncio.sleep(0.1)
    assert not [p for p in children if alive(p)], "children outlived a SIGKILLed supervisor"
    again = System(system.data_dir, workers=1, env=LOOSE).start()
    try:
        reader = Reader(again.ws, visitor.params, [visitor.room]).start()
        problems = await settle([reader], ledger, timeout=15)
        await reader.stop()
        assert not problems, problems
    finally:
        again.kill_all()


async def test_several_api_workers_share_the_port_with_distinct_id_fields(tmp_path):
    from kefu import ids
    sys_ = System(tmp_path / "var", workers=1, env=LOOSE, extra=["--api-workers", "2"]).start()
    try:
        assert len(sys_.worker_pids()) == 3                    # 1 comet + 2 API
        shop, _ = sys_.demo_credentials()
        fields = set()
        ledger = Ledger()
        for i in range(40):                                     # a new connection each: the kernel spreads them
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
                visitor = await new_visitor(http, sys_.api, shop)
                msg_id = await Writer(http, sys_.api, [visitor.params], ledger).post(visitor.params, f"m{i}")
                fields.add((msg_id >> ids.SEQ_BITS) & ids.MAX_WORKER)
            if len(fields) == 2:
                break
        assert fields == {ids.worker_for(0, 7), ids.worker_for(0, 6)}, fields
        assert "2 API worker(s)" in sys_.log()
    finally:
        sys_.kill_all()
