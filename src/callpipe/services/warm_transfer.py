"""Warm transfer over Call Control: hold the caller, brief an agent, bridge, leave.

``await WarmTransfer(client, caller_ccid, config).run(to, summary)``:

1. the destination is checked against the :class:`TransferPolicy` (allowlist);
2. hold audio starts on the caller's leg (Telnyx ``playback_start`` with ``loop=infinity``
   when ``hold_audio_url`` is set; otherwise the caller hears what the bot plays, e.g. the
   LLM tool's hold tone);
3. the agent is dialled (``POST /calls``, no media stream, ``client_state`` naming the
   caller's call so the agent leg's webhooks reach this call on whichever instance holds
   it; answering machine detection on);
4. once the agent answers, Telnyx speaks the summary on the agent leg only
   (``actions/speak``), ending with "press 1 to take the call, 2 to decline";
5. the agent presses ``1`` (or says nothing for ``decision_secs``): hold audio stops, the
   legs are bridged (``actions/bridge``), the call's record ends as ``transferred`` and
   the bot's stream on the caller's leg stops (``actions/streaming_stop``), so the caller
   stays on the line with the agent;
6. the agent presses ``2``, hangs up, does not answer within ``answer_timeout_secs``, or
   a machine answers: the agent leg is hung up, hold audio stops and the result says why,
   so the bot can tell the caller.

The agent leg's events arrive through :func:`deliver` (the server routes them here by
the ``client_state``). The outcome and both legs go into the call's record (``transfer``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from callpipe.records import observer as records
from callpipe.services.call_policy import PolicyError, TransferPolicy
from callpipe.telnyx.api import TelnyxClient, TelnyxError
from callpipe.transports.fastapi import transport_for_call

__all__ = [
    "CLIENT_STATE_KEY",
    "WarmTransfer",
    "WarmTransferConfig",
    "WarmTransferResult",
    "deliver",
    "keep_call_up",
    "transfer_of",
    "warm_transfer",
]

logger = logging.getLogger("callpipe.services.transfer")

#: The key in the agent leg's ``client_state`` (base64 JSON) naming the caller's call.
CLIENT_STATE_KEY = "callpipe_transfer_of"

Outcome = Literal["bridged", "declined", "no_answer", "machine", "refused", "failed"]

# The results of Telnyx's answering machine detection that mean "not a person".
_MACHINE_RESULTS = ("machine", "fax_detected", "silence")

_active: dict[str, WarmTransfer] = {}


def transfer_of(client_state: Any) -> str | None:
    """The caller's call id if ``client_state`` (base64 JSON, as Telnyx echoes it) is a warm transfer's."""
    if not isinstance(client_state, str) or not client_state or len(client_state) > 4096:
        return None
    try:
        decoded = json.loads(base64.b64decode(client_state, validate=True))
    except (ValueError, TypeError):
        return None
    value = decoded.get(CLIENT_STATE_KEY) if isinstance(decoded, dict) else None
    return value if isinstance(value, str) and value else None


def keep_call_up(call_control_id: str) -> None:
    """The call was handed to someone else: the bot ending must not hang it up any more.

    Without this, the serializer's auto hang-up (when the pipeline ends, e.g. on Telnyx's
    ``stop`` after ``streaming_stop`` or a transfer) would hang up the transferred caller.
    """
    transport = transport_for_call(call_control_id)
    if transport is not None:
        transport.serializer.auto_hang_up = False


async def warm_transfer(
    call_control_id: str,
    to: str,
    summary: str,
    *,
    client: TelnyxClient | None = None,
    config: WarmTransferConfig | None = None,
    policy: TransferPolicy | None = None,
) -> WarmTransferResult:
    """The bot API: warm-transfer this call to ``to`` (see :class:`WarmTransfer`).

    ``client`` defaults to one from ``TELNYX_API_KEY``/``TELNYX_API_BASE_URL``,
    ``config`` to :meth:`WarmTransferConfig.from_env`, ``policy`` to
    ``TRANSFER_ALLOWED_NUMBERS``. On ``result.bridged`` the bot has left the call (its
    stream stops and the pipeline ends); otherwise tell the caller ``result.reason``.
    """
    own = client is None
    if client is None:
        key = os.environ.get("TELNYX_API_KEY", "")
        if not key:
            return WarmTransferResult(
                outcome="failed", to=to, caller_call_control_id=call_control_id, reason="no TELNYX_API_KEY"
            )
        client = TelnyxClient(
            key, base_url=os.environ.get("TELNYX_API_BASE_URL") or "https://api.telnyx.com/v2"
        )
    try:
        transfer = WarmTransfer(
            client, call_control_id, config or WarmTransferConfig.from_env(), policy=policy
        )
        return await transfer.run(to, summary)
    finally:
        if own:
            await client.aclose()


def deliver(caller_ccid: str, event_type: str, payload: dict[str, Any]) -> bool:
    """An agent leg's webhook for the warm transfer of ``caller_ccid``; ``False`` if none runs here."""
    transfer = _active.get(caller_ccid)
    if transfer is None:
        return False
    transfer.events.put_nowait((event_type, payload))
    return True


