"""``callpipe call`` (one simulated Telnyx call) and ``callpipe load`` (many at once)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from callpipe.cli.common import default_caller_audio, fraction, parse_params, read_wav, require_loopback

if TYPE_CHECKING:  # imported when run: building the parser must not load the simulator
    from callpipe.sim.caller import CallerTurn, CallResult
    from callpipe.sim.load import LoadProgress, LoadReport


def register(sub: Any) -> None:
    """Add ``call`` and ``load`` to the ``callpipe`` parser's subparsers."""
    _add_call_parser(sub)
    _add_load_parser(sub)


def _add_call_parser(sub: Any) -> None:
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
        "--reorder", type=fraction, default=0.0, help="share of media frames sent after the next one (0-1)"
    )
    call.add_argument(
        "--duplicate", type=fraction, default=0.0, help="share of media frames sent twice (0-1)"
    )
    call.set_defaults(run=run_call)


def _add_load_parser(sub: Any) -> None:
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
    load.set_defaults(run=run_load)


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


async def _caller_turns(args: argparse.Namespace, voice: Any) -> list[CallerTurn]:
    """What the caller says, in order: --say lines, --wav files, --dtmf keys, else the built-in line."""
    from callpipe.sim.caller import CallerTurn

    turns: list[CallerTurn] = []
    for line in args.say:
        assert voice is not None
        pcm = await voice.synthesize(line)
        turns.append(CallerTurn(audio=pcm, sample_rate=8000, text=line, quiet_secs=args.wait))
    for path in args.wav:
        pcm, rate = read_wav(path)
        turns.append(CallerTurn(audio=pcm, sample_rate=rate, text=Path(path).name, quiet_secs=args.wait))
    if args.dtmf:
        turns.append(CallerTurn(dtmf=args.dtmf, text=f"DTMF {args.dtmf}"))
    if not turns:
        pcm, rate = default_caller_audio()
        turns.append(
            CallerTurn(
                audio=pcm, sample_rate=rate, text="Hello, can you hear me clearly?", quiet_secs=args.wait
            )
        )
    return turns


def _caller_options(args: argparse.Namespace, params: dict[str, str], stt: Any) -> dict[str, Any]:
    """The ``SimulatedCaller`` keyword arguments the command line asks for."""
    return {
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


async def _follow_texml(args: argparse.Namespace, params: dict[str, str], options: dict[str, Any]) -> str:
    """Fetch the TeXML at ``args.url`` as Telnyx would; set ``options`` from its stream; its URL."""
    from callpipe.sim import texml

    call_sid = f"v3:sim-{uuid.uuid4().hex}"
    instructions = await texml.fetch_texml(
        args.url,
        call_sid=call_sid,
        account_sid="sim-account",
        from_number=args.from_number,
        to_number=args.to_number,
    )
    options["call_control_id"] = call_sid
    stream = instructions.stream
    print(f"TeXML: streaming to {stream.url} ({stream.encoding})", flush=True)
    options["custom_parameters"] = {**stream.parameters, **params}
    # The TeXML says what goes back; --codec is the call's own (a PCMA call, say).
    options["out_encoding"] = stream.encoding
    options["out_sample_rate"] = stream.sample_rate
    if args.codec is None:
        options["encoding"], options["sample_rate"] = stream.encoding, stream.sample_rate
    return stream.url


async def _finish_transcripts() -> None:
    """Wait (10 s at most) for this run's transcriptions of the bot's replies to print."""
    # Only this run's tasks: an earlier main() in the same process left its own (loop closed).
    loop = asyncio.get_running_loop()
    mine = {task for task in _background if task.get_loop() is loop}
    _background.difference_update(_background - mine)
    if mine:
        await asyncio.wait(mine, timeout=10)


def _print_call_summary(args: argparse.Namespace, result: CallResult) -> None:
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


async def run_call(args: argparse.Namespace) -> int:
    """Place one simulated call, print what happens and a summary; 1 if the call had errors."""
    from callpipe.sim.caller import SimulatedCaller

    require_loopback(args.url, args.allow_remote, "callpipe call")
    voice, stt = _local_speech(need_voice=bool(args.say))
    turns = await _caller_turns(args, voice)
    params = parse_params(args.param)
    options = _caller_options(args, params, stt)
    url = args.url
    if url.startswith(("http://", "https://")):
        url = await _follow_texml(args, params, options)
    print(f"calling {url} …", flush=True)
    caller = SimulatedCaller(url, **options)
    result = await caller.run(turns, hang_up_after_secs=args.hang_up_after)
    await _finish_transcripts()
    _print_call_summary(args, result)
    if args.record:
        await asyncio.to_thread(result.write_wav, args.record)
        print(f"recording (caller left, bot right): {args.record}")
    return 1 if result.errors else 0


# ---------------------------------------------------------------------------- load


def _show_progress(progress: LoadProgress) -> None:
    """Redraw the load run's progress bar on stderr."""
    width = 30
    done = min(1.0, progress.elapsed / progress.total_secs)
    bar = "#" * int(done * width) + "-" * (width - int(done * width))
    sys.stderr.write(
        f"\r[{bar}] {progress.elapsed:5.1f}s  active {progress.active:4d}  "
        f"done {progress.finished:4d}  failed {progress.failed:3d}"
    )
    sys.stderr.flush()


async def run_load(args: argparse.Namespace) -> int:
    """Run many simulated calls at once and print the report; 1 if any call failed."""
    from callpipe.sim.load import LoadConfig
    from callpipe.sim.load import run_load as run_load_calls

    require_loopback(args.url, args.allow_remote, "callpipe load")
    if args.calls < 1 or args.calls > 2000:
        raise SystemExit("--calls must be between 1 and 2000")
    if args.duration <= 0 or args.duration > 3600:
        raise SystemExit("--duration must be between 0 and 3600 seconds")
    pcm, rate = read_wav(args.wav) if args.wav else default_caller_audio()
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
    report = await run_load_calls(config, progress=None if args.quiet else _show_progress)
    if not args.quiet:
        sys.stderr.write("\n")
    print(report.summary())
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(_report_json(report), indent=2))
    return 0 if report.failed == 0 else 1


def _report_json(report: LoadReport) -> dict[str, Any]:
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
