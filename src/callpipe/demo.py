"""``callpipe demo``: real spoken phone calls with the built-in assistant, fully offline.

Everything runs in this process on 127.0.0.1: the fake Telnyx API, the callpipe server
with the built-in assistant (embedded Whisper, scripted receptionist, Piper voice), and
simulated callers who dial in the way Telnyx does (TeXML fetch, then the media stream)
and speak their lines, synthesized by the same embedded voice. A caller waits like a
person: it speaks again only after ~2.5 s of bot silence, and says "Hello?" when the bot
has not answered. ``--calls N`` holds N such calls at once (different callers, started a
second apart). The conversation is printed live; at the end come a summary per call,
an aggregate table, a stereo WAV of the first call (caller left, bot right) and a JSON
transcript. The demo fails loudly (a red line, exit code 1) when a caller line got no
reply before the caller's next one, or the booking was not confirmed in the bot's words.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from callpipe.demo_report import DemoResult, DemoTurn, print_summary, write_outputs
from callpipe.pipeline.frames import Frame, MetricsFrame
from callpipe.pipeline.processor import FrameDirection, FrameProcessor

__all__ = ["CALLERS", "DEFAULT_SCRIPT", "DemoResult", "DemoTurn", "main", "run_demo", "run_demo_calls"]

DEFAULT_SCRIPT = [
    "Hi, I'd like to book a cleaning.",
    "Thursday at 3 pm, please.",
    "What are your hours on Saturday?",
    "No, that's all, thanks.",
]
OFFICE_NUMBER = "+15550009876"


@dataclass(frozen=True)
class DemoCaller:
    """Who calls and what they say."""

    number: str
    name: str
    lines: list[str]


CALLERS = [
    DemoCaller("+15550001234", "Maria", DEFAULT_SCRIPT),
    DemoCaller(
        "+15550004321",
        "James",
        [
            "Hello, I need to book a checkup.",
            "Friday at 10 am.",
            "Where are you located?",
            "No, that's all, thanks.",
        ],
    ),
    DemoCaller(
        "+15550005678",
        "Priya",
        [
            "Hi, can I book a whitening?",
            "Tuesday at 2 pm, please.",
            "What are your hours on Saturday?",
            "No, that's all, thanks.",
        ],
    ),
]
CALLER_NUMBER, CALLER_NAME = CALLERS[0].number, CALLERS[0].name
QUIET_SECS = 2.5  # a person waits about this long for an answer before speaking again
NUDGE = "Hello?"
STAGGER_SECS = 1.0


def _say(text: str) -> None:
    print(text, flush=True)


def _caller_for(index: int, lines: list[str] | None) -> DemoCaller:
    if index < len(CALLERS):
        base = CALLERS[index]
    else:
        base = DemoCaller(f"+1555000{index:04d}", f"Caller {index + 1}", CALLERS[index % len(CALLERS)].lines)
    return DemoCaller(base.number, base.name, lines or base.lines) if index == 0 and lines else base


def ensure_loopback() -> None:
    """Make sure 127.0.0.1 works: in a fresh network namespace (``unshare -n``, the way to
    prove the demo needs no network) the loopback interface starts *down*. As root in that
    namespace we may bring it up; otherwise say what to do."""
    import errno
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("127.0.0.1", 9))
        return
    except OSError as exc:
        if exc.errno != errno.ENETUNREACH:
            return
    finally:
        probe.close()
    try:
        import fcntl
        import struct

        siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            request = struct.pack("16sh", b"lo", 0)
            flags = struct.unpack("16sh", fcntl.ioctl(sock, siocgifflags, request))[1]
            fcntl.ioctl(sock, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))
        _say("(the loopback interface was down - a fresh network namespace? - and is now up)")
    except OSError as exc:
        raise RuntimeError(
            f"127.0.0.1 is unreachable (loopback down: run `ip link set lo up`): {exc}"
        ) from None


@dataclass
class _Call:
    """One demo call's live state, shared by the server thread and the caller."""

    index: int
    caller: DemoCaller
    label: str
    timeline: list[tuple[float, str, str]] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, speaker: str, text: str) -> None:
        with self.lock:
            self.timeline.append((time.monotonic(), speaker, text))


class _StageProbe(FrameProcessor):
    """Last in the bot's pipeline: collects the per-stage metrics of the call."""

    def __init__(self, call: _Call) -> None:
        super().__init__(name="demo-probe")
        self._call = call

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, MetricsFrame):
            with self._call.lock:
                for data in frame.data:
                    key = data.name if data.name != "ttfb" else f"ttfb {data.processor.split('#')[0]}"
                    self._call.stages.setdefault(key, []).append(data.value)
        await self.push_frame(frame, direction)


