"""Prometheus text exposition without a dependency: counters, gauges, histograms.

The API worker is one process with one event loop, so plain dicts are
enough (no locks).  Label values are bounded by construction: routes are
the router's canonical paths, error kinds are class names, statuses are
integers.  Comet workers publish their own figures as JSON into the Redis
hash `keys.servers()`; `comet_figures()` folds them into `kefu_comet_*`
series here, so one scrape of the API worker shows the whole node.
"""
from __future__ import annotations

import bisect
import math
import time
from typing import Iterable, Mapping


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _labels(names: tuple[str, ...], values: tuple) -> str:
    if not names:
        return ""
    parts = []
    for n, v in zip(names, values):
        s = str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        parts.append(f'{n}="{s}"')
    return "{" + ",".join(parts) + "}"


def _num(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    return repr(int(v)) if float(v).is_integer() else repr(float(v))


class Counter:
    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.labelnames = name, help, labels
        self.values: dict[tuple, float] = {}

    def inc(self, *labels, by: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + by

    def get(self, *labels) -> float:
        return self.values.get(labels, 0.0)

    def samples(self) -> Iterable[str]:
        for lv, v in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.labelnames, lv)} {_num(v)}"


class Gauge(Counter):
    kind = "gauge"

    def set(self, *labels, value: float) -> None:
        self.values[labels] = value


class Histogram:
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = (), buckets=LATENCY_BUCKETS):
        self.name, self.help, self.labelnames = name, help, labels
        self.bounds = tuple(buckets)
        self.values: dict[tuple, list] = {}     # labels -> [bucket counts..., sum, count]

    def observe(self, value: float, *labels) -> None:
        row = self.values.get(labels)
        if row is None:
            row = self.values[labels] = [0] * len(self.bounds) + [0.0, 0]
        i = bisect.bisect_left(self.bounds, value)
        if i < len(self.bounds):
            row[i] += 1                 # cumulated at render time
        row[-2] += value
        row[-1] += 1

    def samples(self) -> Iterable[str]:
        names = self.labelnames + ("le",)
        for lv, row in sorted(self.values.items()):
            acc = 0
            for bound, n in zip(self.bounds, row):
                acc += n
                yield f"{self.name}_bucket{_labels(names, lv + (_num(bound),))} {acc}"
            yield f"{self.name}_bucket{_labels(names, lv + ('+Inf',))} {row[-1]}"
            yield f"{self.name}_sum{_labels(self.labelnames, lv)} {_num(row[-2])}"
            yield f"{self.name}_count{_labels(self.labelnames, lv)} {row[-1]}"


class Metrics:
    """Every series the API worker exposes; one instance per app."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests = Counter("kefu_http_requests_total", "HTTP requests by route, method and status",
                                ("route", "method", "status"))
        self.latency = Histogram("kefu_http_request_duration_seconds", "HTTP request latency by route",
                                 ("route",))
        self.errors = Counter("kefu_errors_total", "Requests that failed, by error kind", ("kind",))
        self.stored = Counter("kefu_messages_stored_total", "Chat messages stored (new, not retries)")
        self.published = Counter("kefu_messages_published_total", "Chat messages published to their room")
        self.duplicates = Counter("kefu_messages_duplicate_total",
                                  "Retries answered from the idempotency record (not stored again)")
        self.pushes = Counter("kefu_goim_pushes_total", "goim push API calls by kind", ("kind",))
        self.rate_limited = Counter("kefu_rate_limited_total", "Requests refused by a token bucket",
                                    ("bucket",))
        self.uploads = Counter("kefu_uploads_total", "Images stored")
        self.upload_bytes = Counter("kefu_upload_bytes_total", "Bytes of images stored")
        self.swept = Counter("kefu_retention_deleted_total", "Items deleted by the retention task")
        self.own = (self.requests, self.latency, self.errors, self.stored, self.published,
                    self.duplicates, self.pushes, self.rate_limited, self.uploads, self.upload_bytes,
                    self.swept)

    def render(self, comet: Mapping[str, float] | None = None, comet_servers: int = 0) -> bytes:
        out: list[str] = []
        for m in self.own:
            out.append(f"# HELP {m.name} {m.help}")
            out.append(f"# TYPE {m.name} {m.kind}")
            out.extend(m.samples())
        out.append("# HELP kefu_api_uptime_seconds Seconds since this API worker started")
        out.append("# TYPE kefu_api_uptime_seconds gauge")
        out.append(f"kefu_api_uptime_seconds {_num(round(time.time() - self.started, 3))}")
        out.append("# HELP kefu_comet_servers Comet workers that reported figures")
        out.append("# TYPE kefu_comet_servers gauge")
        out.append(f"kefu_comet_servers {comet_servers}")
        for field, value in sorted((comet or {}).items()):
            name = "kefu_comet_" + field
            kind = "counter" if field.endswith("_total") else "gauge"
            out.append(f"# HELP {name} Sum over comet workers of their '{field}' figure")
            out.append(f"# TYPE {name} {kind}")
            out.append(f"{name} {_num(value)}")
        out.append("")
        return "\n".join(out).encode()


def _metric_name(field: str) -> str | None:
    clean = "".join(c if c.isalnum() or c == "_" else "_" for c in field.lower()).strip("_")
    return clean if clean and not clean[0].isdigit() else None


def sum_figures(reports: Iterable[Mapping]) -> tuple[dict[str, float], int]:
    """Sum the numeric top-level fields of every live comet worker's figures.

    Non-numeric fields (an address, a per-room table) and the report's own
    timestamp are skipped; a malformed report never breaks a scrape.
    """
    totals: dict[str, float] = {}
    servers = 0
    for figures in reports:
        if not isinstance(figures, Mapping):
            continue
        servers += 1
        for field, v in figures.items():
            name = _metric_name(str(field))
            if name and name != "ts" and isinstance(v, (int, float)) and not isinstance(v, bool) \
                    and math.isfinite(v):
                totals[name] = totals.get(name, 0.0) + v
    return totals, servers
