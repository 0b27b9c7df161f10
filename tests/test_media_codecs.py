"""Per-direction codecs end to end: each codec pair through ``/start``, the fake Call Control
API and a simulated callee on a real WebSocket, and a PCMA dial-in answered in PCMU.

The callee speaks its own codec (what Telnyx sends, ``start.media_format``) and decodes
the bot's audio with the stream's bidirectional codec (what the dial asked for). The
bot must hear the caller's words as they were said (its input audio correlates with the
source speech; its VAD took the turn, so it replied) and the callee must hear the bot's
greeting decoded right (correlation with the source at the bidirectional rate). A codec
mix-up on either side (A-law read as μ-law, 16 kHz L16 played as 8 kHz) fails both.
"""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from callpipe.audio import StreamResampler
from callpipe.pipeline.frames import Frame, InputAudioRawFrame
from callpipe.pipeline.pipeline import Pipeline
from callpipe.pipeline.processor import FrameDirection, FrameProcessor
from callpipe.pipeline.task import PipelineParams, PipelineRunner, PipelineTask
from callpipe.records.model import CallRecord
from callpipe.records.sink import MemorySink
from callpipe.runner import RunnerArguments, create_telnyx_transport
from callpipe.server.app import create_app
from callpipe.server.background import BackgroundServer, free_port
from callpipe.server.settings import ServerSettings
from callpipe.sim.bots import CannedReplyProcessor
from callpipe.sim.caller import CallerTurn, CallResult
from callpipe.sim.fake_api import FakeTelnyxSimulator, create_fake_telnyx_app
from callpipe.sim.fake_api.session import FakeCallSession
from callpipe.sim.texml import place_texml_call
from callpipe.telnyx.webhooks import generate_webhook_keypair

SECRET = "cp-secret-media-8812"
API_KEY = "cp-api-key-media-1123"
TELNYX_KEY = "KEY-telnyx-media-5532"
SPEECH_WAV = Path(__file__).resolve().parents[1] / "src" / "callpipe" / "sim" / "data" / "caller_8k.wav"
BOT_RATE = 16000  # the bot's own audio: wideband, so HD codecs carry what 8 kHz ones cannot


def _speech() -> bytes:
    with wave.open(str(SPEECH_WAV), "rb") as wav:
        assert wav.getframerate() == 8000 and wav.getnchannels() == 1
        return wav.readframes(wav.getnframes())


def _chirp(secs: float, f0: float, f1: float, rate: int = BOT_RATE) -> bytes:
    """A sweep from f0 to f1 Hz: every lag looks different, so correlation finds one peak."""
    t = np.arange(int(secs * rate)) / rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * secs))
    envelope = np.minimum(1.0, np.minimum(t, secs - t) / 0.02)  # no clicks at the ends
    return (0.3 * 32767 * envelope * np.sin(phase)).astype(np.int16).tobytes()


GREETING = _chirp(1.0, 300.0, 7000.0)
REPLY = _chirp(0.6, 5000.0, 400.0)


def _resample(pcm: bytes, rate: int, target: int) -> np.ndarray:
    if rate != target:
        resampler = StreamResampler(rate, target)
        pcm = resampler.process(pcm) + resampler.flush()
    return np.frombuffer(pcm, dtype=np.int16).astype(np.float64)


def best_correlation(received: np.ndarray, reference: np.ndarray) -> float:
    """The peak normalised cross-correlation of ``reference`` anywhere inside ``received``."""
    n, m = len(received), len(reference)
    assert n >= m > 0, (n, m)
    size = 1 << (n + m).bit_length()
    xcorr = np.fft.irfft(np.fft.rfft(received, size) * np.conj(np.fft.rfft(reference, size)), size)[
        : n - m + 1
    ]
    energy = np.concatenate([[0.0], np.cumsum(received * received)])
    window = np.sqrt(np.maximum(energy[m:] - energy[:-m], 1e-9))
    return float(np.max(xcorr / (window * np.linalg.norm(reference))))


# ----------------------------------------------------------------------------- the bot


