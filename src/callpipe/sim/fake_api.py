"""A fake Telnyx REST API (FastAPI) that answers with Telnyx's wire shapes.

Tests point :class:`callpipe.telnyx.api.TelnyxClient` at it (served by a real uvicorn via
:class:`callpipe.server.background.BackgroundServer`) and then inspect
``app.state.telnyx`` (:class:`FakeTelnyxState`): every request is recorded, calls are kept
in a registry, and faults (429/5xx/slow/garbage) can be injected per path.

Implemented, all under ``/v2``:

* ``POST /calls`` (Call Control dial)
* ``POST /texml/Accounts/{account_sid}/Calls`` (TeXML outbound call)
* ``POST /calls/{call_control_id}/actions/{hangup,transfer,send_dtmf}``

Listeners registered with :meth:`FakeTelnyxState.add_listener` receive a
:class:`FakeCallEvent` for every state change made by the REST handlers.

Optionally (``create_fake_telnyx_app(simulate_calls=True)``), a :class:`FakeTelnyxSimulator`
listens and makes calls behave like Telnyx's: the dialled party answers, a
:class:`~callpipe.sim.caller.SimulatedCaller` connects to the call's ``stream_url`` (or the
``<Stream>`` of the TeXML fetched from a TeXML call's ``Url``) and plays the callee, and
signed webhooks are POSTed as the call progresses:

* Call Control calls (``POST /v2/calls``): JSON events ``call.initiated``,
  ``call.answered``, ``streaming.started`` (``streaming.failed``), ``streaming.stopped``,
  ``call.hangup`` to the dial's ``webhook_url`` or the simulator's, in Telnyx's envelope.
* TeXML calls: form-encoded status callbacks to ``StatusCallback`` (for the events in
  ``StatusCallbackEvent``) and stream callbacks to the ``<Stream statusCallback>``.

A hang-up through the API makes the simulated callee's stream ``stop`` and close, the bot
closing its socket ends the call, and every call is bounded by ``max_call_secs``.
:func:`serve_fake_telnyx` runs it all standalone (``callpipe fake-telnyx``).

Where Telnyx's public docs are silent, the behaviour chosen is marked "Assumption:".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fnmatch
import inspect
import json
import logging
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from callpipe.sim.caller import CallerTurn, CallResult, SimulatedCaller
from callpipe.sim.texml import TeXMLError, TeXMLFetchError, TeXMLInstructions, fetch_texml
from callpipe.telnyx.webhooks import (
    generate_webhook_keypair,
    load_private_key,
    public_key_b64,
    sign_webhook,
)

__all__ = [
    "CalleeScript",
    "FakeCall",
    "FakeCallEvent",
    "FakeCallSession",
    "FakeTelnyxSimulator",
    "FakeTelnyxState",
    "Fault",
    "RecordedRequest",
    "WebhookDelivery",
    "create_fake_telnyx_app",
    "serve_fake_telnyx",
]

logger = logging.getLogger("callpipe.sim")

API_PREFIX = "/v2"

# Error objects as Telnyx sends them (codes/titles from Telnyx's API error reference; the
# 90018 wording is what the live API returns for a command to a finished call).
AUTH_FAILED = {
    "code": "10009",
    "title": "Authentication failed",
    "detail": "The required authentication headers were either invalid or not included in the request.",
}
NOT_FOUND = {
    "code": "10005",
    "title": "Resource not found",
    "detail": "The requested resource or URL could not be found.",
}
CALL_ENDED = {
    "code": "90018",
    "title": "Call has already ended",
    "detail": "This call is no longer active and can't receive commands.",
}
RATE_LIMITED = {
    "code": "10011",
    "title": "Too many requests",
    "detail": "You have exceeded the maximum number of allowed requests.",
}
UNEXPECTED = {"code": "10007", "title": "Unexpected error", "detail": "An unexpected error occured."}

# Assumption: how long a command_id is remembered. Telnyx documents the de-duplication but
# not its window.
DEFAULT_IDEMPOTENCY_WINDOW = 600.0

_DTMF_RE = re.compile(r"^[0-9A-Da-d*#wW]+$")
# The dial request's ``answering_machine_detection`` values in Telnyx's API reference.
_AMD_VALUES = ("premium", "detect", "detect_beep", "detect_words", "greeting_end", "disabled")


def _missing(param: str) -> dict[str, Any]:
    return {
        "code": "10004",
        "title": "Missing required parameter",
        "detail": f"The '{param}' parameter is required.",
        "source": {"pointer": f"/{param}"},
    }


def _invalid(param: str, detail: str) -> dict[str, Any]:
    # Assumption: Telnyx's exact code for a malformed field varies by endpoint; 10015
    # ("Bad Request") is the generic one from its error reference.
    return {"code": "10015", "title": "Bad Request", "detail": detail, "source": {"pointer": f"/{param}"}}


# --------------------------------------------------------------------------- records


@dataclass(slots=True)
class RecordedRequest:
    """One request as the fake saw it (``path`` decoded, ``raw_path`` as on the wire)."""

    method: str
    path: str
    raw_path: str
    headers: dict[str, str]
    json: Any
    body: bytes
    command_id: str | None
    received_at: float
    status_code: int | None = None
    fault: Fault | None = None
    deduplicated: bool = False


@dataclass(slots=True)
class Fault:
    """An injected failure; see :meth:`FakeTelnyxState.inject`."""

    path: str
    status: int | None
    body: Any = None
    method: str | None = None
    times: int | None = 1
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    after: bool = False
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to ``method path`` (``path`` is an fnmatch glob)."""
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        return fnmatch.fnmatchcase(path, self.path)

    def response(self) -> Response:
        """The HTTP response this fault answers with."""
        if isinstance(self.body, bytes | str):
            return Response(self.body, status_code=self.status or 500, headers=self.headers)
        body = self.body if self.body is not None else _default_fault_body(self.status or 500)
        return JSONResponse(body, status_code=self.status or 500, headers=self.headers)


