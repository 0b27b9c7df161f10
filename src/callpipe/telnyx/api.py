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
import base64
import email.utils
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from callpipe import __version__
from callpipe.telnyx.call_actions import CallActions, ClientState

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

#: Telnyx Call Control error code for a command sent to a call that is no longer active.
CALL_ALREADY_ENDED = "90018"

# Longest error body excerpt kept on an exception (non-JSON bodies can be whole HTML pages).
_BODY_EXCERPT_CHARS = 300


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True, slots=True)
class TelnyxErrorDetail:
    """One entry of Telnyx's ``{"errors": [...]}`` array (``code`` normalised to ``str``)."""

    code: str | None = None
    title: str | None = None
    detail: str | None = None
    source: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None

    @classmethod
    def from_wire(cls, item: Any) -> TelnyxErrorDetail:
        """Build from one decoded JSON error object, tolerating missing or odd fields."""
        if not isinstance(item, Mapping):
            return cls(detail=str(item))
        code = item.get("code")
        source = item.get("source")
        meta = item.get("meta")
        return cls(
            # Telnyx documents codes as strings but some endpoints send integers.
            code=None if code is None else str(code),
            title=_opt_str(item.get("title")),
            detail=_opt_str(item.get("detail")),
            source=dict(source) if isinstance(source, Mapping) else None,
            meta=dict(meta) if isinstance(meta, Mapping) else None,
        )

    def describe(self) -> str:
        """``[code] title: detail`` with the missing parts left out."""
        text = ": ".join(p for p in (self.title, self.detail) if p)
        if self.code:
            text = f"[{self.code}] {text}" if text else f"[{self.code}]"
        return text or "(no details)"


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


class TelnyxError(Exception):
    """Base class of every error raised by :class:`TelnyxClient`."""


