"""A fake OpenAI chat-completions API (FastAPI) that speaks the real wire format.

Tests point :class:`callpipe.services.openai.OpenAILLMService` (the official SDK) at it,
served by a real uvicorn (:class:`callpipe.server.background.BackgroundServer`), with
``base_url=server.base_url + "/v1"``, then inspect ``app.state.openai``
(:class:`FakeOpenAIState`): every request is recorded with its body and what happened to
its response (chunks sent, completed, client disconnected, connection dropped).

Implemented:

* ``POST /v1/chat/completions`` - ``stream: true`` answers ``text/event-stream`` with one
  ``data: {chat.completion.chunk}`` event per delta (the role first, text pieces, tool calls
  as an id + name fragment followed by argument fragments, a last chunk with the
  ``finish_reason``, a usage chunk if ``stream_options.include_usage``), then
  ``data: [DONE]``; without ``stream`` a plain ``chat.completion`` object.
* ``GET /v1/models``.
* Bearer authentication (``api_key=None`` accepts anything); errors carry OpenAI's
  ``{"error": {"message", "type", "param", "code"}}`` body and an ``x-request-id`` header.
* Request validation: a model, a non-empty ``messages`` list with known roles, ``tools`` of
  type ``function``, and every ``tool`` message answering a preceding assistant
  ``tool_calls`` id (OpenAI rejects a conversation that breaks this with a 400).

What the model "says" comes from a *responder*: ``responder(messages, tools)`` (sync or
async) returning a list of events, each a text piece (``str``, streamed as one delta) or a
:class:`FakeToolCall`. The default, :func:`echo_responder`, answers "You said: <the last
user message>." word by word. :func:`scripted_replies` plays fixed replies in order.

Faults (:meth:`FakeOpenAIState.fail`, :meth:`~FakeOpenAIState.drop_connection`,
:meth:`~FakeOpenAIState.stream_error`) and delays (``first_token_delay``,
``chunk_delay``) simulate a provider having a bad day.

Where OpenAI's documentation is silent, the behaviour chosen is marked "Assumption:".
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from callpipe.sim.fake_openai_script import (
    FakeToolCall,
    Responder,
    ScriptEvent,
    echo_responder,
    message_text,
    scripted_replies,
    words,
)
from callpipe.sim.fake_openai_wire import (
    completion_body,
    default_error,
    error_body,
    json_error,
    mask_key,
    request_id,
    sse,
    stream_chunks,
    validate_request,
)

__all__ = [
    "FakeOpenAIState",
    "FakeToolCall",
    "OpenAIFault",
    "RecordedChatRequest",
    "Responder",
    "ScriptEvent",
    "create_fake_openai_app",
    "echo_responder",
    "message_text",
    "scripted_replies",
    "words",
]

logger = logging.getLogger("callpipe.sim")

# ------------------------------------------------------------------------ records


@dataclass(slots=True)
class OpenAIFault:
    """An injected failure; see :meth:`FakeOpenAIState.fail` and friends.

    ``kind`` is ``"status"`` (an HTTP error instead of an answer), ``"drop"`` (the TCP
    connection is closed after ``after_chunks`` SSE events) or ``"stream_error"`` (an
    ``{"error": ...}`` event after ``after_chunks`` events, then the stream ends).
    """

    kind: str
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    after_chunks: int = 0
    times: int | None = 1
    hits: int = 0

    def live(self) -> bool:
        """Whether the fault still applies to another request."""
        return self.times is None or self.hits < self.times


@dataclass(slots=True)
class RecordedChatRequest:
    """One request as the fake saw it, and what became of its response."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float
    status_code: int | None = None
    stream: bool = False
    fault: OpenAIFault | None = None
    #: SSE events written (the ``[DONE]`` marker not counted).
    chunks_sent: int = 0
    #: The response was sent to its end.
    completed: bool = False
    #: The client went away before the response was complete (e.g. it was interrupted).
    disconnected: bool = False
    #: The fake cut the connection on purpose (a ``drop`` fault).
    dropped: bool = False

    @property
    def json(self) -> Any:
        """The request body (parsed JSON), an alias of ``body``."""
        return self.body

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The request's ``messages`` (empty if it had none)."""
        value = self.body.get("messages") if isinstance(self.body, dict) else None
        return list(value) if isinstance(value, list) else []

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The request's ``tools`` (empty if it had none)."""
        value = self.body.get("tools") if isinstance(self.body, dict) else None
        return list(value) if isinstance(value, list) else []


