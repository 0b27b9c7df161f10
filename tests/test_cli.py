"""The command line against a real bot server: ``callpipe call`` and ``callpipe load``."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import pytest

from callpipe.cli import main
from callpipe.server.background import BackgroundServer
from callpipe.sim.bots import CannedBotConfig, create_canned_bot_app
from tests.conftest import tone


def test_call_prints_the_conversation_and_records_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app, calls = create_canned_bot_app(CannedBotConfig(reply=tone(0.6), greeting=tone(0.5)))
    record = tmp_path / "call.wav"
    with BackgroundServer(app) as server:
        code = main(["call", server.ws_url + "/ws", "--record", str(record), "--param", "campaign_id=c-9"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "caller: Hello, can you hear me clearly?" in out
    assert "responded in" in out
    assert "turn 1: response latency" in out and "no answer" not in out
    assert calls[0].call_data["custom_parameters"] == {"campaign_id": "c-9"}
    with wave.open(str(record)) as wav:
        assert wav.getnchannels() == 2 and wav.getframerate() == 8000
        assert wav.getnframes() / 8000 > 2.0  # greeting + turn + reply


def test_call_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        main(["call", "ws://127.0.0.1:9/ws", "--param", "novalue"])
    with pytest.raises(SystemExit, match="cannot read"):
        main(["call", "ws://127.0.0.1:9/ws", "--wav", "/nonexistent.wav"])


def test_load_reports_latency_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app, calls = create_canned_bot_app(CannedBotConfig(reply=tone(0.5), greeting=tone(0.3)))
    report_path = tmp_path / "load.json"
    with BackgroundServer(app) as server:
        code = main(
            [
                "load",
                server.ws_url + "/ws",
                "--calls",
                "5",
                "--duration",
                "4",
                "--ramp",
                "0.5",
                "--quiet",
                "--json",
                str(report_path),
            ]
        )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "calls: 5 ok, 0 failed" in out
    assert "response latency: p50" in out
    report = json.loads(report_path.read_text())
    assert report["ok"] == 5 and report["turns"] >= 5 and report["unanswered_turns"] == 0
    assert report["response_latency_p95"] < 0.6
    assert len(calls) == 5


def test_load_validates_its_bounds() -> None:
    with pytest.raises(SystemExit, match="--calls"):
        main(["load", "ws://127.0.0.1:9/ws", "--calls", "0"])
    with pytest.raises(SystemExit, match="--duration"):
        main(["load", "ws://127.0.0.1:9/ws", "--duration", "-1"])


def test_simulated_traffic_stays_on_this_machine_by_default() -> None:
    with pytest.raises(SystemExit, match="--allow-remote"):
        main(["load", "ws://10.1.2.3:8000/ws", "--calls", "1"])
    with pytest.raises(SystemExit, match="--allow-remote"):
        main(["call", "wss://bot.example.com/ws"])
