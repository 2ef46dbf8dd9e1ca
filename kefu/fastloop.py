"""The event loop the servers run on: uvloop when it is installed, else asyncio's own.

uvloop (libuv, in C) runs the same asyncio programs with the loop, the
socket transports and the timers compiled: kefu's workers spend most of
their time there (bench/bench_chat.py: about a third of the API worker's
CPU is asyncio's selector transports and loop), so it is the cheapest
large gain there is.  Nothing in kefu depends on it: without it, or with
KEFU_NO_UVLOOP=1, the same code runs on asyncio's loop.

install() is called once by `python -m kefu` before any loop exists; forked
workers inherit the policy.
"""
from __future__ import annotations

import asyncio
import os

IMPLEMENTATION = "asyncio"


def install() -> str:
    """Make new event loops uvloop ones when possible; -> "uvloop" or "asyncio"."""
    global IMPLEMENTATION
    if os.environ.get("KEFU_NO_UVLOOP", "") not in ("", "0"):
        IMPLEMENTATION = "asyncio"
        return IMPLEMENTATION
    try:
        import uvloop
    except ImportError:
        IMPLEMENTATION = "asyncio"
        return IMPLEMENTATION
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    IMPLEMENTATION = "uvloop"
    return IMPLEMENTATION
