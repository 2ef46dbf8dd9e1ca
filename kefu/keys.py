"""Every Redis key and channel name, under one configurable prefix.

Nothing else in kefu formats a key.  Keys that must share a Redis Cluster
slot carry the same hash tag: everything of a room is tagged `{r:<room>}`
so a message store (messages, idempotency record, room channel) is one
slot; everything of a shop is tagged `{s:<shop>}`.  Room channels are
`ch:{r:<room>}`: `is_room_channel` tells them apart (sharded pub/sub on a
cluster, see kefu.cluster_bus).  See docs/redis.md for
each key's type, writer, reader and lifetime.
"""
from __future__ import annotations


class Keys:
    """Key builder bound to a prefix (Settings.prefix, default "kefu:")."""

    __slots__ = ("p",)

    def __init__(self, prefix: str = "kefu:"):
        self.p = prefix

    # -- members --------------------------------------------------------
    def user(self, mid: str) -> str:
        """hash: device key -> profile JSON (seed: hset(mid, key, userJson))."""
        return f"{self.p}user:{mid}"

    def online(self, mid: str) -> str:
        """hash: server id -> local connection count; TTL refreshed in batches."""
        return f"{self.p}online:{mid}"

    def offsets(self, mid: str) -> str:
        """hash: room id -> last read message id (seed: hset(mid_seq, room, id))."""
        return f"{self.p}seq:{mid}"

    # -- rooms ----------------------------------------------------------
    def room(self, room: str) -> str:
        """zset: score = message id, member = message JSON (seed: zadd(room, id, msg))."""
        return f"{self.p}room:{{r:{room}}}"

    def trimmed(self, room: str) -> str:
        """string: highest message id retention removed from the room (history gap watermark)."""
        return f"{self.p}trim:{{r:{room}}}"

    def room_online(self, room: str) -> str:
        """hash: server id -> connections of the room there; TTL refreshed in batches."""
        return f"{self.p}roomonline:{{r:{room}}}"

    def idempotency(self, room: str, client_msg_id: str) -> str:
        """string: id of the message stored for this client_msg_id (short TTL)."""
        return f"{self.p}cmid:{{r:{room}}}:{client_msg_id}"

    def room_channel(self, room: str) -> str:
        """pub/sub (sharded on a cluster): whole TLV frames for the room's members."""
        return f"{self.p}ch:{{r:{room}}}"

    def is_room_channel(self, channel: bytes) -> bool:
        """True for a room_channel() name (as bytes): SSUBSCRIBE/SPUBLISH on a cluster."""
        return channel.startswith(self.p.encode() + b"ch:{r:")

    # -- shops ----------------------------------------------------------
    def shops(self) -> str:
        """set: every shop id (seed: sadd shoplist)."""
        return f"{self.p}shoplist"

    def shop(self, shop: str) -> str:
        """hash: name, face, password hash, created."""
        return f"{self.p}shop:{{s:{shop}}}"

    def visitors(self, shop: str) -> str:
        """zset: score = last activity (ms), member = visitor mid (seed: userlist:shop)."""
        return f"{self.p}userlist:{{s:{shop}}}"

    def notices(self, shop: str) -> str:
        """zset: score = change time (ms), member = visitor mid whose conversation changed."""
        return f"{self.p}notice:{{s:{shop}}}"

    def shop_channel(self, shop: str) -> str:
        """pub/sub: every chat message of the shop's rooms, for its agents' connections."""
        return f"{self.p}ch:{{s:{shop}}}"

    # -- process-wide ---------------------------------------------------
    def push_channel(self) -> str:
        """pub/sub: goim pushes by keys, mids or to all (an envelope, see kefu.envelope)."""
        return f"{self.p}ch:push"

    def ratelimit(self, bucket: str) -> str:
        """hash: token bucket state (tokens, ts); expires when full."""
        return f"{self.p}rl:{bucket}"

    def block(self, shop: str, who: str) -> str:
        """string with TTL: visitor mid or IP blocked by the shop's agent."""
        return f"{self.p}block:{{s:{shop}}}:{who}"

    def shared_secret(self, name: str) -> str:
        """string: a generated secret ("secret", "push_secret") shared by every node
        of one Redis when none is configured (see kefu.bootstrap.share_secrets)."""
        return f"{self.p}secret:{name}"

    def servers(self) -> str:
        """hash: server id -> JSON figures (connections, rooms, deliveries); for /metrics and goim online."""
        return f"{self.p}servers"