# -------------------------------------------------------------------------- state


class FakeOpenAIState:
    """Everything the fake remembers and every switch it has; thread-safe.

    ``responder`` produces the replies (swap it at any time). ``first_token_delay`` is
    waited before the first SSE event of every streamed reply (the headers go out at once,
    as OpenAI's do) and before a non-streamed answer; ``chunk_delay`` between events.
    """

    def __init__(
        self,
        api_key: str | None = "sk-test",
        *,
        responder: Responder | None = None,
        models: Sequence[str] | None = None,
        first_token_delay: float = 0.0,
        chunk_delay: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.responder: Responder = responder or echo_responder
        self.models = list(models) if models is not None else None
        self.first_token_delay = first_token_delay
        self.chunk_delay = chunk_delay
        self.requests: list[RecordedChatRequest] = []
        self.faults: list[OpenAIFault] = []
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ test API

    def fail(
        self,
        status: int = 500,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        times: int | None = 1,
    ) -> OpenAIFault:
        """Answer the next ``times`` requests (``None``: all) with HTTP ``status``.

        ``body`` defaults to OpenAI's error object for the status (a dict is sent as JSON,
        a ``str``/``bytes`` as is). For a fast retry of a 429 pass e.g.
        ``headers={"retry-after-ms": "10"}``, which the SDK honours.
        """
        return self._add(
            OpenAIFault("status", status=status, body=body, headers=dict(headers or {}), times=times)
        )

    def drop_connection(self, after_chunks: int = 2, *, times: int | None = 1) -> OpenAIFault:
        """Close the connection of the next ``times`` streams after ``after_chunks`` events."""
        return self._add(OpenAIFault("drop", after_chunks=after_chunks, times=times))

    def stream_error(
        self,
        after_chunks: int = 2,
        *,
        message: str = "The server had an error while processing your request.",
        times: int | None = 1,
    ) -> OpenAIFault:
        """Send an ``{"error": ...}`` event in the next ``times`` streams, then end them."""
        body = error_body(message, "server_error")
        return self._add(OpenAIFault("stream_error", body=body, after_chunks=after_chunks, times=times))

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        with self._lock:
            self.faults.clear()

    def reset(self) -> None:
        """Forget requests and faults (the responder and delays are kept)."""
        with self._lock:
            self.requests.clear()
            self.faults.clear()

    @property
    def last_request(self) -> RecordedChatRequest:
        """The most recent request (``IndexError`` if there was none)."""
        with self._lock:
            return self.requests[-1]

    def completions(self) -> list[RecordedChatRequest]:
        """The recorded ``POST /v1/chat/completions`` requests, oldest first."""
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # ------------------------------------------------------------------ internals

    def _add(self, fault: OpenAIFault) -> OpenAIFault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def _record(self, request: Request, body: Any) -> RecordedChatRequest:
        record = RecordedChatRequest(
            method=request.method,
            path=request.url.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            received_at=time.time(),
        )
        with self._lock:
            self.requests.append(record)
        return record

    def _take_fault(self, *kinds: str) -> OpenAIFault | None:
        with self._lock:
            for fault in self.faults:
                if fault.kind in kinds and fault.live():
                    fault.hits += 1
                    return fault
        return None

    def _authorized(self, request: Request) -> bool | None:
        """``True`` if allowed, ``False`` for a wrong key, ``None`` for no key at all."""
        if self.api_key is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return secrets.compare_digest(token.strip().encode(), self.api_key.encode())


class _EventStream(Response):
    """A ``text/event-stream`` response that paces its events and watches for the client leaving.

    Starlette's ``StreamingResponse`` cannot say whether the client disconnected (and, with
    ASGI 2.3, sends after a disconnect are silently dropped), so this waits on ``receive``
    for ``http.disconnect`` itself while it writes.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        state: FakeOpenAIState,
        record: RecordedChatRequest,
        events: list[bytes],
        fault: OpenAIFault | None,
        headers: Mapping[str, str],
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", **headers})
        self._state = state
        self._record = record
        self._events = events
        self._fault = fault

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        record, fault = self._record, self._fault
        left = asyncio.Event()
        finished = False

        async def watch() -> None:
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    if not finished:
                        left.set()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            for i, event in enumerate(self._events):
                delay = self._state.first_token_delay if i == 0 else self._state.chunk_delay
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(left.wait(), delay)
                if left.is_set():
                    return
                if fault is not None and fault.kind == "drop" and i == fault.after_chunks:
                    # Return without ending the body: the server closes the connection.
                    record.dropped = True
                    logger.info("fake OpenAI: dropping the connection after %d events", i)
                    return
                if fault is not None and fault.kind == "stream_error" and i == fault.after_chunks:
                    await send({"type": "http.response.body", "body": sse(fault.body), "more_body": True})
                    break
                await send({"type": "http.response.body", "body": event, "more_body": True})
                if event.startswith(b"data: [DONE]"):
                    break
                record.chunks_sent += 1
            finished = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            record.completed = True
        finally:
            watcher.cancel()
            if left.is_set():
                record.disconnected = True
                logger.info("fake OpenAI: the client disconnected after %d events", record.chunks_sent)


# ---------------------------------------------------------------------------- app


def _auth_error(state: FakeOpenAIState, request: Request) -> Response | None:
    """OpenAI's 401 for a missing or wrong API key, else ``None``."""
    allowed = state._authorized(request)
    if allowed:
        return None
    if allowed is None:
        body = error_body(
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
        )
    else:
        _, _, token = request.headers.get("authorization", "").partition(" ")
        body = error_body(
            f"Incorrect API key provided: {mask_key(token.strip())}. You can find your API key "
            "in your account settings.",
            "invalid_request_error",
            code="invalid_api_key",
        )
    return json_error(401, body)


async def _script_events(
    state: FakeOpenAIState, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
) -> list[ScriptEvent] | None:
    """What the responder says to this request (``None`` if it raised)."""
    try:
        result = state.responder(messages, tools)
        return list(await result if inspect.isawaitable(result) else result)
    except Exception:
        logger.exception("fake OpenAI: the responder failed")
        return None


async def _answer(
    state: FakeOpenAIState, request: Request, record: RecordedChatRequest, body: Any
) -> Response:
    """The response to one ``POST /v1/chat/completions``: an error, a completion or an event stream."""
    denied = _auth_error(state, request)
    if denied is not None:
        return denied
    invalid = validate_request(body, state.models)
    if invalid is not None:
        return invalid
    record.stream = bool(body.get("stream"))
    fault = state._take_fault("status")
    if fault is not None:
        record.fault = fault
        status = fault.status
        return json_error(
            status, fault.body if fault.body is not None else default_error(status), fault.headers
        )
    messages: list[dict[str, Any]] = body["messages"]
    events = await _script_events(state, messages, body.get("tools") or [])
    if events is None:
        return json_error(500, default_error(500))
    model = body["model"]
    completion_id = "chatcmpl-" + secrets.token_urlsafe(21)
    created = int(time.time())
    headers = {"x-request-id": request_id(), "openai-processing-ms": "1"}
    if not record.stream:
        if state.first_token_delay > 0:
            await asyncio.sleep(state.first_token_delay)
        return JSONResponse(completion_body(completion_id, created, model, messages, events), headers=headers)

    stream_fault = state._take_fault("drop", "stream_error")
    record.fault = stream_fault
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    wire = stream_chunks(completion_id, created, model, messages, events, include_usage=include_usage)
    return _EventStream(state, record, wire, stream_fault, headers)


def create_fake_openai_app(
    api_key: str | None = "sk-test",
    *,
    script: Responder | None = None,
    state: FakeOpenAIState | None = None,
    models: Sequence[str] | None = None,
) -> FastAPI:
    """Build the fake OpenAI API; its :class:`FakeOpenAIState` is ``app.state.openai``.

    ``script`` is the responder (default :func:`echo_responder`); ``models``, if given,
    the only model names accepted (others get OpenAI's 404 ``model_not_found``). Pass
    ``state`` to share one state object (the other arguments are then ignored).
    """
    st = state if state is not None else FakeOpenAIState(api_key, responder=script, models=models)
    app = FastAPI(title="callpipe fake OpenAI API", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.openai = st

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        st._record(request, None)
        denied = _auth_error(st, request)
        if denied is not None:
            return denied
        names = st.models if st.models is not None else ["gpt-4o-mini", "gpt-4o"]
        data = [
            {"id": n, "object": "model", "created": 1700000000, "owned_by": "callpipe-fake"} for n in names
        ]
        return JSONResponse({"object": "list", "data": data}, headers={"x-request-id": request_id()})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = st._record(request, body)
        response = await _answer(st, request, record, body)
        if record.status_code is None:
            record.status_code = response.status_code
        return response

    return app
