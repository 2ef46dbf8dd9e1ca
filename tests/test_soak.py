"""A bounded soak: thousands of connections, heartbeats, a steady message rate.

Every connection is an accounting reader (tests/ledger.py): at the end each
one must hold exactly the acknowledged messages of its room, in order, and
every unread count must equal the ledger's.  Memory is checked against a
baseline taken after a warm-up cycle (the same clients connected once and
left): once the soak's clients have left, the comet workers must be back
near it, with no session, channel or subscription left behind — no leak
per connection or per room.

    KEFU_SOAK_SECONDS       traffic phase length (default 60; e.g. 1800 for a long soak)
    KEFU_SOAK_CONNECTIONS   connections (default 3000)
"""
from __future__ import annotations

import asyncio
import os
import resource
import time

import aiohttp
import pytest

from ledger import (
    Ledger, Reader, System, Writer, agent_params, agent_session, new_visitor, record, rss_kb, settle,
    unread_problems, wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SOAK_SECONDS = float(os.environ.get("KEFU_SOAK_SECONDS", "60"))
CONNECTIONS = int(os.environ.get("KEFU_SOAK_CONNECTIONS", "3000"))
ROOMS = max(10, CONNECTIONS // 20)
ENV = {"KEFU_RATE_VISITORS_PER_IP": "100000", "KEFU_RATE_MESSAGES_PER_SENDER": "1000",
       "KEFU_RATE_MESSAGES_PER_IP": "0", "KEFU_ONLINE_FLUSH_INTERVAL": "1"}


async def figures(api: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{api}/metrics") as r:
            text = await r.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("kefu_comet_") and " " in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def until_empty(api: str, timeout: float = 60.0) -> dict[str, float]:
    """Wait until the comet workers report no connection, member or channel left."""
    deadline = time.monotonic() + timeout
    while True:
        f = await figures(api)
        if f.get("kefu_comet_connections", 1) == 0 and f.get("kefu_comet_authenticated", 1) == 0 \
                and f.get("kefu_comet_channels", 1) == 0:
            return f
        if time.monotonic() > deadline:
            raise AssertionError(f"workers still hold state after every client left: {f}")
        await asyncio.sleep(0.5)


def rss(pids: list[int]) -> int:
    return sum(rss_kb(p) for p in pids)


def readers_for(system: System, visitors, agents, rooms, heartbeat: float) -> list[Reader]:
    readers = []
    for i in range(CONNECTIONS - len(agents)):
        v = visitors[i % len(visitors)]
        url = system.tcp if i % 2 else system.ws
        readers.append(Reader(url, v.params, [v.room], lean=True, heartbeat=heartbeat,
                              ack_every=5 if i < len(visitors) else 0))
    for j, a in enumerate(agents):
        readers.append(Reader(system.ws, a, rooms, agent=True, lean=True, heartbeat=heartbeat,
                              ack_every=4 if j == 0 else 0))
    return readers


async def connect_all(readers: list[Reader], batch: int = 200) -> float:
    t0 = time.monotonic()
    for i in range(0, len(readers), batch):
        for r in readers[i:i + batch]:
            r.start()
        await wait_until(lambda: all(r.servers for r in readers[i:i + batch]), 120, "a batch of connections")
    return time.monotonic() - t0


async def stop_all(readers: list[Reader]) -> None:
    await asyncio.gather(*(r.stop() for r in readers))


async def test_soak_thousands_of_connections_nothing_lost_memory_back_to_baseline(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < CONNECTIONS * 2 + 500:
        pytest.skip("RLIMIT_NOFILE too low for the soak")
    system = System(tmp_path / "var", workers=2, env=ENV).start()
    http = aiohttp.ClientSession()
    agent_http = None
    try:
        shop, password = system.demo_credentials()
        visitors = [await new_visitor(http, system.api, shop) for _ in range(ROOMS)]
        rooms = [v.room for v in visitors]
        agent_http = await agent_session(system.api, shop, password)
        agents = [await agent_params(agent_http, system.api, shop, visitors[k].params["mid"]) for k in range(2)]
        comets = system.comet_pids()
        assert len(comets) == 2

        # warm-up: the same number of clients comes and goes once; then the baseline
        warm = readers_for(system, visitors, agents, rooms, heartbeat=10)
        await connect_all(warm)
        await stop_all(warm)
        await until_empty(system.api)
        await asyncio.sleep(1.0)
        base = rss(comets)

        # the soak
        readers = readers_for(system, visitors, agents, rooms, heartbeat=10)
        took = await connect_all(readers)
        peak = rss(comets)
        ledger_writers = []
        ledger = Ledger()
        ledger_writers.append(Writer(http, system.api, [v.params for v in visitors], ledger, rate=25).start())
        agent_senders = [await agent_params(agent_http, system.api, shop, v.params["mid"]) for v in visitors[:20]]
        ledger_writers.append(Writer(http, system.api, agent_senders, ledger, rate=5).start())
        t0 = time.monotonic()
        while time.monotonic() - t0 < SOAK_SECONDS:
            await asyncio.sleep(1.0)
            peak = max(peak, rss(comets))
            assert system.proc.poll() is None and len(system.worker_pids()) == 3, system.log()[-3000:]
        for w in ledger_writers:
            await w.stop()
        problems = await settle(readers, ledger, timeout=120)
        await asyncio.sleep(0.5)
        heartbeats = sum(r.heartbeats for r in readers)
        reconnects = sum(r.reconnects for r in readers)
        for r in readers:                          # the acks in flight land before counting
            r._stop = True
        await stop_all(readers)
        first = {v.room: (v.params, [r for r in readers if not r.agent and r.rooms == [v.room]])
                 for v in visitors}
        problems += await unread_problems(system.api, shop, agent_http, ledger, readers[-2], first)
        assert ledger.failures == 0, f"{ledger.failures} posts never acknowledged"
        assert not problems, "\n".join(problems[:30])
        assert reconnects == 0, f"{reconnects} reconnects during a quiet soak"

        # every client left: nothing may be held for them
        left = await until_empty(system.api)
        await asyncio.sleep(1.0)
        after = rss(comets)
        growth = (after - base) / 1024
        per_conn = (peak - base) * 1024 / CONNECTIONS
        assert growth < max(16.0, base / 1024 * 0.15), \
            f"comet workers kept {growth:.1f} MiB after every client left (baseline {base / 1024:.1f} MiB)"
        record("soak", seconds=SOAK_SECONDS, connections=CONNECTIONS, rooms=ROOMS,
               messages=ledger.total(), deliveries_checked=sum(len(r.seen[x]) for r in readers for x in r.rooms),
               heartbeats=heartbeats, lost=0, connect_s=round(took, 1),
               rss_base_mib=round(base / 1024, 1), rss_peak_mib=round(peak / 1024, 1),
               rss_after_mib=round(after / 1024, 1), bytes_per_connection=int(per_conn),
               bus_messages=left.get("kefu_comet_bus_messages_total"))
    finally:
        await http.close()
        if agent_http is not None:
            await agent_http.close()
        system.kill_all()
