"""TelnyxClient against the fake Telnyx API served by a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from callpipe import __version__
from callpipe.server.background import BackgroundServer, free_port
from callpipe.sim.fake_api import FakeTelnyxState, create_fake_telnyx_app
from callpipe.telnyx.api import (
    TelnyxAPIError,
    TelnyxAuthError,
    TelnyxClient,
    TelnyxConnectionError,
    TelnyxErrorDetail,
    TelnyxNotFoundError,
    TelnyxRateLimitError,
    TelnyxServerError,
    TelnyxValidationError,
    encode_client_state,
)

API_KEY = "KEY0123456789SECRETxyz"
BASE = 0.01  # tiny backoff base keeps the retry tests fast


@pytest.fixture(scope="module")
def _fake() -> Iterator[tuple[BackgroundServer, FakeTelnyxState]]:
    # One real server per module (start/stop costs ~0.2 s); state is reset per test.
    app = create_fake_telnyx_app(API_KEY)
    with BackgroundServer(app) as srv:
        yield srv, app.state.telnyx


@pytest.fixture
def server(_fake: tuple[BackgroundServer, FakeTelnyxState], state: FakeTelnyxState) -> BackgroundServer:
    return _fake[0]


@pytest.fixture
def state(_fake: tuple[BackgroundServer, FakeTelnyxState]) -> FakeTelnyxState:
    _fake[1].reset()
    return _fake[1]


@pytest.fixture
def delays() -> list[float]:
    return []


@pytest.fixture
async def client(server: BackgroundServer, delays: list[float]) -> AsyncIterator[TelnyxClient]:
    async with _client(server.base_url + "/v2", delays) as c:
        yield c


def _client(base_url: str, delays: list[float], *, api_key: str = API_KEY, **kwargs: Any) -> TelnyxClient:
    kwargs.setdefault("backoff_base", BASE)
    kwargs.setdefault("backoff_max", 0.05)
    kwargs.setdefault("timeout", 5.0)
    c = TelnyxClient(api_key, base_url=base_url, **kwargs)

    # Record every backoff delay; sleep for real but never longer than 50 ms.
    real_sleep = c._sleep

    async def recording_sleep(seconds: float) -> None:
        delays.append(seconds)
        await real_sleep(min(seconds, 0.05))

    c._sleep = recording_sleep
    return c


async def _dial(client: TelnyxClient, **kwargs: Any) -> dict[str, Any]:
    return await client.dial(to="+15551230001", from_="+15551230002", connection_id="conn-1", **kwargs)


# --------------------------------------------------------------------------- dial / texml


async def test_dial_sends_documented_fields_on_the_wire(client: TelnyxClient, state: FakeTelnyxState) -> None:
    data = await client.dial(
        to="+15551230001",
        from_="+15551230002",
        connection_id="conn-1",
        stream_url="wss://agent.example/ws",
        stream_track="both_tracks",
        stream_bidirectional_mode="rtp",
        stream_bidirectional_codec="PCMU",
        stream_bidirectional_sampling_rate=8000,
        stream_bidirectional_target_legs="self",
        client_state={"agent": "sales", "n": 1},
        answering_machine_detection="premium",
        timeout_secs=30,
        webhook_url="https://agent.example/webhooks",
        custom_headers={"X-Campaign": "spring"},
        command_id="cmd-dial-1",
        time_limit_secs=600,
    )

    (req,) = state.requests
    assert req.method == "POST"
    assert req.path == "/v2/calls"
    assert req.json == {
        "connection_id": "conn-1",
        "to": "+15551230001",
        "from": "+15551230002",
        "command_id": "cmd-dial-1",
        "client_state": base64.b64encode(b'{"agent":"sales","n":1}').decode(),
        "answering_machine_detection": "premium",
        "timeout_secs": 30,
        "webhook_url": "https://agent.example/webhooks",
        "custom_headers": [{"name": "X-Campaign", "value": "spring"}],
        "stream_url": "wss://agent.example/ws",
        "stream_track": "both_tracks",
        "stream_bidirectional_mode": "rtp",
        "stream_bidirectional_codec": "PCMU",
        "stream_bidirectional_sampling_rate": 8000,
        "stream_bidirectional_target_legs": "self",
        "time_limit_secs": 600,
    }
    assert req.headers["authorization"] == f"Bearer {API_KEY}"
    assert req.headers["user-agent"] == f"callpipe/{__version__}"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["accept"] == "application/json"

    # The parsed "data" object comes back, and it names a call the fake really holds.
    assert data["record_type"] == "call"
    assert data["is_alive"] is True
    assert data["call_control_id"].startswith("v3:")
    call = state.calls[data["call_control_id"]]
    assert data["call_leg_id"] == call.call_leg_id
    assert data["call_session_id"] == call.call_session_id
    assert call.stream_url == "wss://agent.example/ws"


async def test_dial_minimal_body_and_generated_command_id(
    client: TelnyxClient, state: FakeTelnyxState
) -> None:
    await client.dial(to=["+15551230001", "sip:bob@example.com"], from_="+15551230002", connection_id="c")
    body = state.requests[0].json
    command_id = body.pop("command_id")
    assert uuid.UUID(command_id).version == 4
    # No stream fields (not even the stream_track default) without a stream_url; no nulls.
    assert body == {
        "connection_id": "c",
        "to": ["+15551230001", "sip:bob@example.com"],
        "from": "+15551230002",
    }


async def test_dial_client_state_string_is_passed_through(
    client: TelnyxClient, state: FakeTelnyxState
) -> None:
    data = await _dial(client, client_state="aGVsbG8=")
    assert state.requests[0].json["client_state"] == "aGVsbG8="
    assert data["client_state"] == "aGVsbG8="


async def test_dial_extra_may_not_override_explicit_fields(client: TelnyxClient) -> None:
    # "from" is what from_ becomes on the wire; a second spelling must not win silently.
    with pytest.raises(TypeError, match="from"):
        await _dial(client, **{"from": "+1"})


async def test_texml_call_posts_json_with_texml_field_names(
    client: TelnyxClient, state: FakeTelnyxState
) -> None:
    data = await client.texml_call(
        account_sid="acct-42",
        application_sid="app-7",
        to="+15551230001",
        from_="+15551230002",
        url="https://agent.example/texml",
        status_callback="https://agent.example/status",
        StatusCallbackEvent="initiated answered completed",
    )
    (req,) = state.requests
    assert req.path == "/v2/texml/Accounts/acct-42/Calls"
    assert req.headers["content-type"] == "application/json"
    assert req.json == {
        "ApplicationSid": "app-7",
        "To": "+15551230001",
        "From": "+15551230002",
        "Url": "https://agent.example/texml",
        "StatusCallback": "https://agent.example/status",
        "StatusCallbackEvent": "initiated answered completed",
    }
    assert data["status"] == "queued"
    assert data["to"] == "+15551230001"
    assert data["call_sid"] in state.calls


async def test_texml_call_is_not_retried_on_5xx(client: TelnyxClient, state: FakeTelnyxState) -> None:
    # No command_id on this endpoint: a retry after a 5xx could place a second call.
    state.inject("/v2/texml/*", 500, times=None)
    with pytest.raises(TelnyxServerError):
        await client.texml_call(account_sid="a", application_sid="b", to="+1555", from_="+1666")
    assert len(state.requests) == 1


async def test_texml_call_is_retried_on_429(client: TelnyxClient, state: FakeTelnyxState) -> None:
    state.inject("/v2/texml/*", 429)
    data = await client.texml_call(account_sid="a", application_sid="b", to="+1555", from_="+1666")
    assert data["status"] == "queued"
    assert [r.status_code for r in state.requests] == [429, 200]


# --------------------------------------------------------------------------- hangup


async def test_hangup_live_call_returns_true(client: TelnyxClient, state: FakeTelnyxState) -> None:
    ccid = (await _dial(client))["call_control_id"]
    assert await client.hangup(ccid, command_id="cmd-h") is True
    req = state.requests[-1]
    assert req.path == f"/v2/calls/{ccid}/actions/hangup"
    assert req.json == {"command_id": "cmd-h"}
    assert req.status_code == 200
    assert state.calls[ccid].is_alive is False


async def test_hangup_on_ended_call_is_success_returning_false(
    client: TelnyxClient, state: FakeTelnyxState
) -> None:
    ccid = (await _dial(client))["call_control_id"]
    state.end_call(ccid)  # the callee hung up first
    assert await client.hangup(ccid) is False
    req = state.requests[-1]
    assert req.status_code == 422
    assert len(state.requests) == 2  # a 422 is never retried


async def test_hangup_twice_second_reports_already_over(client: TelnyxClient) -> None:
    ccid = (await _dial(client))["call_control_id"]
    assert await client.hangup(ccid) is True
    assert await client.hangup(ccid) is False


async def test_hangup_90018_as_integer_code_is_normalised(
    client: TelnyxClient, state: FakeTelnyxState
) -> None:
    state.inject(
        "/v2/calls/*/actions/hangup", 422, {"errors": [{"code": 90018, "title": "Call has already ended"}]}
    )
    assert await client.hangup("v3:whatever") is False


async def test_hangup_other_422_still_raises(client: TelnyxClient, state: FakeTelnyxState) -> None:
    body = {"errors": [{"code": "90015", "title": "Invalid Call Control ID", "source": {"pointer": "/x"}}]}
    state.inject("/v2/calls/*/actions/hangup", 422, body)
    with pytest.raises(TelnyxValidationError) as info:
        await client.hangup("v3:bad")
    assert info.value.codes == ["90015"]
    assert info.value.errors[0].source == {"pointer": "/x"}


async def test_hangup_with_client_state(client: TelnyxClient, state: FakeTelnyxState) -> None:
    ccid = (await _dial(client))["call_control_id"]
    await client.hangup(ccid, client_state=b"\x00bye")
    assert state.requests[-1].json["client_state"] == base64.b64encode(b"\x00bye").decode()


# --------------------------------------------------------------------------- transfer / dtmf


async def test_transfer_body(client: TelnyxClient, state: FakeTelnyxState) -> None:
    ccid = (await _dial(client))["call_control_id"]
    data = await client.transfer(
        ccid, to="+15559990000", from_="+15551230002", command_id="cmd-t", timeout_secs=20
    )
    assert data == {"result": "ok"}
    req = state.requests[-1]
    assert req.path == f"/v2/calls/{ccid}/actions/transfer"
    assert req.json == {
        "to": "+15559990000",
        "from": "+15551230002",
        "command_id": "cmd-t",
        "timeout_secs": 20,
    }
    assert state.calls[ccid].transfers == [req.json]


async def test_send_dtmf_body(client: TelnyxClient, state: FakeTelnyxState) -> None:
    ccid = (await _dial(client))["call_control_id"]
    data = await client.send_dtmf(ccid, "12w#", duration_millis=250, client_state={"k": "v"}, command_id="d1")
    assert data == {"result": "ok"}
    req = state.requests[-1]
    assert req.path == f"/v2/calls/{ccid}/actions/send_dtmf"
    assert req.json == {
        "digits": "12w#",
        "duration_millis": 250,
        "client_state": base64.b64encode(b'{"k":"v"}').decode(),
        "command_id": "d1",
    }


async def test_send_dtmf_on_ended_call_raises_validation_error(
    client: TelnyxClient, state: FakeTelnyxState
) -> None:
    ccid = (await _dial(client))["call_control_id"]
    await client.hangup(ccid)
    with pytest.raises(TelnyxValidationError) as info:
        await client.send_dtmf(ccid, "1")
    assert info.value.has_code("90018")


# --------------------------------------------------------------------------- quoting


async def test_call_control_id_keeps_colon_in_path(client: TelnyxClient, state: FakeTelnyxState) -> None:
    await client.hangup("v3:abc-DEF_123")
    assert state.requests[0].raw_path == "/v2/calls/v3:abc-DEF_123/actions/hangup"


async def test_call_control_id_special_characters_are_escaped(
    client: TelnyxClient, state: FakeTelnyxState
) -> None:
    weird = "v3:a/b c+d?e#f"
    assert await client.hangup(weird) is False  # unknown call -> 90018
    req = state.requests[0]
    assert req.raw_path == "/v2/calls/v3:a%2Fb%20c%2Bd%3Fe%23f/actions/hangup"
    assert req.path == f"/v2/calls/{weird}/actions/hangup"


async def test_empty_call_control_id_is_rejected_locally(
    client: TelnyxClient, state: FakeTelnyxState
) -> None:
    with pytest.raises(ValueError):
        await client.hangup("")
    assert state.requests == []


# --------------------------------------------------------------------------- auth / 4xx


async def test_wrong_key_raises_auth_error_without_retry(
    server: BackgroundServer, state: FakeTelnyxState
) -> None:
    delays: list[float] = []
    async with _client(server.base_url + "/v2", delays, api_key="KEY_wrong_secret_999") as bad:
        with pytest.raises(TelnyxAuthError) as info:
            await _dial(bad)
    exc = info.value
    assert exc.status_code == 401
    assert exc.codes == ["10009"]
    assert exc.request_method == "POST"
    assert exc.request_path == "/calls"
    assert len(state.requests) == 1
    assert delays == []
    text = str(exc)
    for part in ("401", "10009", "Authentication failed", "POST", "/calls"):
        assert part in text
    assert "KEY_wrong_secret_999" not in text
    assert "KEY_wrong_secret_999" not in repr(exc)


async def test_validation_error_is_not_retried(client: TelnyxClient, state: FakeTelnyxState) -> None:
    with pytest.raises(TelnyxValidationError) as info:
        await client.dial(to="+1555", from_="+1666", connection_id="")
    assert info.value.codes == ["10004"]
    assert info.value.errors[0].source == {"pointer": "/connection_id"}
    assert len(state.requests) == 1


async def test_404_raises_not_found(client: TelnyxClient, state: FakeTelnyxState) -> None:
    state.inject("/v2/calls", 404)
    with pytest.raises(TelnyxNotFoundError) as info:
        await _dial(client)
    assert info.value.codes == ["10005"]
    assert len(state.requests) == 1


async def test_other_4xx_raises_base_api_error(client: TelnyxClient, state: FakeTelnyxState) -> None:
    state.inject("/v2/calls", 409, {"errors": [{"code": "10012", "title": "Duplicate resource"}]})
    with pytest.raises(TelnyxAPIError) as info:
        await _dial(client)
    assert type(info.value) is TelnyxAPIError
    assert info.value.status_code == 409
    assert len(state.requests) == 1


# --------------------------------------------------------------------------- retries


async def test_429_then_success_keeps_command_id_and_honours_retry_after(
    client: TelnyxClient, state: FakeTelnyxState, delays: list[float]
) -> None:
    state.inject("/v2/calls", 429, headers={"Retry-After": "2"})
    data = await _dial(client)
    assert [r.status_code for r in state.requests] == [429, 200]
    first, second = state.requests
    assert first.command_id is not None
    assert first.command_id == second.command_id
    assert first.json == second.json
    assert delays == [2.0]  # Retry-After, not the 10 ms backoff
    assert list(state.calls) == [data["call_control_id"]]


async def test_retry_after_is_capped(server: BackgroundServer, state: FakeTelnyxState) -> None:
    delays: list[float] = []
    async with _client(server.base_url + "/v2", delays, retry_after_max=3.0) as c:
        state.inject("/v2/calls", 429, headers={"Retry-After": "3600"})
        await _dial(c)
    assert delays == [3.0]


async def test_429_without_retry_after_uses_ratelimit_reset_or_backoff(
    client: TelnyxClient, state: FakeTelnyxState, delays: list[float]
) -> None:
    state.inject("/v2/calls", 429, headers={"x-ratelimit-reset": "1.5"})
    state.inject("/v2/calls", 429)
    await _dial(client)
    assert delays[0] == 1.5
    assert BASE * 2 / 2 <= delays[1] <= BASE * 2  # second retry: plain backoff


async def test_429_forever_raises_rate_limit_error(
    client: TelnyxClient, state: FakeTelnyxState, delays: list[float]
) -> None:
    state.inject("/v2/calls", 429, headers={"Retry-After": "0"}, times=None)
    with pytest.raises(TelnyxRateLimitError) as info:
        await _dial(client)
    assert info.value.retry_after == 0.0
    assert info.value.attempts == 4
    assert len(state.requests) == 4


async def test_500_twice_then_success(
    client: TelnyxClient, state: FakeTelnyxState, delays: list[float]
) -> None:
    state.inject("/v2/calls", 500, times=2)
    data = await _dial(client, command_id="stable-1")
    assert [r.status_code for r in state.requests] == [500, 500, 200]
    assert {r.command_id for r in state.requests} == {"stable-1"}
    assert data["call_control_id"] in state.calls
    # Exponential backoff with equal jitter: retry n waits within [c/2, c], c = base * 2**n.
    assert len(delays) == 2
    assert BASE / 2 <= delays[0] <= BASE
    assert BASE <= delays[1] <= 2 * BASE


async def test_backoff_is_bounded_by_backoff_max(server: BackgroundServer, state: FakeTelnyxState) -> None:
    delays: list[float] = []
    async with _client(
        server.base_url + "/v2", delays, backoff_base=1.0, backoff_max=1.5, max_retries=4
    ) as c:
        state.inject("/v2/calls", 503, times=4)
        await _dial(c)
    assert len(delays) == 4
    assert all(d <= 1.5 for d in delays)
    assert 0.5 <= delays[0] <= 1.0
    assert delays[3] >= 0.75


async def test_500_forever_raises_server_error_after_all_attempts(
    client: TelnyxClient, state: FakeTelnyxState, delays: list[float]
) -> None:
    state.inject("/v2/calls", 500, times=None)
    with pytest.raises(TelnyxServerError) as info:
        await _dial(client)
    assert info.value.attempts == client.max_retries + 1 == 4
    assert len(state.requests) == 4
    assert len(delays) == 3
    assert len({r.command_id for r in state.requests}) == 1
    assert "500" in str(info.value)
    assert "10007" in str(info.value)


async def test_max_retries_zero_means_one_attempt(server: BackgroundServer, state: FakeTelnyxState) -> None:
    delays: list[float] = []
    async with _client(server.base_url + "/v2", delays, max_retries=0) as c:
        state.inject("/v2/calls", 500, times=None)
        with pytest.raises(TelnyxServerError):
            await _dial(c)
    assert len(state.requests) == 1
    assert delays == []


async def test_non_json_502_body_gives_clear_error(
    client: TelnyxClient, state: FakeTelnyxState, delays: list[float]
) -> None:
    state.inject("/v2/calls", 502, "<html><h1>502 Bad Gateway</h1></html>", times=None)
    with pytest.raises(TelnyxServerError) as info:
        await _dial(client)
    exc = info.value
    assert exc.status_code == 502
    assert exc.errors == []
    assert exc.body_excerpt is not None and "502 Bad Gateway" in exc.body_excerpt
    assert "non-JSON" in str(exc)
    assert "POST /calls" in str(exc)
    assert len(state.requests) == 4


async def test_lost_response_is_deduplicated_by_command_id(
    client: TelnyxClient, state: FakeTelnyxState
) -> None:
    # The fake dials, then the response is replaced by a 500 ("processed, answer lost").
    state.inject("/v2/calls", 500, after=True)
    data = await _dial(client)
    assert [r.status_code for r in state.requests] == [500, 200]
    assert state.requests[1].deduplicated is True
    assert list(state.calls) == [data["call_control_id"]]  # one call, not two


async def test_timeout_is_retried_with_same_command_id(
    server: BackgroundServer, state: FakeTelnyxState
) -> None:
    delays: list[float] = []
    state.inject("/v2/calls", None, delay=0.6)  # slow, then handled normally
    async with _client(server.base_url + "/v2", delays, timeout=0.2) as c:
        data = await _dial(c)
    assert len(delays) == 1
    first, second = state.requests[:2]
    assert first.command_id == second.command_id
    await asyncio.sleep(0.6)  # let the slow first attempt finish server-side
    assert list(state.calls) == [data["call_control_id"]]


async def test_connection_refused_raises_connection_error_after_retries() -> None:
    delays: list[float] = []
    port = free_port()  # nothing listens here
    async with _client(f"http://127.0.0.1:{port}/v2", delays) as c:
        with pytest.raises(TelnyxConnectionError) as info:
            await _dial(c)
    exc = info.value
    assert exc.attempts == 4
    assert len(delays) == 3
    assert exc.request_path == "/calls"
    assert "ConnectError" in str(exc)
    assert isinstance(exc.__cause__, httpx.ConnectError)
    assert API_KEY not in str(exc)


# --------------------------------------------------------------------------- secrecy


async def test_api_key_never_appears_in_error_text(server: BackgroundServer, state: FakeTelnyxState) -> None:
    # A hostile/buggy upstream echoing the key back must not leak it into logs.
    echo = {"errors": [{"code": "10009", "title": "Authentication failed", "detail": f"bad key {API_KEY}"}]}
    state.inject("/v2/calls", 401, echo)
    state.inject("/v2/calls/*", 503, f"upstream said: {API_KEY}", times=None)
    delays: list[float] = []
    async with _client(server.base_url + "/v2", delays) as c:
        with pytest.raises(TelnyxAuthError) as auth:
            await _dial(c)
        with pytest.raises(TelnyxServerError) as srv:
            await c.hangup("v3:x")
        assert API_KEY not in repr(c)
    for exc in (auth.value, srv.value):
        assert API_KEY not in str(exc)
        assert API_KEY not in repr(exc)
        assert "***" in str(exc)


# --------------------------------------------------------------------------- misc


async def test_shared_http_client_is_not_closed(server: BackgroundServer) -> None:
    async with httpx.AsyncClient() as shared:
        async with TelnyxClient(API_KEY, base_url=server.base_url + "/v2", http_client=shared) as c:
            await _dial(c)
        assert not shared.is_closed
        async with TelnyxClient(API_KEY, base_url=server.base_url + "/v2", http_client=shared) as c:
            await _dial(c)


def test_encode_client_state() -> None:
    assert encode_client_state(None) is None
    assert encode_client_state("already-b64") == "already-b64"
    assert encode_client_state(b"hi") == "aGk="
    encoded = encode_client_state({"b": 2, "a": 1})
    assert encoded is not None
    assert json.loads(base64.b64decode(encoded)) == {"a": 1, "b": 2}
    with pytest.raises(TypeError):
        encode_client_state(42)  # type: ignore[arg-type]


def test_error_detail_from_wire_is_tolerant() -> None:
    d = TelnyxErrorDetail.from_wire({"code": 10004, "title": "Missing", "source": {"pointer": "/to"}})
    assert d.code == "10004"
    assert d.describe() == "[10004] Missing"
    assert TelnyxErrorDetail.from_wire("boom").detail == "boom"
    assert TelnyxErrorDetail().describe() == "(no details)"


def test_client_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        TelnyxClient("")
    with pytest.raises(ValueError):
        TelnyxClient("k", max_retries=-1)
