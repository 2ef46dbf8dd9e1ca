"""Several nodes on one Redis: two real `kefu run` supervisors (distinct data
dirs and node ids, no secret configured) share one redis-server, or one
Redis Cluster, and serve one shop together.

A visitor on node A and the shop's agent on node B chat through their own
node's API and comet; the ledger must come out clean, online state and
unread counts must agree whichever API is asked, goim pushes by key, mid,
room and to all reach connections on both nodes, and ids from both nodes
never collide and increase within a room.
"""
from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from cluster_fixtures import HAVE_CLUSTER, SHARDED_PUBSUB, LocalCluster
from conftest import start_redis
from kefu import client as kclient
from kefu.ids import SEQ_BITS, WORKER_BITS, worker_for
from kefu.protocol import Op
from ledger import (Ledger, Reader, System, Writer, agent_params, agent_session, conversations,
                    new_visitor, settle, unread_problems, wait_until)

pytestmark = pytest.mark.slow

ENV = {"KEFU_RATE_VISITORS_PER_IP": "1000", "KEFU_RATE_MESSAGES_PER_SENDER": "1000",
       "KEFU_RATE_MESSAGES_PER_IP": "0", "KEFU_ONLINE_FLUSH_INTERVAL": "0.5"}
NODE_A, NODE_B = 1, 2


class Nodes:
    def __init__(self, a: System, b: System, backend: str):
        self.a, self.b, self.backend = a, b, backend
        self.shop, self.password = a.demo_credentials()

    def push_secret(self, node: System) -> str:
        return (node.data_dir / "push_secret").read_text().strip()


@pytest.fixture(scope="module", params=["redis", "cluster"])
def nodes(request, tmp_path_factory):
    """Two nodes (1 comet worker each) on a private redis-server or a 3-master cluster."""
    tmp = tmp_path_factory.mktemp(f"multinode-{request.param}")
    stop = None
    if request.param == "redis":
        url, proc = start_redis(tmp)
        stop = proc.kill
    else:
        if not (HAVE_CLUSTER and SHARDED_PUBSUB):
            pytest.skip("needs redis-server >= 7.0 and redis-cli")
        cluster = LocalCluster(tmp / "cluster").start()
        url, stop = cluster.url, cluster.stop
    systems = []
    env = {**ENV, "KEFU_UPLOADS_DIR": str(tmp / "shared-uploads")}     # the mount both nodes share
    try:
        a = System(tmp / "a", redis_url=url, workers=1, env=env, extra=["--node-id", str(NODE_A)]).start()
        systems.append(a)
        b = System(tmp / "b", redis_url=url, workers=1, env=env, extra=["--node-id", str(NODE_B)]).start()
        systems.append(b)
        yield Nodes(a, b, request.param)
    finally:
        for s in systems:
            s.kill_all()
        stop()


def test_secrets_are_shared_through_redis(nodes):
    for name in ("secret", "push_secret"):
        assert (nodes.a.data_dir / name).read_text() == (nodes.b.data_dir / name).read_text()


async def test_a_node_id_in_use_by_a_live_node_is_refused(nodes, tmp_path):
    """A third node configured with node A's id (its own data dir) would draw the
    same id worker fields: it must refuse to start, naming the node that has it."""
    from kefu.config import Settings
    from kefu.store import Store
    store = await Store.connect(Settings(redis_url=nodes.a.redis_url))
    try:
        async def reported() -> bool:
            return any(sid.startswith(f"{NODE_A}:") for sid in await store.servers())
        for _ in range(100):
            if await reported():
                break
            await asyncio.sleep(0.1)
        assert await reported()
    finally:
        await store.close()
    c = System(tmp_path / "c", redis_url=nodes.a.redis_url, workers=1, env=ENV,
               extra=["--node-id", str(NODE_A)])
    try:
        with pytest.raises(RuntimeError, match=f"node id {NODE_A} is in use by a live node"):
            await asyncio.to_thread(c.start, 30)
    finally:
        c.kill_all()
    assert str(nodes.a.data_dir.resolve()) in c.log()


