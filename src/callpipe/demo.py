"""``callpipe demo``: a real spoken phone call with the built-in assistant, fully offline.

Everything runs in this process on 127.0.0.1: the fake Telnyx API, the callpipe server
with the built-in assistant (embedded Whisper, scripted receptionist, Piper voice), and a
simulated caller who dials in the way Telnyx does (TeXML fetch, then the media stream)
and speaks its lines, synthesized by the same embedded voice. The conversation is printed
live; at the end come a summary, a stereo WAV (caller left, bot right) and a JSON
transcript.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_SCRIPT = [
    "Hi, I'd like to book a cleaning.",
    "Thursday at 3 pm, please.",
    "What are your hours on Saturday?",
    "No, that's all, thanks.",
]
CALLER_NUMBER = "+15550001234"
OFFICE_NUMBER = "+15550009876"
CALLER_NAME = "Maria"


@dataclass
class DemoTurn:
    """One line of the transcript."""

    speaker: str
    text: str
    latency_ms: float | None = None


@dataclass
class DemoResult:
    """What the demo reports."""

    turns: list[DemoTurn] = field(default_factory=list)
    hung_up: bool = False
    booking_confirmed: bool = False
    load_secs: float = 0.0
    call_secs: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The JSON transcript."""
        return {
            "turns": [
                {
                    "speaker": t.speaker,
                    "text": t.text,
                    **({"latency_ms": round(t.latency_ms)} if t.latency_ms is not None else {}),
                }
                for t in self.turns
            ],
            "ended_with_hang_up": self.hung_up,
            "booking_confirmed": self.booking_confirmed,
        }


def _say(text: str) -> None:
    print(text, flush=True)


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