def _default_fault_body(status: int) -> dict[str, Any]:
    if status == 429:
        return {"errors": [RATE_LIMITED]}
    if status == 401:
        return {"errors": [AUTH_FAILED]}
    if status == 404:
        return {"errors": [NOT_FOUND]}
    if status == 422:
        return {"errors": [CALL_ENDED]}
    return {"errors": [UNEXPECTED]}


@dataclass(slots=True)
class FakeCall:
    """A call the fake knows about. ``params`` is the request body that created it."""

    call_control_id: str
    call_leg_id: str
    call_session_id: str
    kind: str  # "call_control" or "texml"
    to: Any
    from_: str
    connection_id: str | None
    params: dict[str, Any]
    created_at: float
    # Assumption: calls are "alive" from dial until hangup. The REST handlers only know
    # "initiated" and "ended"; the simulator (when enabled) sets "answered" in between.
    state: str = "initiated"
    answered_at: float | None = None
    ended_at: float | None = None
    hangup_source: str | None = None
    hangup_cause: str | None = None
    client_state: str | None = None
    transfers: list[dict[str, Any]] = field(default_factory=list)
    dtmf: list[dict[str, Any]] = field(default_factory=list)

    @property
    def is_alive(self) -> bool:
        """``True`` until the call ends."""
        return self.state != "ended"

    @property
    def stream_url(self) -> str | None:
        """The ``stream_url`` the call was dialled with, if any."""
        value = self.params.get("stream_url")
        return value if isinstance(value, str) else None

    @property
    def to_number(self) -> str:
        """The dialled number (the first one when ``to`` was a list for simultaneous ring)."""
        if isinstance(self.to, list | tuple):
            return str(self.to[0]) if self.to else ""
        return str(self.to)


@dataclass(frozen=True, slots=True)
class FakeCallEvent:
    """A state change on a fake call, delivered to listeners.

    ``kind`` is one of ``"dial"``, ``"texml_call"``, ``"hangup"``, ``"transfer"``,
    ``"send_dtmf"``; ``params`` is the request body of the command.
    """

    kind: str
    call: FakeCall
    params: dict[str, Any]


FakeCallListener = Callable[[FakeCallEvent], Awaitable[None] | None]
_Result = tuple[int, dict[str, Any]]
_Handler = Callable[[dict[str, Any], list[FakeCallEvent]], _Result]


def _new_call_control_id() -> str:
    # Live ids look like "v3:" + ~54 url-safe base64 characters.
    return "v3:" + secrets.token_urlsafe(40)


# --------------------------------------------------------------------------- state


