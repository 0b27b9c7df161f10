"""Process-wide counters for ``GET /metrics`` (Prometheus text format), no dependencies.

The transports record into these as calls run (a few attribute updates per turn, never
per frame); the server renders them. One event loop per process, so no locking.
"""

from __future__ import annotations

import bisect
from collections import Counter as _Counter

__all__ = ["REGISTRY", "Registry"]

_LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


class Histogram:
    """A cumulative histogram with fixed bucket bounds (seconds)."""

    def __init__(self, bounds: tuple[float, ...] = _LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Record one value."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1


class Registry:
    """The metrics callpipe exports."""

    def __init__(self) -> None:
        self.active_calls = 0
        self.calls_total: _Counter[str] = _Counter()  # by outcome
        self.errors_total: _Counter[str] = _Counter()  # by kind
        self.response_latency = Histogram()

    def call_started(self) -> None:
        """A call's bot started."""
        self.active_calls += 1

    def call_ended(self, outcome: str) -> None:
        """A call's bot ended with ``outcome`` (completed, hangup, error, refused, ...)."""
        self.active_calls = max(0, self.active_calls - 1)
        self.calls_total[outcome] += 1

    def error(self, kind: str) -> None:
        """Count one error of ``kind``."""
        self.errors_total[kind] += 1

    def render(self) -> str:
        """The Prometheus text exposition."""
        lines = [
            "# HELP callpipe_active_calls Calls whose bot is running.",
            "# TYPE callpipe_active_calls gauge",
            f"callpipe_active_calls {self.active_calls}",
            "# HELP callpipe_calls_total Calls handled, by outcome.",
            "# TYPE callpipe_calls_total counter",
        ]
        lines += [f'callpipe_calls_total{{outcome="{k}"}} {v}' for k, v in sorted(self.calls_total.items())]
        lines += [
            "# HELP callpipe_errors_total Errors, by kind.",
            "# TYPE callpipe_errors_total counter",
        ]
        lines += [f'callpipe_errors_total{{kind="{k}"}} {v}' for k, v in sorted(self.errors_total.items())]
        hist = self.response_latency
        lines += [
            "# HELP callpipe_response_latency_seconds Caller stopped speaking -> first bot audio sent.",
            "# TYPE callpipe_response_latency_seconds histogram",
        ]
        cumulative = 0
        for bound, count in zip(hist.bounds, hist.counts, strict=False):
            cumulative += count
            lines.append(f'callpipe_response_latency_seconds_bucket{{le="{bound}"}} {cumulative}')
        lines.append(f'callpipe_response_latency_seconds_bucket{{le="+Inf"}} {hist.count}')
        lines.append(f"callpipe_response_latency_seconds_sum {hist.total:.6f}")
        lines.append(f"callpipe_response_latency_seconds_count {hist.count}")
        return "\n".join(lines) + "\n"


REGISTRY = Registry()
