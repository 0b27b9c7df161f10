"""Where a control event goes: into the call it is for, here, or forwarded to its owner.

A :class:`ControlEvent` (a Telnyx webhook or an operator's action) is applied to a call
this process holds by :func:`deliver_locally`; :func:`dispatch` does that or, for a call
held elsewhere, hands it to this process's :class:`~callpipe.server.control.ControlPlane`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from callpipe.pipeline.frames import AnsweringMachineDetectionFrame
from callpipe.services import warm_transfer
from callpipe.telnyx.api import TelnyxError
from callpipe.transports.fastapi import transport_for_call

if TYPE_CHECKING:
    from callpipe.server.state import ServerState

__all__ = ["ControlEvent", "deliver_locally", "dispatch", "is_local", "spawn_hangup", "spawn_in_background"]

logger = logging.getLogger("callpipe.server.control")


class ControlEvent(msgspec.Struct, frozen=True, omit_defaults=True):
    """What travels between instances: a Telnyx webhook or an operator's action.

    ``kind``: ``"webhook"`` (``event_type`` and ``payload`` as Telnyx sent them),
    ``"hangup"`` (an operator ends the call), ``"transfer"`` (to ``to``) or
    ``"transfer_leg"`` (a webhook of a warm transfer's agent leg, for the caller's call).
    """

    kind: str
    event_type: str = ""
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    to: str = ""


def is_local(state: ServerState, ccid: str) -> bool:
    """Whether this process holds the call ``ccid``."""
    return bool(ccid) and (ccid in state.calls or transport_for_call(ccid) is not None)


async def deliver_locally(state: ServerState, ccid: str, event: ControlEvent) -> bool:
    """Inject ``event`` into the call ``ccid`` if this process holds it; ``False`` if not.

    A :class:`TelnyxError` from a transfer propagates (the caller answers 502).
    """
    if not is_local(state, ccid):
        return False
    call = state.calls.get(ccid)
    if call is not None and call.observer is not None:
        call.observer.control_event(event.kind, event.event_type, event.payload, to=event.to)
    transport = transport_for_call(ccid)
    if event.kind == "webhook":
        if event.event_type == "call.hangup":
            cause = event.payload.get("hangup_cause", "unknown")
            logger.info("call.hangup for %s (%s)", ccid, cause)
            await _end(state, ccid, f"call hung up ({cause})")
        elif event.event_type == "streaming.failed":
            reason = event.payload.get("failure_reason", "unknown")
            logger.warning("streaming.failed for %s (%s): ending the call", ccid, reason)
            await _end(state, ccid, f"Telnyx streaming failed ({reason})")
        elif event.event_type.startswith("call.machine.") and transport is not None:
            result = str(event.payload.get("result", ""))
            frame = AnsweringMachineDetectionFrame(result=result, event_type=event.event_type)
            await transport.push_call_event(frame)
    elif event.kind == "transfer_leg":
        warm_transfer.deliver(ccid, event.event_type, event.payload)
    elif event.kind == "hangup":
        logger.info("call %s hung up by an operator", ccid)
        await _end(state, ccid, "hung up by an operator")
        if state.telnyx is not None:
            # The bot is already ending; the REST hang-up makes sure the phone call ends
            # too, without holding up the operator's answer.
            spawn_in_background(_hangup_quietly(state, ccid))
    elif event.kind == "transfer":
        if state.telnyx is None:
            raise TelnyxError("transfers need TELNYX_API_KEY")
        logger.info("call %s transferred by an operator", ccid)
        await state.telnyx.transfer(ccid, to=event.to)
        warm_transfer.keep_call_up(ccid)  # the bot leaving must not hang the transferred caller up
    return True


async def _end(state: ServerState, ccid: str, reason: str) -> None:
    transport = transport_for_call(ccid)
    if transport is not None:
        await transport.end_from_outside(reason)
        return
    call = state.calls.get(ccid)
    if call is not None:
        call.end()


_background: set[asyncio.Task[None]] = set()


def spawn_in_background(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` as a task of its own, kept referenced until it is done."""
    task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


def spawn_hangup(state: ServerState, ccid: str) -> None:
    """Hang ``ccid`` up through the Telnyx API in the background (failures are logged)."""
    spawn_in_background(_hangup_quietly(state, ccid))


async def _hangup_quietly(state: ServerState, ccid: str) -> None:
    assert state.telnyx is not None
    try:
        await state.telnyx.hangup(ccid)
    except (TelnyxError, httpx.HTTPError) as exc:
        logger.warning("hang-up of %s through the Telnyx API failed: %s", ccid, exc)


async def dispatch(state: ServerState, ccid: str, event: ControlEvent) -> str:
    """Deliver ``event`` here if the call is ours, else forward it to the owner.

    Returns ``"local"``, ``"forwarded"``, ``"not_found"`` (no live instance holds the
    call), ``"failed"`` (the owner did not take it; logged) or ``"telnyx_error"`` (the
    owner took it, Telnyx refused the action).
    """
    if await deliver_locally(state, ccid, event):
        return "local"
    control = state.control
    if control is None or not ccid:
        return "not_found"
    return await control.forward(ccid, event)
