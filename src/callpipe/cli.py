"""The ``callpipe`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import uuid
import wave
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from callpipe import __version__
from callpipe.log import configure_logging

DEFAULT_CALLER_WAV = "caller_8k.wav"


def _read_wav(path: str | Path) -> tuple[bytes, int]:
    """PCM16 mono and rate of a WAV file (stereo is mixed down), with a clear error."""
    try:
        with wave.open(str(path), "rb") as wav:
            if wav.getsampwidth() != 2:
                raise SystemExit(f"{path}: only 16-bit PCM WAV files are supported")
            rate, channels = wav.getframerate(), wav.getnchannels()
            pcm = wav.readframes(wav.getnframes())
    except (OSError, wave.Error) as exc:
        raise SystemExit(f"cannot read {path}: {exc}") from None
    if channels != 1:
        import numpy as np

        samples = np.frombuffer(pcm, dtype=np.int16).reshape(-1, channels).mean(axis=1)
        pcm = samples.astype(np.int16).tobytes()
    return pcm, rate


def _default_caller_audio() -> tuple[bytes, int]:
    with resources.as_file(resources.files("callpipe.sim") / "data" / DEFAULT_CALLER_WAV) as path:
        return _read_wav(path)


def _require_loopback(url: str, allow_remote: bool, what: str) -> None:
    """Simulated traffic goes to this machine unless the user explicitly says otherwise."""
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    if not loopback and not allow_remote:
        raise SystemExit(
            f"{what} only targets this machine (127.0.0.1/localhost) unless you pass --allow-remote"
        )


def _parse_params(items: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--param takes NAME=VALUE, got {item!r}")
        params[key] = value
    return params


# ---------------------------------------------------------------------------- call


def _local_speech(*, need_voice: bool) -> tuple[Any, Any]:
    """The embedded voice (for --say) and recognizer (to show what the bot said), if installed."""
    try:
        from callpipe.services.piper import PiperTTSService
        from callpipe.services.whisper import WhisperSTTService

        voice = PiperTTSService(sample_rate=8000, noise_scale=0.0, noise_w_scale=0.0)
        stt = WhisperSTTService()
        return voice, stt
    except Exception as exc:
        if need_voice:
            raise SystemExit(f"--say needs the embedded voice: {exc}") from None
        return None, None


def _transcribing_printer(stt: Any) -> Any:
    """An event printer that also transcribes each of the bot's replies when it ends."""
    loop = asyncio.get_running_loop()

    def on_event(kind: str, data: dict[str, Any]) -> None:
        _print_event(kind, data)
        if kind == "bot_audio_stopped" and stt is not None and data.get("audio"):

            async def show() -> None:
                try:
                    text = await stt.run_stt(data["audio"], data["sample_rate"])
                except Exception as exc:
                    text = f"(could not transcribe: {exc})"
                print(f"bot:    “{text}”", flush=True)

            _background.add(loop.create_task(show()))

    return on_event


_background: set[asyncio.Task[None]] = set()


def _print_event(kind: str, data: dict[str, Any]) -> None:
    if kind == "caller_turn":
        print(f"caller: {data.get('text') or '(audio)'}  [{data['secs']:.1f}s]", flush=True)
    elif kind == "bot_audio_started":
        latency = data.get("latency")
        suffix = f"  (responded in {latency * 1000:.0f} ms)" if latency is not None else ""
        print(f"bot:    speaking…{suffix}", flush=True)
    elif kind == "bot_audio_stopped":
        print(f"bot:    [{data['secs']:.1f}s of audio]", flush=True)
    elif kind == "clear":
        print("bot:    (clear: stopped talking, barge-in)", flush=True)


def _fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction from 0 to 1")
    return value


