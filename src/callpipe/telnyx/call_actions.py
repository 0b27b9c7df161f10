"""Call Control actions beyond dial/hang-up/transfer: speak, playback, bridge, streaming,
recording and noise suppression.

A mixin of :class:`callpipe.telnyx.api.TelnyxClient`, which supplies :meth:`_action` (one
``POST /calls/{id}/actions/{name}`` with a stable ``command_id`` across retries, typed
errors). Field names and values are Telnyx's Call Control API reference's; each method
checks the enumerated values locally, so a typo fails before a request is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = [
    "RECORD_CHANNELS",
    "RECORD_FORMATS",
    "SUPPRESSION_DIRECTIONS",
    "ActionSender",
    "CallActions",
]

RECORD_FORMATS = ("wav", "mp3")
RECORD_CHANNELS = ("single", "dual")
SUPPRESSION_DIRECTIONS = ("inbound", "outbound", "both")
PLAYBACK_TARGET_LEGS = ("self", "opposite", "both")
PAYLOAD_TYPES = ("text", "ssml")

ClientState = str | bytes | Mapping[str, Any] | None


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


class ActionSender(Protocol):
    """What :class:`CallActions` needs from the class it is mixed into (``TelnyxClient``)."""

    async def _action(
        self,
        call_control_id: str,
        action: str,
        fields: dict[str, Any],
        *,
        client_state: ClientState = None,
        command_id: str | None = None,
    ) -> dict[str, Any]:
        """Send ``POST /calls/{call_control_id}/actions/{action}`` with ``fields``; return ``data``.

        ``None`` fields are left out; ``command_id`` defaults to a fresh one that every
        retry of this one command re-sends.
        """
        ...


class CallActions:
    """Speak, play, bridge, stop streaming, record and denoise a live call.

    A mixin: each method's ``self`` is an :class:`ActionSender`, so mypy checks that the
    class it is mixed into implements ``_action``.
    """

    async def speak(
        self: ActionSender,
        call_control_id: str,
        payload: str,
        *,
        voice: str = "female",
        language: str | None = "en-US",
        payload_type: str = "text",
        service_level: str | None = None,
        client_state: ClientState = None,
        command_id: str | None = None,
    ) -> dict[str, Any]:
        """Speak ``payload`` (text or SSML) into the call with Telnyx's TTS (``/actions/speak``).

        ``voice`` is ``"male"``/``"female"`` (then ``language`` matters) or a provider
        voice such as ``"Polly.Joanna"``; Telnyx answers with ``call.speak.started`` and
        ``call.speak.ended`` webhooks.
        """
        if not payload:
            raise ValueError("speak needs a payload")
        fields = {
            "payload": payload,
            "voice": voice,
            "language": language,
            "payload_type": _one_of("payload_type", payload_type, PAYLOAD_TYPES),
            "service_level": service_level,
        }
        return await self._action(
            call_control_id, "speak", fields, client_state=client_state, command_id=command_id
        )

    async def playback_start(
        self: ActionSender,
        call_control_id: str,
        *,
        audio_url: str | None = None,
        media_name: str | None = None,
        loop: int | str | None = None,
        overlay: bool | None = None,
        target_legs: str | None = None,
        client_state: ClientState = None,
        command_id: str | None = None,
    ) -> dict[str, Any]:
        """Play an audio file into the call (``/actions/playback_start``); ``loop="infinity"`` repeats it."""
        if (audio_url is None) == (media_name is None):
            raise ValueError("playback_start needs exactly one of audio_url or media_name")
        fields = {
            "audio_url": audio_url,
            "media_name": media_name,
            "loop": loop,
            "overlay": overlay,
            "target_legs": None
            if target_legs is None
            else _one_of("target_legs", target_legs, PLAYBACK_TARGET_LEGS),
        }
        return await self._action(
            call_control_id, "playback_start", fields, client_state=client_state, command_id=command_id
        )

    async def playback_stop(
        self: ActionSender, call_control_id: str, *, stop: str = "all", command_id: str | None = None
    ) -> dict[str, Any]:
        """Stop audio playback (``/actions/playback_stop``; ``stop`` is ``"all"`` or ``"current"``)."""
        fields = {"stop": _one_of("stop", stop, ("all", "current"))}
        return await self._action(call_control_id, "playback_stop", fields, command_id=command_id)

    async def bridge(
        self: ActionSender,
        call_control_id: str,
        other_call_control_id: str,
        *,
        park_after_unbridge: str | None = None,
        client_state: ClientState = None,
        command_id: str | None = None,
    ) -> dict[str, Any]:
        """Bridge this call with another live call (``/actions/bridge``); Telnyx sends
        ``call.bridged`` for both legs."""
        if not other_call_control_id:
            raise ValueError("bridge needs the other call's call_control_id")
        fields = {"call_control_id": other_call_control_id, "park_after_unbridge": park_after_unbridge}
        return await self._action(
            call_control_id, "bridge", fields, client_state=client_state, command_id=command_id
        )

    async def streaming_stop(
        self: ActionSender,
        call_control_id: str,
        *,
        stream_id: str | None = None,
        command_id: str | None = None,
    ) -> dict[str, Any]:
        """Stop the call's media stream (``/actions/streaming_stop``); the call itself stays up."""
        return await self._action(
            call_control_id, "streaming_stop", {"stream_id": stream_id}, command_id=command_id
        )

    async def record_start(
        self: ActionSender,
        call_control_id: str,
        *,
        format: str = "wav",
        channels: str = "single",
        play_beep: bool | None = None,
        max_length: int | None = None,
        client_state: ClientState = None,
        command_id: str | None = None,
    ) -> dict[str, Any]:
        """Start a Telnyx-side recording (``/actions/record_start``).

        ``format`` is ``"wav"`` or ``"mp3"``, ``channels`` ``"single"`` or ``"dual"``
        (one channel per leg); Telnyx sends ``call.recording.saved`` with the URLs.
        """
        fields = {
            "format": _one_of("format", format, RECORD_FORMATS),
            "channels": _one_of("channels", channels, RECORD_CHANNELS),
            "play_beep": play_beep,
            "max_length": max_length,
        }
        return await self._action(
            call_control_id, "record_start", fields, client_state=client_state, command_id=command_id
        )

    async def record_stop(
        self: ActionSender, call_control_id: str, *, command_id: str | None = None
    ) -> dict[str, Any]:
        """Stop the Telnyx-side recording (``/actions/record_stop``)."""
        return await self._action(call_control_id, "record_stop", {}, command_id=command_id)

    async def suppression_start(
        self: ActionSender, call_control_id: str, *, direction: str = "inbound", command_id: str | None = None
    ) -> dict[str, Any]:
        """Start Telnyx's noise suppression (``/actions/suppression_start``).

        ``direction``: ``"inbound"`` (what the caller sends), ``"outbound"`` or ``"both"``.
        """
        fields = {"direction": _one_of("direction", direction, SUPPRESSION_DIRECTIONS)}
        return await self._action(call_control_id, "suppression_start", fields, command_id=command_id)

    async def suppression_stop(
        self: ActionSender, call_control_id: str, *, command_id: str | None = None
    ) -> dict[str, Any]:
        """Stop noise suppression (``/actions/suppression_stop``)."""
        return await self._action(call_control_id, "suppression_stop", {}, command_id=command_id)
