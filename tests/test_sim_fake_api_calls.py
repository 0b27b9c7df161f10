"""The fake Telnyx API with simulated calls, over real sockets.

Two real servers per test: the fake API (with :class:`FakeTelnyxSimulator`) and a canned bot
(``/ws``) that also serves TeXML and receives the webhooks. Calls are placed with the real
:class:`TelnyxClient`, so the whole outbound path is exercised: dial -> callee answers ->
media stream to the bot -> hang-up -> signed webhooks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import Response

from callpipe.server.background import BackgroundServer, free_port
from callpipe.sim.bots import CannedBotCall, CannedBotConfig, create_canned_bot_app
from callpipe.sim.caller import CallerTurn
from callpipe.sim.fake_api import (
    FakeCallSession,
    FakeTelnyxSimulator,
    FakeTelnyxState,
    create_fake_telnyx_app,
)
from callpipe.telnyx.api import TelnyxClient, encode_client_state
from callpipe.telnyx.webhooks import parse_webhook_event, verify_webhook_headers
from tests.conftest import tone

KEY = "sim-key"
CALLER_ID = "+15550001111"
CALLEE = "+15550002222"
CALL_EVENTS = ["call.initiated", "call.answered", "streaming.started", "streaming.stopped", "call.hangup"]


async def wait_for(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition`` (state lives on other threads' loops, so no cross-loop awaits)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.01)


class Harness:
    """The fake API with a simulator, and a canned bot that also serves TeXML and receives webhooks."""

    def __init__(self, sim: FakeTelnyxSimulator, bot_config: CannedBotConfig, bot_port: int) -> None:
        self.sim = sim
        self.fake_app = create_fake_telnyx_app(KEY, simulator=sim)
        self.state: FakeTelnyxState = self.fake_app.state.telnyx
        self.fake = BackgroundServer(self.fake_app)
        bot_config.api_base_url = self.api_base
        self.bot_app, self.calls = create_canned_bot_app(bot_config)
        self.bot = BackgroundServer(self.bot_app, port=bot_port)
        self.hooks: list[tuple[bytes, dict[str, str]]] = []
        self.texml_callbacks: list[tuple[bytes, dict[str, str]]] = []
        self.texml_requests: list[dict[str, str]] = []

        @self.bot_app.post("/hooks")
        async def hooks(request: Request) -> Response:
            self.hooks.append((await request.body(), dict(request.headers)))
            return Response(status_code=200)

        @self.bot_app.post("/texml-status")
        async def texml_status(request: Request) -> Response:
            self.texml_callbacks.append((await request.body(), dict(request.headers)))
            return Response(status_code=204)

        @self.bot_app.post("/texml")
        async def texml(request: Request) -> Response:
            form = parse_qs((await request.body()).decode())
            self.texml_requests.append({k: v[0] for k, v in form.items()})
            xml = (
                f'<Response><Connect><Stream url="{self.bot.ws_url}/ws" bidirectionalMode="rtp" '
                'bidirectionalCodec="PCMU"><Parameter name="campaign_id" value="c-1"/></Stream>'
                "</Connect></Response>"
            )
            return Response(xml, media_type="application/xml")

        @self.bot_app.post("/say-only")
        async def say_only() -> Response:
            return Response("<Response><Say>Bye</Say><Hangup/></Response>", media_type="text/xml")

    @property
    def api_base(self) -> str:
        return self.fake.base_url + "/v2"

    def client(self) -> TelnyxClient:
        return TelnyxClient(KEY, base_url=self.api_base, max_retries=0)

    def session(self, ccid: str) -> FakeCallSession:
        return self.sim.sessions[ccid]

    async def bot_call(self, timeout: float = 5.0) -> CannedBotCall:
        await wait_for(lambda: self.calls, timeout, "the bot to receive the call")
        return self.calls[0]

    def events(self) -> list[dict[str, Any]]:
        """The JSON webhooks received, each checked against the fake's public key."""
        out = []
        for body, headers in self.hooks:
            verify_webhook_headers(body, headers, self.sim.webhook_public_key)
            out.append(json.loads(body))
        return out

    def event_types(self) -> list[str]:
        return [e["data"]["event_type"] for e in self.events()]


