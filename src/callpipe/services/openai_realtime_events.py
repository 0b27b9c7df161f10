"""The OpenAI Realtime API's server events as pipeline frames.

:class:`RealtimeEventHandler` turns what the model sends (its audio and transcript
deltas, the caller's speech and transcripts, replies, tool calls, errors) into frames,
and keeps the reply's bookkeeping: which replies the caller interrupted, how much audio
each item has (for ``conversation.item.truncate``), the conversation history (re-sent
after a reconnect). :class:`~callpipe.services.openai_realtime.OpenAIRealtimeService`
adds the session (connection, reconnects) and the caller's audio.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import time
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from callpipe.pipeline.frames import (
    BotInterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    OutputEncodedAudioFrame,
    PlaybackCutFrame,
    TranscriptionFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from callpipe.pipeline.processor import FrameDirection
from callpipe.records import observer as records
from callpipe.services import realtime_protocol as proto
from callpipe.services.llm import LLMContext, LLMService, ToolCall
from callpipe.services.realtime_protocol import HistoryEntry, RealtimeConfig

__all__ = ["RealtimeEventHandler"]

logger = logging.getLogger("callpipe.services")


class RealtimeEventHandler(LLMService):
    """Base of the Realtime service: server events in, frames out; the reply's state.

    ``_ws`` is the session's socket while it is up (set by the subclass's session).
    """

    def __init__(self, config: RealtimeConfig, *, model: str, name: str | None) -> None:
        super().__init__(model=model, name=name)
        self.config = config
        self.context = LLMContext()
        self.history: list[HistoryEntry] = []
        self.first_audio_in_at: list[float] = []  # per response: when its first audio arrived
        self._ws: ClientConnection | None = None
        self._ending = False
        self._response_id = ""
        self._responding = False
        self._response_done = asyncio.Event()
        self._response_done.set()
        self._dropped: set[str] = set()
        self._first_audio = True
        self._item_ms: dict[str, float] = {}
        self._words = ""
        self._calls: list[ToolCall] = []
        self._appended_bytes = 0
        self._observer: records.CallObserver | None = None
        self._provider = records.provider_name(self)

    async def _send(self, event: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None:
            return
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(json.dumps(event))

    # ------------------------------------------------------------------ events

    async def _on_event(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type", ""))
        if kind in proto.AUDIO_DELTA:
            await self._on_audio(event)
        elif kind in proto.TRANSCRIPT_DELTA:
            if event.get("response_id") not in self._dropped:
                await self._on_words(str(event.get("delta", "")), final=False)
        elif kind in proto.TRANSCRIPT_DONE:
            await self._on_transcript_done(event)
        elif kind == "input_audio_buffer.speech_started":
            await self._on_speech_started()
        elif kind == "input_audio_buffer.speech_stopped":
            await self._on_speech_stopped(event)
        elif kind == "conversation.item.input_audio_transcription.completed":
            await self._on_caller_transcript(str(event.get("transcript", "")))
        elif kind == "response.created":
            self._start_reply(str((event.get("response") or {}).get("id", "")))
            await self.push_frame(LLMFullResponseStartFrame())
        elif kind == "response.function_call_arguments.done":
            arguments = str(event.get("arguments") or "{}")
            self._calls.append(ToolCall(str(event.get("call_id", "")), str(event.get("name", "")), arguments))
        elif kind == "response.done":
            await self._on_response_done(event.get("response") or {})
        elif kind == "error":
            error = event.get("error") or {}
            logger.warning("realtime error %s: %s", error.get("code"), error.get("message"))
            if self._observer is not None:
                self._observer.error("realtime", f"{error.get('code')}: {error.get('message')}")

    def _start_reply(self, response_id: str) -> None:
        self._response_id = response_id
        self._responding = True
        self._response_done.clear()
        self._first_audio = True
        self._calls = []
        self._words = ""

    async def _on_audio(self, event: dict[str, Any]) -> None:
        if event.get("response_id") in self._dropped:
            return  # a reply the caller interrupted: nothing more of it plays
        payload = base64.b64decode(str(event.get("delta", "")))
        item_id = str(event.get("item_id", ""))
        if self._first_audio:
            self._first_audio = False
            self.first_audio_in_at.append(time.monotonic())
            if self._observer is not None:
                self._observer.llm_first_token()  # the model's first audio: its "first token"
                self._observer.tts_first_audio()
        self._item_ms[item_id] = self._item_ms.get(item_id, 0.0) + len(payload) / 8.0
        await self.push_frame(
            OutputEncodedAudioFrame(payload=payload, codec="PCMU", sample_rate=8000, item_id=item_id)
        )

    async def _on_words(self, delta: str, *, final: bool) -> None:
        # Deltas are pieces of words: whole words go to the output, placed after their audio.
        self._words += delta
        parts = self._words.split(" ")
        self._words = "" if final else parts.pop()
        for word in parts:
            if word.strip():
                await self.push_frame(TTSTextFrame(word.strip()))

    async def _on_transcript_done(self, event: dict[str, Any]) -> None:
        if event.get("response_id") in self._dropped:
            return
        await self._on_words("", final=True)
        text = str(event.get("transcript", "")).strip()
        if text:
            if self._observer is not None:
                self._observer.bot_text(text)
            self._add_history("assistant", text, item_id=str(event.get("item_id", "")))

    async def _on_speech_started(self) -> None:
        if self.config.turn_detection == "local":
            return
        if self._observer is not None:
            self._observer.caller_started()
        await self.push_frame(UserStartedSpeakingFrame())
        if self.interruptions_allowed:
            # The input stops the output and sends clear, then pushes the InterruptionFrame.
            await self.push_frame(BotInterruptionFrame(), FrameDirection.UPSTREAM)

    async def _on_speech_stopped(self, event: dict[str, Any]) -> None:
        if self.config.turn_detection == "local":
            return
        end_ms = event.get("audio_end_ms")
        behind = self._appended_bytes / 8000.0 - end_ms / 1000.0 if isinstance(end_ms, int) else 0.0
        ended_at = time.monotonic() - max(0.0, behind)
        if self._observer is not None:
            self._observer.caller_stopped(ended_at)
        await self.push_frame(UserStoppedSpeakingFrame(speech_ended_at=ended_at))

    async def _on_caller_transcript(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        if self._observer is not None:
            self._observer.transcript(text)
        self._add_history("user", text)
        await self.push_frame(TranscriptionFrame(text))

    async def _on_response_done(self, response: dict[str, Any]) -> None:
        tokens_in, tokens_out, audio_in, audio_out = proto.usage_tokens(response.get("usage"))
        if (tokens_in or tokens_out) and self._observer is not None:
            self._observer.llm_tokens(self._provider, tokens_in, tokens_out)
            self._observer.audio_tokens(self._provider, audio_in, audio_out)
        calls, self._calls = self._calls, []
        cancelled = response.get("status") == "cancelled" or response.get("id") in self._dropped
        if not cancelled:
            await self._end_reply()
            await self.push_frame(LLMFullResponseEndFrame())
        self._responding = False
        self._response_done.set()
        if calls and not cancelled:
            self.create_task(self._run_calls(calls), "realtime-tools")

    async def _end_reply(self) -> None:
        # The reply's audio is all queued: the output flushes and marks its end.
        self._responding = False
        self._response_done.set()
        await self.push_frame(TTSStoppedFrame())

    async def _run_calls(self, calls: list[ToolCall]) -> None:
        ran: list[Any] = []
        for call in calls:
            result = await self._run_tool(self.context, call, ran)
            await self._send(proto.function_output(call.id, result))
            if call.name == "end_call":
                self._ending = True
        if not self._ending and all(p.run_llm for p in ran):
            await self._send({"type": "response.create"})

    # -------------------------------------------------------------- barge-in

    async def _cancel_response(self) -> None:
        if not self._responding:
            return
        self._dropped.add(self._response_id)
        self._responding = False
        self._response_done.set()
        if self.config.turn_detection == "local":
            await self._send({"type": "response.cancel"})  # server VAD already cancelled it

    async def _truncate(self, frame: PlaybackCutFrame) -> None:
        total = self._item_ms.get(frame.item_id)
        if total is None:
            return
        audio_end_ms = min(frame.played_ms, math.floor(total))
        await self._send(
            {
                "type": "conversation.item.truncate",
                "item_id": frame.item_id,
                "content_index": 0,
                "audio_end_ms": audio_end_ms,
            }
        )
        # The history keeps what the caller heard (for a reconnect): the words in that share.
        for entry in self.history:
            if entry.item_id == frame.item_id and total > 0:
                words = entry.text.split()
                entry.text = " ".join(words[: math.ceil(len(words) * audio_end_ms / total)])

    # ------------------------------------------------------------------- misc

    def _add_history(self, role: Any, text: str, *, item_id: str = "") -> HistoryEntry:
        entry = HistoryEntry(role, text, item_id)
        self.history.append(entry)
        self.context.add_message({"role": role, "content": text})
        return entry

    async def _finish_reply(self) -> None:
        # end_call: the goodbye may still be streaming in; let it arrive (bounded).
        if self._responding:
            try:
                await asyncio.wait_for(self._response_done.wait(), timeout=5.0)
            except TimeoutError:
                logger.warning("the model's last reply did not finish before the end")
