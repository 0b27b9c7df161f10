"""The LLM interface: conversation context, context aggregators, streaming, function calls.

Pipecat users know the shape::

    context = LLMContext(messages=[{"role": "system", "content": prompt}], tools=tools)
    aggregators = LLMContextAggregatorPair(context)
    Pipeline([transport.input(), stt, aggregators.user(), llm, tts, transport.output(),
              aggregators.assistant()])

The context and its frames live in :mod:`callpipe.services.llm_context`, the aggregators
in :mod:`callpipe.services.llm_aggregators`, the phone tools in
:mod:`callpipe.services.telephony_tools`; this module is their public import path.

A provider implements :meth:`LLMService.run_llm`, an async iterator of text deltas and
tool calls; the base class streams text downstream, runs tool handlers, appends the
results to the context and asks again, and cancels everything on interruption.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from callpipe.pipeline.frames import (
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from callpipe.pipeline.processor import FrameDirection, FrameProcessor
from callpipe.records import observer as records
from callpipe.services.llm_aggregators import (
    LLMAssistantAggregator,
    LLMAssistantAggregatorParams,
    LLMContextAggregatorPair,
    LLMUserAggregator,
    LLMUserAggregatorParams,
)
from callpipe.services.llm_context import (
    FunctionSchema,
    LLMContext,
    LLMContextFrame,
    LLMMessagesAppendFrame,
    LLMRunFrame,
    Message,
)
from callpipe.services.telephony_tools import TelephonyTools

logger = logging.getLogger("callpipe.services")


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


__all__ = [
    "FunctionCallParams",
    "FunctionSchema",
    "LLMAssistantAggregator",
    "LLMAssistantAggregatorParams",
    "LLMChunk",
    "LLMContext",
    "LLMContextAggregatorPair",
    "LLMContextFrame",
    "LLMMessagesAppendFrame",
    "LLMRunFrame",
    "LLMService",
    "LLMUserAggregator",
    "LLMUserAggregatorParams",
    "Message",
    "TelephonyTools",
    "ToolCall",
]
