"""The metrics ``GET /metrics`` exports, on :mod:`prometheus_client`.

The transports and the server record into :data:`REGISTRY` as calls run (a few updates
per turn, never per frame) through a small API: :meth:`Registry.call_started`,
:meth:`Registry.call_ended`, :meth:`Registry.call_refused`, :meth:`Registry.error` and
``REGISTRY.response_latency.observe(secs)``.

Under ``callpipe serve --workers N`` every worker is its own process with its own
counters. ``callpipe serve`` then sets ``PROMETHEUS_MULTIPROC_DIR`` (a temporary
directory) before the workers start; prometheus-client's multiprocess mode keeps each
process's values in a memory-mapped file there, and a scrape of any worker sums the files
of all of them, so the box's totals are exposed, never one worker's. The environment
variable must be set before this module is imported, which the supervisor guarantees by
setting it before it spawns a worker.
"""

from __future__ import annotations

import os

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess

__all__ = ["CONTENT_TYPE", "MULTIPROC_ENV", "REGISTRY", "Registry", "mark_process_dead"]

_LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

# ``_created`` samples double every counter's series and mean nothing summed across workers.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


def _multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Registry:
    """The metrics callpipe exports, and the small recording API the rest of callpipe calls.

    ``active_calls`` is this process's own count (what ``MAX_CALLS`` and ``/readyz``
    look at); the exported gauge is summed over live workers (``livesum``).
    """

    def __init__(self) -> None:
        # Our own registry, not prometheus-client's global one: nothing else in the
        # process (a bot's library) can add to or collide with what /metrics exports.
        self.registry = CollectorRegistry(auto_describe=True)
        self.active_calls = 0
        self._active = Gauge(
            "callpipe_active_calls",
            "Calls whose bot is running.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self._calls = Counter(
            "callpipe_calls", "Calls handled, by outcome.", ["outcome"], registry=self.registry
        )
        self._errors = Counter("callpipe_errors", "Errors, by kind.", ["kind"], registry=self.registry)
        self.response_latency = Histogram(
            "callpipe_response_latency_seconds",
            "Caller stopped speaking -> first bot audio sent.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.forwarded = Counter(
            "callpipe_forwarded_events",
            "Webhooks and control actions sent to (sent) or received from (received) the instance holding the call, by result.",
            ["direction", "result"],
            registry=self.registry,
        )
        # Fed by call records (callpipe.records.stats): per bot turn and stage, and per end reason.
        self.turn_stage_latency = Histogram(
            "callpipe_turn_stage_latency_seconds",
            "Per bot turn: the caller's end of speech -> each stage (vad_stop ... heard).",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._end_reasons = Counter(
            "callpipe_call_end_reasons", "Finished calls, by end reason.", ["reason"], registry=self.registry
        )

    def call_started(self) -> None:
        """A call's bot started."""
        self.active_calls += 1
        self._active.inc()

    def call_ended(self, outcome: str) -> None:
        """A call's bot ended with ``outcome`` (completed, error, max_duration, ...)."""
        if self.active_calls > 0:
            self.active_calls -= 1
            self._active.dec()
        self._calls.labels(outcome=outcome).inc()

    def call_refused(self) -> None:
        """A stream was refused before any bot ran (never touches the active-call gauge)."""
        self._calls.labels(outcome="refused").inc()

    def error(self, kind: str) -> None:
        """Count one error of ``kind``."""
        self._errors.labels(kind=kind).inc()

    def observe_stage(self, stage: str, secs: float) -> None:
        """One bot turn's latency at ``stage``, from the caller's end of speech."""
        self.turn_stage_latency.labels(stage=stage).observe(secs)

    def call_record_finished(self, end_reason: str) -> None:
        """A call's record was finished with ``end_reason``."""
        self._end_reasons.labels(reason=end_reason).inc()

    def scrape_registry(self) -> CollectorRegistry:
        """What a scrape exposes: this process's registry, or every worker's summed."""
        directory = _multiprocess_dir()
        if directory is None:
            return self.registry
        # A registry of its own holding only the multiprocess collector, as
        # prometheus-client requires: it reads every worker's files at each collection
        # (dead workers' live gauges excluded), never this process's values twice.
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=directory)  # type: ignore[no-untyped-call]
        return combined

    def render(self) -> bytes:
        """The Prometheus text exposition (see :meth:`scrape_registry`)."""
        return prometheus_client.generate_latest(self.scrape_registry())


def mark_process_dead(pid: int) -> None:
    """Forget a dead worker's live gauges (the supervisor calls this when a worker exits)."""
    directory = _multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


REGISTRY = Registry()
