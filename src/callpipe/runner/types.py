"""What a bot receives: :class:`RunnerArguments` and the parsed handshake, :class:`TelnyxCallData`.

Also Pipecat's import path ``pipecat.runner.types``. ``call_data`` is a ``dict`` (the keys
callpipe documents: ``stream_id``, ``call_control_id``, ``from``, ``to``, ...) that also
answers Pipecat's attributes (``call_data.from_number``, ``.to_number``, ``.call_id``,
``.stream_id``), so bots written either way work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket

from callpipe.records.observer import RecordFields

__all__ = ["CallData", "RunnerArguments", "TelnyxCallData", "WebSocketRunnerArguments"]

# Pipecat's attribute names for keys that are named differently on the wire.
_ALIASES = {"from_number": "from", "to_number": "to"}


class CallData(dict[str, Any]):
    """A parsed telephony handshake: dict keys as callpipe documents them, plus attributes.

    ``call_data.from_number``/``.to_number`` are the ``from``/``to`` keys; ``.call_id`` is
    Telnyx's ``call_control_id`` (Pipecat's provider-neutral name); ``.body`` the
    ``custom_parameters`` of the ``<Stream>``; any other key reads as an attribute too
    (``call_data.stream_id``). A missing key reads as ``None``, as in Pipecat.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # never pretend to have private or special attributes
            raise AttributeError(name)
        return self.get(_ALIASES.get(name, name))

    @property
    def call_id(self) -> str | None:
        """The call's id: Telnyx's ``call_control_id``."""
        value = self.get("call_id") or self.get("call_control_id")
        return str(value) if value is not None else None

    @property
    def body(self) -> dict[str, Any]:
        """The ``<Stream>``'s custom parameters (``{}`` if none)."""
        value = self.get("body", self.get("custom_parameters"))
        return dict(value) if isinstance(value, dict) else {}


class TelnyxCallData(CallData):
    """The Telnyx handshake (Pipecat's ``TelnyxCallData``; ``outbound_encoding`` is what Telnyx sends)."""

    __slots__ = ()


@dataclass(kw_only=True)
class RunnerArguments:
    """Everything a bot needs for one call.

    ``call_data`` is the parsed handshake (see :func:`~callpipe.runner.parse_telephony_websocket`;
    empty, and falsy, until parsed), ``body`` the dial-out request's body (``{}`` for
    dial-in), ``direction`` is ``"inbound"`` or ``"outbound"``. ``transport_type``,
    ``session_id``, ``handle_sigterm`` and ``cli_args`` are Pipecat's fields, kept so its
    bots and servers construct and read this class unchanged.
    """

    websocket: WebSocket
    call_data: TelnyxCallData = field(default_factory=TelnyxCallData)
    body: dict[str, Any] = field(default_factory=dict)
    direction: str = "inbound"
    handle_sigint: bool = False
    handle_sigterm: bool = False
    pipeline_idle_timeout_secs: float | None = 300.0
    transport_type: str | None = None
    session_id: str | None = None
    cli_args: Any = None
    # The bot's own fields in the call's record: ``runner_args.record.set(outcome="booked")``.
    record: RecordFields = field(default_factory=RecordFields)

    def __post_init__(self) -> None:
        # Callers may pass a plain dict (or None, as Pipecat's servers may for body).
        call_data: Any = self.call_data
        if not isinstance(call_data, TelnyxCallData):
            self.call_data = TelnyxCallData(call_data or {})
        body: Any = self.body
        if body is None:
            self.body = {}


# Pipecat's name for the same thing (its upstream servers build this one).
WebSocketRunnerArguments = RunnerArguments
