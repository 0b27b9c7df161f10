"""The built-in assistant: what ``callpipe serve`` runs when no bot file is given.

Each service is the real provider when its key is set, the embedded offline default
otherwise (and the choice is logged):

* STT: Deepgram (``DEEPGRAM_API_KEY``) or faster-whisper tiny.en (offline)
* LLM: an OpenAI-compatible model (``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``) with the
  same prompt and tools, or the scripted receptionist (offline)
* TTS: Cartesia (``CARTESIA_API_KEY`` + ``CARTESIA_VOICE_ID``) or Piper (offline)

With ``ASSISTANT_MODE=realtime`` one speech-to-speech model (OpenAI Realtime) replaces all
three, with the same prompt and tools (:mod:`callpipe.services.assistant_realtime`).

The assistant is configured by :class:`AssistantConfig` (Python, or a JSON file named by
``CALLPIPE_ASSISTANT_CONFIG``): who it is, what the office knows, which callers it
recognizes by number, and turn-taking settings.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from callpipe.audio.vad import VADParams
from callpipe.pipeline.pipeline import Pipeline
from callpipe.pipeline.processor import FrameProcessor
from callpipe.pipeline.task import PipelineParams, PipelineRunner, PipelineTask
from callpipe.runner import RunnerArguments, create_telnyx_transport
from callpipe.services import warmup
from callpipe.services.llm import (
    LLMContext,
    LLMContextAggregatorPair,
    LLMRunFrame,
    LLMService,
    Message,
    TelephonyTools,
)
from callpipe.services.scripted import OfficeInfo, ScriptedLLMService
from callpipe.services.stt import STTService
from callpipe.services.tts import TTSService
from callpipe.telephony.voicemail import VoicemailPolicy

logger = logging.getLogger("callpipe.assistant")

SAMPLE_RATE = 8000  # the phone network's rate: no resampling on the way in or out


@dataclass(kw_only=True)
class AssistantConfig:
    """How the built-in assistant behaves."""

    office: OfficeInfo = field(default_factory=OfficeInfo)
    extra_instructions: str = ""
    vad_stop_secs: float = 0.3
    transcript_timeout_secs: float = 1.5
    idle_timeout_secs: float = 120.0
    # Outbound calls dialled with AMD (see callpipe.telephony.voicemail): what a voicemail
    # box is told, and what a call screener asking who is calling hears ("" = the default).
    voicemail_message: str = ""
    screening_line: str = ""

    @classmethod
    def from_file(cls, path: str | Path) -> AssistantConfig:
        """Load from JSON: ``{"office": {...OfficeInfo fields...}, "vad_stop_secs": 0.3, ...}``."""
        data = json.loads(Path(path).read_text())
        office = OfficeInfo(**data.pop("office", {}))
        return cls(office=office, **data)

    @classmethod
    def from_env(cls) -> AssistantConfig:
        """From ``CALLPIPE_ASSISTANT_CONFIG`` if set, else the defaults."""
        path = os.environ.get("CALLPIPE_ASSISTANT_CONFIG")
        return cls.from_file(path) if path else cls()

    def system_prompt(self, caller_name: str = "") -> str:
        """The prompt a real LLM gets (the scripted assistant follows the same brief)."""
        office = self.office
        known = f" The caller is {caller_name}, a patient; greet them by name." if caller_name else ""
        return (
            f"You are {office.assistant_name}, the receptionist of {office.business}, on a phone call."
            f" Speak in short, natural sentences; no lists or markdown. Opening hours: {office.weekday_hours};"
            f" {office.saturday_hours}; {office.sunday_hours}. Address: {office.address}."
            " You can book appointments: ask for the service, the day and the time, then confirm them."
            " When the caller is done, say goodbye and then call end_call."
            + known
            + " "
            + self.extra_instructions
        ).strip()

    def stt_prompt(self) -> str:
        """The vocabulary hint for the speech recognizer (what the call is about)."""
        return (
            f"A phone call to {self.office.business} about booking appointments, opening hours and the"
            " address, on Monday, Tuesday, Wednesday, Thursday, Friday or Saturday."
        )

    def voicemail_text(self, caller_name: str = "") -> str:
        """The message left on a voicemail box (``voicemail_message`` or one naming the office)."""
        if self.voicemail_message:
            return self.voicemail_message
        office, hello = self.office, f"Hi {caller_name}" if caller_name else "Hello"
        return (
            f"{hello}, this is {office.assistant_name} from {office.business}, calling about your"
            " appointment. Please call us back when it suits you. Goodbye."
        )

    def screening_text(self, caller_name: str = "") -> str:
        """What a call screener is told (``screening_line`` or one naming the office)."""
        if self.screening_line:
            return self.screening_line
        office, whom = self.office, caller_name or "the patient"
        return f"This is {office.assistant_name} from {office.business}, calling {whom} about an appointment."

    def to_json(self) -> str:
        """The configuration as JSON (the format :meth:`from_file` reads)."""
        return json.dumps(asdict(self), indent=2)


# ------------------------------------------------------------------ service choice


def choose_stt(prompt: str | None = None) -> STTService:
    """Deepgram with a key, else the embedded Whisper (biased by ``prompt``)."""
    key = os.environ.get("DEEPGRAM_API_KEY")
    if key:
        from callpipe.services.deepgram import DeepgramSTTService

        logger.info("STT: Deepgram")
        base_url = os.environ.get("DEEPGRAM_BASE_URL") or "wss://api.deepgram.com"
        return DeepgramSTTService(key, base_url=base_url, encoding="linear16", sample_rate=SAMPLE_RATE)
    from callpipe.services.whisper import WhisperSTTService, whisper_settings_from_env

    logger.info("STT: embedded Whisper tiny.en (CTranslate2)")
    return WhisperSTTService(prompt=prompt, **whisper_settings_from_env())


def choose_llm(config: AssistantConfig, caller_number: str, *, outbound: bool = False) -> LLMService:
    """An OpenAI-compatible model with a key or base URL, else the scripted receptionist."""
    key, base_url = os.environ.get("OPENAI_API_KEY"), os.environ.get("OPENAI_BASE_URL")
    if key or base_url:
        from callpipe.services.openai import OpenAILLMService

        model = os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
        logger.info("LLM: OpenAI-compatible %s at %s", model, base_url or "api.openai.com")
        return OpenAILLMService(key or "none", model=model, base_url=base_url)
    logger.info("LLM: scripted receptionist (offline)")
    return ScriptedLLMService(office=config.office, caller_number=caller_number, outbound=outbound)


def choose_tts() -> TTSService:
    """Cartesia with a key and voice, else the embedded Piper voice."""
    key, voice = os.environ.get("CARTESIA_API_KEY"), os.environ.get("CARTESIA_VOICE_ID")
    if key and voice:
        from callpipe.services.cartesia import CartesiaTTSService

        logger.info("TTS: Cartesia")
        base_url = os.environ.get("CARTESIA_BASE_URL") or "wss://api.cartesia.ai"
        return CartesiaTTSService(key, voice_id=voice, base_url=base_url, sample_rate=SAMPLE_RATE)
    from callpipe.services.piper import PiperTTSService

    logger.info("TTS: embedded Piper (en_US joe)")
    return PiperTTSService(sample_rate=SAMPLE_RATE)


def register_models() -> None:
    """Register the warm-up of the embedded models this assistant will use (by the keys set)."""
    import importlib

    from callpipe.services.assistant_realtime import assistant_mode

    if assistant_mode() == "realtime":
        return  # one remote model: nothing embedded to load but the VAD
    # Importing an embedded service's module registers its warm-up.
    if not os.environ.get("DEEPGRAM_API_KEY"):
        importlib.import_module("callpipe.services.whisper")
    if not (os.environ.get("CARTESIA_API_KEY") and os.environ.get("CARTESIA_VOICE_ID")):
        importlib.import_module("callpipe.services.piper")


def preload_models() -> None:
    """Load and run once every embedded model the assistant uses (blocking; demo, server start)."""
    register_models()
    warmup.warm_up_models()


# The assistant's providers are known only once the settings are read (at warm-up time).
warmup.register("assistant", register_models)


# ------------------------------------------------------------------------ the bot


def _telnyx_client() -> Any:
    key = os.environ.get("TELNYX_API_KEY")
    if not key:
        return None
    from callpipe.telnyx.api import TelnyxClient

    return TelnyxClient(key, base_url=os.environ.get("TELNYX_API_BASE_URL") or "https://api.telnyx.com/v2")


def _log_message(message: Message) -> None:
    # The conversation is personal data: it is kept in the call's record, and in the log
    # only at DEBUG (the call id is on every line). INFO says that a turn happened.
    role, content = message.get("role"), message.get("content")
    if role == "user":
        logger.info("caller turn (%d words)", len(str(content or "").split()))
        logger.debug("caller said: %s", content)
    elif role == "assistant" and content:
        logger.info("bot turn (%d words)", len(str(content).split()))
        logger.debug("bot said: %s", content)


async def run_assistant(
    runner_args: RunnerArguments,
    config: AssistantConfig | None = None,
    *,
    on_message: Callable[[Message], None] | None = None,
    extra_processors: list[FrameProcessor] | None = None,
) -> None:
    """Run the assistant for one call (``on_message`` sees every context message)."""
    config = config or AssistantConfig.from_env()
    caller_number, caller_name = _identify_caller(runner_args, config)

    from callpipe.services.assistant_realtime import assistant_mode, run_realtime_assistant

    if assistant_mode() == "realtime":
        client = _telnyx_client()
        call = run_realtime_assistant(
            runner_args,
            config,
            caller_name,
            client=client,
            log_message=_log_message,
            on_message=on_message,
            extra_processors=extra_processors,
        )
    else:
        task, client = _pipeline_task(
            runner_args,
            config,
            caller_number,
            caller_name,
            on_message=on_message,
            extra_processors=extra_processors,
        )
        call = PipelineRunner().run(task)
    try:
        await call
    finally:
        if client is not None:
            await client.aclose()


def _identify_caller(runner_args: RunnerArguments, config: AssistantConfig) -> tuple[str, str]:
    """The person's number and name (from the office's callers, or the dial's ``user.firstName``)."""
    call_data = runner_args.call_data
    caller_number = str(call_data.get("from", ""))
    if runner_args.direction == "outbound":
        # On dial-out the "caller" in the stream is us; the person is the dialled number.
        caller_number = str(call_data.get("to", ""))
    caller_name = config.office.callers.get(caller_number, "")
    first_name = (
        runner_args.body.get("user", {}).get("firstName") if isinstance(runner_args.body, dict) else None
    )
    if isinstance(first_name, str) and first_name:
        caller_name = first_name
        config.office.callers.setdefault(caller_number, first_name)
    return caller_number, caller_name


