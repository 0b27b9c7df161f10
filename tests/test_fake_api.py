"""The fake Telnyx API itself: wire shapes, auth, idempotency, fault injection, listeners."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from callpipe.server.background import BackgroundServer
from callpipe.sim.fake_api import FakeCallEvent, FakeTelnyxState, create_fake_telnyx_app

KEY = "fake-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
DIAL = {"connection_id": "conn", "to": "+15550000001", "from": "+15550000002"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def _fake(clock: FakeClock) -> Iterator[tuple[BackgroundServer, FakeTelnyxState]]:
    st = FakeTelnyxState(KEY, idempotency_window=60.0, clock=clock)
    with BackgroundServer(create_fake_telnyx_app(KEY, state=st)) as srv:
        yield srv, st


@pytest.fixture
def state(_fake: tuple[BackgroundServer, FakeTelnyxState]) -> FakeTelnyxState:
    _fake[1].reset()
    _fake[1]._listeners.clear()
    return _fake[1]


@pytest.fixture
async def http(
    _fake: tuple[BackgroundServer, FakeTelnyxState], state: FakeTelnyxState
) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=_fake[0].base_url + "/v2", headers=AUTH) as c:
        yield c


async def _dial(http: httpx.AsyncClient, **extra: Any) -> str:
    r = await http.post("/calls", json={**DIAL, **extra})
    assert r.status_code == 200, r.text
    ccid: str = r.json()["data"]["call_control_id"]
    return ccid


# --------------------------------------------------------------------------- shapes / auth


async def test_dial_response_shape(http: httpx.AsyncClient, state: FakeTelnyxState) -> None:
    r = await http.post("/calls", json={**DIAL, "client_state": "YWJj", "stream_url": "wss://x/ws"})
    assert r.status_code == 200
    data = r.json()["data"]
    assert set(data) == {
        "call_control_id",
        "call_leg_id",
        "call_session_id",
        "is_alive",
        "record_type",
        "client_state",
    }
    assert data["call_control_id"].startswith("v3:") and len(data["call_control_id"]) > 40
    assert data["record_type"] == "call"
    call = state.calls[data["call_control_id"]]
    assert call.kind == "call_control"
    assert call.client_state == "YWJj"
    assert call.stream_url == "wss://x/ws"
    assert call.is_alive


@pytest.mark.parametrize("missing", ["connection_id", "to", "from"])
async def test_dial_requires_fields(http: httpx.AsyncClient, state: FakeTelnyxState, missing: str) -> None:
    body = {k: v for k, v in DIAL.items() if k != missing}
    r = await http.post("/calls", json=body)
    assert r.status_code == 422
    (err,) = r.json()["errors"]
    assert err["code"] == "10004"
    assert err["source"] == {"pointer": f"/{missing}"}
    assert state.calls == {}


@pytest.mark.parametrize("missing", ["ApplicationSid", "To", "From"])
async def test_texml_requires_fields(http: httpx.AsyncClient, missing: str) -> None:
    body = {k: v for k, v in {"ApplicationSid": "a", "To": "+1", "From": "+2"}.items() if k != missing}
    r = await http.post("/texml/Accounts/acct/Calls", json=body)
    assert r.status_code == 422
    assert r.json()["errors"][0]["source"] == {"pointer": f"/{missing}"}


async def test_texml_response_is_flat(http: httpx.AsyncClient, state: FakeTelnyxState) -> None:
    r = await http.post("/texml/Accounts/acct/Calls", json={"ApplicationSid": "a", "To": "+1", "From": "+2"})
    assert r.status_code == 200
    body = r.json()
    assert "data" not in body
    assert body["status"] == "queued"
    call = state.calls[body["call_sid"]]
    assert call.kind == "texml"
    assert call.params["account_sid"] == "acct"


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic fake-key", f"Bearer {KEY}x"])
async def test_bad_auth_is_401_10009(
    _fake: tuple[BackgroundServer, FakeTelnyxState], state: FakeTelnyxState, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    async with httpx.AsyncClient(base_url=_fake[0].base_url) as c:
        r = await c.post("/v2/calls", json=DIAL, headers=headers)
    assert r.status_code == 401
    assert r.json() == {
        "errors": [
            {
                "code": "10009",
                "title": "Authentication failed",
                "detail": "The required authentication headers were either invalid or not included in the request.",
            }
        ]
    }
    assert state.calls == {}
    assert state.requests[0].status_code == 401


async def test_unknown_route_is_telnyx_404_and_recorded(
    http: httpx.AsyncClient, state: FakeTelnyxState
) -> None:
    r = await http.get("/calls/v3:x")
    assert r.status_code == 404
    assert r.json()["errors"][0]["code"] == "10005"
    assert state.requests[0].path == "/v2/calls/v3:x"
    assert state.requests[0].method == "GET"


async def test_invalid_json_is_400(http: httpx.AsyncClient) -> None:
    r = await http.post("/calls", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "10015"
    r = await http.post("/calls", json=[1, 2])
    assert r.status_code == 400


# --------------------------------------------------------------------------- call commands


async def test_commands_on_ended_or_unknown_call_are_90018(
    http: httpx.AsyncClient, state: FakeTelnyxState
) -> None:
    ccid = await _dial(http)
    state.end_call(ccid, source="callee")
    assert state.calls[ccid].hangup_source == "callee"
    for action, body in [("hangup", {}), ("transfer", {"to": "+1"}), ("send_dtmf", {"digits": "1"})]:
        for target in (ccid, "v3:never-issued"):
            r = await http.post(f"/calls/{target}/actions/{action}", json=body)
            assert r.status_code == 422, (action, target)
            (err,) = r.json()["errors"]
            assert err["code"] == "90018"
            assert err["title"] == "Call has already ended"


async def test_hangup_ends_call(http: httpx.AsyncClient, state: FakeTelnyxState) -> None:
    ccid = await _dial(http)
    r = await http.post(f"/calls/{ccid}/actions/hangup", json={})
    assert r.json() == {"data": {"result": "ok"}}
    assert not state.calls[ccid].is_alive
    assert state.calls[ccid].hangup_source == "caller"
    assert state.calls[ccid].ended_at is not None


async def test_send_dtmf_validates_digits(http: httpx.AsyncClient, state: FakeTelnyxState) -> None:
    ccid = await _dial(http)
    r = await http.post(f"/calls/{ccid}/actions/send_dtmf", json={"digits": "12x"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["source"] == {"pointer": "/digits"}
    r = await http.post(f"/calls/{ccid}/actions/send_dtmf", json={})
    assert r.status_code == 422
    r = await http.post(f"/calls/{ccid}/actions/send_dtmf", json={"digits": "1*#AwW"})
    assert r.status_code == 200
    assert state.calls[ccid].dtmf == [{"digits": "1*#AwW"}]


async def test_transfer_requires_to(http: httpx.AsyncClient) -> None:
    ccid = await _dial(http)
    r = await http.post(f"/calls/{ccid}/actions/transfer", json={})
    assert r.status_code == 422
    assert r.json()["errors"][0]["source"] == {"pointer": "/to"}


# --------------------------------------------------------------------------- idempotency


async def test_dial_is_deduplicated_by_command_id(http: httpx.AsyncClient, state: FakeTelnyxState) -> None:
    a = await _dial(http, command_id="c-1")
    b = await _dial(http, command_id="c-1")
    c = await _dial(http, command_id="c-2")
    d = await _dial(http)  # no command_id: never de-duplicated
    e = await _dial(http)
    assert a == b
    assert len({a, c, d, e}) == 4
    assert len(state.calls) == 4
    assert [r.deduplicated for r in state.requests] == [False, True, False, False, False]


async def test_hangup_repeat_returns_same_result(http: httpx.AsyncClient, state: FakeTelnyxState) -> None:
    ccid = await _dial(http)
    other = await _dial(http)
    first = await http.post(f"/calls/{ccid}/actions/hangup", json={"command_id": "h"})
    again = await http.post(f"/calls/{ccid}/actions/hangup", json={"command_id": "h"})
    # The repeated command is not re-executed, so it does not turn into "already ended".
    assert (first.status_code, again.status_code) == (200, 200)
    assert first.json() == again.json()
    # The same command_id on another call is a different command.
    r = await http.post(f"/calls/{other}/actions/hangup", json={"command_id": "h"})
    assert r.status_code == 200
    assert not state.calls[other].is_alive
    # A new command_id on the ended call is executed, and fails.
    r = await http.post(f"/calls/{ccid}/actions/hangup", json={"command_id": "h2"})
    assert r.status_code == 422


async def test_idempotency_window_expires(
    http: httpx.AsyncClient, state: FakeTelnyxState, clock: FakeClock
) -> None:
    a = await _dial(http, command_id="w")
    clock.now += 59
    assert await _dial(http, command_id="w") == a
    clock.now += 2  # 61 s after the first: forgotten
    assert await _dial(http, command_id="w") != a


# --------------------------------------------------------------------------- faults


async def test_fault_times_and_order(http: httpx.AsyncClient, state: FakeTelnyxState) -> None:
    f1 = state.inject("/v2/calls", 503, times=2)
    f2 = state.inject("/v2/calls", 429, headers={"Retry-After": "7"})
    codes = [(await http.post("/calls", json=DIAL)).status_code for _ in range(4)]
    assert codes == [503, 503, 429, 200]
    assert (f1.hits, f2.hits) == (2, 1)
    assert [r.fault for r in state.requests] == [f1, f1, f2, None]


async def test_fault_default_bodies_and_headers(http: httpx.AsyncClient, state: FakeTelnyxState) -> None:
    state.inject("/v2/calls", 429, headers={"Retry-After": "7"})
    r = await http.post("/calls", json=DIAL)
    assert r.headers["retry-after"] == "7"
    assert r.json()["errors"][0]["code"] == "10011"
    state.inject("/v2/calls", 500)
    assert (await http.post("/calls", json=DIAL)).json()["errors"][0]["code"] == "10007"
    state.inject("/v2/calls", 502, b"<html>bad gateway</html>")
    r = await http.post("/calls", json=DIAL)
    assert r.status_code == 502
    assert r.content == b"<html>bad gateway</html>"


async def test_fault_forever_and_clear(http: httpx.AsyncClient, state: FakeTelnyxState) -> None:
    state.inject("/v2/calls/*/actions/*", 500, times=None)
    for _ in range(3):
        assert (await http.post("/calls/v3:a/actions/hangup", json={})).status_code == 500
    assert (await http.post("/calls", json=DIAL)).status_code == 200  # other paths untouched
    state.clear_faults()
    assert (await http.post("/calls/v3:a/actions/hangup", json={})).status_code == 422


async def test_fault_method_filter(http: httpx.AsyncClient, state: FakeTelnyxState) -> None:
    state.inject("/v2/calls", 500, method="GET")
    assert (await http.post("/calls", json=DIAL)).status_code == 200
    assert (await http.get("/calls")).status_code == 500


async def test_fault_applies_before_auth(
    _fake: tuple[BackgroundServer, FakeTelnyxState], state: FakeTelnyxState
) -> None:
    state.inject("/v2/calls", 503)
    async with httpx.AsyncClient(base_url=_fake[0].base_url) as c:
        assert (await c.post("/v2/calls", json=DIAL)).status_code == 503


async def test_delay_only_fault_is_slow_but_succeeds(http: httpx.AsyncClient, state: FakeTelnyxState) -> None:
    state.inject("/v2/calls", None, delay=0.2)
    start = time.monotonic()
    r = await http.post("/calls", json=DIAL)
    assert r.status_code == 200
    assert time.monotonic() - start >= 0.2
    assert len(state.calls) == 1


async def test_after_fault_executes_then_replaces_response(
    http: httpx.AsyncClient, state: FakeTelnyxState
) -> None:
    state.inject("/v2/calls", 500, after=True)
    r = await http.post("/calls", json={**DIAL, "command_id": "lost"})
    assert r.status_code == 500
    assert len(state.calls) == 1  # executed despite the 500
    r = await http.post("/calls", json={**DIAL, "command_id": "lost"})
    assert r.status_code == 200
    assert r.json()["data"]["call_control_id"] in state.calls
    assert len(state.calls) == 1


# --------------------------------------------------------------------------- listeners / bookkeeping


async def test_listeners_see_state_changes(http: httpx.AsyncClient, state: FakeTelnyxState) -> None:
    seen_sync: list[tuple[str, str]] = []
    seen_async: list[str] = []

    def on_sync(event: FakeCallEvent) -> None:
        seen_sync.append((event.kind, event.call.call_control_id))

    async def on_async(event: FakeCallEvent) -> None:
        seen_async.append(event.kind)

    state.add_listener(on_sync)
    state.add_listener(on_async)
    ccid = await _dial(http, command_id="x")
    await _dial(http, command_id="x")  # deduplicated: no second event
    await http.post(f"/calls/{ccid}/actions/send_dtmf", json={"digits": "5"})
    await http.post(f"/calls/{ccid}/actions/transfer", json={"to": "+1"})
    await http.post(f"/calls/{ccid}/actions/hangup", json={})
    await http.post(f"/calls/{ccid}/actions/hangup", json={})  # 422: no event
    assert seen_sync == [(k, ccid) for k in ("dial", "send_dtmf", "transfer", "hangup")]
    assert seen_async == ["dial", "send_dtmf", "transfer", "hangup"]


async def test_requests_to_and_reset(http: httpx.AsyncClient, state: FakeTelnyxState) -> None:
    ccid = await _dial(http, command_id="r1")
    await http.post(f"/calls/{ccid}/actions/hangup", json={})
    assert [r.command_id for r in state.requests_to("/v2/calls")] == ["r1"]
    assert len(state.requests_to("/v2/calls/*/actions/hangup", method="post")) == 1
    assert state.requests_to("/v2/calls", method="GET") == []
    assert state.requests[0].headers["authorization"] == f"Bearer {KEY}"
    state.inject("/v2/calls", 500)
    state.reset()
    assert (state.requests, state.calls, state.faults) == ([], {}, [])
    assert (await http.post("/calls", json={**DIAL, "command_id": "r1"})).status_code == 200
    assert len(state.calls) == 1  # seen command ids were forgotten too


async def test_without_simulation_calls_only_change_state(
    http: httpx.AsyncClient, state: FakeTelnyxState
) -> None:
    # The module fixture's app was built without simulate_calls: nothing rings or streams.
    assert state.simulator is None and state.webhook_public_key is None
    ccid = await _dial(http, to=["+15550000009", "+15550000008"], stream_url="ws://127.0.0.1:9/ws")
    call = state.calls[ccid]
    assert call.to_number == "+15550000009"  # the first of a simultaneous-ring list
    assert call.state == "initiated" and call.answered_at is None
    state.end_call(ccid, source="callee", cause="user_busy")
    assert (call.hangup_source, call.hangup_cause) == ("callee", "user_busy")
    assert (await http.post(f"/calls/{ccid}/actions/hangup", json={})).status_code == 422
    assert call.hangup_cause == "user_busy"  # the first end wins


def test_simulation_is_opt_in_and_publishes_its_key() -> None:
    plain = create_fake_telnyx_app(KEY)
    assert plain.state.simulator is None
    app = create_fake_telnyx_app(KEY, simulate_calls=True, webhook_url="http://127.0.0.1:9/hooks")
    st = app.state.telnyx
    assert app.state.simulator is st.simulator and st.simulator is not None
    assert st.webhook_public_key == st.simulator.webhook_public_key
    assert len(base64.b64decode(st.webhook_public_key)) == 32
