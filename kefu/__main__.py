"""`python -m kefu`: the command line.  Builds Settings once, dispatches.

Each subcommand lives in the module that owns it and exports
`add_parsers(subparsers)`; parsers set `func(settings, args) -> int`.
A module that is not built yet makes its subcommand say so and exit 2.
Errors raised as KefuError become one line on stderr and exit 1.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__, config
from .errors import KefuError

log = logging.getLogger("kefu")

# subcommand -> module providing it (supervisor: run; comet/api: workers; admin: shop, token, secret)
PROVIDERS = {
    "run": "kefu.supervisor",
    "comet": "kefu.comet",
    "api": "kefu.api",
    "shop": "kefu.cli_admin",
    "token": "kefu.cli_admin",
    "secret": "kefu.cli_admin",
}
SERVERS = ("run", "comet", "api")


def add_server_flags(p: argparse.ArgumentParser) -> None:
    """The flags of `kefu run` (fixed: tooling relies on them); workers share them."""
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--api-port", type=int, help="HTTP API and pages (default 8090)")
    p.add_argument("--comet-port", type=int, help="WebSocket /sub (default 3102)")
    p.add_argument("--tcp-port", type=int, help="goim raw TCP (default 3101)")
    p.add_argument("--workers", type=int, help="comet workers (default: one per CPU)")
    p.add_argument("--api-workers", type=int, help="API processes sharing the API port (default 1)")
    p.add_argument("--redis-url", help="redis://, unix:// or redis+cluster://; none = embedded")
    p.add_argument("--node-id", type=int, help="distinct per node sharing one Redis (0..15)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", dest="config_file", help="TOML settings file")
    p.add_argument("--data-dir", help="data directory (default ./var)")
    p.add_argument("--log-level", help="debug, info, warning, error")


def _not_built(name: str):
    def run(settings, args) -> int:
        print(f"kefu {name}: not built yet in this version", file=sys.stderr)
        return 2
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kefu", description="customer-service chat server (goim protocol)")
    parser.add_argument("--version", action="version", version=f"kefu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="show version, active codec and settings")
    _common(info)
    info.set_defaults(func=_info)
    loaded: set[str] = set()
    for name, module in PROVIDERS.items():
        if module in loaded:
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            p = sub.add_parser(name, help="(not built yet)")
            _common(p)
            if name in SERVERS:
                add_server_flags(p)
            p.set_defaults(func=_not_built(name))
            continue
        loaded.add(module)
        before = set(sub.choices)
        mod.add_parsers(sub)
        for added in set(sub.choices) - before:
            _common_once(sub.choices[added])
    return parser


def _common_once(p: argparse.ArgumentParser) -> None:
    known = {a.dest for a in p._actions}
    if "data_dir" not in known:
        _common(p)
    for sp in (a for a in p._actions if isinstance(a, argparse._SubParsersAction)):
        for child in sp.choices.values():
            _common_once(child)


def _info(settings: config.Settings, args) -> int:
    from . import tlv
    print(f"kefu {__version__}")
    print(f"codec: {tlv.IMPLEMENTATION}")
    for key, value in sorted(vars(settings).items()):
        if key in ("secret", "push_secret") and value:
            value = "(set)"
        print(f"  {key} = {value!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command in SERVERS:
        from . import fastloop
        fastloop.install()                # uvloop when installed; forked workers inherit it
    try:
        settings = config.load(vars(args), config_file=getattr(args, "config_file", None))
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s")
        return int(args.func(settings, args) or 0)
    except KefuError as exc:
        print(f"kefu: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
