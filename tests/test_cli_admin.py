"""`kefu shop create`, `kefu token`, `kefu secret`: the real command line in a subprocess.

The commands run through kefu.__main__.main (its parser hook and its
one-line error handling) with only the admin provider loaded, so these
tests do not depend on the other subcommands' modules being importable;
one test runs the unrestricted `python -m kefu` when it builds.
"""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kefu.config import Settings
from kefu.redis_server import EmbeddedRedis
from kefu.store import Store
from kefu.tokens import Signer, load_secret

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ("import sys, kefu.__main__ as m; "
          "m.PROVIDERS = {k: v for k, v in m.PROVIDERS.items() if v == 'kefu.cli_admin'}; "
          "sys.exit(m.main(sys.argv[1:]))")


def kefu(*args, env=None, full=False):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("KEFU_")}
    environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
    environ.update(env or {})
    cmd = [sys.executable, "-m", "kefu"] if full else [sys.executable, "-c", DRIVER]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=environ, cwd=ROOT, timeout=60)


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "d"
    yield d
    emb = EmbeddedRedis(d)
    pid = emb._pid()
    if emb.running_url() and pid:
        os.kill(pid, signal.SIGKILL)


async def _agent_ok(settings, shop, password, url=None):
    store = await Store.connect(settings.replace(redis_url=url or settings.redis_url))
    try:
        return await store.check_agent(shop, password), await store.shop_info(shop)
    finally:
        await store.close()


async def test_shop_create_against_a_redis_url(settings, store):
    r = kefu("shop", "create", "8000", "--name", "Shop A", "--password", "pw1",
             "--redis-url", settings.redis_url, "--data-dir", settings.data_dir,
             env={"KEFU_PREFIX": settings.prefix})
    assert r.returncode == 0, r.stderr
    assert "8000" in r.stdout
    ok, info = await _agent_ok(settings, "8000", "pw1")
    assert ok and info["name"] == "Shop A"
    r = kefu("shop", "create", "8000", "--name", "Shop B", "--password", "pw2",
             "--redis-url", settings.redis_url, env={"KEFU_PREFIX": settings.prefix})
    assert r.returncode == 0, r.stderr
    assert await _agent_ok(settings, "8000", "pw1") == (False, {**info, "name": "Shop B"})
    assert (await _agent_ok(settings, "8000", "pw2"))[0]


def test_errors_are_one_line(settings, data_dir):
    r = kefu("shop", "create", "bad_id!", "--password", "x", "--redis-url", settings.redis_url)
    assert r.returncode == 1 and r.stderr.strip() == "kefu: invalid shop_id"
    r = kefu("shop", "create", "8000", "--password", "x", "--redis-url", "redis://127.0.0.1:1/0")
    assert r.returncode == 1 and r.stderr.startswith("kefu: redis unavailable")
    assert len(r.stderr.strip().splitlines()) == 1
    r = kefu("shop", "create", "8000", "--data-dir", str(data_dir), "--redis-url", settings.redis_url)
    assert r.returncode == 1 and "password" in r.stderr          # no terminal to ask on
    r = kefu("token", "--mid", "v 1", "--room", "8000_v1", "--data-dir", str(data_dir))
    assert r.returncode == 1 and r.stderr.strip() == "kefu: invalid mid"


async def test_shop_create_with_the_embedded_redis(settings, data_dir):
    """No --redis-url: starts the data dir's Redis for the moment, and the data persists."""
    r = kefu("shop", "create", "8000", "--password", "pw", "--data-dir", str(data_dir))
    assert r.returncode == 0, r.stderr
    assert EmbeddedRedis(data_dir).running_url() is None               # stopped again
    with EmbeddedRedis(data_dir) as emb:                              # as `kefu run` would
        r = kefu("shop", "create", "8001", "--password", "pw2", "--data-dir", str(data_dir))
        assert r.returncode == 0, r.stderr
        assert EmbeddedRedis(data_dir).running_url() == emb.url       # the running one was used
        embedded = settings.replace(data_dir=str(data_dir), prefix="kefu:")
        ok, info = await _agent_ok(embedded, "8000", "pw", url=emb.url)
        assert ok and info["name"] == "8000"
        assert (await _agent_ok(embedded, "8001", "pw2", url=emb.url))[0]


def test_token_is_signed_with_the_data_dir_secret(data_dir):
    r = kefu("token", "--mid", "v1", "--room", "8000_v1", "--ttl", "60", "--data-dir", str(data_dir))
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    claims = Signer(load_secret(Settings(data_dir=str(data_dir)), "secret")).verify_key(key, mid="v1", room="8000_v1")
    assert claims.shop == "8000" and claims.role == "visitor"
    r = kefu("token", "--mid", "a", "--room", "8000_v1", "--role", "agent", "--data-dir", str(data_dir),
             env={"KEFU_SECRET": "a-configured-secret-123"})
    assert Signer(b"a-configured-secret-123").verify_key(r.stdout.strip()).role == "agent"


def test_push_secret(data_dir):
    first = kefu("secret", "show-push", "--data-dir", str(data_dir))
    assert first.returncode == 0 and len(first.stdout.strip()) >= 32
    assert kefu("secret", "show-push", "--data-dir", str(data_dir)).stdout == first.stdout
    assert stat.S_IMODE(os.stat(data_dir / "push_secret").st_mode) == 0o600
    r = kefu("secret", "set-push", "merchant-chosen-secret-1", "--data-dir", str(data_dir))
    assert r.returncode == 0
    assert kefu("secret", "show-push", "--data-dir", str(data_dir)).stdout.strip() == "merchant-chosen-secret-1"
    r = kefu("secret", "set-push", "--data-dir", str(data_dir), env={"KEFU_PUSH_SECRET": "x" * 20})
    assert r.returncode == 1 and "configuration" in r.stderr
    r = kefu("secret", "set-push", "short", "--data-dir", str(data_dir))
    assert r.returncode == 1 and "16" in r.stderr


def test_full_command_line(data_dir):
    """The unrestricted `python -m kefu`, once every provider module builds."""
    if kefu("--help", full=True).returncode != 0:
        pytest.skip("python -m kefu does not build yet (another subcommand's module is unfinished)")
    r = kefu("token", "--mid", "v1", "--room", "8000_v1", "--data-dir", str(data_dir), full=True)
    assert r.returncode == 0, r.stderr
    assert Signer(load_secret(Settings(data_dir=str(data_dir)), "secret")).verify_key(r.stdout.strip())
