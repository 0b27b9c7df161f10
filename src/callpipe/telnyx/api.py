"""Async client for the handful of Telnyx REST endpoints callpipe needs.

Why not the official ``telnyx`` SDK: it is a ~3.4 MB auto-generated package covering the
whole Telnyx API, with its own retry logic that generates a fresh request per attempt and
does not keep a stable ``command_id`` across retries. Call Control de-duplicates commands by
``command_id``, so a retried ``dial`` or ``hangup`` must carry the *same* id or a lost
response can turn into a second call. We need a dozen endpoints with uniform retries,
idempotency and typed errors, which is a small amount of code on top of ``httpx``.

Retry policy (see :class:`TelnyxClient`): transport errors, ``429`` and ``5xx`` are retried
with exponential backoff and jitter; other ``4xx`` are not. Commands that carry a
``command_id`` are safe to retry on any of those. The TeXML ``Calls`` endpoint has no
``command_id``, so for it only failures where the request provably never reached Telnyx
(connect errors, pool timeouts) and ``429`` (rejected before processing) are retried;
retrying a timed-out or ``5xx`` TeXML request could place a second call.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from callpipe import __version__
from callpipe.telnyx.bodies import action_path, drop_none, encode_client_state, merge_extra, sip_headers
from callpipe.telnyx.call_actions import CallActions, ClientState
from callpipe.telnyx.errors import (
    CALL_ALREADY_ENDED,
    TelnyxAPIError,
    TelnyxAuthError,
    TelnyxConnectionError,
    TelnyxError,
    TelnyxErrorDetail,
    TelnyxNotFoundError,
    TelnyxRateLimitError,
    TelnyxServerError,
    TelnyxValidationError,
    error_class,
    parse_retry_after,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "TelnyxAPIError",
    "TelnyxAuthError",
    "TelnyxClient",
    "TelnyxConnectionError",
    "TelnyxError",
    "TelnyxErrorDetail",
    "TelnyxNotFoundError",
    "TelnyxRateLimitError",
    "TelnyxServerError",
    "TelnyxValidationError",
    "encode_client_state",
]

DEFAULT_BASE_URL = "https://api.telnyx.com/v2"
USER_AGENT = f"callpipe/{__version__}"

# Longest error body excerpt kept on an exception (non-JSON bodies can be whole HTML pages).
_BODY_EXCERPT_CHARS = 300

# Transport failures where the request provably never reached the server.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


# --------------------------------------------------------------------------- client


class TelnyxClient(CallActions):
    """Async Telnyx REST client with retries, stable command ids and typed errors.

    ``max_retries`` is the number of *re*-tries, so a request is attempted at most
    ``max_retries + 1`` times. The delay before retry ``n`` (0-based) is
    ``min(backoff_max, backoff_base * 2**n)`` with "equal jitter" (between half and all of
    it); a ``Retry-After`` on a 429 replaces it, capped at ``retry_after_max``.

    Pass ``http_client`` to share a connection pool; it is then not closed by :meth:`aclose`.
    """

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
        max_retries: int = 3,
        backoff_base: float = 0.25,
        backoff_max: float = 4.0,
        retry_after_max: float = 10.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("api_key must not be empty")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        self._owns_client = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient(timeout=timeout)
        # Indirection so tests can observe backoff delays without actually sleeping.
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._random: Callable[[], float] = random.random

    def __repr__(self) -> str:
        # Never show the key, not even partially.
        return f"TelnyxClient(base_url={self.base_url!r}, max_retries={self.max_retries})"

    async def __aenter__(self) -> TelnyxClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the underlying HTTP client if this instance created it."""
        if self._owns_client:
            await self._http.aclose()

    # ------------------------------------------------------------------ commands

    async def dial(
        self,
        *,
        to: str | Sequence[str],
        from_: str,
        connection_id: str,
        stream_url: str | None = None,
        stream_track: str = "inbound_track",
        stream_bidirectional_mode: str | None = None,
        stream_bidirectional_codec: str | None = None,
        stream_bidirectional_sampling_rate: int | None = None,
        stream_bidirectional_target_legs: str | None = None,
        client_state: ClientState = None,
        answering_machine_detection: str | None = None,
        timeout_secs: int | None = None,
        webhook_url: str | None = None,
        custom_headers: Mapping[str, str] | Sequence[Mapping[str, str]] | None = None,
        command_id: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Place an outbound Call Control call (``POST /calls``); returns the ``data`` object.

        ``stream_bidirectional_mode`` is ``"rtp"`` or ``"mp3"``; the codec one of ``PCMU``,
        ``PCMA``, ``G722``, ``OPUS``, ``AMR-WB``, ``L16`` (case-sensitive on Telnyx's side).
        ``stream_track`` is only sent together with ``stream_url``. Any other documented
        dial field can be passed through ``extra``.
        """
        body: dict[str, Any] = {
            "connection_id": connection_id,
            "to": to if isinstance(to, str) else list(to),
            "from": from_,
            "command_id": command_id or str(uuid.uuid4()),
            "client_state": encode_client_state(client_state),
            "answering_machine_detection": answering_machine_detection,
            "timeout_secs": timeout_secs,
            "webhook_url": webhook_url,
            "custom_headers": None if custom_headers is None else sip_headers(custom_headers),
        }
        if stream_url is not None:
            body.update(
                stream_url=stream_url,
                stream_track=stream_track,
                stream_bidirectional_mode=stream_bidirectional_mode,
                stream_bidirectional_codec=stream_bidirectional_codec,
                stream_bidirectional_sampling_rate=stream_bidirectional_sampling_rate,
                stream_bidirectional_target_legs=stream_bidirectional_target_legs,
            )
        body = merge_extra(drop_none(body), extra)
        return await self._request_data("POST", "/calls", body)

    async def texml_call(
        self,
        *,
        account_sid: str,
        application_sid: str,
        to: str,
        from_: str,
        url: str | None = None,
        status_callback: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Start an outbound TeXML call (``POST /texml/Accounts/{account_sid}/Calls``).

        The body is JSON with Telnyx's TeXML (Twilio-style) field names; pass further fields
        such as ``StatusCallbackEvent`` or ``MachineDetection`` through ``extra`` verbatim.
        Returns the response object (Telnyx answers this endpoint without a ``data`` wrapper;
        one is unwrapped if present).
        """
        body = drop_none(
            {
                "ApplicationSid": application_sid,
                "To": to,
                "From": from_,
                "Url": url,
                "StatusCallback": status_callback,
            }
        )
        body = merge_extra(body, extra)
        path = f"/texml/Accounts/{quote(account_sid, safe='')}/Calls"
        # No command_id on this endpoint, so only provably-unsent failures are retried.
        return await self._request_data("POST", path, body, idempotent=False)

    async def hangup(
        self,
        call_control_id: str,
        *,
        client_state: ClientState = None,
        command_id: str | None = None,
    ) -> bool:
        """Hang up a call. Returns ``True`` if we hung it up, ``False`` if it had already ended.

        A ``422`` carrying code ``90018`` ("Call has already ended") is not an error here: the
        caller hanging up first is the normal end of most calls.
        """
        try:
            await self._action(
                call_control_id, "hangup", {}, client_state=client_state, command_id=command_id
            )
        except TelnyxValidationError as exc:
            if exc.has_code(CALL_ALREADY_ENDED):
                return False
            raise
        return True

    async def transfer(
        self,
        call_control_id: str,
        *,
        to: str,
        from_: str | None = None,
        client_state: ClientState = None,
        command_id: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Transfer a call to ``to`` (``/actions/transfer``); returns the ``data`` object."""
        body = drop_none(
            {
                "to": to,
                "from": from_,
                "client_state": encode_client_state(client_state),
                "command_id": command_id or str(uuid.uuid4()),
            }
        )
        body = merge_extra(body, extra)
        return await self._request_data("POST", action_path(call_control_id, "transfer"), body)

    async def send_dtmf(
        self,
        call_control_id: str,
        digits: str,
        *,
        duration_millis: int | None = None,
        client_state: ClientState = None,
        command_id: str | None = None,
    ) -> dict[str, Any]:
        """Play DTMF ``digits`` (0-9, A-D, *, #; ``w``/``W`` pause) into the call."""
        fields = {"digits": digits, "duration_millis": duration_millis}
        return await self._action(
            call_control_id, "send_dtmf", fields, client_state=client_state, command_id=command_id
        )

    async def _action(
        self,
        call_control_id: str,
        action: str,
        fields: dict[str, Any],
        *,
        client_state: ClientState = None,
        command_id: str | None = None,
    ) -> dict[str, Any]:
        """One Call Control action: implements :class:`~callpipe.telnyx.call_actions.ActionSender`."""
        body = drop_none(
            {
                **fields,
                "client_state": encode_client_state(client_state),
                "command_id": command_id or str(uuid.uuid4()),
            }
        )
        return await self._request_data("POST", action_path(call_control_id, action), body)

    # ------------------------------------------------------------------ transport

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._api_key}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }

    def _backoff(self, retry_index: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * (2.0**retry_index))
        # Equal jitter: spreads out clients that failed together, keeps a minimum wait.
        return ceiling / 2 + self._random() * ceiling / 2

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key in text else text

    async def _request_data(
        self, method: str, path: str, body: Mapping[str, Any], *, idempotent: bool = True
    ) -> dict[str, Any]:
        response = await self._request(method, path, body, idempotent=idempotent)
        if not response.content:
            return {}
        try:
            parsed = response.json()
        except ValueError:
            raise TelnyxAPIError(
                response.status_code,
                [],
                method,
                path,
                body_excerpt=self._redact(response.text[:_BODY_EXCERPT_CHARS]),
            ) from None
        if isinstance(parsed, dict):
            data = parsed.get("data", parsed)
            if isinstance(data, dict):
                return data
        return {"data": parsed}

    async def _request(
        self, method: str, path: str, body: Mapping[str, Any], *, idempotent: bool
    ) -> httpx.Response:
        """Send with retries; return the first 2xx response or raise a typed error.

        ``body`` (including its ``command_id``) is built once by the caller and re-sent
        unchanged on every attempt, which is what makes retries safe to de-duplicate.
        """
        url = self.base_url + path
        attempt = 0
        while True:
            attempt += 1
            retries_left = attempt <= self.max_retries
            try:
                response = await self._http.request(
                    method, url, json=body, headers=self._headers(), timeout=self.timeout
                )
            except httpx.TransportError as exc:
                retryable = idempotent or isinstance(exc, _NEVER_SENT)
                if retryable and retries_left:
                    await self._sleep(self._backoff(attempt - 1))
                    continue
                detail = self._redact(str(exc)) or type(exc).__name__
                raise TelnyxConnectionError(
                    f"Telnyx request {method} {path} failed after {attempt} attempt(s): "
                    f"{type(exc).__name__}: {detail}",
                    method,
                    path,
                    attempts=attempt,
                ) from exc

            status = response.status_code
            if status < 300:
                return response
            retry_after = parse_retry_after(response.headers) if status == 429 else None
            retryable = status == 429 or (status >= 500 and idempotent)
            if retryable and retries_left:
                if retry_after is not None:
                    delay = min(retry_after, self.retry_after_max)
                else:
                    delay = self._backoff(attempt - 1)
                await response.aclose()
                await self._sleep(delay)
                continue
            raise self._api_error(response, method, path, retry_after, attempt)

    def _api_error(
        self, response: httpx.Response, method: str, path: str, retry_after: float | None, attempts: int
    ) -> TelnyxAPIError:
        errors: list[TelnyxErrorDetail] = []
        excerpt: str | None = None
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        raw_errors = parsed.get("errors") if isinstance(parsed, dict) else None
        if isinstance(raw_errors, list) and raw_errors:
            errors = [TelnyxErrorDetail.from_wire(item) for item in raw_errors]
        else:
            excerpt = response.text[:_BODY_EXCERPT_CHARS].strip() or None
        exc = error_class(response.status_code)(
            response.status_code,
            errors,
            method,
            path,
            body_excerpt=None if excerpt is None else self._redact(excerpt),
            retry_after=retry_after,
            attempts=attempts,
        )
        # Error text is built from server-controlled strings; make sure the key can't leak.
        if self._api_key in str(exc):
            exc.args = (self._redact(str(exc)),)
        return exc
