"""Micro-benchmark of the two TLV twins (not a test): nanoseconds per frame.

Measures both twins in one run, best of several repeats, so the speed-up
ratio compares like with like on the same machine and load:

    .venv/bin/python bench/bench_codec.py [--repeat N] [--target-ms MS]

It imports `_tlv` and `_tlv_py` directly because comparing them is its job;
the application only ever imports `kefu.tlv`.
"""
from __future__ import annotations

import argparse
import itertools
import math
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kefu import _tlv_py  # noqa: E402
from kefu.protocol import Op  # noqa: E402

try:
    from kefu import _tlv as _tlv_c  # noqa: E402
except ImportError:
    _tlv_c = None

BODY_SIZES = (0, 64, 1024)
STREAM_FRAMES = 1000
TCP_CHUNK = 1460    # a typical TCP segment payload: how bytes really arrive


def best_ns_per_op(run, ops_per_call, repeat, target_ms):
    """Best-of-`repeat` ns per op; `run(loops)` does loops * ops_per_call ops."""
    loops = 1
    while True:  # calibrate so one repeat takes about target_ms
        t0 = time.perf_counter_ns()
        run(loops)
        if time.perf_counter_ns() - t0 > target_ms * 1e6 / 4 or loops > 1 << 24:
            break
        loops *= 2
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        run(loops)
        best = min(best, time.perf_counter_ns() - t0)
    return best / (loops * ops_per_call)


def cases(tlv, size):
    """(name, run(loops), ops per call) for one twin and body size."""
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = tlv.encode(Op.MESSAGE, 7, body)
    stream = frame * STREAM_FRAMES
    chunks = [stream[i:i + TCP_CHUNK] for i in range(0, len(stream), TCP_CHUNK)]
    encode, decode, decoder = tlv.encode, tlv.decode, tlv.StreamDecoder

    def run_encode(loops):
        for _ in itertools.repeat(None, loops):
            encode(5, 7, body)

    def run_decode(loops):
        for _ in itertools.repeat(None, loops):
            decode(frame)

    def run_stream(loops):
        for _ in itertools.repeat(None, loops):
            decoder().feed(stream)

    def run_chunked(loops):
        for _ in itertools.repeat(None, loops):
            feed = decoder().feed
            for chunk in chunks:
                feed(chunk)

    return [("encode", run_encode, 1), ("decode (1 WS message)", run_decode, 1),
            (f"stream, {STREAM_FRAMES} frames, 1 feed", run_stream, STREAM_FRAMES),
            (f"stream, {STREAM_FRAMES} frames, {TCP_CHUNK} B feeds", run_chunked, STREAM_FRAMES)]


def main(argv=None):
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--repeat", type=int, default=7)
    args.add_argument("--target-ms", type=float, default=40.0)
    opts = args.parse_args(argv)
    print(f"Python {platform.python_version()} on {platform.machine()}, "
          f"best of {opts.repeat}, ns per frame")
    if _tlv_c is None:
        print("compiled twin kefu._tlv not built: python column only")
    header = f"{'operation':<34}{'body':>6}{'cython':>10}{'python':>10}{'speed-up':>10}"
    print(header)
    print("-" * len(header))
    for size in BODY_SIZES:
        py_rows = cases(_tlv_py, size)
        c_rows = cases(_tlv_c, size) if _tlv_c else [None] * len(py_rows)
        for (name, py_run, ops), c_case in zip(py_rows, c_rows):
            py_ns = best_ns_per_op(py_run, ops, opts.repeat, opts.target_ms)
            if c_case is None:
                print(f"{name:<34}{size:>6}{'-':>10}{py_ns:>10.0f}{'-':>10}")
                continue
            c_ns = best_ns_per_op(c_case[1], ops, opts.repeat, opts.target_ms)
            print(f"{name:<34}{size:>6}{c_ns:>10.0f}{py_ns:>10.0f}{py_ns / c_ns:>9.1f}x")


if __name__ == "__main__":
    main()
