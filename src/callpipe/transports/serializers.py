"""Frame serializers: translate between pipeline frames and a provider's wire messages.

:class:`TelnyxFrameSerializer` speaks Telnyx Media Streaming. It keeps the Pipecat
constructor (``stream_id``, ``outbound_encoding``, ``inbound_encoding``,
``call_control_id``, ``api_key``, ``params``) and adds fast paths that the WebSocket
transport uses on every 20 ms frame (:meth:`TelnyxFrameSerializer.decode_media`,
:meth:`TelnyxFrameSerializer.encode_audio`). Telnyx's naming is from Telnyx's point of
view: ``outbound_encoding`` is what Telnyx sends *us* (the call's audio), while
``inbound_encoding`` is what we send back (it must match the TeXML
``bidirectionalCodec``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Literal

import msgspec

from callpipe.audio import Codec, StreamResampler, get_codec
from callpipe.pipeline.frames import (
    AudioRawFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InterruptionFrame,
    StartFrame,
    TransportMessageFrame,
)
from callpipe.telnyx import protocol
from callpipe.telnyx.api import TelnyxClient, TelnyxError

logger = logging.getLogger("callpipe.telnyx")

DEFAULT_API_BASE_URL = "https://api.telnyx.com/v2"

# A 20 ms media message is a few hundred bytes; one second of 16 kHz L16 is ~43 kB of
# base64. Anything far beyond that is refused before the JSON parser sees it.
MAX_MESSAGE_CHARS = 64 * 1024


class FrameSerializer:
    """Base class: ``serialize`` frames to wire messages, ``deserialize`` messages to frames."""

    async def setup(self, frame: StartFrame) -> None:
        """Learn the pipeline's sample rates from the :class:`StartFrame`."""

    async def serialize(self, frame: Frame) -> str | bytes | None:
        """The wire message for ``frame``, or ``None`` if it has none."""
        return None

    async def deserialize(self, data: str | bytes) -> Frame | None:
        """The frame for a wire message, or ``None`` if it carries none."""
        return None


@dataclass(slots=True, kw_only=True)
class TelnyxSerializerParams:
    """Options of :class:`TelnyxFrameSerializer` (Pipecat's ``InputParams``).

    ``auto_hang_up``: hang the call up through the REST API when the pipeline ends.
    ``None`` (the default) means "on when an API key and call_control_id are given".
    ``telnyx_sample_rate`` is the L16 rate when the ``start`` message does not say;
    ``inbound_sample_rate`` the L16 rate of the audio we send (the stream's
    ``bidirectionalSamplingRate``; default: ``telnyx_sample_rate``, else the call's rate);
    ``sample_rate`` overrides the pipeline's input rate.
    """

    telnyx_sample_rate: int | None = None
    inbound_sample_rate: int | None = None
    sample_rate: int | None = None
    inbound_encoding: str = "PCMU"
    outbound_encoding: str = "PCMU"
    auto_hang_up: bool | None = None
    l16_byteorder: Literal["big", "little"] = "big"
    api_base_url: str | None = None


