"""Type stub for the compiled codec `kefu._tlv` (twin of `kefu._tlv_py`).

Both twins expose exactly this API and raise the same `FrameError` /
`FrameTooBig` with the same messages; import it through `kefu.tlv`.
"""
from collections.abc import Iterable
from typing import Final

from typing_extensions import Buffer

HEADER_SIZE: Final[int]
DEFAULT_MAX_FRAME: Final[int]

def encode(op: int, seq: int, body: Buffer = b"") -> bytes:
    """One frame. op/seq outside int32: FrameError("op|seq out of range")."""

def decode(data: Buffer, max_size: int = ...) -> tuple[int, int, bytes]:
    """Exactly one frame (one WebSocket message) -> (op, seq, body).

    FrameError: "short header", "bad packet length", "bad header length",
    "length mismatch"; FrameTooBig: "frame too big".  Version is not checked.
    """

class StreamDecoder:
    """Frames from a byte stream, across any chunking; closed after an error."""

    def __init__(self, max_size: int = ...) -> None: ...
    def feed(self, data: Buffer) -> list[tuple[int, int, bytes]]:
        """All frames completed so far; FrameError("decoder closed") after an error."""
    @property
    def pending(self) -> int:
        """Bytes buffered, not yet returned as a frame."""

def batch(frames: Iterable[Buffer], seq: int = 0) -> bytes:
    """One op-9 (RAW) frame whose body is the given encoded frames back to back."""

def heartbeat_reply(seq: int, online: int) -> bytes:
    """One op-3 frame; body is `online` clamped to int32, big-endian."""
