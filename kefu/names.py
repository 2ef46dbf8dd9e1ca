"""What a shop id, member id and room id may look like, and how they relate.

A visitor's conversation with a shop is the room `<shop>_<visitor mid>`
(the seed joined two ids the same way), so the shop owning a room is read
off its name without a Redis call.  Shop ids never contain "_".
"""
from __future__ import annotations

import re

from .errors import BadRequest

SHOP_RE = re.compile(r"[A-Za-z0-9-]{1,32}")
MID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ROOM_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
CLIENT_MSG_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MESSAGE_TYPES = frozenset({"text", "image"})


def _check(pattern: re.Pattern, value, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BadRequest(f"invalid {what}")
    return value


def shop_id(value) -> str:
    return _check(SHOP_RE, value, "shop_id")


def mid(value) -> str:
    return _check(MID_RE, value, "mid")


def room_id(value) -> str:
    return _check(ROOM_RE, value, "room_id")


def client_msg_id(value) -> str:
    return _check(CLIENT_MSG_ID_RE, value, "client_msg_id")


def room_for(shop: str, visitor_mid: str) -> str:
    return f"{shop}_{visitor_mid}"


def shop_of(room: str) -> str | None:
    """The shop owning a visitor room, or None for rooms of other shapes (goim rooms)."""
    shop, sep, rest = room.partition("_")
    return shop if sep and rest and SHOP_RE.fullmatch(shop) else None


def visitor_of(room: str) -> str | None:
    shop, sep, rest = room.partition("_")
    return rest if sep and rest and SHOP_RE.fullmatch(shop) else None
