"""Pieces of running several instances that need no second process: the dial bucket,
forward signatures, readiness, and the operator API's refusals."""

from __future__ import annotations

import pytest

from callpipe.server import state as state_module
from callpipe.server.app import ServerState
from callpipe.server.control import sign_forward, verify_forward
from callpipe.server.health import readiness
from callpipe.server.settings import ServerSettings

SECRET = "instances-secret-Zr81"


async def _bot(runner_args: object) -> None:
    return None


def _state(**settings: object) -> ServerState:
    values: dict[str, object] = {"public_url": "https://bot.example.com", "callpipe_secret": SECRET}
    values.update(settings)
    return ServerState(settings=ServerSettings(_env_file=None, **values), bot=_bot)  # type: ignore[call-arg, arg-type]


def test_a_dial_rate_below_one_per_second_still_lets_dials_through(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(state_module.time, "monotonic", lambda: now[0])
    state = _state(dial_rate_per_sec=0.5)  # one dial every two seconds
    assert state.take_dial_token()
    assert not state.take_dial_token()
    now[0] += 1.0
    assert not state.take_dial_token()  # half a token
    now[0] += 1.0
    assert state.take_dial_token()
    now[0] += 60.0  # a long pause refills to one dial, not thirty
    assert state.take_dial_token()
    assert not state.take_dial_token()


def test_the_dial_burst_is_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module.time, "monotonic", lambda: 50.0)
    state = _state(dial_rate_per_sec=3)
    assert [state.take_dial_token() for _ in range(4)] == [True, True, True, False]


def test_forward_signatures_bind_body_secret_and_time() -> None:
    body = b'{"kind":"hangup"}'
    header = sign_forward(SECRET, body, now=10_000)
    assert verify_forward(SECRET, body, header, now=10_005)
    assert not verify_forward(SECRET, body + b" ", header, now=10_005)
    assert not verify_forward("another-secret", body, header, now=10_005)
    assert not verify_forward(SECRET, body, header, now=10_100)  # replayed later
    assert not verify_forward(SECRET, body, None)
    assert not verify_forward(SECRET, body, "t=abc,v1=00")


def test_readiness_reasons() -> None:
    state = _state(max_calls=1)
    assert readiness(state) == (False, "starting")
    state.ready = True
    state.models_warm = False
    assert readiness(state) == (False, "warming_up")
    state.models_warm = True
    assert readiness(state) == (True, "ok")
    state.calls["v3:x"] = object()  # type: ignore[assignment]
    assert readiness(state) == (False, "at_capacity")
    state.draining = True
    assert readiness(state) == (False, "draining")


def test_internal_urls_and_worker_ports() -> None:
    from callpipe.server.control import advertised_url, worker_port

    assert advertised_url("127.0.0.1", 4321, None) == "http://127.0.0.1:4321"
    assert advertised_url("::1", 4321, None) == "http://[::1]:4321"
    assert advertised_url("10.1.2.3", 9001, "http://pod-a.internal:{port}/") == "http://pod-a.internal:9001"
    assert "0.0.0.0" not in advertised_url("0.0.0.0", 9000, None)
    assert worker_port(9000, "1") == 9001
    assert worker_port(9000, None) == 9000
    assert worker_port(0, "3") == 0


async def test_the_internal_listener_takes_only_signed_fresh_events() -> None:
    import time

    import httpx

    from callpipe.server.control import FORWARD_HEADER, ControlPlane

    class NoLookups:
        """A store that must not be asked: the internal listener never forwards again."""

        async def owner_of(self, ccid: str) -> str | None:
            raise AssertionError("a forwarded event was looked up for forwarding again")

    state = _state()
    plane = ControlPlane(state, SECRET)
    state.store = NoLookups()  # type: ignore[assignment]
    state.control = plane
    await plane.start()
    try:
        url = f"{plane.url}/internal/calls/v3:nobody/events"
        body = b'{"kind":"webhook","event_type":"call.hangup"}'
        async with httpx.AsyncClient(timeout=5) as http:

            async def post(header: str | None, content: bytes = body) -> int:
                headers = {FORWARD_HEADER: header} if header else {}
                return (await http.post(url, content=content, headers=headers)).status_code

            assert await post(None) == 401
            assert await post(sign_forward("wrong-secret", body)) == 401
            assert await post(sign_forward(SECRET, body, now=time.time() - 120)) == 401
            assert await post(sign_forward(SECRET, b"{}"), body) == 401  # signed another body
            assert await post(sign_forward(SECRET, b"[1]"), b"[1]") == 400
            # Signed and fresh, for a call this process does not hold: 404, and never sent on.
            assert await post(sign_forward(SECRET, body)) == 404
            too_big = b"x" * 70_000
            assert await post(sign_forward(SECRET, too_big), too_big) == 413
    finally:
        await plane.stop()


