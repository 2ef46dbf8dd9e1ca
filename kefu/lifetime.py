"""Children that die with their parent, even when the parent is SIGKILLed.

Linux's PR_SET_PDEATHSIG makes the kernel send a signal to a process when
the thread that forked it exits.  `kefu run` sets it in every worker and in
the embedded redis-server (SIGTERM: Redis then fsyncs its append-only file
and exits cleanly), so killing the supervisor leaves nothing behind.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGTERM) -> None:
    """Call in the child right after fork; exits at once if the parent is already gone."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig))
    except (OSError, AttributeError):      # not Linux: nothing to do
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
