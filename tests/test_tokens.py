"""Signed keys and sessions: forgery, expiry, mismatch, purpose; passwords; secrets."""
from __future__ import annotations

import base64
import os
import re
import stat
import threading
import time

import orjson
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from kefu.config import Settings
from kefu.errors import AuthError, ConfigError
from kefu.tokens import Claims, Signer, check_password, hash_password, load_secret

SECRET = b"s" * 32
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


@pytest.fixture
def signer():
    return Signer(SECRET)


def test_key_round_trip(signer):
    key = signer.mint_key("v1", "8000_v1", shop="8000", ttl=60)
    claims = signer.verify_key(key, mid="v1", room="8000_v1")
    assert claims == Claims("v1", "8000_v1", "8000", "visitor", claims.exp)
    assert time.time() + 55 < claims.exp <= time.time() + 60
    assert signer.verify_key(signer.mint_key("a", "r", role="agent", ttl=5)).role == "agent"


@hsettings(max_examples=200, deadline=None)
@given(mid=st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True),
       room=st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True))
def test_tokens_are_url_safe_without_separators(mid, room):
    signer = Signer(SECRET)
    key = signer.mint_key(mid, room, ttl=60)
    assert TOKEN_RE.fullmatch(key) and "," not in key and "\n" not in key
    assert signer.verify_key(key, mid=mid, room=room).room == room


def _tamper(token: str, **changes) -> str:
    """Re-encode the payload with changed fields but keep the old MAC."""
    payload, mac = token.split(".")
    fields = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    for index, value in changes.items():
        fields[int(index[1:])] = value
    new = base64.urlsafe_b64encode(orjson.dumps(fields)).rstrip(b"=").decode()
    return f"{new}.{mac}"


def test_forged_keys_are_refused(signer):
    key = signer.mint_key("v1", "8000_v1", shop="8000", ttl=60)
    forgeries = [
        _tamper(key, f1="v2"),                                   # another member
        _tamper(key, f2="8000_v2"),                              # another room
        _tamper(key, f5=int(time.time()) + 10**6),               # longer life
        _tamper(key, f4="agent"),                                # promoted role
        Signer(b"x" * 32).mint_key("v1", "8000_v1", ttl=60),     # other secret
        key[:-2] + ("AA" if not key.endswith("AA") else "BB"),   # flipped MAC
    ]
    for bad in forgeries:
        with pytest.raises(AuthError, match="forged key"):
            signer.verify_key(bad)


@pytest.mark.parametrize("bad", ["", "abc", "a.b.c", "a.", ".b", "a b.c", "é.x", "YQ==.YQ", 5, None, "x" * 5000])
def test_malformed_keys_are_refused(signer, bad):
    with pytest.raises(AuthError, match="malformed key|forged key"):
        signer.verify_key(bad)


def test_expired_key(signer):
    key = signer.mint_key("v1", "r", ttl=10)
    signer.verify_key(key, now=time.time() + 9)
    with pytest.raises(AuthError, match="expired key"):
        signer.verify_key(key, now=time.time() + 11)
    with pytest.raises(AuthError, match="expired key"):
        signer.verify_key(signer.mint_key("v1", "r", ttl=-1))


def test_mismatched_key(signer):
    key = signer.mint_key("v1", "8000_v1", ttl=60)
    with pytest.raises(AuthError, match="does not match mid"):
        signer.verify_key(key, mid="v2", room="8000_v1")
    with pytest.raises(AuthError, match="does not match room"):
        signer.verify_key(key, mid="v1", room="8000_v2")


def test_sessions_and_keys_are_not_interchangeable(signer):
    cookie = signer.mint_session("8000", ttl=60)
    assert signer.verify_session(cookie) == "8000"
    with pytest.raises(AuthError, match="forged key"):
        signer.verify_key(cookie)
    with pytest.raises(AuthError, match="forged session"):
        signer.verify_session(signer.mint_key("8000", "8000", ttl=60))
    with pytest.raises(AuthError, match="expired session"):
        signer.verify_session(cookie, now=time.time() + 61)
    with pytest.raises(AuthError, match="forged session"):
        Signer(b"y" * 32).verify_session(cookie)


def test_short_secret_is_refused():
    with pytest.raises(ConfigError):
        Signer(b"short")


def test_password_hash():
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$") and "correct" not in stored
    assert check_password("correct horse", stored)
    assert not check_password("correct hors", stored)
    assert hash_password("correct horse") != stored           # random salt
    for bad in ["", "scrypt$1$2", "md5$x$y$z$a$b", "scrypt$16384$8$1$!!$!!", "scrypt$99999999$8$1$YQ$YQ"]:
        assert not check_password("correct horse", bad)


def test_load_secret_generates_once(tmp_path):
    s = Settings(data_dir=str(tmp_path / "data"))
    first = load_secret(s, "secret")
    assert len(first) >= 32 and load_secret(s, "secret") == first
    path = tmp_path / "data" / "secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secret(s, "push_secret") != first
    assert load_secret(s.replace(secret="configured-secret-value"), "secret") == b"configured-secret-value"
    assert load_secret(s.replace(push_secret="configured-push-value"), "push_secret") == b"configured-push-value"
    with pytest.raises(ValueError):
        load_secret(s, "other")


def test_load_secret_racing_threads_agree(tmp_path):
    s = Settings(data_dir=str(tmp_path))
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(load_secret(s, "secret"))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 1 and len(seen) == 16
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]     # no temporary file left
