"""One Settings object, built once at the edge and passed down explicitly.

Precedence: defaults < TOML file (`--config` or KEFU_CONFIG) < KEFU_* env <
command-line flags.  Library code never reads the environment itself.
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError
from .protocol import DEFAULT_MAX_FRAME

ENV_PREFIX = "KEFU_"


@dataclass(frozen=True)
class Settings:
    # processes and ports (flags of `kefu run`, fixed by issue 2)
    host: str = "127.0.0.1"
    api_port: int = 8090
    comet_port: int = 3102            # WebSocket /sub
    tcp_port: int = 3101              # goim raw TCP
    workers: int = 0                  # comet workers; 0 = one per CPU
    api_workers: int = 1              # API processes sharing api_port (SO_REUSEPORT); 1..8
    redis_url: str = ""               # empty = embedded redis-server under data_dir
    data_dir: str = "./var"
    node_id: int = 0                  # distinct per `kefu run` sharing one Redis (0..15)
    public_url: str = ""              # how browsers reach the API; empty = http://host:api_port
    public_ws_url: str = ""           # how browsers reach /sub; empty = ws://host:comet_port/sub
    log_level: str = "info"
    access_log: bool = False
    stop_timeout: float = 10.0        # SIGTERM: children get this long to finish, then SIGKILL
    demo_shop: str = "8000"           # created with a generated password on the first `kefu run`

    # Redis model
    prefix: str = "kefu:"
    secret: str = ""                  # HMAC secret; empty = generated once into data_dir
    push_secret: str = ""             # goim push API bearer; empty = generated into data_dir
    key_ttl: int = 7 * 24 * 3600      # lifetime of a signed connection key, seconds
    session_ttl: int = 12 * 3600      # agent session cookie lifetime, seconds
    retention_days: float = 7.0       # idle conversations older than this are deleted
    room_max_messages: int = 10_000   # a room's sorted set is trimmed to this many
    idempotency_ttl: int = 24 * 3600  # how long a client_msg_id is remembered

    # comet / session
    max_frame: int = DEFAULT_MAX_FRAME
    handshake_timeout: float = 10.0
    heartbeat: int = 30               # interval the client is told in op 8, seconds
    heartbeat_timeout: float = 90.0
    online_ttl: int = 120             # online mark TTL; refreshed in batches
    online_flush_interval: float = 10.0
    sync_limit: int = 50              # newest-N on an empty sync, and page size
    max_connections: int = 20_000     # per comet worker
    send_buffer_limit: int = 1 << 20  # bytes queued for a client before it is dropped
    inbound_rate: float = 50.0        # frames/s per connection (burst = 2x)

    # API
    msg_max_len: int = 4000           # characters of a text message
    body_max_bytes: int = 64 * 1024   # request bodies other than uploads
    upload_max_bytes: int = 5 << 20
    rate_visitors_per_ip: float = 1.0         # new visitors per second per IP (burst 20)
    rate_messages_per_sender: float = 5.0     # messages per second per sender (burst 20)
    rate_uploads_per_sender: float = 0.5
    login_attempts: int = 5                   # per shop+IP per 5 minutes
    rate_messages_per_ip: float = 20.0        # messages per second per client IP (burst 5x); 0 = off
    rate_uploads_per_ip: float = 2.0          # uploads per second per client IP (burst 5x); 0 = off
    api_index: int = 7                # id-generator process index of the API worker (comets use 0..)
    sweep_interval: float = 600.0     # seconds between retention sweeps in the API worker; 0 = off
    trust_proxy: bool = False         # take the client IP from the last X-Forwarded-For hop
    im_accept_mid: bool = True        # /open/im honours a `mid` parameter without the visitor's cookie
    frontend_dir: str = ""            # pages served at /; empty = the bundled frontend/
    uploads_dir: str = ""             # uploaded images; empty = <data_dir>/uploads (several nodes: a shared mount)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def upload_path(self) -> Path:
        return Path(self.uploads_dir) if self.uploads_dir else self.data_path / "uploads"

    @property
    def comet_workers(self) -> int:
        return self.workers or (os.cpu_count() or 1)

    @property
    def api_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.api_port}"

    @property
    def ws_url(self) -> str:
        return self.public_ws_url or f"ws://{self.host}:{self.comet_port}/sub"

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name: f for f in fields(Settings)}


def _coerce(name: str, value: Any) -> Any:
    """Turn a TOML/env/flag value into the field's type, or say what is wrong."""
    kind = type(getattr(Settings, name)) if hasattr(Settings, name) else str
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            low = str(value).strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name!r}: expected {kind.__name__}, got {value!r}") from None


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for name in _FIELDS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            out[name] = raw
    return out


def _from_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    data = data.get("kefu", data)
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return data


def _validate(s: Settings) -> Settings:
    for port in ("api_port", "comet_port", "tcp_port"):
        if not 0 <= getattr(s, port) <= 65535:
            raise ConfigError(f"{port} must be 0..65535, got {getattr(s, port)}")
    if s.workers < 0:
        raise ConfigError("workers must be >= 0 (0 = one per CPU)")
    if not 1 <= s.api_workers <= 8:
        raise ConfigError("api_workers must be 1..8 (each needs its own id-generator index)")
    if not 0 <= s.node_id <= 15:
        raise ConfigError("node_id must be 0..15")
    if not 16 < s.max_frame <= 16 << 20:
        raise ConfigError("max_frame must be above 16 and at most 16 MiB")
    if s.heartbeat_timeout <= s.heartbeat:
        raise ConfigError("heartbeat_timeout must exceed heartbeat")
    if s.redis_url and not s.redis_url.startswith(("redis://", "rediss://", "unix://", "redis+cluster://")):
        raise ConfigError(f"redis_url must start with redis://, rediss://, unix:// or redis+cluster://, got {s.redis_url!r}")
    return s


def load(flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
         config_file: str | None = None) -> Settings:
    """Build Settings from every layer; flags whose value is None are absent."""
    env = os.environ if env is None else env
    layers: dict[str, Any] = {}
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if path:
        layers.update(_from_toml(path))
    layers.update(_from_env(env))
    layers.update({k: v for k, v in (flags or {}).items() if v is not None and k in _FIELDS})
    return _validate(Settings(**{k: _coerce(k, v) for k, v in layers.items()}))
