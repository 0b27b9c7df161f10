"""The console's sign-in and guards: session cookie, CSRF, throttling, nothing readable without it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from urllib.parse import parse_qs

import httpx
import pytest

from callpipe.console.session import COOKIE_NAME, SessionSigner
from callpipe.console.views import Prices, cost_estimate, mask_number, overview, percentile
from callpipe.server.app import create_app
from callpipe.server.background import BackgroundServer, free_port
from callpipe.server.settings import ServerSettings
from callpipe.server.tokens import verify_token
from tests.console_support import PASSWORD, sample_record

SECRET = "console-test-secret-Qq12"


async def _idle_bot(runner_args: object) -> None:
    await asyncio.sleep(3600)


def _settings(port: int, **extra: object) -> ServerSettings:
    values: dict[str, object] = {
        "public_url": f"http://127.0.0.1:{port}",
        "callpipe_secret": SECRET,
        "callpipe_api_key": PASSWORD,
        "records": False,  # these tests read no records
        "_env_file": None,
    }
    values.update(extra)
    return ServerSettings(**values)  # type: ignore[arg-type]


@pytest.fixture()
def server() -> Iterator[BackgroundServer]:
    port = free_port()
    with BackgroundServer(create_app(_idle_bot, _settings(port)), port=port) as srv:
        yield srv


def _sign_in(client: httpx.Client, password: str = PASSWORD) -> httpx.Response:
    return client.post("/login", data={"password": password, "next": "/dashboard"})


# ----------------------------------------------------------------- pure logic


def test_session_cookie_is_signed_and_expires() -> None:
    signer = SessionSigner(PASSWORD, SECRET, ttl_secs=60)
    value, session = signer.issue(now=1000.0)
    assert signer.verify(value, now=1030.0) == session
    assert signer.verify(value, now=1061.0) is None  # expired
    claims, _, signature = value.partition(".")
    assert signer.verify(claims + "." + signature[:-2] + "AA", now=1030.0) is None  # forged
    assert signer.verify("garbage", now=1030.0) is None
    # Another password (or secret) signs different sessions: changing it signs everyone out.
    assert SessionSigner("other", SECRET).verify(value, now=1030.0) is None
    assert SessionSigner(PASSWORD, "other-secret").verify(value, now=1030.0) is None
    token = signer.csrf_token(session)
    assert signer.check_csrf(session, token)
    assert not signer.check_csrf(session, None)
    _, other = signer.issue(now=1000.0)
    assert not signer.check_csrf(other, token)  # bound to its session


def test_views_mask_percentiles_cost_and_overview() -> None:
    assert mask_number("+15550001234") == "+1••••••1234"
    assert mask_number("1234") == "1234"
    assert mask_number(None) == ""
    assert percentile([100, 200, 300, 400], 0.5) == 250
    assert percentile([], 0.5) is None
    record = sample_record("v3:c1", started_at=1_700_000_000.0)
    prices = Prices(
        telephony_per_min=0.01,
        stt_per_min=0.006,
        llm_prompt_per_million=0.15,
        llm_completion_per_million=0.6,
        tts_per_million_chars=30.0,
    )
    cost = cost_estimate(record, prices)
    # 12 s call, 12 s of Deepgram, 900 + 60 tokens, 95 characters.
    assert cost["parts"]["telephony"] == pytest.approx(0.002)
    assert cost["parts"]["stt"] == pytest.approx(0.0012)
    assert cost["parts"]["llm"] == pytest.approx((900 * 0.15 + 60 * 0.6) / 1e6)
    assert cost["parts"]["tts"] == pytest.approx(95 * 30 / 1e6)
    assert cost["total"] == pytest.approx(sum(cost["parts"].values()))
    record.usage.stt_audio_secs = {"whisper:tiny.en": 12.0}  # embedded: free
    assert cost_estimate(record, prices)["parts"]["stt"] == 0
    data = overview([record], days=3, now=record.started_at + 3600)
    assert data["calls"] == [0, 0, 1]
    assert data["v2v_p50_ms"][-1] == 650  # bot turns heard after 160, 700, 650 ms
    assert data["end_reasons"] == {"caller_hangup": 1}


# ----------------------------------------------------------------- over HTTP


def test_nothing_is_readable_without_signing_in(server: BackgroundServer) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        for path in ("/dashboard", "/dashboard/overview", "/dashboard/calls/v3:x", "/phone"):
            response = client.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/login?next=")
        for path in (
            "/console/api/calls",
            "/console/api/calls/v3:x",
            "/console/api/live",
            "/console/api/overview",
        ):
            response = client.get(path)
            assert response.status_code == 401, path
            assert PASSWORD not in response.text
        assert client.post("/console/api/phone/session", json={}).status_code == 401
        assert client.post("/console/api/calls/v3:x/hangup").status_code == 401
        # A forged cookie is no better.
        client.cookies.set(COOKIE_NAME, "e30.AAAA")
        assert client.get("/console/api/calls").status_code == 401
        # The assets (code, no data) and the sign-in page are public.
        assert client.get("/console/static/phone-worklet.js").status_code == 200
        assert client.get("/login").status_code == 200


def test_sign_in_sets_a_strict_http_only_cookie_and_csrf_guards_changes(server: BackgroundServer) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        wrong = _sign_in(client, "not-the-password")
        assert wrong.status_code == 401 and "Wrong password" in wrong.text
        response = _sign_in(client)
        assert response.status_code == 303 and response.headers["location"] == "/dashboard"
        cookie = response.headers["set-cookie"]
        assert f"{COOKIE_NAME}=" in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert "Secure" not in cookie  # http public URL: a Secure cookie would never come back
        page = client.get("/dashboard")
        assert page.status_code == 200
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        csrf = page.text.split('name="csrf-token" content="')[1].split('"')[0]
        # State-changing requests need the session's CSRF token in a header.
        assert client.post("/console/api/phone/session", json={}).status_code == 403
        assert client.post("/console/api/calls/v3:x/hangup").status_code == 403
        session = client.post("/console/api/phone/session", json={"hd": True}, headers={"X-CSRF-Token": csrf})
        assert session.status_code == 200
        data = session.json()
        assert data["encoding"] == "L16" and data["sample_rate"] == 16000
        assert data["call_control_id"].startswith("v3:console-")
        token = parse_qs(data["stream_query"])["token"][0]
        claims = verify_token(SECRET, token)
        assert claims.call_id == data["call_control_id"]  # bound to this browser call
        assert claims.expires_at - time.time() <= 61  # and short-lived
        bad = client.post(
            "/console/api/phone/session", json={"from": "<script>"}, headers={"X-CSRF-Token": csrf}
        )
        assert bad.status_code == 422
        # Signing out needs the token too; afterwards the cookie is gone.
        assert client.post("/logout").status_code == 403
        assert client.post("/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
        assert client.get("/dashboard").status_code == 303


def test_open_redirects_and_password_guessing_are_refused(server: BackgroundServer) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        response = client.post("/login", data={"password": PASSWORD, "next": "//evil.example/"})
        assert response.headers["location"] == "/dashboard"
    with httpx.Client(base_url=server.base_url) as client:
        codes = [_sign_in(client, f"guess-{i}").status_code for i in range(12)]
        assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
        assert _sign_in(client).status_code == 429  # even the right one, for a minute


def test_cookie_is_secure_behind_https_and_console_password_wins() -> None:
    port = free_port()
    settings = _settings(port, public_url="https://bot.example.com", console_password="ops-only-Pw")
    with (
        BackgroundServer(create_app(_idle_bot, settings), port=port) as srv,
        httpx.Client(base_url=srv.base_url) as client,
    ):
        assert _sign_in(client).status_code == 401  # CONSOLE_PASSWORD replaces the API key
        response = _sign_in(client, "ops-only-Pw")
        assert response.status_code == 303 and "Secure" in response.headers["set-cookie"]


def test_console_is_off_without_a_password() -> None:
    port = free_port()
    settings = _settings(port, callpipe_api_key=None)
    with (
        BackgroundServer(create_app(_idle_bot, settings), port=port) as srv,
        httpx.Client(base_url=srv.base_url) as client,
    ):
        response = client.get("/login")
        assert response.status_code == 503 and "CONSOLE_PASSWORD" in response.text
        assert client.post("/login", data={"password": ""}).status_code == 503
        assert client.get("/console/api/calls").status_code == 401


def test_live_streams_end_when_the_session_expires(tmp_path: object) -> None:
    port = free_port()
    settings = _settings(port, records=True, data_dir=str(tmp_path), console_session_hours=2 / 3600)
    with (
        BackgroundServer(create_app(_idle_bot, settings), port=port) as srv,
        httpx.Client(base_url=srv.base_url, timeout=10) as client,
    ):
        assert _sign_in(client).status_code == 303
        started = time.monotonic()
        events = []
        with client.stream("GET", "/console/api/live") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                events.append(line)
                if line.startswith("event: signed-out"):
                    break
        assert events[0] == 'data: {"calls":[]}'  # the live list, then the end of the session
        assert 1.0 < time.monotonic() - started < 6.0
        assert client.get("/console/api/calls").status_code == 401  # the cookie is no longer valid
