"""The goim TLV wire format: offsets, sizes, operations and close codes.

One home for every number of PROTOCOL.md §1-2.  Both codec twins
(`_tlv.pyx` and `_tlv_py.py`) and everything above them read these names;
nobody writes a literal 16 or 7 anywhere else.

    0        4      6      8           12          16
    +--------+------+------+-----------+-----------+----------------+
    | packet | hdr  | ver  | operation | sequence  | body ...       |
    | len    | len  |      |           |           | (packet - 16)  |
    +--------+------+------+-----------+-----------+----------------+
    all integers big-endian and signed; hdr len is always 16
"""
from __future__ import annotations

import enum

PACKET_LEN_OFFSET = 0
HEADER_LEN_OFFSET = 4
VERSION_OFFSET = 6
OP_OFFSET = 8
SEQ_OFFSET = 12
HEADER_SIZE = 16           # the only header length accepted
VERSION = 1                # what we send; received versions are not checked (goim doesn't)
DEFAULT_MAX_FRAME = 64 * 1024
HEARTBEAT_BODY_SIZE = 4    # op 3 carries an int32 room online count


class Op(enum.IntEnum):
    """Operation numbers; goim's where goim has one, the kefu seed's for chat."""

    HEARTBEAT = 2          # c -> s
    HEARTBEAT_REPLY = 3    # s -> c, int32 online count
    MESSAGE = 5            # s -> c, one chat message (goim OpSendMsgReply)
    DISCONNECT = 6         # s -> c, server closes (kick, shutdown)
    AUTH = 7               # c -> s, first frame
    AUTH_REPLY = 8         # s -> c
    RAW = 9                # s -> c, body is whole frames back to back
    SYNC = 14              # c -> s, history request
    SYNC_REPLY = 15        # s -> c, one history message
    ACK = 16               # c -> s, read offset
    ACK_REPLY = 17         # s -> c


# WebSocket close codes (RFC 6455) used by the comet.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001       # shutdown, restart
CLOSE_PROTOCOL_ERROR = 1002   # malformed frame, frame before auth
CLOSE_POLICY = 1008           # bad auth, handshake timeout, rate limit
CLOSE_TOO_BIG = 1009          # frame above max_frame
CLOSE_TRY_AGAIN = 1013        # worker full, Redis down during auth


# Codec error messages: both TLV twins raise these exact strings, so their
# outcomes compare equal on every input.
ERR_SHORT_HEADER = "short header"
ERR_BAD_PACKET_LEN = "bad packet length"
ERR_BAD_HEADER_LEN = "bad header length"
ERR_TOO_BIG = "frame too big"
ERR_LENGTH_MISMATCH = "length mismatch"
ERR_DECODER_CLOSED = "decoder closed"
ERR_OP_RANGE = "op out of range"
ERR_SEQ_RANGE = "seq out of range"
ERR_BODY_TOO_BIG = "body too big"
