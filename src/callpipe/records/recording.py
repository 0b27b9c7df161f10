"""A call's stereo recording, written to disk as the call happens.

Left channel: the caller. Right channel: the bot *as the caller heard it* - each chunk
of bot audio is placed at the time it plays, and whatever a barge-in cleared before it
played is cut out. 16-bit PCM WAV at the call's wire rate.

Split in two so the audio path stays cheap:

* :class:`CallRecorder` lives on the event loop. Per 20 ms frame it only appends the
  *encoded* wire payload to a buffer: the caller's, or the bot's current run (chunks that
  play back to back, with the play time of the first). Once a second one timer per event
  loop hands what every call has accumulated and has played by then to the
  writer thread as *one* job (not one timer, job and thread hand-off per call).
* :class:`WavWriter` runs in that thread: it decodes, lays the bot's chunks on the
  caller's timeline, interleaves and appends to the file, and rewrites the RIFF and
  ``data`` sizes after every flush, so a ``kill -9`` leaves a file that plays up to about
  the last second. Nothing of the call is held in memory beyond that second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import struct
import time
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np
import numpy.typing as npt

from callpipe.audio.codecs import Codec
from callpipe.audio.resample import StreamResampler

__all__ = ["CallRecorder", "WavWriter", "recording_path"]

logger = logging.getLogger("callpipe.records")

FLUSH_SECS = 1.0
# A loop's recordings are flushed in this many groups, one every FLUSH_SECS / FLUSH_SLICES.
FLUSH_SLICES = 10
# Bot chunks this close in time are one run (the output's clock is exact; floats are not).
_CONTIGUOUS_SECS = 0.0005
# One thread: jobs run in order (a call's final write after its last batch), and the
# work is a few syscalls and small NumPy steps per call-second, never parallel under the GIL.
_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="callpipe-recording")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def recording_path(directory: str | Path, call_control_id: str, started_at: float) -> Path:
    """``DIR/YYYY-MM-DD/<call id>.wav`` (the id made safe for a file name)."""
    day = time.strftime("%Y-%m-%d", time.gmtime(started_at))
    return Path(directory) / day / f"{_UNSAFE.sub('_', call_control_id)[:120]}.wav"


_HEADER_BYTES = 44


def _wav_header(rate: int, data_bytes: int) -> bytes:
    channels, width = 2, 2
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        channels,
        rate,
        rate * channels * width,
        channels * width,
        8 * width,
        b"data",
        data_bytes,
    )


class WavWriter:
    """Appends stereo frames to a WAV file; only ever called from one thread at a time.

    ``write(caller, bot, pad_to, final, shift)``: ``caller`` is caller PCM (mono int16
    at ``rate``) continuing the left channel; ``bot`` a list of ``(sample position, PCM)``
    for the right channel; ``pad_to`` a position the left channel must at least reach
    (silence fills a stall); ``shift`` moves the caller's audio to keep it on the
    recording's clock: a positive shift drops that many caller samples (from this write
    on), a negative one, given before anything was written, starts the left channel with
    that much silence. Right-channel audio past the left channel's end waits for the next
    write (or is written by the final one).
    """

    def __init__(self, path: Path, rate: int) -> None:
        self.path = path
        self.rate = rate
        self.written = 0  # stereo frames in the file
        self._left = np.zeros(0, dtype=np.int16)  # caller audio not yet written
        self._right: list[tuple[int, npt.NDArray[np.int16]]] = []  # bot audio not yet written
        self._skip = 0  # caller samples still to drop (a shift larger than one write's audio)
        self._file: BinaryIO | None = None

    def open(self) -> BinaryIO:
        """Create the file with an empty WAV header (done by the first write otherwise)."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Unbuffered: every write is a positioned os.pwrite of a whole flush.
            self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115 - kept open for the whole call
            self._file.write(_wav_header(self.rate, 0))
        return self._file

    def write(
        self, caller: bytes, bot: list[tuple[int, bytes]], pad_to: int, final: bool, shift: int = 0
    ) -> None:
        """Append what is complete; with ``final``, everything, and close the file."""
        file = self.open()
        left = self._shifted(np.frombuffer(caller, dtype=np.int16), shift)
        if len(self._left):
            left = np.concatenate([self._left, left])
        missing = pad_to - (self.written + len(left))
        if missing > 0:
            left = np.concatenate([left, np.zeros(missing, dtype=np.int16)])
        self._right.extend((pos, np.frombuffer(pcm, dtype=np.int16)) for pos, pcm in bot if pcm)
        end = self.written + len(left)
        if final and self._right:
            end = max(end, max(pos + len(pcm) for pos, pcm in self._right))
            left = np.concatenate([left, np.zeros(end - self.written - len(left), dtype=np.int16)])
        count = end - self.written
        right = np.zeros(count, dtype=np.int16)
        keep: list[tuple[int, npt.NDArray[np.int16]]] = []
        for pos, pcm in self._right:
            start = max(pos, self.written)  # audio placed before the file's end plays late
            offset = start - self.written
            take = min(len(pcm), count - offset)
            if take > 0:
                right[offset : offset + take] = pcm[:take]
            if take < len(pcm):
                keep.append((start + max(take, 0), pcm[max(take, 0) :]))
        self._right = keep
        self._left = left[count:]
        frames = np.empty(2 * count, dtype=np.int16)
        frames[0::2] = left[:count]
        frames[1::2] = right
        # Two positioned writes, no seeks: the audio, then the header with the new sizes,
        # so that the file is valid up to here if the process dies between or after them.
        fd = file.fileno()
        os.pwrite(fd, frames.data, _HEADER_BYTES + self.written * 4)
        self.written = end
        os.pwrite(fd, _wav_header(self.rate, self.written * 4), 0)
        if final:
            self.close()

    def _shifted(self, caller: npt.NDArray[np.int16], shift: int) -> npt.NDArray[np.int16]:
        if shift < 0 and self.written == 0 and not len(self._left):
            return np.concatenate([np.zeros(-shift, dtype=np.int16), caller])
        self._skip += max(0, shift)
        drop = min(self._skip, len(caller))
        self._skip -= drop
        return caller[drop:]

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None


