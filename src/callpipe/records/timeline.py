"""The conversation half of a call record: turns, heard text and latency, from timed events.

Pure logic (no sockets, no clocks of its own): the observer calls these methods with
``time.monotonic()`` stamps as things happen in the call, and :class:`Timeline` turns
them into :class:`~callpipe.records.model.Turn` objects in the record.

Latency: each end of caller speech (the VAD's ``speech_ended_at``, before its stop
window) opens a *cycle*; the cycle stamps the first time each later stage happens
(VAD stop, final transcript, first LLM token, first TTS audio, first audio sent, first
audio heard) and is bound to the next bot turn. The greeting's cycle is anchored at the
start of the call and has no VAD or STT stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from callpipe.records.model import CallRecord, Latency, ToolCall, Turn

__all__ = ["LATENCY_STAGES", "Timeline"]

# The latency stages in pipeline order (the names of :class:`Latency`'s fields).
LATENCY_STAGES = (
    "vad_stop_ms",
    "stt_final_ms",
    "llm_first_token_ms",
    "tts_first_audio_ms",
    "first_audio_sent_ms",
    "heard_ms",
)


@dataclass(slots=True)
class _Cycle:
    """One caller utterance and the stages of the reply to it (monotonic stamps)."""

    anchor: float
    greeting: bool = False
    vad_stop: float | None = None
    stt_final: float | None = None
    llm_first_token: float | None = None
    tts_first_audio: float | None = None
    first_audio_sent: float | None = None
    heard: float | None = None
    stt_wait: float | None = None  # seconds the transcript waited for a shared model worker
    tts_wait: float | None = None  # seconds the first audio waited for one
    turn: Turn | None = None
    reported: bool = False

    def latency(self) -> Latency:
        def ms(at: float | None) -> float | None:
            return None if at is None else round((at - self.anchor) * 1000.0, 1)

        def wait_ms(secs: float | None) -> float | None:
            return None if secs is None else round(secs * 1000.0, 1)

        waits = [w for w in (self.stt_wait, self.tts_wait) if w is not None]
        return Latency(
            vad_stop_ms=ms(self.vad_stop),
            stt_final_ms=ms(self.stt_final),
            llm_first_token_ms=ms(self.llm_first_token),
            tts_first_audio_ms=ms(self.tts_first_audio),
            first_audio_sent_ms=ms(self.first_audio_sent),
            heard_ms=ms(self.heard),
            queue_wait_ms=wait_ms(sum(waits)) if waits else None,
            stt_queue_wait_ms=wait_ms(self.stt_wait),
            tts_queue_wait_ms=wait_ms(self.tts_wait),
        )


@dataclass(slots=True)
class _BotTurnState:
    """What the timeline tracks about the open bot turn beyond the record's fields."""

    turn: Turn
    text_from_tts: bool = False  # text came from a TTS service (else from the queued words)
    reply_ended: bool = False
    audio_sent: bool = False
    heard: list[str] | None = None
    queued: list[str] | None = None


