"""The pure parts of call records: turns, heard text and latency from timed events; the
custom-fields API; the WAV writer; number masking. No sockets."""

from __future__ import annotations

import asyncio
import itertools
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callpipe.audio.codecs import get_codec
from callpipe.log import mask_number
from callpipe.records.model import CallRecord, Latency, ToolCall
from callpipe.records.observer import CallObserver, RecordFields, provider_name
from callpipe.records.recording import FLUSH_SLICES, CallRecorder, WavWriter, _LoopFlusher, recording_path
from callpipe.records.sink import MemorySink
from callpipe.records.timeline import Timeline

T0 = 1000.0


def _timeline() -> tuple[Timeline, CallRecord, list[tuple[Latency, bool]]]:
    record = CallRecord(call_control_id="c1")
    reported: list[tuple[Latency, bool]] = []
    timeline = Timeline(
        record, started=T0, to_wall=lambda t: t + 1e9, on_latency=lambda lat, g: reported.append((lat, g))
    )
    return timeline, record, reported


def test_greeting_then_a_turn_with_every_latency_stage() -> None:
    tl, record, reported = _timeline()
    tl.llm_first_token(T0 + 0.5)
    tl.bot_text("Hello there.", T0 + 0.51)
    tl.tts_first_audio(T0 + 0.6)
    tl.audio_sent(T0 + 0.61)
    tl.heard(T0 + 0.7)
    for word in ("Hello", "there."):
        tl.bot_word_queued(word, T0 + 0.62)
        tl.heard_word(word, T0 + 0.9)
    tl.reply_ended(T0 + 0.8)
    tl.bot_stopped(T0 + 1.5)
    # The caller speaks; their speech ends at +3.0, the VAD says so at +3.3.
    tl.caller_started(T0 + 2.0)
    tl.caller_stopped(T0 + 3.0, T0 + 3.3)
    tl.transcript("what time is it", T0 + 3.4)
    tl.llm_first_token(T0 + 3.5)
    tl.bot_text("It is noon.", T0 + 3.5)
    tl.tts_first_audio(T0 + 3.6)
    tl.audio_sent(T0 + 3.65)
    tl.heard(T0 + 3.7)
    tl.heard_word("It", T0 + 3.8)

    greeting, caller, reply = record.turns
    assert (greeting.speaker, greeting.text, greeting.heard_text) == ("bot", "Hello there.", "Hello there.")
    assert greeting.latency == Latency(
        llm_first_token_ms=500.0, tts_first_audio_ms=600.0, first_audio_sent_ms=610.0, heard_ms=700.0
    )
    assert greeting.ended_at == T0 + 1.5 + 1e9
    assert (caller.speaker, caller.text) == ("caller", "what time is it")
    assert (caller.started_at, caller.ended_at) == (T0 + 2.0 + 1e9, T0 + 3.0 + 1e9)
    assert reply.latency == Latency(
        vad_stop_ms=300.0,
        stt_final_ms=400.0,
        llm_first_token_ms=500.0,
        tts_first_audio_ms=600.0,
        first_audio_sent_ms=650.0,
        heard_ms=700.0,
    )
    assert reply.heard_text == "It" and not reply.interrupted
    # /metrics: the greeting is reported as such (and left out of the stage histograms).
    assert [g for _, g in reported] == [True, False]


def test_a_final_transcript_before_the_vad_stop_counts_for_the_next_turn() -> None:
    tl, record, _ = _timeline()
    tl.caller_started(T0 + 1.0)
    tl.transcript("hello", T0 + 2.1)  # a streaming STT finalised first
    tl.caller_stopped(T0 + 2.0, T0 + 2.3)
    tl.llm_first_token(T0 + 2.4)
    tl.bot_text("Hi.", T0 + 2.4)
    latency = record.turns[-1].latency
    assert latency is not None
    assert (latency.stt_final_ms, latency.vad_stop_ms, latency.llm_first_token_ms) == (100.0, 300.0, 400.0)


