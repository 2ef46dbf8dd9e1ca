"""The Lua scripts the store runs with EVALSHA, each one atomic in Redis.

Each script touches keys of ONE Redis Cluster slot family where it can
(room keys share the `{r:room}` tag, shop keys `{s:shop}`), so the room
part and the shop part of a message store can live on different shards.
Ids (< 2^53) are exact as Lua numbers (doubles) and zset scores; scores
read back from Redis are returned as strings and parsed by Python.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# Store one message and publish it, atomically: stored before pushed, and
# pushed in id order.  KEYS: room zset, trim watermark, [idempotency key]
# ARGV: id, frame, header length, max messages, idempotency ttl,
#       room channel, shop channel ("" for none), "1" = sharded room channel
# On a Redis Cluster the room channel is published with SPUBLISH (sharded
# pub/sub: it hashes to this script's slot, so the frame goes only to this
# shard's subscribers); the shop channel, of another slot, with PUBLISH,
# which the cluster relays to every node.
# -> {"ok", id} | {"same", id} (this very message, stored by an earlier
#    attempt of a retried pipeline) | {"dup", id, json} (client_msg_id seen)
#    | {"low", newest} (id not above the room's newest: observe and retry)
POST = Script("post", """
local id = ARGV[1]
local member = string.sub(ARGV[2], tonumber(ARGV[3]) + 1)
if KEYS[3] then
  local prev = redis.call('GET', KEYS[3])
  if prev then
    local m = redis.call('ZRANGE', KEYS[1], prev, prev, 'BYSCORE')
    return {'dup', prev, m[1] or ''}
  end
end
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if newest[2] and tonumber(id) <= tonumber(newest[2]) then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], id, id, 'BYSCORE')) do
    if m == member then return {'same', id} end
  end
  return {'low', newest[2]}
end
redis.call('ZADD', KEYS[1], id, member)
if KEYS[3] then redis.call('SET', KEYS[3], id, 'EX', ARGV[5]) end
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[4])
if over > 0 then
  local cut = redis.call('ZRANGE', KEYS[1], over - 1, over - 1, 'WITHSCORES')
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
  redis.call('SET', KEYS[2], cut[2])
end
redis.call(ARGV[8] == '1' and 'SPUBLISH' or 'PUBLISH', ARGV[6], ARGV[2])
if ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[7], ARGV[2]) end
return {'ok', id}
""")

# The shop side of a message store (runs just before POST, same pipeline).
# KEYS: visitors zset, notices zset, shops set, visitor's user hash
# ARGV: visitor mid, now ms, shop, profile ttl seconds
TOUCH = Script("touch", """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[4], ARGV[4])
return 1
""")

# The shop side of a message store on a Redis Cluster: only the shop's slot
# (the shop set and the visitor's profile TTL are elsewhere, see messages.py).
# KEYS: visitors zset, notices zset  ARGV: visitor mid, now ms
# -> 1 when the visitor was not in the list (post then adds the shop to the shop set)
TOUCH_SHOP = Script("touch_shop", """
local new = redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return new
""")

# EXPIRE as a script, so a cluster post pipeline stays a list of EVALSHAs.
# KEYS: key  ARGV: seconds
EXPIRE = Script("expire", """
return redis.call('EXPIRE', KEYS[1], ARGV[1])
""")

# Forward-only read offset.  KEYS: offsets hash  ARGV: room, id -> effective offset
ACK = Script("ack", """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if (not cur) or tonumber(ARGV[2]) > tonumber(cur) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return ARGV[2]
end
return cur
""")

# Offset and unread count in one call.  KEYS: offsets hash, room zset
# ARGV: room -> {offset, ZCOUNT room (offset +inf}
UNREAD = Script("unread", """
local off = redis.call('HGET', KEYS[1], ARGV[1]) or '0'
return {off, redis.call('ZCOUNT', KEYS[2], '(' .. off, '+inf')}
""")

# Delete one idle conversation unless it became active since the scan.
# KEYS: visitors, notices, room, trim watermark, visitor offsets, reader offsets
# ARGV: visitor mid, cutoff ms, room, watermark ttl ms -> 1 deleted, 0 kept
SWEEP = Script("sweep", """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local newest = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
if newest[2] then
  redis.call('SET', KEYS[4], newest[2], 'PX', ARGV[4])
  redis.call('DEL', KEYS[3])
end
redis.call('HDEL', KEYS[5], ARGV[3])
redis.call('HDEL', KEYS[6], ARGV[3])
return 1
""")

# The sweep split by slot for a Redis Cluster.  First the shop side (re-checks
# the activity, removes the visitor from the lists), then, for each removed
# visitor, the room side, which re-checks activity on its own: a message id
# carries its millisecond, so a room whose newest message is younger than the
# cutoff (a message arrived between the two calls) is kept.
# SWEEP_SHOP  KEYS: visitors, notices  ARGV: visitor mid, cutoff ms -> 1 | 0
SWEEP_SHOP = Script("sweep_shop", """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
""")
# SWEEP_ROOM  KEYS: room, trim watermark  ARGV: cutoff ms, watermark ttl ms, id epoch ms,
#             2^(worker+sequence bits) -> 1 deleted | 0 kept
SWEEP_ROOM = Script("sweep_room", """
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if newest[2] then
  local ms = math.floor(tonumber(newest[2]) / tonumber(ARGV[4])) + tonumber(ARGV[3])
  if ms > tonumber(ARGV[1]) then return 0 end
  redis.call('SET', KEYS[2], newest[2], 'PX', ARGV[2])
  redis.call('DEL', KEYS[1])
end
return 1
""")

# Token bucket on the server's clock, shared by every process.
# KEYS: bucket hash  ARGV: rate/s, burst, cost -> seconds to wait ("0" = allowed)
BUCKET = Script("bucket", """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local st = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(st[1]) or burst
local ts = tonumber(st[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local wait = 0
if tokens >= cost then tokens = tokens - cost else wait = (cost - tokens) / rate end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
return tostring(wait)
""")

ALL = (POST, TOUCH, ACK, UNREAD, SWEEP, BUCKET, TOUCH_SHOP, EXPIRE, SWEEP_SHOP, SWEEP_ROOM)