class _Decoder:
    """Wire payloads -> PCM at the recording's rate (in the writer's thread)."""

    def __init__(self, codec: Codec, rate: int) -> None:
        self.codec = codec.new_instance()
        self.resampler = StreamResampler(codec.sample_rate, rate) if codec.sample_rate != rate else None

    def decode(self, payload: bytes) -> bytes:
        pcm = self.codec.decode(payload)
        return self.resampler.process(pcm) if self.resampler is not None else pcm


class CallRecorder:
    """The loop side of one call's recording: buffers payloads, flushes about every second.

    ``caller(payload)`` and ``bot(payload, plays_at)`` are the only per-frame calls: two
    buffer appends. ``cut(now)`` drops bot audio that has not played yet
    (barge-in). ``close()`` writes the rest and closes the file.
    """

    def __init__(self, path: Path, *, caller_codec: Codec, bot_codec: Codec, started: float) -> None:
        self.path = path
        self.rate = caller_codec.sample_rate
        self._caller_codec = caller_codec
        self._caller_chunk = caller_codec.payload_bytes(20)
        self._bot_byte_rate = bot_codec.payload_bytes(20) * 50.0
        self._caller_decoder = _Decoder(caller_codec, self.rate)
        self._bot_decoder = _Decoder(bot_codec, self.rate)
        self._writer = WavWriter(path, self.rate)
        self._started = started
        self._caller = bytearray()
        self._caller_samples = 0  # caller samples handed to the writer or buffered
        self._lead: int | None = None  # caller samples the stream had sent at ``started``
        # Runs of contiguous bot audio: [play time of the first byte, encoded payload].
        self._bot: list[list[Any]] = []
        self._bot_end = 0.0  # when the last run stops playing
        self._flusher: _LoopFlusher | None = None
        self._closed = False
        self.failed = False

    def start(self) -> None:
        """Create the file (in the writer's thread); flush with the running loop's others."""
        _EXECUTOR.submit(self._open)
        self._flusher = _LoopFlusher.of(asyncio.get_running_loop())
        self._flusher.add(self)

    def _open(self) -> None:
        try:
            self._writer.open()
        except Exception:
            self.failed = True
            logger.exception("could not create the recording %s; the call goes on without it", self.path)

    # ----------------------------------------------------------- per frame

    def caller(self, payload: bytes) -> None:
        """One frame of caller audio, as it arrived (encoded)."""
        self._caller += payload

    def bot(self, payload: bytes, plays_at: float) -> None:
        """One chunk of bot audio sent to the caller, which plays at ``plays_at``."""
        # A reply's chunks play back to back: appended to one run, so that the once-a-
        # second flush and the decoder handle a run, not fifty chunks.
        runs = self._bot
        if runs and abs(plays_at - self._bot_end) < _CONTIGUOUS_SECS:
            runs[-1][1] += payload
        else:
            runs.append([plays_at, bytearray(payload)])
        self._bot_end = plays_at + len(payload) / self._bot_byte_rate

    def cut(self, now: float) -> None:
        """A barge-in cleared the caller's playback at ``now``: drop what had not played."""
        kept: list[list[Any]] = []
        for plays_at, payload in self._bot:
            if plays_at >= now:
                break
            played = self._played_bytes(plays_at, now)
            if played < len(payload):
                del payload[played:]
            kept.append([plays_at, payload])
        self._bot = kept
        # New audio continues a kept run only if it starts where that run now ends.
        self._bot_end = kept[-1][0] + len(kept[-1][1]) / self._bot_byte_rate if kept else float("-inf")

    def _played_bytes(self, plays_at: float, now: float) -> int:
        """How much of a run that started at ``plays_at`` has played by ``now`` (whole samples)."""
        played = round((now - plays_at) * self._bot_byte_rate)
        return played - played % 2

    # ------------------------------------------------------------- flushing

    def _take(self, now: float, final: bool) -> tuple[bytes, list[tuple[int, bytes]], int, int]:
        caller = bytes(self._caller)
        self._caller.clear()
        self._caller_samples += len(caller) * (self.rate // 50) // max(1, self._caller_chunk)
        shift = self._align(now)
        bot: list[tuple[int, bytes]] = []
        runs = self._bot
        # Only what has played by now: a barge-in after this flush can still cut the rest.
        while runs and runs[0][0] <= now:
            at, payload = runs[0]
            played = self._played_bytes(at, now)
            whole = played >= len(payload)
            if whole:
                del runs[0]
                taken = bytes(payload)
            else:  # still playing: the rest stays, starting where this part ends
                taken = bytes(payload[:played])
                del payload[:played]
                runs[0][0] = at + played / self._bot_byte_rate
            if taken:
                bot.append((max(0, round((at - self._started) * self.rate)), taken))
            if not whole:
                break
        # The caller's stream is the clock (Telnyx sends audio every 20 ms, silence
        # included): audio that arrives late after a stall on this side was only delayed,
        # not missing, so nothing is padded mid-call. At the end, a stream that stopped
        # early is filled up to the call's end.
        pad_to = int((now - self._started) * self.rate) if final else 0
        return caller, bot, pad_to, shift

    def _align(self, now: float) -> int:
        """How far to shift the caller's audio so that sample 0 is ``started``.

        The bot's audio is placed by the clock, the caller's by counting samples, and the
        stream starts before the record does (Telnyx streams from its ``start`` message;
        the record opens once that is parsed and the stream's token checked, later under
        load). A real-time stream has sent at most ``(now - t0) * rate`` samples by
        ``now``, so ``received - (now - started) * rate`` is a lower bound of what it had
        sent at ``started``: the largest bound seen so far is the caller's lead, and the
        caller's audio is shifted by it (trimmed, or padded if the stream began later).
        A lead that grows later (a backlog read late, a sender's faster clock) trims a
        little more then; a smaller one changes nothing.
        """
        lead = self._caller_samples - int((now - self._started) * self.rate)
        if self._lead is None:
            self._lead = lead
            return lead
        if lead <= self._lead:
            return 0
        shift, self._lead = lead - self._lead, lead
        return shift

    def _flush(self, *, final: bool, now: float | None = None) -> concurrent.futures.Future[None] | None:
        if self.failed:
            return None
        now = time.monotonic() if now is None else now
        caller, bot, pad_to, shift = self._take(now, final)
        return _EXECUTOR.submit(self._write, caller, bot, pad_to, final, shift)

    def _write(
        self, caller: bytes, bot: list[tuple[int, bytes]], pad_to: int, final: bool, shift: int
    ) -> None:
        try:
            pcm = self._caller_decoder.decode(caller) if caller else b""
            decoded = [(pos, self._bot_decoder.decode(payload)) for pos, payload in bot]
            self._writer.write(pcm, decoded, pad_to, final, shift)
        except Exception:
            self.failed = True
            logger.exception("recording to %s failed; the call goes on without it", self.path)
            with contextlib.suppress(Exception):
                self._writer.close()

    async def close(self) -> None:
        """Write what is left (waiting for the writer) and close the file."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            self._flusher.remove(self)
        # The one writer thread runs jobs in order: this comes after any batch in flight.
        future = self._flush(final=True)
        if future is not None:
            await asyncio.wrap_future(future)

    @property
    def duration_secs(self) -> float:
        """Seconds written to the file so far."""
        return self._writer.written / self.rate


_Batch = list[tuple[CallRecorder, tuple[bytes, list[tuple[int, bytes]], int, int]]]


class _LoopFlusher:
    """Every live recording of one event loop flushed once a second, a tenth at a time.

    The recordings are spread over :data:`FLUSH_SLICES` slots, and every
    ``FLUSH_SECS / FLUSH_SLICES`` one slot's are taken and written as one writer job. All
    at once, the writer's burst (decoding, interleaving, a write per file) held the GIL
    against the event loop for tens of milliseconds at 240 calls, once a second, and under
    load the calls' audio went out late. If a slot's previous job is still running (a slow
    disk), its tick is skipped: those calls keep buffering and the next tick takes it all.
    """

    _by_loop: ClassVar[dict[asyncio.AbstractEventLoop, _LoopFlusher]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # Insertion-ordered sets, one per slot.
        self.slots: list[dict[CallRecorder, None]] = [{} for _ in range(FLUSH_SLICES)]
        self._slot_of: dict[CallRecorder, int] = {}
        self._next_slot = 0
        self._timer: asyncio.TimerHandle | None = None
        self._pending: list[concurrent.futures.Future[None] | None] = [None] * FLUSH_SLICES

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _LoopFlusher:
        """The loop's flusher (made on first use, dropped when its last recording closes)."""
        flusher = cls._by_loop.get(loop)
        if flusher is None:
            flusher = cls._by_loop[loop] = cls(loop)
        return flusher

    def add(self, recorder: CallRecorder) -> None:
        """Flush ``recorder`` once a second, in the slot with the fewest recordings."""
        slot = min(range(FLUSH_SLICES), key=lambda index: len(self.slots[index]))
        self.slots[slot][recorder] = None
        self._slot_of[recorder] = slot
        if self._timer is None:
            self._timer = self.loop.call_later(FLUSH_SECS / FLUSH_SLICES, self._tick)

    def remove(self, recorder: CallRecorder) -> None:
        """``recorder`` is closing (it writes its own final flush)."""
        slot = self._slot_of.pop(recorder, None)
        if slot is not None:
            self.slots[slot].pop(recorder, None)
        if not self._slot_of:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._by_loop.get(self.loop) is self:
                del self._by_loop[self.loop]

    def _tick(self) -> None:
        self._timer = self.loop.call_later(FLUSH_SECS / FLUSH_SLICES, self._tick)
        slot = self._next_slot
        self._next_slot = (slot + 1) % FLUSH_SLICES
        pending = self._pending[slot]
        if pending is not None and not pending.done():
            return
        now = time.monotonic()
        batch: _Batch = [(r, r._take(now, False)) for r in self.slots[slot] if not r.failed]
        self._pending[slot] = _EXECUTOR.submit(_write_batch, batch) if batch else None


def _write_batch(batch: _Batch) -> None:
    for recorder, (caller, bot, pad_to, shift) in batch:
        recorder._write(caller, bot, pad_to, False, shift)  # each catches its own failure
