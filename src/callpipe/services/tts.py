"""The text-to-speech interface.

:class:`TTSService` turns streamed LLM text into speech sentence by sentence, so the
first audio leaves after the first sentence, not after the whole reply. A provider
implements :meth:`TTSService.run_tts` (text -> PCM chunks at ``sample_rate``). The base
class keeps the order of everything (audio, the reply's end, the pipeline's end) with
one worker task and a queue, stops synthesis at once on barge-in, and interleaves the
words with the audio (a :class:`TTSTextFrame` after the audio of each word) so that the
output transport can tell the context exactly which words were played.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from callpipe import metrics
from callpipe.pipeline.frames import (
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    StartFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from callpipe.pipeline.processor import FrameDirection, FrameProcessor
from callpipe.records import observer as records

logger = logging.getLogger("callpipe.services")

# A sentence ends at . ! ? (or …) followed by whitespace; "Dr." style abbreviations are
# rare in phone replies and only cost a slightly earlier split.
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_CHUNK_SECS = 0.04
# Speaking rate used to place words in streamed audio (about 165 words per minute).
CHARS_PER_SEC = 14.0
# Text waiting to be spoken, at most: about six minutes of speech.
MAX_PENDING_CHARS = 5000
# A "sentence" with no end in sight is spoken in pieces of at most this much.
MAX_SENTENCE_CHARS = 400


class _ReplyEnd:
    """Queue marker: the reply whose sentences came before it is complete."""


class _Flush:
    """Queue marker: an EndFrame waits for this to know everything before it is spoken."""

    def __init__(self) -> None:
        self.done = asyncio.Event()


class TTSService(FrameProcessor):
    """Base class for speech synthesis; subclasses implement :meth:`run_tts`."""

    def __init__(self, *, sample_rate: int, voice: str = "", name: str | None = None) -> None:
        super().__init__(name=name)
        self.sample_rate = sample_rate
        self.voice = voice
        self._text = ""
        # Unbounded by count, bounded by the text in it: markers (reply end, flush) are
        # never dropped, sentences beyond MAX_PENDING_CHARS are.
        self._queue: asyncio.Queue[str | _ReplyEnd | _Flush] = asyncio.Queue()
        self._pending_chars = 0
        self.shed_chars = 0
        self._worker: asyncio.Task[None] | None = None
        self._speaking = False
        self._chunk_bytes = max(2, int(sample_rate * _CHUNK_SECS) * 2)

    def run_tts(self, text: str) -> AsyncIterator[bytes]:
        """Synthesize ``text``: PCM16 mono chunks at :attr:`sample_rate` (an async generator)."""
        raise NotImplementedError

    async def say(self, text: str) -> None:
        """Speak ``text`` as a reply of its own."""
        await self.queue_frame(TTSSpeakFrame(text))

    # ----------------------------------------------------------------- frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Aggregate text into sentences and queue them; barge-in and end handling."""
        await super().process_frame(frame, direction)
        if direction is FrameDirection.UPSTREAM:
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, StartFrame):
            self._worker = self.create_task(self._work(), "synthesis")
            await self.push_frame(frame, direction)
        elif isinstance(frame, TextFrame) and not isinstance(frame, TTSTextFrame):
            # LLM text (or any plain TextFrame, as in Pipecat) is spoken sentence by sentence.
            self._text += frame.text
            *sentences, self._text = _SENTENCE_END.split(self._text)
            while len(self._text) > MAX_SENTENCE_CHARS:
                # Text with no sentence end for this long: speak it in pieces, at a word.
                cut = self._text.rfind(" ", 0, MAX_SENTENCE_CHARS) + 1 or MAX_SENTENCE_CHARS
                sentences.append(self._text[:cut])
                self._text = self._text[cut:]
            for sentence in sentences:
                if sentence.strip():
                    self._queue_sentence(sentence.strip())
        elif isinstance(frame, LLMFullResponseStartFrame):
            self._text = ""
            await self.push_frame(frame, direction)
        elif isinstance(frame, LLMFullResponseEndFrame):
            if self._text.strip():
                self._queue_sentence(self._text.strip())
            self._text = ""
            self._queue.put_nowait(_ReplyEnd())
        elif isinstance(frame, TTSSpeakFrame):
            self._queue_sentence(frame.text)
            self._queue.put_nowait(_ReplyEnd())
        elif isinstance(frame, InterruptionFrame):
            await self._interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, EndFrame):
            flush = _Flush()
            self._queue.put_nowait(flush)
            if self._worker is not None and not self._worker.done():
                await flush.done.wait()  # let the goodbye be synthesized first
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    def _queue_sentence(self, sentence: str) -> None:
        if self._pending_chars + len(sentence) > MAX_PENDING_CHARS:
            # More text waiting than minutes of speech: a runaway reply. Shed it (the
            # call goes on with what is queued) rather than grow without end.
            self.shed_chars += len(sentence)
            metrics.REGISTRY.error("tts_queue_full")
            if self.shed_chars == len(sentence):
                logger.warning(
                    "%s: over %d characters wait to be spoken; dropping more text of this reply",
                    self.name,
                    MAX_PENDING_CHARS,
                )
            return
        self._pending_chars += len(sentence)
        self._queue.put_nowait(sentence)
        observer = records.current()
        if observer is not None:
            observer.bot_text(sentence)
            observer.tts_characters(records.provider_name(self), len(sentence))

    async def _interrupt(self) -> None:
        self._text = ""
        self._pending_chars = 0
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _Flush):
                item.done.set()
        if self._worker is not None:
            await self.cancel_task(self._worker)
        self._speaking = False
        self._worker = self.create_task(self._work(), "synthesis")

    # ----------------------------------------------------------------- worker

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            if isinstance(item, _Flush):
                item.done.set()
                continue
            if isinstance(item, _ReplyEnd):
                if self._speaking:
                    self._speaking = False
                    await self.push_frame(TTSStoppedFrame())
                await self.push_frame(LLMFullResponseEndFrame())
                continue
            self._pending_chars = max(0, self._pending_chars - len(item))
            await self._speak_sentence(item)

    async def _speak_sentence(self, sentence: str) -> None:
        if not self._speaking:
            self._speaking = True
            await self.push_frame(TTSStartedFrame())
        self.start_ttfb_metrics()
        words = sentence.split()
        # Where each word ends, in seconds of speech, at an ordinary speaking rate. Audio is
        # pushed as it streams in, each word right after the audio that (by this estimate)
        # contains its end, so the output releases it once it has been heard; words still
        # pending when the sentence's audio ends follow it.
        ends: list[float] = []
        chars = 0
        for word in words:
            chars += len(word) + 1
            ends.append(chars / CHARS_PER_SEC)
        next_word = 0
        seconds = 0.0
        first = True
        bytes_per_sec = 2 * self.sample_rate
        try:
            async for pcm in self.run_tts(sentence):
                if not pcm:
                    continue
                if first:
                    first = False
                    observer = records.current()
                    if observer is not None:
                        observer.tts_first_audio()
                    await self.stop_ttfb_metrics(self.voice or None)
                for offset in range(0, len(pcm), self._chunk_bytes):
                    piece = pcm[offset : offset + self._chunk_bytes]
                    await self.push_frame(TTSAudioRawFrame(audio=piece, sample_rate=self.sample_rate))
                    seconds += len(piece) / bytes_per_sec
                    while next_word < len(words) and ends[next_word] <= seconds:
                        await self.push_frame(TTSTextFrame(words[next_word]))
                        next_word += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("%s failed on a sentence of %d characters", self.name, len(sentence))
            await self.push_error(f"{self.name}: {exc}")
            return
        while next_word < len(words):
            await self.push_frame(TTSTextFrame(words[next_word]))
            next_word += 1

    async def cleanup(self) -> None:
        """Stop the worker."""
        await self.cancel_task(self._worker)
        await super().cleanup()


def describe(service: Any) -> str:
    """A short name for logs: class and voice/model."""
    detail = getattr(service, "voice", "") or getattr(service, "model", "")
    return f"{type(service).__name__}({detail})" if detail else type(service).__name__
