"""What ``callpipe demo`` reports: per-call results, their checks, the tables and the JSON."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RED, GREEN, RESET = "\033[31m", "\033[32m", "\033[0m"


@dataclass
class DemoTurn:
    """One line of the transcript."""

    speaker: str
    text: str
    latency_ms: float | None = None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation; values need not be sorted."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class DemoResult:
    """What one demo call reports."""

    turns: list[DemoTurn] = field(default_factory=list)
    hung_up: bool = False
    booking_confirmed: bool = False
    load_secs: float = 0.0
    call_secs: float = 0.0
    caller_name: str = ""
    caller_number: str = ""
    caller_lines: int = 0
    answered: list[bool] = field(default_factory=list)  # per caller line: a reply before the next line
    latencies_ms: list[float | None] = field(default_factory=list)  # per caller line
    greeting_ms: float | None = None
    nudges: list[int] = field(default_factory=list)  # the caller said "Hello?" after this many lines
    stages: dict[str, list[float]] = field(default_factory=dict)  # seconds, per stage name
    outcome: Any = None  # the simulator's CallResult (recording)

    def build(self, events: list[tuple[float, str, str]], outcome: Any) -> None:
        """Fill the transcript and checks from the time-ordered lines and the caller's timings."""
        self.outcome = outcome
        self.caller_lines = len(outcome.turns)
        self.latencies_ms = [_ms(t.response_latency) for t in outcome.turns]
        self.answered = [t.first_bot_audio_heard_at is not None for t in outcome.turns]
        self.greeting_ms = _ms(outcome.greeting_latency)
        self.nudges = [said for said, _ in outcome.nudges]
        answered: set[int] = set()
        caller_index = -1
        for _, speaker, text in events:
            if speaker == "caller":
                caller_index += 1
                self.turns.append(DemoTurn("caller", text))
            elif caller_index < 0:
                self.turns.append(DemoTurn("bot", text, self.greeting_ms if not self.turns else None))
            else:
                first = caller_index not in answered and caller_index < len(self.latencies_ms)
                answered.add(caller_index)
                self.turns.append(DemoTurn("bot", text, self.latencies_ms[caller_index] if first else None))
        answers = [turn.text for turn in self.turns if turn.speaker == "bot"]
        self.booking_confirmed = any("booked" in line.lower() for line in answers)

    def reply_latencies(self) -> list[float]:
        """Voice-to-voice latency (ms) of every answered caller line."""
        return [ms for ms in self.latencies_ms if ms is not None]

    def failures(self, *, expect_booking: bool = True) -> list[str]:
        """Why this call did not pass (empty when it did)."""
        reasons = []
        if self.greeting_ms is None:
            reasons.append("the bot never greeted the caller")
        for said in sorted(set(self.nudges)):
            what = "the greeting" if said == 0 else f"caller line {said}"
            times = self.nudges.count(said)
            again = f" ({times} times)" if times > 1 else ""
            reasons.append(f"no answer to {what} within 2.5 s: the caller had to say 'Hello?'{again}")
        for index, ok in enumerate(self.answered):
            if not ok:
                reasons.append(f"caller line {index + 1} got no reply before the caller's next line")
        if expect_booking and not self.booking_confirmed:
            reasons.append("the bot never confirmed the booking in its own words")
        if not self.hung_up:
            reasons.append("the call did not end with the bot's hang-up")
        return reasons

    def to_json(self) -> dict[str, Any]:
        """The JSON transcript (one call)."""
        stages = {name: round(1000 * statistics.median(v), 1) for name, v in sorted(self.stages.items()) if v}
        return {
            "caller": {"name": self.caller_name, "number": self.caller_number},
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
            "caller_lines": self.caller_lines,
            "answered_lines": sum(self.answered),
            "nudges": len(self.nudges),
            "stage_median_ms": stages,
        }


