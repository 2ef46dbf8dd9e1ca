"""goim pushes on the process-wide push channel: who gets which frame.

    b"<kind>\\n<target,target,...>\\n" + frame

kind is `keys`, `mids` or `all` (targets empty).  The frame is already
encoded by the publisher (an op-9 batch holding the push), so every comet
worker only splits two lines and writes bytes.  Targets are validated ids
and tokens, which contain neither "," nor "\\n".
"""
from __future__ import annotations

from typing import Iterable

KINDS = (b"keys", b"mids", b"all")


def pack(kind: str, targets: Iterable[str], frame: bytes) -> bytes:
    k = kind.encode()
    if k not in KINDS:
        raise ValueError(f"unknown push kind {kind!r}")
    return b"%s\n%s\n%s" % (k, ",".join(targets).encode(), frame)


def unpack(payload: bytes) -> tuple[bytes, list[str], bytes]:
    """-> (kind, targets, frame); raises ValueError on a malformed envelope."""
    kind, nl, rest = payload.partition(b"\n")
    targets, nl2, frame = rest.partition(b"\n")
    if not (nl and nl2) or kind not in KINDS:
        raise ValueError("malformed push envelope")
    return kind, (targets.decode().split(",") if targets else []), frame