def test_model_worker_queue_waits_join_the_turn_they_delayed() -> None:
    tl, record, _ = _timeline()
    tl.tts_queue_wait(0.02, T0 + 0.1)  # the greeting's first sentence waited for Piper
    tl.bot_text("Hello.", T0 + 0.1)
    tl.tts_first_audio(T0 + 0.2)
    tl.tts_queue_wait(0.5, T0 + 0.3)  # a later sentence: not on the path to first audio
    tl.audio_sent(T0 + 0.21)
    tl.reply_ended(T0 + 0.3)
    tl.bot_stopped(T0 + 1.0)
    greeting = record.turns[0]
    assert greeting.latency is not None
    assert (greeting.latency.stt_queue_wait_ms, greeting.latency.tts_queue_wait_ms) == (None, 20.0)
    assert greeting.latency.queue_wait_ms == 20.0

    tl.caller_started(T0 + 2.0)
    tl.stt_queue_wait(0.9, T0 + 2.4)  # a speculative transcription, dropped and run again:
    tl.stt_queue_wait(0.1, T0 + 2.45)  # the last wait counts, not the sum
    tl.caller_stopped(T0 + 2.3, T0 + 2.5)
    tl.transcript("book me in", T0 + 2.6)
    tl.llm_first_token(T0 + 2.7)
    tl.tts_queue_wait(0.25, T0 + 2.8)
    tl.bot_text("Done.", T0 + 2.8)
    tl.tts_first_audio(T0 + 3.1)
    tl.stt_queue_wait(2.0, T0 + 3.2)  # the next utterance's, after this reply started
    reply = record.turns[-1].latency
    assert reply is not None
    assert (reply.stt_queue_wait_ms, reply.tts_queue_wait_ms, reply.queue_wait_ms) == (100.0, 250.0, 350.0)
    # Without shared model workers (cloud providers) there is no queue wait at all.
    assert record.turns[1].speaker == "caller"
    plain = _timeline()
    plain[0].bot_text("Hi.", T0)
    assert plain[1].turns[0].latency is not None and plain[1].turns[0].latency.queue_wait_ms is None


def test_barge_in_cuts_the_turn_and_keeps_what_was_heard() -> None:
    tl, record, _ = _timeline()
    tl.bot_text("One two three four five.", T0 + 0.1)
    tl.audio_sent(T0 + 0.2)
    tl.heard_word("One", T0 + 0.5)
    tl.heard_word("two", T0 + 0.8)
    tl.caller_started(T0 + 0.9)
    assert tl.interrupted(T0 + 0.95, cut=True)
    tl.heard_word("late", T0 + 1.0)  # nothing is open any more: ignored
    turn = record.turns[0]
    assert turn.interrupted and turn.text == "One two three four five." and turn.heard_text == "One two"
    assert turn.ended_at == T0 + 0.95 + 1e9


def test_an_interruption_after_the_whole_reply_played_is_not_a_cut() -> None:
    tl, record, _ = _timeline()
    tl.bot_text("Done.", T0)
    tl.audio_sent(T0 + 0.1)
    tl.reply_ended(T0 + 0.1)
    assert tl.interrupted(T0 + 2.0, cut=False)
    assert not record.turns[0].interrupted


def test_words_without_a_tts_service_become_the_text_and_tools_join_the_turn() -> None:
    tl, record, _ = _timeline()
    tl.audio_sent(T0 + 0.1)
    for word in ("canned", "reply"):
        tl.bot_word_queued(word, T0 + 0.1)
    tl.tool_call(ToolCall(name="end_call"), T0 + 0.2)
    assert record.turns[0].text == "canned reply"
    assert [c.name for c in record.turns[0].tool_calls] == ["end_call"]


def test_record_fields_accept_json_and_reject_the_rest() -> None:
    sink = MemorySink()
    observer = CallObserver(CallRecord(call_control_id="c2"), sink)
    fields = observer.fields
    fields.set(outcome="booked", when={"day": "mon", "slots": [1, 2]})
    fields.custom["crm_id"] = "A-17"
    with pytest.raises(TypeError, match=r"'bad'.*not JSON-serializable"):
        fields.set(bad=complex(1, 2))
    with pytest.raises(TypeError):
        fields.custom["worse"] = object()
    assert observer.record.custom == {
        "outcome": "booked",
        "when": {"day": "mon", "slots": [1, 2]},
        "crm_id": "A-17",
    }
    assert sink.live["c2"] is observer.record and fields.call_control_id == "c2"
    detached = RecordFields()  # outside callpipe serve: kept locally, no error
    detached.set(x=1)
    assert detached.get("x") == 1 and detached.call_control_id is None


def test_end_reason_first_noted_wins() -> None:
    observer = CallObserver(CallRecord(call_control_id="c3"), MemorySink())
    observer.note_end("transferred", "bot")
    observer.note_end("caller_hangup", "caller")
    assert observer.end_noted == "transferred"


def test_provider_names_and_masked_numbers() -> None:
    class DeepgramSTTService:
        model = "nova-3"

    assert provider_name(DeepgramSTTService()) == "deepgram:nova-3"
    assert mask_number("+15551234567") == "+1555•••4567"
    assert mask_number(None) == "-" and mask_number("1234") == "•••34"


