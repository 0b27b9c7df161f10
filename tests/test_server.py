"""The callpipe server end to end: real uvicorn servers for the app and the fake Telnyx API.

Each test runs ``create_app(bot, settings)`` on a :class:`BackgroundServer` (the port is
picked first so that ``PUBLIC_URL`` can name it) next to the fake Telnyx REST API, whose
simulator answers dial-outs like Telnyx: it fetches the TeXML ``Url`` (or uses the dial's
``stream_url``) and streams a simulated callee to ``/ws``. The bots are small functions
defined here that record what they were given.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from callpipe.cli import main as cli_main
from callpipe.pipeline.frames import (
    AnsweringMachineDetectionFrame,
    EndTaskFrame,
    Frame,
    StartFrame,
)
from callpipe.pipeline.pipeline import Pipeline
from callpipe.pipeline.processor import FrameDirection, FrameProcessor
from callpipe.pipeline.task import PipelineParams, PipelineRunner, PipelineTask
from callpipe.runner import RunnerArguments, create_telnyx_transport
from callpipe.server.app import create_app, decode_body
from callpipe.server.background import BackgroundServer, free_port
from callpipe.server.settings import ServerSettings, SettingsError
from callpipe.server.tokens import issue_token, scope_digest, sign_expiring, verify_token
from callpipe.sim.bots import CannedReplyProcessor
from callpipe.sim.caller import CallerTurn, CallResult, SimulatedCaller
from callpipe.sim.fake_api import FakeTelnyxSimulator, FakeTelnyxState, create_fake_telnyx_app
from callpipe.sim.texml import parse_texml, place_texml_call
from callpipe.telnyx.api import TelnyxClient
from callpipe.telnyx.webhooks import generate_webhook_keypair, sign_webhook
from tests.conftest import tone

# Distinctive values, so that a leak into a response or a log line is unmistakable.
SECRET = "cp-secret-Zq81xVUu3kLm"
API_KEY = "cp-api-key-Hh27dNwq90Pp"
TELNYX_KEY = "KEY-telnyx-Rr55tYbe41Oo"
SECRETS = (SECRET, API_KEY, TELNYX_KEY)
CALLER = "+15550001111"
OUR_NUMBER = "+15550002222"
CALLEE = "+15551234567"

# A dial-out body whose JSON, in *standard* base64, has '+', '/' and '=' (so it only survives
# URLs if encoded URL-safe), with non-ASCII text and nested structures.
BODY: dict[str, Any] = {
    "customer": {"name": "Zoë Ångström", "city": "東京", "mood": "🙂🎉"},
    "items": [{"sku": "a/b+c", "qty": 2}, {"sku": "??>>", "qty": None}, [1, 2.5, True]],
    "note": "50% off & more = ¿sí?",
    "empty": {},
}


def _body_with_awkward_base64() -> dict[str, Any]:
    """``BODY`` plus a pad chosen so that its standard base64 contains '+', '/' and '='."""
    for pad in range(64):
        body = {**BODY, "pad": "~" * pad}
        std = base64.b64encode(msgspec.json.encode(body)).decode()
        if "+" in std and "/" in std and std.endswith("="):
            return body
    raise AssertionError("no pad gives an awkward base64")  # pragma: no cover


AWKWARD_BODY = _body_with_awkward_base64()


async def wait_for(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition`` (state lives on the servers' threads and loops)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- bots


@dataclass
class BotCall:
    """What one run of a test bot saw."""

    call_data: dict[str, Any]
    body: dict[str, Any]
    direction: str
    frames: list[Frame] = field(default_factory=list)
    finished: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    @property
    def query_params(self) -> dict[str, str]:
        params: dict[str, str] = self.call_data["query_params"]
        return params

    @property
    def amd_results(self) -> list[str]:
        return [f.result for f in self.frames if isinstance(f, AnsweringMachineDetectionFrame)]


class _Recorder(FrameProcessor):
    """Right after the input transport: keeps the frames that came from outside the audio."""

    def __init__(self, frames: list[Frame]) -> None:
        super().__init__()
        self._frames = frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, AnsweringMachineDetectionFrame):
            self._frames.append(frame)
        await self.push_frame(frame, direction)


class _GreetThenEnd(CannedReplyProcessor):
    """Speaks the greeting, then ends the call itself (the goodbye plays out first)."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame) and direction is FrameDirection.DOWNSTREAM:
            await self.push_frame(EndTaskFrame(reason="said what it had to say"), FrameDirection.UPSTREAM)


def make_bot(
    calls: list[BotCall], *, greeting_secs: float = 0.3, end_after_greeting: bool = False
) -> Callable[[RunnerArguments], Any]:
    """A bot: record its arguments, greet with a tone, end on '#' (or right after greeting)."""

    async def bot(runner_args: RunnerArguments) -> None:
        call = BotCall(dict(runner_args.call_data), dict(runner_args.body), runner_args.direction)
        calls.append(call)
        try:
            transport = create_telnyx_transport(runner_args, vad=False)
            kind = _GreetThenEnd if end_after_greeting else CannedReplyProcessor
            responder = kind(tone(0.2), 8000, greeting=tone(greeting_secs, freq=330), hang_up_digit="#")
            pipeline = Pipeline([transport.input(), _Recorder(call.frames), responder, transport.output()])
            task = PipelineTask(
                pipeline,
                params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
                idle_timeout_secs=runner_args.pipeline_idle_timeout_secs,
            )
            await PipelineRunner().run(task)
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            call.finished.set()

    return bot


