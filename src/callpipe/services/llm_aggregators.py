"""The context aggregators around an LLM: the caller's turns in, what the caller heard out.

The user aggregator turns a finished user turn (VAD stop *and* a final transcript, or a
timeout so a lost transcript never hangs the call; or a key press) into a user message and
asks the LLM for a reply. The assistant aggregator sits *after* the output transport: it
only sees the words the caller actually heard (the output releases them as their audio
plays), so after a barge-in the context holds what was said, not what was planned.
Re-exported by :mod:`callpipe.services.llm`, the public import path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from callpipe.pipeline.frames import (
    BotInterruptionFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputDTMFFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    TranscriptionFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from callpipe.pipeline.processor import FrameDirection, FrameProcessor
from callpipe.services.llm_context import LLMContext, LLMContextFrame, LLMMessagesAppendFrame, LLMRunFrame

if TYPE_CHECKING:
    from callpipe.audio.vad import SileroVADAnalyzer

logger = logging.getLogger("callpipe.services")


@dataclass(kw_only=True)
class LLMUserAggregatorParams:
    """Pipecat's user-aggregator parameters (the fields callpipe uses).

    ``vad_analyzer``: the VAD that ends the caller's turns, as Pipecat >= 1.0 places it;
    callpipe runs it in the input transport (see :mod:`callpipe.pipeline.vad_placement`).
    ``user_turn_stop_timeout``: how long after the VAD's stop a missing final transcript
    is waited for (callpipe's ``transcript_timeout_secs``; Pipecat's default is 5 s, a
    phone call's is shorter).
    """

    vad_analyzer: SileroVADAnalyzer | None = None
    user_turn_stop_timeout: float = 1.5


@dataclass(kw_only=True)
class LLMAssistantAggregatorParams:
    """Pipecat's assistant-aggregator parameters (accepted; the assistant aggregator needs none)."""


class LLMUserAggregator(FrameProcessor):
    """Collects the caller's turn and asks the LLM to answer it.

    The turn ends when the VAD says the caller stopped *and* a final transcript has
    arrived; if the transcript does not come within ``transcript_timeout_secs`` after
    the stop, whatever has arrived is used (or the turn is dropped if nothing has).
    """

    # It needs a VAD's speaking frames to end turns (see callpipe.pipeline.vad_placement).
    needs_vad = True

    def __init__(
        self,
        context: LLMContext,
        *,
        transcript_timeout_secs: float = 1.5,
        vad_analyzer: SileroVADAnalyzer | None = None,
    ) -> None:
        super().__init__()
        self.context = context
        self.transcript_timeout_secs = transcript_timeout_secs
        self.vad_analyzer = vad_analyzer
        self._parts: list[str] = []
        self._interim = ""
        self._user_speaking = False
        self._bot_speaking = False
        self._interrupt_requested = False
        self._waiting_since: float | None = None
        self._timeout: asyncio.TimerHandle | None = None
        # Set once an EndFrame has passed: the call is ending (the bot said goodbye and
        # hangs up when it has played), so what the caller still says gets no new reply.
        self._ending = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Aggregate transcripts; commit the turn at its end."""
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame):
            await self._maybe_interrupt(" ".join([*self._parts, frame.text]))
            if frame.text.strip():
                self._parts.append(frame.text.strip())
            self._interim = ""
            if not self._user_speaking and self._waiting_since is not None:
                await self._commit()
            return
        if isinstance(frame, InterimTranscriptionFrame):
            self._interim = frame.text.strip()
            await self._maybe_interrupt(self._interim)
            return
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking, self._interrupt_requested = True, False
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
        if isinstance(frame, UserStartedSpeakingFrame):
            self._user_speaking = True
            self._cancel_timeout()
            self._waiting_since = None
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._user_speaking = False
            self._waiting_since = time.monotonic()
            if self._parts:
                # A streaming STT may already have delivered the final words.
                await self.push_frame(frame, direction)
                await self._commit()
                return
            self._arm_timeout()
        elif isinstance(frame, InputDTMFFrame):
            await self.push_frame(frame, direction)
            self.context.add_message(
                {"role": "user", "content": f"(The caller pressed the {frame.button} key.)"}
            )
            await self.push_frame(LLMContextFrame(context=self.context))
            return
        elif isinstance(frame, LLMMessagesAppendFrame):
            for message in frame.messages:
                self.context.add_message(message)
            if frame.run_llm:
                await self.push_frame(LLMContextFrame(context=self.context))
            return
        elif isinstance(frame, LLMRunFrame):
            await self.push_frame(LLMContextFrame(context=self.context))
            return
        elif isinstance(frame, EndFrame | CancelFrame):
            self._ending = True
            self._cancel_timeout()
        await self.push_frame(frame, direction)

    async def _maybe_interrupt(self, text: str) -> None:
        """With ``interruption_min_words``: interrupt the bot once the caller said that many words."""
        needed = self._interruption_min_words
        if (
            needed <= 0
            or not self._bot_speaking
            or self._interrupt_requested
            or not self.interruptions_allowed
        ):
            return
        if len(text.split()) >= needed:
            self._interrupt_requested = True
            await self.push_frame(BotInterruptionFrame(), FrameDirection.UPSTREAM)

    def _arm_timeout(self) -> None:
        self._cancel_timeout()
        loop = asyncio.get_running_loop()
        self._timeout = loop.call_later(self.transcript_timeout_secs, self._on_timeout)

    def _cancel_timeout(self) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None

    def _on_timeout(self) -> None:
        self._timeout = None
        if self._waiting_since is not None and not self._user_speaking:
            logger.info("no final transcript %.1fs after the turn ended", self.transcript_timeout_secs)
            self.create_task(self._commit(use_interim=True), "commit-after-timeout")

    async def _commit(self, *, use_interim: bool = False) -> None:
        self._cancel_timeout()
        self._waiting_since = None
        text = " ".join(self._parts).strip()
        if not text and use_interim:
            text = self._interim  # the STT never finalised: its last guess beats nothing
        self._parts.clear()
        self._interim = ""
        if not text:
            return
        self.context.add_message({"role": "user", "content": text})
        if self._ending:
            logger.info("the call is ending: the caller's last turn gets no reply")
            return
        await self.push_frame(LLMContextFrame(context=self.context))


class LLMAssistantAggregator(FrameProcessor):
    """After the output transport: records what the caller heard as the assistant's reply."""

    def __init__(self, context: LLMContext) -> None:
        super().__init__()
        self.context = context
        self._heard: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Collect heard text; commit at the end of the reply or on interruption."""
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSTextFrame):
            self._heard.append(frame.text)
        elif isinstance(frame, LLMFullResponseEndFrame | TTSStoppedFrame | EndFrame | CancelFrame):
            self._commit(interrupted=False)
        elif isinstance(frame, InterruptionFrame):
            self._commit(interrupted=True)
        await self.push_frame(frame, direction)

    def _commit(self, *, interrupted: bool) -> None:
        text = " ".join(part.strip() for part in self._heard if part.strip())
        self._heard.clear()
        if text:
            self.context.add_message({"role": "assistant", "content": text})
            if interrupted:
                logger.info("reply interrupted; the context keeps the %d words heard", len(text.split()))
                logger.debug("heard of the interrupted reply: %r", text)


class LLMContextAggregatorPair:
    """The two aggregators around an LLM, sharing one :class:`LLMContext`.

    As in Pipecat it unpacks, ``user, assistant = LLMContextAggregatorPair(context, ...)``,
    and ``.user()``/``.assistant()`` return the same two processors.
    """

    def __init__(
        self,
        context: LLMContext,
        *,
        user_params: LLMUserAggregatorParams | None = None,
        assistant_params: LLMAssistantAggregatorParams | None = None,
        transcript_timeout_secs: float | None = None,
    ) -> None:
        self.context = context
        params = user_params or LLMUserAggregatorParams()
        timeout = (
            transcript_timeout_secs if transcript_timeout_secs is not None else params.user_turn_stop_timeout
        )
        self._user = LLMUserAggregator(
            context, transcript_timeout_secs=timeout, vad_analyzer=params.vad_analyzer
        )
        self._assistant = LLMAssistantAggregator(context)

    def __iter__(self) -> Iterator[FrameProcessor]:
        """``user, assistant = pair``."""
        return iter((self._user, self._assistant))

    def user(self) -> LLMUserAggregator:
        """Goes after STT, before the LLM."""
        return self._user

    def assistant(self) -> LLMAssistantAggregator:
        """Goes after ``transport.output()``."""
        return self._assistant


__all__ = [
    "LLMAssistantAggregator",
    "LLMAssistantAggregatorParams",
    "LLMContextAggregatorPair",
    "LLMUserAggregator",
    "LLMUserAggregatorParams",
]
