"""Member ids as the API sees them: visitors' and the shop's agent identity.

All agents of a shop speak and read as one member, `agent:<shop>` (the
store's `agent_mid`); a visitor mid (names.MID_RE) can never contain ":",
so the two never collide and no visitor can claim to be an agent.
"""
from __future__ import annotations

from .. import names
from ..errors import BadRequest
from ..store import agent_mid

__all__ = ["agent_mid", "is_agent_mid", "sender_mid"]

AGENT_PREFIX = "agent:"


def is_agent_mid(mid: str) -> bool:
    return mid.startswith(AGENT_PREFIX)


def sender_mid(value: str) -> str:
    """A visitor/user mid or a shop's agent identity; BadRequest otherwise."""
    if is_agent_mid(value):
        names.shop_id(value[len(AGENT_PREFIX):])
        if agent_mid(value[len(AGENT_PREFIX):]) != value:
            raise BadRequest("invalid mid")
        return value
    return names.mid(value)