async def run_demo(lines: list[str], *, record: str, transcript: str, stop_secs: float = 0.3) -> DemoResult:
    """Hold the demo call and write the recording and transcript."""
    from callpipe.server.app import create_app
    from callpipe.server.background import BackgroundServer, free_port
    from callpipe.server.settings import ServerSettings
    from callpipe.services.assistant import AssistantConfig, preload_models, run_assistant
    from callpipe.services.piper import PiperTTSService
    from callpipe.services.scripted import OfficeInfo
    from callpipe.sim.caller import CallerTurn
    from callpipe.sim.fake_api import create_fake_telnyx_app
    from callpipe.sim.texml import place_texml_call
    from callpipe.telnyx.api import TelnyxClient

    ensure_loopback()
    result = DemoResult()
    started = time.monotonic()
    _say("Loading the embedded models (VAD, Whisper tiny.en, Piper voice)…")
    await asyncio.to_thread(preload_models)
    # Deterministic caller voice (no sampling noise): the demo sounds the same on every run.
    caller_voice = PiperTTSService(sample_rate=8000, length_scale=1.05, noise_scale=0.0, noise_w_scale=0.0)
    audio_lines = [await caller_voice.synthesize(line) for line in lines]
    result.load_secs = time.monotonic() - started
    _say(f"  ready in {result.load_secs:.1f}s")

    config = AssistantConfig(office=OfficeInfo(callers={CALLER_NUMBER: CALLER_NAME}), vad_stop_secs=stop_secs)
    # (monotonic time, speaker, text): the server thread adds the bot's lines as the
    # caller hears them, the caller adds its own as it starts saying them.
    timeline: list[tuple[float, str, str]] = []
    lock = threading.Lock()

    def on_message(message: dict[str, Any]) -> None:
        if message.get("role") == "assistant" and message.get("content"):
            with lock:
                timeline.append((time.monotonic(), "bot", str(message["content"])))
            _say(f"  bot    › {message['content']}")
        elif message.get("role") == "user":
            _say(f"           (bot understood: {message.get('content')!r})")

    async def demo_bot(runner_args: Any) -> None:
        await run_assistant(runner_args, config, on_message=on_message)

    fake_app = create_fake_telnyx_app(api_key="demo-key")
    with BackgroundServer(fake_app) as fake:
        os.environ["TELNYX_API_KEY"] = "demo-key"
        os.environ["TELNYX_API_BASE_URL"] = fake.base_url + "/v2"
        port = free_port()
        settings = ServerSettings(
            public_url=f"http://127.0.0.1:{port}",
            callpipe_secret=secrets.token_urlsafe(24),  # type: ignore[arg-type]
            telnyx_api_key="demo-key",  # type: ignore[arg-type]
            telnyx_api_base_url=fake.base_url + "/v2",
            _env_file=None,  # type: ignore[call-arg]
        )
        app = create_app(demo_bot, settings)
        with BackgroundServer(app, port=port) as server:
            async with TelnyxClient("demo-key", base_url=fake.base_url + "/v2") as client:
                # The call exists on the (fake) Telnyx side, so the bot's hang-up is real.
                call = await client.dial(to=OFFICE_NUMBER, from_=CALLER_NUMBER, connection_id="demo")
            ccid = call["call_control_id"]
            turns = [
                CallerTurn(audio=pcm, sample_rate=8000, text=line, quiet_secs=1.5)
                for pcm, line in zip(audio_lines, lines, strict=True)
            ]

            def on_event(kind: str, data: dict[str, Any]) -> None:
                if kind == "caller_turn":
                    with lock:
                        timeline.append((time.monotonic(), "caller", str(data["text"])))
                    _say(f"  caller › {data['text']}")
                elif kind == "bot_audio_started" and data.get("latency") is not None:
                    _say(
                        f"           (bot started speaking {data['latency'] * 1000:.0f} ms after the caller stopped)"
                    )

            _say(
                f"\nCalling {OFFICE_NUMBER} from {CALLER_NUMBER} ({CALLER_NAME}) through the Telnyx simulator…\n"
            )
            _, caller = await place_texml_call(
                server.base_url + "/texml",
                from_number=CALLER_NUMBER,
                to_number=OFFICE_NUMBER,
                call_sid=ccid,
                on_event=on_event,
                max_call_secs=120,
            )
            call_started = time.monotonic()
            outcome = await caller.run(turns, hang_up_after_secs=3.0)
            result.call_secs = time.monotonic() - call_started
            telnyx_state = fake_app.state.telnyx
            hangups = telnyx_state.requests_to(f"/v2/calls/{ccid}/actions/hangup", "POST")
            result.hung_up = outcome.closed_by == "bot" and bool(hangups)

    # Transcript in time order; a bot line's latency is that of the caller turn it answers.
    with lock:
        events = sorted(timeline)
    latencies = [t.response_latency for t in outcome.turns]
    answered: set[int] = set()
    caller_index = -1
    for _, speaker, text in events:
        if speaker == "caller":
            caller_index += 1
            result.turns.append(DemoTurn("caller", text))
        elif caller_index < 0:
            result.turns.append(
                DemoTurn("bot", text, _ms(outcome.greeting_latency) if not result.turns else None)
            )
        else:
            first = caller_index not in answered and caller_index < len(latencies)
            answered.add(caller_index)
            result.turns.append(DemoTurn("bot", text, _ms(latencies[caller_index]) if first else None))
    answers = [turn.text for turn in result.turns if turn.speaker == "bot"]
    result.booking_confirmed = any("booked" in line.lower() for line in answers)
    await asyncio.to_thread(_write_outputs, result, outcome, record, transcript)
    _summary(result, record, transcript)
    return result


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _write_outputs(result: DemoResult, outcome: Any, record: str, transcript: str) -> None:
    Path(transcript).write_text(json.dumps(result.to_json(), indent=2) + "\n")
    outcome.write_wav(record)


def _summary(result: DemoResult, record: str, transcript: str) -> None:
    latencies = sorted(t.latency_ms for t in result.turns if t.speaker == "bot" and t.latency_ms is not None)
    replies = latencies[1:] if len(latencies) > 1 else latencies
    _say("\n" + "─" * 64)
    _say(f"{'speaker':<8} {'latency':>9}  text")
    for turn in result.turns:
        latency = f"{turn.latency_ms:.0f} ms" if turn.latency_ms is not None else ""
        _say(f"{turn.speaker:<8} {latency:>9}  {turn.text}")
    _say("─" * 64)
    if replies:
        p50 = replies[len(replies) // 2]
        _say(f"voice-to-voice (caller stopped -> bot heard): p50 {p50:.0f} ms, max {max(replies):.0f} ms")
    _say(
        f"booking confirmed: {'yes' if result.booking_confirmed else 'no'};"
        f" call ended with hang-up: {'yes' if result.hung_up else 'no'}"
    )
    _say(f"recording (caller left, bot right): {record}")
    _say(f"transcript: {transcript}")


def main(lines: list[str] | None, record: str, transcript: str) -> int:
    """Run the demo; exit code 0 when the booking was confirmed and the bot hung up."""
    from callpipe.services.whisper import LocalModelMissing

    try:
        result = asyncio.run(run_demo(lines or DEFAULT_SCRIPT, record=record, transcript=transcript))
    except LocalModelMissing as exc:
        print(f"callpipe demo: {exc}", file=sys.stderr)
        return 2
    expected_booking = lines is None
    ok = result.hung_up and (result.booking_confirmed or not expected_booking)
    return 0 if ok else 1
