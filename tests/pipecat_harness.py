"""Holds a simulated call with a Pipecat-style bot against local fakes of Deepgram, OpenAI, Cartesia.

The bots are not edited to reach the fakes: the providers' base URLs and keys come from
the environment (``OPENAI_BASE_URL``, ``DEEPGRAM_BASE_URL``, ``CARTESIA_BASE_URL`` and the
``*_API_KEY`` variables), exactly as a ported bot is pointed at a proxy. Used by
``test_pipecat_bots.py`` (callpipe's own Pipecat-style bots, always) and
``test_pipecat_upstream.py`` (Pipecat's example bots, when a copy is on the machine).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import secrets
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from callpipe.server.app import create_app
from callpipe.server.background import BackgroundServer, free_port
from callpipe.server.serve import load_bot
from callpipe.server.settings import ServerSettings
from callpipe.sim.caller import CallerTurn, CallResult, SimulatedCaller
from callpipe.sim.fake_cartesia import create_fake_cartesia_app
from callpipe.sim.fake_deepgram import create_fake_deepgram_app
from callpipe.sim.fake_openai import create_fake_openai_app, message_text, words
from callpipe.sim.texml import fetch_texml, place_texml_call
from tests.helpers import wait_until

TRANSCRIPT = "what time do you open tomorrow"
GREETING = "Hello! This is the demo bot speaking."
# The caller hangs up after this much bot silence once its turn is answered.
HANG_UP_AFTER_SECS = 1.0
PATH_SECRET = secrets.token_urlsafe(16)  # the TeXML voice URL's secret path (/texml/<secret>)


def responder(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[Any]:
    """The fake model: a greeting until the caller has spoken, then an answer to what they said."""
    said = [m for m in messages if m.get("role") == "user" and TRANSCRIPT in message_text(m)]
    if not said:
        return words(GREETING)
    return words(f"You asked {TRANSCRIPT}. We open at nine.")


@dataclass
class Fakes:
    """The three provider fakes, running, and what they recorded."""

    deepgram: Any
    openai: Any
    cartesia: Any
    servers: list[BackgroundServer] = field(default_factory=list)


@contextlib.contextmanager
def provider_fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fakes]:
    """Start the fakes on 127.0.0.1 and point the providers' environment variables at them."""
    deepgram = create_fake_deepgram_app("dg-key", transcript=TRANSCRIPT)
    openai = create_fake_openai_app("sk-key", script=responder)
    # The bot speaks three times faster than a person (1/40 s per character): these calls
    # check that each stage is reached, and every second of fake speech is a second of test.
    cartesia = create_fake_cartesia_app("ct-key", secs_per_char=1 / 40)
    with BackgroundServer(deepgram) as dg, BackgroundServer(openai) as oa, BackgroundServer(cartesia) as ct:
        env = {
            "DEEPGRAM_API_KEY": "dg-key",
            "DEEPGRAM_BASE_URL": dg.ws_url,
            "OPENAI_API_KEY": "sk-key",
            "OPENAI_BASE_URL": oa.base_url + "/v1",
            "CARTESIA_API_KEY": "ct-key",
            "CARTESIA_BASE_URL": ct.ws_url,
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("TELNYX_API_KEY", raising=False)
        yield Fakes(deepgram.state.deepgram, openai.state.openai, cartesia.state.cartesia, [dg, oa, ct])


def load_module(path: Path, name: str) -> ModuleType:
    """Import ``path`` as module ``name`` with its folder first on ``sys.path`` (as ``python file`` does)."""
    sys.modules.pop(name, None)
    sys.modules.pop("bot", None)  # server.py imports `bot` from its own folder
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def unload(folder: Path) -> None:
    """Undo :func:`load_module` for ``folder``."""
    with contextlib.suppress(ValueError):
        sys.path.remove(str(folder))
    sys.modules.pop("bot", None)


async def inbound_call(bot_file: Path, speech: bytes) -> CallResult:
    """Serve ``bot_file`` with ``callpipe serve``'s app and call it once through its TeXML."""
    bot = load_bot(str(bot_file))
    port = free_port()
    settings = ServerSettings(
        public_url=f"http://127.0.0.1:{port}",
        callpipe_secret=secrets.token_urlsafe(16),  # type: ignore[arg-type]
        texml_path_secret=PATH_SECRET,  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )
    try:
        with BackgroundServer(create_app(bot, settings), port=port) as server:
            _, caller = await place_texml_call(
                f"{server.base_url}/texml/{PATH_SECRET}", from_number="+15550001234"
            )
            return await asyncio.wait_for(
                caller.run(_turns(speech), hang_up_after_secs=HANG_UP_AFTER_SECS), 60
            )
    finally:
        unload(bot_file.parent)


async def outbound_call(server_file: Path, speech: bytes, body: dict[str, Any]) -> CallResult:
    """Run ``server_file``'s FastAPI ``app`` and play Telnyx for an answered outbound call.

    Telnyx fetches ``/answer`` (with the dial-out body, as ``/start`` put it in the URL) and
    opens the ``<Stream>``. The test stands in for the TLS proxy in front of the server: the
    ``wss://`` stream URL the server writes is reached as ``ws://`` on 127.0.0.1.
    """
    module = load_module(server_file, f"pipecat_server_{abs(hash(server_file))}")
    encoded = urllib.parse.quote(base64.b64encode(json.dumps(body).encode()).decode(), safe="")
    try:
        with BackgroundServer(module.app) as server:
            texml = await fetch_texml(
                f"{server.base_url}/answer?body={encoded}",
                direction="outbound-api",
                call_status="in-progress",
            )
            url = texml.stream.url.replace("wss://", "ws://", 1)
            caller = SimulatedCaller(url, encoding=texml.stream.encoding, to_number="+15550001234")
            return await asyncio.wait_for(
                caller.run(_turns(speech), hang_up_after_secs=HANG_UP_AFTER_SECS), 60
            )
    finally:
        unload(server_file.parent)


def _turns(speech: bytes) -> list[CallerTurn]:
    return [CallerTurn(audio=speech, quiet_secs=1.0)]


async def check_call(result: CallResult, fakes: Fakes, *, greets_first: bool) -> None:
    """Greeting, an answer to the caller's turn, hang-up; and the providers saw it all."""
    assert not result.errors, result.errors
    if greets_first:
        assert result.greeting_latency is not None, "no greeting was heard"
    assert result.turns and result.turns[0].response_latency is not None, "the caller's turn got no answer"
    assert result.closed_by == "caller"
    requests = fakes.openai.requests
    assert any(TRANSCRIPT in json.dumps(r.body["messages"]) for r in requests), "the LLM never got the turn"
    assert all(r.body["messages"][0]["role"] == "system" for r in requests)  # the system_instruction
    assert fakes.deepgram.sessions and fakes.cartesia.connections
    # Hang-up: the pipeline ends and closes its provider streams.
    await wait_until(lambda: fakes.deepgram.last.closed_at is not None, 10)
