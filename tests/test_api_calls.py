"""``/api/calls`` on a real uvicorn server over real SQLite and PostgreSQL stores."""

from __future__ import annotations

import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from callpipe.runner import RunnerArguments
from callpipe.server.app import create_app
from callpipe.server.background import BackgroundServer
from callpipe.server.settings import ServerSettings
from callpipe.store.sql import SqlCallStore
from tests.store_helpers import full_record, started_store

KEY = "api-key-for-tests"
AUTH = {"Authorization": f"Bearer {KEY}"}


async def _noop_bot(args: RunnerArguments) -> None:
    return None


def _settings(**values: Any) -> ServerSettings:
    base: dict[str, Any] = {"public_url": "https://bot.example", "callpipe_insecure_streams": True}
    base.update(values)
    return ServerSettings(_env_file=None, **base)  # type: ignore[call-arg]


@pytest.fixture()
def server(db_url: str, tmp_path: Path) -> Iterator[tuple[BackgroundServer, str]]:
    """A callpipe server whose store is on ``db_url`` (the test writes through its own store)."""
    settings = _settings(callpipe_api_key=KEY, recording_dir=str(tmp_path / "recordings"))
    app = create_app(_noop_bot, settings, store=SqlCallStore(db_url))
    with BackgroundServer(app) as srv:
        yield srv, db_url


def _stereo_wav(path: Path, secs: float = 1.0) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\x01\x00\x02\x00" * int(8000 * secs))


async def test_every_endpoint_needs_the_api_key(server: tuple[BackgroundServer, str]) -> None:
    srv, _ = server
    async with httpx.AsyncClient(base_url=srv.base_url) as http:
        for path in ("/api/calls", "/api/calls/x", "/api/calls/x/recording"):
            r = await http.get(path)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            r = await http.get(path, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
            r = await http.get(path, headers={"Authorization": KEY})
            assert r.status_code == 401


def test_without_a_key_the_api_is_off_with_a_clear_503(tmp_path: Path) -> None:
    app = create_app(_noop_bot, _settings(), store=SqlCallStore(f"sqlite:///{tmp_path}/x.db"))
    with BackgroundServer(app) as srv:
        r = httpx.get(f"{srv.base_url}/api/calls", headers=AUTH)
        assert r.status_code == 503 and "CALLPIPE_API_KEY" in r.json()["error"]["detail"]


def test_records_off_answers_503_and_keeps_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    app = create_app(_noop_bot, _settings(callpipe_api_key=KEY, records=False))
    assert app.state.callpipe.store is None
    with BackgroundServer(app) as srv:
        r = httpx.get(f"{srv.base_url}/api/calls", headers=AUTH)
        assert r.status_code == 503 and "RECORDS=off" in r.json()["error"]["detail"]
    assert not (tmp_path / "callpipe.db").exists()


def test_default_store_is_sqlite_in_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    app = create_app(_noop_bot, _settings(callpipe_api_key=KEY))
    with BackgroundServer(app) as srv:
        store = app.state.callpipe.store
        assert isinstance(store, SqlCallStore) and store.dialect == "sqlite"
        r = httpx.get(f"{srv.base_url}/api/calls", headers=AUTH)
        assert r.status_code == 200 and r.json() == {"calls": [], "next_cursor": None}
    assert (tmp_path / "data" / "callpipe.db").is_file()


async def test_list_show_and_recording(server: tuple[BackgroundServer, str], tmp_path: Path) -> None:
    srv, url = server
    (tmp_path / "recordings").mkdir()
    wav = tmp_path / "recordings" / "rec.wav"  # served only from under the server's RECORDING_DIR
    _stereo_wav(wav)
    t0 = time.time() - 3600
    async with started_store(url) as writer:
        writer.sink.finish(full_record("with-rec", started_at=t0 + 10, recording_path=str(wav)))
        writer.sink.finish(full_record("no-rec", started_at=t0, direction="outbound"))
        writer.sink.finish(
            full_record("gone-rec", started_at=t0 - 10, recording_path=str(tmp_path / "x.wav"))
        )
        await writer.writer.flush()
    async with httpx.AsyncClient(base_url=srv.base_url, headers=AUTH) as http:
        body = (await http.get("/api/calls")).json()
        assert [c["call_control_id"] for c in body["calls"]] == ["with-rec", "no-rec", "gone-rec"]
        first = body["calls"][0]
        assert "turns" not in first and "events" not in first and first["turn_count"] == 3
        assert first["recording_url"] == "/api/calls/with-rec/recording"
        assert body["calls"][1]["recording_url"] is None
        assert first["from"] == "+15551230001" and first["started_at"].endswith("Z")

        page = (await http.get("/api/calls", params={"limit": 2})).json()
        assert len(page["calls"]) == 2 and page["next_cursor"]
        rest = (await http.get("/api/calls", params={"limit": 2, "cursor": page["next_cursor"]})).json()
        assert [c["call_control_id"] for c in rest["calls"]] == ["gone-rec"] and rest["next_cursor"] is None

        def ids(resp: httpx.Response) -> list[str]:
            assert resp.status_code == 200, resp.text
            return [c["call_control_id"] for c in resp.json()["calls"]]

        assert ids(await http.get("/api/calls", params={"direction": "outbound"})) == ["no-rec"]
        assert len(ids(await http.get("/api/calls", params={"number": "+15559990000"}))) == 3
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0 + 5))
        assert ids(await http.get("/api/calls", params={"since": since})) == ["with-rec"]
        assert ids(await http.get("/api/calls", params={"until": since})) == ["no-rec", "gone-rec"]
        assert ids(await http.get("/api/calls", params={"end_reason": "caller_hangup", "q": "TABLE"})) == [
            "with-rec",
            "no-rec",
            "gone-rec",
        ]
        assert ids(await http.get("/api/calls", params={"q": "zebra"})) == []
        for params, code in [
            ({"limit": "0"}, "bad_limit"),
            ({"limit": "x"}, "bad_limit"),
            ({"direction": "sideways"}, "bad_direction"),
            ({"end_reason": "boredom"}, "bad_end_reason"),
            ({"since": "yesterday"}, "bad_time"),
        ]:
            r = await http.get("/api/calls", params=params)
            assert r.status_code == 422 and r.json()["error"]["code"] == code
        r = await http.get("/api/calls", params={"cursor": "nope"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_cursor"

        full = (await http.get("/api/calls/with-rec")).json()
        assert full == full_record("with-rec", started_at=t0 + 10, recording_path=str(wav)).to_json(
            recording_url="/api/calls/with-rec/recording"
        ) | {"instance": full["instance"]}
        assert full["turns"][2]["latency"]["heard_ms"] == 610.0
        r = await http.get("/api/calls/unknown")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

        r = await http.get("/api/calls/with-rec/recording")
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        assert r.content == wav.read_bytes()
        r = await http.get("/api/calls/with-rec/recording", headers={"Range": "bytes=0-43"})
        assert r.status_code == 206 and r.content == wav.read_bytes()[:44]
        r = await http.get("/api/calls/no-rec/recording")
        assert r.status_code == 404 and r.json()["error"]["code"] == "no_recording"
        r = await http.get("/api/calls/gone-rec/recording")  # written by another (now stopped) instance
        assert r.status_code == 404 and r.json()["error"]["code"] == "recording_unreachable"
        assert r.json()["error"]["instance"] == full["instance"]
        r = await http.get("/api/calls/unknown/recording")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