async def run_demo(lines: list[str], *, record: str, transcript: str, stop_secs: float = 0.3) -> DemoResult:
    """Hold one demo call and write the recording and transcript."""
    results = await run_demo_calls(1, lines=lines, record=record, transcript=transcript, stop_secs=stop_secs)
    return results[0]


def trim_trailing_silence(pcm: bytes, rate: int = 8000, keep_secs: float = 0.03) -> bytes:
    """Cut the silence after the last speech (Piper ends a line with 0.2-0.35 s of it), so
    that "the caller stopped" - where voice-to-voice latency starts - is the end of speech."""
    import numpy as np

    samples = np.frombuffer(pcm, dtype=np.int16).astype(np.float32)
    hop = rate // 100
    if len(samples) < 2 * hop:
        return pcm
    frames = samples[: len(samples) // hop * hop].reshape(-1, hop)
    level = np.sqrt(np.mean(frames**2, axis=1))
    loud = np.nonzero(level > 0.03 * level.max())[0]
    end = min(len(samples), (int(loud[-1]) + 1) * hop + int(keep_secs * rate)) if len(loud) else len(samples)
    return pcm[: 2 * end]


async def _synthesize_lines(callers: list[DemoCaller]) -> tuple[dict[str, bytes], bytes]:
    from callpipe.services.piper import PiperTTSService

    # Deterministic caller voice (no sampling noise): the demo sounds the same on every run.
    voice = PiperTTSService(sample_rate=8000, length_scale=1.05, noise_scale=0.0, noise_w_scale=0.0)
    audio = {line: trim_trailing_silence(await voice.synthesize(line)) for c in callers for line in c.lines}
    return audio, trim_trailing_silence(await voice.synthesize(NUDGE))


async def run_demo_calls(
    calls: int,
    *,
    lines: list[str] | None = None,
    record: str,
    transcript: str,
    stop_secs: float = 0.3,
    serve_port: int | None = None,
) -> list[DemoResult]:
    """Hold ``calls`` simultaneous demo calls (a second apart); print and write the results.

    With ``serve_port`` the web console then keeps serving on that port (until Ctrl-C).
    """
    from callpipe.services.assistant import preload_models

    ensure_loopback()
    started = time.monotonic()
    _say("Loading the embedded models (VAD, Whisper tiny.en, Piper voice) and warming them up…")
    await asyncio.to_thread(preload_models)
    callers = [_caller_for(i, lines) for i in range(calls)]
    audio, nudge = await _synthesize_lines(callers)
    load_secs = time.monotonic() - started
    _say(f"  ready in {load_secs:.1f}s")
    states = [_Call(i, c, f"[call {i + 1}] " if calls > 1 else "") for i, c in enumerate(callers)]
    results = await _hold_calls(states, audio, nudge, stop_secs)
    for result in results:
        result.load_secs = load_secs
    await asyncio.to_thread(write_outputs, results, record, transcript)
    print_summary(results, record, transcript)
    if serve_port is not None:
        from callpipe.console.keep_serving import keep_serving

        ccid = results[0].outcome.call_control_id if results[0].outcome else None
        names = {c.number: c.name for c in callers}
        await keep_serving(port=serve_port, call_control_id=ccid, callers=names, stop_secs=stop_secs)
    return results


async def _hold_calls(
    states: list[_Call], audio: dict[str, bytes], nudge: bytes, stop_secs: float
) -> list[DemoResult]:
    from callpipe.server.app import create_app
    from callpipe.server.background import BackgroundServer, free_port
    from callpipe.server.settings import ServerSettings
    from callpipe.services.assistant import AssistantConfig, run_assistant
    from callpipe.services.scripted import OfficeInfo
    from callpipe.sim.fake_api import create_fake_telnyx_app

    by_number = {s.caller.number: s for s in states}
    office = OfficeInfo(callers={s.caller.number: s.caller.name for s in states})

    async def demo_bot(runner_args: Any) -> None:
        call = by_number[str(runner_args.call_data.get("from", ""))]

        def on_message(message: dict[str, Any]) -> None:
            if message.get("role") == "assistant" and message.get("content"):
                call.add("bot", str(message["content"]))
                _say(f"  {call.label}bot    › {message['content']}")
            elif message.get("role") == "user":
                _say(f"  {call.label}         (bot understood: {message.get('content')!r})")

        # The demo's own turn-taking, explicit (not the library's VAD defaults).
        config = AssistantConfig(office=office, vad_stop_secs=stop_secs)
        await run_assistant(runner_args, config, on_message=on_message, extra_processors=[_StageProbe(call)])

    fake_app = create_fake_telnyx_app(api_key="demo-key")
    with BackgroundServer(fake_app) as fake:
        os.environ["TELNYX_API_KEY"] = "demo-key"
        os.environ["TELNYX_API_BASE_URL"] = fake.base_url + "/v2"
        port = free_port()
        # Telnyx reaches /texml through a secret path (the demo's simulator does not sign).
        path_secret = secrets.token_urlsafe(16)
        settings = ServerSettings(
            public_url=f"http://127.0.0.1:{port}",
            callpipe_secret=secrets.token_urlsafe(24),  # type: ignore[arg-type]
            texml_path_secret=path_secret,  # type: ignore[arg-type]
            telnyx_api_key="demo-key",  # type: ignore[arg-type]
            telnyx_api_base_url=fake.base_url + "/v2",
            _env_file=None,  # type: ignore[call-arg]
        )
        with BackgroundServer(create_app(demo_bot, settings), port=port) as server:

            async def one(call: _Call) -> DemoResult:
                await asyncio.sleep(call.index * STAGGER_SECS)
                texml_url = f"{server.base_url}/texml/{path_secret}"
                return await _one_call(call, texml_url, fake.base_url, fake_app, audio, nudge)

            return list(await asyncio.gather(*(one(call) for call in states)))


async def _one_call(
    call: _Call, texml_url: str, fake_url: str, fake_app: Any, audio: dict[str, bytes], nudge: bytes
) -> DemoResult:
    from callpipe.sim.caller import CallerTurn
    from callpipe.sim.texml import place_texml_call
    from callpipe.telnyx.api import TelnyxClient

    caller = call.caller
    async with TelnyxClient("demo-key", base_url=fake_url + "/v2") as client:
        # The call exists on the (fake) Telnyx side, so the bot's hang-up is real.
        dialed = await client.dial(to=OFFICE_NUMBER, from_=caller.number, connection_id="demo")
    ccid = dialed["call_control_id"]
    turns = [
        CallerTurn(audio=audio[line], sample_rate=8000, text=line, quiet_secs=QUIET_SECS, nudge_audio=nudge)
        for line in caller.lines
    ]

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "caller_turn":
            call.add("caller", str(data["text"]))
            _say(f"  {call.label}caller › {data['text']}")
        elif kind == "nudge":
            _say(f"  {call.label}caller › {data['text']}   (no answer)")
        elif kind == "bot_audio_started" and data.get("latency") is not None:
            ms = data["latency"] * 1000
            _say(f"  {call.label}         (bot started speaking {ms:.0f} ms after the caller stopped)")

    _say(
        f"\n{call.label}Calling {OFFICE_NUMBER} from {caller.number} ({caller.name}) through the Telnyx simulator…\n"
    )
    _, sim = await place_texml_call(
        texml_url,
        from_number=caller.number,
        to_number=OFFICE_NUMBER,
        call_sid=ccid,
        on_event=on_event,
        max_call_secs=120,
    )
    call_started = time.monotonic()
    # After the goodbye the caller waits for the bot to hang up (it gives up after 6 s).
    outcome = await sim.run(turns, hang_up_after_secs=6.0)
    hangups = fake_app.state.telnyx.requests_to(f"/v2/calls/{ccid}/actions/hangup", "POST")
    result = DemoResult(caller_name=caller.name, caller_number=caller.number)
    result.call_secs = time.monotonic() - call_started
    result.hung_up = outcome.closed_by == "bot" and bool(hangups)
    with call.lock:
        events, result.stages = sorted(call.timeline), {k: list(v) for k, v in call.stages.items()}
    result.build(events, outcome)
    return result


def main(
    lines: list[str] | None, record: str, transcript: str, calls: int = 1, serve_port: int | None = None
) -> int:
    """Run the demo; exit code 0 only when every call passed (see :meth:`DemoResult.failures`)."""
    from callpipe.services.whisper import LocalModelMissing

    try:
        results = asyncio.run(
            run_demo_calls(calls, lines=lines, record=record, transcript=transcript, serve_port=serve_port)
        )
    except LocalModelMissing as exc:
        print(f"callpipe demo: {exc}", file=sys.stderr)
        return 2
    expect_booking = lines is None
    failed = False
    for result in results:
        for reason in result.failures(expect_booking=expect_booking):
            failed = True
            label = f"call {results.index(result) + 1} ({result.caller_name}): " if len(results) > 1 else ""
            print(f"\033[31mFAILED: {label}{reason}\033[0m", flush=True)
    return 1 if failed else 0
