"""The built-in assistant on a speech-to-speech model (``ASSISTANT_MODE=realtime``).

Same prompt and tools as the STT -> LLM -> TTS assistant, one model instead of three:
``[transport.input(), OpenAIRealtimeService, transport.output()]`` with the call's μ-law
passed through both ways. ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` as for the LLM;
``OPENAI_REALTIME_MODEL`` (default ``gpt-realtime``) and ``OPENAI_REALTIME_VOICE``
(default ``marin``). ``REALTIME_TURN_DETECTION=local`` uses callpipe's Silero VAD instead
of the model's server VAD.

Outbound calls dialled with AMD run :class:`~callpipe.telephony.voicemail.VoicemailPolicy`
before the model with ``hold_audio``: the model hears nothing (so answers nothing) until
AMD says a person answered, then greets; a machine gets the voicemail message, said by the
model after the beep, and the call ends. Call screeners are not answered in this mode (the
caller's words are only known to the model).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from callpipe.pipeline.pipeline import Pipeline
from callpipe.pipeline.processor import FrameProcessor
from callpipe.pipeline.task import PipelineParams, PipelineRunner, PipelineTask
from callpipe.runner import RunnerArguments, create_telnyx_transport
from callpipe.services.llm import LLMRunFrame, Message, TelephonyTools
from callpipe.services.openai_realtime import DEFAULT_MODEL, OpenAIRealtimeService
from callpipe.telephony.voicemail import VoicemailPolicy

if TYPE_CHECKING:
    from callpipe.services.assistant import AssistantConfig

__all__ = ["ASSISTANT_MODES", "assistant_mode", "run_realtime_assistant"]

logger = logging.getLogger("callpipe.assistant")

ASSISTANT_MODES = ("pipeline", "realtime")


def assistant_mode() -> str:
    """``ASSISTANT_MODE``: ``pipeline`` (STT + LLM + TTS, the default) or ``realtime``."""
    mode = (os.environ.get("ASSISTANT_MODE") or "pipeline").strip().lower()
    if mode not in ASSISTANT_MODES:
        raise ValueError(f"ASSISTANT_MODE must be one of {', '.join(ASSISTANT_MODES)}, not {mode!r}")
    return mode


async def run_realtime_assistant(
    runner_args: RunnerArguments,
    config: AssistantConfig,
    caller_name: str,
    *,
    client: Any,
    log_message: Callable[[Message], None],
    on_message: Callable[[Message], None] | None = None,
    extra_processors: list[FrameProcessor] | None = None,
) -> None:
    """Run one call on the realtime model (``run_assistant`` calls this in realtime mode)."""
    local = os.environ.get("REALTIME_TURN_DETECTION", "").strip().lower() == "local"
    transport = create_telnyx_transport(runner_args, vad=local, audio_in_passthrough=True)
    office = config.office
    greeting = f"Hello, this is {office.assistant_name} at {office.business}. How can I help?"
    if caller_name:
        greeting = (
            f"Hello {caller_name}, this is {office.assistant_name} at {office.business}. How can I help?"
        )
    # Dialled with AMD: the policy holds the greeting (and the callee's audio) until it knows who answered.
    policy = VoicemailPolicy.for_call(
        runner_args, greeting=LLMRunFrame(), message=config.voicemail_text(caller_name), hold_audio=True
    )
    model = os.environ.get("OPENAI_REALTIME_MODEL") or DEFAULT_MODEL
    realtime = OpenAIRealtimeService(
        os.environ.get("OPENAI_API_KEY") or "none",
        model=model,
        voice=os.environ.get("OPENAI_REALTIME_VOICE") or "marin",
        instructions=config.system_prompt(caller_name),
        tools=TelephonyTools.schemas(),
        turn_detection="local" if local else "server_vad",
        greeting=greeting,
        greet_on_connect=not policy.config.mode,
    )
    logger.info("speech-to-speech: OpenAI Realtime %s at %s", model, realtime.base_url)
    TelephonyTools(call_control_id=runner_args.call_data.get("call_control_id"), client=client).register(
        realtime
    )
    realtime.context.on_message(log_message)
    if on_message is not None:
        realtime.context.on_message(on_message)
    task = PipelineTask(
        Pipeline(
            [
                transport.input(),
                *([policy] if policy.config.mode else []),
                realtime,
                transport.output(),
                *(extra_processors or []),
            ]
        ),
        params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
        idle_timeout_secs=config.idle_timeout_secs,
    )
    await PipelineRunner().run(task)
