"""Credentials: signed connection keys, agent session cookies, passwords.

The seed's key was an md5 of public values, so anyone could compute
anybody's.  Here a key is a token only the server can make:

    base64url(payload JSON) "." base64url(HMAC-SHA256(secret, tag + payload))

The payload binds purpose, member, room, shop, role and expiry.  The
purpose tag ("key" or "session") is inside the signed bytes and checked on
verify, so a connection key can never be replayed as an agent session or
the other way round.  Tokens use only the base64url alphabet and ".", so
they never contain "," or "\\n" (goim push envelopes rely on that).
MACs are compared with hmac.compare_digest; nothing is compared with ==.

Passwords are stored as `scrypt$N$r$p$salt$hash` with a random salt per
password (hashlib.scrypt, standard library only).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from .errors import AuthError, ConfigError

ROLES = ("visitor", "agent", "user")
_KEY, _SESSION = "key", "session"

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _SCRYPT_LEN = 1 << 14, 8, 1, 32
_SCRYPT_MAXMEM = 64 << 20


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified connection key says about its holder."""

    mid: str
    room: str
    shop: str | None
    role: str
    exp: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Strict base64url without padding; anything else raises ValueError."""
    if not text or "=" in text:
        raise ValueError("bad base64url")
    raw = text.encode("ascii")
    data = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    if _b64(data) != text:          # non-canonical trailing bits
        raise ValueError("non-canonical base64url")
    return data


class Signer:
    """Mints and verifies every signed token with one server secret."""

    __slots__ = ("_secret", "_verified")

    VERIFIED_MAX = 65_536    # tokens whose signature was checked, kept to skip the HMAC next time

    def __init__(self, secret: bytes):
        if len(secret) < 16:
            raise ConfigError("secret must be at least 16 bytes")
        self._secret = bytes(secret)
        # (tag, token) -> its signed fields: every /open/push and every comet auth presents a
        # key already checked many times; HMAC + base64 + JSON were ~7 % of the API's CPU.
        # Only tokens whose MAC and shape passed are kept; expiry is checked on every use.
        self._verified: dict[tuple[str, str], list] = {}

    # -- generic --------------------------------------------------------
    def _mac(self, tag: str, payload: str) -> bytes:
        return hmac.new(self._secret, f"{tag}\x00{payload}".encode("ascii"), hashlib.sha256).digest()

    def _sign(self, tag: str, fields: list) -> str:
        payload = _b64(orjson.dumps([tag, *fields]))
        return f"{payload}.{_b64(self._mac(tag, payload))}"

    def _open(self, tag: str, token: str, what: str, now: float | None) -> list:
        """The signed fields after the tag; raises AuthError naming `what`."""
        fields = self._verified.get((tag, token)) if type(token) is str else None
        if fields is not None:
            if fields[-1] <= (time.time() if now is None else now):
                raise AuthError(f"expired {what}")
            return fields[1:]
        if not isinstance(token, str) or token.count(".") != 1 or len(token) > 2048:
            raise AuthError(f"malformed {what}")
        payload, mac = token.split(".")
        try:
            mac_bytes = _unb64(mac)
            _unb64(payload)
        except (ValueError, UnicodeEncodeError, binascii.Error):
            raise AuthError(f"malformed {what}") from None
        if not hmac.compare_digest(mac_bytes, self._mac(tag, payload)):
            raise AuthError(f"forged {what}")
        fields = orjson.loads(_unb64(payload))
        if not isinstance(fields, list) or len(fields) < 2 or fields[0] != tag \
                or not isinstance(fields[-1], int):
            raise AuthError(f"forged {what}")     # signed, but for another purpose
        if fields[-1] <= (time.time() if now is None else now):
            raise AuthError(f"expired {what}")
        if len(self._verified) >= self.VERIFIED_MAX:
            self._verified.clear()
        self._verified[(tag, token)] = fields
        return fields[1:]

    # -- connection keys -------------------------------------------------
    def mint_key(self, mid: str, room: str, *, shop: str | None = None,
                 role: str = "visitor", ttl: int) -> str:
        """A key for the auth frame and /open/push, valid for `ttl` seconds."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        return self._sign(_KEY, [mid, room, shop, role, int(time.time()) + int(ttl)])

    def verify_key(self, key: str, *, mid: str | None = None, room: str | None = None,
                   now: float | None = None) -> Claims:
        """The key's claims; AuthError if forged, expired or not for `mid`/`room`."""
        k_mid, k_room, k_shop, k_role, exp = self._open(_KEY, key, "key", now)
        if mid is not None and not hmac.compare_digest(k_mid.encode(), str(mid).encode()):
            raise AuthError("key does not match mid")
        if room is not None and not hmac.compare_digest(k_room.encode(), str(room).encode()):
            raise AuthError("key does not match room")
        return Claims(k_mid, k_room, k_shop, k_role, exp)

    # -- agent sessions --------------------------------------------------
    def mint_session(self, shop: str, ttl: int) -> str:
        """An agent's session cookie for `shop`, valid for `ttl` seconds."""
        return self._sign(_SESSION, [shop, int(time.time()) + int(ttl)])

    def verify_session(self, cookie: str, *, now: float | None = None) -> str:
        """The shop the cookie logs in; AuthError if forged or expired."""
        (shop, _exp) = self._open(_SESSION, cookie, "session", now)
        return shop


# -- passwords ----------------------------------------------------------
def hash_password(pw: str) -> str:
    """A slow salted hash of `pw` (scrypt), safe to store."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(pw.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R,
                            p=_SCRYPT_P, dklen=_SCRYPT_LEN, maxmem=_SCRYPT_MAXMEM)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_password(pw: str, stored: str) -> bool:
    """True if `pw` matches `stored`; a malformed `stored` never matches."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        n, r, p = int(n), int(r), int(p)
        if n > 1 << 20 or r > 32 or p > 16:     # refuse hashes that would take forever
            return False
        want = _unb64(digest)
        got = hashlib.scrypt(pw.encode("utf-8"), salt=_unb64(salt), n=n, r=r, p=p,
                             dklen=len(want), maxmem=_SCRYPT_MAXMEM * 4)
    except (ValueError, AttributeError, TypeError, binascii.Error):
        return False
    return hmac.compare_digest(got, want)


# -- secrets ------------------------------------------------------------
SECRET_FIELDS = {"secret": "secret", "push_secret": "push_secret"}


def load_secret(settings, name: str) -> bytes:
    """`settings.<name>` if set, else `<data_dir>/<name>`, generated once (mode 0600).

    `name` is "secret" (token signing) or "push_secret" (the goim push API
    bearer).  Creation is atomic (O_EXCL), so processes racing at first
    start all end up with the same secret.
    """
    if name not in SECRET_FIELDS:
        raise ValueError(f"unknown secret {name!r}")
    configured = getattr(settings, SECRET_FIELDS[name])
    if configured:
        return configured.encode("utf-8")
    path = Path(settings.data_dir) / name
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    write_secret(path, secrets.token_urlsafe(32), exclusive=True)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    value = path.read_bytes().strip()
    if len(value) < 16:
        raise ConfigError(f"secret file {path} is shorter than 16 bytes")
    return value


def write_secret(path: Path, value: str, *, exclusive: bool = False) -> None:
    """Write a secret file readable by its owner only.

    exclusive: keep an existing file (first writer wins); otherwise the
    value replaces it atomically (rename).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if len(value.strip()) < 16:
        raise ConfigError("a secret must be at least 16 characters")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    try:
        if exclusive:               # link() fails if the name exists: first writer wins
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
