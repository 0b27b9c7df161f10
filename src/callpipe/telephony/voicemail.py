"""The voicemail policy as a pipeline processor: hold the greeting, leave a message, answer screeners.

Put :class:`VoicemailPolicy` right after the STT (or right after ``transport.input()`` in
a bot without one) and let it, not ``on_client_connected``, start the greeting::

    policy = VoicemailPolicy.for_call(runner_args, greeting=LLMRunFrame(),
                                      message="Hi, it's Ava from the clinic, please call us back.",
                                      screening_line="This is Ava from the clinic, about an appointment.")
    pipeline = Pipeline([transport.input(), stt, policy, user_agg, llm, tts, transport.output(), ...])

For an outbound call dialled with AMD (``/start`` with ``"amd": ...``) it holds the
greeting until the first AMD result (at most ``detect_timeout_secs``): a person is greeted
at once; on a machine it waits for the greeting's end or beep (bounded), leaves
``message`` and hangs up. A call screener's question ("who is calling and why?") is
answered with ``screening_line`` and the person it connects is then greeted. Without AMD
(inbound calls, ``amd`` off) it greets at once and passes everything through. While the
far end is not known to be a person, its words and voice activity do not reach the bot's
turn-taking, so the bot never answers a machine's greeting or a screener's script.

``greeting``, ``message`` and ``screening_line`` are each text (spoken by the TTS after
the policy, a ``TTSSpeakFrame``), audio (PCM16 mono at ``sample_rate``) or a frame to push
as it is (e.g. ``LLMRunFrame()`` to let the LLM greet). The decision, the AMD results and
the times (ms from the call's start) go into ``record.amd``, and an ``amd`` event.

``hold_audio``: also keep the callee's audio from what follows until it is a person (a
speech-to-speech model right after the policy would otherwise answer a machine's greeting).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from callpipe.pipeline.frames import (
    AnsweringMachineDetectionFrame,
    BotStartedSpeakingFrame,
    CancelFrame,
    EndFrame,
    EndTaskFrame,
    Frame,
    InputAudioRawFrame,
    InputEncodedAudioFrame,
    InterimTranscriptionFrame,
    SpeculativeTranscriptionFrame,
    StartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSPrefetchFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    UserSpeechPausedFrame,
    UserSpeechResumedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from callpipe.pipeline.processor import FrameDirection, FrameProcessor
from callpipe.records import observer as records
from callpipe.telephony.amd import Act, AmdConfig, AmdPolicy, AmdState

__all__ = ["Speech", "VoicemailPolicy"]

logger = logging.getLogger("callpipe.telephony")

#: Text for the TTS, PCM16 audio, or a frame pushed as it is.
Speech = str | bytes | Frame | None

# The callee's voice-activity frames: held from the bot's turn-taking until it is a person.
_VOICE_FRAMES = (
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    UserSpeechPausedFrame,
    UserSpeechResumedFrame,
    InterimTranscriptionFrame,
    SpeculativeTranscriptionFrame,
)


class VoicemailPolicy(FrameProcessor):
    """Runs :class:`~callpipe.telephony.amd.AmdPolicy` for one call (see the module docs)."""

    def __init__(
        self,
        *,
        amd: str | None,
        greeting: Speech = None,
        message: Speech = None,
        screening_line: Speech = None,
        sample_rate: int = 8000,
        config: AmdConfig | None = None,
        hold_audio: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        cfg = config or AmdConfig()
        cfg.mode = amd or None
        cfg.has_message = message is not None
        cfg.screening = screening_line is not None
        self.config = cfg
        self.greeting, self.message, self.screening_line = greeting, message, screening_line
        self.sample_rate = sample_rate
        self.hold_audio = hold_audio
        self.policy: AmdPolicy | None = None
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._observer: records.CallObserver | None = None
        self._ending = False
        # When the callee's current utterance started (its voice activity), for its transcript.
        self._speech_started_at: float | None = None

    @classmethod
    def for_call(cls, runner_args: Any, **kwargs: Any) -> VoicemailPolicy:
        """A policy for this call: AMD as ``/start`` asked for it (outbound calls only)."""
        amd = None
        if getattr(runner_args, "direction", "inbound") == "outbound":
            params = (getattr(runner_args, "call_data", None) or {}).get("query_params") or {}
            amd = params.get("amd") or None
        return cls(amd=amd, **kwargs)

    @property
    def state(self) -> AmdState | None:
        """Where the policy is (``None`` before the call started)."""
        return None if self.policy is None else self.policy.state

    # ------------------------------------------------------------ frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Act on AMD results, transcripts and voice activity; hold what a machine said."""
        await super().process_frame(frame, direction)
        if direction is FrameDirection.UPSTREAM:
            policy = self.policy
            if isinstance(frame, BotStartedSpeakingFrame) and policy and policy.state is AmdState.LEAVING:
                policy.on_message_started(time.monotonic())
                self._record()
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self._start()
            return
        if isinstance(frame, EndFrame | CancelFrame):
            self._ending = True
            if self._timer is not None:
                self._timer.cancel()
            await self.push_frame(frame, direction)
            return
        policy = self.policy
        if isinstance(frame, InputAudioRawFrame | InputEncodedAudioFrame):
            # The hot path: one check per frame, no copy.
            if not self.hold_audio or policy is None or policy.state is AmdState.HUMAN:
                await self.push_frame(frame, direction)
            return
        if policy is None:
            await self.push_frame(frame, direction)
            return
        await self._on_callee_frame(policy, frame, direction)

    async def _on_callee_frame(self, policy: AmdPolicy, frame: Frame, direction: FrameDirection) -> None:
        """A downstream frame other than audio once the policy runs: feed it, pass or hold it."""
        now = time.monotonic()
        if isinstance(frame, AnsweringMachineDetectionFrame):
            await self._on_amd_result(policy, frame, now)
            await self.push_frame(frame, direction)  # bots may watch the results too
        elif isinstance(frame, TranscriptionFrame):
            acts, passes = policy.on_transcript(frame.text, now, spoken_at=self._speech_started_at)
            if passes:
                await self.push_frame(frame, direction)
            await self._apply(acts)
        elif isinstance(frame, TTSSpeakFrame) and policy.state is not AmdState.HUMAN:
            # Words for a person from before the policy (Whisper's "could you say that
            # again?" under overload): a machine or a screener must not hear them.
            logger.debug("voicemail policy: held back %r (%s)", frame.text, policy.state)
        elif isinstance(frame, _VOICE_FRAMES):
            if isinstance(frame, UserStartedSpeakingFrame):
                self._speech_started_at = now
                policy.on_caller_started(now)
            elif isinstance(frame, UserStoppedSpeakingFrame):
                policy.on_caller_stopped(now)
            self._wake.set()
            if policy.state is AmdState.HUMAN:
                await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _on_amd_result(
        self, policy: AmdPolicy, frame: AnsweringMachineDetectionFrame, now: float
    ) -> None:
        """Feed an AMD result to the policy; on a new "machine" let the TTS prepare the message."""
        was = policy.state
        await self._apply(policy.on_result(frame.event_type, frame.result, now))
        if was is not AmdState.MACHINE and policy.state is AmdState.MACHINE and isinstance(self.message, str):
            # A TTS that can (Piper) synthesizes the message during the box's greeting,
            # so it starts right at the beep.
            await self.push_frame(TTSPrefetchFrame(text=self.message))

    async def _start(self) -> None:
        now = time.monotonic()
        self._observer = records.current()
        self.policy = AmdPolicy(self.config, started_at=now)
        await self._apply(self.policy.start(now))
        if self.policy.deadline is not None:
            self._timer = self.create_task(self._run_timer(), "amd-timer")

    async def _run_timer(self) -> None:
        """Wake at the policy's deadline (or when an input moved it) and act on it."""
        policy = self.policy
        assert policy is not None
        while not self._ending and policy.state in (AmdState.WAITING, AmdState.MACHINE):
            self._wake.clear()
            deadline = policy.deadline
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                await self._apply(policy.on_tick(time.monotonic()))

    async def _apply(self, acts: list[Act]) -> None:
        if not acts and self.policy is not None and self.policy.state is AmdState.MACHINE:
            self._wake.set()  # the deadline moved
        for act in acts:
            logger.info("voicemail policy: %s (%s)", act.kind, act.reason)
            if act.kind == "greet":
                await self._say(self.greeting)
            elif act.kind == "answer_screening":
                await self._say(self.screening_line)
            elif act.kind == "leave_message":
                await self._say(self.message)
                await self._hang_up("left a voicemail message")
            elif act.kind == "hang_up":
                await self._hang_up(act.reason)
        if acts:
            self._record(acts)
        self._wake.set()

    async def _say(self, speech: Speech) -> None:
        if speech is None:
            return
        if isinstance(speech, str):
            await self.push_frame(TTSSpeakFrame(speech))
        elif isinstance(speech, bytes):
            await self._push_audio(speech)
        else:
            await self.push_frame(speech)

    async def _push_audio(self, audio: bytes) -> None:
        # As a TTS streams it: the output paces it and the record sees one bot turn.
        await self.push_frame(TTSStartedFrame())
        size = max(2, int(self.sample_rate * 0.04) * 2)
        for i in range(0, len(audio), size):
            await self.push_frame(TTSAudioRawFrame(audio=audio[i : i + size], sample_rate=self.sample_rate))
        await self.push_frame(TTSStoppedFrame())

    async def _hang_up(self, reason: str) -> None:
        # The end waits for what was said to play out, then hangs up through Telnyx.
        await self.push_frame(EndTaskFrame(reason=reason), FrameDirection.UPSTREAM)

    def _record(self, acts: list[Act] | None = None) -> None:
        observer, policy = self._observer, self.policy
        if observer is None or policy is None:
            return
        summary = policy.summary()
        amd = dict(observer.record.amd or {})
        amd.update(summary)
        observer.record.amd = amd
        for act in acts or []:
            observer.event("amd", act.kind, {"reason": act.reason, "decision": policy.decision})
        observer.touch()
