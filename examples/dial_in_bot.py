"""Dial-in example: personalize by the caller's number, route by the number they dialled.

Run it with ``callpipe serve examples/dial_in_bot.py`` and point a Telnyx TeXML
application (or TeXML Bin, see ``callpipe texml``) at ``https://YOUR_HOST/texml`` (with
``TELNYX_PUBLIC_KEY`` set), or at ``https://YOUR_HOST/texml/<TEXML_PATH_SECRET>``.

* Routing: each of your Telnyx numbers is a different front desk (``LINES``); a number
  not listed gets the default office.
* Personalization: a small table stands in for your customer database (``CUSTOMERS``);
  a known caller is greeted by first name.
"""

from __future__ import annotations

import logging

from callpipe.runner import RunnerArguments
from callpipe.services.assistant import AssistantConfig, run_assistant
from callpipe.services.scripted import OfficeInfo

logger = logging.getLogger("examples.dial_in")

# Stand-in for a customer database: caller number -> first name.
CUSTOMERS = {
    "+15550001234": "Maria",
    "+15550004321": "Dev",
}

# One office per dialled number.
LINES = {
    "+15550009876": OfficeInfo(business="Bright Smile Dental", assistant_name="Ava"),
    "+15550005555": OfficeInfo(
        business="Bright Smile Dental, Downtown",
        assistant_name="Sam",
        address="7 Harbor Road in Springfield, across from the library",
        saturday_hours="Saturdays from 10 AM to 2 PM",
    ),
}
DEFAULT_LINE = OfficeInfo()


def office_for(dialled: str) -> OfficeInfo:
    """The office that answers ``dialled`` (with the customer table attached)."""
    base = LINES.get(dialled, DEFAULT_LINE)
    return OfficeInfo(**{**base.__dict__, "callers": dict(CUSTOMERS)})


async def bot(runner_args: RunnerArguments) -> None:
    """Answer an incoming call as the office of the dialled number."""
    call = runner_args.call_data
    office = office_for(call["to"])
    logger.info("call from %s to %s (%s)", call["from"], call["to"], office.business)
    await run_assistant(runner_args, AssistantConfig(office=office))
