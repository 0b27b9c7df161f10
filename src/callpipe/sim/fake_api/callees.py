"""Who answers a dialled number in the simulator: a person, a voicemail box, a call screener.

:class:`Callees` maps dialled numbers to a kind (``callpipe fake-telnyx --callee
NUMBER=KIND``, repeatable, plus a default):

* ``human``: today's simulated callee (the simulator's ``callee_script``, silent by
  default, after a "Hello?" with ``human_hello``); with AMD asked for, ``call.machine.detection.ended`` says ``human`` shortly
  after the answer.
* ``voicemail``: a box that plays a greeting (~2.5 s of speech), then a beep, then records
  what it hears until the caller hangs up, it has heard ``box_silence_secs`` of silence or
  ``max_message_secs`` passed. AMD says ``machine`` during the greeting and the greeting
  ended at the beep. :func:`voicemail_message` tells a test what the box recorded.
* ``screening``: a call-screening assistant: asks who is calling and why, listens, and
  once the caller has answered (spoken, then paused) it connects the person, who says
  hello and then behaves like ``human``; with no answer after asking twice it hangs up.
* ``busy`` / ``no-answer``: the call never answers: ``call.hangup`` with
  ``hangup_cause`` ``user_busy`` (after ``busy_after_secs``) or ``timeout`` (after the
  dial's ``timeout_secs``, default 30 s, or ``no_answer_after_secs``), no stream.

The callees' lines are spoken by ``voice`` (text -> PCM16 mono 8 kHz; the CLI uses the
embedded Piper voice when it is installed); without one, each line is a speech-shaped
noise burst of about the line's spoken length, so timing, VAD and AMD still behave.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from callpipe.sim.caller import FRAME_SECS, CallerTurn, CallResult
from callpipe.sim.fake_api.state import FakeCall

if TYPE_CHECKING:
    from callpipe.sim.caller import SimulatedCaller

__all__ = [
    "CALLEE_KINDS",
    "CalleePlan",
    "Callees",
    "VoicemailMessage",
    "amd_events",
    "voicemail_message",
]

CALLEE_KINDS = ("human", "voicemail", "screening", "busy", "no-answer")

#: Text -> PCM16 mono at 8 kHz.
Voice = Callable[[str], Awaitable[bytes]]
#: Sends one AMD webhook: ``(event_type, result)``.
AmdSender = Callable[[str, str], None]

RATE = 8000
GREETING = "Hi, you've reached Alex. Leave a message after the tone."
SCREENING_QUESTION = "Hi, who is calling and why? Please say your name and the reason for your call."
SCREENING_AGAIN = "Please say your name and why you are calling."
SCREENED_HELLO = "Hello? This is Alex."
HUMAN_HELLO = "Hello?"
BEEP_TEXT = "<beep>"
# Assumption: Telnyx's dial timeout_secs defaults to 30 s when the dial does not set it.
DEFAULT_RING_TIMEOUT_SECS = 30.0


def beep(secs: float = 0.5, freq: float = 1000.0) -> bytes:
    """The box's tone: a 1 kHz sine (PCM16 mono 8 kHz)."""
    t = np.arange(int(secs * RATE)) / RATE
    return (np.sin(2 * np.pi * freq * t) * 0.4 * 32767).astype(np.int16).tobytes()


async def placeholder_voice(text: str) -> bytes:
    """A speech-shaped burst (noise under a ~4 Hz syllable envelope) as long as ``text`` spoken."""
    secs = max(0.4, 0.05 * len(text))
    n = int(secs * RATE)
    rng = np.random.default_rng(len(text))
    noise = rng.standard_normal(n)
    # A crude vocal-tract colouring: a moving average keeps it in the speech band.
    noise = np.convolve(noise, np.ones(4) / 4, mode="same")
    t = np.arange(n) / RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t) ** 2
    return (np.clip(noise * envelope * 0.2, -1, 1) * 32767).astype(np.int16).tobytes()


def piper_voice() -> Voice | None:
    """The embedded Piper voice as a callee :data:`Voice` (lines cached), or ``None`` without it."""
    try:
        from callpipe.services.piper import PiperTTSService, default_piper_voice

        default_piper_voice()  # raises without the bundled voice
    except Exception:
        return None
    tts = PiperTTSService(sample_rate=RATE, noise_scale=0.0, noise_w_scale=0.0)
    cache: dict[str, bytes] = {}

    async def speak(text: str) -> bytes:
        if text not in cache:
            cache[text] = await tts.synthesize(text)
        return cache[text]

    return speak