class Timeline:
    """Builds ``record.turns`` from the call's events; every method takes a monotonic stamp.

    ``to_wall`` converts a monotonic stamp to UNIX seconds (the record's times).
    ``on_latency(latency, greeting)`` is called once per bot turn when its latency is
    complete (heard, or the turn ended without it), for the ``/metrics`` aggregates.
    """

    def __init__(
        self,
        record: CallRecord,
        *,
        started: float,
        to_wall: Callable[[float], float],
        on_latency: Callable[[Latency, bool], None] | None = None,
    ) -> None:
        self.record = record
        self._wall = to_wall
        self._on_latency = on_latency
        self._cycle: _Cycle | None = _Cycle(anchor=started, greeting=True)
        self._bot: _BotTurnState | None = None
        self._speech_started: float | None = None
        self._speech_ended: float | None = None
        self._final_before_stop: float | None = None
        self._stt_wait_before_stop: float | None = None

    # ----------------------------------------------------------------- caller

    def caller_started(self, at: float) -> None:
        """The VAD heard the caller start speaking."""
        self._speech_started = at
        self._final_before_stop = None
        self._stt_wait_before_stop = None

    def caller_stopped(self, speech_ended_at: float, at: float) -> None:
        """The VAD reported the end of speech at ``at``; the speech itself ended earlier."""
        self._speech_ended = speech_ended_at
        self._report(self._cycle)
        cycle = _Cycle(anchor=speech_ended_at, vad_stop=at)
        # A streaming STT often finalises before the VAD's stop window ends.
        cycle.stt_final = self._final_before_stop
        cycle.stt_wait = self._stt_wait_before_stop
        self._final_before_stop = None
        self._stt_wait_before_stop = None
        self._cycle = cycle
        last = self.record.turns[-1] if self.record.turns else None
        if last is not None and last.speaker == "caller" and last.ended_at is None:
            last.ended_at = self._wall(speech_ended_at)

    def transcript(self, text: str, at: float) -> None:
        """A final transcript of the caller's speech."""
        text = text.strip()
        if not text:
            return
        cycle = self._cycle
        if cycle is not None and not cycle.greeting and cycle.llm_first_token is None:
            cycle.stt_final = at  # the last final before the reply started
        else:
            self._final_before_stop = at
        turns = self.record.turns
        if turns and turns[-1].speaker == "caller":
            turns[-1].text = f"{turns[-1].text} {text}".strip()
            return
        self._close_bot(at)
        started = self._speech_started if self._speech_started is not None else at
        ended = (
            self._speech_ended if self._speech_ended is not None and self._speech_ended >= started else None
        )
        turns.append(
            Turn(
                speaker="caller",
                text=text,
                started_at=self._wall(started),
                ended_at=None if ended is None else self._wall(ended),
            )
        )

    def stt_queue_wait(self, secs: float, at: float) -> None:
        """The caller's speech waited ``secs`` for a shared STT model worker.

        The last wait before the reply starts counts (a speculative transcription that
        was dropped and run again is one wait, not two); one reported in the VAD's stop
        window belongs to the cycle that the stop opens.
        """
        cycle = self._cycle
        if cycle is not None and not cycle.greeting and cycle.llm_first_token is None:
            cycle.stt_wait = secs
            self._refresh(cycle)
        else:
            self._stt_wait_before_stop = secs

    def tts_queue_wait(self, secs: float, at: float) -> None:
        """A sentence waited ``secs`` for a shared TTS model worker (counts until first audio)."""
        cycle = self._cycle
        if cycle is not None and cycle.tts_first_audio is None:
            cycle.tts_wait = secs
            self._refresh(cycle)

    # -------------------------------------------------------------------- bot

    def llm_first_token(self, at: float) -> None:
        """The LLM streamed the first token of a reply."""
        cycle = self._cycle
        if cycle is not None and cycle.llm_first_token is None:
            cycle.llm_first_token = at
            self._refresh(cycle)

    def bot_text(self, text: str, at: float) -> None:
        """A TTS service received ``text`` to speak (what the bot means to say)."""
        text = text.strip()
        if not text:
            return
        state = self._open_bot(at)
        turn = state.turn
        if not state.text_from_tts:
            state.text_from_tts = True
            turn.text = ""
        turn.text = f"{turn.text} {text}".strip()

    def bot_word_queued(self, word: str, at: float) -> None:
        """A word reached the output (bots without a TTS service: their text is these words)."""
        state = self._open_bot(at)
        if state.text_from_tts:
            return
        if state.queued is None:
            state.queued = []
        state.queued.append(word.strip())
        state.turn.text = " ".join(w for w in state.queued if w)

    def reply_ended(self, at: float) -> None:
        """The bot's reply is complete (all of it was handed to the speech output)."""
        if self._bot is not None:
            self._bot.reply_ended = True

    def tts_first_audio(self, at: float) -> None:
        """The TTS produced the first audio of a reply."""
        cycle = self._cycle
        if cycle is not None and cycle.tts_first_audio is None:
            cycle.tts_first_audio = at
            self._refresh(cycle)

    def audio_sent(self, at: float) -> None:
        """The output sent the first audio chunk after silence."""
        state = self._open_bot(at)
        if not state.audio_sent:
            state.audio_sent = True
            state.turn.started_at = self._wall(at)
        cycle = self._cycle
        if cycle is not None and cycle.first_audio_sent is None:
            cycle.first_audio_sent = at
            self._refresh(cycle)

    def heard(self, at: float) -> None:
        """The caller's side confirmed (mark echo) that the first audio of a turn played."""
        cycle = self._cycle
        if cycle is not None and cycle.first_audio_sent is not None and cycle.heard is None:
            cycle.heard = at
            self._refresh(cycle)
            self._report(cycle)

    def heard_word(self, word: str, at: float) -> None:
        """A word of the bot's reply has played to the caller."""
        state = self._bot
        if state is None:
            return
        if state.heard is None:
            state.heard = []
        state.heard.append(word.strip())
        state.turn.heard_text = " ".join(w for w in state.heard if w)

    def bot_stopped(self, at: float) -> None:
        """The bot's audio stopped playing; the turn ends if its reply was complete."""
        state = self._bot
        if state is not None and state.audio_sent:
            state.turn.ended_at = self._wall(at)
            if state.reply_ended:
                self._close_bot(at)

    def interrupted(self, at: float, *, cut: bool = True) -> bool:
        """The caller barged in: the open bot turn ends here. True if there was one.

        It counts as interrupted if audio was cut (``cut``) or its reply was not complete.
        """
        state = self._bot
        if state is None:
            return False
        state.turn.interrupted = cut or not state.reply_ended
        if state.turn.interrupted or state.turn.ended_at is None:
            state.turn.ended_at = self._wall(at)
        self._close_bot(at)
        return True

    def tool_call(self, call: ToolCall, at: float) -> None:
        """The LLM called a tool (kept on the bot turn it belongs to)."""
        self._open_bot(at).turn.tool_calls.append(call)

    # ---------------------------------------------------------------- internal

    def _open_bot(self, at: float) -> _BotTurnState:
        state = self._bot
        if state is not None and not (state.reply_ended and state.audio_sent and state.turn.ended_at):
            return state
        if state is not None:
            self._close_bot(at)
        turn = Turn(speaker="bot", started_at=self._wall(at), heard_text="")
        self.record.turns.append(turn)
        self._bot = _BotTurnState(turn=turn)
        cycle = self._cycle
        if cycle is not None and cycle.turn is None:
            cycle.turn = turn
            turn.latency = cycle.latency()
        return self._bot

    def _close_bot(self, at: float) -> None:
        state, self._bot = self._bot, None
        if state is None:
            return
        if state.turn.ended_at is None:
            state.turn.ended_at = self._wall(at)
        cycle = self._cycle
        if cycle is not None and cycle.turn is state.turn:
            self._report(cycle)

    def _refresh(self, cycle: _Cycle) -> None:
        if cycle.turn is not None:
            cycle.turn.latency = cycle.latency()

    def _report(self, cycle: _Cycle | None) -> None:
        if cycle is None or cycle.reported or cycle.turn is None:
            return
        cycle.reported = True
        latency = cycle.latency()
        cycle.turn.latency = latency
        if self._on_latency is not None:
            self._on_latency(latency, cycle.greeting)
