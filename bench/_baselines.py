"""Baseline servers the comet benchmarks measure next to kefu (not benchmarks).

    echo-tcp PORT              bare asyncio TCP server echoing every byte
    echo-ws PORT               bare aiohttp WebSocket server at /sub echoing every message
    fanout PORT REDIS MODE     minimal goim-style TCP push server on the same Redis bus as
                               kefu (kefu.bus): auth = {"room_id": ...} (no key check),
                               op 8 reply, then every frame published on the room's channel
                               is written to the room's connections.
                               MODE direct: room -> connections index (the floor);
                               MODE scan: every connection is looked at for every
                               message (the seed's design: cost grows with all connections)

Each prints "listening" on stderr when ready and stops on SIGTERM.
"""
from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402

from kefu import tlv  # noqa: E402
from kefu.comet import bind_socket, raise_fd_limit  # noqa: E402
from kefu.keys import Keys  # noqa: E402
from kefu.protocol import Op  # noqa: E402


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport

    def data_received(self, data):
        self.t.write(data)


async def echo_tcp(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Echo, sock=bind_socket("127.0.0.1", port))
    await until_stopped()
    server.close()


async def echo_ws(port: int) -> None:
    from aiohttp import WSMsgType, web

    async def sub(request):
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws
    app = web.Application()
    app.router.add_get("/sub", sub)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, bind_socket("127.0.0.1", port)).start()
    await until_stopped()
    await runner.cleanup()


class Router:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.rooms: dict[bytes, list] = {}
        self.everyone: list = []
        self.bus = None

    def join(self, conn) -> None:
        members = self.rooms.setdefault(conn.channel, [])
        if not members:
            self.bus.want(conn.channel)
        members.append(conn.t)
        self.everyone.append(conn)

    def deliver(self, channel: bytes, frame: bytes) -> None:
        if self.mode == "direct":
            for t in self.rooms.get(channel, ()):
                t.write(frame)
        else:
            for conn in self.everyone:
                if conn.channel == channel:
                    conn.t.write(frame)


class PushConn(asyncio.Protocol):
    def __init__(self, router: Router, keys: Keys) -> None:
        self.router, self.keys = router, keys
        self.decoder = tlv.StreamDecoder()
        self.channel = None

    def connection_made(self, transport):
        self.t = transport

    def data_received(self, data):
        for op, seq, body in self.decoder.feed(data):
            if op == Op.AUTH and self.channel is None:
                self.channel = self.keys.room_channel(orjson.loads(body)["room_id"]).encode()
                self.router.join(self)
                self.t.write(tlv.encode(Op.AUTH_REPLY, seq, b"{}"))


async def fanout(port: int, redis_url: str, mode: str) -> None:
    from kefu.bus import Bus
    router = Router(mode)
    keys = Keys("kefu:")
    router.bus = Bus(redis_url, router.deliver)
    await router.bus.start(wait=10)
    server = await asyncio.get_running_loop().create_server(
        lambda: PushConn(router, keys), sock=bind_socket("127.0.0.1", port))
    await until_stopped()
    server.close()
    await router.bus.close()


async def until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("listening", file=sys.stderr, flush=True)
    await stop.wait()


def main() -> None:
    raise_fd_limit()
    kind, port, *rest = sys.argv[1:]
    if kind == "echo-tcp":
        asyncio.run(echo_tcp(int(port)))
    elif kind == "echo-ws":
        asyncio.run(echo_ws(int(port)))
    elif kind == "fanout":
        asyncio.run(fanout(int(port), rest[0], rest[1]))
    else:
        raise SystemExit(f"unknown baseline {kind}")


if __name__ == "__main__":
    main()
