"""CPU cost of a call's record and recording per call-second: ``python3 bench/bench_records.py``.

What ``callpipe serve`` adds to every call, without sockets: 50 caller and 50 bot frames
handed to the recorder per second, one recording flush (decode, lay out, interleave,
append, rewrite the sizes), the observer's events of one turn every 3 s (VAD, transcript,
LLM/TTS stages, heard words) and the store's encoding of the record at each of its two
flushes per second. Measured in CPU time (``time.process_time``), which a busy machine
inflates less than wall time; compare with the bot's CPU per call-second in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from callpipe.audio.codecs import get_codec
from callpipe.records.model import CallRecord
from callpipe.records.observer import CallObserver
from callpipe.records.recording import CallRecorder
from callpipe.records.sink import MemorySink

WORDS = ["sure", "we", "have", "openings", "on", "monday", "morning", "and", "tuesday", "afternoon"]


def one_call(seconds: int, directory: Path) -> float:
    """CPU seconds spent on the record and recording of a ``seconds``-long call."""
    codec = get_codec("PCMU")
    rng = np.random.default_rng(1)
    chunk = codec.encode(rng.integers(-3000, 3000, 160).astype(np.int16).tobytes())
    base = time.monotonic()
    observer = CallObserver(CallRecord(call_control_id=f"bench-{seconds}"), MemorySink())
    recorder = CallRecorder(directory / "call.wav", caller_codec=codec, bot_codec=codec, started=base)
    started = time.process_time()
    for second in range(seconds):
        for i in range(50):
            recorder.caller(chunk)
            recorder.bot(chunk, base + second + i * 0.02)
        if second % 3 == 0:
            observer.caller_started()
            observer.caller_stopped(time.monotonic())
            observer.transcript("what times do you have")
            observer.llm_first_token()
            observer.bot_text(" ".join(WORDS))
            observer.tts_first_audio()
            observer.audio_started(time.monotonic())
            observer.heard()
            for word in WORDS:
                observer.word_queued(word)
                observer.word_heard(word)
            observer.reply_ended()
            observer.bot_stopped()
        # (in the writer's thread in a real call)
        caller, bot, pad, shift = recorder._take(base + second + 1.0, False)
        recorder._write(caller, bot, pad, False, shift)
        msgspec.json.encode(observer.record)  # the store's two flushes per second
        msgspec.json.encode(observer.record)
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=300, help="length of the simulated call")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        runs = [one_call(args.seconds, Path(directory)) / args.seconds for _ in range(args.repeat)]
    best = min(runs)
    print(
        f"records + recording: {best * 1e6:.0f} µs CPU per call-second (best of {args.repeat}, {args.seconds} s calls)"
    )


if __name__ == "__main__":
    main()