async def _call(args: argparse.Namespace) -> int:
    from callpipe.sim.caller import CallerTurn, SimulatedCaller

    _require_loopback(args.url, args.allow_remote, "callpipe call")
    turns: list[CallerTurn] = []
    voice, stt = _local_speech(need_voice=bool(args.say))
    for line in args.say:
        assert voice is not None
        pcm = await voice.synthesize(line)
        turns.append(CallerTurn(audio=pcm, sample_rate=8000, text=line, quiet_secs=args.wait))
    for path in args.wav:
        pcm, rate = _read_wav(path)
        turns.append(CallerTurn(audio=pcm, sample_rate=rate, text=Path(path).name, quiet_secs=args.wait))
    if args.dtmf:
        turns.append(CallerTurn(dtmf=args.dtmf, text=f"DTMF {args.dtmf}"))
    if not turns:
        pcm, rate = _default_caller_audio()
        turns.append(
            CallerTurn(
                audio=pcm, sample_rate=rate, text="Hello, can you hear me clearly?", quiet_secs=args.wait
            )
        )
    params = _parse_params(args.param)
    url = args.url
    caller_kw: dict[str, Any] = {
        "encoding": args.codec or "PCMU",
        "sample_rate": args.rate,
        "out_encoding": args.out_codec,
        "out_sample_rate": args.out_rate,
        "stream_track": "both_tracks" if args.both_tracks else "inbound_track",
        "from_number": args.from_number,
        "to_number": args.to_number,
        "custom_parameters": params,
        "max_call_secs": args.max_secs,
        "on_event": _transcribing_printer(stt),
        "reorder": args.reorder,
        "duplicate": args.duplicate,
    }
    if url.startswith(("http://", "https://")):
        from callpipe.sim import texml

        call_sid = f"v3:sim-{uuid.uuid4().hex}"
        instructions = await texml.fetch_texml(
            url,
            call_sid=call_sid,
            account_sid="sim-account",
            from_number=args.from_number,
            to_number=args.to_number,
        )
        caller_kw["call_control_id"] = call_sid
        stream = instructions.stream
        print(f"TeXML: streaming to {stream.url} ({stream.encoding})", flush=True)
        url = stream.url
        caller_kw["custom_parameters"] = {**stream.parameters, **params}
        # The TeXML says what goes back; --codec is the call's own (a PCMA call, say).
        caller_kw["out_encoding"] = stream.encoding
        caller_kw["out_sample_rate"] = stream.sample_rate
        if args.codec is None:
            caller_kw["encoding"], caller_kw["sample_rate"] = stream.encoding, stream.sample_rate
    print(f"calling {url} …", flush=True)
    caller = SimulatedCaller(url, **caller_kw)
    result = await caller.run(turns, hang_up_after_secs=args.hang_up_after)
    # Only this run's tasks: an earlier main() in the same process left its own (loop closed).
    loop = asyncio.get_running_loop()
    mine = {task for task in _background if task.get_loop() is loop}
    _background.difference_update(_background - mine)
    if mine:
        await asyncio.wait(mine, timeout=10)
    print("—" * 40)
    if result.greeting_latency is not None:
        print(f"greeting after {result.greeting_latency * 1000:.0f} ms")
    for index, turn in enumerate(result.turns, 1):
        latency = turn.response_latency
        shown = f"{latency * 1000:.0f} ms" if latency is not None else "no answer"
        print(f"turn {index}: response latency {shown}")
    print(f"bot audio {result.bot_audio_secs:.1f}s, gaps {len(result.gaps)}, clears {len(result.clears)}")
    if args.reorder or args.duplicate:
        print(f"media frames sent out of order {result.media_reordered}, twice {result.media_duplicated}")
    print(
        f"call ended by {result.closed_by or 'caller'} ({result.close_code} {result.close_reason})".rstrip()
    )
    if args.record:
        await asyncio.to_thread(result.write_wav, args.record)
        print(f"recording (caller left, bot right): {args.record}")
    return 1 if result.errors else 0


# ---------------------------------------------------------------------------- load


async def _load(args: argparse.Namespace) -> int:
    from callpipe.sim.load import LoadConfig, LoadProgress, run_load

    _require_loopback(args.url, args.allow_remote, "callpipe load")
    if args.calls < 1 or args.calls > 2000:
        raise SystemExit("--calls must be between 1 and 2000")
    if args.duration <= 0 or args.duration > 3600:
        raise SystemExit("--duration must be between 0 and 3600 seconds")
    pcm, rate = _read_wav(args.wav) if args.wav else _default_caller_audio()
    config = LoadConfig(
        url=args.url,
        calls=args.calls,
        duration=args.duration,
        ramp=args.ramp,
        turn_audio=pcm,
        turn_sample_rate=rate,
        encoding=args.codec,
        server_pid=args.pid,
    )

    def show(progress: LoadProgress) -> None:
        width = 30
        done = min(1.0, progress.elapsed / progress.total_secs)
        bar = "#" * int(done * width) + "-" * (width - int(done * width))
        sys.stderr.write(
            f"\r[{bar}] {progress.elapsed:5.1f}s  active {progress.active:4d}  "
            f"done {progress.finished:4d}  failed {progress.failed:3d}"
        )
        sys.stderr.flush()

    report = await run_load(config, progress=None if args.quiet else show)
    if not args.quiet:
        sys.stderr.write("\n")
    print(report.summary())
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(_report_json(report), indent=2))
    return 0 if report.failed == 0 else 1


