"""53-bit snowflake ids: exact as JavaScript numbers and Redis zset scores.

    | 41 bits: ms since EPOCH_MS | 7 bits: worker | 5 bits: sequence |

41 bits of milliseconds last 69 years from 2025; 128 workers (node id x
process) never collide; 32 ids per ms per worker.  The generator keeps a
logical clock: when the sequence is exhausted, or the wall clock steps
back, it borrows the next millisecond instead of waiting or repeating, so
ids are strictly increasing per generator whatever the clock does, and
catch up with real time once the burst or the step is over.
"""
from __future__ import annotations

import socket
import time
from pathlib import Path

EPOCH_MS = 1_735_689_600_000      # 2025-01-01T00:00:00Z
TIME_BITS, WORKER_BITS, SEQ_BITS = 41, 7, 5
MAX_WORKER = (1 << WORKER_BITS) - 1
MAX_SEQ = (1 << SEQ_BITS) - 1
MAX_ID = (1 << (TIME_BITS + WORKER_BITS + SEQ_BITS)) - 1   # 2**53 - 1
WORKERS_PER_NODE = 8


def worker_for(node_id: int, process: int) -> int:
    """Worker field for process `process` of node `node_id` (both small)."""
    worker = node_id * WORKERS_PER_NODE + process % WORKERS_PER_NODE
    if not 0 <= worker <= MAX_WORKER:
        raise ValueError(f"worker {worker} out of range 0..{MAX_WORKER}")
    return worker


def node_owner(data_path) -> str:
    """Who runs a node: its host and data dir (one supervisor per data dir).

    Comet workers report it with their figures, so a node that starts with
    a node id a live node elsewhere already uses is refused (kefu.bootstrap).
    """
    return f"{socket.gethostname()}:{Path(data_path).resolve()}"


class Snowflake:
    __slots__ = ("worker", "_last_ms", "_seq", "_clock")

    def __init__(self, worker: int = 0, clock=time.time_ns):
        if not 0 <= worker <= MAX_WORKER:
            raise ValueError(f"worker must be 0..{MAX_WORKER}, got {worker}")
        self.worker = worker
        self._last_ms = -1
        self._seq = 0
        self._clock = clock

    def __call__(self) -> int:
        now = self._clock() // 1_000_000 - EPOCH_MS
        if now > self._last_ms:
            self._last_ms, self._seq = now, 0
        elif self._seq < MAX_SEQ:
            self._seq += 1
        else:                       # burst or clock step back: borrow the next ms
            self._last_ms, self._seq = self._last_ms + 1, 0
        if self._last_ms >> TIME_BITS:
            raise OverflowError("snowflake clock beyond 2094")
        return (self._last_ms << (WORKER_BITS + SEQ_BITS)) | (self.worker << SEQ_BITS) | self._seq

    def observe(self, other_id: int) -> None:
        """Never issue an id at or below `other_id` (seen in a room from another process)."""
        ms = other_id >> (WORKER_BITS + SEQ_BITS)
        if ms >= self._last_ms:
            self._last_ms, self._seq = ms, MAX_SEQ

    next_id = __call__


def timestamp_ms(snowflake_id: int) -> int:
    """Unix milliseconds at which an id was issued (logical, see module docstring)."""
    return (snowflake_id >> (WORKER_BITS + SEQ_BITS)) + EPOCH_MS
