"""Shared fixtures: speech clips, tones, a fake Telnyx API and a canned bot on real servers."""

from __future__ import annotations

import json
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.pg import postgres_server

__all__ = ["postgres_server"]

DATA = Path(__file__).parent / "data"


def read_wav(path: Path) -> tuple[bytes, int]:
    """PCM16 mono bytes and sample rate of a WAV file."""
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        return wav.readframes(wav.getnframes()), wav.getframerate()


@pytest.fixture(scope="session")
def speech_8k() -> bytes:
    """About 1.7 s of English speech at 8 kHz, trimmed to the speech with 0.1 s margins."""
    pcm, rate = read_wav(DATA / "speech_8k.wav")
    marks = json.loads((DATA / "speech_clips.json").read_text())["speech_8k.wav"]
    start = int((marks["speech_start"] - 0.1) * rate) * 2
    end = int((marks["speech_end"] + 0.1) * rate) * 2
    return pcm[start:end]


def tone(secs: float, rate: int = 8000, freq: float = 440.0, level: float = 0.25) -> bytes:
    """A sine tone as PCM16 mono."""
    t = np.arange(int(secs * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * level * 32767).astype(np.int16).tobytes()


@pytest.fixture()
def fake_telnyx() -> Iterator[tuple[str, object]]:
    """A fake Telnyx REST API on a real uvicorn server: ``(base_url + "/v2", state)``."""
    from callpipe.server.background import BackgroundServer
    from callpipe.sim.fake_api import create_fake_telnyx_app

    app = create_fake_telnyx_app(api_key="test-key")
    with BackgroundServer(app) as server:
        yield server.base_url + "/v2", app.state.telnyx


@pytest.fixture(autouse=True)
def _data_dir_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers the tests start keep their records (SQLite) in a temporary DATA_DIR."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path_factory.mktemp("data")))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server = request.getfixturevalue("postgres_server")
    url: str = server.new_database()
    return url
