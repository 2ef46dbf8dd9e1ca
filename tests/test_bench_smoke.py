"""Every benchmark still runs: each bench script's --smoke mode (tiny sizes, seconds).

Benchmarks are not part of the test suite; this smoke run is, so they
cannot rot.  Each script starts what it needs (a real `kefu run` or
workers, a real Redis, loopback only) and must exit 0 and print its table.
The locustfile is checked to import and to declare its two user classes.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

# words a script's table must contain (every bench/bench_*.py runs; unlisted ones: exit 0 and some output)
SMOKES = {
    "bench_chat.py": ["posted/s", "deliv/s", "p99 ms", "API µs", "comet µs", "redis µs", "HTTP floor"],
    "bench_connections.py": ["RSS/conn KiB", "idle CPU %", "reconnect storm", "same-run baseline"],
    "bench_pushall.py": ["deliv/s", "frames/write", "comet µs", "push/all, burst"],
    "bench_codec.py": ["cython", "python", "speed-up"],
    "bench_api.py": ["/open/push", "/healthz"],
}
TIMEOUT = 150


def _present() -> list[str]:
    return sorted(p.name for p in BENCH.glob("bench_*.py"))


def _args(script: str) -> list[str]:
    if script == "bench_codec.py":          # the foundation's micro-benchmark has no --smoke
        return ["--repeat", "1", "--target-ms", "2"]
    return ["--smoke"]


@pytest.fixture(scope="module")
def smoke_runs() -> dict[str, subprocess.CompletedProcess]:
    """Start every smoke run at once (they mostly wait on start-ups), then collect them all."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = {name: subprocess.Popen([sys.executable, str(BENCH / name), *_args(name)], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in _present()}
    out = {}
    try:
        for name, p in procs.items():
            try:
                stdout, stderr = p.communicate(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                p.terminate()
                stdout, stderr = p.communicate(timeout=30)
                stderr += f"\n(timed out after {TIMEOUT}s)"
            out[name] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


@pytest.mark.parametrize("script", _present())
def test_bench_smoke(script: str, smoke_runs) -> None:
    proc = smoke_runs[script]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script} {' '.join(_args(script))} exited {proc.returncode}:\n{out[-4000:]}"
    assert proc.stdout.strip(), f"{script} printed nothing:\n{out[-4000:]}"
    for word in SMOKES.get(script, []):
        assert word in proc.stdout, f"{script} did not print {word!r}:\n{out[-4000:]}"


def test_locustfile_loads() -> None:
    code = ("import locustfile, locust; "
            "assert issubclass(locustfile.VisitorUser, locust.HttpUser); "
            "assert issubclass(locustfile.AgentUser, locust.HttpUser); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr
