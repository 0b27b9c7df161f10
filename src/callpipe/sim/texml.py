"""TeXML for the simulator: parse a ``<Stream>`` document, fetch it like Telnyx, dial in.

Telnyx's media-streaming TeXML looks like::

    <Response>
      <Connect>
        <Stream url="wss://bot.example/ws" bidirectionalMode="rtp" bidirectionalCodec="PCMU">
          <Parameter name="campaign_id" value="c-1"/>
        </Stream>
      </Connect>
    </Response>

``<Connect><Stream>`` streams synchronously (the document continues once the stream
stops); ``<Start><Stream>`` streams in the background while the document continues.
``<Parameter>`` children reach the bot as ``start.custom_parameters``.

:func:`parse_texml` extracts that, :func:`fetch_texml` requests a TeXML URL with the
parameters Telnyx sends (``AccountSid``, ``CallSid``, ``From``, ``To``, ``CallStatus``, ...;
form-encoded for POST, query string for GET), and :func:`place_texml_call` turns a TeXML URL
into a ready :class:`~callpipe.sim.caller.SimulatedCaller` - how ``callpipe call <url>``
dials in. The simulator does not execute other verbs (``<Say>``, ``<Pause>``, ...); it only
records them in :attr:`TeXMLInstructions.verbs`.

The XML comes from the network, so it is parsed defensively: a document with a DOCTYPE
(and so any entity declaration) is rejected outright, external entities are never
resolved, and the size is capped.
"""

from __future__ import annotations

import secrets
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import urlencode, urlsplit
from xml.parsers import expat

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from callpipe.sim.caller import SimulatedCaller
from callpipe.telnyx.webhooks import sign_webhook

__all__ = [
    "DEFAULT_ACCOUNT_SID",
    "MAX_TEXML_BYTES",
    "TEXML_API_VERSION",
    "TeXMLError",
    "TeXMLFetchError",
    "TeXMLInstructions",
    "TeXMLStream",
    "TeXMLSyntaxError",
    "fetch_texml",
    "new_call_sid",
    "parse_texml",
    "place_texml_call",
    "texml_request_params",
]

#: Documents larger than this are refused (a TeXML answer is a few hundred bytes).
MAX_TEXML_BYTES = 256 * 1024

#: ``AccountSid`` sent when none is given.
DEFAULT_ACCOUNT_SID = "sim-account"

#: Telnyx sends ``ApiVersion`` in the Twilio-compatible format; this is the value it documents.
TEXML_API_VERSION = "2010-04-01"

# Where Telnyx documents defaults for <Stream> attributes they are applied here:
# track=inbound_track, bidirectionalMode=mp3, bidirectionalCodec=PCMU (rtp only).
_DEFAULT_TRACK = "inbound_track"
_DEFAULT_BIDIRECTIONAL_MODE = "mp3"
_DEFAULT_CODEC = "PCMU"
_STREAM_PARENTS = ("Connect", "Start")


class TeXMLError(ValueError):
    """The TeXML is malformed, unsafe, or has no ``<Stream>`` to connect to."""


class TeXMLSyntaxError(TeXMLError):
    """The document is not well-formed XML at all."""


class TeXMLFetchError(RuntimeError):
    """Fetching TeXML failed: transport error, non-2xx status, or a body that is not XML."""

    def __init__(self, message: str, *, url: str, status_code: int | None = None) -> None:
        self.url = url
        self.status_code = status_code
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class TeXMLStream:
    """A ``<Stream>`` noun: where to connect and how. ``attributes`` keeps every raw attribute."""

    url: str
    track: str = _DEFAULT_TRACK
    name: str | None = None
    codec: str | None = None
    bidirectional_mode: str = _DEFAULT_BIDIRECTIONAL_MODE
    bidirectional_codec: str | None = None
    bidirectional_sampling_rate: int | None = None
    status_callback: str | None = None
    status_callback_method: str = "POST"
    parameters: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def encoding(self) -> str:
        """The codec the simulated call uses both ways.

        ``bidirectionalCodec`` if given, else ``codec`` unless it is ``default``, else PCMU.
        Assumption: with ``bidirectionalMode="mp3"`` a real call would take MP3 back from
        the bot; the simulator only speaks RTP codecs, so it uses the same codec both ways.
        """
        if self.bidirectional_codec:
            return self.bidirectional_codec
        if self.codec and self.codec.lower() != "default":
            return self.codec
        return _DEFAULT_CODEC

    @property
    def sample_rate(self) -> int | None:
        """``bidirectionalSamplingRate`` if given (``None``: the codec's own rate)."""
        return self.bidirectional_sampling_rate


