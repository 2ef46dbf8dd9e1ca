"""Sampling profiles of the server processes while a bench step runs (py-spy).

    prof = Profiler(out_dir)                       # no-op unless py-spy is installed
    prof.start({"api": [pid], "comet": [pids]}, seconds, tag)
    ... the step ...
    prof.wait(); print(prof.report(top=15))        # self and inclusive time per function

py-spy writes collapsed stacks ("frame;frame;frame count" per line); the
report folds them into the functions that cost the most, per role.  Run
it as a script on existing files:  python bench/_profile.py FILE... [--top N]
"""
from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from pathlib import Path


def py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, out_dir: str | Path | None, rate: int = 250) -> None:
        self.out = Path(out_dir) if out_dir else None
        self.exe = py_spy() if out_dir else None
        self.rate = rate
        self.procs: list[tuple[str, Path, subprocess.Popen]] = []
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            if not self.exe:
                print("(--profile: py-spy not installed: .venv/bin/pip install py-spy)")

    @property
    def on(self) -> bool:
        return bool(self.exe)

    def start(self, roles: dict[str, list[int]], seconds: float, tag: str) -> None:
        if not self.exe:
            return
        for role, pids in roles.items():
            for n, pid in enumerate(pids):
                path = self.out / f"{tag}-{role}{n if len(pids) > 1 else ''}.txt"
                cmd = [self.exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                       "--rate", str(self.rate), "--format", "raw", "--nonblocking", "--output", str(path)]
                p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                self.procs.append((role, path, p))

    def wait(self) -> list[tuple[str, Path]]:
        done = []
        for role, path, p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if path.exists():
                done.append((role, path))
        self.procs = []
        return done

    def stop(self) -> None:
        for _role, _path, p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.procs = []


def fold(paths: list[Path]) -> tuple[collections.Counter, collections.Counter, int]:
    """(self samples, inclusive samples, total) per function over collapsed-stack files."""
    own: collections.Counter = collections.Counter()
    incl: collections.Counter = collections.Counter()
    total = 0
    for path in paths:
        for line in open(path, errors="replace"):
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [_short(f) for f in stack.split(";")]
            own[frames[-1]] += n
            for f in set(frames):
                incl[f] += n
    return own, incl, total


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py)"; keeps functions apart from their lines
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = file.split("/")
    tail = "/".join(parts[-2:]) if parts[-1] in ("__init__.py",) or "kefu" in parts[-2:-1] else parts[-1]
    return f"{name} ({tail})"


def report(paths: list[Path], top: int = 15, title: str = "") -> str:
    own, incl, total = fold(paths)
    if not total:
        return f"{title}: no samples"
    lines = [f"{title} ({total} samples): top self time | top inclusive time"]
    a = own.most_common(top)
    b = [(f, n) for f, n in incl.most_common(top * 4) if n < 0.8 * total][:top]   # skip the frames (nearly) every stack has
    for i in range(max(len(a), len(b))):
        left = f"{a[i][1] * 100 / total:5.1f}% {a[i][0][:58]:<58}" if i < len(a) else " " * 65
        right = f"{b[i][1] * 100 / total:5.1f}% {b[i][0][:58]}" if i < len(b) else ""
        lines.append(f"  {left} | {right}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    top = 20
    if "--top" in argv:
        i = argv.index("--top")
        top = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    print(report([Path(p) for p in argv], top, title=", ".join(os.path.basename(p) for p in argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