async def test_visitor_on_a_agent_on_b_ledger_and_unread(nodes):
    a, b = nodes.a, nodes.b
    http = aiohttp.ClientSession()
    agent_http = await agent_session(b.api, nodes.shop, nodes.password)
    readers, writers = [], []
    try:
        visitors = [await new_visitor(http, a.api, nodes.shop) for _ in range(4)]
        agents = [await agent_params(agent_http, b.api, nodes.shop, v.params["mid"]) for v in visitors]
        for i, v in enumerate(visitors):
            readers.append(Reader(a.tcp if i % 2 else a.ws, v.params, [v.room], ack_every=2).start())
        agent_reader = Reader(b.ws, agents[0], [v.room for v in visitors], agent=True, ack_every=3).start()
        readers.append(agent_reader)
        await wait_until(lambda: all(r.servers for r in readers), 30, "readers to authenticate")
        ledger = Ledger()
        writers = [Writer(http, a.api, [v.params for v in visitors], ledger, rate=30).start(),
                   Writer(http, b.api, agents, ledger, rate=10).start()]
        await asyncio.sleep(3)
        for w in writers:
            await w.stop()
        problems = await settle(readers, ledger, timeout=30)
        await asyncio.sleep(0.3)
        for r in readers:
            await r.stop()
        assert ledger.failures == 0 and ledger.total() > 20
        assert {s.split(":")[0] for s in agent_reader.servers} == {str(NODE_B)}
        assert {r.servers[0].split(":")[0] for r in readers[:-1]} == {str(NODE_A)}
        rooms = {v.room: (v.params, [readers[i]]) for i, v in enumerate(visitors)}
        problems += await unread_problems(b.api, nodes.shop, agent_http, ledger, agent_reader, rooms)
        assert not problems, "\n".join(problems)
        # the same list, asked of node A's API with a session made on node B
        agent_on_a = aiohttp.ClientSession(cookie_jar=agent_http.cookie_jar)
        try:
            on_a = await conversations(agent_on_a, a.api, nodes.shop)
        finally:
            await agent_on_a.close()
        on_b = await conversations(agent_http, b.api, nodes.shop)
        assert {r: (row["seq"], row["num"]) for r, row in on_a.items()} == \
               {r: (row["seq"], row["num"]) for r, row in on_b.items()}
    finally:
        for w in writers:
            w._stop.set()
        for r in readers:
            await r.stop()
        await http.close()
        await agent_http.close()


async def test_online_state_agrees_on_both_apis(nodes):
    a, b = nodes.a, nodes.b
    async with aiohttp.ClientSession() as http:
        here, there = await new_visitor(http, a.api, nodes.shop), await new_visitor(http, b.api, nodes.shop)
    agent_a = await agent_session(a.api, nodes.shop, nodes.password)
    agent_b = await agent_session(b.api, nodes.shop, nodes.password)
    c1 = await kclient.connect(a.ws)        # visitor `here` on node A's comet
    c2 = await kclient.connect(b.tcp)       # visitor `there` on node B's comet
    try:
        await c1.auth(here.params["key"], mid=here.params["mid"], room_id=here.room)
        await c2.auth(there.params["key"], mid=there.params["mid"], room_id=there.room)

        async def online(http, api):
            rows = await conversations(http, api, nodes.shop)
            return rows[here.room]["online"], rows[there.room]["online"]

        for http, api in ((agent_a, a.api), (agent_b, b.api)):
            for _ in range(100):
                if await online(http, api) == (True, True):
                    break
                await asyncio.sleep(0.1)
            assert await online(http, api) == (True, True), api
        await c1.close()
        for http, api in ((agent_a, a.api), (agent_b, b.api)):
            for _ in range(100):
                if await online(http, api) == (False, True):
                    break
                await asyncio.sleep(0.1)
            assert await online(http, api) == (False, True), api
    finally:
        for c in (c1, c2):
            with contextlib.suppress(Exception):
                await c.close()
        await agent_a.close()
        await agent_b.close()