def _report_json(report: Any) -> dict[str, Any]:
    from callpipe.sim.load import percentile

    return {
        "calls": report.calls,
        "ok": report.ok,
        "failed": report.failed,
        "turns": report.turns,
        "unanswered_turns": report.unanswered_turns,
        "response_latency_p50": percentile(report.response_latencies, 50),
        "response_latency_p95": percentile(report.response_latencies, 95),
        "response_latency_p99": percentile(report.response_latencies, 99),
        "greeting_latency_p50": percentile(report.greeting_latencies, 50),
        "greeting_latency_p95": percentile(report.greeting_latencies, 95),
        "gaps": len(report.gaps),
        "gap_p99": percentile(report.gaps, 99) or 0.0,
        "gap_max": max(report.gaps, default=0.0),
        "server_cpu_percent": report.server_cpu_percent,
        "cpu_per_call_second": report.cpu_per_call_second,
        "server_rss_start": report.server_rss_start,
        "server_rss_peak": report.server_rss_peak,
        "rss_per_call": report.rss_per_call,
        "generator_overloaded": report.generator_overloaded,
        "failures": sorted(set(report.failures))[:20],
    }


# --------------------------------------------------------------------- fake-telnyx


def _fake_telnyx(args: argparse.Namespace) -> int:
    from callpipe.sim.fake_api import serve_fake_telnyx

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allow_remote:
        raise SystemExit("the fake Telnyx API listens on loopback only (pass --allow-remote to override)")
    from callpipe.sim.fake_api.agent import FakeAgent
    from callpipe.sim.fake_api.callees import Callees, piper_voice

    try:
        callees = Callees.parse(
            args.callee or [], default=args.default_callee, voice=piper_voice(), human_hello=True
        )
        agents = FakeAgent.parse(args.agent or [])
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    codec, _, rate = (args.callee_codec or "").partition(":")
    serve_fake_telnyx(
        args.host,
        args.port,
        api_key=args.api_key,
        webhook_url=args.webhook_url,
        callees=callees,
        callee_codec=codec or None,
        callee_sample_rate=int(rate) if rate.isdigit() else None,
        agents=agents,
    )
    return 0


def _fake_realtime(args: argparse.Namespace) -> int:
    from callpipe.sim.fake_realtime import serve_fake_realtime

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.allow_remote:
        raise SystemExit("the fake Realtime API listens on loopback only (pass --allow-remote to override)")
    serve_fake_realtime(args.host, args.port, api_key=args.api_key)
    return 0


# --------------------------------------------------------------------------- serve


def _settings_from(args: argparse.Namespace) -> Any:
    from callpipe.server.settings import ServerSettings, SettingsError

    overrides: dict[str, Any] = {}
    if getattr(args, "public_url", None):
        overrides["public_url"] = args.public_url
    try:
        return ServerSettings(**overrides)
    except (ValueError, SettingsError) as exc:
        raise SystemExit(f"invalid settings: {exc}") from None


def _serve(args: argparse.Namespace) -> int:
    from callpipe.server.serve import BotLoadError, build_server, load_bot
    from callpipe.server.settings import SettingsError

    if args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    if args.workers > 1:
        return _serve_workers(args)
    try:
        if args.bot:
            bot = load_bot(args.bot)
        else:
            from callpipe.services.assistant import bot as assistant_bot
            from callpipe.services.assistant import preload_models

            print("no bot file given: running the built-in assistant (loading its models…)", flush=True)
            preload_models()
            bot = assistant_bot
        settings = _settings_from(args)
        server = build_server(bot, host=args.host, port=args.port, settings=settings)
    except (BotLoadError, SettingsError) as exc:
        raise SystemExit(str(exc)) from None
    print(
        f"callpipe serving {args.bot or 'the built-in assistant'} on http://{args.host}:{args.port}",
        flush=True,
    )
    texml_path = "/texml/<TEXML_PATH_SECRET>" if settings.secret("texml_path_secret") else "/texml"
    print(
        f"  TeXML for dial-in: {settings.public_url}{texml_path}   streams: {settings.public_url}/ws",
        flush=True,
    )
    server.run()
    return 0


