"""atheris target: both TLV twins must agree on every input and raise only FrameError.

    python tests/fuzz_tlv.py -runs=100000 -max_len=512     (libFuzzer flags)

The first 2 bytes of the input choose the decoder's max size and where the
stream is cut into feeds; the rest is the stream.  Run by
tests/test_bad_input.py when atheris is installed; a crash file lands in
the -artifact_prefix directory.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atheris  # noqa: E402

with atheris.instrument_imports():
    from kefu import _tlv_py
    from kefu.errors import FrameError
try:
    from kefu import _tlv as _tlv_c
except ImportError:
    _tlv_c = None

TWINS = [t for t in (_tlv_c, _tlv_py) if t is not None]
SIZES = (17, 32, 64, 1024, 65536)


def outcome(impl, data: bytes, max_size: int, cut: int):
    dec = impl.StreamDecoder(max_size)
    frames = []
    try:
        frames += dec.feed(data[:cut])
        frames += dec.feed(data[cut:])
        if dec.pending >= max(max_size, 16):
            raise AssertionError(f"{impl.__name__}: {dec.pending} bytes pending, max {max_size}")
        stream = ("ok", frames, dec.pending)
    except FrameError as exc:
        stream = ("err", frames, type(exc).__name__, str(exc))
    try:
        single = ("ok", impl.decode(data, max_size))
    except FrameError as exc:
        single = ("err", type(exc).__name__, str(exc))
    return stream, single


def target(raw: bytes) -> None:
    if len(raw) < 2:
        return
    max_size = SIZES[raw[0] % len(SIZES)]
    data = raw[2:]
    cut = raw[1] % (len(data) + 1)
    results = [outcome(impl, data, max_size, cut) for impl in TWINS]
    if any(r != results[0] for r in results):
        raise AssertionError(f"twins disagree on {data!r} (max {max_size}, cut {cut}): {results}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
