"""TeXML in the simulator: safe parsing of <Stream>, fetching like Telnyx, dialling in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
from fastapi import Request
from fastapi.responses import Response

from callpipe.server.background import BackgroundServer
from callpipe.sim.bots import CannedBotConfig, create_canned_bot_app
from callpipe.sim.texml import (
    MAX_TEXML_BYTES,
    TEXML_API_VERSION,
    TeXMLError,
    TeXMLFetchError,
    TeXMLSyntaxError,
    fetch_texml,
    parse_texml,
    place_texml_call,
)
from tests.conftest import tone

CONNECT = """<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Connect>
    <Stream url="wss://bot.example/ws" track="both_tracks" name="agent" codec="PCMA"
            bidirectionalMode="rtp" bidirectionalCodec="G722" bidirectionalSamplingRate="16000"
            statusCallback="https://app.example/stream-events" statusCallbackMethod="get"
            x-extra="kept">
      <Parameter name="campaign_id" value="c-1"/>
      <Parameter name="lead" value="42"/>
    </Stream>
  </Connect>
  <Pause length="2"/>
  <Hangup/>
</Response>"""


# --------------------------------------------------------------------------- parsing


def test_connect_stream_with_parameters_and_attributes() -> None:
    texml = parse_texml(CONNECT)
    stream = texml.stream
    assert texml.mode == "connect"
    assert stream.url == "wss://bot.example/ws"
    assert stream.track == "both_tracks"
    assert stream.name == "agent"
    assert stream.codec == "PCMA"
    assert stream.bidirectional_mode == "rtp"
    assert stream.bidirectional_codec == "G722"
    assert stream.bidirectional_sampling_rate == 16000
    assert stream.status_callback == "https://app.example/stream-events"
    assert stream.status_callback_method == "GET"
    assert stream.parameters == {"campaign_id": "c-1", "lead": "42"}
    assert texml.custom_parameters == {"campaign_id": "c-1", "lead": "42"}
    assert stream.attributes["x-extra"] == "kept"  # raw attributes are all kept
    # The codec the simulated call uses: bidirectionalCodec wins.
    assert stream.encoding == "G722" and stream.sample_rate == 16000
    assert texml.verbs == ("Connect", "Pause", "Hangup")
    assert texml.verbs_after_stream == ("Pause", "Hangup")


def test_start_stream_and_documented_defaults() -> None:
    texml = parse_texml(
        b'<Response><Say>hi</Say><Start><Stream url="ws://127.0.0.1:9/ws"/></Start><Pause/></Response>'
    )
    stream = texml.stream
    assert texml.mode == "start"
    assert texml.verbs == ("Say", "Start", "Pause")
    assert texml.verbs_after_stream == ("Pause",)
    assert stream.track == "inbound_track"
    assert stream.bidirectional_mode == "mp3"
    assert stream.bidirectional_codec is None and stream.sample_rate is None
    assert stream.parameters == {}
    assert stream.encoding == "PCMU"


@pytest.mark.parametrize(
    ("attrs", "encoding"),
    [
        ('codec="PCMA"', "PCMA"),
        ('codec="default"', "PCMU"),
        ('codec="PCMA" bidirectionalCodec="PCMU"', "PCMU"),
    ],
)
def test_encoding_choice(attrs: str, encoding: str) -> None:
    texml = parse_texml(f'<Response><Connect><Stream url="ws://h/ws" {attrs}/></Connect></Response>')
    assert texml.stream.encoding == encoding


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<Response><Say>Hello</Say><Hangup/></Response>", "no <Connect><Stream>"),
        ("<Response><Connect/></Response>", "no <Connect><Stream>"),
        ("<Response/>", "has nothing"),
        ('<Response><Stream url="ws://h/ws"/></Response>', "inside <Connect> or <Start>"),
        ('<Other><Connect><Stream url="ws://h/ws"/></Connect></Other>', "root element must be <Response>"),
        ("<Response><Connect><Stream/></Connect></Response>", "no url"),
        ('<Response><Connect><Stream url="https://h/ws"/></Connect></Response>', "ws:// or wss://"),
        (
            '<Response><Connect><Stream url="ws://h/ws"><Parameter value="x"/></Stream></Connect></Response>',
            "no name",
        ),
        (
            '<Response><Connect><Stream url="ws://h/ws" bidirectionalSamplingRate="fast"/></Connect></Response>',
            "not an integer",
        ),
    ],
)
def test_invalid_texml_is_a_clear_value_error(xml: str, message: str) -> None:
    with pytest.raises(TeXMLError, match=message) as info:
        parse_texml(xml)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "xml",
    [
        # Internal entity (the start of a billion-laughs document).
        '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]><Response><Say>&a;</Say></Response>',
        # External entity (would read a local file).
        '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><Response><Say>&x;</Say></Response>',
        # A bare DOCTYPE with an external DTD.
        '<!DOCTYPE Response SYSTEM "http://127.0.0.1:9/evil.dtd"><Response/>',
    ],
)
def test_doctype_and_entities_are_rejected(xml: str) -> None:
    with pytest.raises(TeXMLError, match="DOCTYPE"):
        parse_texml(xml)


def test_malformed_and_oversized_xml() -> None:
    with pytest.raises(TeXMLSyntaxError, match="not well-formed"):
        parse_texml("<Response><Connect></Response>")
    with pytest.raises(TeXMLError, match="bytes"):
        parse_texml("<Response>" + " " * MAX_TEXML_BYTES + "</Response>")


# --------------------------------------------------------------------------- fetching


BOT_TEXML = (
    '<Response><Connect><Stream url="{ws}/ws" bidirectionalMode="rtp" bidirectionalCodec="PCMU">'
    '<Parameter name="campaign_id" value="c-1"/></Stream></Connect></Response>'
)


class TeXMLServer:
    """A bot server (canned bot on ``/ws``) plus TeXML routes that record each request."""

    def __init__(self) -> None:
        config = CannedBotConfig(reply=tone(0.3), greeting=tone(0.4, freq=300))
        self.app, self.calls = create_canned_bot_app(config)
        self.requests: list[dict[str, Any]] = []
        self.server = BackgroundServer(self.app)

        @self.app.api_route("/texml", methods=["GET", "POST"])
        async def texml(request: Request) -> Response:
            body = (await request.body()).decode()
            self.requests.append(
                {
                    "method": request.method,
                    "content_type": request.headers.get("content-type", ""),
                    "form": {k: v[0] for k, v in parse_qs(body).items()},
                    "query": dict(request.query_params),
                }
            )
            return Response(BOT_TEXML.format(ws=self.server.ws_url), media_type="application/xml")

        @self.app.post("/broken")
        async def broken() -> Response:
            return Response("upstream exploded", status_code=503)

        @self.app.post("/html")
        async def html() -> Response:
            return Response("<html><body>hi", media_type="text/html")


@pytest.fixture
def texml_server() -> Iterator[TeXMLServer]:
    srv = TeXMLServer()
    with srv.server:
        yield srv


async def test_fetch_texml_posts_telnyx_form_fields(texml_server: TeXMLServer) -> None:
    texml = await fetch_texml(
        texml_server.server.base_url + "/texml",
        call_sid="v3:abc",
        account_sid="acct-1",
        from_number="+15550001111",
        to_number="+15550002222",
        connection_id="conn-9",
    )
    assert texml.stream.url == texml_server.server.ws_url + "/ws"
    assert texml.custom_parameters == {"campaign_id": "c-1"}
    [req] = texml_server.requests
    assert req["method"] == "POST"
    assert req["content_type"].startswith("application/x-www-form-urlencoded")
    assert req["form"] == {
        "AccountSid": "acct-1",
        "CallSid": "v3:abc",
        "CallSidLegacy": "v3:abc",
        "From": "+15550001111",
        "To": "+15550002222",
        "CallStatus": "in-progress",
        "Direction": "inbound",
        "ApiVersion": TEXML_API_VERSION,
        "ConnectionId": "conn-9",
    }


async def test_fetch_texml_get_sends_query_parameters(texml_server: TeXMLServer) -> None:
    await fetch_texml(
        texml_server.server.base_url + "/texml",
        call_sid="v3:def",
        account_sid="acct-2",
        from_number="+1",
        to_number="+2",
        call_status="ringing",
        method="GET",
    )
    [req] = texml_server.requests
    assert req["method"] == "GET" and req["form"] == {}
    assert req["query"]["CallSid"] == "v3:def"
    assert req["query"]["CallStatus"] == "ringing"
    assert req["query"]["From"] == "+1" and req["query"]["To"] == "+2"


async def test_fetch_texml_errors_are_clear(texml_server: TeXMLServer) -> None:
    base = texml_server.server.base_url
    with pytest.raises(TeXMLFetchError, match="HTTP 503") as info:
        await fetch_texml(base + "/broken")
    assert info.value.status_code == 503 and "upstream exploded" in str(info.value)
    with pytest.raises(TeXMLFetchError, match=r"did not return XML \(text/html"):
        await fetch_texml(base + "/html")
    with pytest.raises(TeXMLFetchError, match="HTTP 404"):
        await fetch_texml(base + "/missing")
    with pytest.raises(TeXMLFetchError, match="failed"):
        await fetch_texml("http://127.0.0.1:9/texml", timeout=2.0)  # nothing listens on port 9
    with pytest.raises(ValueError, match="GET or POST"):
        await fetch_texml(base + "/texml", method="PUT")


async def test_place_texml_call_dials_into_the_bot(texml_server: TeXMLServer) -> None:
    instructions, caller = await place_texml_call(
        texml_server.server.base_url + "/texml",
        from_number="+15557770000",
        to_number="+15558880000",
        account_sid="acct-3",
        max_call_secs=10.0,
    )
    assert caller.url == instructions.stream.url
    assert caller.encoding == "PCMU" and caller.rate == 8000
    assert caller.custom_parameters == {"campaign_id": "c-1"}
    form = texml_server.requests[0]["form"]
    assert form["CallSid"] == caller.call_control_id and caller.call_control_id.startswith("v3:")
    assert form["CallStatus"] == "ringing" and form["Direction"] == "inbound"

    result = await asyncio.wait_for(caller.run([], hang_up_after_secs=0.3), 10)
    deadline = time.monotonic() + 5
    while not (texml_server.calls and texml_server.calls[0].finished.is_set()):
        assert time.monotonic() < deadline, "bot call did not finish"
        await asyncio.sleep(0.02)
    call_data = texml_server.calls[0].call_data
    assert call_data["custom_parameters"] == {"campaign_id": "c-1"}
    assert call_data["call_control_id"] == caller.call_control_id
    assert call_data["from"] == "+15557770000" and call_data["to"] == "+15558880000"
    assert result.greeting_heard_at is not None  # the bot's greeting reached the caller