def _serve_workers(args: argparse.Namespace) -> int:
    from callpipe.server.serve import BotLoadError, load_bot
    from callpipe.server.settings import SettingsError
    from callpipe.server.workers import run_workers

    settings = _settings_from(args)
    try:
        if args.bot:
            load_bot(args.bot)  # fail here, once, with a clear message, not in every worker
        settings.check_for_serving()
    except (BotLoadError, SettingsError) as exc:
        raise SystemExit(str(exc)) from None
    print(
        f"callpipe serving {args.bot or 'the built-in assistant'} on http://{args.host}:{args.port}"
        f" with {args.workers} workers",
        flush=True,
    )
    level = logging.DEBUG if args.verbose else logging.INFO
    return run_workers(
        args.bot, host=args.host, port=args.port, workers=args.workers, settings=settings, level=level
    )


def _texml(args: argparse.Namespace) -> int:
    """Print TeXML for a TeXML Bin, and say on stderr how long and how often it works."""
    from xml.sax.saxutils import escape

    from callpipe.server.settings import SettingsError
    from callpipe.server.urls import http_base, stream_url, texml_document

    settings = _settings_from(args)
    try:
        settings.check_for_serving()
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None
    path_secret = settings.secret("texml_path_secret")
    if path_secret:
        # A static bin that works for every call: it sends each call to the server, which
        # gives the call a stream token of its own (bound to its CallSid, single-use).
        url = f"{http_base(settings)}/texml/{path_secret}"
        print(
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Response><Redirect method="POST">{escape(url)}</Redirect></Response>'
        )
        print(
            "This document redirects every call to PUBLIC_URL/texml/<TEXML_PATH_SECRET>, which issues "
            "each call its own single-use stream token. Keep it private: the path is a secret. "
            "(Or give Telnyx that URL as the TeXML application's voice URL.)",
            file=sys.stderr,
        )
        return 0
    if not 0 < args.ttl_minutes <= 60:
        raise SystemExit("--ttl-minutes must be between 0 and 60")
    url = stream_url(settings, direction="inbound", call_sid=None, extra={}, ttl=args.ttl_minutes * 60)
    print(texml_document(settings, url))
    if settings.secret("callpipe_secret"):
        print(
            f"NOTE: this document's stream token is bound to no call: it opens ONE stream within "
            f"{args.ttl_minutes:g} minutes, then never again. For a TeXML Bin that serves every call, "
            "set TEXML_PATH_SECRET and run this again.",
            file=sys.stderr,
        )
    return 0


async def _dial(args: argparse.Namespace) -> int:
    import httpx

    body = {}
    if args.body:
        try:
            body = json.loads(args.body)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"--body must be JSON: {exc}") from None
    settings = _settings_from(args)
    key = args.api_key or settings.secret("callpipe_api_key")
    if not key:
        raise SystemExit("set CALLPIPE_API_KEY (or --api-key) to call /start")
    request: dict[str, Any] = {"phone_number": args.phone_number, "body": body, "amd": args.amd or False}
    stream = {
        "stream_bidirectional_codec": args.stream_codec,
        "stream_bidirectional_sampling_rate": args.stream_rate,
        "stream_bidirectional_target_legs": args.target_legs,
        "stream_track": args.stream_track,
    }
    request.update({name: value for name, value in stream.items() if value is not None})
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            args.server.rstrip("/") + "/start",
            json=request,
            headers={"Authorization": f"Bearer {key}"},
        )
    print(json.dumps(response.json(), indent=2))
    return 0 if response.status_code == 200 else 1


# ---------------------------------------------------------------------------- demo


def _demo(args: argparse.Namespace) -> int:
    from callpipe import demo

    lines: list[str] = list(args.say)
    if args.script:
        try:
            text = Path(args.script).read_text()
        except OSError as exc:
            raise SystemExit(f"cannot read {args.script}: {exc}") from None
        lines += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if args.calls < 1:
        raise SystemExit("--calls must be at least 1")
    serve_port = args.port if args.serve else None
    return demo.main(
        lines or None, record=args.record, transcript=args.json, calls=args.calls, serve_port=serve_port
    )