# --------------------------------------------------------------------------- AMD


def amd_events(
    mode: str, kind: str, *, beep_heard: bool = True
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Telnyx's AMD webhooks for ``mode`` and a callee ``kind``: ``(on_detection, at_greeting_end)``.

    From Telnyx's AMD guide: ``detect`` sends ``call.machine.detection.ended``
    (``human``/``machine``/``not_sure``); ``detect_beep`` adds ``call.machine.greeting.ended``
    only when a beep is heard (``beep_detected``); ``detect_words``/``greeting_end`` add it
    with ``beep_detected``, ``ended`` or ``not_sure``; ``premium`` sends
    ``call.machine.premium.detection.ended`` (``human_residence``, ``human_business``,
    ``machine``, ``silence``, ``fax_detected``, ``not_sure``) and, for machines,
    ``call.machine.premium.greeting.ended`` (``beep_detected``/``no_beep_detected``).
    Assumption: a call-screening assistant is classified ``not_sure`` (it talks like a
    person but reads a script), and a greeting-end event comes only for machines.
    """
    if mode not in ("detect", "detect_beep", "detect_words", "greeting_end", "premium"):
        return [], []
    machine = kind == "voicemail"
    if mode == "premium":
        result = {"human": "human_residence", "voicemail": "machine"}.get(kind, "not_sure")
        detection = [("call.machine.premium.detection.ended", result)]
        greeting = [
            ("call.machine.premium.greeting.ended", "beep_detected" if beep_heard else "no_beep_detected")
        ]
        return detection, greeting if machine else []
    result = {"human": "human", "voicemail": "machine"}.get(kind, "not_sure")
    detection = [("call.machine.detection.ended", result)]
    if not machine or mode == "detect":
        return detection, []
    if mode == "detect_beep":
        return detection, [("call.machine.greeting.ended", "beep_detected")] if beep_heard else []
    return detection, [("call.machine.greeting.ended", "beep_detected" if beep_heard else "ended")]


# --------------------------------------------------------------------------- plans


@dataclass(eq=False)
class CalleePlan:
    """What answers one call, and when its AMD webhooks go out (one per simulated call)."""

    kind: str
    amd_mode: str | None
    callees: Callees
    human_silence_secs: float = 5.0
    turns: list[CallerTurn] = field(default_factory=list)
    hang_up_after_secs: float = 5.0
    #: Monotonic times the simulator noted: ``answered``, ``greeting_started``, ``beep_started``,
    #: ``beep_ended``, and each AMD webhook sent (``amd:<event>``).
    times: dict[str, float] = field(default_factory=dict)
    amd_sent: list[tuple[str, str, float]] = field(default_factory=list)
    #: Where the beep is in the call's recorded tracks: (first frame, frames).
    beep_frames: tuple[int, int] | None = None
    _send: AmdSender | None = None
    _caller: SimulatedCaller | None = None
    _timers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def answers(self) -> bool:
        """Whether the call is ever answered."""
        return self.kind not in ("busy", "no-answer")

    def never_answered(self, call: FakeCall) -> tuple[float, str]:
        """For ``busy``/``no-answer``: how long it rings and the ``hangup_cause``."""
        if self.kind == "busy":
            return self.callees.busy_after_secs, "user_busy"
        ring = self.callees.no_answer_after_secs
        if ring is None:
            dialled = call.params.get("timeout_secs")
            ring = (
                float(dialled)
                if isinstance(dialled, int | float) and dialled > 0
                else DEFAULT_RING_TIMEOUT_SECS
            )
        # Assumption: Telnyx reports an unanswered dial as hangup_cause "timeout".
        return ring, "timeout"

    async def prepare(self, call: FakeCall, script: Sequence[CallerTurn]) -> None:
        """Build the turns (synthesizing the lines) before the stream opens."""
        voice = self.callees.voice or placeholder_voice
        if self.kind == "voicemail":
            greeting = await voice(self.callees.greeting)
            self.turns = [
                CallerTurn(audio=greeting, text=self.callees.greeting, wait_for_bot=False),
                CallerTurn(audio=beep(), text=BEEP_TEXT, wait_for_bot=False),
            ]
            self.hang_up_after_secs = self.callees.box_silence_secs
        elif self.kind == "screening":
            question, again, hello = (
                await voice(SCREENING_QUESTION),
                await voice(SCREENING_AGAIN),
                await voice(SCREENED_HELLO),
            )
            self.turns = [
                CallerTurn(audio=question, text=SCREENING_QUESTION, wait_for_bot=False),
                # The person is connected only once the caller has answered the question.
                CallerTurn(
                    audio=hello,
                    text=SCREENED_HELLO,
                    quiet_secs=self.callees.screening_quiet_secs,
                    nudge_audio=again,
                    nudge_text=SCREENING_AGAIN,
                    max_nudges=0,  # asks once more, then hangs up
                    require_answer=True,
                ),
                *script,
            ]
            self.hang_up_after_secs = self.human_silence_secs
        else:
            self.turns = list(script)
            if self.callees.human_hello:
                said = CallerTurn(audio=await voice(HUMAN_HELLO), text=HUMAN_HELLO, wait_for_bot=False)
                self.turns.insert(0, said)
            self.hang_up_after_secs = self.human_silence_secs

    # ------------------------------------------------------------ while streaming

    def started(self, caller: SimulatedCaller, send: AmdSender) -> None:
        """The stream is up: schedule the AMD results that do not wait for a caller event."""
        self._caller, self._send = caller, send
        self.times["answered"] = time.monotonic()
        detection, _ = amd_events(self.amd_mode or "", self.kind)
        if self.kind == "human" and detection:
            self._later(self.callees.human_detect_secs, detection)

    def on_caller_event(self, kind: str, data: dict[str, Any]) -> None:
        """The simulated callee's own events (``caller_turn`` as each line starts, ``caller_turn_ended``)."""
        text = data.get("text", "")
        if kind == "caller_turn_ended" and text == BEEP_TEXT:
            # Telnyx tells the greeting's end once it has heard the beep out.
            _, greeting_end = amd_events(self.amd_mode or "", self.kind)
            self._later(self.callees.beep_detect_secs, greeting_end)
            return
        if kind != "caller_turn":
            return
        now = time.monotonic()
        secs = float(data.get("secs", 0.0))
        detection, greeting_end = amd_events(self.amd_mode or "", self.kind)
        if text == self.callees.greeting and self.kind == "voicemail":
            self.times["greeting_started"] = now
            # Detected during the greeting, about 60% of the way in (bounded).
            self._later(min(self.callees.machine_detect_secs, 0.6 * secs), detection)
        elif text == BEEP_TEXT:
            self.times["beep_started"] = now
            self.times["beep_ended"] = now + secs
            self.beep_frames = (int(data.get("frame", 0)), round(secs / FRAME_SECS))
            if self.callees.max_message_secs > 0:
                self._timers.append(
                    asyncio.ensure_future(self._end_message(secs + self.callees.max_message_secs))
                )
        elif text == SCREENING_QUESTION:
            self.times["question_started"] = now
            self._later(secs + 0.3, detection)
        elif text == SCREENED_HELLO:
            self.times["connected"] = now

    def stopped(self) -> None:
        """The stream ended: no more AMD results."""
        for timer in self._timers:
            timer.cancel()
        self._send = None

    def _later(self, delay: float, events: Iterable[tuple[str, str]]) -> None:
        batch = list(events)
        if batch:
            self._timers.append(asyncio.ensure_future(self._fire_after(delay, batch)))

    async def _fire_after(self, delay: float, events: list[tuple[str, str]]) -> None:
        await asyncio.sleep(max(0.0, delay))
        self._fire(events)

    def _fire(self, events: Iterable[tuple[str, str]]) -> None:
        send = self._send
        if send is None:
            return
        for event_type, result in events:
            now = time.monotonic()
            self.times[f"amd:{event_type}"] = now
            self.amd_sent.append((event_type, result, now))
            send(event_type, result)

    async def _end_message(self, after: float) -> None:
        await asyncio.sleep(after)
        if self._caller is not None:
            await self._caller.hang_up()


# --------------------------------------------------------------------------- book


@dataclass(kw_only=True)
class Callees:
    """Which kind of callee answers each dialled number (``by_number``, else ``default``)."""

    by_number: dict[str, str] = field(default_factory=dict)
    default: str = "human"
    voice: Voice | None = None
    greeting: str = GREETING
    human_detect_secs: float = 0.8  # Assumption: how long detection takes on a person's hello
    machine_detect_secs: float = 1.5  # into the greeting
    beep_detect_secs: float = 0.1  # Assumption: after the beep's end
    busy_after_secs: float = 0.3
    no_answer_after_secs: float | None = None
    box_silence_secs: float = 5.0
    max_message_secs: float = 30.0
    screening_quiet_secs: float = 1.0
    human_hello: bool = False  # a person answers with "Hello?" (the CLI's callees do)

    def __post_init__(self) -> None:
        for number, kind in {**self.by_number, "default": self.default}.items():
            if kind not in CALLEE_KINDS:
                raise ValueError(f"callee {number}: {kind!r} is not one of {', '.join(CALLEE_KINDS)}")

    @classmethod
    def parse(cls, entries: Iterable[str], default: str = "human", **options: Any) -> Callees:
        """From ``["+15551230001=voicemail", ...]`` (the CLI's ``--callee``); ValueError if malformed."""
        by_number: dict[str, str] = {}
        for entry in entries:
            number, sep, kind = entry.partition("=")
            if not sep or not number.strip():
                raise ValueError(f"--callee {entry!r}: expected NUMBER=KIND, e.g. +15551230001=voicemail")
            by_number[number.strip()] = kind.strip()
        return cls(by_number=by_number, default=default, **options)

    def kind_for(self, number: str) -> str:
        """The kind of callee behind ``number``."""
        return self.by_number.get(number, self.default)

    def plan(self, call: FakeCall, *, human_silence_secs: float = 5.0) -> CalleePlan:
        """A fresh plan for one dialled call (a person hangs up after ``human_silence_secs`` of quiet)."""
        amd = call.params.get("answering_machine_detection")
        return CalleePlan(
            kind=self.kind_for(call.to_number),
            amd_mode=amd if isinstance(amd, str) and amd != "disabled" else None,
            callees=self,
            human_silence_secs=human_silence_secs,
        )


# --------------------------------------------------------------------------- box


@dataclass(frozen=True, slots=True)
class VoicemailMessage:
    """What a voicemail box recorded: the bot's audio after the beep and when it came.

    Times are monotonic seconds. ``talked_over_greeting_secs``: bot audio heard before the
    beep ended (a polite bot leaves none).
    """

    beep_started_at: float
    beep_ended_at: float
    message_started_at: float | None
    message_secs: float
    talked_over_greeting_secs: float
    audio: bytes
    sample_rate: int


def _voiced_secs(pcm: bytes, rate: int) -> float:
    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
    frame = int(rate * FRAME_SECS)
    n = len(samples) // frame
    if n == 0:
        return 0.0
    rms = np.sqrt(np.mean(samples[: n * frame].reshape(n, frame) ** 2, axis=1))
    return float(np.count_nonzero(rms > 100.0)) * FRAME_SECS


def voicemail_message(plan: CalleePlan | None, result: CallResult | None) -> VoicemailMessage | None:
    """The message a ``voicemail`` callee recorded, once its call is over (else ``None``)."""
    if plan is None or plan.kind != "voicemail" or result is None or "beep_ended" not in plan.times:
        return None
    rate = result.sample_rate
    beep_turn = next((t for t in result.turns if t.text == BEEP_TEXT), None)
    if beep_turn is None or plan.beep_frames is None:
        return None
    # Both tracks hold one 20 ms frame per frame the box sent: the beep's last frame there
    # is exactly where the greeting ends and the recording starts.
    first, count = plan.beep_frames
    cut = (first + count) * int(rate * FRAME_SECS) * 2
    before, after = result.bot_track[:cut], result.bot_track[cut:]
    return VoicemailMessage(
        beep_started_at=beep_turn.started_at,
        beep_ended_at=beep_turn.ended_at,
        message_started_at=beep_turn.first_bot_audio_heard_at,
        message_secs=_voiced_secs(after, rate),
        talked_over_greeting_secs=_voiced_secs(before, rate),
        audio=after,
        sample_rate=rate,
    )