@dataclass(frozen=True, slots=True)
class TeXMLInstructions:
    """What a TeXML document asks for, as far as media streaming is concerned.

    ``mode`` is ``"connect"`` (``<Connect><Stream>``) or ``"start"`` (``<Start><Stream>``).
    ``verbs`` lists the top-level verbs in document order (e.g. ``("Connect", "Hangup")``);
    ``verbs_after_stream`` those after the one holding the stream.
    """

    stream: TeXMLStream
    mode: str
    verbs: tuple[str, ...]
    verbs_after_stream: tuple[str, ...]
    xml: str = field(repr=False, default="")

    @property
    def custom_parameters(self) -> dict[str, str]:
        """The ``<Parameter>`` values, as the bot sees them in ``start.custom_parameters``."""
        return dict(self.stream.parameters)


# --------------------------------------------------------------------------- parsing


def _reject(what: str) -> NoReturn:
    raise TeXMLError(f"TeXML must not contain {what}")


def _safe_parse(xml: str | bytes) -> ET.Element:
    """Parse with expat directly so DOCTYPEs and entities can be refused before they act."""
    data = xml.encode("utf-8") if isinstance(xml, str) else bytes(xml)
    if len(data) > MAX_TEXML_BYTES:
        raise TeXMLError(f"TeXML is {len(data)} bytes, more than the {MAX_TEXML_BYTES} allowed")
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def doctype(*_: Any) -> None:
        _reject("a DOCTYPE (entity declarations are not allowed)")

    def entity(*_: Any) -> None:
        _reject("entity declarations")

    def external(*_: Any) -> int:
        _reject("external entities")

    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = entity
    parser.UnparsedEntityDeclHandler = entity
    parser.ExternalEntityRefHandler = external
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise TeXMLSyntaxError(f"TeXML is not well-formed XML: {exc}") from None
    return builder.close()


