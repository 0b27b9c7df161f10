"""A bot's handle on its call's Telnyx-side actions: recording, noise suppression, warm transfer.

::

    call = TelnyxCall.of(runner_args)          # TELNYX_API_KEY / TELNYX_API_BASE_URL
    await call.record_start(format="mp3", channels="dual")
    await call.suppression_start(direction="inbound")
    result = await call.warm_transfer("+15550100", "Maria wants a refund for order 1234.")

Each action is noted in the call's record (an ``action`` event with its fields). The
server can also start recording and noise suppression at the start of every call
(``TELNYX_RECORDING``, ``TELNYX_NOISE_SUPPRESSION``: :func:`start_call_actions`).
Assumption: Call Control actions apply to TeXML calls too (their ``CallSid`` is the call
control id), as the cold transfer already relies on.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from callpipe.records import observer as records
from callpipe.records.observer import CallObserver
from callpipe.services.call_policy import TransferPolicy
from callpipe.services.warm_transfer import WarmTransferConfig, WarmTransferResult, warm_transfer
from callpipe.telnyx.api import DEFAULT_BASE_URL, TelnyxClient, TelnyxError

__all__ = ["TelnyxCall", "start_call_actions"]

logger = logging.getLogger("callpipe.services")


class TelnyxCall:
    """One call's Telnyx actions (``client`` defaults to one from the environment, closed by :meth:`aclose`)."""

    def __init__(self, call_control_id: str, client: TelnyxClient | None = None) -> None:
        if not call_control_id:
            raise ValueError("TelnyxCall needs the call's call_control_id")
        self.call_control_id = call_control_id
        self._own = client is None
        if client is None:
            key = os.environ.get("TELNYX_API_KEY", "")
            if not key:
                raise ValueError("TelnyxCall needs a client or TELNYX_API_KEY")
            client = TelnyxClient(key, base_url=os.environ.get("TELNYX_API_BASE_URL") or DEFAULT_BASE_URL)
        self.client = client

    @classmethod
    def of(cls, runner_args: Any, client: TelnyxClient | None = None) -> TelnyxCall:
        """For the call of ``runner_args`` (its ``call_data["call_control_id"]``)."""
        return cls(str(runner_args.call_data.get("call_control_id") or ""), client)

    async def __aenter__(self) -> TelnyxCall:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client if this object made it."""
        if self._own:
            await self.client.aclose()

    async def record_start(
        self, *, format: str = "wav", channels: str = "single", play_beep: bool | None = None
    ) -> None:
        """Start a Telnyx-side recording (``call.recording.saved`` brings its URLs)."""
        await self.client.record_start(
            self.call_control_id, format=format, channels=channels, play_beep=play_beep
        )
        _note("record_start", format=format, channels=channels, play_beep=play_beep)

    async def record_stop(self) -> None:
        """Stop the Telnyx-side recording."""
        await self.client.record_stop(self.call_control_id)
        _note("record_stop")

    async def suppression_start(self, *, direction: str = "inbound") -> None:
        """Start Telnyx's noise suppression (``inbound``: what the caller sends)."""
        await self.client.suppression_start(self.call_control_id, direction=direction)
        _note("suppression_start", direction=direction)

    async def suppression_stop(self) -> None:
        """Stop noise suppression."""
        await self.client.suppression_stop(self.call_control_id)
        _note("suppression_stop")

    async def warm_transfer(
        self,
        to: str,
        summary: str,
        *,
        config: WarmTransferConfig | None = None,
        policy: TransferPolicy | None = None,
    ) -> WarmTransferResult:
        """Warm-transfer this call (see :mod:`callpipe.services.warm_transfer`)."""
        return await warm_transfer(
            self.call_control_id, to, summary, client=self.client, config=config, policy=policy
        )


def _note(action: str, observer: CallObserver | None = None, **fields: Any) -> None:
    observer = observer or records.current()
    if observer is not None:
        observer.event("action", action, {k: v for k, v in fields.items() if v is not None})


async def start_call_actions(
    client: TelnyxClient,
    call_control_id: str,
    observer: CallObserver | None,
    *,
    recording: str = "off",
    recording_channels: str = "single",
    noise_suppression: str = "off",
) -> None:
    """The server's per-call opt-ins (``TELNYX_RECORDING``, ``TELNYX_NOISE_SUPPRESSION``).

    Failures are logged and noted in the record; they never affect the call.
    """
    steps: list[tuple[str, dict[str, Any]]] = []
    if recording != "off":
        steps.append(("record_start", {"format": recording, "channels": recording_channels}))
    if noise_suppression != "off":
        steps.append(("suppression_start", {"direction": noise_suppression}))
    for action, fields in steps:
        try:
            await getattr(client, action)(call_control_id, **fields)
        except (TelnyxError, ValueError) as exc:
            logger.warning("%s at call start failed: %s", action, exc)
            if observer is not None:
                observer.error(f"telnyx_{action}", str(exc))
            continue
        _note(action, observer, **fields)