def aggregate(results: list[DemoResult]) -> dict[str, Any]:
    """Turns answered and v2v p50/p95 over all calls."""
    latencies = [ms for r in results for ms in r.reply_latencies()]
    return {
        "calls": len(results),
        "caller_lines": sum(r.caller_lines for r in results),
        "answered_lines": sum(sum(r.answered) for r in results),
        "v2v_p50_ms": round(percentile(latencies, 0.5)) if latencies else None,
        "v2v_p95_ms": round(percentile(latencies, 0.95)) if latencies else None,
    }


def write_outputs(results: list[DemoResult], record: str, transcript: str) -> None:
    """The JSON (one call: its transcript; several: a list of them) and the first call's WAV."""
    if len(results) == 1:
        data: dict[str, Any] = results[0].to_json()
    else:
        data = {"calls": [r.to_json() for r in results], "aggregate": aggregate(results)}
    Path(transcript).write_text(json.dumps(data, indent=2) + "\n")
    if results and results[0].outcome is not None:
        results[0].outcome.write_wav(record)


def _fmt(ms: float | None) -> str:
    return f"{ms:.0f} ms" if ms is not None else "—"


def _stage_lines(results: list[DemoResult]) -> list[str]:
    merged: dict[str, list[float]] = {}
    for result in results:
        for name, values in result.stages.items():
            merged.setdefault(name, []).extend(values)
    return [
        f"  {name:<34} median {1000 * statistics.median(v):6.0f} ms   max {1000 * max(v):6.0f} ms"
        for name, v in sorted(merged.items())
        if v
    ]


def print_summary(results: list[DemoResult], record: str, transcript: str) -> None:
    """The transcript (one call) or the per-call lines and the aggregate table (several)."""
    print("\n" + "─" * 72)
    if len(results) == 1:
        print(f"{'speaker':<8} {'latency':>9}  text")
        for turn in results[0].turns:
            latency = f"{turn.latency_ms:.0f} ms" if turn.latency_ms is not None else ""
            print(f"{turn.speaker:<8} {latency:>9}  {turn.text}")
        print("─" * 72)
    else:
        for number, result in enumerate(results, 1):
            lat = result.reply_latencies()
            state = f"{GREEN}ok{RESET}" if not result.failures() else f"{RED}FAILED{RESET}"
            print(
                f"call {number} ({result.caller_name}): {sum(result.answered)}/{result.caller_lines} lines answered,"
                f" v2v p50 {_fmt(percentile(lat, 0.5) if lat else None)},"
                f" booked: {'yes' if result.booking_confirmed else 'no'},"
                f" hung up: {'yes' if result.hung_up else 'no'}  {state}"
            )
        print("─" * 72)
        print(f"{'call':<14} {'answered':>9} {'v2v p50':>9} {'v2v p95':>9}")
        for number, result in enumerate(results, 1):
            lat = result.reply_latencies()
            p50, p95 = (percentile(lat, 0.5), percentile(lat, 0.95)) if lat else (None, None)
            print(
                f"{number:<3} {result.caller_name:<10} {sum(result.answered):>4}/{result.caller_lines:<4}"
                f" {_fmt(p50):>9} {_fmt(p95):>9}"
            )
        total = aggregate(results)
        print(
            f"{'all':<14} {total['answered_lines']:>4}/{total['caller_lines']:<4}"
            f" {_fmt(total['v2v_p50_ms']):>9} {_fmt(total['v2v_p95_ms']):>9}"
        )
        print("─" * 72)
    latencies = [ms for r in results for ms in r.reply_latencies()]
    if latencies:
        print(
            f"voice-to-voice (caller stopped -> bot heard): p50 {percentile(latencies, 0.5):.0f} ms,"
            f" p95 {percentile(latencies, 0.95):.0f} ms, max {max(latencies):.0f} ms"
        )
    print("where the time goes (medians over the call's turns):")
    for line in _stage_lines(results):
        print(line)
    if len(results) == 1:
        result = results[0]
        print(
            f"booking confirmed: {'yes' if result.booking_confirmed else 'no'};"
            f" call ended with hang-up: {'yes' if result.hung_up else 'no'}"
        )
    print(f"recording (caller left, bot right{', first call' if len(results) > 1 else ''}): {record}")
    print(f"transcript: {transcript}", flush=True)