@dataclass
class Heard:
    """What one bot run was given and heard."""

    call_data: dict[str, Any] = field(default_factory=dict)
    pcm: bytearray = field(default_factory=bytearray)
    rate: int = 0
    out_codec: str = ""
    out_rate: int = 0
    transport: Any = None


class _Ear(FrameProcessor):
    """Right after the input transport: keeps the caller's audio as the pipeline got it."""

    def __init__(self, heard: Heard) -> None:
        super().__init__()
        self._heard = heard

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self._heard.pcm += frame.audio
            self._heard.rate = frame.sample_rate
        await self.push_frame(frame, direction)


def _make_bot(runs: list[Heard]) -> Any:
    async def bot(runner_args: RunnerArguments) -> None:
        heard = Heard(call_data=dict(runner_args.call_data))
        runs.append(heard)
        transport = heard.transport = create_telnyx_transport(runner_args)  # with its Silero VAD
        codec = transport.serializer.out_codec
        heard.out_codec, heard.out_rate = codec.name, codec.sample_rate
        responder = CannedReplyProcessor(REPLY, BOT_RATE, greeting=GREETING)
        task = PipelineTask(
            Pipeline([transport.input(), _Ear(heard), responder, transport.output()]),
            params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=BOT_RATE),
        )
        await PipelineRunner().run(task)

    return bot


# ----------------------------------------------------------------------------- harness


@dataclass
class World:
    server: BackgroundServer
    sim: FakeTelnyxSimulator
    sink: MemorySink
    runs: list[Heard]
    signing_key: Any
    sim_api_base: str

    async def sim_session(self, ccid: str) -> FakeCallSession:
        """The fake's session of ``ccid`` once the call is over and its webhooks are sent."""
        deadline = time.monotonic() + 25
        while ccid not in self.sim.sessions or not self.sim.sessions[ccid].finished.is_set():
            assert time.monotonic() < deadline, "the simulated call did not finish"
            await asyncio.sleep(0.05)
        return self.sim.sessions[ccid]

    async def record(self, ccid: str) -> CallRecord:
        """The call's finished record."""
        deadline = time.monotonic() + 10
        while ccid not in self.sink.finished:
            assert time.monotonic() < deadline, f"no finished record for {ccid}; live: {list(self.sink.live)}"
            await asyncio.sleep(0.05)
        return self.sink.finished[ccid]


@contextmanager
def world(
    tmp_path: Path,
    *,
    callee_codec: str | None,
    callee_rate: int | None = None,
    script: list[CallerTurn] | None = None,
    **settings: Any,
) -> Iterator[World]:
    runs: list[Heard] = []
    port = free_port()
    signing_key, public_key = generate_webhook_keypair()
    sim = FakeTelnyxSimulator(
        # The connection's webhook URL (set in Telnyx's portal): every call event comes here.
        webhook_url=f"http://127.0.0.1:{port}/webhooks/telnyx",
        callee_silence_secs=0.8,
        max_call_secs=20.0,
        webhook_private_key=signing_key,
        callee_codec=callee_codec,
        callee_sample_rate=callee_rate,
        callee_script=lambda call: script or [CallerTurn(audio=_speech(), sample_rate=8000, text="hello")],
    )
    with BackgroundServer(create_fake_telnyx_app(TELNYX_KEY, simulator=sim)) as fake:
        values: dict[str, Any] = {
            "public_url": f"http://127.0.0.1:{port}",
            "telnyx_public_key": public_key,
            "callpipe_secret": SECRET,
            "callpipe_api_key": API_KEY,
            "telnyx_api_key": TELNYX_KEY,
            "telnyx_phone_number": "+15550002222",
            "dial_mode": "call_control",
            "telnyx_connection_id": "conn-media",
            "telnyx_api_base_url": fake.base_url + "/v2",
            "data_dir": str(tmp_path),
            "records": False,
            "recording": False,
            "max_call_secs": 30.0,
            **settings,
        }
        app = create_app(_make_bot(runs), ServerSettings(_env_file=None, **values))  # type: ignore[call-arg]
        sink = MemorySink()
        app.state.callpipe.record_sink = sink
        with BackgroundServer(app, port=port) as server:
            _wait_ready(server.base_url)  # models warm: the first greeting is not late
            yield World(server, sim, sink, runs, signing_key, fake.base_url + "/v2")