def test_wav_writer_is_valid_after_every_write_and_places_the_bot_in_time(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    writer = WavWriter(path, 8000)
    caller = (np.ones(8000, dtype=np.int16) * 100).tobytes()
    bot = (np.ones(800, dtype=np.int16) * 200).tobytes()
    writer.write(caller, [(4000, bot), (7600, bot)], pad_to=0, final=False)
    with wave.open(str(path)) as wav:  # readable before the end: sizes are rewritten per write
        assert (wav.getnchannels(), wav.getframerate(), wav.getnframes()) == (2, 8000, 8000)
        frames = np.frombuffer(wav.readframes(8000), dtype=np.int16).reshape(-1, 2)
    assert (frames[:, 0] == 100).all()
    assert (frames[3999:4801, 1] == [0, *[200] * 800, 0]).all()
    assert (frames[7600:, 1] == 200).all()  # 400 of 800 samples; the rest waits
    writer.write(b"", [], pad_to=8800, final=True)  # the caller's stream ended early: padded
    with wave.open(str(path)) as wav:
        assert wav.getnframes() == 8800
        frames = np.frombuffer(wav.readframes(8800), dtype=np.int16).reshape(-1, 2)
    assert (frames[8000:8400, 1] == 200).all() and (frames[8400:, 1] == 0).all()
    assert (frames[8000:, 0] == 0).all()


async def test_recorder_cut_drops_bot_audio_that_had_not_played(tmp_path: Path) -> None:
    codec = get_codec("PCMU")
    chunk = codec.encode((np.ones(160, dtype=np.int16) * 3000).tobytes())
    path = recording_path(tmp_path, "v3:abc/def", 1_700_000_000.0)
    assert path.name == "v3_abc_def.wav" and path.parent.name == "2023-11-14"
    recorder = CallRecorder(path, caller_codec=codec, bot_codec=codec, started=T0)
    for i in range(10):
        recorder.bot(chunk, T0 + i * 0.02)
    recorder.bot(chunk, T0 + 0.5)  # a second reply, after a pause
    assert [(at, len(audio)) for at, audio in recorder._bot] == [(T0, 1600), (T0 + 0.5, 160)]
    recorder.cut(T0 + 0.05)  # mid-way through the third chunk
    assert [(at, len(audio)) for at, audio in recorder._bot] == [(T0, 400)]  # 2.5 chunks played
    # New audio that starts where the cut audio would have gone on is a new run, not more of it.
    recorder.bot(chunk, T0 + 0.2)
    assert [(at, len(audio)) for at, audio in recorder._bot] == [(T0, 400), (T0 + 0.2, 160)]


def test_a_flush_takes_only_the_bot_audio_that_has_played(tmp_path: Path) -> None:
    codec = get_codec("PCMU")
    chunk = codec.encode((np.ones(160, dtype=np.int16) * 3000).tobytes())
    recorder = CallRecorder(tmp_path / "a.wav", caller_codec=codec, bot_codec=codec, started=T0)
    for i in range(10):  # 0.2 s of reply, sent ahead of time
        recorder.bot(chunk, T0 + 0.9 + i * 0.02)
    _, bot, _, _ = recorder._take(T0 + 1.0, False)
    assert [(pos, len(audio)) for pos, audio in bot] == [(7200, 800)]  # 0.1 s had played
    recorder.cut(T0 + 1.05)  # a barge-in after the flush still cuts what had not played
    _, bot, _, _ = recorder._take(T0 + 2.0, False)
    assert [(pos, len(audio)) for pos, audio in bot] == [(8000, 400)]
    assert recorder._bot == []


def _tone(codec: Any, level: int, secs: float) -> list[bytes]:
    frame = codec.encode((np.ones(160, dtype=np.int16) * level).tobytes())
    return [frame] * round(secs / 0.02)


def _recorded(path: Path) -> Any:
    with wave.open(str(path)) as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16).reshape(-1, 2)


@pytest.mark.parametrize(
    ("stream_start", "first_caller_sample"),
    [
        (-0.3, 0),  # the stream began 0.3 s before the record opened: its first 0.3 s is cut
        (0.2, 1600),  # it began 0.2 s after: the left channel starts with 0.2 s of silence
    ],
)
def test_the_caller_channel_is_kept_on_the_record_clock(
    tmp_path: Path, stream_start: float, first_caller_sample: int
) -> None:
    # The bot's audio is placed by the clock; the caller's must be too, or the bot side
    # shifts against it (bot audio heard after a barge-in, in the full-call test).
    codec = get_codec("PCMU")
    recorder = CallRecorder(tmp_path / "a.wav", caller_codec=codec, bot_codec=codec, started=T0)
    before = max(0.0, -stream_start)
    for frame in _tone(codec, 1000, before) + _tone(codec, 5000, 1.0 - stream_start - before):
        recorder.caller(frame)  # everything the stream sent by T0 + 1 s
    for i, frame in enumerate(_tone(codec, 3000, 0.2)):
        recorder.bot(frame, T0 + 0.5 + i * 0.02)
    future = recorder._flush(final=False, now=T0 + 1.0)
    assert future is not None
    future.result()
    for frame in _tone(codec, 5000, 1.0):
        recorder.caller(frame)
    future = recorder._flush(final=True, now=T0 + 2.0)
    assert future is not None
    future.result()
    frames = _recorded(tmp_path / "a.wav")
    assert len(frames) == 16000
    left = np.abs(frames[:, 0].astype(np.int32))
    assert (left[:first_caller_sample] == 0).all()
    assert (np.abs(left[first_caller_sample:] - 5000) < 200).all()  # no pre-start audio kept
    right = np.abs(frames[:, 1].astype(np.int32))
    assert (right[4000:5600] > 2800).all() and not right[:4000].any() and not right[5600:].any()


