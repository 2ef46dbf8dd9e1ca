"""Secrets of several nodes on one Redis (kefu.bootstrap.share_secrets): the
first node's value wins, every node ends up with it in its data dir, a
configured secret never goes to Redis."""
from __future__ import annotations

from kefu.bootstrap import share_secrets
from kefu.tokens import load_secret, write_secret


async def test_first_node_wins_and_others_adopt_it(store, settings, tmp_path):
    a = settings.replace(data_dir=str(tmp_path / "a"))
    b = settings.replace(data_dir=str(tmp_path / "b"))
    write_secret(tmp_path / "b" / "secret", "b-had-its-own-secret-before")
    await share_secrets(store, a)                       # a generates both
    await share_secrets(store, b)                       # b adopts them, replacing its own
    for name in ("secret", "push_secret"):
        assert load_secret(a, name) == load_secret(b, name)
        assert await store.redis.get(store.keys.shared_secret(name)) == load_secret(a, name)
    assert load_secret(b, "secret") != b"b-had-its-own-secret-before"


async def test_an_existing_data_dir_secret_becomes_the_shared_one(store, settings, tmp_path):
    a = settings.replace(data_dir=str(tmp_path / "a"))
    write_secret(tmp_path / "a" / "push_secret", "the-merchants-push-secret")
    await share_secrets(store, a)
    assert await store.redis.get(store.keys.shared_secret("push_secret")) == b"the-merchants-push-secret"


async def test_a_configured_secret_stays_out_of_redis(store, settings, tmp_path):
    a = settings.replace(data_dir=str(tmp_path / "a"), secret="configured-secret-0123456789")
    await share_secrets(store, a)
    assert await store.redis.get(store.keys.shared_secret("secret")) is None
    assert load_secret(a, "secret") == b"configured-secret-0123456789"
    assert await store.redis.get(store.keys.shared_secret("push_secret")) is not None