class TelnyxFrameSerializer(FrameSerializer):
    """Converts pipeline frames to Telnyx media-stream messages and back, for one call."""

    InputParams = TelnyxSerializerParams

    def __init__(
        self,
        stream_id: str,
        outbound_encoding: str | None = None,
        inbound_encoding: str | None = None,
        call_control_id: str | None = None,
        api_key: str | None = None,
        params: TelnyxSerializerParams | None = None,
        *,
        api_client: TelnyxClient | None = None,
    ) -> None:
        self._params = params or TelnyxSerializerParams()
        self.stream_id = stream_id
        self.call_control_id = call_control_id
        self._api_key = api_key
        self._api_client = api_client
        self.outbound_encoding = (outbound_encoding or self._params.outbound_encoding).upper()
        self.inbound_encoding = (inbound_encoding or self._params.inbound_encoding).upper()
        # Validate both codecs now: an unsupported encoding is refused at construction,
        # not at the first media frame.
        # The two directions are independent: Telnyx may send PCMA and take PCMU, or send
        # PCMU at 8 kHz and take L16 at 16 kHz (``bidirectionalCodec``/``SamplingRate``).
        self._decoder = self._make_codec(self.outbound_encoding, self._params.telnyx_sample_rate)
        self._encoder = self._make_codec(
            self.inbound_encoding, self._params.inbound_sample_rate or self._params.telnyx_sample_rate
        )
        self.auto_hang_up = self._resolve_auto_hang_up()
        self._in_rate = self._decoder.sample_rate
        self._in_resampler = StreamResampler(self._decoder.sample_rate, self._decoder.sample_rate)
        self._out_resampler: StreamResampler | None = None
        self._hung_up = False
        self._hang_up_lock = asyncio.Lock()

    # ---------------------------------------------------------------- settings

    def _make_codec(self, encoding: str, rate: int | None) -> Codec:
        # Only L16 has a choice of rate; G.711 is 8 kHz and G.722 16 kHz whatever is said.
        return get_codec(
            encoding, rate if encoding == "L16" else None, l16_byteorder=self._params.l16_byteorder
        )

    def _resolve_auto_hang_up(self) -> bool:
        setting = self._params.auto_hang_up
        has_credentials = bool(self._api_key or self._api_client) and bool(self.call_control_id)
        if setting is True and not has_credentials:
            missing = "call_control_id" if not self.call_control_id else "api_key"
            raise ValueError(f"auto_hang_up=True needs an {missing} to hang the call up through Telnyx's API")
        if setting is None and not has_credentials:
            logger.warning(
                "TelnyxFrameSerializer: no API key or call_control_id, so the call will not be "
                "hung up when the pipeline ends (pass auto_hang_up=False to silence this)"
            )
            return False
        return bool(setting is None or setting)

    @property
    def wire_in_rate(self) -> int:
        """Sample rate of the audio Telnyx sends us."""
        return self._decoder.sample_rate

    @property
    def wire_out_rate(self) -> int:
        """Sample rate of the audio we send Telnyx."""
        return self._encoder.sample_rate

    @property
    def in_codec(self) -> Codec:
        """The codec of the audio Telnyx sends us."""
        return self._decoder

    @property
    def out_codec(self) -> Codec:
        """The codec of the audio we send (its ``payload_bytes(20)`` sizes a 20 ms chunk)."""
        return self._encoder

    @property
    def pipeline_in_rate(self) -> int:
        """The rate of the :class:`InputAudioRawFrame` audio this serializer produces."""
        return self._in_rate

    async def setup(self, frame: StartFrame) -> None:
        """Set the pipeline input rate (resampling from the call's rate if they differ)."""
        self.set_pipeline_in_rate(self._params.sample_rate or frame.audio_in_sample_rate)

    def use_call_sample_rate(self, rate: int | None, out_rate: int | None = None) -> None:
        """Adopt the call's L16 rates: ``rate`` from its ``start`` message, ``out_rate`` for ours.

        L16 runs at 8 or 16 kHz, and only the ``start`` message says at which rate Telnyx
        sends; the rate it takes back is the stream's ``bidirectionalSamplingRate``
        (``out_rate``, when the server knows it; else the call's own rate). The transport
        passes them here so a bot written from the guide (which never mentions rates)
        still speaks L16 at the right rate each way. Configured rates win.
        """
        order = self._params.l16_byteorder
        decoder = self._decoder
        if (
            rate
            and self._params.telnyx_sample_rate is None
            and decoder.name == "L16"
            and decoder.sample_rate != rate
        ):
            self._decoder = get_codec("L16", rate, l16_byteorder=order)
            self.set_pipeline_in_rate(self._in_rate)
        if self._params.inbound_sample_rate is not None or self._params.telnyx_sample_rate is not None:
            return
        target = out_rate or rate
        if target is not None and self._encoder.name == "L16" and self._encoder.sample_rate != target:
            self._encoder = get_codec("L16", target, l16_byteorder=order)
            self._out_resampler = None

    def set_pipeline_in_rate(self, rate: int) -> None:
        """Produce input audio at ``rate`` (creates the call's inbound resampler)."""
        self._in_rate = rate
        self._in_resampler = StreamResampler(self._decoder.sample_rate, rate)

    @property
    def max_payload_bytes(self) -> int:
        """The largest inbound payload accepted: one second of audio in the call's codec."""
        return self._decoder.payload_bytes(1000)

    # ------------------------------------------------------------- fast paths

    def parse(self, data: str | bytes) -> protocol.Event:
        """Parse one message (size-capped); raises :class:`~callpipe.telnyx.protocol.ProtocolError`."""
        return protocol.parse_event(data, max_length=MAX_MESSAGE_CHARS)

    def decode_media(self, payload: bytes) -> bytes:
        """Telnyx payload -> PCM16 at the pipeline input rate. ValueError if malformed."""
        return self._in_resampler.process(self._decoder.decode(payload))

    def encode_audio(self, pcm: bytes, sample_rate: int) -> bytes:
        """PCM16 at ``sample_rate`` -> payload bytes in the call's outbound encoding."""
        resampler = self._out_resampler
        if resampler is None or resampler.in_rate != sample_rate:
            # One resampler per call direction, kept across frames (no state resets).
            resampler = self._out_resampler = StreamResampler(sample_rate, self._encoder.sample_rate)
        return self._encoder.encode(resampler.process(pcm))

    def flush_output(self) -> bytes:
        """The outbound resampler's tail (its ~30 ms delay), encoded: call at the end of a reply."""
        if self._out_resampler is None or self._out_resampler.is_passthrough:
            return b""
        tail = self._out_resampler.flush()
        return self._encoder.encode(tail) if tail else b""

    def reset_output(self) -> None:
        """Forget audio inside the outbound resampler (after a barge-in clears the reply)."""
        if self._out_resampler is not None:
            self._out_resampler.reset()

    def input_frame(self, pcm: bytes) -> InputAudioRawFrame:
        """Wrap decoded caller audio in a frame at the pipeline input rate."""
        return InputAudioRawFrame(audio=pcm, sample_rate=self._in_rate)

    def encode_silence_bytes(self, size: int) -> bytes:
        """``size`` bytes of encoded silence in the outbound codec (pads a final chunk)."""
        codec = self._encoder
        samples = size * (codec.sample_rate // 50) // codec.payload_bytes(20)
        return codec.encode(bytes(2 * samples))[:size]

    # ----------------------------------------------------- Pipecat-style API

    async def serialize(self, frame: Frame) -> str | bytes | None:
        """Audio (any :class:`AudioRawFrame`) -> ``media`` (unpaced), interruption -> ``clear``; end/cancel hang up."""
        if isinstance(frame, AudioRawFrame):
            payload = self.encode_audio(frame.audio, frame.sample_rate)
            return protocol.build_media(payload) if payload else None
        if isinstance(frame, InterruptionFrame):
            return protocol.build_clear()
        if isinstance(frame, EndFrame | CancelFrame):
            if self.auto_hang_up:
                await self.hang_up()
            return None
        if isinstance(frame, TransportMessageFrame):
            return msgspec.json.encode(frame.message).decode()
        return None

    async def deserialize(self, data: str | bytes) -> Frame | None:
        """``media`` -> :class:`InputAudioRawFrame` (``None`` if undecodable), ``dtmf`` -> :class:`InputDTMFFrame`."""
        event = self.parse(data)
        if isinstance(event, protocol.MediaEvent):
            try:
                pcm = self.decode_media(event.payload)
            except ValueError as exc:
                # As Pipecat does: undecodable audio (odd-length L16) is dropped, not raised.
                logger.debug("dropped undecodable media: %s", exc)
                return None
            return InputAudioRawFrame(audio=pcm, sample_rate=self._in_rate)
        if isinstance(event, protocol.DTMFEvent):
            return InputDTMFFrame(button=event.digit)
        return None

    # ---------------------------------------------------------------- hang-up

    async def hang_up(self) -> None:
        """Hang the call up through Call Control, once; failures are logged, not raised.

        ``422`` with code ``90018`` (the call already ended) counts as done.
        """
        async with self._hang_up_lock:
            if self._hung_up or not self.call_control_id:
                return
            self._hung_up = True
            client = self._api_client
            own_client = client is None
            if client is None and not self._api_key:
                # TelnyxClient("") raises ValueError; this method must log, not raise.
                logger.error("hang-up of %s skipped: no API key", self.call_control_id)
                return
            if client is None:
                base_url = (
                    self._params.api_base_url or os.environ.get("TELNYX_API_BASE_URL") or DEFAULT_API_BASE_URL
                )
                client = TelnyxClient(self._api_key or "", base_url=base_url)
            try:
                hung_up = await client.hangup(self.call_control_id)
                logger.info(
                    "hang-up %s: %s", self.call_control_id, "done" if hung_up else "call had already ended"
                )
            except TelnyxError as exc:
                logger.error("hang-up of %s failed: %s", self.call_control_id, exc)
            finally:
                if own_client:
                    await client.aclose()
