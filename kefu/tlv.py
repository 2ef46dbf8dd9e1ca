"""The TLV codec the rest of kefu imports: compiled when built, else pure Python.

The choice is made once, at import.  Setting KEFU_NO_EXTENSIONS to a
non-empty value other than "0" forces the Python twin (debugging, a CI
leg); otherwise `_tlv` is used when it imports and `_tlv_py` when it does
not, so an install without a compiler still works, only slower.
`IMPLEMENTATION` says which one won, so tests and /health can tell.
"""
from __future__ import annotations

import os

from .protocol import DEFAULT_MAX_FRAME, HEADER_SIZE

__all__ = ["DEFAULT_MAX_FRAME", "HEADER_SIZE", "IMPLEMENTATION", "NO_EXTENSIONS",
           "StreamDecoder", "batch", "decode", "encode", "heartbeat_reply"]

NO_EXTENSIONS = os.environ.get("KEFU_NO_EXTENSIONS", "") not in ("", "0")


def _load():
    if not NO_EXTENSIONS:
        try:
            from . import _tlv
        except ImportError:
            pass
        else:
            return _tlv, "cython"
    from . import _tlv_py
    return _tlv_py, "python"


_impl, IMPLEMENTATION = _load()

encode = _impl.encode
decode = _impl.decode
StreamDecoder = _impl.StreamDecoder
batch = _impl.batch
heartbeat_reply = _impl.heartbeat_reply

del _load