def test_a_caller_backlog_read_late_trims_once_the_lead_shows(tmp_path: Path) -> None:
    codec = get_codec("PCMU")
    recorder = CallRecorder(tmp_path / "a.wav", caller_codec=codec, bot_codec=codec, started=T0)
    # The stream began 0.1 s before the record, but only 0.5 s had been read by the first
    # flush (a stalled loop): no lead shows yet, so the left channel starts padded...
    for frame in _tone(codec, 5000, 0.5):
        recorder.caller(frame)
    future = recorder._flush(final=False, now=T0 + 1.0)
    assert future is not None
    future.result()
    # ...then the backlog is read: 1.6 s received by T0 + 1.5 s shows the 0.1 s lead.
    for frame in _tone(codec, 5000, 1.1):
        recorder.caller(frame)
    recorder.bot(_tone(codec, 3000, 0.02)[0], T0 + 1.2)
    future = recorder._flush(final=True, now=T0 + 1.5)
    assert future is not None
    future.result()
    frames = _recorded(tmp_path / "a.wav")
    # 0.5 s padded, then 1.6 s of caller audio less 0.6 s trimmed (the lead went -0.5 s to +0.1 s).
    assert len(frames) == 12000
    assert not frames[:4000, 0].any() and (np.abs(frames[4000:, 0].astype(np.int32)) > 4800).all()
    assert (np.abs(frames[9600:9760, 1].astype(np.int32)) > 2800).all()


def test_turn_latency_feeds_one_histogram_per_stage() -> None:
    from callpipe import metrics
    from callpipe.records import stats

    def count(stage: str) -> float:
        text = metrics.REGISTRY.render().decode()
        line = f'callpipe_turn_stage_latency_seconds_count{{stage="{stage}"}}'
        return next((float(x.split()[-1]) for x in text.splitlines() if x.startswith(line)), 0.0)

    before = {stage: count(stage) for stage in ("vad_stop", "heard", "stt_final")}
    stats.turn_latency(Latency(vad_stop_ms=200.0, heard_ms=650.0), greeting=False)
    stats.turn_latency(Latency(vad_stop_ms=1.0, heard_ms=2.0), greeting=True)  # not a reply: left out
    assert count("vad_stop") == before["vad_stop"] + 1 and count("heard") == before["heard"] + 1
    assert count("stt_final") == before["stt_final"]  # null stages are not observed


async def test_recordings_are_flushed_a_tenth_at_a_time_each_once_a_second(tmp_path: Path) -> None:
    codec = get_codec("PCMU")
    frame = codec.encode(np.zeros(160, dtype=np.int16).tobytes())
    started = time.monotonic()
    recorders = [
        CallRecorder(tmp_path / f"{i}.wav", caller_codec=codec, bot_codec=codec, started=started)
        for i in range(25)
    ]
    for recorder in recorders:
        recorder.start()
    flusher = _LoopFlusher.of(asyncio.get_running_loop())
    try:
        assert sorted(len(slot) for slot in flusher.slots) == [2] * 5 + [3] * 5
        for recorder in recorders:
            recorder.caller(frame)
        taken: list[int] = []
        for _ in range(FLUSH_SLICES):
            assert flusher._timer is not None
            flusher._timer.cancel()  # the test drives the ticks
            flusher._tick()
            taken.append(sum(1 for recorder in recorders if not recorder._caller))
        # Each tick takes one slot (2 or 3 recordings); after ten, every one once.
        steps = [after - before for before, after in itertools.pairwise([0, *taken])]
        assert all(step in (2, 3) for step in steps) and taken[-1] == 25, taken
        for future in flusher._pending:
            assert future is not None
            await asyncio.wrap_future(future)
        # Each file got its frame (less the stream's lead before ``started``, on the clock).
        assert all(recorder.duration_secs > 0 for recorder in recorders)
    finally:
        for recorder in recorders:
            await recorder.close()
    assert asyncio.get_running_loop() not in _LoopFlusher._by_loop