def _wait_ready(base_url: str) -> None:
    deadline = time.monotonic() + 60
    while httpx.get(f"{base_url}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.1)


async def dial(w: World, **stream: Any) -> CallResult:
    """Dial out through ``/start`` (with ``stream`` fields) and wait for the simulated call to end."""
    session = await w.sim_session(await start(w, **stream))
    assert session.result is not None, session.errors
    return session.result


async def start(w: World, **stream: Any) -> str:
    async with httpx.AsyncClient(base_url=w.server.base_url, timeout=10) as http:
        response = await http.post(
            "/start",
            json={"phone_number": "+15551234567", "body": {}, **stream},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    assert response.status_code == 200, response.text
    return str(response.json()["call_control_id"])


def check_both_ways(
    result: CallResult, heard: Heard, *, in_codec: str, out_codec: str, out_rate: int
) -> None:
    """The bot heard the caller's words; the caller heard the bot's greeting, decoded right."""
    assert heard.out_codec == out_codec and heard.out_rate == out_rate
    assert heard.call_data["outbound_encoding"] == in_codec  # what Telnyx sent (start.media_format)
    # The bot: its VAD took the caller's turn (it replied to it) ...
    (turn,) = result.turns
    assert turn.first_bot_audio_heard_at is not None, "the bot never answered the caller's turn"
    # ... and the audio it got is the caller's speech (decoded with the call's codec).
    assert heard.rate == 8000
    caller = best_correlation(
        np.frombuffer(bytes(heard.pcm), dtype=np.int16).astype(np.float64), _resample(_speech(), 8000, 8000)
    )
    assert caller > 0.9, f"the bot heard garbage from a {in_codec} call (correlation {caller:.2f})"
    # The caller: the greeting, decoded with the bidirectional codec at its rate.
    assert result.bot_sample_rate == out_rate
    bot_track = np.frombuffer(result.bot_track, dtype=np.int16).astype(np.float64)
    greeting = best_correlation(bot_track, _resample(GREETING, BOT_RATE, out_rate))
    assert greeting > 0.9, f"the caller heard garbage in {out_codec}/{out_rate} (correlation {greeting:.2f})"
    if out_rate == 16000:
        # HD for real: the sweep's top octave (4-7 kHz) reached the caller.
        spectrum = np.abs(np.fft.rfft(bot_track))
        freqs = np.fft.rfftfreq(len(bot_track), 1 / out_rate)
        high = (
            spectrum[(freqs > 4500) & (freqs < 6500)].sum() / spectrum[(freqs > 500) & (freqs < 3500)].sum()
        )
        assert high > 0.3, f"no wideband audio in {out_codec} ({high:.2f})"


PAIRS = [
    # (callee's codec, its rate, /start's stream fields, expected in, out codec, out rate)
    pytest.param("PCMU", None, {}, "PCMU", "PCMU", 8000, id="PCMU-PCMU"),
    pytest.param("PCMA", None, {"stream_bidirectional_codec": "PCMA"}, "PCMA", "PCMA", 8000, id="PCMA-PCMA"),
    pytest.param(
        "PCMA", None, {"stream_bidirectional_codec": "PCMU"}, "PCMA", "PCMU", 8000, id="PCMA-in-PCMU-out"
    ),
    pytest.param(
        "L16",
        16000,
        {"stream_bidirectional_codec": "L16", "stream_bidirectional_sampling_rate": 16000},
        "L16",
        "L16",
        16000,
        id="L16-16k",
    ),
    pytest.param("G722", None, {"stream_bidirectional_codec": "G722"}, "G722", "G722", 16000, id="G722-16k"),
    pytest.param(
        "PCMU",
        None,
        {"stream_bidirectional_codec": "L16", "stream_bidirectional_sampling_rate": 16000},
        "PCMU",
        "L16",
        16000,
        id="PCMU-in-L16-out",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("callee", "callee_rate", "stream", "in_codec", "out_codec", "out_rate"), PAIRS)
async def test_codec_pair_end_to_end(
    tmp_path: Path,
    callee: str,
    callee_rate: int | None,
    stream: dict[str, Any],
    in_codec: str,
    out_codec: str,
    out_rate: int,
) -> None:
    with world(tmp_path, callee_codec=callee, callee_rate=callee_rate) as w:
        result = await dial(w, **stream)
        (heard,) = w.runs
        assert heard.call_data["bidirectional_codec"] == out_codec
        assert heard.call_data["bidirectional_sampling_rate"] == out_rate
        check_both_ways(result, heard, in_codec=in_codec, out_codec=out_codec, out_rate=out_rate)
        dialled = w.sim._state.calls if w.sim._state is not None else {}
        (call,) = dialled.values()
        assert call.params["stream_bidirectional_codec"] == out_codec
        assert call.params["stream_bidirectional_sampling_rate"] == out_rate


@pytest.mark.slow
async def test_a_pcma_dial_in_is_answered_in_the_streams_codec(tmp_path: Path) -> None:
    # A call from Europe: Telnyx sends A-law; the TeXML asked for PCMU back (STREAM_CODEC).
    with world(tmp_path, callee_codec=None, texml_path_secret="texml-path-secret-0123456789") as w:
        _, caller = await place_texml_call(
            f"{w.server.base_url}/texml/texml-path-secret-0123456789",
            call_codec="PCMA",
            signing_key=w.signing_key,
        )
        result = await caller.run(
            [CallerTurn(audio=_speech(), sample_rate=8000, text="hola")], hang_up_after_secs=0.8
        )
        (heard,) = w.runs
        check_both_ways(result, heard, in_codec="PCMA", out_codec="PCMU", out_rate=8000)


async def test_start_refuses_stream_fields_it_cannot_honour(tmp_path: Path) -> None:
    async def post(w: World, **fields: Any) -> httpx.Response:
        async with httpx.AsyncClient(base_url=w.server.base_url, timeout=10) as http:
            return await http.post(
                "/start",
                json={"phone_number": "+15551234567", **fields},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )

    with world(tmp_path, callee_codec=None) as w:
        response = await post(w, stream_bidirectional_codec="OPUS")
        assert response.status_code == 422 and "cannot encode" in response.json()["error"]["detail"]
        response = await post(w, stream_track="left_track")
        assert response.status_code == 422 and response.json()["error"]["code"] == "bad_stream"
        assert not w.sim.sessions  # nothing was dialled
    with world(tmp_path, callee_codec=None, dial_mode="texml") as w:
        response = await post(w, stream_bidirectional_codec="PCMA")
        assert response.status_code == 422 and "DIAL_MODE=call_control" in response.json()["error"]["detail"]


@pytest.mark.slow
def test_callpipe_call_places_a_pcma_call_to_a_texml_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``callpipe call URL --codec PCMA``: the call is A-law, the TeXML's codec comes back."""
    from callpipe.cli import main

    with world(tmp_path, callee_codec=None, texml_path_secret="texml-path-secret-0123456789") as w:
        url = f"{w.server.base_url}/texml/texml-path-secret-0123456789"
        code = main(["call", url, "--codec", "PCMA", "--hang-up-after", "0.8"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "turn 1: response latency" in out and "no answer" not in out
        (heard,) = w.runs
    assert heard.call_data["outbound_encoding"] == "PCMA" and heard.out_codec == "PCMU"


def test_callpipe_dial_passes_the_stream_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from callpipe.cli import main

    with world(tmp_path, callee_codec=None) as w:
        args = ["dial", "+15551234567", "--server", w.server.base_url, "--api-key", API_KEY]
        code = main(
            [*args, "--stream-codec", "L16", "--stream-rate", "16000", "--stream-track", "both_tracks"]
        )
        assert code == 0, capsys.readouterr().out
        (call,) = (w.sim._state.calls if w.sim._state is not None else {}).values()
        assert call.params["stream_bidirectional_codec"] == "L16"
        assert call.params["stream_bidirectional_sampling_rate"] == 16000
        assert call.params["stream_track"] == "both_tracks"
        assert "stream_bidirectional_target_legs" not in call.params  # unset: Telnyx's default
        code = main([*args, "--stream-codec", "OPUS"])
        assert code == 1 and "cannot encode" in capsys.readouterr().out
