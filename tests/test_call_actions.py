"""TelnyxClient's call actions (speak, bridge, record, suppression...) against the fake API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from callpipe.server.background import BackgroundServer
from callpipe.sim.fake_api import FakeTelnyxState, create_fake_telnyx_app
from callpipe.telnyx.api import TelnyxClient, TelnyxValidationError

API_KEY = "KEY-actions-test"


@pytest.fixture(scope="module")
def _fake() -> Iterator[tuple[BackgroundServer, FakeTelnyxState]]:
    app = create_fake_telnyx_app(API_KEY)
    with BackgroundServer(app) as srv:
        yield srv, app.state.telnyx


@pytest.fixture
def state(_fake: tuple[BackgroundServer, FakeTelnyxState]) -> FakeTelnyxState:
    _fake[1].reset()
    return _fake[1]


@pytest.fixture
async def client(_fake: tuple[BackgroundServer, FakeTelnyxState]) -> AsyncIterator[TelnyxClient]:
    async with TelnyxClient(API_KEY, base_url=_fake[0].base_url + "/v2", max_retries=0) as c:
        yield c


async def _dial(client: TelnyxClient, to: str = "+15550100001") -> str:
    data = await client.dial(to=to, from_="+15550100000", connection_id="conn-1")
    return str(data["call_control_id"])


async def test_record_and_suppression_reach_the_fake_with_telnyx_bodies(
    client: TelnyxClient, state: FakeTelnyxState
) -> None:
    ccid = await _dial(client)
    await client.record_start(ccid, format="mp3", channels="dual", play_beep=True)
    await client.suppression_start(ccid, direction="both")
    body = state.requests_to("/v2/calls/*/actions/record_start")[0].json
    assert {k: body[k] for k in ("format", "channels", "play_beep")} == {
        "format": "mp3",
        "channels": "dual",
        "play_beep": True,
    }
    assert body["command_id"]
    assert state.requests_to("/v2/calls/*/actions/suppression_start")[0].json["direction"] == "both"
    call = state.calls[ccid]
    assert call.recording == {"format": "mp3", "channels": "dual", "active": True}
    assert call.suppression == "both"
    await client.record_stop(ccid)
    await client.suppression_stop(ccid)
    assert call.recording["active"] is False and call.suppression is None
    with pytest.raises(TelnyxValidationError):
        await client.record_stop(ccid)  # nothing is recording any more


async def test_the_fake_refuses_bad_values_like_telnyx(client: TelnyxClient, state: FakeTelnyxState) -> None:
    ccid = await _dial(client)
    url = f"{client.base_url}/calls/{ccid}/actions"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient() as http:
        bad = [
            ("record_start", {"format": "ogg", "channels": "single"}),
            ("record_start", {"format": "wav"}),
            ("suppression_start", {"direction": "sideways"}),
            ("speak", {"payload": "hi", "voice": "female"}),  # no language
            ("speak", {"voice": "female", "language": "en-US"}),
            ("playback_start", {"loop": "infinity"}),
            ("bridge", {"call_control_id": ccid}),
        ]
        for action, body in bad:
            response = await http.post(f"{url}/{action}", json=body, headers=headers)
            assert response.status_code == 422, (action, body)
            assert response.json()["errors"][0]["source"]["pointer"]
    # The client refuses bad values before a request is sent.
    with pytest.raises(ValueError, match="format"):
        await client.record_start(ccid, format="ogg")
    with pytest.raises(ValueError, match="direction"):
        await client.suppression_start(ccid, direction="up")
    assert not state.calls[ccid].actions


async def test_speak_bridge_and_streaming_stop(client: TelnyxClient, state: FakeTelnyxState) -> None:
    caller, agent = await _dial(client), await _dial(client, "+15550100002")
    await client.speak(agent, "Maria needs help with a refund.", voice="female", language="en-US")
    await client.playback_start(caller, audio_url="https://example.test/hold.mp3", loop="infinity")
    await client.playback_stop(caller)
    await client.bridge(caller, agent)
    await client.streaming_stop(caller)
    assert state.calls[caller].bridged_with == agent and state.calls[agent].bridged_with == caller
    speak = state.calls[agent].actions[0]
    assert (speak["action"], speak["payload"], speak["voice"], speak["language"]) == (
        "speak",
        "Maria needs help with a refund.",
        "female",
        "en-US",
    )
    assert [a["action"] for a in state.calls[caller].actions] == [
        "playback_start",
        "playback_stop",
        "bridge",
        "streaming_stop",
    ]
    await client.hangup(agent)
    with pytest.raises(TelnyxValidationError):
        await client.bridge(caller, agent)  # the agent's leg has ended


async def test_a_warm_transfer_without_dial_settings_fails_clearly(client: TelnyxClient) -> None:
    from callpipe.services.call_policy import TransferPolicy
    from callpipe.services.warm_transfer import WarmTransferConfig, warm_transfer

    config = WarmTransferConfig(connection_id="", from_number="")
    result = await warm_transfer(
        "v3:caller", "+15550200001", "hi", client=client, config=config, policy=TransferPolicy.parse("+1555*")
    )
    assert (result.outcome, result.reason) == (
        "failed",
        "warm transfers need TELNYX_CONNECTION_ID and TELNYX_PHONE_NUMBER",
    )
    refused = await warm_transfer(
        "v3:caller", "+19005550100", "hi", client=client, config=config, policy=TransferPolicy.parse("+1555*")
    )
    assert refused.outcome == "refused" and "not allowed" in refused.reason


def test_fake_agents_from_the_command_line() -> None:
    from callpipe.sim.fake_api.agent import FakeAgent

    agents = FakeAgent.parse(["+15550200001=accept", "+15550200002=decline", "+15550200003=no-answer"])
    assert (agents["+15550200001"].press, agents["+15550200002"].press) == ("1", "2")
    assert not agents["+15550200003"].answer
    with pytest.raises(ValueError, match="NUMBER=accept"):
        FakeAgent.parse(["+15550200001=maybe"])