async def test_the_internal_recording_route_takes_only_signed_requests_for_one_call(
    tmp_path: object,
) -> None:
    import time
    from pathlib import Path

    import httpx

    from callpipe.records.model import CallRecord
    from callpipe.server.control import FORWARD_HEADER, ControlPlane

    mine = Path(str(tmp_path))
    (mine / "c.wav").write_bytes(b"RIFF" + bytes(100))
    records = {
        "v3:mine": CallRecord(call_control_id="v3:mine", recording_path=str(mine / "c.wav")),
        "v3:else": CallRecord(call_control_id="v3:else", recording_path=str(mine / "gone.wav")),
    }

    class Records:
        instance_id = "here-1"

        async def get_call(self, ccid: str) -> CallRecord | None:
            return records.get(ccid)

    state = _state(recording_dir=str(mine))
    plane = ControlPlane(state, SECRET)
    state.store = Records()  # type: ignore[assignment]
    state.control = plane
    await plane.start()
    try:
        async with httpx.AsyncClient(base_url=plane.url, timeout=5) as http:

            async def get(ccid: str, message: bytes | None, **headers: str) -> httpx.Response:
                if message is not None:
                    headers[FORWARD_HEADER] = sign_forward(SECRET, message)
                return await http.get(f"/internal/calls/{ccid}/recording", headers=headers)

            assert (await get("v3:mine", None)).status_code == 401
            assert (await get("v3:mine", b"GET recording v3:else")).status_code == 401  # another call's
            stale = sign_forward(SECRET, b"GET recording v3:mine", now=time.time() - 120)
            assert (
                await http.get("/internal/calls/v3:mine/recording", headers={FORWARD_HEADER: stale})
            ).status_code == 401
            ok = await get("v3:mine", b"GET recording v3:mine", range="bytes=0-3")
            assert (
                ok.status_code == 206
                and ok.content == b"RIFF"
                and ok.headers["x-callpipe-recording-instance"] == "here-1"
            )
            assert (await get("v3:else", b"GET recording v3:else")).status_code == 404
            assert (await get("v3:nobody", b"GET recording v3:nobody")).status_code == 404
    finally:
        await plane.stop()


async def test_a_recording_whose_live_owner_does_not_answer_is_a_clear_502(tmp_path: object) -> None:
    from pathlib import Path

    from starlette.requests import Request

    from callpipe.records.model import CallRecord
    from callpipe.server.background import free_port
    from callpipe.server.control import ControlPlane
    from callpipe.server.recordings import recording_response

    silent_owner = f"http://127.0.0.1:{free_port()}"  # in the instances table, but nobody listens

    class Store:
        instance_id = "here-1"

        async def instance_url(self, instance_id: str) -> str | None:
            return silent_owner if instance_id == "there-2" else None

    state = _state(recording_dir=str(Path(str(tmp_path)) / "mine"), forward_timeout_secs=1.0)
    state.store = Store()  # type: ignore[assignment]
    state.control = ControlPlane(state, SECRET)  # (not started: only its secret signs)
    record = CallRecord(call_control_id="v3:r", instance="there-2", recording_path="/elsewhere/r.wav")
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": [(b"range", b"bytes=0-9")]})
    response = await recording_response(state, request, record, "r.wav")
    assert response.status_code == 502 and b"recording_proxy_failed" in response.body
    record.instance = "gone-3"  # no live row: says where the file is instead
    response = await recording_response(state, request, record, "r.wav")
    assert response.status_code == 404 and b'"instance":"gone-3"' in response.body
