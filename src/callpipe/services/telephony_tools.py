"""The tools every phone bot needs (``end_call``, ``transfer_call``, ``send_dtmf``).

Re-exported by :mod:`callpipe.services.llm`, the public import path.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from callpipe.pipeline.processor import FrameDirection
from callpipe.records import observer as records
from callpipe.services.call_policy import PolicyError, TransferPolicy, check_dtmf
from callpipe.services.llm_context import FunctionSchema
from callpipe.services.warm_transfer import keep_call_up

if TYPE_CHECKING:
    from collections.abc import Iterable

    from callpipe.services.llm import FunctionCallParams, LLMService

logger = logging.getLogger("callpipe.services")


class TelephonyTools:
    """The tools every phone bot needs: ``end_call``, ``transfer_call``, ``send_dtmf``.

    ``end_call`` asks the pipeline to end gracefully: the goodbye already streamed plays
    out, then the call is hung up (the serializer's auto hang-up). ``transfer_call`` and
    ``send_dtmf`` go through Telnyx's Call Control API for this call.

    Transfers go only to ``transfer_numbers`` (numbers the bot's code allows: exact E.164 or
    ``+prefix*``) and ``TRANSFER_ALLOWED_NUMBERS``; anything else is refused and the model
    is told so (see :mod:`callpipe.services.call_policy`). ``transfer_policy`` replaces both.
    """

    def __init__(
        self,
        *,
        call_control_id: str | None,
        client: Any | None,
        transfer_numbers: Iterable[str] = (),
        transfer_policy: TransferPolicy | None = None,
    ) -> None:
        self.call_control_id = call_control_id
        self.client = client
        self.transfer_policy = transfer_policy or TransferPolicy.from_env(transfer_numbers)

    @staticmethod
    def schemas() -> list[FunctionSchema]:
        """The three tools' schemas."""
        return [
            FunctionSchema("end_call", "Hang up once you have said goodbye.", {}, []),
            FunctionSchema(
                "transfer_call",
                "Transfer the caller to a person at another phone number.",
                {"to": {"type": "string", "description": "E.164 number, e.g. +15551234567"}},
                ["to"],
            ),
            FunctionSchema(
                "send_dtmf",
                "Press keys on the phone line (e.g. to navigate a phone menu).",
                {"digits": {"type": "string", "description": "digits, * or #"}},
                ["digits"],
            ),
        ]

    def register(self, llm: LLMService) -> None:
        """Register the handlers on ``llm``."""
        llm.register_function("end_call", self.end_call)
        llm.register_function("transfer_call", self.transfer_call)
        llm.register_function("send_dtmf", self.send_dtmf)

    async def end_call(self, params: FunctionCallParams) -> Any:
        """End the call after the goodbye."""
        from callpipe.pipeline.frames import EndTaskFrame

        await params.llm.push_frame(
            EndTaskFrame(reason="the assistant ended the call"), FrameDirection.UPSTREAM
        )
        return {"status": "ending"}

    async def transfer_call(self, params: FunctionCallParams) -> Any:
        """Transfer the call through Call Control, to an allowed number only."""
        to = str(params.arguments.get("to", ""))
        if self.client is None or not self.call_control_id:
            return {"error": "transfers are not available on this call"}
        try:
            to = self.transfer_policy.check(to)
        except PolicyError as exc:
            logger.warning("refused a transfer the model asked for: not an allowed number")
            return {"error": str(exc)}
        await self.client.transfer(self.call_control_id, to=to)
        # The caller is now the transferee's: the bot leaving (Telnyx stops the stream)
        # must neither hang the call up nor read as the caller hanging up.
        keep_call_up(self.call_control_id)
        observer = records.current()
        if observer is not None:
            observer.note_end("transferred", "bot")
        return {"status": "transferring", "to": to}

    async def send_dtmf(self, params: FunctionCallParams) -> Any:
        """Send key presses through Call Control (at most 32 keys of ``0-9 A-D * # w W``)."""
        digits = str(params.arguments.get("digits", ""))
        if self.client is None or not self.call_control_id:
            return {"error": "DTMF is not available on this call"}
        try:
            digits = check_dtmf(digits)
        except PolicyError as exc:
            return {"error": str(exc)}
        await self.client.send_dtmf(self.call_control_id, digits)
        return {"status": "sent", "digits": digits}


__all__ = ["TelephonyTools"]
