"""OpenAI chat completions (and any OpenAI-compatible server) as the pipeline's LLM.

::

    llm = OpenAILLMService(os.environ["OPENAI_API_KEY"], model="gpt-4o-mini")
    # Ollama, vLLM, Groq, ...: the same service with their base URL
    llm = OpenAILLMService("none", model="llama3.2", base_url="http://localhost:11434/v1")

It uses the official ``openai`` SDK (the ``openai`` extra: ``pip install 'callpipe[openai]'``)
and streams: text deltas go downstream as :class:`~callpipe.pipeline.frames.LLMTextFrame`
the moment they arrive, so speech synthesis can start on the first words. Tool calls
arrive in fragments (an id and a name, then the JSON arguments in pieces, keyed by the
call's ``index``); they are put back together and handed to the base class once the
stream has ended, which runs the registered handlers and asks the model again.

Failures (HTTP errors, a refused connection, a timeout, a stream cut mid-reply) are raised
as :class:`OpenAILLMError`, whose message names the server and the cause and never
contains the API key; the base class reports it upstream as a non-fatal error. An
interruption cancels the generation, and with it the HTTP stream is closed at once.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import ChoiceDelta, ChoiceDeltaToolCall

from callpipe.services.llm import LLMChunk, LLMContext, LLMService, ToolCall
from callpipe.services.settings import LLMSettings, pick

__all__ = ["DEFAULT_BASE_URL", "OpenAILLMError", "OpenAILLMService"]

logger = logging.getLogger("callpipe.services")

DEFAULT_BASE_URL = "https://api.openai.com/v1"

# Keys shorter than this are placeholders ("none" for a local server), not secrets; replacing
# every occurrence of such a short string would only garble the message.
_MIN_SECRET_LEN = 6


class OpenAILLMError(Exception):
    """A chat-completions request failed.

    ``status_code`` is the HTTP status (``None`` for transport failures and timeouts),
    ``code``/``error_type`` the ``code``/``type`` of the server's error object when it sent
    one, ``retryable`` whether trying again later may succeed.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        error_type: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.error_type = error_type
        self.retryable = retryable


@dataclass(slots=True)
class _PartialToolCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


def _merge_tool_fragments(
    calls: dict[int, _PartialToolCall], fragments: Iterable[ChoiceDeltaToolCall]
) -> None:
    """Fold one delta's tool-call fragments into the calls being assembled, by index."""
    for fragment in fragments:
        call = calls.setdefault(fragment.index, _PartialToolCall())
        if fragment.id and not call.id:
            call.id = fragment.id
        function = fragment.function
        if function is not None:
            if function.name and function.name != call.name:
                # OpenAI sends the whole name once; tolerate servers that split it (and
                # ones that repeat it).
                call.name += function.name
            if function.arguments:
                call.arguments += function.arguments