@contextmanager
def harness(
    *,
    bot_config: CannedBotConfig | None = None,
    with_webhooks: bool = True,
    **sim_options: Any,
) -> Iterator[Harness]:
    bot_port = free_port()
    sim_options.setdefault("stream_end_hangup_secs", 0.3)
    sim_options.setdefault("max_call_secs", 20.0)
    webhook_url = f"http://127.0.0.1:{bot_port}/hooks" if with_webhooks else None
    sim = FakeTelnyxSimulator(webhook_url=webhook_url, **sim_options)
    config = bot_config or CannedBotConfig(reply=tone(0.3), greeting=tone(0.4, freq=300))
    h = Harness(sim, config, bot_port)
    with h.fake, h.bot:
        yield h
        h.fake.stop()  # lifespan shutdown first: no simulated call may outlive the fake
    assert sim.active_calls == 0


async def dial(h: Harness, client: TelnyxClient, **extra: Any) -> str:
    extra.setdefault("stream_url", h.bot.ws_url + "/ws")
    data = await client.dial(to=CALLEE, from_=CALLER_ID, connection_id="conn-1", **extra)
    ccid: str = data["call_control_id"]
    return ccid


# --------------------------------------------------------------------------- Call Control


async def test_dial_streams_to_bot_and_api_hangup_ends_it() -> None:
    with harness() as h:
        async with h.client() as client:
            ccid = await dial(
                h,
                client,
                stream_bidirectional_mode="rtp",
                stream_bidirectional_codec="PCMU",
                client_state={"lead": 7},
            )
            bot = await h.bot_call()
            session = h.session(ccid)
            # The bot's greeting (0.4 s) reaches the simulated callee.
            await wait_for(
                lambda: (
                    session.caller is not None
                    and session.caller.result is not None
                    and session.caller.result.bot_audio_secs >= 0.35
                ),
                what="greeting heard by the callee",
            )
            assert bot.call_data["call_control_id"] == ccid
            assert bot.call_data["from"] == CALLER_ID and bot.call_data["to"] == CALLEE
            assert bot.call_data["client_state"] == encode_client_state({"lead": 7})
            assert bot.call_data["outbound_encoding"] == "PCMU"
            assert h.state.calls[ccid].state == "answered"

            assert await client.hangup(ccid) is True
            await wait_for(bot.finished.is_set, what="the bot pipeline to finish")
            await session.wait_finished(5)
            assert await client.hangup(ccid) is False  # 422 / 90018: already ended

        call = h.state.calls[ccid]
        assert call.hangup_source == "caller" and call.hangup_cause == "normal_clearing"
        assert session.result is not None and session.result.closed_by == "telnyx"
        assert session.result.bot_audio_secs > 0.3
        assert session.errors == []

        events = h.events()  # signatures verified with the fake's public key
        assert [e["data"]["event_type"] for e in events] == CALL_EVENTS
        assert h.state.webhook_public_key == h.sim.webhook_public_key
        for event in events:
            data, payload = event["data"], event["data"]["payload"]
            assert data["record_type"] == "event" and data["id"] and data["occurred_at"].endswith("Z")
            assert event["meta"] == {"attempt": 1, "delivered_to": h.sim.webhook_url}
            assert payload["call_control_id"] == ccid
            assert payload["call_leg_id"] == call.call_leg_id
            assert payload["call_session_id"] == call.call_session_id
            assert payload["client_state"] == encode_client_state({"lead": 7})
        initiated = parse_webhook_event(h.hooks[0][0])
        assert initiated.payload["direction"] == "outgoing" and initiated.payload["state"] == "bridging"
        assert initiated.payload["from"] == CALLER_ID and initiated.payload["to"] == CALLEE
        assert initiated.client_state_json() == {"lead": 7}
        assert events[2]["data"]["payload"]["stream_url"] == h.bot.ws_url + "/ws"
        hangup = events[-1]["data"]["payload"]
        assert hangup["state"] == "hangup"
        assert hangup["hangup_cause"] == "normal_clearing" and hangup["hangup_source"] == "caller"
        assert all(w.delivered for w in h.sim.webhooks_for(ccid))