def _conversation(
    config: AssistantConfig, caller_name: str, on_message: Callable[[Message], None] | None
) -> LLMContext:
    """The LLM context: the system prompt, the phone tools, and who hears each message."""
    context = LLMContext(
        messages=[{"role": "system", "content": config.system_prompt(caller_name)}],
        tools=TelephonyTools.schemas(),
    )
    context.on_message(_log_message)
    if on_message is not None:
        context.on_message(on_message)
    return context


def _pipeline_task(
    runner_args: RunnerArguments,
    config: AssistantConfig,
    caller_number: str,
    caller_name: str,
    *,
    on_message: Callable[[Message], None] | None,
    extra_processors: list[FrameProcessor] | None,
) -> tuple[PipelineTask, Any]:
    """The call's STT -> LLM -> TTS pipeline task, and the Telnyx client its tools use (or None)."""
    transport = create_telnyx_transport(runner_args, vad_params=VADParams(stop_secs=config.vad_stop_secs))
    outbound = runner_args.direction == "outbound"
    stt, llm, tts = (
        choose_stt(config.stt_prompt()),
        choose_llm(config, caller_number, outbound=outbound),
        choose_tts(),
    )
    client = _telnyx_client()
    TelephonyTools(call_control_id=runner_args.call_data.get("call_control_id"), client=client).register(llm)
    aggregators = LLMContextAggregatorPair(
        _conversation(config, caller_name, on_message), transcript_timeout_secs=config.transcript_timeout_secs
    )
    # Dialled with AMD: the policy holds the greeting until it knows who answered.
    policy = VoicemailPolicy.for_call(
        runner_args,
        greeting=LLMRunFrame(),
        message=config.voicemail_text(caller_name),
        screening_line=config.screening_text(caller_name),
    )
    pipeline = Pipeline(
        [
            transport.input(),
            stt,
            *([policy] if policy.config.mode else []),
            aggregators.user(),
            llm,
            tts,
            transport.output(),
            aggregators.assistant(),
            *(extra_processors or []),
        ]
    )
    task = PipelineTask(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE, audio_out_sample_rate=SAMPLE_RATE),
        idle_timeout_secs=config.idle_timeout_secs,
    )

    if not policy.config.mode:

        @transport.event_handler("on_client_connected")
        async def greet(_transport: Any, _websocket: Any) -> None:
            await task.queue_frame(LLMRunFrame())

    return task, client


async def bot(runner_args: RunnerArguments) -> None:
    """The built-in assistant as a bot entry point (``callpipe serve`` without a file)."""
    await run_assistant(runner_args)
