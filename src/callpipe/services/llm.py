"""The LLM interface: conversation context, context aggregators, streaming, function calls.

Pipecat users know the shape::

    context = LLMContext(messages=[{"role": "system", "content": prompt}], tools=tools)
    aggregators = LLMContextAggregatorPair(context)
    Pipeline([transport.input(), stt, aggregators.user(), llm, tts, transport.output(),
              aggregators.assistant()])

The user aggregator turns a finished user turn (VAD stop *and* a final transcript, or a
timeout so a lost transcript never hangs the call; or a key press) into a user message and
asks the LLM for a reply. The assistant aggregator sits *after* the output transport: it
only sees the words the caller actually heard (the output releases them as their audio
plays), so after a barge-in the context holds what was said, not what was planned.

A provider implements :meth:`LLMService.run_llm`, an async iterator of text deltas and
tool calls; the base class streams text downstream, runs tool handlers, appends the
results to the context and asks again, and cancels everything on interruption.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from callpipe import metrics
from callpipe.pipeline.frames import (
    BotInterruptionFrame,
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    DataFrame,
    EndFrame,
    Frame,
    InputDTMFFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TranscriptionFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from callpipe.pipeline.processor import FrameDirection, FrameProcessor
from callpipe.records import observer as records
from callpipe.services.call_policy import PolicyError, TransferPolicy, check_dtmf
from callpipe.services.context_window import trim_messages
from callpipe.services.warm_transfer import keep_call_up

if TYPE_CHECKING:
    from callpipe.audio.vad import SileroVADAnalyzer

logger = logging.getLogger("callpipe.services")

Message = dict[str, Any]


# ------------------------------------------------------------------------ context


@dataclass
class FunctionSchema:
    """A tool the LLM may call: name, description and JSON-schema parameters."""

    name: str
    description: str
    properties: dict[str, Any] = field(default_factory=dict)
    required: list[str] = field(default_factory=list)

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": {"type": "object", "properties": self.properties, "required": self.required},
            },
        }


class LLMContext:
    """The conversation: OpenAI-style messages plus the tools on offer.

    Bounded: past ``max_messages`` messages or ``max_chars`` characters the oldest
    non-system turns are dropped (logged, counted as ``llm_context_trimmed``); ``None``
    turns a limit off.
    """

    def __init__(
        self,
        messages: list[Message] | None = None,
        tools: list[FunctionSchema] | None = None,
        *,
        max_messages: int | None = 200,
        max_chars: int | None = 60_000,
    ) -> None:
        self.messages: list[Message] = list(messages or [])
        self.tools: list[FunctionSchema] = list(tools or [])
        self.max_messages = max_messages
        self.max_chars = max_chars
        self.trimmed = 0
        self._listeners: list[Callable[[Message], None]] = []

    def add_message(self, message: Message) -> None:
        """Append one message (trimming the oldest turns if over the limits; tell the listeners)."""
        self.messages.append(message)
        removed = trim_messages(self.messages, max_messages=self.max_messages, max_chars=self.max_chars)
        if removed:
            if not self.trimmed:
                logger.warning(
                    "the conversation is over its limits (%s messages, %s characters): "
                    "dropping the oldest turns",
                    self.max_messages,
                    self.max_chars,
                )
            self.trimmed += removed
            metrics.REGISTRY.error("llm_context_trimmed")
        for listener in self._listeners:
            try:
                listener(message)
            except Exception:
                logger.exception("context listener failed")

    def on_message(self, listener: Callable[[Message], None]) -> None:
        """Call ``listener(message)`` for every message added from now on (transcripts, logs)."""
        self._listeners.append(listener)

    def get_messages(self) -> list[Message]:
        """The messages (the list itself)."""
        return self.messages


@dataclass(slots=True, kw_only=True)
class LLMContextFrame(DataFrame):
    """Ask the LLM to reply to ``context``."""

    context: LLMContext


@dataclass(slots=True, kw_only=True)
class LLMMessagesAppendFrame(DataFrame):
    """Append messages to the context, and by default run the LLM (e.g. the greeting)."""

    messages: list[Message]
    run_llm: bool = True


@dataclass(slots=True)
class LLMRunFrame(DataFrame):
    """Run the LLM on the context as it is (e.g. to greet when the call connects)."""


# ---------------------------------------------------------------------- aggregators


@dataclass(kw_only=True)
class LLMUserAggregatorParams:
    """Pipecat's user-aggregator parameters (the fields callpipe uses).

    ``vad_analyzer``: the VAD that ends the caller's turns, as Pipecat >= 1.0 places it;
    callpipe runs it in the input transport (see :mod:`callpipe.pipeline.vad_placement`).
    ``user_turn_stop_timeout``: how long after the VAD's stop a missing final transcript
    is waited for (callpipe's ``transcript_timeout_secs``; Pipecat's default is 5 s, a
    phone call's is shorter).
    """

    vad_analyzer: SileroVADAnalyzer | None = None
    user_turn_stop_timeout: float = 1.5


@dataclass(kw_only=True)
class LLMAssistantAggregatorParams:
    """Pipecat's assistant-aggregator parameters (accepted; the assistant aggregator needs none)."""


class LLMUserAggregator(FrameProcessor):
    """Collects the caller's turn and asks the LLM to answer it.

    The turn ends when the VAD says the caller stopped *and* a final transcript has
    arrived; if the transcript does not come within ``transcript_timeout_secs`` after
    the stop, whatever has arrived is used (or the turn is dropped if nothing has).
    """

    # It needs a VAD's speaking frames to end turns (see callpipe.pipeline.vad_placement).
    needs_vad = True

    def __init__(
        self,
        context: LLMContext,
        *,
        transcript_timeout_secs: float = 1.5,
        vad_analyzer: SileroVADAnalyzer | None = None,
    ) -> None:
        super().__init__()
        self.context = context
        self.transcript_timeout_secs = transcript_timeout_secs
        self.vad_analyzer = vad_analyzer
        self._parts: list[str] = []
        self._interim = ""
        self._user_speaking = False
        self._bot_speaking = False
        self._interrupt_requested = False
        self._waiting_since: float | None = None
        self._timeout: asyncio.TimerHandle | None = None
        # Set once an EndFrame has passed: the call is ending (the bot said goodbye and
        # hangs up when it has played), so what the caller still says gets no new reply.
        self._ending = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Aggregate transcripts; commit the turn at its end."""
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame):
            await self._maybe_interrupt(" ".join([*self._parts, frame.text]))
            if frame.text.strip():
                self._parts.append(frame.text.strip())
            self._interim = ""
            if not self._user_speaking and self._waiting_since is not None:
                await self._commit()
            return
        if isinstance(frame, InterimTranscriptionFrame):
            self._interim = frame.text.strip()
            await self._maybe_interrupt(self._interim)
            return
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking, self._interrupt_requested = True, False
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
        if isinstance(frame, UserStartedSpeakingFrame):
            self._user_speaking = True
            self._cancel_timeout()
            self._waiting_since = None
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._user_speaking = False
            self._waiting_since = time.monotonic()
            if self._parts:
                # A streaming STT may already have delivered the final words.
                await self.push_frame(frame, direction)
                await self._commit()
                return
            self._arm_timeout()
        elif isinstance(frame, InputDTMFFrame):
            await self.push_frame(frame, direction)
            self.context.add_message(
                {"role": "user", "content": f"(The caller pressed the {frame.button} key.)"}
            )
            await self.push_frame(LLMContextFrame(context=self.context))
            return
        elif isinstance(frame, LLMMessagesAppendFrame):
            for message in frame.messages:
                self.context.add_message(message)
            if frame.run_llm:
                await self.push_frame(LLMContextFrame(context=self.context))
            return
        elif isinstance(frame, LLMRunFrame):
            await self.push_frame(LLMContextFrame(context=self.context))
            return
        elif isinstance(frame, EndFrame | CancelFrame):
            self._ending = True
            self._cancel_timeout()
        await self.push_frame(frame, direction)

    async def _maybe_interrupt(self, text: str) -> None:
        """With ``interruption_min_words``: interrupt the bot once the caller said that many words."""
        needed = self._interruption_min_words
        if (
            needed <= 0
            or not self._bot_speaking
            or self._interrupt_requested
            or not self.interruptions_allowed
        ):
            return
        if len(text.split()) >= needed:
            self._interrupt_requested = True
            await self.push_frame(BotInterruptionFrame(), FrameDirection.UPSTREAM)

    def _arm_timeout(self) -> None:
        self._cancel_timeout()
        loop = asyncio.get_running_loop()
        self._timeout = loop.call_later(self.transcript_timeout_secs, self._on_timeout)

    def _cancel_timeout(self) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None

    def _on_timeout(self) -> None:
        self._timeout = None
        if self._waiting_since is not None and not self._user_speaking:
            logger.info("no final transcript %.1fs after the turn ended", self.transcript_timeout_secs)
            self.create_task(self._commit(use_interim=True), "commit-after-timeout")

    async def _commit(self, *, use_interim: bool = False) -> None:
        self._cancel_timeout()
        self._waiting_since = None
        text = " ".join(self._parts).strip()
        if not text and use_interim:
            text = self._interim  # the STT never finalised: its last guess beats nothing
        self._parts.clear()
        self._interim = ""
        if not text:
            return
        self.context.add_message({"role": "user", "content": text})
        if self._ending:
            logger.info("the call is ending: the caller's last turn gets no reply")
            return
        await self.push_frame(LLMContextFrame(context=self.context))


class LLMAssistantAggregator(FrameProcessor):
    """After the output transport: records what the caller heard as the assistant's reply."""

    def __init__(self, context: LLMContext) -> None:
        super().__init__()
        self.context = context
        self._heard: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Collect heard text; commit at the end of the reply or on interruption."""
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSTextFrame):
            self._heard.append(frame.text)
        elif isinstance(frame, LLMFullResponseEndFrame | TTSStoppedFrame | EndFrame | CancelFrame):
            self._commit(interrupted=False)
        elif isinstance(frame, InterruptionFrame):
            self._commit(interrupted=True)
        await self.push_frame(frame, direction)

    def _commit(self, *, interrupted: bool) -> None:
        text = " ".join(part.strip() for part in self._heard if part.strip())
        self._heard.clear()
        if text:
            self.context.add_message({"role": "assistant", "content": text})
            if interrupted:
                logger.info("reply interrupted; the context keeps the %d words heard", len(text.split()))
                logger.debug("heard of the interrupted reply: %r", text)


class LLMContextAggregatorPair:
    """The two aggregators around an LLM, sharing one :class:`LLMContext`.

    As in Pipecat it unpacks, ``user, assistant = LLMContextAggregatorPair(context, ...)``,
    and ``.user()``/``.assistant()`` return the same two processors.
    """

    def __init__(
        self,
        context: LLMContext,
        *,
        user_params: LLMUserAggregatorParams | None = None,
        assistant_params: LLMAssistantAggregatorParams | None = None,
        transcript_timeout_secs: float | None = None,
    ) -> None:
        self.context = context
        params = user_params or LLMUserAggregatorParams()
        timeout = (
            transcript_timeout_secs if transcript_timeout_secs is not None else params.user_turn_stop_timeout
        )
        self._user = LLMUserAggregator(
            context, transcript_timeout_secs=timeout, vad_analyzer=params.vad_analyzer
        )
        self._assistant = LLMAssistantAggregator(context)

    def __iter__(self) -> Iterator[FrameProcessor]:
        """``user, assistant = pair``."""
        return iter((self._user, self._assistant))

    def user(self) -> LLMUserAggregator:
        """Goes after STT, before the LLM."""
        return self._user

    def assistant(self) -> LLMAssistantAggregator:
        """Goes after ``transport.output()``."""
        return self._assistant


# ------------------------------------------------------------------------ service


@dataclass(slots=True)
class ToolCall:
    """A tool call the model made: ``id``, ``name`` and JSON ``arguments``."""

    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class FunctionCallParams:
    """What a tool handler receives."""

    function_name: str
    tool_call_id: str
    arguments: dict[str, Any]
    llm: LLMService
    context: LLMContext
    run_llm: bool = True  # set False: do not ask the model again after this tool


FunctionHandler = Callable[[FunctionCallParams], Awaitable[Any]]
LLMChunk = str | ToolCall


class LLMService(FrameProcessor):
    """Base class: streams replies for :class:`LLMContextFrame`, runs tool calls.

    Subclasses implement :meth:`run_llm`. A handler's return value (JSON-able) becomes the
    tool result; the model is then asked again, up to ``max_tool_rounds`` times.
    """

    def __init__(self, *, model: str = "", max_tool_rounds: int = 4, name: str | None = None) -> None:
        super().__init__(name=name)
        self.model = model
        self.max_tool_rounds = max_tool_rounds
        #: While set (a warm transfer holds the caller), new turns start no reply.
        self.on_hold = False
        self._functions: dict[str, FunctionHandler] = {}
        self._generation: asyncio.Task[None] | None = None

    def register_function(self, name: str, handler: FunctionHandler) -> None:
        """Handle the model's calls to tool ``name`` with ``handler(params)``."""
        self._functions[name] = handler

    def run_llm(self, context: LLMContext) -> AsyncIterator[LLMChunk]:
        """Stream the model's reply: text deltas and tool calls (an async generator in subclasses)."""
        raise NotImplementedError

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Start a reply per context frame; cancel on interruption; finish before the end."""
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            if self.on_hold:
                # The caller is on hold (a warm transfer): their words stay in the context,
                # the bot does not answer until it is back with them.
                return
            await self.cancel_task(self._generation)
            self._generation = self.create_task(self._generate(frame.context), "generate")
            return
        if isinstance(frame, InterruptionFrame):
            await self.cancel_task(self._generation)
            self._generation = None
        elif isinstance(frame, EndFrame) and self._generation is not None and not self._generation.done():
            await asyncio.wait({self._generation})  # the goodbye is still being written
        await self.push_frame(frame, direction)

    async def _generate(self, context: LLMContext) -> None:
        await self.push_frame(LLMFullResponseStartFrame())
        try:
            for _ in range(self.max_tool_rounds + 1):
                calls = await self._stream_once(context)
                if not calls or not await self._run_tools(context, calls):
                    break
        except asyncio.CancelledError:
            # Interrupted: no end-of-reply, or the TTS would speak the leftover fragment.
            raise
        except Exception as exc:
            logger.exception("%s failed", self.name)
            await self.push_error(f"{self.name}: {exc}")
        await self.push_frame(LLMFullResponseEndFrame())

    async def _stream_once(self, context: LLMContext) -> list[ToolCall]:
        self.start_ttfb_metrics()
        first = True
        calls: list[ToolCall] = []
        async for chunk in self.run_llm(context):
            if first:
                first = False
                observer = records.current()
                if observer is not None:
                    observer.llm_first_token()
                await self.stop_ttfb_metrics(self.model)
            if isinstance(chunk, ToolCall):
                calls.append(chunk)
            elif chunk:
                await self.push_frame(LLMTextFrame(chunk))
        return calls

    async def _run_tools(self, context: LLMContext, calls: list[ToolCall]) -> bool:
        """Run the calls; True if the model should be asked again (no handler said otherwise)."""
        results: list[Any] = []
        params: list[FunctionCallParams] = []
        try:
            for call in calls:
                results.append(await self._run_tool(context, call, params))
        finally:
            # The model's tool request and a result for every call go into the context
            # together, with no await in between, also when the caller interrupts while a
            # tool runs: a tool call without its result makes every later request fail
            # (OpenAI answers 400), and nothing else (the aggregators) can slip in between.
            # Any text the model said first is not repeated here: the assistant aggregator
            # records it as the caller hears it.
            context.add_message(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments},
                        }
                        for c in calls
                    ],
                }
            )
            for i, call in enumerate(calls):
                result = results[i] if i < len(results) else {"error": "interrupted by the caller"}
                context.add_message(
                    {
                        "role": "tool",
                        "tool_call_id": call.id,
                        "content": json.dumps(result if result is not None else "ok"),
                    }
                )
        return all(p.run_llm for p in params)

    async def _run_tool(self, context: LLMContext, call: ToolCall, ran: list[FunctionCallParams]) -> Any:
        handler = self._functions.get(call.name)
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            arguments = {}
        if not isinstance(arguments, dict):
            arguments = {}
        if handler is None:
            return {"error": f"unknown function {call.name}"}
        try:
            params = FunctionCallParams(call.name, call.id, arguments, self, context)
            ran.append(params)
            result = await handler(params)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("tool %s failed", call.name)
            result = {"error": str(exc)}
        observer = records.current()
        if observer is not None:
            observer.tool_call(call.name, arguments, result)
        return result

    def report_usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Subclasses: the provider reported the tokens of one request (for the call's record)."""
        observer = records.current()
        if observer is not None:
            observer.llm_tokens(records.provider_name(self), prompt_tokens, completion_tokens)

    async def cleanup(self) -> None:
        """Cancel any reply in progress."""
        await self.cancel_task(self._generation)
        await super().cleanup()


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


__all__ = [
    "FunctionCallParams",
    "FunctionSchema",
    "LLMAssistantAggregator",
    "LLMAssistantAggregatorParams",
    "LLMContext",
    "LLMContextAggregatorPair",
    "LLMContextFrame",
    "LLMMessagesAppendFrame",
    "LLMRunFrame",
    "LLMService",
    "LLMUserAggregator",
    "LLMUserAggregatorParams",
    "TelephonyTools",
    "ToolCall",
]