@dataclass(kw_only=True)
class WarmTransferConfig:
    """How a warm transfer dials and briefs the agent (``from_env`` reads the server's settings)."""

    connection_id: str
    from_number: str
    webhook_url: str | None = None
    answer_timeout_secs: float = 30.0
    decision_secs: float = 5.0
    accept_digit: str = "1"
    decline_digit: str = "2"
    voice: str = "female"
    language: str = "en-US"
    hold_audio_url: str | None = None
    detect_machines: bool = True
    prompt: str = "Press 1 to take the call, or 2 to decline."

    @classmethod
    def from_env(cls, **overrides: Any) -> WarmTransferConfig:
        """From ``TELNYX_CONNECTION_ID``, ``TELNYX_PHONE_NUMBER``, ``PUBLIC_URL`` (its
        ``/webhooks/telnyx``), ``WARM_TRANSFER_HOLD_AUDIO_URL`` and
        ``WARM_TRANSFER_ANSWER_SECS``; ``overrides`` win."""
        public = os.environ.get("PUBLIC_URL", "").rstrip("/")
        values: dict[str, Any] = {
            "connection_id": os.environ.get("TELNYX_CONNECTION_ID", ""),
            "from_number": os.environ.get("TELNYX_PHONE_NUMBER", ""),
            "webhook_url": f"{public}/webhooks/telnyx" if public else None,
            "hold_audio_url": os.environ.get("WARM_TRANSFER_HOLD_AUDIO_URL") or None,
        }
        if os.environ.get("WARM_TRANSFER_ANSWER_SECS"):
            values["answer_timeout_secs"] = float(os.environ["WARM_TRANSFER_ANSWER_SECS"])
        values.update(overrides)
        return cls(**values)


@dataclass(kw_only=True)
class WarmTransferResult:
    """How a warm transfer went: ``outcome``, both legs, why, and when."""

    outcome: Outcome
    to: str
    caller_call_control_id: str
    agent_call_control_id: str | None = None
    reason: str = ""
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None

    @property
    def bridged(self) -> bool:
        """Whether the caller is now with the agent (the bot has left the call)."""
        return self.outcome == "bridged"

    def to_dict(self) -> dict[str, Any]:
        """The record's ``transfer`` object (and a tool result)."""
        return {
            "type": "warm",
            "outcome": self.outcome,
            "to": self.to,
            "caller_leg": self.caller_call_control_id,
            "agent_leg": self.agent_call_control_id,
            "reason": self.reason,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }


