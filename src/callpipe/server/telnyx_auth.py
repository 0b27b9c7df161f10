"""Who may ask this server for TeXML and post it webhooks: Telnyx, provably.

Telnyx signs its webhooks *and* its TeXML requests (instruction fetches, status callbacks)
with the account's Ed25519 key: ``telnyx-signature-ed25519`` over ``f"{telnyx-timestamp}|"``
plus the raw body (form-encoded for TeXML). With ``TELNYX_PUBLIC_KEY`` set, ``/texml`` and
``/webhooks/telnyx`` take only requests signed with it and fresh (5 min). A TeXML GET has
no body, so its signature covers the timestamp only (an assumption: Telnyx does not say
what a GET signs); that is why every accepted signature is also single-use (a repeat
answers 409; a Telnyx retry is assumed to be signed afresh, as each webhook delivery is).

For accounts whose TeXML fetches are not signed, ``TEXML_PATH_SECRET`` authenticates the
voice URL instead: Telnyx is given ``https://host/texml/<secret>``. Without either, ``/texml``
and ``/webhooks/telnyx`` answer 503 naming the settings, unless
``CALLPIPE_INSECURE_WEBHOOKS=1`` (local development; logged loudly at start-up).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from callpipe.server.settings import ServerSettings, SettingsError
from callpipe.telnyx.webhooks import (
    DEFAULT_TOLERANCE,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookFailure,
    WebhookVerificationError,
    load_public_key,
    verify_webhook_headers,
)

__all__ = ["RequestAuthError", "SignedRequest", "TelnyxRequestAuth"]

logger = logging.getLogger("callpipe.server")


class RequestAuthError(Exception):
    """A request that is not provably from Telnyx: answer ``status`` with ``code``/``detail``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request whose Telnyx signature checked out: claim ``replay_key`` until ``expires_at``."""

    replay_key: str
    expires_at: float


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class TelnyxRequestAuth:
    """The checks of ``/texml`` and ``/webhooks/telnyx`` (the public key is loaded once)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.path_secret = settings.secret("texml_path_secret")
        self.insecure = settings.callpipe_insecure_webhooks
        self.public_key: Ed25519PublicKey | None = None
        if settings.telnyx_public_key:
            try:
                self.public_key = load_public_key(settings.telnyx_public_key)
            except WebhookVerificationError as exc:
                raise SettingsError(f"TELNYX_PUBLIC_KEY is not an Ed25519 public key: {exc}") from None

    def log_startup(self) -> None:
        """Say once, loudly, what an unprotected configuration leaves open."""
        if self.insecure:
            logger.warning(
                "CALLPIPE_INSECURE_WEBHOOKS=1: /webhooks/telnyx and /texml accept UNSIGNED requests; "
                "anyone who can reach this server can end calls and obtain stream URLs. "
                "Local development only."
            )
        elif self.public_key is None:
            logger.warning(
                "TELNYX_PUBLIC_KEY is not set: /webhooks/telnyx answers 503%s",
                "" if self.path_secret else " and so does /texml (or set TEXML_PATH_SECRET)",
            )

    def _verify(self, raw: bytes, headers: Mapping[str, str], what: str) -> SignedRequest:
        assert self.public_key is not None
        try:
            verify_webhook_headers(raw, headers, self.public_key)
        except WebhookVerificationError as exc:
            # 403 only for a genuine but stale (or future) delivery; anything unsigned,
            # forged or malformed, a missing timestamp included, is 401.
            stale = exc.reason in (WebhookFailure.TIMESTAMP_TOO_OLD, WebhookFailure.TIMESTAMP_IN_FUTURE)
            logger.warning("rejected %s: %s", what, exc)
            raise RequestAuthError(403 if stale else 401, "bad_signature", str(exc)) from None
        lowered = {name.lower(): value for name, value in headers.items()}
        timestamp = float(lowered[TIMESTAMP_HEADER].strip())
        return SignedRequest(
            replay_key=f"sig:{lowered[SIGNATURE_HEADER].strip()}",
            expires_at=max(timestamp, time.time()) + DEFAULT_TOLERANCE,
        )

    def check_texml(
        self, raw: bytes, headers: Mapping[str, str], path_secret: str | None
    ) -> SignedRequest | None:
        """Authenticate a TeXML request; the signature to claim once, if it was signed."""
        if path_secret is not None:
            if self.path_secret and _equal(path_secret, self.path_secret):
                return None
            # The same answer as for any unknown path: a wrong secret reveals nothing.
            raise RequestAuthError(404, "not_found", "Not Found")
        if self.public_key is not None:
            return self._verify(raw, headers, "TeXML request")
        if self.path_secret:
            raise RequestAuthError(
                401, "unauthorized", "TeXML is served at the voice URL with its secret path segment"
            )
        if self.insecure or self.settings.callpipe_insecure_streams:
            return None  # insecure streams: a stream URL guards nothing, so neither does /texml
        raise RequestAuthError(
            503,
            "texml_unauthenticated",
            "/texml needs TELNYX_PUBLIC_KEY (Telnyx signs TeXML requests) or TEXML_PATH_SECRET "
            "(give Telnyx the voice URL /texml/<secret>); CALLPIPE_INSECURE_WEBHOOKS=1 for local development",
        )

    def check_webhook(self, raw: bytes, headers: Mapping[str, str]) -> SignedRequest | None:
        """Authenticate a webhook; the signature to claim once, if it was signed."""
        if self.public_key is not None:
            return self._verify(raw, headers, "webhook")
        if self.insecure:
            return None
        raise RequestAuthError(
            503,
            "webhooks_disabled",
            "POST /webhooks/telnyx needs TELNYX_PUBLIC_KEY (Mission Control > Keys & Credentials > "
            "Public Key); CALLPIPE_INSECURE_WEBHOOKS=1 accepts unsigned webhooks for local development",
        )