async def test_bot_hangs_up_through_the_api_when_callee_presses_hash() -> None:
    config = CannedBotConfig(reply=tone(0.3), greeting=tone(0.4, freq=300), api_key=KEY)
    script = [CallerTurn(dtmf="#", quiet_secs=0.2)]  # after the greeting, press '#'
    with harness(bot_config=config, callee_script=lambda call: script) as h:
        async with h.client() as client:
            ccid = await dial(h, client)
            bot = await h.bot_call()
            await h.session(ccid).wait_finished(8)
            await wait_for(bot.finished.is_set, what="the bot pipeline to finish")

        assert bot.responder.dtmf == ["#"]
        hangups = h.state.requests_to(f"/v2/calls/{ccid}/actions/hangup", "POST")
        assert [r.status_code for r in hangups] == [200]
        call = h.state.calls[ccid]
        assert not call.is_alive and call.hangup_source == "caller"
        assert h.event_types() == CALL_EVENTS
        hangup = h.events()[-1]["data"]["payload"]
        assert hangup["hangup_source"] == "caller" and hangup["hangup_cause"] == "normal_clearing"


async def test_callee_hangs_up_after_listening() -> None:
    with harness(callee_silence_secs=0.3) as h:
        async with h.client() as client:
            ccid = await dial(h, client)
            bot = await h.bot_call()
            session = h.session(ccid)
            await session.wait_finished(8)
            await wait_for(bot.finished.is_set, what="the bot pipeline to finish")
            assert await client.hangup(ccid) is False

        assert session.result is not None and session.result.closed_by == "caller"
        assert session.result.greeting_heard_at is not None
        assert h.state.calls[ccid].hangup_source == "callee"
        assert h.event_types() == CALL_EVENTS
        assert h.events()[-1]["data"]["payload"]["hangup_source"] == "callee"


async def test_bot_closing_its_stream_leaves_the_callee_to_hang_up() -> None:
    # No API key: on '#' the bot ends its pipeline and closes the socket, but never hangs up.
    script = [CallerTurn(dtmf="#", quiet_secs=0.2)]
    with harness(callee_script=lambda call: script) as h:
        async with h.client() as client:
            ccid = await dial(h, client)
            session = h.session(ccid)
            await session.wait_finished(8)

        assert session.result is not None and session.result.closed_by == "bot"
        assert h.state.requests_to("/v2/calls/*/actions/hangup") == []
        call = h.state.calls[ccid]
        assert call.hangup_source == "callee"  # after stream_end_hangup_secs of silence
        assert call.ended_at is not None
        assert h.event_types() == CALL_EVENTS


async def test_dial_without_stream_stays_up_until_the_far_end_hangs_up() -> None:
    with harness() as h:
        async with h.client() as client:
            ccid = await dial(h, client, stream_url=None)
            await wait_for(lambda: h.event_types() == CALL_EVENTS[:2], what="initiated + answered")
            h.state.end_call(ccid)  # the callee hangs up (from the test's thread)
            await h.session(ccid).wait_finished(5)
            assert await client.hangup(ccid) is False
        assert h.calls == []
        assert h.event_types() == ["call.initiated", "call.answered", "call.hangup"]
        assert h.events()[-1]["data"]["payload"]["hangup_source"] == "callee"


async def test_hangup_while_ringing_cancels_the_call() -> None:
    with harness(answer_after_secs=5.0) as h:
        async with h.client() as client:
            ccid = await dial(h, client)
            assert await client.hangup(ccid) is True
            await h.session(ccid).wait_finished(3)
        assert h.calls == []  # never answered, so never streamed
        assert h.state.calls[ccid].answered_at is None
        assert h.event_types() == ["call.initiated", "call.hangup"]
        hangup = h.events()[-1]["data"]["payload"]
        assert hangup["hangup_cause"] == "originator_cancel" and hangup["hangup_source"] == "caller"


async def test_unreachable_stream_url_sends_streaming_failed() -> None:
    with harness() as h:
        async with h.client() as client:
            ccid = await dial(h, client, stream_url=f"ws://127.0.0.1:{free_port()}/ws")
            session = h.session(ccid)
            await session.wait_finished(8)
        assert session.errors and "failed" in session.errors[0]
        assert h.event_types() == ["call.initiated", "call.answered", "streaming.failed", "call.hangup"]
        failed = h.events()[2]["data"]["payload"]
        assert failed["failure_reason"] == "connection_failed"
        assert failed["stream_id"] == session.stream_id and failed["stream_type"] == "websocket"
        assert h.state.calls[ccid].hangup_source == "callee"