class WarmTransfer:
    """One warm transfer of the caller's call ``caller_ccid`` (see the module docstring)."""

    def __init__(
        self,
        client: TelnyxClient,
        caller_ccid: str,
        config: WarmTransferConfig,
        *,
        policy: TransferPolicy | None = None,
    ) -> None:
        if not caller_ccid:
            raise ValueError("a warm transfer needs the caller's call_control_id")
        self.client = client
        self.caller_ccid = caller_ccid
        self.config = config
        self.policy = policy or TransferPolicy.from_env()
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.agent_ccid: str | None = None
        self._agent_ended = False
        self._bridged = False

    async def run(self, to: str, summary: str) -> WarmTransferResult:
        """Transfer the caller to ``to`` after telling the agent ``summary``; never raises for Telnyx errors."""
        result = WarmTransferResult(outcome="failed", to=to, caller_call_control_id=self.caller_ccid)
        try:
            result.to = self.policy.check(to)
        except PolicyError as exc:
            logger.warning("refused a warm transfer: not an allowed number")
            result.outcome, result.reason = "refused", str(exc)
            return self._finish(result)
        if not self.config.connection_id or not self.config.from_number:
            result.reason = "warm transfers need TELNYX_CONNECTION_ID and TELNYX_PHONE_NUMBER"
            return self._finish(result)
        if self.caller_ccid in _active:
            result.reason = "a transfer of this call is already running"
            return self._finish(result)
        _active[self.caller_ccid] = self
        holding = False
        try:
            holding = await self._hold()
            result.outcome, result.reason = await self._dial_and_brief(result.to, summary)
            result.agent_call_control_id = self.agent_ccid
            if result.outcome == "bridged":
                holding = await self._bridge(holding)
        except TelnyxError as exc:
            logger.warning("warm transfer of %s: Telnyx refused a command: %s", self.caller_ccid, exc)
            if self._bridged:  # the caller is with the agent; only leaving the call failed
                result.reason += f" (stopping the bot's stream failed: {exc})"
            else:
                result.outcome, result.reason = "failed", f"Telnyx refused a command: {exc}"
        except asyncio.CancelledError:
            # Telnyx's "stop" after streaming_stop may end the bot's pipeline (and cancel
            # us) before that command's answer arrives: a bridged call is left as it is.
            if self._bridged:
                result.outcome, result.agent_call_control_id = "bridged", self.agent_ccid
                self._finish(result)
            else:
                await asyncio.shield(self._give_up(holding))
            raise
        finally:
            _active.pop(self.caller_ccid, None)
        result.agent_call_control_id = self.agent_ccid
        if not result.bridged:
            await self._give_up(holding)
        return self._finish(result)

    # ------------------------------------------------------------------ steps

    async def _hold(self) -> bool:
        url = self.config.hold_audio_url
        if not url:
            return False
        await self.client.playback_start(self.caller_ccid, audio_url=url, loop="infinity")
        return True

    async def _dial_and_brief(self, to: str, summary: str) -> tuple[Outcome, str]:
        cfg = self.config
        data = await self.client.dial(
            to=to,
            from_=cfg.from_number,
            connection_id=cfg.connection_id,
            client_state={CLIENT_STATE_KEY: self.caller_ccid},
            webhook_url=cfg.webhook_url,
            timeout_secs=max(1, int(cfg.answer_timeout_secs)),
            answering_machine_detection="detect" if cfg.detect_machines else None,
        )
        self.agent_ccid = str(data.get("call_control_id") or "")
        self._note("agent_dialled", to=to, agent_leg=self.agent_ccid)
        answered = False
        decide_by: float | None = None
        # Telnyx ends an unanswered dial after timeout_secs (call.hangup); the margin covers
        # a lost webhook.
        give_up_at = time.monotonic() + cfg.answer_timeout_secs + 5.0
        while True:
            deadline = decide_by if decide_by is not None else give_up_at
            try:
                event_type, payload = await asyncio.wait_for(
                    self.events.get(), max(0.0, deadline - time.monotonic())
                )
            except TimeoutError:
                if decide_by is not None:
                    return "bridged", "the agent listened to the summary"
                return "no_answer", f"the agent did not answer within {cfg.answer_timeout_secs:.0f} s"
            if payload.get("call_control_id") not in (None, self.agent_ccid):
                continue
            if event_type == "call.answered" and not answered:
                answered = True
                self._note("agent_answered")
                text = f"{summary.strip()} {cfg.prompt}".strip()
                await self.client.speak(self.agent_ccid, text, voice=cfg.voice, language=cfg.language)
                give_up_at = time.monotonic() + 60.0  # the summary itself is bounded by Telnyx
            elif event_type == "call.speak.ended" and decide_by is None:
                decide_by = time.monotonic() + cfg.decision_secs
            elif event_type == "call.dtmf.received":
                digit = str(payload.get("digit", ""))
                if digit == cfg.decline_digit:
                    return "declined", f"the agent pressed {digit}"
                if digit == cfg.accept_digit:
                    return "bridged", f"the agent pressed {digit}"
            elif event_type.startswith("call.machine.") and "detection" in event_type:
                if str(payload.get("result", "")) in _MACHINE_RESULTS:
                    return "machine", f"answering machine detection said {payload.get('result')}"
            elif event_type == "call.hangup":
                self._agent_ended = True
                if answered:
                    return "declined", "the agent hung up"
                cause = payload.get("hangup_cause") or "no answer"
                return "no_answer", f"the agent's phone did not answer ({cause})"

    async def _bridge(self, holding: bool) -> bool:
        assert self.agent_ccid is not None
        if holding:
            await self._stop_hold()
        await self.client.bridge(self.caller_ccid, self.agent_ccid)
        self._bridged = True
        keep_call_up(self.caller_ccid)
        observer = records.current()
        if observer is not None:
            # Before the stream stops: Telnyx's "stop" must not read as the caller hanging up.
            observer.note_end("transferred", "bot")
        self._note("bridged", agent_leg=self.agent_ccid)
        await self.client.streaming_stop(self.caller_ccid)
        return False

    async def _stop_hold(self) -> None:
        with contextlib.suppress(TelnyxError):
            await self.client.playback_stop(self.caller_ccid)

    async def _give_up(self, holding: bool) -> None:
        if self.agent_ccid and not self._agent_ended:
            with contextlib.suppress(TelnyxError):
                await self.client.hangup(self.agent_ccid)
        if holding:
            await self._stop_hold()

    def _note(self, step: str, **data: Any) -> None:
        observer = records.current()
        if observer is not None:
            observer.event("transfer", step, data)

    def _finish(self, result: WarmTransferResult) -> WarmTransferResult:
        result.ended_at = time.time()
        logger.info("warm transfer of %s: %s (%s)", self.caller_ccid, result.outcome, result.reason)
        observer = records.current()
        if observer is not None:
            observer.transfer(result.to_dict())
        return result
