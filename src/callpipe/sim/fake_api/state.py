"""The fake Telnyx REST API's state: recorded requests, calls, faults and the command handlers."""

from __future__ import annotations

import fnmatch
import inspect
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

if TYPE_CHECKING:
    from callpipe.sim.fake_api.simulator import FakeTelnyxSimulator


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
    # Call Control actions (speak, bridge, record_start, ...): see fake_api/actions.py.
    actions: list[dict[str, Any]] = field(default_factory=list)
    bridged_with: str | None = None
    recording: dict[str, Any] | None = None
    suppression: str | None = None

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