# --------------------------------------------------------------------------- harness


@dataclass
class Harness:
    """The callpipe server (``base``/``ws``) and the fake Telnyx API (``fake_state``)."""

    server: BackgroundServer
    fake: BackgroundServer | None
    fake_state: FakeTelnyxState | None
    sim: FakeTelnyxSimulator | None
    settings: ServerSettings
    calls: list[BotCall]
    # Signs TeXML requests and webhooks as Telnyx would (TELNYX_PUBLIC_KEY is its public half).
    signing_key: Ed25519PrivateKey

    @property
    def base(self) -> str:
        return self.server.base_url

    @property
    def ws(self) -> str:
        return self.server.ws_url + "/ws"

    @property
    def state(self) -> Any:
        """The app's ``ServerState`` (live calls, draining)."""
        return self.server.server.config.app.state.callpipe

    @property
    def api_base(self) -> str:
        assert self.fake is not None
        return self.fake.base_url + "/v2"

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base, timeout=10)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    async def bot_call(self, index: int = 0, timeout: float = 8.0) -> BotCall:
        await wait_for(lambda: len(self.calls) > index, timeout, "the bot to receive the call")
        return self.calls[index]

    async def start(self, body: Any = None, number: str = CALLEE) -> httpx.Response:
        async with self.http() as http:
            return await http.post(
                "/start",
                json={"phone_number": number, "body": AWKWARD_BODY if body is None else body},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )


