"""The API worker: kefu's HTTP routes (PROTOCOL.md §5), goim's push API,
uploads, the static front end, health and metrics, in one aiohttp process.

    app.py      make_app(settings, store): routes + the edge (errors, headers, metrics)
    common.py   context, parameters, client identity, answers
    guard.py    keys, agent sessions, blocks, token buckets
    visitor.py  /open/im, /open/push
    agent.py    /open/login, /open/logout, /open/session, /open/com,
                /open/finduserlist, /open/block
    goim.py     /goim/push/*, /goim/online/*, /goim/token
    uploads.py  /upload/file, /upload/<name>
    static.py   frontend/ at /
    ops.py      /healthz, /metrics, retention task
    worker.py   run_worker(): socket, loop, signals

Routes, parameters and answers are documented in docs/api.md.
"""
from __future__ import annotations

from .worker import run_worker

__all__ = ["add_parsers", "make_app", "run_worker"]


def make_app(settings, store, **kwargs):
    from .app import make_app as _make_app
    return _make_app(settings, store, **kwargs)


def _run(settings, args) -> int:
    """`kefu api`: one worker; joins (or starts) the data dir's embedded Redis without --redis-url."""
    embedded = None
    if not settings.redis_url:
        from ..redis_server import EmbeddedRedis
        embedded = EmbeddedRedis(settings.data_dir)
        settings = settings.replace(redis_url=embedded.start())
    try:
        run_worker(settings)
    finally:
        if embedded is not None:
            embedded.stop(only_if_idle=True)
    return 0


def add_parsers(subparsers) -> None:
    from ..__main__ import add_server_flags
    p = subparsers.add_parser("api", help="run one API worker (HTTP routes, goim push API, pages)")
    add_server_flags(p)
    p.add_argument("--push-secret", help="bearer secret of the goim push API (default: generated "
                                         "into the data dir; env KEFU_PUSH_SECRET)")
    p.add_argument("--access-log", action="store_true", default=None,
                   help="log one line per request at info level (off by default)")
    p.set_defaults(func=_run)