# -------------------------------------------------------------------------- parser


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callpipe", description="Real-time voice AI agents on Telnyx phone calls."
    )
    parser.add_argument("--version", action="version", version=f"callpipe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="hold a spoken demo call with the built-in assistant, offline")
    demo.add_argument("--say", action="append", default=[], help="a line for the caller (repeatable)")
    demo.add_argument("--script", help="a text file with one caller line per line")
    demo.add_argument("--record", default="callpipe-demo.wav", help="stereo WAV of the call")
    demo.add_argument("--json", default="callpipe-demo.json", help="JSON transcript of the call")
    demo.add_argument(
        "--calls", type=int, default=1, help="hold N simultaneous calls (different callers, a second apart)"
    )
    demo.add_argument(
        "--serve", action="store_true", help="then keep serving the web console (/dashboard, /phone)"
    )
    demo.add_argument("--port", type=int, default=8000, help="the console's port with --serve")

    call = sub.add_parser("call", help="place one simulated Telnyx call to a running bot")
    call.add_argument("url", help="the bot's WebSocket URL (ws://…/ws) or TeXML URL (http(s)://…/texml)")
    call.add_argument("--say", action="append", default=[], help="a line for the caller to say (needs TTS)")
    call.add_argument("--wav", action="append", default=[], help="a WAV file the caller says (repeatable)")
    call.add_argument("--dtmf", default="", help="keys to press after the spoken turns")
    call.add_argument(
        "--codec",
        default=None,
        help="the call's codec: PCMU, PCMA, L16 or G722 (default PCMU, or the TeXML's)",
    )
    call.add_argument("--rate", type=int, default=None, help="sample rate for L16 (8000 or 16000)")
    call.add_argument(
        "--out-codec",
        default=None,
        help="the codec the bot must send back (default: the call's, or the TeXML's)",
    )
    call.add_argument("--out-rate", type=int, default=None, help="its sample rate (L16: 8000 or 16000)")
    call.add_argument(
        "--both-tracks", action="store_true", help="also stream the outbound track (stream_track=both_tracks)"
    )
    call.add_argument("--record", help="write a stereo WAV (caller left, bot right)")
    call.add_argument("--from", dest="from_number", default="+15550001111")
    call.add_argument("--to", dest="to_number", default="+15550002222")
    call.add_argument("--param", action="append", default=[], help="custom stream parameter NAME=VALUE")
    call.add_argument("--max-secs", type=float, default=120.0, help="hang up after this long at most")
    call.add_argument(
        "--hang-up-after", type=float, default=1.5, help="seconds of bot silence before hanging up"
    )
    call.add_argument(
        "--wait", type=float, default=1.5, help="seconds of bot silence before the caller speaks"
    )
    call.add_argument("--allow-remote", action="store_true", help="allow a bot that is not on this machine")
    call.add_argument(
        "--reorder", type=_fraction, default=0.0, help="share of media frames sent after the next one (0-1)"
    )
    call.add_argument(
        "--duplicate", type=_fraction, default=0.0, help="share of media frames sent twice (0-1)"
    )

    load = sub.add_parser("load", help="many simulated calls at once against a running bot")
    load.add_argument("url", help="the bot's WebSocket URL (ws://…/ws)")
    load.add_argument("--calls", type=int, default=10, help="concurrent calls (default 10)")
    load.add_argument("--duration", type=float, default=20.0, help="seconds each call lasts (default 20)")
    load.add_argument("--ramp", type=float, default=2.0, help="seconds over which calls start (default 2)")
    load.add_argument("--pid", type=int, default=None, help="the server's pid, to report its CPU and memory")
    load.add_argument("--wav", help="what each caller says (default: a short built-in sentence)")
    load.add_argument("--codec", default="PCMU")
    load.add_argument("--json", help="also write the report as JSON to this file")
    load.add_argument("--quiet", action="store_true", help="no progress bar")
    load.add_argument(
        "--allow-remote", action="store_true", help="allow a target that is not on this machine"
    )
    serve = sub.add_parser("serve", help="run the dial-in / dial-out server for a bot")
    serve.add_argument(
        "bot", nargs="?", help="bot file (bot.py) or module[:function] defining async def bot(runner_args)"
    )
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--public-url", help="the public https URL Telnyx reaches (default: PUBLIC_URL)")
    serve.add_argument(
        "--workers", type=int, default=1, help="processes serving the port (default 1; e.g. one per core)"
    )

    texml = sub.add_parser("texml", help="print the TeXML document for a TeXML Bin (dial-in)")
    texml.add_argument("--public-url", help="the public https URL of the server (default: PUBLIC_URL)")
    texml.add_argument(
        "--ttl-minutes",
        type=float,
        default=10.0,
        help="without TEXML_PATH_SECRET: lifetime of the document's one-use stream token (max 60)",
    )

    dial = sub.add_parser("dial", help="ask a running server to place an outbound call (POST /start)")
    dial.add_argument("phone_number", help="E.164 number, e.g. +15551234567")
    dial.add_argument("--body", help="JSON passed to the bot as runner_args.body")
    dial.add_argument("--server", default="http://127.0.0.1:8000", help="the callpipe server")
    dial.add_argument(
        "--amd",
        help="answering machine detection: premium, detect, detect_beep, detect_words or greeting_end",
    )
    dial.add_argument("--api-key", help="CALLPIPE_API_KEY of the server (default: from the environment)")
    dial.add_argument(
        "--stream-codec", help="what the bot sends back: PCMU, PCMA, G722 or L16 (DIAL_MODE=call_control)"
    )
    dial.add_argument("--stream-rate", type=int, help="its sampling rate (8000, or 16000 for G722/L16)")
    dial.add_argument("--target-legs", choices=("self", "opposite", "both"), help="who hears the bot")
    dial.add_argument(
        "--stream-track",
        choices=("inbound_track", "outbound_track", "both_tracks"),
        help="tracks Telnyx streams",
    )

    from callpipe.store.cli import add_calls_parser

    add_calls_parser(sub)

    fake = sub.add_parser(
        "fake-telnyx", help="run the fake Telnyx API (dial-out answered by simulated callees)"
    )
    fake.add_argument("--host", default="127.0.0.1")
    fake.add_argument("--port", type=int, default=8765)
    fake.add_argument("--api-key", default="test-key", help="the API key it accepts (default test-key)")
    fake.add_argument("--webhook-url", help="where to send signed call webhooks")
    fake.add_argument(
        "--callee",
        action="append",
        metavar="NUMBER=KIND",
        help="what answers a dialled number: human, voicemail, screening, busy or no-answer (repeatable)",
    )
    fake.add_argument(
        "--default-callee",
        default="human",
        choices=("human", "voicemail", "screening", "busy", "no-answer"),
        help="what answers every other number (default human)",
    )
    fake.add_argument(
        "--callee-codec",
        metavar="CODEC[:RATE]",
        help="the codec the callees' calls carry, e.g. PCMA or L16:16000 (default: the stream's)",
    )
    fake.add_argument(
        "--agent",
        action="append",
        metavar="NUMBER=KIND",
        help="a warm-transfer agent: accept, decline, listen, no-answer or machine (repeatable)",
    )
    fake.add_argument("--allow-remote", action="store_true", help=argparse.SUPPRESS)

    realtime = sub.add_parser(
        "fake-realtime", help="run a fake OpenAI Realtime API (speech-to-speech wire protocol) for tests"
    )
    realtime.add_argument("--host", default="127.0.0.1")
    realtime.add_argument("--port", type=int, default=8766)
    realtime.add_argument("--api-key", help="the only API key it accepts (default: any)")
    realtime.add_argument("--allow-remote", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``callpipe`` command line and return the process exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.WARNING)
    if args.command == "demo":
        configure_logging(logging.DEBUG if args.verbose else logging.ERROR)
        return _demo(args)
    if args.command == "call":
        return asyncio.run(_call(args))
    if args.command == "load":
        return asyncio.run(_load(args))
    if args.command == "serve":
        configure_logging(logging.DEBUG if args.verbose else logging.INFO)
        return _serve(args)
    if args.command == "texml":
        return _texml(args)
    if args.command == "dial":
        return asyncio.run(_dial(args))
    if args.command == "calls":
        from callpipe.store.cli import run_calls

        return run_calls(args)
    if args.command == "fake-telnyx":
        configure_logging(logging.DEBUG if args.verbose else logging.INFO)
        return _fake_telnyx(args)
    if args.command == "fake-realtime":
        configure_logging(logging.DEBUG if args.verbose else logging.INFO)
        return _fake_realtime(args)
    parser.print_help(sys.stderr)
    return 2