def _rate(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        rate = int(value.strip())
    except ValueError:
        raise TeXMLError(f"<Stream bidirectionalSamplingRate={value!r}> is not an integer") from None
    if rate <= 0:
        raise TeXMLError(f"<Stream bidirectionalSamplingRate={value!r}> must be positive")
    return rate


def _parse_stream(element: ET.Element) -> TeXMLStream:
    attrs = dict(element.attrib)
    url = (attrs.get("url") or "").strip()
    if not url:
        raise TeXMLError("<Stream> has no url attribute")
    if urlsplit(url).scheme.lower() not in ("ws", "wss"):
        raise TeXMLError(f"<Stream url={url!r}> must be a ws:// or wss:// URL")
    parameters: dict[str, str] = {}
    for child in element:
        if child.tag != "Parameter":
            continue
        name = child.attrib.get("name")
        if not name:
            raise TeXMLError("<Parameter> inside <Stream> has no name attribute")
        # Assumption: a repeated name keeps the last value (Telnyx does not say).
        parameters[name] = child.attrib.get("value", "")
    return TeXMLStream(
        url=url,
        track=attrs.get("track") or _DEFAULT_TRACK,
        name=attrs.get("name"),
        codec=attrs.get("codec"),
        bidirectional_mode=attrs.get("bidirectionalMode") or _DEFAULT_BIDIRECTIONAL_MODE,
        bidirectional_codec=attrs.get("bidirectionalCodec") or None,
        bidirectional_sampling_rate=_rate(attrs.get("bidirectionalSamplingRate")),
        status_callback=attrs.get("statusCallback") or None,
        status_callback_method=(attrs.get("statusCallbackMethod") or "POST").upper(),
        parameters=parameters,
        attributes=attrs,
    )


def parse_texml(xml: str | bytes) -> TeXMLInstructions:
    """Extract the ``<Connect><Stream>`` / ``<Start><Stream>`` of a TeXML document.

    Raises :class:`TeXMLError` (a ``ValueError``) for XML that is malformed, has a DOCTYPE or
    entities, is not a ``<Response>``, or has no ``<Stream>``. The first stream wins.
    """
    root = _safe_parse(xml)
    if root.tag != "Response":
        raise TeXMLError(f"TeXML root element must be <Response>, not <{root.tag}>")
    verbs = tuple(child.tag for child in root)
    for index, verb in enumerate(root):
        if verb.tag == "Stream":
            raise TeXMLError("<Stream> must be inside <Connect> or <Start>, not directly in <Response>")
        if verb.tag not in _STREAM_PARENTS:
            continue
        stream = verb.find("Stream")
        if stream is None:
            continue
        return TeXMLInstructions(
            stream=_parse_stream(stream),
            mode=verb.tag.lower(),
            verbs=verbs,
            verbs_after_stream=verbs[index + 1 :],
            xml=xml if isinstance(xml, str) else xml.decode("utf-8", "replace"),
        )
    listed = ", ".join(f"<{v}>" for v in verbs) or "nothing"
    raise TeXMLError(f"TeXML has no <Connect><Stream> or <Start><Stream> (it has {listed})")


# --------------------------------------------------------------------------- fetching


def texml_request_params(
    *,
    call_sid: str,
    account_sid: str,
    from_number: str,
    to_number: str,
    direction: str = "inbound",
    call_status: str = "in-progress",
    connection_id: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The parameters Telnyx sends when it fetches TeXML for a call.

    Telnyx documents ``AccountSid``, ``CallSid``, ``CallSidLegacy``, ``From``, ``To``,
    ``ConnectionId``, ``ApiVersion`` and ``CallStatus`` as always present. Assumption:
    ``Direction`` is sent too, Twilio-style (``inbound`` or ``outbound-api``).
    """
    params = {
        "AccountSid": account_sid,
        "CallSid": call_sid,
        "CallSidLegacy": call_sid,
        "From": from_number,
        "To": to_number,
        "CallStatus": call_status,
        "Direction": direction,
        "ApiVersion": TEXML_API_VERSION,
    }
    if connection_id is not None:
        params["ConnectionId"] = connection_id
    if extra:
        params.update(extra)
    return params


async def fetch_texml(
    url: str,
    *,
    call_sid: str | None = None,
    account_sid: str = DEFAULT_ACCOUNT_SID,
    from_number: str = "+15550001111",
    to_number: str = "+15550002222",
    direction: str = "inbound",
    call_status: str = "in-progress",
    connection_id: str | None = None,
    extra_params: Mapping[str, str] | None = None,
    http: httpx.AsyncClient | None = None,
    method: str = "POST",
    timeout: float = 10.0,
    signing_key: str | bytes | Ed25519PrivateKey | None = None,
) -> TeXMLInstructions:
    """Request TeXML from ``url`` as Telnyx does and parse it (see :func:`parse_texml`).

    ``method="POST"`` sends the parameters form-encoded in the body, ``"GET"`` as the query
    string (Telnyx's two documented formats). Without ``call_sid`` a fresh one is made up
    (``v3:...``, like Telnyx's). Raises :class:`TeXMLFetchError` on transport
    errors, a non-2xx status or a body that is not XML, :class:`TeXMLError` for XML that
    has no stream. With ``signing_key`` the request is signed as Telnyx signs TeXML requests
    (``telnyx-signature-ed25519`` over ``timestamp|body``; a GET signs the empty body).
    """
    verb = method.upper()
    if verb not in ("GET", "POST"):
        raise ValueError(f"method must be GET or POST, not {method!r}")
    params = texml_request_params(
        call_sid=call_sid or new_call_sid(),
        account_sid=account_sid,
        from_number=from_number,
        to_number=to_number,
        direction=direction,
        call_status=call_status,
        connection_id=connection_id,
        extra=extra_params,
    )
    form = urlencode(params).encode() if verb == "POST" else b""
    headers = _request_headers(verb, form, signing_key)
    client = http if http is not None else httpx.AsyncClient(follow_redirects=True)
    try:
        if verb == "POST":
            response = await client.post(url, content=form, headers=headers, timeout=timeout)
        else:
            response = await client.get(url, params=params, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        detail = str(exc) or type(exc).__name__
        raise TeXMLFetchError(f"fetching TeXML from {url} failed: {detail}", url=url) from exc
    finally:
        if http is None:
            await client.aclose()
    return _parse_response(url, response)


def _request_headers(
    verb: str, form: bytes, signing_key: str | bytes | Ed25519PrivateKey | None
) -> dict[str, str]:
    """The headers of a TeXML fetch: what it accepts, its form body, Telnyx's signature."""
    # Assumption: Telnyx asks for XML and follows redirects (the docs do not say).
    headers = {"Accept": "application/xml, text/xml", "User-Agent": "callpipe-sim (TeXML)"}
    if verb == "POST":
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if signing_key is not None:
        headers.update(sign_webhook(form, signing_key))
    return headers


def _parse_response(url: str, response: httpx.Response) -> TeXMLInstructions:
    """The TeXML in a fetch's response; :class:`TeXMLFetchError` if it is not a 2xx with XML."""
    body = response.content
    if not 200 <= response.status_code < 300:
        raise TeXMLFetchError(
            f"fetching TeXML from {url} returned HTTP {response.status_code}: {_excerpt(body)!r}",
            url=url,
            status_code=response.status_code,
        )
    try:
        return parse_texml(body)
    except TeXMLSyntaxError as exc:
        content_type = response.headers.get("content-type", "no content-type")
        raise TeXMLFetchError(
            f"TeXML URL {url} did not return XML ({content_type}): {_excerpt(body)!r}",
            url=url,
            status_code=response.status_code,
        ) from exc


def _excerpt(body: bytes, limit: int = 200) -> str:
    return body[:limit].decode("utf-8", "replace").strip()


# --------------------------------------------------------------------------- dialling in


def new_call_sid() -> str:
    """A made-up ``CallSid``: on Telnyx it is the call_control_id (``v3:`` + url-safe base64)."""
    return "v3:" + secrets.token_urlsafe(40)


async def place_texml_call(
    texml_url: str,
    *,
    from_number: str = "+15550001111",
    to_number: str = "+15550002222",
    account_sid: str = DEFAULT_ACCOUNT_SID,
    call_sid: str | None = None,
    connection_id: str | None = None,
    direction: str = "inbound",
    call_status: str = "ringing",
    method: str = "POST",
    http: httpx.AsyncClient | None = None,
    client_state: str | None = None,
    signing_key: str | bytes | Ed25519PrivateKey | None = None,
    call_codec: str | None = None,
    call_sample_rate: int | None = None,
    **caller_options: Any,
) -> tuple[TeXMLInstructions, SimulatedCaller]:
    """Fetch ``texml_url`` as Telnyx would for a call and build the caller its ``<Stream>`` asks for.

    The returned :class:`SimulatedCaller` connects to the stream's ``url`` with the call's
    ``CallSid`` as ``call_control_id``, the stream's codec (``bidirectionalCodec``, else
    ``codec``, else PCMU) and sampling rate, and the ``<Parameter>`` values as
    ``custom_parameters``; run it with ``await caller.run(turns)``. ``signing_key`` signs the fetch as
    Telnyx does (for servers that check ``TELNYX_PUBLIC_KEY``). ``call_codec``/``call_sample_rate``:
    the call's own codec (a PCMA call from Europe), which the caller then sends while it
    still expects the stream's codec back. ``caller_options`` go to
    :class:`SimulatedCaller` (e.g. ``max_call_secs``, ``auth_token``).

    Assumption: for an inbound call Telnyx fetches the TeXML while the call is still
    ringing, hence ``call_status="ringing"``.
    """
    sid = call_sid or new_call_sid()
    instructions = await fetch_texml(
        texml_url,
        call_sid=sid,
        account_sid=account_sid,
        from_number=from_number,
        to_number=to_number,
        direction=direction,
        call_status=call_status,
        connection_id=connection_id,
        http=http,
        method=method,
        signing_key=signing_key,
    )
    caller = _caller_for_stream(
        texml_url,
        instructions,
        call_sid=sid,
        from_number=from_number,
        to_number=to_number,
        client_state=client_state,
        call_codec=call_codec,
        call_sample_rate=call_sample_rate,
        caller_options=caller_options,
    )
    return instructions, caller


def _caller_for_stream(
    texml_url: str,
    instructions: TeXMLInstructions,
    *,
    call_sid: str,
    from_number: str,
    to_number: str,
    client_state: str | None,
    call_codec: str | None,
    call_sample_rate: int | None,
    caller_options: dict[str, Any],
) -> SimulatedCaller:
    """The caller the ``<Stream>`` asks for; :class:`TeXMLError` if it cannot be simulated."""
    stream = instructions.stream
    try:
        own: dict[str, Any] = (
            {"out_encoding": stream.encoding, "out_sample_rate": stream.sample_rate} if call_codec else {}
        )
        return SimulatedCaller(
            stream.url,
            encoding=call_codec or stream.encoding,
            sample_rate=call_sample_rate if call_codec else stream.sample_rate,
            **own,
            from_number=from_number,
            to_number=to_number,
            custom_parameters=instructions.custom_parameters,
            client_state=client_state,
            call_control_id=call_sid,
            **caller_options,
        )
    except ValueError as exc:
        raise TeXMLError(f"cannot simulate the <Stream> in {texml_url}: {exc}") from exc
