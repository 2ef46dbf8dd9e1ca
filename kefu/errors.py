"""The exception tree.  Library code raises these; the edges turn them into
one close code, one HTTP status or one CLI line, and log them once.

    KefuError
    ├── FrameError          malformed TLV frame          -> close 1002
    │   └── FrameTooBig     packet length above maximum  -> close 1009
    ├── AuthError           forged/expired/mismatched key -> close 1008, HTTP 403
    ├── BadRequest          invalid input at the HTTP edge -> HTTP 400
    │   └── RateLimited     token bucket empty            -> HTTP 429 + Retry-After
    ├── NotFound            unknown shop, room, file      -> HTTP 404
    ├── StoreUnavailable    Redis unreachable             -> HTTP 503, close 1013
    └── ConfigError         bad settings                  -> CLI: one line, exit 1

Both codec twins raise exactly these classes with identical messages, so
tests can compare them byte for byte.
"""
from __future__ import annotations

from .protocol import CLOSE_POLICY, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, CLOSE_TRY_AGAIN


class KefuError(Exception):
    """Root of everything kefu raises on purpose."""

    close_code = CLOSE_PROTOCOL_ERROR
    http_status = 500


class FrameError(KefuError):
    close_code = CLOSE_PROTOCOL_ERROR
    http_status = 400


class FrameTooBig(FrameError):
    close_code = CLOSE_TOO_BIG


class AuthError(KefuError):
    close_code = CLOSE_POLICY
    http_status = 403


class BadRequest(KefuError):
    close_code = CLOSE_POLICY
    http_status = 400


class RateLimited(BadRequest):
    http_status = 429

    def __init__(self, msg: str = "rate limited", retry_after: float = 1.0):
        super().__init__(msg)
        self.retry_after = retry_after


class NotFound(KefuError):
    http_status = 404


class StoreUnavailable(KefuError):
    close_code = CLOSE_TRY_AGAIN
    http_status = 503


class ConfigError(KefuError):
    http_status = 500
