"""What a failed Telnyx REST request means: the typed errors and the rate-limit wait.

Pure (no HTTP here): :mod:`callpipe.telnyx.api` builds these from its responses.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CALL_ALREADY_ENDED",
    "TelnyxAPIError",
    "TelnyxAuthError",
    "TelnyxConnectionError",
    "TelnyxError",
    "TelnyxErrorDetail",
    "TelnyxNotFoundError",
    "TelnyxRateLimitError",
    "TelnyxServerError",
    "TelnyxValidationError",
    "error_class",
    "parse_retry_after",
]

#: Telnyx Call Control error code for a command sent to a call that is no longer active.
CALL_ALREADY_ENDED = "90018"


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
    """Base class of every error raised by :class:`~callpipe.telnyx.api.TelnyxClient`."""


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


def error_class(status_code: int) -> type[TelnyxAPIError]:
    """The :class:`TelnyxAPIError` subclass for an HTTP error status."""
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


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or HTTP date) or Telnyx's ``x-ratelimit-reset``."""
    value = headers.get("retry-after")
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
    reset = headers.get("x-ratelimit-reset")
    if reset is not None:
        try:
            seconds = float(reset.strip())
        except ValueError:
            return None
        return max(0.0, seconds) if seconds == seconds else None
    return None
