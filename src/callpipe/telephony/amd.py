"""What an outbound bot does about answering machines and call screeners: a pure state machine.

:class:`AmdPolicy` takes what is known about the far end - Telnyx's answering-machine
detection (AMD) results, the callee's transcripts, its voice activity, the clock - and
answers with :class:`Act` s: greet, leave the message, answer the screener, hang up. It
does no I/O and keeps no timers (the caller asks :attr:`AmdPolicy.deadline` and calls
:meth:`AmdPolicy.on_tick`), so ``tests/test_voicemail_policy.py`` drives it with plain
numbers. :class:`~callpipe.telephony.voicemail.VoicemailPolicy` runs it in a pipeline.

```
                 human / not_sure / silence / detect timeout
   WAITING ───────────────────────────────────────────────▶ HUMAN (greet)
     │  machine                     screening question ▲ │ screening question
     ▼                              (answer the line)  │ ▼     (also from WAITING, MACHINE)
   MACHINE ── greeting ended / beep / silence / timeout ─▶ LEAVING (message, then hang up) ─▶ DONE
     fax_detected ─────────────────────────────────────▶ DONE (hang up)
   SCREENING ── the person speaks ──▶ HUMAN (greet)
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "HUMAN_RESULTS",
    "MACHINE_RESULTS",
    "Act",
    "AmdConfig",
    "AmdPolicy",
    "AmdState",
    "is_screening_question",
]

# Telnyx's result values (its AMD guide): detection events, then greeting-end events.
HUMAN_RESULTS = frozenset({"human", "human_residence", "human_business"})
MACHINE_RESULTS = frozenset({"machine"})
# Neither: treated as a person (a wrong "machine" would leave a recording on someone who
# is listening; a wrong "human" only greets a machine, which records it).
UNSURE_RESULTS = frozenset({"not_sure", "silence"})
GREETING_END_RESULTS = frozenset({"beep_detected", "ended", "no_beep_detected", "not_sure"})
# Modes whose greeting end comes as an event; with "detect" only silence tells it.
GREETING_EVENT_MODES = frozenset({"detect_beep", "detect_words", "greeting_end", "premium"})

# What only a screener says (a person on the line rarely asks for name *and* reason).
_SCREENER_ONLY = re.compile(
    r"(?:state|say) your name|your name and|reason for (?:your|the|this) call"
    r"|purpose of (?:your|the|this) call|screening (?:service|assistant)|record your name"
)
# What a person may ask too: a screener only before the far end is known to be a person.
_WHO_IS_CALLING = re.compile(
    r"who(?:'s| is) (?:calling|this)|who are you|why (?:are you|you're) calling"
    r"|what(?:'s| is) (?:this|the call|your call) (?:about|regarding|in regards? to)"
)


def is_screening_question(text: str, *, strict: bool = False) -> bool:
    """Whether ``text`` sounds like a call screener asking who is calling and why.

    ``strict``: only what a screener says (used once a person was greeted, who may well
    ask "who's this?" and should then get the conversation, not the screening line).
    """
    plain = " ".join(text.lower().replace("’", "'").split())
    return bool(_SCREENER_ONLY.search(plain) or (not strict and _WHO_IS_CALLING.search(plain)))


class AmdState(StrEnum):
    """Where the policy is."""

    WAITING = "waiting"  # for the first AMD result (greeting held)
    HUMAN = "human"  # greeted; the conversation runs
    MACHINE = "machine"  # a machine: waiting for its greeting to end
    LEAVING = "leaving"  # the message is being left, then the call ends
    SCREENING = "screening"  # answered a screener; waiting for the person
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Act:
    """What the bot should do now: ``greet``, ``leave_message``, ``answer_screening`` or ``hang_up``."""

    kind: str
    reason: str = ""


@dataclass(kw_only=True)
class AmdConfig:
    """The policy's bounds (seconds).

    ``mode``: the AMD mode the dial asked for (``None``: no AMD, greet at once).
    ``detect_timeout_secs``: longest the greeting is held for the first result (then: a
    person, decision ``timeout``). ``greeting_timeout_secs``: longest a machine's greeting
    is waited out before the message is left anyway. ``silence_secs``: quiet after the
    machine's speech that counts as its greeting's end (mode ``detect``, which sends no
    greeting event); ``no_beep_silence_secs``: the same in the other modes (a box
    without a beep). ``max_screening_answers``: lines said to one screener.
    """

    mode: str | None = None
    detect_timeout_secs: float = 4.0
    greeting_timeout_secs: float = 20.0
    silence_secs: float = 1.0
    no_beep_silence_secs: float = 3.0
    has_message: bool = True
    screening: bool = True
    max_screening_answers: int = 2


@dataclass
class AmdPolicy:
    """One call's answering-machine decisions (pure; times are monotonic seconds)."""

    config: AmdConfig
    started_at: float
    state: AmdState = AmdState.WAITING
    decision: str | None = None
    #: When the policy wants :meth:`on_tick` (``None``: no timer).
    deadline: float | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    times: dict[str, float] = field(default_factory=dict)
    screening_answers: int = 0
    greeted: int = 0
    _caller_speaking: bool = False
    _vad_seen: bool = False

    def start(self, now: float) -> list[Act]:
        """The call connected: greet at once without AMD, else hold the greeting (bounded)."""
        if self.config.mode is None:
            return self._decide("no_amd", now, human=True)
        self.deadline = now + self.config.detect_timeout_secs
        return []

    # ------------------------------------------------------------ inputs

    def on_result(self, event_type: str, result: str, now: float) -> list[Act]:
        """An AMD webhook's result (``call.machine.*``)."""
        self.results.append({"event": event_type, "result": result, "at_ms": self._ms(now)})
        self.times.setdefault("first_result", now)
        greeting_event = "greeting.ended" in event_type
        if greeting_event:
            self.times.setdefault("greeting_ended", now)
            if self.state in (AmdState.WAITING, AmdState.MACHINE):
                # A greeting that ended with a beep (or just ended) was a machine's.
                if self.decision is None:
                    self.decision = "machine"
                return self._leave("greeting ended: " + result, now)
            return []
        if self.state is not AmdState.WAITING:
            return []  # decided already (a late or repeated result)
        if result in MACHINE_RESULTS:
            self.decision, self.state = "machine", AmdState.MACHINE
            self.times["decided"] = now
            self._arm_machine(now)
            return []
        if result == "fax_detected":
            self.decision, self.state, self.deadline = "fax", AmdState.DONE, None
            self.times["decided"] = now
            return [Act("hang_up", "a fax answered")]
        return self._decide(result if result in UNSURE_RESULTS else "human", now, human=True)

    def on_transcript(
        self, text: str, now: float, *, spoken_at: float | None = None
    ) -> tuple[list[Act], bool]:
        """A final transcript of the callee: the acts, and whether the bot's turn-taking may see it.

        ``spoken_at``: when the callee started saying it (its voice activity). Words a person
        started before the decision (a "Hello?" on pick-up, transcribed after AMD's result)
        are answered by the greeting, not by a reply of their own.
        """
        state = self.state
        if (
            self.config.screening
            # A screener's long scripted question may also have been classified a machine.
            and state in (AmdState.WAITING, AmdState.HUMAN, AmdState.MACHINE, AmdState.SCREENING)
            and is_screening_question(text, strict=state is AmdState.HUMAN)
        ):
            if self.screening_answers >= self.config.max_screening_answers:
                return [], False
            self.screening_answers += 1
            self.times.setdefault("screening", now)
            self.decision = "screening"
            self.state, self.deadline = AmdState.SCREENING, None
            return [Act("answer_screening", "the callee asked who is calling")], False
        if state is AmdState.SCREENING:
            # The screener put the person through: now greet them.
            self.times.setdefault("connected", now)
            return self._decide("screened_human", now, human=True), False
        decided = self.times.get("decided")
        if spoken_at is not None and decided is not None and spoken_at < decided:
            return [], False  # begun before the decision: the greeting answers it
        return [], state is AmdState.HUMAN

    def on_caller_started(self, now: float) -> None:
        """The callee's voice activity started (a machine's greeting is still going)."""
        self._caller_speaking = self._vad_seen = True
        if self.state is AmdState.MACHINE:
            self._arm_machine(now)

    def on_caller_stopped(self, now: float) -> None:
        """The callee went quiet: in a machine's greeting, possibly its end."""
        self._caller_speaking, self._vad_seen = False, True
        if self.state is AmdState.MACHINE:
            self._arm_machine(now)

    def on_tick(self, now: float) -> list[Act]:
        """Time passed: act on a deadline that is due."""
        if self.deadline is None or now < self.deadline:
            return []
        self.deadline = None
        if self.state is AmdState.WAITING:
            return self._decide("timeout", now, human=True)
        if self.state is AmdState.MACHINE:
            waited = now - self.times.get("decided", now)
            why = "greeting timeout" if waited >= self.config.greeting_timeout_secs - 1e-6 else "silence"
            return self._leave(why, now)
        return []

    def on_message_started(self, now: float) -> None:
        """The message's first audio went out."""
        self.times.setdefault("message_started", now)

    # ------------------------------------------------------------ record

    def summary(self) -> dict[str, Any]:
        """What the call record keeps (``record.amd``): mode, decision, results, times in ms."""
        out: dict[str, Any] = {"mode": self.config.mode, "decision": self.decision, "state": str(self.state)}
        out["results"] = list(self.results)
        for name, at in self.times.items():
            out[f"{name}_ms"] = self._ms(at)
        if self.screening_answers:
            out["screening_answers"] = self.screening_answers
        return out

    # ------------------------------------------------------------ helpers

    def _ms(self, at: float) -> int:
        return round((at - self.started_at) * 1000)

    def _decide(self, decision: str, now: float, *, human: bool) -> list[Act]:
        self.decision = decision
        self.state, self.deadline = AmdState.HUMAN, None
        self.times.setdefault("decided", now)
        self.greeted += 1
        self.times.setdefault("greeted", now)
        return [Act("greet", decision)] if human else []

    def _arm_machine(self, now: float) -> None:
        """The machine's deadline: its greeting's silence, bounded by the greeting timeout."""
        limit = self.times.get("decided", now) + self.config.greeting_timeout_secs
        if self._caller_speaking or not self._vad_seen:
            # Still talking, or no voice activity known (a bot without a VAD): only the
            # greeting's end event or the timeout tells.
            self.deadline = limit
            return
        quiet = (
            self.config.no_beep_silence_secs
            if self.config.mode in GREETING_EVENT_MODES
            else self.config.silence_secs
        )
        self.deadline = min(limit, now + quiet)

    def _leave(self, reason: str, now: float) -> list[Act]:
        self.deadline = None
        self.times.setdefault("leave", now)
        if not self.config.has_message:
            self.state = AmdState.DONE
            return [Act("hang_up", reason)]
        self.state = AmdState.LEAVING
        return [Act("leave_message", reason)]
