"""The examples run: dial-in routed by number and personalized by caller, dial-out with a body.

Real servers on 127.0.0.1 (callpipe + the fake Telnyx API), the embedded offline models.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("faster_whisper", reason="needs callpipe[local] (the test command installs it)")

from callpipe.server.app import create_app
from callpipe.server.background import BackgroundServer, free_port
from callpipe.server.serve import load_bot
from callpipe.server.settings import ServerSettings
from callpipe.sim.caller import CallerTurn
from callpipe.sim.fake_api import create_fake_telnyx_app
from callpipe.sim.texml import place_texml_call

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture()
def conversation() -> Iterator[list[str]]:
    """What the assistant logs of the conversation ("caller said: …", "bot said: …")."""
    handler = _Lines()
    log = logging.getLogger("callpipe.assistant")
    level = log.level
    log.setLevel(logging.DEBUG)  # the conversation itself is logged at DEBUG (privacy)
    log.addHandler(handler)
    try:
        yield handler.lines
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


async def _speech(text: str) -> bytes:
    from callpipe.services.piper import PiperTTSService

    return await PiperTTSService(sample_rate=8000, noise_scale=0.0, noise_w_scale=0.0).synthesize(text)


# The voice URL's secret path segment authenticates Telnyx's TeXML fetch (TEXML_PATH_SECRET).
PATH_SECRET = secrets.token_urlsafe(18)


def _settings(port: int, fake_base: str, **extra: Any) -> ServerSettings:
    return ServerSettings(
        public_url=f"http://127.0.0.1:{port}",
        callpipe_secret=secrets.token_urlsafe(16),  # type: ignore[arg-type]
        texml_path_secret=PATH_SECRET,  # type: ignore[arg-type]
        telnyx_api_key="test-key",  # type: ignore[arg-type]
        telnyx_api_base_url=fake_base,
        _env_file=None,  # type: ignore[call-arg]
        **extra,
    )


async def test_dial_in_example_routes_by_dialled_number_and_greets_known_callers(
    conversation: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bot = load_bot(str(EXAMPLES / "dial_in_bot.py"))
    question = await _speech("What are your hours on Saturday?")
    goodbye = await _speech("No, that's all, thanks.")
    fake = create_fake_telnyx_app(api_key="test-key")
    with BackgroundServer(fake) as telnyx:
        monkeypatch.setenv("TELNYX_API_KEY", "test-key")
        monkeypatch.setenv("TELNYX_API_BASE_URL", telnyx.base_url + "/v2")
        port = free_port()
        app = create_app(bot, _settings(port, telnyx.base_url + "/v2"))
        with BackgroundServer(app, port=port) as server:
            _, caller = await place_texml_call(
                f"{server.base_url}/texml/{PATH_SECRET}", from_number="+15550001234", to_number="+15550005555"
            )
            turns = [CallerTurn(audio=question, quiet_secs=2.5), CallerTurn(audio=goodbye, quiet_secs=2.5)]
            result = await asyncio.wait_for(caller.run(turns, hang_up_after_secs=3.0), 90)
    said = [line for line in conversation if line.startswith("bot said:")]
    assert "Maria" in said[0] and "Downtown" in said[0] and "Sam" in said[0], said
    assert any("10 AM to 2 PM" in line for line in said), said  # the Downtown office's hours
    assert "goodbye" in said[-1].lower()
    assert result.closed_by == "bot"


async def test_dial_out_example_greets_the_body_first_name(conversation: list[str]) -> None:
    bot = load_bot(str(EXAMPLES / "dial_out_bot.py"))
    goodbye = await _speech("No thanks, that's all. Goodbye.")
    fake = create_fake_telnyx_app(
        api_key="test-key",
        simulate_calls=True,
        callee_script=lambda call: [CallerTurn(audio=goodbye, quiet_secs=2.5)],
    )
    with BackgroundServer(fake) as telnyx:
        port = free_port()
        settings = _settings(
            port,
            telnyx.base_url + "/v2",
            callpipe_api_key="start-key",
            telnyx_account_sid="AC-test",
            telnyx_application_sid="app-test",
            telnyx_phone_number="+15550009876",
        )
        app = create_app(bot, settings)
        with BackgroundServer(app, port=port) as server:
            async with httpx.AsyncClient(base_url=server.base_url) as http:
                response = await http.post(
                    "/start",
                    json={"phone_number": "+15557654321", "body": {"user": {"firstName": "Zoë"}}},
                    headers={"Authorization": "Bearer start-key"},
                )
            assert response.status_code == 200, response.text
            ccid = response.json()["call_control_id"]
            simulator = fake.state.telnyx.simulator
            for _ in range(900):
                session = simulator.sessions.get(ccid)
                if session is not None and session.finished.is_set():
                    break
                await asyncio.sleep(0.1)
    said = [line for line in conversation if line.startswith("bot said:")]
    assert said and "Hi Zoë" in said[0] and "calling" in said[0], said
    assert "goodbye" in said[-1].lower(), said
