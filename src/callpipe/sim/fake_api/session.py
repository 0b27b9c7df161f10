"""One simulated call's session and the webhooks it sends (what tests inspect)."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from callpipe.sim.caller import CallerTurn, CallResult, SimulatedCaller
from callpipe.sim.fake_api.state import FakeCall
from callpipe.sim.texml import TeXMLInstructions

if TYPE_CHECKING:
    from callpipe.sim.fake_api.callees import CalleePlan

# --------------------------------------------------------------------------- simulator

#: Longest a simulated call may last before the fake ends it (``hangup_cause="time_limit"``).
DEFAULT_MAX_CALL_SECS = 120.0

#: Builds the simulated callee's script for a call (default: say nothing, just listen).
CalleeScript = Callable[[FakeCall], Sequence[CallerTurn]]

_WEBHOOK_USER_AGENT = "callpipe-fake-telnyx"


def _iso_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class WebhookDelivery:
    """One webhook the simulator sent (or tried to): what, where, and how it went.

    ``kind`` is ``"call_control"`` (a JSON event) or ``"texml"`` (a form-encoded callback);
    ``event_type`` is the Call Control event type, or ``texml.<CallStatus|StreamEvent>``.
    ``headers`` include the signature headers exactly as sent.
    """

    url: str
    method: str
    kind: str
    event_type: str
    call_control_id: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    status_code: int | None = None
    error: str | None = None
    sent_at: float | None = None

    @property
    def delivered(self) -> bool:
        """Whether the receiver answered 2xx."""
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(eq=False)
class FakeCallSession:
    """The simulator's side of one call: the simulated callee and what happened.

    ``result`` is the callee's :class:`~callpipe.sim.caller.CallResult` once its stream has
    ended (``caller.result`` while it runs); ``errors`` lists what went wrong (unreachable
    stream, TeXML fetch failures, time limit). ``finished`` is set (thread-safely) after the
    last webhook of the call was sent.
    """

    call: FakeCall
    stream_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    caller: SimulatedCaller | None = None
    result: CallResult | None = None
    texml: TeXMLInstructions | None = None
    stream_url: str | None = None
    stream_started: bool = False
    stream_stopped: bool = False
    errors: list[str] = field(default_factory=list)
    callee: CalleePlan | None = None  # who answers (``Callees``), and its AMD timeline
    finished: threading.Event = field(default_factory=threading.Event)
    _ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _run_task: asyncio.Future[CallResult] | None = field(default=None, repr=False)
    _outbox: asyncio.Queue[WebhookDelivery | None] = field(default_factory=asyncio.Queue, repr=False)
    _sender: asyncio.Task[None] | None = field(default=None, repr=False)
    _sequence: int = 0

    async def wait_finished(self, timeout: float = 10.0) -> None:
        """Wait (from any event loop) until the call is over and its webhooks are sent."""
        deadline = time.monotonic() + timeout
        while not self.finished.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulated call {self.call.call_control_id} did not finish in {timeout}s")
            await asyncio.sleep(0.01)