@contextmanager
def serve(
    monkeypatch: pytest.MonkeyPatch,
    *,
    greeting_secs: float = 0.3,
    end_after_greeting: bool = True,
    with_fake: bool = True,
    simulate: bool = True,
    **overrides: Any,
) -> Iterator[Harness]:
    """Run the fake Telnyx API (optional) and the callpipe app for a test bot on real sockets.

    ``simulate``: the fake answers dial-outs with simulated callees. ``overrides`` are
    :class:`ServerSettings` fields.
    """
    calls: list[BotCall] = []
    bot = make_bot(calls, greeting_secs=greeting_secs, end_after_greeting=end_after_greeting)
    port = free_port()
    signing_key, public_key = generate_webhook_keypair()
    values: dict[str, Any] = {
        "public_url": f"http://127.0.0.1:{port}",
        "telnyx_public_key": public_key,
        "callpipe_secret": SECRET,
        "callpipe_api_key": API_KEY,
        "telnyx_api_key": TELNYX_KEY,
        "telnyx_account_sid": "acct-1",
        "telnyx_application_sid": "app-1",
        "telnyx_phone_number": OUR_NUMBER,
        "max_call_secs": 30.0,
    }
    sim = (
        FakeTelnyxSimulator(callee_silence_secs=0.5, max_call_secs=20.0, webhook_private_key=signing_key)
        if with_fake and simulate
        else None
    )
    fake_app = create_fake_telnyx_app(TELNYX_KEY, simulator=sim) if with_fake else None
    fake = BackgroundServer(fake_app) if fake_app is not None else None
    try:
        if fake is not None:
            fake.start()
            values["telnyx_api_base_url"] = fake.base_url + "/v2"
            # What create_telnyx_transport reads to hang calls up through the API.
            monkeypatch.setenv("TELNYX_API_KEY", TELNYX_KEY)
            monkeypatch.setenv("TELNYX_API_BASE_URL", fake.base_url + "/v2")
        values.update(overrides)
        settings = ServerSettings(_env_file=None, **values)  # type: ignore[call-arg]
        with BackgroundServer(create_app(bot, settings), port=port) as server:
            yield Harness(
                server,
                fake,
                fake_app.state.telnyx if fake_app is not None else None,
                sim,
                settings,
                calls,
                signing_key,
            )
            if fake is not None:
                fake.stop()  # simulated callees hang up before the bot server goes
    finally:
        if fake is not None:
            fake.stop()
    if sim is not None:
        assert sim.active_calls == 0


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No server setting leaks in from the environment of whoever runs the tests."""
    for name in ServerSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def _no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"a secret leaked: {text[:200]!r}"


def _stream_of(xml: str) -> tuple[str, dict[str, str]]:
    """The ``<Stream url>`` of a TeXML document and its query parameters."""
    url = parse_texml(xml).stream.url
    return url, {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def _post_texml(
    http: httpx.AsyncClient, h: Harness, form: dict[str, str], path: str = "/texml", sign: bool = True
) -> httpx.Response:
    """POST a TeXML request as Telnyx does: form-encoded, signed (``sign``) with the harness key."""
    raw = urlencode(form).encode()
    headers = {"content-type": "application/x-www-form-urlencoded"}
    if sign:
        headers.update(sign_webhook(raw, h.signing_key))
    return await http.post(path, content=raw, headers=headers)


async def _call(url: str, *, call_control_id: str | None = None, hang_up: float = 0.3) -> CallResult:
    """A silent caller on ``url`` that hangs up after ``hang_up`` s of bot silence."""
    caller = SimulatedCaller(url, call_control_id=call_control_id, max_call_secs=10.0)
    return await asyncio.wait_for(caller.run([], hang_up_after_secs=hang_up), 15)


# --------------------------------------------------------------------------- dial-in


async def test_dial_in_texml_streams_to_the_bot_with_caller_numbers_and_params(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with serve(monkeypatch, end_after_greeting=False, simulate=False) as h:
        assert h.fake_state is not None
        # Telnyx knows the inbound call (so hanging it up through the API answers 200).
        async with TelnyxClient(TELNYX_KEY, base_url=h.api_base, max_retries=0) as client:
            created = await client.texml_call(
                account_sid="acct-1", application_sid="app-1", to=OUR_NUMBER, from_=CALLER
            )
        sid = created["call_sid"]
        instructions, caller = await place_texml_call(
            f"{h.base}/texml?campaign_id=c-1&lang=de",
            call_sid=sid,
            from_number=CALLER,
            to_number=OUR_NUMBER,
            max_call_secs=10.0,
            signing_key=h.signing_key,
        )
        url, params = _stream_of(instructions.xml)
        assert url.startswith(f"{h.server.ws_url}/ws?")
        assert params["direction"] == "inbound"
        assert params["campaign_id"] == "c-1" and params["lang"] == "de"
        claims = verify_token(SECRET, params["token"])
        assert claims.call_id == sid  # bound to the CallSid Telnyx posted
        assert instructions.verbs == ("Connect",) and instructions.verbs_after_stream == ()

        # After the greeting the caller presses '#': the bot ends and hangs the call up.
        result = await asyncio.wait_for(caller.run([CallerTurn(dtmf="#", quiet_secs=0.2)]), 15)
        call = await h.bot_call()
        await wait_for(call.finished.is_set, what="the bot to finish")

        assert call.error is None
        assert call.direction == "inbound" and call.body == {}
        assert call.call_data["call_control_id"] == sid
        assert call.call_data["from"] == CALLER and call.call_data["to"] == OUR_NUMBER
        assert call.query_params == {"campaign_id": "c-1", "lang": "de"}  # no token/direction
        assert result.greeting_heard_at is not None and result.closed_by == "bot"
        assert result.close_code == 1000
        hangups = h.fake_state.requests_to(f"/v2/calls/{sid}/actions/hangup", "POST")
        assert [r.status_code for r in hangups] == [200]
        assert not h.fake_state.calls[sid].is_alive
        await wait_for(lambda: not h.state.calls, what="call cleanup")


async def test_dial_in_hang_up_for_a_call_telnyx_does_not_know_is_still_requested(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with serve(monkeypatch, simulate=False) as h:
        assert h.fake_state is not None
        _, caller = await place_texml_call(f"{h.base}/texml", max_call_secs=10.0, signing_key=h.signing_key)
        result = await asyncio.wait_for(caller.run([], hang_up_after_secs=5.0), 15)
        call = await h.bot_call()
        await wait_for(call.finished.is_set, what="the bot to finish")
        assert result.closed_by == "bot" and result.bot_audio_secs > 0.2
        hangups = h.fake_state.requests_to(f"/v2/calls/{caller.call_control_id}/actions/hangup", "POST")
        assert [r.status_code for r in hangups] == [422]  # 90018: already ended


# --------------------------------------------------------------------------- dial-out


def test_the_test_body_needs_url_safe_base64() -> None:
    std = base64.b64encode(msgspec.json.encode(AWKWARD_BODY)).decode()
    assert "+" in std and "/" in std and "=" in std


async def test_dial_out_texml_carries_the_body_to_the_bot_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(monkeypatch) as h:
        assert h.fake_state is not None and h.sim is not None
        response = await h.start()
        assert response.status_code == 200, response.text
        data = response.json()
        ccid = data["call_control_id"]
        assert ccid and data["status"] == "queued" and data["phone_number"] == CALLEE

        call = await h.bot_call()
        await wait_for(call.finished.is_set, what="the bot to finish")
        assert call.error is None
        assert call.body == AWKWARD_BODY  # byte-for-byte through two URLs
        assert call.direction == "outbound"
        assert call.call_data["call_control_id"] == ccid
        assert call.call_data["to"] == CALLEE and call.call_data["from"] == OUR_NUMBER
        assert call.query_params == {}

        [placed] = h.fake_state.requests_to("/v2/texml/Accounts/acct-1/Calls", "POST")
        assert placed.json["To"] == CALLEE and placed.json["From"] == OUR_NUMBER
        assert placed.json["ApplicationSid"] == "app-1"
        answer_url = placed.json["Url"]
        assert answer_url.startswith(f"{h.base}/answer?body=")
        encoded = parse_qs(urlsplit(answer_url).query)["body"][0]
        assert not set(encoded) & set("+/=%")  # nothing to mangle in any URL
        assert decode_body(encoded) == AWKWARD_BODY

        session = h.sim.sessions[ccid]
        await session.wait_finished(10)
        assert session.errors == []
        assert session.texml is not None
        _, params = _stream_of(session.texml.xml)
        assert params["direction"] == "outbound" and decode_body(params["body"]) == AWKWARD_BODY
        assert verify_token(SECRET, params["token"]).call_id == ccid
        assert session.result is not None and session.result.bot_audio_secs > 0.2
        hangups = h.fake_state.requests_to(f"/v2/calls/{ccid}/actions/hangup", "POST")
        assert len(hangups) == 1 and hangups[0].status_code in (200, 422)


async def test_dial_out_call_control_mode_dials_with_a_stream_url(monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(monkeypatch, dial_mode="call_control", telnyx_connection_id="conn-9") as h:
        assert h.fake_state is not None and h.sim is not None
        response = await h.start()
        assert response.status_code == 200, response.text
        ccid = response.json()["call_control_id"]

        call = await h.bot_call()
        await wait_for(call.finished.is_set, what="the bot to finish")
        assert call.error is None
        assert call.body == AWKWARD_BODY and call.direction == "outbound"
        assert call.call_data["call_control_id"] == ccid

        [dialled] = h.fake_state.requests_to("/v2/calls", "POST")
        assert dialled.json["connection_id"] == "conn-9" and dialled.json["to"] == CALLEE
        assert dialled.json["stream_bidirectional_mode"] == "rtp"
        assert dialled.json["stream_bidirectional_codec"] == "PCMU"
        stream = dialled.json["stream_url"]
        assert stream.startswith(f"{h.server.ws_url}/ws?")
        params = {k: v[0] for k, v in parse_qs(urlsplit(stream).query).items()}
        assert decode_body(params["body"]) == AWKWARD_BODY and params["direction"] == "outbound"
        verify_token(SECRET, params["token"])
        await h.sim.sessions[ccid].wait_finished(10)
        hangups = h.fake_state.requests_to(f"/v2/calls/{ccid}/actions/hangup", "POST")
        assert [r.status_code for r in hangups] == [200]


# --------------------------------------------------------------------------- rejected streams


async def test_streams_without_a_valid_token_are_refused_before_the_bot_runs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with serve(monkeypatch, greeting_secs=3.0, end_after_greeting=False, with_fake=False) as h:
        # A good token for the right call gets through; the call stays up meanwhile.
        good = SimulatedCaller(
            f"{h.ws}?token={issue_token(SECRET, call_id='v3:me')}", call_control_id="v3:me", max_call_secs=10
        )
        run = asyncio.ensure_future(good.run([], hang_up_after_secs=0.2))
        try:
            await wait_for(lambda: h.state.calls, what="the good call to start")
            cases = {
                "missing": (h.ws, None),
                "malformed": (f"{h.ws}?token=not-a-token", None),
                "signature": (f"{h.ws}?token={issue_token('another-secret')}", None),
                "expired": (f"{h.ws}?token={issue_token(SECRET, ttl=60, now=time.time() - 3600)}", None),
                "another call": (f"{h.ws}?token={issue_token(SECRET, call_id='v3:someone-else')}", "v3:me2"),
            }
            for expected, (url, ccid) in cases.items():
                result = await _call(url, call_control_id=ccid)
                assert result.close_code == 1008, (expected, result.close_code, result.close_reason)
                assert expected in result.close_reason, (expected, result.close_reason)
                assert result.bot_audio_secs == 0
            assert [c.call_data["call_control_id"] for c in h.calls] == ["v3:me"]  # only the good one ran
            async with h.http() as http:
                metrics = (await http.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"})).text
            # Refusals are counted, and never count against the call that is running.
            assert 'callpipe_calls_total{outcome="refused"}' in metrics
            [active] = [line for line in metrics.splitlines() if line.startswith("callpipe_active_calls ")]
            assert float(active.split()[1]) >= 1
            await good.hang_up()
            assert (await asyncio.wait_for(run, 10)).greeting_heard_at is not None
        finally:
            if not run.done():
                await good.hang_up()
                await asyncio.wait({run}, timeout=5)
    _no_secrets(caplog.text)


async def test_insecure_streams_opt_out_accepts_streams_without_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with serve(
        monkeypatch,
        end_after_greeting=False,
        with_fake=False,
        callpipe_secret=None,
        callpipe_insecure_streams=True,
        telnyx_public_key=None,  # no stream token to guard, so /texml may answer unsigned
    ) as h:
        async with h.http() as http:
            xml = (await http.post("/texml", data={"CallSid": "v3:x"})).text
        _, params = _stream_of(xml)
        assert "token" not in params
        result = await _call(h.ws + "?direction=inbound")
        assert result.greeting_heard_at is not None
        await wait_for(lambda: h.calls and h.calls[0].finished.is_set(), what="the bot to finish")


# --------------------------------------------------------------------------- webhooks


def _event(event_type: str, ccid: str, **payload: Any) -> bytes:
    envelope = {
        "data": {
            "record_type": "event",
            "event_type": event_type,
            "id": str(uuid.uuid4()),
            "occurred_at": "2024-01-01T00:00:00.000000Z",
            "payload": {"call_control_id": ccid, **payload},
        },
        "meta": {"attempt": 1, "delivered_to": "http://example/webhooks/telnyx"},
    }
    return json.dumps(envelope).encode()


async def test_webhooks_are_verified_and_reach_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    private, public = generate_webhook_keypair()
    other_private, _ = generate_webhook_keypair()
    with serve(
        monkeypatch, greeting_secs=0.2, end_after_greeting=False, with_fake=False, telnyx_public_key=public
    ) as h:
        ccid = "v3:webhook-call"
        caller = SimulatedCaller(
            f"{h.ws}?token={issue_token(SECRET, call_id=ccid)}", call_control_id=ccid, max_call_secs=15
        )
        run = asyncio.ensure_future(caller.run([], hang_up_after_secs=20.0))
        try:
            call = await h.bot_call()
            await wait_for(lambda: caller.result and caller.result.bot_audio_secs > 0.1, what="greeting")

            async def post(body: bytes, headers: dict[str, str]) -> httpx.Response:
                async with h.http() as http:
                    return await http.post(
                        "/webhooks/telnyx",
                        content=body,
                        headers={"content-type": "application/json", **headers},
                    )

            # Answering-machine detection reaches the bot's pipeline as a frame.
            amd = _event("call.machine.detection.ended", ccid, result="machine")
            assert (await post(amd, sign_webhook(amd, private))).status_code == 200
            await wait_for(lambda: call.amd_results == ["machine"], what="the AMD frame")
            assert call.frames[0].event_type == "call.machine.detection.ended"  # type: ignore[attr-defined]

            hangup = _event("call.hangup", ccid, hangup_cause="normal_clearing")
            forged = await post(hangup, sign_webhook(hangup, other_private))
            assert forged.status_code == 401
            unsigned = await post(hangup, {})
            assert unsigned.status_code == 401
            no_timestamp = {k: v for k, v in sign_webhook(hangup, private).items() if "timestamp" not in k}
            assert (await post(hangup, no_timestamp)).status_code == 401
            stale = await post(hangup, sign_webhook(hangup, private, timestamp=int(time.time()) - 400))
            assert stale.status_code == 403
            assert not call.finished.is_set()  # none of those touched the call

            ok = await post(hangup, sign_webhook(hangup, private))
            assert ok.status_code == 200 and ok.json() == {"ok": True}
            await wait_for(call.finished.is_set, what="call.hangup to end the bot")
            result = await asyncio.wait_for(run, 10)
            assert result.closed_by == "bot"
        finally:
            if not run.done():
                await caller.hang_up()
                await asyncio.wait({run}, timeout=5)
        # An event for a call that is not here is accepted and ignored.
        other = _event("call.hangup", "v3:unknown")
        assert (await post(other, sign_webhook(other, private))).status_code == 200


async def test_webhooks_without_a_public_key_are_refused_unless_insecure_is_opted_into(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with serve(monkeypatch, with_fake=False, telnyx_public_key=None) as h:
        async with h.http() as http:
            response = await http.post("/webhooks/telnyx", content=_event("call.hangup", "v3:any"))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "webhooks_disabled"
        assert "TELNYX_PUBLIC_KEY" in response.json()["error"]["detail"]
        assert "CALLPIPE_INSECURE_WEBHOOKS" in response.json()["error"]["detail"]
    assert "TELNYX_PUBLIC_KEY is not set" in caplog.text  # said at start-up
    caplog.clear()
    with serve(monkeypatch, with_fake=False, telnyx_public_key=None, callpipe_insecure_webhooks=True) as h:
        async with h.http() as http:
            body = _event("call.initiated", "v3:nobody")
            response = await http.post("/webhooks/telnyx", content=body)
            assert response.status_code == 200
            garbage = await http.post("/webhooks/telnyx", content=b"not json")
            assert garbage.status_code == 400
    assert "CALLPIPE_INSECURE_WEBHOOKS=1" in caplog.text and "UNSIGNED" in caplog.text


# --------------------------------------------------------------------------- /start errors


async def test_start_rejects_bad_requests_without_leaking_secrets(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with serve(monkeypatch, simulate=False, dial_rate_per_sec=2, max_body_bytes=2048) as h:
        async with h.http() as http:
            good = {"Authorization": f"Bearer {API_KEY}"}

            async def post(expected: int, code: str, **kwargs: Any) -> None:
                response = await http.post("/start", **kwargs)
                texts.append(response.text)
                assert response.status_code == expected, response.text
                assert response.json()["error"]["code"] == code

            await post(401, "unauthorized", json={"phone_number": CALLEE})
            await post(
                401, "unauthorized", json={"phone_number": CALLEE}, headers={"Authorization": "Bearer no"}
            )
            await post(401, "unauthorized", json={"phone_number": CALLEE}, headers={"Authorization": API_KEY})
            await post(422, "bad_phone_number", json={"phone_number": "5551234567"}, headers=good)
            await post(422, "bad_phone_number", json={"phone_number": "+0123"}, headers=good)
            await post(422, "bad_phone_number", json={"body": {}}, headers=good)
            await post(422, "bad_body", json={"phone_number": CALLEE, "body": [1, 2]}, headers=good)
            await post(422, "bad_body", json={"phone_number": CALLEE, "body": "not json"}, headers=good)
            big = {"phone_number": CALLEE, "body": {"x": "y" * 4096}}
            await post(413, "too_large", json=big, headers=good)
            await post(400, "bad_json", content=b"{nope", headers=good)
            await post(400, "bad_json", json=[CALLEE], headers=good)

            # Rate limit: 2 dials per second, so of four at once two get through.
            async def start() -> httpx.Response:
                return await http.post("/start", json={"phone_number": CALLEE, "body": BODY}, headers=good)

            responses = await asyncio.gather(*(start() for _ in range(4)))
            texts += [r.text for r in responses]
            assert sorted(r.status_code for r in responses) == [200, 200, 429, 429]
            await asyncio.sleep(0.6)  # refilled: one more goes
            assert (await start()).status_code == 200
        assert h.fake_state is not None
        assert len(h.fake_state.requests_to("/v2/texml/Accounts/*/Calls")) == 3

    # Telnyx refusing our key: 502, and the key appears nowhere.
    with serve(monkeypatch, simulate=False, telnyx_api_key="KEY-wrong-Ww12") as h:
        response = await h.start()
        texts.append(response.text)
        assert response.status_code == 502 and response.json()["error"]["code"] == "telnyx_error"
        assert "dial-out to" in caplog.text  # the server's own log lines are captured here
        assert "KEY-wrong-Ww12" not in response.text and "KEY-wrong-Ww12" not in caplog.text

    _no_secrets(caplog.text, *texts)


async def test_start_without_dial_out_settings_is_503(monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(monkeypatch, with_fake=False, telnyx_api_key=None) as h:
        response = await h.start()
        assert response.status_code == 503 and response.json()["error"]["code"] == "dial_out_disabled"
        _no_secrets(response.text)
    with serve(monkeypatch, with_fake=False, callpipe_api_key=None) as h:
        response = await h.start()
        assert response.status_code == 503 and response.json()["error"]["code"] == "dial_out_disabled"
    with serve(monkeypatch, with_fake=False, telnyx_phone_number=None) as h:
        response = await h.start()
        assert response.status_code == 503


# --------------------------------------------------------------------------- operations


async def test_health_endpoints_and_metrics_after_a_call(monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(monkeypatch, with_fake=False) as h:
        async with h.http() as http:
            assert (await http.get("/livez")).json() == {"status": "alive"}
            health = await http.get("/healthz")  # the alias of readiness
            assert health.status_code == 200
            assert health.json() == {"status": "ok", "active_calls": 0}
            assert (await http.get("/readyz")).json() == health.json()

            result = await _call(f"{h.ws}?token={issue_token(SECRET)}", hang_up=2.0)
            assert result.closed_by == "bot"
            await wait_for(lambda: h.calls and h.calls[0].finished.is_set(), what="the bot to finish")
            await wait_for(lambda: not h.state.calls, what="the call to be let go")

            # /metrics is behind the API key: nobody else learns call volumes.
            assert (await http.get("/metrics")).status_code == 401
            wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            metrics = await http.get("/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            text = metrics.text
            assert "# TYPE callpipe_active_calls gauge" in text
            assert "callpipe_active_calls 0.0" in text.splitlines()
            assert any(
                line.startswith('callpipe_calls_total{outcome="completed"} ') for line in text.splitlines()
            )
            assert 'callpipe_response_latency_seconds_bucket{le="+Inf"}' in text
            assert "# TYPE callpipe_response_latency_seconds histogram" in text
            _no_secrets(text)


async def test_metrics_need_a_key_or_the_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    with serve(monkeypatch, with_fake=False, callpipe_api_key=None, metrics_port=port) as h:
        async with h.http() as http:
            refused = await http.get("/metrics")
            assert refused.status_code == 503 and "METRICS_PORT" in refused.json()["error"]["detail"]
            # The separate listener answers without a key (it is meant for an internal network).
            async with httpx.AsyncClient(timeout=5) as plain:
                scraped = await plain.get(f"http://127.0.0.1:{port}/metrics")
            assert scraped.status_code == 200
            assert "# TYPE callpipe_calls_total counter" in scraped.text


async def test_readiness_turns_503_at_max_calls_and_refuses_with_1013(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with serve(monkeypatch, greeting_secs=5.0, end_after_greeting=False, with_fake=False, max_calls=1) as h:
        first = SimulatedCaller(f"{h.ws}?token={issue_token(SECRET)}", max_call_secs=10)
        run = asyncio.ensure_future(first.run([], hang_up_after_secs=30))
        try:
            await wait_for(lambda: h.state.calls, what="the first call to start")
            async with h.http() as http:
                ready = await http.get("/readyz")
                assert ready.status_code == 503 and ready.json()["status"] == "at_capacity"
                assert (await http.get("/livez")).status_code == 200
            second = await _call(f"{h.ws}?token={issue_token(SECRET)}")
            assert second.close_code == 1013 and "MAX_CALLS" in second.close_reason
            assert second.bot_audio_secs == 0
            assert len(h.calls) == 1  # the second never reached the bot
            await first.hang_up()
            await asyncio.wait_for(run, 10)
            await wait_for(lambda: not h.state.calls, what="the call to be let go")
            async with h.http() as http:
                assert (await http.get("/readyz")).status_code == 200
        finally:
            if not run.done():
                await first.hang_up()
                await asyncio.wait({run}, timeout=5)


async def test_operator_hangs_up_a_live_call_through_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(monkeypatch, greeting_secs=8.0, end_after_greeting=False, with_fake=False) as h:
        caller = SimulatedCaller(
            f"{h.ws}?token={issue_token(SECRET, call_id='v3:op')}", call_control_id="v3:op", max_call_secs=15
        )
        run = asyncio.ensure_future(caller.run([], hang_up_after_secs=30))
        try:
            await wait_for(lambda: h.state.calls, what="the call to start")
            async with h.http() as http:
                assert (await http.post("/api/calls/v3:op/hangup")).status_code == 401
                missing = await http.post("/api/calls/v3:nobody/hangup", headers=h.auth)
                assert missing.status_code == 404
                bad = await http.post("/api/calls/v3:op/transfer", headers=h.auth, json={"to": 5})
                assert bad.status_code == 422
                started = time.monotonic()
                response = await http.post("/api/calls/v3:op/hangup", headers=h.auth)
                assert response.status_code == 200 and response.json()["handled"] == "local"
            result = await asyncio.wait_for(run, 5)
            assert result.closed_by == "bot" and time.monotonic() - started < 2.0
        finally:
            if not run.done():
                await caller.hang_up()
                await asyncio.wait({run}, timeout=5)


async def test_operator_transfers_obey_the_transfer_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(
        monkeypatch, greeting_secs=8.0, end_after_greeting=False, transfer_allowed_numbers="+1555010*"
    ) as h:
        assert h.fake_state is not None
        caller = SimulatedCaller(
            f"{h.ws}?token={issue_token(SECRET, call_id='v3:xfer')}",
            call_control_id="v3:xfer",
            max_call_secs=15,
        )
        run = asyncio.ensure_future(caller.run([], hang_up_after_secs=30))
        try:
            await wait_for(lambda: h.state.calls, what="the call to start")
            async with h.http() as http:
                for refused in ("+19005550100", "sip:desk@pbx.example.com", "+1 555 0200 000"):
                    response = await http.post(
                        "/api/calls/v3:xfer/transfer", headers=h.auth, json={"to": refused}
                    )
                    assert response.status_code == 403, (refused, response.text)
                    error = response.json()["error"]
                    assert (
                        error["code"] == "transfer_not_allowed"
                        and "TRANSFER_ALLOWED_NUMBERS" in error["detail"]
                    )
                assert h.fake_state.requests_to("/v2/calls/v3:xfer/actions/transfer", "POST") == []
                assert h.state.calls, "a refused transfer leaves the call alone"
                allowed = await http.post(
                    "/api/calls/v3:xfer/transfer", headers=h.auth, json={"to": "+1 555 0100 123"}
                )
            # It reached Telnyx, normalised (this fake never placed the call, so it refuses it).
            [sent] = h.fake_state.requests_to("/v2/calls/v3:xfer/actions/transfer", "POST")
            assert sent.json["to"] == "+15550100123"
            assert allowed.status_code == 502 and allowed.json()["error"]["code"] == "telnyx_error"
        finally:
            await caller.hang_up()
            await asyncio.wait({run}, timeout=5)


# --------------------------------------------------------------------------- TeXML documents


async def test_texml_document_streams_rtp_with_nothing_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(monkeypatch, with_fake=False, stream_codec="PCMA") as h:
        async with h.http() as http:
            response = await _post_texml(http, h, {"CallSid": "v3:abc", "From": CALLER, "To": OUR_NUMBER})
            get = await http.get(
                "/texml", params={"CallSid": "v3:get"}, headers=sign_webhook(b"", h.signing_key)
            )
            # /answer only takes URLs /start signed: a forged one is refused, and a signed
            # but malformed body is a clear 400.
            forged_answer = await http.post("/answer?body=e30")
            exp, sig = sign_expiring(SECRET, "answer", "@@@", ttl=60)
            bad_answer = await http.post(f"/answer?body=@@@&exp={exp}&sig={sig}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/xml")
        root = ET.fromstring(response.text)
        assert [child.tag for child in root] == ["Connect"]
        assert "Pause" not in response.text
        stream = root.find("Connect/Stream")
        assert stream is not None
        assert stream.get("bidirectionalMode") == "rtp"
        assert stream.get("bidirectionalCodec") == "PCMA"
        assert stream.get("bidirectionalSamplingRate") == "8000"
        params = {k: v[0] for k, v in parse_qs(urlsplit(stream.get("url", "")).query).items()}
        assert set(params) == {"direction", "token"}  # Telnyx's form fields stay out of the URL
        assert verify_token(SECRET, params["token"]).call_id == "v3:abc"
        _, get_params = _stream_of(get.text)
        assert verify_token(SECRET, get_params["token"]).call_id == "v3:get"
        assert forged_answer.status_code == 403
        assert bad_answer.status_code == 400


def test_callpipe_texml_prints_the_document(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("CALLPIPE_SECRET", SECRET)
    root_logger = logging.getLogger()
    handlers, level = list(root_logger.handlers), root_logger.level

    def run(*args: str) -> int:
        try:
            return cli_main(["texml", "--public-url", "https://bot.example.com/agent", *args])
        finally:  # the CLI configures logging for the process; leave pytest's as it was
            root_logger.handlers[:] = handlers
            root_logger.setLevel(level)

    # Without a path secret: a token for ONE stream within minutes, not a year-long one,
    # and the operator is told so.
    with pytest.raises(SystemExit, match="ttl-minutes"):
        run("--ttl-minutes", "600")
    assert run() == 0
    printed = capsys.readouterr()
    text = printed.out
    assert "ONE stream within 10 minutes" in printed.err and "TEXML_PATH_SECRET" in printed.err
    root = ET.fromstring(text)
    assert "Pause" not in text and [child.tag for child in root] == ["Connect"]
    stream = root.find("Connect/Stream")
    assert stream is not None
    assert stream.get("bidirectionalMode") == "rtp" and stream.get("bidirectionalCodec") == "PCMU"
    url = stream.get("url", "")
    assert url.startswith("wss://bot.example.com/agent/ws?")
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    claims = verify_token(SECRET, params["token"])
    assert claims.call_id is None
    assert 9 * 60 < claims.expires_at - time.time() <= 10 * 60
    assert SECRET not in text

    # With TEXML_PATH_SECRET: a static document that works for every call, by sending each
    # call to the server, which issues it a token of its own.
    path_secret = "p" * 20
    monkeypatch.setenv("TEXML_PATH_SECRET", path_secret)
    assert run() == 0
    printed = capsys.readouterr()
    root = ET.fromstring(printed.out)
    [redirect] = list(root)
    assert redirect.tag == "Redirect" and redirect.get("method") == "POST"
    assert redirect.text == f"https://bot.example.com/agent/texml/{path_secret}"
    assert "token" not in printed.out and SECRET not in printed.out
    assert "redirects every call" in printed.err
    monkeypatch.delenv("TEXML_PATH_SECRET")

    monkeypatch.delenv("CALLPIPE_SECRET")
    with pytest.raises(SystemExit, match="CALLPIPE_SECRET"):
        cli_main(["texml", "--public-url", "https://bot.example.com"])
    root_logger.handlers[:] = handlers
    root_logger.setLevel(level)


# --------------------------------------------------------------------------- settings


async def _noop_bot(runner_args: RunnerArguments) -> None:
    return None


def test_settings_name_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="PUBLIC_URL"):
        create_app(_noop_bot, ServerSettings(_env_file=None, callpipe_secret=SECRET))  # type: ignore[call-arg]
    with pytest.raises(SettingsError, match="CALLPIPE_SECRET") as info:
        create_app(_noop_bot, ServerSettings(_env_file=None, public_url="https://x.example"))  # type: ignore[call-arg]
    assert "CALLPIPE_INSECURE_STREAMS" in str(info.value)
    with pytest.raises(SettingsError, match="DIAL_MODE"):
        create_app(
            _noop_bot,
            ServerSettings(
                _env_file=None, public_url="https://x.example", callpipe_secret=SECRET, dial_mode="sip"
            ),  # type: ignore[call-arg]
        )
    # The opt-out runs without a secret; settings come from the environment too.
    monkeypatch.setenv("PUBLIC_URL", "https://x.example")
    monkeypatch.setenv("CALLPIPE_INSECURE_STREAMS", "1")
    settings = ServerSettings(_env_file=None)  # type: ignore[call-arg]
    assert settings.public_url == "https://x.example" and settings.callpipe_insecure_streams
    create_app(_noop_bot, settings)
    # Secrets never show in the settings' repr.
    monkeypatch.setenv("CALLPIPE_SECRET", SECRET)
    monkeypatch.setenv("TELNYX_API_KEY", TELNYX_KEY)
    _no_secrets(repr(ServerSettings(_env_file=None)), str(ServerSettings(_env_file=None)))  # type: ignore[call-arg]


def test_env_example_documents_every_setting() -> None:
    path = Path(__file__).parent.parent / ".env.example"
    text = path.read_text()
    named = {line.lstrip("# ").split("=", 1)[0] for line in text.splitlines() if "=" in line}
    missing = [name.upper() for name in ServerSettings.model_fields if name.upper() not in named]
    assert not missing, f".env.example does not document {missing}"
    # As shipped it is a valid configuration for serving (placeholders filled in).
    settings = ServerSettings(_env_file=str(path))  # type: ignore[call-arg]
    settings.check_for_serving()
    assert settings.public_url == "https://bot.example.com" and settings.secret("callpipe_secret")
    assert not settings.callpipe_insecure_streams and not settings.dial_out_configured


async def test_a_stream_url_cannot_be_replayed_with_another_body_or_direction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from callpipe.server.app import encode_body

    with serve(monkeypatch, greeting_secs=0.2, end_after_greeting=False, with_fake=False) as h:
        body = encode_body({"user": {"firstName": "Ann"}})
        token = issue_token(SECRET, scope=scope_digest("outbound", body))
        for query, expect_refused in (
            (f"direction=outbound&body={body}&token={token}", False),
            (f"direction=outbound&body={encode_body({'user': {'firstName': 'Eve'}})}&token={token}", True),
            (f"direction=inbound&body={body}&token={token}", True),
        ):
            caller = SimulatedCaller(f"{h.ws}?{query}", max_call_secs=5)
            result = await asyncio.wait_for(caller.run([], hang_up_after_secs=0.3), 10)
            if expect_refused:
                assert result.close_code == 1008 and "do not match" in result.close_reason, query
            else:
                assert result.close_code != 1008 and result.greeting_latency is not None, query


async def test_start_asks_telnyx_for_answering_machine_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    with serve(monkeypatch, simulate=False, dial_mode="call_control", telnyx_connection_id="conn-9") as h:
        assert h.fake_state is not None
        async with h.http() as http:
            auth = {"Authorization": f"Bearer {API_KEY}"}
            for amd in ("premium", "detect_beep", "detect"):
                response = await http.post("/start", json={"phone_number": CALLEE, "amd": amd}, headers=auth)
                assert response.status_code == 200, response.text
            off = await http.post("/start", json={"phone_number": CALLEE, "amd": False}, headers=auth)
            assert off.status_code == 200, off.text
            bad = await http.post("/start", json={"phone_number": CALLEE, "amd": "maybe"}, headers=auth)
            assert bad.status_code == 422 and bad.json()["error"]["code"] == "bad_amd"
        sent = [
            r.json.get("answering_machine_detection") for r in h.fake_state.requests_to("/v2/calls", "POST")
        ]
        assert sent == ["premium", "detect_beep", "detect", None]
    # TeXML dial-out has no such field: refused clearly instead of silently ignored.
    with serve(monkeypatch, simulate=False) as h:
        async with h.http() as http:
            response = await http.post(
                "/start",
                json={"phone_number": CALLEE, "amd": "premium"},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
        assert response.status_code == 422 and "DIAL_MODE=call_control" in response.json()["error"]["detail"]
