"""Speech-to-speech example: an OpenAI Realtime model answers the phone, μ-law end to end.

Run it with ``callpipe serve examples/realtime_bot.py`` (``OPENAI_API_KEY`` set), or
offline against the fake model::

    callpipe fake-realtime --port 8766 &
    OPENAI_API_KEY=sk-test OPENAI_BASE_URL=http://127.0.0.1:8766/v1 callpipe serve examples/realtime_bot.py

The pipeline is the guide's with one processor in the middle: the caller's PCMU payloads
go to the model untouched (``audio_in_passthrough``) and the model's μ-law goes back as it
is. The model's server VAD takes the turns; when the caller talks over the bot, Telnyx
gets ``clear`` at once and the model's memory is cut at what the caller heard. Tools: the
phone tools (hang up, allowlisted transfer, DTMF) and one of the bot's own.
"""

from __future__ import annotations

import os
from typing import Any

from callpipe.pipeline.pipeline import Pipeline
from callpipe.pipeline.task import PipelineParams, PipelineRunner, PipelineTask
from callpipe.runner import RunnerArguments, create_telnyx_transport
from callpipe.services.llm import FunctionCallParams, FunctionSchema, TelephonyTools
from callpipe.services.openai_realtime import OpenAIRealtimeService

PROMPT = (
    "You are Ava, the receptionist of Bright Smile Dental, on a phone call. Speak in short, "
    "natural sentences. To check an appointment, call check_appointment with the caller's name. "
    "When the caller is done, say goodbye and then call end_call."
)

CHECK_APPOINTMENT = FunctionSchema(
    "check_appointment",
    "Look up the caller's next appointment.",
    {"name": {"type": "string", "description": "the caller's full name"}},
    ["name"],
)


async def check_appointment(params: FunctionCallParams) -> Any:
    """Stand-in for your booking system."""
    return {"name": params.arguments.get("name", ""), "next": "Tuesday at 10 AM"}


async def bot(runner_args: RunnerArguments) -> None:
    """One call: transport in, the realtime model, transport out."""
    transport = create_telnyx_transport(runner_args, vad=False, audio_in_passthrough=True)
    realtime = OpenAIRealtimeService(
        os.environ.get("OPENAI_API_KEY"),
        instructions=PROMPT,
        tools=[*TelephonyTools.schemas(), CHECK_APPOINTMENT],
        greeting="Hello, this is Ava at Bright Smile Dental. How can I help?",
    )
    client = None
    if os.environ.get("TELNYX_API_KEY"):
        from callpipe.telnyx.api import TelnyxClient

        base_url = os.environ.get("TELNYX_API_BASE_URL") or "https://api.telnyx.com/v2"
        client = TelnyxClient(os.environ["TELNYX_API_KEY"], base_url=base_url)
    TelephonyTools(call_control_id=runner_args.call_data.get("call_control_id"), client=client).register(
        realtime
    )
    realtime.register_function("check_appointment", check_appointment)
    task = PipelineTask(
        Pipeline([transport.input(), realtime, transport.output()]),
        params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
    )
    try:
        await PipelineRunner().run(task)
    finally:
        if client is not None:
            await client.aclose()