class FakeTelnyxState:
    """Everything the fake API remembers; thread-safe (the server runs in another thread)."""

    def __init__(
        self,
        api_key: str = "test-key",
        *,
        idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api_key = api_key
        self.idempotency_window = idempotency_window
        self.clock = clock
        self.requests: list[RecordedRequest] = []
        self.calls: dict[str, FakeCall] = {}
        self.faults: list[Fault] = []
        self._listeners: list[FakeCallListener] = []
        self._seen_commands: dict[tuple[str, str, str], tuple[float, _Result]] = {}
        self._lock = threading.RLock()
        #: Set when a :class:`FakeTelnyxSimulator` is attached (simulated calls).
        self.simulator: FakeTelnyxSimulator | None = None
        #: The simulator's webhook public key (base64, portal format), if one is attached.
        self.webhook_public_key: str | None = None

    # ------------------------------------------------------------------ test API

    def inject(
        self,
        path: str,
        status: int | None = 500,
        body: Any = None,
        *,
        method: str | None = None,
        times: int | None = 1,
        delay: float = 0.0,
        headers: Mapping[str, str] | None = None,
        after: bool = False,
    ) -> Fault:
        """Make the next ``times`` requests matching ``path`` fail (``times=None``: forever).

        ``path`` is an fnmatch glob on the decoded path, e.g. ``"/v2/calls"`` or
        ``"/v2/calls/*/actions/hangup"``. ``body`` may be a JSON-able object or raw
        ``str``/``bytes`` (default: a Telnyx-shaped error for ``status``). ``delay`` sleeps
        before answering; with ``status=None`` the request is then handled normally (a slow
        but successful answer). ``after=True`` runs the real handler first and replaces its
        response, simulating "processed, but the response was lost".
        Faults are matched before authentication, in injection order.
        """
        fault = Fault(
            path=path,
            status=status,
            body=body,
            method=method,
            times=times,
            delay=delay,
            headers=dict(headers or {}),
            after=after,
        )
        with self._lock:
            self.faults.append(fault)
        return fault

    def reset(self) -> None:
        """Forget requests, calls, faults and seen command ids (listeners are kept)."""
        with self._lock:
            self.requests.clear()
            self.calls.clear()
            self.faults.clear()
            self._seen_commands.clear()

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        with self._lock:
            self.faults.clear()

    def add_listener(self, listener: FakeCallListener) -> None:
        """Call ``listener`` (sync or async) on the server loop for every call state change."""
        with self._lock:
            self._listeners.append(listener)

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose decoded path matches the fnmatch glob ``path``."""
        with self._lock:
            return [
                r
                for r in self.requests
                if fnmatch.fnmatchcase(r.path, path) and (method is None or r.method == method.upper())
            ]

    def end_call(
        self, call_control_id: str, *, source: str = "callee", cause: str = "normal_clearing"
    ) -> FakeCall:
        """Mark a call as ended from the far side (e.g. the callee hung up first).

        With a simulator attached, the simulated callee hangs up too (its stream stops) and
        ``call.hangup`` is sent. Safe to call from any thread.
        """
        with self._lock:
            call = self.calls[call_control_id]
            self._end(call, source, cause)
            simulator = self.simulator
        if simulator is not None:
            simulator.notify_ended(call)
        return call

    # ------------------------------------------------------------------ internals

    def _record(self, request: Request, body: bytes, parsed: Any) -> RecordedRequest:
        command_id = parsed.get("command_id") if isinstance(parsed, dict) else None
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        record = RecordedRequest(
            method=request.method,
            path=request.scope["path"],
            raw_path=raw_path.decode("latin-1") if isinstance(raw_path, bytes) else str(raw_path),
            headers={k.lower(): v for k, v in request.headers.items()},
            json=parsed,
            body=body,
            command_id=command_id if isinstance(command_id, str) else None,
            received_at=time.time(),
        )
        with self._lock:
            self.requests.append(record)
        return record

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip(), self.api_key)

    def _idempotent(self, key: tuple[str, str, str], compute: Callable[[], _Result]) -> tuple[_Result, bool]:
        """Run ``compute`` once per key within the window; repeats get the stored result."""
        now = self.clock()
        with self._lock:
            for stale in [
                k for k, (t, _) in self._seen_commands.items() if now - t > self.idempotency_window
            ]:
                del self._seen_commands[stale]
            if key[2] and key in self._seen_commands:
                return self._seen_commands[key][1], True
            result = compute()
            if key[2]:
                self._seen_commands[key] = (now, result)
            return result, False

    def _end(self, call: FakeCall, source: str, cause: str = "normal_clearing") -> bool:
        """End ``call`` (first end wins); returns whether this call ended it."""
        with self._lock:
            if not call.is_alive:
                return False
            call.state = "ended"
            call.ended_at = time.time()
            call.hangup_source = source
            call.hangup_cause = cause
            return True

    async def _emit(self, events: list[FakeCallEvent]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for event in events:
            for listener in listeners:
                result = listener(event)
                if inspect.isawaitable(result):
                    await result

    # ------------------------------------------------------------------ handlers
    # Each returns (status, json body) plus the events to emit; called under no lock.

    def _dial(self, body: dict[str, Any], events: list[FakeCallEvent]) -> _Result:
        for param in ("connection_id", "to", "from"):
            if not body.get(param):
                return 422, {"errors": [_missing(param)]}
        amd = body.get("answering_machine_detection", "disabled")
        if amd not in _AMD_VALUES:
            return 422, {
                "errors": [
                    _invalid(
                        "answering_machine_detection",
                        f"answering_machine_detection must be one of {', '.join(_AMD_VALUES)}",
                    )
                ]
            }
        call = FakeCall(
            call_control_id=_new_call_control_id(),
            call_leg_id=str(uuid.uuid4()),
            call_session_id=str(uuid.uuid4()),
            kind="call_control",
            to=body["to"],
            from_=str(body["from"]),
            connection_id=str(body["connection_id"]),
            params=dict(body),
            created_at=time.time(),
            client_state=body.get("client_state"),
        )
        with self._lock:
            self.calls[call.call_control_id] = call
        events.append(FakeCallEvent("dial", call, dict(body)))
        data: dict[str, Any] = {
            "call_control_id": call.call_control_id,
            "call_leg_id": call.call_leg_id,
            "call_session_id": call.call_session_id,
            "is_alive": True,
            "record_type": "call",
        }
        if call.client_state is not None:
            data["client_state"] = call.client_state
        return 200, {"data": data}

    def _texml_call(self, account_sid: str, body: dict[str, Any], events: list[FakeCallEvent]) -> _Result:
        for param in ("ApplicationSid", "To", "From"):
            if not body.get(param):
                return 422, {"errors": [_missing(param)]}
        call = FakeCall(
            call_control_id=_new_call_control_id(),
            call_leg_id=str(uuid.uuid4()),
            call_session_id=str(uuid.uuid4()),
            kind="texml",
            to=body["To"],
            from_=str(body["From"]),
            connection_id=str(body["ApplicationSid"]),
            params={**body, "account_sid": account_sid},
            created_at=time.time(),
        )
        with self._lock:
            self.calls[call.call_control_id] = call
        events.append(FakeCallEvent("texml_call", call, dict(body)))
        # Telnyx documents this response as a flat object (no "data" wrapper) with from/to/
        # status. Assumption: it also carries call_sid (the sibling AI-call endpoint does),
        # which is the id later TeXML status callbacks use as CallSid.
        return 200, {"call_sid": call.call_control_id, "from": call.from_, "to": call.to, "status": "queued"}

    def _live_call(self, call_control_id: str) -> FakeCall | None:
        with self._lock:
            call = self.calls.get(call_control_id)
        # Assumption: an id the fake never issued answers like an ended call (90018);
        # the live API may instead answer 90015 "Invalid Call Control ID" for malformed ids.
        return call if call is not None and call.is_alive else None

    def _hangup(self, ccid: str, body: dict[str, Any], events: list[FakeCallEvent]) -> _Result:
        call = self._live_call(ccid)
        if call is None:
            return 422, {"errors": [CALL_ENDED]}
        with self._lock:
            self._end(call, "caller")
        events.append(FakeCallEvent("hangup", call, dict(body)))
        return 200, {"data": {"result": "ok"}}

    def _transfer(self, ccid: str, body: dict[str, Any], events: list[FakeCallEvent]) -> _Result:
        if not body.get("to"):
            return 422, {"errors": [_missing("to")]}
        call = self._live_call(ccid)
        if call is None:
            return 422, {"errors": [CALL_ENDED]}
        with self._lock:
            call.transfers.append(dict(body))
        events.append(FakeCallEvent("transfer", call, dict(body)))
        return 200, {"data": {"result": "ok"}}

    def _send_dtmf(self, ccid: str, body: dict[str, Any], events: list[FakeCallEvent]) -> _Result:
        digits = body.get("digits")
        if not digits:
            return 422, {"errors": [_missing("digits")]}
        if not isinstance(digits, str) or not _DTMF_RE.match(digits):
            return 422, {"errors": [_invalid("digits", "Valid digits are 0-9, A-D, *, # and w/W pauses.")]}
        call = self._live_call(ccid)
        if call is None:
            return 422, {"errors": [CALL_ENDED]}
        with self._lock:
            call.dtmf.append(dict(body))
        events.append(FakeCallEvent("send_dtmf", call, dict(body)))
        return 200, {"data": {"result": "ok"}}


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


class FakeTelnyxSimulator:
    """Makes the fake's calls behave like real ones; attach with :meth:`attach` (a listener).

    For each dialled call (Call Control with ``stream_url``, or TeXML with a ``Url`` whose
    document has a ``<Stream>``) a :class:`SimulatedCaller` plays the callee: it answers
    after ``answer_after_secs``, connects to the stream with the call's ``call_control_id``,
    codec, ``client_state`` (Call Control) or ``<Parameter>`` values (TeXML), says
    ``callee_script(call)`` (default: nothing) and hangs up once the bot has been quiet for
    ``callee_silence_secs`` after its last turn.

    How a call ends (``hangup_source`` from the dialling application's point of view):

    * hang-up through the API: ``"caller"``; the callee's stream gets ``stop`` and closes.
    * the callee's script ends: ``"callee"``.
    * the bot closes its WebSocket: for Call Control, the call stays up (as on Telnyx,
      closing the stream does not hang up) and the callee, hearing silence, hangs up after
      ``stream_end_hangup_secs`` unless the bot hangs up through the API first; for TeXML,
      ``<Connect><Stream>`` is done and the document ends, so the call ends at once with
      ``"caller"`` (assumption: verbs after the stream are recorded, not executed).
    * ``max_call_secs`` passed: ``"unknown"`` with ``hangup_cause="time_limit"``.

    Webhooks of one call are delivered in order by one task per call, never blocking the
    call itself. Everything runs on the fake server's event loop; :meth:`aclose` (run by the
    app's lifespan) cancels the calls still running: their callees' sockets close, the calls
    end with ``hangup_source="unknown"`` and no further webhooks are sent.
    """

    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        webhook_private_key: str | bytes | Ed25519PrivateKey | None = None,
        callee_script: CalleeScript | None = None,
        callee_silence_secs: float = 5.0,
        answer_after_secs: float = 0.0,
        max_call_secs: float = DEFAULT_MAX_CALL_SECS,
        stream_end_hangup_secs: float = 1.0,
        webhook_timeout_secs: float = 5.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if max_call_secs <= 0:
            raise ValueError("max_call_secs must be positive")
        if webhook_private_key is None:
            self._signing_key, self.webhook_public_key = generate_webhook_keypair()
        else:
            self._signing_key = load_private_key(webhook_private_key)
            self.webhook_public_key = public_key_b64(self._signing_key)
        self.webhook_url = webhook_url
        self.callee_script = callee_script
        self.callee_silence_secs = callee_silence_secs
        self.answer_after_secs = answer_after_secs
        self.max_call_secs = max_call_secs
        self.stream_end_hangup_secs = stream_end_hangup_secs
        self.webhook_timeout_secs = webhook_timeout_secs
        self.sessions: dict[str, FakeCallSession] = {}
        self.webhooks: list[WebhookDelivery] = []
        self._state: FakeTelnyxState | None = None
        self._http = http_client
        self._owns_http = http_client is None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # ------------------------------------------------------------------ public API

    def attach(self, state: FakeTelnyxState) -> None:
        """Listen to ``state``'s call events and publish the public key on it."""
        self._state = state
        state.simulator = self
        state.webhook_public_key = self.webhook_public_key
        state.add_listener(self.on_event)

    @property
    def active_calls(self) -> int:
        """Simulated calls still running."""
        return len(self._tasks)

    def webhooks_for(self, call_control_id: str) -> list[WebhookDelivery]:
        """The webhooks sent for one call, in the order they were sent."""
        return [w for w in list(self.webhooks) if w.call_control_id == call_control_id]

    async def on_event(self, event: FakeCallEvent) -> None:
        """The listener: start a simulated call on dial, end it on hang-up."""
        if self._closed:
            return
        self._loop = asyncio.get_running_loop()
        call = event.call
        if event.kind in ("dial", "texml_call"):
            session = FakeCallSession(call)
            self.sessions[call.call_control_id] = session
            task = asyncio.create_task(self._run(session), name=f"fake-call:{call.call_control_id[:16]}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif event.kind == "hangup":
            found = self.sessions.get(call.call_control_id)
            if found is not None:
                if call.answered_at is None:
                    # Hung up while still ringing: the caller cancelled the call.
                    call.hangup_cause = "originator_cancel"
                await self._request_end(found)
        # Assumption: transfer and send_dtmf are only recorded; the simulated callee
        # neither moves nor hears the tones.

    def notify_ended(self, call: FakeCall) -> None:
        """The call was ended outside the API (``FakeTelnyxState.end_call``): stop its callee.

        Thread-safe; a no-op for calls the simulator does not run.
        """
        session = self.sessions.get(call.call_control_id)
        loop = self._loop
        if session is None or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(self._request_end(session))
        else:
            asyncio.run_coroutine_threadsafe(self._request_end(session), loop)

    async def aclose(self) -> None:
        """Cancel running calls (their callees' sockets close) and release the HTTP client."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None and self._owns_http:
            await self._http.aclose()
            self._http = None

    # ------------------------------------------------------------------ call flow

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(follow_redirects=True)
        return self._http

    def _end(self, session: FakeCallSession, source: str, cause: str = "normal_clearing") -> None:
        call = session.call
        if self._state is not None:
            self._state._end(call, source, cause)
        elif call.is_alive:
            call.state, call.ended_at, call.hangup_source, call.hangup_cause = (
                "ended",
                time.time(),
                source,
                cause,
            )
        session._ended.set()

    async def _request_end(self, session: FakeCallSession) -> None:
        session._ended.set()
        if session.caller is not None:
            await session.caller.hang_up()

    async def _wait_ended(self, session: FakeCallSession, timeout: float | None) -> bool:
        """Wait until the call is ended by someone else; ``True`` if it was."""
        if not session.call.is_alive:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session._ended.wait(), timeout)
        return not session.call.is_alive

    async def _run(self, session: FakeCallSession) -> None:
        call = session.call
        try:
            deadline = asyncio.timeout(self.max_call_secs)
            try:
                async with deadline:
                    if call.kind == "texml":
                        await self._texml_flow(session)
                    else:
                        await self._call_control_flow(session)
            except TimeoutError:
                if not deadline.expired():
                    raise
                session.errors.append(f"call exceeded max_call_secs={self.max_call_secs}")
                self._end(session, "unknown", "time_limit")
            await self._stop_callee(session)
            self._stream_stopped(session)  # if a time limit cut the stream short
            # Assumption: a flow that returns with the call still up (cannot happen in the
            # flows below) is ended by the network.
            self._end(session, "unknown", "unspecified")
            self._call_ended_webhooks(session)
            await self._flush(session)
        except Exception as exc:
            logger.exception("simulated call %s failed", call.call_control_id)
            session.errors.append(f"simulator error: {type(exc).__name__}: {exc}")
            self._end(session, "unknown", "unspecified")
        finally:
            await self._cleanup(session)
            session.finished.set()

    async def _ring(self, session: FakeCallSession) -> bool:
        """Ring for ``answer_after_secs``, then answer; ``False`` if the call ended first."""
        if self.answer_after_secs > 0 and await self._wait_ended(session, self.answer_after_secs):
            return False
        call = session.call
        if not call.is_alive:
            return False
        call.state = "answered"
        call.answered_at = time.time()
        return True

    async def _call_control_flow(self, session: FakeCallSession) -> None:
        call = session.call
        self._call_control_event(session, "call.initiated", direction="outgoing", state="bridging")
        if not await self._ring(session):
            return
        self._call_control_event(session, "call.answered", state="answered")
        codec = call.params.get("stream_bidirectional_codec") or call.params.get("stream_codec")
        if not isinstance(codec, str) or codec.lower() == "default":
            codec = "PCMU"
        rate = call.params.get("stream_bidirectional_sampling_rate")
        if call.stream_url is None:
            # No media stream: the callee stays on the line until someone hangs up.
            await self._wait_ended(session, None)
            return
        closed_by = await self._stream(
            session,
            call.stream_url,
            encoding=codec,
            sample_rate=rate if isinstance(rate, int) else None,
            custom_parameters={},
            client_state=call.client_state,
        )
        if not call.is_alive:
            return
        if closed_by == "caller":
            self._end(session, "callee")  # the callee's script ended: it hung up
            return
        # The bot closed its stream (or it never connected): the call is still up and the
        # callee hears silence. Give the bot time to hang up through the API first.
        if not await self._wait_ended(session, self.stream_end_hangup_secs):
            self._end(session, "callee")

    async def _texml_flow(self, session: FakeCallSession) -> None:
        call = session.call
        self._texml_status(session, "initiated")
        if not await self._ring(session):
            return
        self._texml_status(session, "answered")
        url = call.params.get("Url")
        if not isinstance(url, str) or not url:
            # Assumption: without Url, Telnyx uses the TeXML application's configured URL,
            # which the fake does not know.
            session.errors.append("TeXML call has no Url; the fake cannot look up the application's URL")
            self._end(session, "unknown", "unspecified")
            return
        method = call.params.get("UrlMethod")
        try:
            texml = await fetch_texml(
                url,
                call_sid=call.call_control_id,
                account_sid=str(call.params.get("account_sid", "")),
                from_number=call.from_,
                to_number=call.to_number,
                # Assumption: Twilio-style direction for calls placed through the API.
                direction="outbound-api",
                call_status="in-progress",
                connection_id=call.connection_id,
                http=self._client(),
                method=method.upper() if isinstance(method, str) and method else "POST",
                signing_key=self._signing_key,  # Telnyx signs TeXML fetches like webhooks
            )
        except TeXMLFetchError as exc:
            session.errors.append(str(exc))
            self._end(session, "unknown", "unspecified")
            return
        except TeXMLError as exc:
            # A document without a stream (e.g. just <Hangup/>) ends the call from our side.
            session.errors.append(str(exc))
            self._end(session, "caller")
            return
        session.texml = texml
        closed_by = await self._stream(
            session,
            texml.stream.url,
            encoding=texml.stream.encoding,
            sample_rate=texml.stream.sample_rate,
            custom_parameters=texml.custom_parameters,
            client_state=None,
        )
        if call.is_alive:
            self._end(session, "callee" if closed_by == "caller" else "caller")

    async def _stream(
        self,
        session: FakeCallSession,
        url: str,
        *,
        encoding: str,
        sample_rate: int | None,
        custom_parameters: dict[str, str],
        client_state: str | None,
    ) -> str:
        """Run the simulated callee on ``url``; returns ``CallResult.closed_by`` ("" if it never ran)."""
        call = session.call
        session.stream_url = url
        try:
            caller = SimulatedCaller(
                url,
                encoding=encoding,
                sample_rate=sample_rate,
                # Assumption: the stream's start.from/to are the call's, as dialled.
                from_number=call.from_,
                to_number=call.to_number,
                custom_parameters=custom_parameters,
                client_state=client_state,
                call_control_id=call.call_control_id,
                stream_id=session.stream_id,
                # The session enforces max_call_secs; this is only a backstop.
                max_call_secs=self.max_call_secs + 5.0,
            )
        except ValueError as exc:
            session.errors.append(f"cannot simulate the stream: {exc}")
            self._stream_failed(session, "unsupported_codec")
            return ""
        session.caller = caller
        turns = list(self.callee_script(call)) if self.callee_script is not None else []
        run = asyncio.ensure_future(caller.run(turns, hang_up_after_secs=self.callee_silence_secs))
        session._run_task = run
        # streaming.started once the WebSocket is up (SimulatedCaller sets .result then).
        while caller.result is None and not run.done():  # noqa: ASYNC110 - no connect hook in SimulatedCaller
            await asyncio.sleep(0.005)
        if caller.result is not None:
            session.stream_started = True
            self._stream_event(session, started=True)
        await asyncio.wait({run})  # wait without cancelling the callee if we are cancelled
        try:
            result = run.result()
        except Exception as exc:
            session.errors.append(f"stream to {url} failed: {type(exc).__name__}: {exc}")
            session.result = caller.result
            if session.stream_started:
                self._stream_stopped(session)
            else:
                self._stream_failed(session, "connection_failed")
            return ""
        session.result = result
        self._stream_stopped(session)
        return result.closed_by

    async def _stop_callee(self, session: FakeCallSession) -> None:
        """Make sure the callee has hung up (after a time limit or an early return)."""
        run = session._run_task
        if run is None or run.done():
            return
        if session.caller is not None:
            await session.caller.hang_up()
        await asyncio.wait({run}, timeout=5.0)
        if not run.done():
            run.cancel()
            await asyncio.wait({run})
        if not run.cancelled() and run.exception() is None:
            session.result = run.result()

    async def _cleanup(self, session: FakeCallSession) -> None:
        """Cancel whatever of the call still runs (shutdown or a simulator error)."""
        pending: list[asyncio.Future[Any]] = []
        if session._run_task is not None and not session._run_task.done():
            session._run_task.cancel()
            pending.append(session._run_task)
        if session._sender is not None and not session._sender.done():
            session._sender.cancel()
            pending.append(session._sender)
        if pending:
            # Shield: if we are being cancelled ourselves, still let these finish unwinding.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(asyncio.gather(*pending, return_exceptions=True))
        if session.call.is_alive:
            self._end(session, "unknown", "unspecified")

    # ------------------------------------------------------------------ webhooks

    def _stream_event(self, session: FakeCallSession, *, started: bool) -> None:
        if session.call.kind == "texml":
            self._texml_stream_callback(session, "stream-started" if started else "stream-stopped")
        else:
            name = "streaming.started" if started else "streaming.stopped"
            self._call_control_event(session, name, stream_url=session.stream_url)

    def _stream_stopped(self, session: FakeCallSession) -> None:
        if session.stream_started and not session.stream_stopped:
            session.stream_stopped = True
            self._stream_event(session, started=False)

    def _stream_failed(self, session: FakeCallSession, reason: str) -> None:
        if session.call.kind == "texml":
            self._texml_stream_callback(session, "stream-error", error=reason)
            return
        self._call_control_event(
            session,
            "streaming.failed",
            failure_reason=reason,
            stream_id=session.stream_id,
            stream_params={
                "stream_url": session.stream_url,
                "track": session.call.params.get("stream_track"),
            },
            stream_type="websocket",
        )

    def _call_ended_webhooks(self, session: FakeCallSession) -> None:
        call = session.call
        if call.kind == "texml":
            self._texml_status(session, "completed")
            return
        self._call_control_event(
            session,
            "call.hangup",
            state="hangup",
            start_time=_iso(call.created_at),
            end_time=_iso(call.ended_at),
            hangup_cause=call.hangup_cause or "normal_clearing",
            hangup_source=call.hangup_source or "unknown",
            # Assumption: sip_hangup_cause and call_quality_stats are left out; the fake
            # has no SIP signalling or RTP statistics to report.
        )

    def _call_control_event(self, session: FakeCallSession, event_type: str, **fields: Any) -> None:
        """Queue a Call Control JSON event, in Telnyx's envelope, for this call's webhook URL."""
        call = session.call
        target = call.params.get("webhook_url") or self.webhook_url
        if not isinstance(target, str) or not target:
            return
        payload: dict[str, Any] = {
            "call_control_id": call.call_control_id,
            "call_leg_id": call.call_leg_id,
            "call_session_id": call.call_session_id,
            "connection_id": call.connection_id,
            # Assumption: an absent client_state is sent as null.
            "client_state": call.client_state,
        }
        if event_type.startswith("call."):
            payload.update({"from": call.from_, "to": call.to_number, "direction": "outgoing"})
            payload["start_time"] = _iso(call.created_at)
        payload.update(fields)
        envelope = {
            "data": {
                "record_type": "event",
                "event_type": event_type,
                "id": str(uuid.uuid4()),
                "occurred_at": _iso_now(),
                "payload": payload,
            },
            "meta": {"attempt": 1, "delivered_to": target},
        }
        body = json.dumps(envelope, separators=(",", ":")).encode()
        self._enqueue(
            session,
            WebhookDelivery(
                url=target,
                method="POST",
                kind="call_control",
                event_type=event_type,
                call_control_id=call.call_control_id,
                body=body,
                headers={"content-type": "application/json"},
            ),
        )

    def _texml_form(self, session: FakeCallSession) -> dict[str, str]:
        call = session.call
        session._sequence += 1
        return {
            "AccountSid": str(call.params.get("account_sid", "")),
            "CallSid": call.call_control_id,
            "CallSidLegacy": call.call_control_id,
            "ConnectionId": call.connection_id or "",
            "From": call.from_,
            "To": call.to_number,
            "Timestamp": _iso_now(),
            "SequenceNumber": str(session._sequence - 1),
        }

    def _texml_status(self, session: FakeCallSession, event: str) -> None:
        """Queue a TeXML status callback if the call asked for ``event``.

        Assumption: as in Twilio's API, ``StatusCallbackEvent`` lists events separated by
        spaces (``initiated ringing answered completed``) and defaults to ``completed``.
        """
        call = session.call
        target = call.params.get("StatusCallback")
        if not isinstance(target, str) or not target:
            return
        wanted = call.params.get("StatusCallbackEvent") or "completed"
        events = wanted.replace(",", " ").split() if isinstance(wanted, str) else list(wanted)
        if event not in events:
            return
        status = {"answered": "in-progress"}.get(event, event)
        form = self._texml_form(session)
        form.update({"CallStatus": status, "CallbackSource": "call-progress-events"})
        if event == "completed":
            answered = call.answered_at
            ended = call.ended_at or time.time()
            form.update(
                {
                    "CallDuration": str(int(ended - answered)) if answered is not None else "0",
                    "CallControlId": call.call_control_id,
                    "CallLegId": call.call_leg_id,
                    "CallSessionId": call.call_session_id,
                    "HangupCause": call.hangup_cause or "normal_clearing",
                    "HangupSource": call.hangup_source or "unknown",
                }
            )
        method = call.params.get("StatusCallbackMethod")
        self._enqueue_form(session, target, method, f"texml.{status}", form)

    def _texml_stream_callback(self, session: FakeCallSession, event: str, error: str | None = None) -> None:
        stream = session.texml.stream if session.texml is not None else None
        if stream is None or not stream.status_callback:
            return
        form = self._texml_form(session)
        form.update({"StreamEvent": event, "StreamName": stream.name or "", "StreamSid": session.stream_id})
        if error is not None:
            form["StreamError"] = error
        self._enqueue_form(
            session, stream.status_callback, stream.status_callback_method, f"texml.{event}", form
        )

    def _enqueue_form(
        self, session: FakeCallSession, url: str, method: Any, event_type: str, form: dict[str, str]
    ) -> None:
        verb = method.upper() if isinstance(method, str) and method.upper() in ("GET", "POST") else "POST"
        encoded = urlencode(form)
        if verb == "GET":
            url = f"{url}{'&' if '?' in url else '?'}{encoded}"
            body = b""
            headers: dict[str, str] = {}
        else:
            body = encoded.encode()
            headers = {"content-type": "application/x-www-form-urlencoded"}
        self._enqueue(
            session,
            WebhookDelivery(
                url=url,
                method=verb,
                kind="texml",
                event_type=event_type,
                call_control_id=session.call.call_control_id,
                body=body,
                headers=headers,
            ),
        )

    def _enqueue(self, session: FakeCallSession, delivery: WebhookDelivery) -> None:
        session._outbox.put_nowait(delivery)
        if session._sender is None:
            session._sender = asyncio.create_task(self._deliver(session))

    async def _deliver(self, session: FakeCallSession) -> None:
        """Send this call's webhooks one at a time, in order (``None`` ends the queue)."""
        while True:
            delivery = await session._outbox.get()
            if delivery is None:
                return
            # Signed when sent, like Telnyx: the timestamp is the delivery time. Assumption:
            # a GET callback signs the empty body.
            delivery.headers.update(sign_webhook(delivery.body, self._signing_key))
            delivery.headers["user-agent"] = _WEBHOOK_USER_AGENT
            delivery.sent_at = time.time()
            self.webhooks.append(delivery)
            try:
                response = await self._client().request(
                    delivery.method,
                    delivery.url,
                    content=delivery.body or None,
                    headers=delivery.headers,
                    timeout=self.webhook_timeout_secs,
                )
                delivery.status_code = response.status_code
            except httpx.HTTPError as exc:
                # Assumption: no retries (Telnyx retries to a failover URL, if configured).
                delivery.error = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "webhook %s to %s failed: %s", delivery.event_type, delivery.url, delivery.error
                )

    async def _flush(self, session: FakeCallSession) -> None:
        """Wait (bounded) until every queued webhook of the call was sent."""
        sender = session._sender
        if sender is None:
            return
        session._outbox.put_nowait(None)
        await asyncio.wait({sender}, timeout=self.webhook_timeout_secs * max(1, session._outbox.qsize()) + 1)


# --------------------------------------------------------------------------- app


def create_fake_telnyx_app(
    api_key: str = "test-key",
    *,
    state: FakeTelnyxState | None = None,
    idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW,
    simulate_calls: bool = False,
    webhook_url: str | None = None,
    webhook_private_key: str | bytes | Ed25519PrivateKey | None = None,
    callee_script: CalleeScript | None = None,
    max_call_secs: float = DEFAULT_MAX_CALL_SECS,
    simulator: FakeTelnyxSimulator | None = None,
) -> FastAPI:
    """Build the fake Telnyx API; its :class:`FakeTelnyxState` is ``app.state.telnyx``.

    Pass ``state`` to share one state object (``api_key``/``idempotency_window`` are then
    taken from it, not from the arguments).

    ``simulate_calls=True`` attaches a :class:`FakeTelnyxSimulator` built from
    ``webhook_url``, ``webhook_private_key`` (default: a fresh key pair), ``callee_script``
    and ``max_call_secs``; pass ``simulator`` instead to configure it fully. It is then
    ``app.state.simulator`` (and ``state.simulator``), its public key
    ``state.webhook_public_key``, and its calls are cleaned up when the app shuts down.
    """
    st = state if state is not None else FakeTelnyxState(api_key, idempotency_window=idempotency_window)
    sim = simulator
    if sim is None and simulate_calls:
        sim = FakeTelnyxSimulator(
            webhook_url=webhook_url,
            webhook_private_key=webhook_private_key,
            callee_script=callee_script,
            max_call_secs=max_call_secs,
        )
    if sim is not None:
        sim.attach(st)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if sim is not None:
                await sim.aclose()

    app = FastAPI(
        title="callpipe fake Telnyx API", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.telnyx = st
    app.state.simulator = sim

    async def handle(
        request: Request, handler: _Handler | None, idem_key: tuple[str, str] | None
    ) -> Response:
        """The common pipeline: record -> fault -> auth -> parse -> (idempotent) handler."""
        raw = await request.body()
        try:
            parsed: Any = json.loads(raw) if raw else {}
        except ValueError:
            parsed = None
        record = st._record(request, raw, parsed)
        fault = st._take_fault(request.method, request.scope["path"])
        record.fault = fault
        if fault is not None and fault.delay > 0:
            await asyncio.sleep(fault.delay)
        response: Response
        if fault is not None and fault.status is not None and not fault.after:
            response = fault.response()
        elif not st._authorized(request):
            response = JSONResponse({"errors": [AUTH_FAILED]}, status_code=401)
        elif handler is None:
            response = JSONResponse({"errors": [NOT_FOUND]}, status_code=404)
        elif not isinstance(parsed, dict):
            bad = {
                "code": "10015",
                "title": "Bad Request",
                "detail": "The request body must be a JSON object.",
            }
            response = JSONResponse({"errors": [bad]}, status_code=400)
        else:
            events: list[FakeCallEvent] = []
            body = parsed
            if idem_key is not None:
                command_id = body.get("command_id")
                key = (idem_key[0], idem_key[1], command_id if isinstance(command_id, str) else "")
                (status, payload), record.deduplicated = st._idempotent(key, lambda: handler(body, events))
            else:
                status, payload = handler(body, events)
            await st._emit(events)
            response = JSONResponse(payload, status_code=status)
            if fault is not None and fault.status is not None and fault.after:
                response = fault.response()
        record.status_code = response.status_code
        return response

    @app.post(f"{API_PREFIX}/calls")
    async def dial(request: Request) -> Response:
        # Telnyx de-duplicates dials by command_id alone (there is no call yet).
        return await handle(request, st._dial, ("dial", ""))

    @app.post(f"{API_PREFIX}/texml/Accounts/{{account_sid}}/Calls")
    async def texml_call(request: Request, account_sid: str) -> Response:
        return await handle(request, lambda body, ev: st._texml_call(account_sid, body, ev), None)

    # ":path" so ids with an encoded '/' still route (uvicorn decodes %2F before routing).
    @app.post(f"{API_PREFIX}/calls/{{call_control_id:path}}/actions/hangup")
    async def hangup(request: Request, call_control_id: str) -> Response:
        return await handle(
            request, lambda body, ev: st._hangup(call_control_id, body, ev), ("hangup", call_control_id)
        )

    @app.post(f"{API_PREFIX}/calls/{{call_control_id:path}}/actions/transfer")
    async def transfer(request: Request, call_control_id: str) -> Response:
        return await handle(
            request, lambda body, ev: st._transfer(call_control_id, body, ev), ("transfer", call_control_id)
        )

    @app.post(f"{API_PREFIX}/calls/{{call_control_id:path}}/actions/send_dtmf")
    async def send_dtmf(request: Request, call_control_id: str) -> Response:
        return await handle(
            request, lambda body, ev: st._send_dtmf(call_control_id, body, ev), ("send_dtmf", call_control_id)
        )

    # Everything else: recorded, faultable, and answered with Telnyx's 404 shape.
    @app.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def fallback(request: Request, rest: str) -> Response:
        return await handle(request, None, None)

    return app


# --------------------------------------------------------------------------- standalone


def serve_fake_telnyx(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    api_key: str = "test-key",
    webhook_url: str | None = None,
    webhook_private_key: str | bytes | Ed25519PrivateKey | None = None,
    callee_script: CalleeScript | None = None,
    max_call_secs: float = DEFAULT_MAX_CALL_SECS,
    log_level: str = "info",
    announce: Callable[[str], None] = print,
) -> None:
    """Run the fake Telnyx API with simulated calls; blocks, returns after Ctrl-C / SIGTERM.

    Announces the base URL (point ``TelnyxClient(base_url=...)`` at it), the API key and the
    webhook public key to verify the webhooks with. ``port=0`` picks a free port.
    """
    app = create_fake_telnyx_app(
        api_key,
        simulate_calls=True,
        webhook_url=webhook_url,
        webhook_private_key=webhook_private_key,
        callee_script=callee_script,
        max_call_secs=max_call_secs,
    )
    state: FakeTelnyxState = app.state.telnyx
    # Bind first so the announced port is the real one (also for port=0).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound_port = sock.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    announce(f"fake Telnyx API: http://{shown_host}:{bound_port}/v2 (API key: {api_key})")
    announce(f"webhook public key (base64): {state.webhook_public_key}")
    target = webhook_url or "none by default (only to a dial's own webhook_url)"
    announce(f"webhooks: {target}")
    config = uvicorn.Config(app, log_level=log_level, lifespan="on")
    try:
        # uvicorn shuts down gracefully on Ctrl-C (lifespan included), then re-raises it.
        with contextlib.suppress(KeyboardInterrupt):
            uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