class TelnyxAPIError(TelnyxError):
    """Telnyx answered with an HTTP error status.

    ``errors`` holds the parsed ``errors`` array (empty when the body was not Telnyx's JSON
    error shape; ``body_excerpt`` then holds the start of the raw body).
    """

    def __init__(
        self,
        status_code: int,
        errors: Sequence[TelnyxErrorDetail],
        request_method: str,
        request_path: str,
        *,
        body_excerpt: str | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        self.status_code = status_code
        self.errors: list[TelnyxErrorDetail] = list(errors)
        self.request_method = request_method
        self.request_path = request_path
        self.body_excerpt = body_excerpt
        self.retry_after = retry_after
        self.attempts = attempts
        super().__init__(self._format())

    @property
    def codes(self) -> list[str]:
        """The Telnyx error codes in the response, in order."""
        return [e.code for e in self.errors if e.code]

    def has_code(self, code: str | int) -> bool:
        """Whether any error in the response carries ``code``."""
        return str(code) in self.codes

    def _format(self) -> str:
        head = f"Telnyx API error {self.status_code} on {self.request_method} {self.request_path}"
        if self.errors:
            body = "; ".join(e.describe() for e in self.errors)
        elif self.body_excerpt:
            body = f"non-JSON error body: {self.body_excerpt!r}"
        else:
            body = "empty error body"
        tail = f" (after {self.attempts} attempts)" if self.attempts > 1 else ""
        return f"{head}: {body}{tail}"


class TelnyxAuthError(TelnyxAPIError):
    """401/403: the API key is wrong, revoked or lacks permission."""


class TelnyxNotFoundError(TelnyxAPIError):
    """404: unknown resource or URL."""


class TelnyxValidationError(TelnyxAPIError):
    """422: the request was understood but rejected (bad field, call already ended, ...)."""


class TelnyxRateLimitError(TelnyxAPIError):
    """429: too many requests, still throttled after the retries."""


class TelnyxServerError(TelnyxAPIError):
    """5xx: Telnyx-side failure, still failing after the retries."""


class TelnyxConnectionError(TelnyxError):
    """The request could not be completed at the transport level (after the retries)."""

    def __init__(self, message: str, request_method: str, request_path: str, *, attempts: int) -> None:
        self.request_method = request_method
        self.request_path = request_path
        self.attempts = attempts
        super().__init__(message)


def _error_class(status_code: int) -> type[TelnyxAPIError]:
    if status_code in (401, 403):
        return TelnyxAuthError
    if status_code == 404:
        return TelnyxNotFoundError
    if status_code == 422:
        return TelnyxValidationError
    if status_code == 429:
        return TelnyxRateLimitError
    if status_code >= 500:
        return TelnyxServerError
    return TelnyxAPIError


# --------------------------------------------------------------------------- helpers


def encode_client_state(value: str | bytes | Mapping[str, Any] | None) -> str | None:
    """Encode ``client_state`` the way Telnyx wants it: a base64 string.

    ``bytes`` are base64-encoded, a mapping is encoded as compact JSON then base64; a ``str``
    is taken to be base64 already and passed through unchanged.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    elif isinstance(value, Mapping):
        raw = json.dumps(dict(value), separators=(",", ":"), sort_keys=True).encode()
    else:
        raise TypeError(f"client_state must be str, bytes or a mapping, not {type(value).__name__}")
    return base64.b64encode(raw).decode("ascii")


def _quote_id(call_control_id: str) -> str:
    # Ids look like "v3:<base64url>"; ':' is a legal path character and Telnyx's own docs
    # leave it unescaped, everything else outside the unreserved set is escaped (incl. '/').
    if not call_control_id:
        raise ValueError("call_control_id must not be empty")
    return quote(call_control_id, safe=":")


def _custom_headers(headers: Mapping[str, str] | Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    # Telnyx takes SIP headers as [{"name": ..., "value": ...}]; a plain mapping is friendlier.
    if isinstance(headers, Mapping):
        return [{"name": str(k), "value": str(v)} for k, v in headers.items()]
    return [dict(h) for h in headers]


def _merge_extra(body: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    clash = sorted(k for k in extra if k in body)
    if clash:
        # A silent override of e.g. command_id would defeat idempotency; make it loud.
        raise TypeError(f"extra fields duplicate explicit arguments: {', '.join(clash)}")
    body.update(extra)
    return body


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _parse_retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date) or Telnyx's ``x-ratelimit-reset``."""
    value = response.headers.get("retry-after")
    if value is not None:
        value = value.strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            seconds = when.timestamp() - time.time()
        return max(0.0, seconds) if seconds == seconds else None  # NaN guard
    # Telnyx documents x-ratelimit-reset as "time in seconds until the rate limit resets".
    reset = response.headers.get("x-ratelimit-reset")
    if reset is not None:
        try:
            seconds = float(reset.strip())
        except ValueError:
            return None
        return max(0.0, seconds) if seconds == seconds else None
    return None


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
        client_state: str | bytes | Mapping[str, Any] | None = None,
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
            "custom_headers": None if custom_headers is None else _custom_headers(custom_headers),
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
        body = _merge_extra(_drop_none(body), extra)
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
        body = _drop_none(
            {
                "ApplicationSid": application_sid,
                "To": to,
                "From": from_,
                "Url": url,
                "StatusCallback": status_callback,
            }
        )
        body = _merge_extra(body, extra)
        path = f"/texml/Accounts/{quote(account_sid, safe='')}/Calls"
        # No command_id on this endpoint, so only provably-unsent failures are retried.
        return await self._request_data("POST", path, body, idempotent=False)

    async def hangup(
        self,
        call_control_id: str,
        *,
        client_state: str | bytes | Mapping[str, Any] | None = None,
        command_id: str | None = None,
    ) -> bool:
        """Hang up a call. Returns ``True`` if we hung it up, ``False`` if it had already ended.

        A ``422`` carrying code ``90018`` ("Call has already ended") is not an error here: the
        caller hanging up first is the normal end of most calls.
        """
        body = _drop_none(
            {
                "client_state": encode_client_state(client_state),
                "command_id": command_id or str(uuid.uuid4()),
            }
        )
        try:
            await self._request_data("POST", self._action_path(call_control_id, "hangup"), body)
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
        client_state: str | bytes | Mapping[str, Any] | None = None,
        command_id: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Transfer a call to ``to`` (``/actions/transfer``); returns the ``data`` object."""
        body = _drop_none(
            {
                "to": to,
                "from": from_,
                "client_state": encode_client_state(client_state),
                "command_id": command_id or str(uuid.uuid4()),
            }
        )
        body = _merge_extra(body, extra)
        return await self._request_data("POST", self._action_path(call_control_id, "transfer"), body)

    async def send_dtmf(
        self,
        call_control_id: str,
        digits: str,
        *,
        duration_millis: int | None = None,
        client_state: str | bytes | Mapping[str, Any] | None = None,
        command_id: str | None = None,
    ) -> dict[str, Any]:
        """Play DTMF ``digits`` (0-9, A-D, *, #; ``w``/``W`` pause) into the call."""
        body = _drop_none(
            {
                "digits": digits,
                "duration_millis": duration_millis,
                "client_state": encode_client_state(client_state),
                "command_id": command_id or str(uuid.uuid4()),
            }
        )
        return await self._request_data("POST", self._action_path(call_control_id, "send_dtmf"), body)

    async def _action(
        self,
        call_control_id: str,
        action: str,
        fields: dict[str, Any],
        *,
        client_state: ClientState = None,
        command_id: str | None = None,
    ) -> dict[str, Any]:
        """One Call Control action (see :class:`~callpipe.telnyx.call_actions.CallActions`)."""
        body = _drop_none(
            {
                **fields,
                "client_state": encode_client_state(client_state),
                "command_id": command_id or str(uuid.uuid4()),
            }
        )
        return await self._request_data("POST", self._action_path(call_control_id, action), body)

    # ------------------------------------------------------------------ transport

    @staticmethod
    def _action_path(call_control_id: str, action: str) -> str:
        return f"/calls/{_quote_id(call_control_id)}/actions/{action}"

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
            retry_after = _parse_retry_after(response) if status == 429 else None
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
        exc = _error_class(response.status_code)(
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
