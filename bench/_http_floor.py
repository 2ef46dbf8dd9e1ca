"""The HTTP floor: an aiohttp server whose POST /open/push does nothing (not a benchmark).

    python bench/_http_floor.py PORT

Same stack as kefu's API worker (aiohttp web, one process, the form body
read and parsed, a small JSON answer), no Redis, no checks: what one
request costs before kefu does anything.  bench_chat.py drives it with the
same poster as the real API and prints its CPU per request beside the
API's.  Prints "listening" on stderr when ready; stops on SIGTERM.
"""
from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web

BODY = b'{"success":true,"id":1,"id_str":"1","duplicate":false,"data":null}'


async def push(request: web.Request) -> web.Response:
    form = await request.post()
    if not form.get("room_id"):
        raise web.HTTPBadRequest()
    return web.Response(body=BODY, content_type="application/json")


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_post("/open/push", push)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print("listening", file=sys.stderr, flush=True)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