async def test_calls_are_bounded_by_max_call_secs() -> None:
    bot = CannedBotConfig(reply=tone(0.3), greeting=None)
    with harness(bot_config=bot, max_call_secs=0.8, callee_silence_secs=30.0) as h:
        async with h.client() as client:
            started = time.monotonic()
            ccid = await dial(h, client)
            session = h.session(ccid)
            await session.wait_finished(5)
            assert time.monotonic() - started < 3
        call = h.state.calls[ccid]
        assert call.hangup_source == "unknown" and call.hangup_cause == "time_limit"
        assert any("max_call_secs" in e for e in session.errors)
        assert h.event_types() == CALL_EVENTS
        assert h.events()[-1]["data"]["payload"]["hangup_cause"] == "time_limit"
        await wait_for(h.calls[0].finished.is_set, what="the bot pipeline to finish")


async def test_shutdown_ends_running_calls_without_leaking_tasks() -> None:
    with harness(callee_silence_secs=30.0) as h:
        async with h.client() as client:
            ccid = await dial(h, client)
            bot = await h.bot_call()
            session = h.session(ccid)
            await wait_for(lambda: session.stream_started, what="the stream to start")
            assert h.sim.active_calls == 1
            await asyncio.to_thread(h.fake.stop)  # lifespan shutdown cancels the call
            assert h.sim.active_calls == 0
            assert session.finished.is_set()
            await wait_for(bot.finished.is_set, what="the bot pipeline to finish")
        assert not h.state.calls[ccid].is_alive
        assert h.state.calls[ccid].hangup_source == "unknown"


# --------------------------------------------------------------------------- TeXML


async def test_texml_call_fetches_instructions_and_streams_with_parameters() -> None:
    with harness() as h:
        async with h.client() as client:
            created = await client.texml_call(
                account_sid="acct-1",
                application_sid="app-1",
                to=CALLEE,
                from_=CALLER_ID,
                url=h.bot.base_url + "/texml",
                status_callback=h.bot.base_url + "/texml-status",
                StatusCallbackEvent="initiated answered completed",
            )
            sid = created["call_sid"]
            bot = await h.bot_call()
            await wait_for(lambda: bot.call_data.get("custom_parameters"), what="the bot's start message")
            assert bot.call_data["custom_parameters"] == {"campaign_id": "c-1"}
            assert bot.call_data["call_control_id"] == sid
            assert bot.call_data["from"] == CALLER_ID and bot.call_data["to"] == CALLEE
            assert bot.call_data["client_state"] is None

            assert await client.hangup(sid) is True
            await h.session(sid).wait_finished(5)
            await wait_for(bot.finished.is_set, what="the bot pipeline to finish")

        [fetch] = h.texml_requests
        assert fetch["CallSid"] == sid and fetch["AccountSid"] == "acct-1"
        assert fetch["From"] == CALLER_ID and fetch["To"] == CALLEE
        assert fetch["CallStatus"] == "in-progress" and fetch["Direction"] == "outbound-api"
        assert fetch["ConnectionId"] == "app-1"
        texml = h.session(sid).texml
        assert texml is not None and texml.custom_parameters == {"campaign_id": "c-1"}
        # TeXML calls report through status callbacks (form-encoded, signed), not JSON events.
        assert h.hooks == []
        statuses = []
        for body, headers in h.texml_callbacks:
            verify_webhook_headers(body, headers, h.sim.webhook_public_key)
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            assert form["CallSid"] == sid and form["AccountSid"] == "acct-1"
            statuses.append(form)
        assert [s["CallStatus"] for s in statuses] == ["initiated", "in-progress", "completed"]
        assert statuses[-1]["HangupSource"] == "caller"
        assert statuses[-1]["HangupCause"] == "normal_clearing"


async def test_texml_without_stream_ends_the_call() -> None:
    with harness() as h:
        async with h.client() as client:
            created = await client.texml_call(
                account_sid="acct-1",
                application_sid="app-1",
                to=CALLEE,
                from_=CALLER_ID,
                url=h.bot.base_url + "/say-only",
                status_callback=h.bot.base_url + "/texml-status",
            )
            session = h.session(created["call_sid"])
            await session.wait_finished(5)
        assert h.calls == []
        assert session.errors and "no <Connect><Stream>" in session.errors[0]
        assert h.state.calls[created["call_sid"]].hangup_source == "caller"
        [(body, _)] = h.texml_callbacks  # the default StatusCallbackEvent is "completed"
        assert parse_qs(body.decode())["CallStatus"] == ["completed"]