class OpenAILLMService(LLMService):
    """Streams replies from an OpenAI-compatible ``/chat/completions`` endpoint.

    ``base_url`` defaults to OpenAI's (``https://api.openai.com/v1``); for another
    server pass its OpenAI-compatible root, usually ending in ``/v1``. ``timeout`` (seconds)
    applies to connecting and to each wait for data, so a model that goes silent for that
    long mid-reply fails instead of hanging the call. ``max_retries`` is the SDK's: it
    retries connection failures, 408/409/429 and 5xx with backoff before the stream starts;
    once text has been streamed nothing is retried (the caller has heard it).

    Pipecat's shapes work too: ``settings=OpenAILLMService.Settings(system_instruction=...,
    model=...)`` (the instruction goes first in every request, as a system message), and
    with no ``api_key``/``base_url`` the service reads ``OPENAI_API_KEY``/``OPENAI_BASE_URL``.
    """

    Settings = LLMSettings

    def __init__(
        self,
        api_key: str | None = None,
        *,
        model: str | None = None,
        base_url: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
        max_tool_rounds: int = 4,
        settings: LLMSettings | None = None,
        name: str | None = None,
    ) -> None:
        # Pipecat's shapes: ``settings=OpenAILLMService.Settings(...)`` wins over keywords;
        # no key or URL given means OPENAI_API_KEY / OPENAI_BASE_URL, as the SDK does.
        settings = settings or LLMSettings()
        super().__init__(
            model=pick(settings.model, model, "gpt-4o-mini"), max_tool_rounds=max_tool_rounds, name=name
        )
        api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        if not api_key and base_url is None:
            raise ValueError(
                "api_key must not be empty (or set OPENAI_API_KEY; pass base_url for a server that needs none)"
            )
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        # A local server without authentication still gets a (meaningless) bearer token:
        # the SDK insists on one.
        self._api_key = api_key or "none"
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.temperature = pick(settings.temperature, temperature)
        self.max_tokens = pick(settings.max_tokens, max_tokens)
        self.system_instruction = settings.system_instruction
        self.timeout = timeout
        self.max_retries = max_retries
        self._client: AsyncOpenAI | None = None

    def __repr__(self) -> str:
        # Never show the key.
        return f"{self.name}(model={self.model!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------------ client

    @property
    def client(self) -> AsyncOpenAI:
        """The SDK client (created on first use, closed by :meth:`cleanup`)."""
        if self._client is None:
            self._client = AsyncOpenAI(
                api_key=self._api_key,
                base_url=self.base_url,
                timeout=self.timeout,
                max_retries=self.max_retries,
            )
        return self._client

    async def cleanup(self) -> None:
        """Cancel any reply in progress and close the HTTP connections."""
        await super().cleanup()
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # ---------------------------------------------------------------- requests

    def build_request(self, context: LLMContext) -> dict[str, Any]:
        """The chat-completions request body for ``context`` (without ``stream``)."""
        messages = list(context.messages)
        if self.system_instruction:
            messages.insert(0, {"role": "system", "content": self.system_instruction})
        request: dict[str, Any] = {"model": self.model, "messages": messages}
        if context.tools:
            request["tools"] = [schema.to_openai() for schema in context.tools]
        if self.temperature is not None:
            request["temperature"] = self.temperature
        if self.max_tokens is not None:
            request["max_tokens"] = self.max_tokens
        return request

    async def run_llm(self, context: LLMContext) -> AsyncIterator[LLMChunk]:
        """Stream one reply: text deltas as they arrive, then the assembled tool calls."""
        request = self.build_request(context)
        try:
            # (``**request`` keeps this independent of the SDK version's parameter types; the
            # annotation restores the typing of what comes back.)
            stream: AsyncStream[ChatCompletionChunk] = await self.client.chat.completions.create(
                **request, stream=True, stream_options={"include_usage": True}
            )
        except openai.APIError as exc:
            raise self._error(exc) from None
        calls: dict[int, _PartialToolCall] = {}
        finish_reason: str | None = None
        received = False  # any event yet (a timeout before the first is "no answer")
        try:
            async for chunk in stream:
                received = True
                usage = getattr(chunk, "usage", None)
                if usage is not None:
                    # The last chunk (``include_usage``) carries the request's token counts.
                    self.report_usage(int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0))
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue  # only one completion is asked for
                    if choice.finish_reason:
                        finish_reason = choice.finish_reason
                    # Typed as always present, but lenient servers may leave it out.
                    delta: ChoiceDelta | None = choice.delta
                    if delta is None:
                        continue
                    if delta.tool_calls:
                        _merge_tool_fragments(calls, delta.tool_calls)
                    if delta.content:
                        yield delta.content
        except openai.APIError as exc:
            raise self._error(exc, streaming=True, received=received) from None
        except Exception as exc:
            raise self._transport_error(exc, received=received) from None
        finally:
            # On interruption (CancelledError) too: close the HTTP stream now, which tells
            # the server to stop generating.
            await stream.close()
        if finish_reason in ("length", "content_filter"):
            logger.warning("%s: the reply stopped early (finish_reason=%s)", self.name, finish_reason)
        for index in sorted(calls):
            call = calls[index]
            if not call.name:
                logger.warning("%s: ignoring a tool call without a name (index %d)", self.name, index)
                continue
            yield ToolCall(
                id=call.id or f"call_{uuid.uuid4().hex[:24]}", name=call.name, arguments=call.arguments
            )

    # ------------------------------------------------------------------ errors

    def _transport_error(self, exc: Exception, *, received: bool) -> OpenAILLMError:
        """A transport failure mid-stream (older SDKs, before 2.x, let these out unwrapped)."""
        if isinstance(exc, httpx.TimeoutException | TimeoutError):
            what = "went silent mid-reply for" if received else "did not answer within"
            return OpenAILLMError(
                f"the LLM server at {self.base_url} {what} {self.timeout:g} s", retryable=True
            )
        return OpenAILLMError(
            f"the LLM server at {self.base_url} broke off the reply: {self._redact(_describe(exc))}",
            retryable=True,
        )

    def _redact(self, text: str) -> str:
        if len(self._api_key) >= _MIN_SECRET_LEN:
            text = text.replace(self._api_key, "***")
        return text

    def _error(
        self, exc: openai.APIError, *, streaming: bool = False, received: bool = False
    ) -> OpenAILLMError:
        """``streaming``: the response had started; ``received``: some of the reply had come."""
        where = f"the LLM server at {self.base_url}"
        if isinstance(exc, openai.APITimeoutError):
            what = "went silent mid-reply for" if received else "did not answer within"
            return OpenAILLMError(f"{where} {what} {self.timeout:g} s", retryable=True)
        if isinstance(exc, openai.APIConnectionError):
            head = f"{where} broke off the reply" if streaming else f"could not reach {where}"
            return OpenAILLMError(f"{head}: {self._redact(_describe(exc))}", retryable=True)
        detail, code, error_type = _error_fields(exc)
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            head = f"{where} answered HTTP {status}"
            if code or error_type:
                head += f" ({code or error_type})"
            hint = ""
            if status == 401:
                hint = " - check the API key"
            elif status == 404:
                hint = f" - check the model name ({self.model!r}) and the base URL"
            message = f"{head}: {detail}{hint}" if detail else f"{head}{hint}"
            return OpenAILLMError(
                self._redact(message),
                status_code=status,
                code=code,
                error_type=error_type,
                retryable=status in (408, 409, 429) or status >= 500,
            )
        # An error event inside the stream (no HTTP status).
        return OpenAILLMError(
            self._redact(f"{where} reported an error mid-reply: {detail or 'unknown error'}"),
            code=code,
            error_type=error_type,
            retryable=True,
        )


def _error_fields(exc: openai.APIError) -> tuple[str, str | None, str | None]:
    """``(message, code, type)`` from the server's error object, else the SDK's message."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            message = inner.get("message")
            code = inner.get("code")
            error_type = inner.get("type")
            return (
                str(message) if message else exc.message,
                None if code is None else str(code),
                None if error_type is None else str(error_type),
            )
    if isinstance(body, str) and body.strip():
        return body.strip()[:300], None, None
    return exc.message, None, None


def _describe(exc: BaseException) -> str:
    """The exception and its causes, one line: "Connection error (RemoteProtocolError: ...)"."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(parts) < 3:
        seen.add(id(current))
        text = str(current).strip()
        part = f"{type(current).__name__}: {text}" if text else type(current).__name__
        if part not in parts:  # wrappers often repeat their cause word for word
            parts.append(part)
        current = current.__cause__ or current.__context__
    return parts[0] + (f" ({'; '.join(parts[1:])})" if len(parts) > 1 else "")
