"""LLM tools for call handling beyond :class:`~callpipe.services.llm.TelephonyTools`:
``warm_transfer`` and ``collect_digits``.

``CallTools(call_control_id=..., client=...).register(llm)`` with ``tools=CallTools.schemas()``
(next to ``TelephonyTools.schemas()``) on the context.

* ``warm_transfer(to, summary)`` answers the model at once ("calling, the caller is on
  hold") and runs the transfer in a task of the LLM processor, so the caller's "okay"
  during the hold (a new LLM round that cancels the tool's own request) cannot abort it;
  while it runs the LLM is ``on_hold``: the caller's words go into the context, but the
  bot does not answer them until it is back (a speech-to-speech model still hears them).
  While the agent is dialled the caller hears hold audio: Telnyx's ``playback_start``
  when ``WarmTransferConfig.hold_audio_url`` is set, else a soft tone the bot plays
  through its own output. If the agent takes the call, the bot leaves (its stream stops,
  the pipeline ends); otherwise the bot tells the caller (``TTSSpeakFrame``) and the
  context says what happened, so the model can offer something else.
* ``collect_digits(max_digits, terminator, timeout)`` waits for the caller's key presses
  (:mod:`callpipe.transports.digits`) and returns them with the reason it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from callpipe.pipeline.frames import OutputAudioRawFrame, TTSSpeakFrame
from callpipe.services.call_policy import PolicyError, TransferPolicy
from callpipe.services.llm import FunctionCallParams, FunctionSchema, LLMContext, LLMService
from callpipe.services.warm_transfer import WarmTransfer, WarmTransferConfig, WarmTransferResult
from callpipe.transports.digits import collect_digits
from callpipe.transports.fastapi import FastAPIWebsocketTransport, transport_for_call

if TYPE_CHECKING:
    from callpipe.telnyx.api import TelnyxClient

__all__ = ["CallTools", "hold_tone"]

logger = logging.getLogger("callpipe.services.transfer")

HOLD_RATE = 8000
HOLD_CYCLE_SECS = 2.0

#: What the bot says when a warm transfer does not go through, by outcome.
SORRY = {
    "declined": "I'm sorry, the person I tried can't take your call right now.",
    "no_answer": "I'm sorry, nobody answered. I'm back with you.",
    "machine": "I'm sorry, I only reached a voicemail. I'm back with you.",
    "failed": "I'm sorry, I couldn't connect the call. I'm back with you.",
    "refused": "I'm sorry, I can't transfer calls to that number.",
}


def hold_tone(rate: int = HOLD_RATE) -> bytes:
    """One 2 s hold cycle, PCM16 mono: a soft two-note chime, then silence."""
    t = np.arange(int(0.25 * rate)) / rate
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.02)
    notes = [np.sin(2 * np.pi * f * t) * fade * 0.12 for f in (523.25, 659.25)]
    cycle = np.zeros(int(HOLD_CYCLE_SECS * rate))
    chime = np.concatenate(notes)
    cycle[: len(chime)] = chime
    return (cycle * 32767).astype(np.int16).tobytes()


class CallTools:
    """The ``warm_transfer`` and ``collect_digits`` tools for one call."""

    def __init__(
        self,
        *,
        call_control_id: str | None,
        client: TelnyxClient | None,
        transport: FastAPIWebsocketTransport | None = None,
        transfer_numbers: Iterable[str] = (),
        transfer_policy: TransferPolicy | None = None,
        config: WarmTransferConfig | None = None,
    ) -> None:
        self.call_control_id = call_control_id
        self.client = client
        self.transport = transport
        self.transfer_policy = transfer_policy or TransferPolicy.from_env(transfer_numbers)
        self._config = config
        self.results: list[WarmTransferResult] = []
        self._running: asyncio.Task[None] | None = None

    @staticmethod
    def schemas() -> list[FunctionSchema]:
        """The two tools' schemas."""
        return [
            FunctionSchema(
                "warm_transfer",
                "Connect the caller to a person, briefing them first. Tell the caller you are "
                "connecting them and ask them to hold before calling this.",
                {
                    "to": {"type": "string", "description": "E.164 number, e.g. +15551234567"},
                    "summary": {"type": "string", "description": "one or two sentences for the person"},
                },
                ["to", "summary"],
            ),
            FunctionSchema(
                "collect_digits",
                "Wait for the caller to type digits on the keypad (ask them first).",
                {
                    "max_digits": {"type": "integer", "description": "at most this many (default 6)"},
                    "terminator": {
                        "type": "string",
                        "description": "the key that ends the entry (default #)",
                    },
                    "timeout": {"type": "number", "description": "seconds to wait for each key (default 5)"},
                },
                [],
            ),
        ]

    def register(self, llm: LLMService) -> None:
        """Register the handlers on ``llm``."""
        llm.register_function("warm_transfer", self.warm_transfer)
        llm.register_function("collect_digits", self.collect_digits)

    # ------------------------------------------------------------------ warm transfer

    def config(self) -> WarmTransferConfig:
        """The warm transfer settings (given, else from the environment)."""
        if self._config is None:
            self._config = WarmTransferConfig.from_env()
        return self._config

    async def warm_transfer(self, params: FunctionCallParams) -> Any:
        """Start a warm transfer to an allowed number; the outcome comes later (see the module)."""
        to = str(params.arguments.get("to", ""))
        summary = str(params.arguments.get("summary", "")).strip()
        if self.client is None or not self.call_control_id:
            return {"error": "transfers are not available on this call"}
        try:
            to = self.transfer_policy.check(to)
        except PolicyError as exc:
            logger.warning("refused a warm transfer the model asked for: not an allowed number")
            return {"error": str(exc)}
        if self._running is not None and not self._running.done():
            return {"error": "a transfer is already in progress"}
        params.run_llm = False  # the caller is on hold: nothing more to say now
        self._running = params.llm.create_task(
            self._transfer(params.llm, params.context, to, summary or "A caller for you."), "warm-transfer"
        )
        return {"status": "calling; the caller is on hold", "to": to}

    async def _transfer(self, llm: LLMService, context: LLMContext, to: str, summary: str) -> None:
        assert self.client is not None and self.call_control_id
        config = self.config()
        hold = None if config.hold_audio_url else llm.create_task(self._hold_tone(llm), "hold-tone")
        llm.on_hold = True
        try:
            transfer = WarmTransfer(self.client, self.call_control_id, config, policy=self.transfer_policy)
            result = await transfer.run(to, summary)
        finally:
            llm.on_hold = False
            if hold is not None:
                hold.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await hold
        self.results.append(result)
        if result.bridged:
            return  # the bot has left the call: its stream stops and the pipeline ends
        context.add_message(
            {
                "role": "user",
                "content": f"(The transfer to {to} did not go through: {result.reason}. "
                "The caller is back with you and was told so.)",
            }
        )
        await llm.push_frame(TTSSpeakFrame(SORRY.get(result.outcome, SORRY["failed"])))

    async def _hold_tone(self, llm: LLMService) -> None:
        cycle = hold_tone()
        while True:  # cancelled when the transfer ends; at most one cycle is still queued then
            await llm.push_frame(OutputAudioRawFrame(audio=cycle, sample_rate=HOLD_RATE))
            await asyncio.sleep(HOLD_CYCLE_SECS)

    # ------------------------------------------------------------------ digits

    async def collect_digits(self, params: FunctionCallParams) -> Any:
        """Collect the caller's key presses; ``{"digits": ..., "reason": ...}``."""
        transport = self.transport or (
            transport_for_call(self.call_control_id) if self.call_control_id else None
        )
        if transport is None:
            return {"error": "key presses cannot be collected on this call"}
        args = params.arguments
        try:
            max_digits = int(args.get("max_digits") or 6)
            timeout = float(args.get("timeout") or 5.0)
            terminator = str(args.get("terminator") or "#")
            if not 1 <= max_digits <= 32 or not 0 < timeout <= 60 or len(terminator) != 1:
                raise ValueError
        except (TypeError, ValueError):
            return {"error": "max_digits must be 1-32, timeout 0-60 seconds, terminator one key"}
        result = await collect_digits(
            transport, max_digits=max_digits, terminator=terminator, timeout=timeout
        )
        return result.to_dict()