async def test_goim_pushes_reach_connections_on_every_node(nodes):
    a, b = nodes.a, nodes.b
    async with aiohttp.ClientSession() as http:
        va, vb = await new_visitor(http, a.api, nodes.shop), await new_visitor(http, b.api, nodes.shop)
        clients = {}
        try:
            for name, v, url in (("a", va, a.ws), ("b", vb, b.tcp), ("b2", va, b.ws)):
                c = clients[name] = await kclient.connect(url)
                await c.auth(v.params["key"], mid=v.params["mid"], room_id=v.room)
            auth = {"Authorization": f"Bearer {nodes.push_secret(a)}"}

            async def push(api, path, params, body):
                async with http.post(f"{api}/goim/push/{path}", params=params, data=body, headers=auth) as r:
                    assert r.status == 200, await r.text()
                    assert (await r.json())["code"] == 0

            async def got(name, op, body, timeout=10.0):
                while True:
                    f = await clients[name].recv(timeout=timeout)
                    if f.op == op:
                        assert f.body == body
                        return

            # from node A's API to connections on both nodes, and from B's as well
            await push(a.api, "mids", [("operation", "1001"), ("mids", va.params["mid"]),
                                       ("mids", vb.params["mid"])], b"by mid")
            for name in ("a", "b", "b2"):
                await got(name, 1001, b"by mid")
            await push(b.api, "keys", [("operation", "1002"), ("keys", va.params["key"])], b"by key")
            for name in ("a", "b2"):
                await got(name, 1002, b"by key")
            await push(a.api, "room", {"operation": "1003", "room": va.room}, b"to the room")
            for name in ("a", "b2"):
                await got(name, 1003, b"to the room")
            await push(b.api, "all", {"operation": "1004"}, b"to all")
            for name in ("a", "b", "b2"):
                await got(name, 1004, b"to all")
            with pytest.raises(asyncio.TimeoutError):      # vb is in another room, and has no key push
                await got("b", 1003, b"to the room", timeout=1.0)
        finally:
            for c in clients.values():
                with contextlib.suppress(Exception):
                    await c.close()


GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,"
       b"\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


async def test_an_image_uploaded_on_one_node_is_served_by_the_other(nodes):
    from urllib.parse import urlsplit
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        v = await new_visitor(http, nodes.a.api, nodes.shop)
        form = aiohttp.FormData()
        form.add_field("file", GIF, filename="a.gif", content_type="image/gif")
        async with http.post(f"{nodes.a.api}/upload/file", params={"key": v.params["key"]}, data=form) as r:
            assert r.status == 200, await r.text()
            url = (await r.json())["url"]
        async with http.get(f"{nodes.b.api}{urlsplit(url).path}") as r:
            assert r.status == 200 and await r.read() == GIF


async def test_ids_from_both_nodes_never_collide_and_increase(nodes):
    a, b = nodes.a, nodes.b
    async with aiohttp.ClientSession() as http:
        v = await new_visitor(http, a.api, nodes.shop)
        ledger = Ledger()
        wa, wb = Writer(http, a.api, [v.params], ledger), Writer(http, b.api, [v.params], ledger)

        async def burst(w, n):
            return await asyncio.gather(*(w.post(v.params, f"{i}") for i in range(n)))
        ids_a, ids_b = await asyncio.gather(burst(wa, 60), burst(wb, 60))
        assert None not in ids_a + ids_b and len(set(ids_a + ids_b)) == 120
        workers = {(i >> SEQ_BITS) & ((1 << WORKER_BITS) - 1) for i in ids_a}, \
                  {(i >> SEQ_BITS) & ((1 << WORKER_BITS) - 1) for i in ids_b}
        assert workers == ({worker_for(NODE_A, 7)}, {worker_for(NODE_B, 7)})
        c = await kclient.connect(b.ws)
        try:
            await c.auth(v.params["key"], mid=v.params["mid"], room_id=v.room)
            history = [m["id"] for m in await c.sync_all(after=0)]
        finally:
            await c.close()
        assert history == sorted(ids_a + ids_b)        # stored order is id order across nodes
