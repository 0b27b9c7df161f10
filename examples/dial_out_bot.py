"""Dial-out example: call a customer and greet them by the first name in the request body.

Run it with ``callpipe serve examples/dial_out_bot.py``, then place a call::

    callpipe dial +15551234567 --body '{"user": {"firstName": "Zoë", "appointment": "Thursday at 3 PM"}}'

The body travels (URL-safe base64) through Telnyx's TeXML call to ``/answer`` and on to
the stream, and arrives here as ``runner_args.body``.

With ``DIAL_MODE=call_control``, ``callpipe dial ... --amd premium`` also asks Telnyx for
answering machine detection: a voicemail box is left the message below after its beep,
and a call screener asking who is calling is told who we are (``VoicemailPolicy``, which
the built-in assistant runs for such calls).
"""

from __future__ import annotations

import logging

from callpipe.runner import RunnerArguments
from callpipe.services.assistant import AssistantConfig, run_assistant
from callpipe.services.scripted import OfficeInfo

logger = logging.getLogger("examples.dial_out")


async def bot(runner_args: RunnerArguments) -> None:
    """Greet the person we called by name; the rest is the built-in assistant."""
    user = runner_args.body.get("user", {})
    first_name = user.get("firstName", "") if isinstance(user, dict) else ""
    called = runner_args.call_data["to"]
    logger.info("outbound call to %s for %r", called, first_name)
    office = OfficeInfo(callers={called: first_name} if first_name else {})
    hello = f"Hi {first_name}" if first_name else "Hello"
    config = AssistantConfig(
        office=office,
        voicemail_message=f"{hello}, this is Ava from {office.business} about your appointment."
        " Please call us back. Goodbye.",
    )
    await run_assistant(runner_args, config)
