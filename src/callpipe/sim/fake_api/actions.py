"""The fake API's Call Control actions: speak, playback, bridge, streaming_stop, recording,
noise suppression.

Each handler validates the body the way Telnyx's API reference describes the fields
(required ones, enumerated values) and answers with Telnyx's shapes (``{"data":
{"result": "ok"}}``, or ``422`` with an ``errors`` array); the call keeps what was asked
(``FakeCall.actions``, ``bridged_with``, ``recording``, ``suppression``) and a
:class:`FakeCallEvent` of the action's name goes to the listeners (the simulator sends
the webhooks: ``call.speak.*``, ``call.bridged``, ``call.recording.saved``...).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from callpipe.sim.fake_api.state import (
    API_PREFIX,
    CALL_ENDED,
    FakeCall,
    FakeCallEvent,
    FakeTelnyxState,
    _Handler,
    _invalid,
    _missing,
    _Result,
)

__all__ = ["ACTIONS", "add_action_routes"]

_OK: _Result = (200, {"data": {"result": "ok"}})
_Handle = Callable[[Request, _Handler | None, tuple[str, str] | None], Awaitable[Response]]


def _enum(body: dict[str, Any], name: str, allowed: tuple[str, ...], *, required: bool) -> _Result | None:
    value = body.get(name)
    if value is None:
        return (422, {"errors": [_missing(name)]}) if required else None
    if value not in allowed:
        return 422, {"errors": [_invalid(name, f"{name} must be one of {', '.join(allowed)}")]}
    return None


def _speak(call: FakeCall, body: dict[str, Any]) -> _Result | None:
    for name in ("payload", "voice"):
        if not body.get(name):
            return 422, {"errors": [_missing(name)]}
    if not isinstance(body["payload"], str):
        return 422, {"errors": [_invalid("payload", "payload must be a string")]}
    # Assumption: the generic voices need a language; provider voices ("Polly.Joanna") carry theirs.
    if body["voice"] in ("male", "female") and not body.get("language"):
        return 422, {"errors": [_missing("language")]}
    return _enum(body, "payload_type", ("text", "ssml"), required=False)


def _playback_start(call: FakeCall, body: dict[str, Any]) -> _Result | None:
    sources = [k for k in ("audio_url", "media_name", "playback_content") if body.get(k)]
    if len(sources) != 1:
        detail = "exactly one of audio_url, media_name or playback_content is required"
        return 422, {"errors": [_invalid("audio_url", detail)]}
    loop = body.get("loop")
    if loop is not None and loop != "infinity" and not (isinstance(loop, int) and loop > 0):
        return 422, {"errors": [_invalid("loop", "loop must be a positive integer or 'infinity'")]}
    return _enum(body, "target_legs", ("self", "opposite", "both"), required=False)


def _playback_stop(call: FakeCall, body: dict[str, Any]) -> _Result | None:
    return _enum(body, "stop", ("all", "current"), required=False)


def _streaming_stop(call: FakeCall, body: dict[str, Any]) -> _Result | None:
    return None


def _record_start(call: FakeCall, body: dict[str, Any]) -> _Result | None:
    problem = _enum(body, "format", ("wav", "mp3"), required=True) or _enum(
        body, "channels", ("single", "dual"), required=True
    )
    if problem is not None:
        return problem
    if "play_beep" in body and not isinstance(body["play_beep"], bool):
        return 422, {"errors": [_invalid("play_beep", "play_beep must be a boolean")]}
    call.recording = {"format": body["format"], "channels": body["channels"], "active": True}
    return None


def _record_stop(call: FakeCall, body: dict[str, Any]) -> _Result | None:
    if call.recording is None or not call.recording.get("active"):
        # Assumption: stopping a recording that is not running is refused like this.
        return 422, {"errors": [_invalid("call_control_id", "There is no active recording on this call.")]}
    call.recording["active"] = False
    return None


def _suppression_start(call: FakeCall, body: dict[str, Any]) -> _Result | None:
    # Assumption: direction is required (Telnyx's reference lists no default).
    problem = _enum(body, "direction", ("inbound", "outbound", "both"), required=True)
    if problem is None:
        call.suppression = str(body["direction"])
    return problem


def _suppression_stop(call: FakeCall, body: dict[str, Any]) -> _Result | None:
    call.suppression = None
    return None


_Check = Callable[[FakeCall, dict[str, Any]], _Result | None]

#: Each action and its validation (which may also update the call).
ACTIONS: dict[str, _Check] = {
    "speak": _speak,
    "playback_start": _playback_start,
    "playback_stop": _playback_stop,
    "streaming_stop": _streaming_stop,
    "record_start": _record_start,
    "record_stop": _record_stop,
    "suppression_start": _suppression_start,
    "suppression_stop": _suppression_stop,
}


def _handler(state: FakeTelnyxState, name: str, ccid: str) -> _Handler:
    check = ACTIONS[name]

    def run(body: dict[str, Any], events: list[FakeCallEvent]) -> _Result:
        call = state._live_call(ccid)
        if call is None:
            return 422, {"errors": [CALL_ENDED]}
        with state._lock:
            problem = check(call, body)
            if problem is not None:
                return problem
            call.actions.append({"action": name, **body})
        events.append(FakeCallEvent(name, call, dict(body)))
        return _OK

    return run


def _bridge(state: FakeTelnyxState, ccid: str) -> _Handler:
    def run(body: dict[str, Any], events: list[FakeCallEvent]) -> _Result:
        other_id = body.get("call_control_id")
        if not other_id:
            return 422, {"errors": [_missing("call_control_id")]}
        if other_id == ccid:
            return 422, {"errors": [_invalid("call_control_id", "A call cannot be bridged to itself.")]}
        call, other = state._live_call(ccid), state._live_call(str(other_id))
        if call is None or other is None:
            return 422, {"errors": [CALL_ENDED]}
        with state._lock:
            call.bridged_with, other.bridged_with = other.call_control_id, call.call_control_id
            call.actions.append({"action": "bridge", **body})
        events.append(FakeCallEvent("bridge", call, dict(body)))
        return _OK

    return run


def add_action_routes(app: FastAPI, state: FakeTelnyxState, handle: _Handle) -> None:
    """Route ``POST /v2/calls/{id}/actions/<action>`` for :data:`ACTIONS` and ``bridge``."""

    def route(name: str) -> None:
        async def endpoint(request: Request, call_control_id: str) -> Response:
            result: Response = await handle(
                request, _handler(state, name, call_control_id), (name, call_control_id)
            )
            return result

        app.add_api_route(
            f"{API_PREFIX}/calls/{{call_control_id:path}}/actions/{name}", endpoint, methods=["POST"]
        )

    for name in ACTIONS:
        route(name)

    async def bridge(request: Request, call_control_id: str) -> Response:
        result: Response = await handle(request, _bridge(state, call_control_id), ("bridge", call_control_id))
        return result

    app.add_api_route(f"{API_PREFIX}/calls/{{call_control_id:path}}/actions/bridge", bridge, methods=["POST"])
