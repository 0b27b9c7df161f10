"""Telnyx webhook signatures (Ed25519) and webhook event parsing.

Telnyx signs each webhook with the account's Ed25519 key. Two headers travel with it:
``telnyx-signature-ed25519`` (base64 of the 64-byte signature) and ``telnyx-timestamp``
(Unix seconds). The signed message is ``f"{timestamp}|".encode() + raw_body`` - the raw
bytes as received, never re-serialised JSON. The public key is shown in the Telnyx portal
as base64 of the 32 raw key bytes; PEM is accepted too.

:func:`sign_webhook` and :func:`generate_webhook_keypair` exist for the simulator and tests.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookEvent",
    "WebhookFailure",
    "WebhookParseError",
    "WebhookVerificationError",
    "decode_client_state",
    "generate_webhook_keypair",
    "load_private_key",
    "load_public_key",
    "parse_webhook_event",
    "public_key_b64",
    "sign_webhook",
    "verify_webhook",
    "verify_webhook_headers",
]

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
DEFAULT_TOLERANCE = 300.0


class WebhookFailure(enum.StrEnum):
    """Why a webhook failed verification (``WebhookVerificationError.reason``)."""

    MISSING_SIGNATURE = "missing_signature"
    MISSING_TIMESTAMP = "missing_timestamp"
    BAD_SIGNATURE_ENCODING = "bad_signature_encoding"
    BAD_PUBLIC_KEY = "bad_public_key"
    BAD_TIMESTAMP = "bad_timestamp"
    SIGNATURE_MISMATCH = "signature_mismatch"
    TIMESTAMP_TOO_OLD = "timestamp_too_old"
    TIMESTAMP_IN_FUTURE = "timestamp_in_future"


class WebhookVerificationError(Exception):
    """The webhook is not provably from Telnyx; ``reason`` says which check failed."""

    def __init__(self, reason: WebhookFailure, message: str) -> None:
        self.reason = reason
        super().__init__(f"{reason.value}: {message}")


class WebhookParseError(ValueError):
    """The webhook body is not a Telnyx event envelope."""


# --------------------------------------------------------------------------- keys


def _b64decode_loose(text: str) -> bytes:
    # The portal shows standard base64; tolerate url-safe alphabet and stripped padding.
    cleaned = "".join(text.split())
    cleaned = cleaned.replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    return base64.b64decode(cleaned, validate=True)


def load_public_key(key: str | bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    """Load an Ed25519 public key from base64 (raw 32 bytes or DER), PEM, or raw bytes.

    Raises :class:`WebhookVerificationError` (``BAD_PUBLIC_KEY``) if it is not one. Load the
    key once at startup and pass the object to :func:`verify_webhook` to skip re-parsing.
    """
    if isinstance(key, Ed25519PublicKey):
        return key
    try:
        data = key.encode() if isinstance(key, str) else bytes(key)
        if isinstance(key, bytes) and len(data) == 32:
            # Raw key bytes (never strip these: 0x20 or 0x0a are valid key bytes).
            loaded: object = Ed25519PublicKey.from_public_bytes(data)
        elif data.strip().startswith(b"-----BEGIN"):
            loaded = serialization.load_pem_public_key(data.strip())
        else:
            raw = _b64decode_loose(data.decode())
            if len(raw) == 32:
                loaded = Ed25519PublicKey.from_public_bytes(raw)
            else:
                loaded = serialization.load_der_public_key(raw)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, UnsupportedAlgorithm) as exc:
        raise WebhookVerificationError(
            WebhookFailure.BAD_PUBLIC_KEY, f"cannot load the Ed25519 public key ({exc.__class__.__name__})"
        ) from exc
    if not isinstance(loaded, Ed25519PublicKey):
        raise WebhookVerificationError(
            WebhookFailure.BAD_PUBLIC_KEY, f"expected an Ed25519 public key, got {type(loaded).__name__}"
        )
    return loaded


def load_private_key(key: str | bytes | Ed25519PrivateKey) -> Ed25519PrivateKey:
    """Load an Ed25519 private key from base64 of the 32-byte seed, PEM, or raw bytes."""
    if isinstance(key, Ed25519PrivateKey):
        return key
    data = key.encode() if isinstance(key, str) else bytes(key)
    loaded: object
    if isinstance(key, bytes) and len(data) == 32:
        loaded = Ed25519PrivateKey.from_private_bytes(data)
    elif data.strip().startswith(b"-----BEGIN"):
        loaded = serialization.load_pem_private_key(data.strip(), password=None)
    else:
        loaded = Ed25519PrivateKey.from_private_bytes(_b64decode_loose(data.decode()))
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"expected an Ed25519 private key, got {type(loaded).__name__}")
    return loaded


def public_key_b64(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Base64 of the 32 raw public key bytes: the format the Telnyx portal shows."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def generate_webhook_keypair() -> tuple[Ed25519PrivateKey, str]:
    """A fresh signing key and its public key in portal format (base64 of 32 raw bytes)."""
    private = Ed25519PrivateKey.generate()
    return private, public_key_b64(private)


# --------------------------------------------------------------------------- sign / verify


def _signed_message(timestamp: str, raw_body: bytes) -> bytes:
    return f"{timestamp}|".encode() + raw_body


def sign_webhook(
    raw_body: bytes,
    private_key: str | bytes | Ed25519PrivateKey,
    timestamp: int | str | None = None,
) -> dict[str, str]:
    """Sign ``raw_body`` like Telnyx does; returns the two headers to send with it."""
    ts = str(int(time.time())) if timestamp is None else str(timestamp)
    signature = load_private_key(private_key).sign(_signed_message(ts, raw_body))
    return {SIGNATURE_HEADER: base64.b64encode(signature).decode("ascii"), TIMESTAMP_HEADER: ts}


def verify_webhook(
    raw_body: bytes,
    signature_b64: str | None,
    timestamp: str | None,
    public_key: str | bytes | Ed25519PublicKey,
    *,
    tolerance: float | None = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Raise :class:`WebhookVerificationError` unless ``raw_body`` is validly signed and fresh.

    ``tolerance`` is the allowed distance in seconds between ``timestamp`` and ``now``
    (default: the current time) in either direction; ``None`` disables the check. The
    freshness check runs after the signature check, so "too old" means a genuine but
    delayed or replayed delivery.
    """
    if not signature_b64:
        raise WebhookVerificationError(WebhookFailure.MISSING_SIGNATURE, f"no {SIGNATURE_HEADER} header")
    timestamp, sent_at = _parse_timestamp(timestamp)
    signature = _decode_signature(signature_b64)
    key = load_public_key(public_key)
    try:
        key.verify(signature, _signed_message(timestamp, raw_body))
    except InvalidSignature:
        raise WebhookVerificationError(
            WebhookFailure.SIGNATURE_MISMATCH,
            "signature does not match the body, timestamp and public key",
        ) from None
    if tolerance is not None:
        _check_fresh(sent_at, tolerance, time.time() if now is None else now)


def _parse_timestamp(timestamp: str | None) -> tuple[str, float]:
    """The stripped header (what was signed) and its value in seconds; raise if absent or not a number."""
    if timestamp is None or not str(timestamp).strip():
        raise WebhookVerificationError(WebhookFailure.MISSING_TIMESTAMP, f"no {TIMESTAMP_HEADER} header")
    timestamp = str(timestamp).strip()
    try:
        sent_at = float(timestamp)
    except ValueError:
        sent_at = math.nan
    if not math.isfinite(sent_at):
        raise WebhookVerificationError(
            WebhookFailure.BAD_TIMESTAMP, f"{TIMESTAMP_HEADER} is not a number: {timestamp[:40]!r}"
        )
    return timestamp, sent_at


def _decode_signature(signature_b64: str) -> bytes:
    """The 64 signature bytes of the header; raise unless it is strict base64 of that length."""
    try:
        signature = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WebhookVerificationError(
            WebhookFailure.BAD_SIGNATURE_ENCODING, f"{SIGNATURE_HEADER} is not valid base64"
        ) from exc
    if len(signature) != 64:
        raise WebhookVerificationError(
            WebhookFailure.BAD_SIGNATURE_ENCODING,
            f"{SIGNATURE_HEADER} decodes to {len(signature)} bytes, an Ed25519 signature has 64",
        )
    return signature


def _check_fresh(sent_at: float, tolerance: float, now: float) -> None:
    """Raise if ``sent_at`` is more than ``tolerance`` seconds before or after ``now``."""
    age = now - sent_at
    if age > tolerance:
        raise WebhookVerificationError(
            WebhookFailure.TIMESTAMP_TOO_OLD,
            f"timestamp is {age:.0f}s old, more than the {tolerance:.0f}s tolerance",
        )
    if -age > tolerance:
        raise WebhookVerificationError(
            WebhookFailure.TIMESTAMP_IN_FUTURE,
            f"timestamp is {-age:.0f}s in the future, more than the {tolerance:.0f}s tolerance",
        )


def verify_webhook_headers(
    raw_body: bytes,
    headers: Mapping[str, str],
    public_key: str | bytes | Ed25519PublicKey,
    *,
    tolerance: float | None = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """:func:`verify_webhook` reading the two Telnyx headers from ``headers`` (any case)."""
    signature: str | None = None
    timestamp: str | None = None
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == SIGNATURE_HEADER:
            signature = value
        elif lowered == TIMESTAMP_HEADER:
            timestamp = value
    verify_webhook(raw_body, signature, timestamp, public_key, tolerance=tolerance, now=now)


# --------------------------------------------------------------------------- events


def decode_client_state(client_state: str) -> bytes:
    """Decode a base64 ``client_state`` string into bytes (raises ``ValueError`` if invalid)."""
    try:
        return _b64decode_loose(client_state)
    except binascii.Error as exc:
        raise ValueError("client_state is not valid base64") from exc


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A parsed Telnyx webhook: ``{"data": {event_type, id, occurred_at, payload, ...}, "meta": ...}``."""

    event_type: str
    id: str | None
    occurred_at: str | None
    payload: dict[str, Any]
    record_type: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def call_control_id(self) -> str | None:
        """``payload.call_control_id`` if present."""
        return _opt_str(self.payload.get("call_control_id"))

    @property
    def call_leg_id(self) -> str | None:
        """``payload.call_leg_id`` if present."""
        return _opt_str(self.payload.get("call_leg_id"))

    @property
    def call_session_id(self) -> str | None:
        """``payload.call_session_id`` if present."""
        return _opt_str(self.payload.get("call_session_id"))

    @property
    def client_state(self) -> str | None:
        """The raw (base64) ``client_state`` string, as Telnyx sent it."""
        return _opt_str(self.payload.get("client_state"))

    def client_state_bytes(self) -> bytes | None:
        """``client_state`` base64-decoded, or ``None`` when absent."""
        state = self.client_state
        return None if state is None else decode_client_state(state)

    def client_state_json(self) -> Any:
        """``client_state`` decoded as base64 JSON (as :func:`encode_client_state` makes it)."""
        raw = self.client_state_bytes()
        return None if raw is None else json.loads(raw)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_webhook_event(raw_body: bytes | str) -> WebhookEvent:
    """Parse a Call Control webhook body; raises :class:`WebhookParseError` if malformed."""
    try:
        doc = json.loads(raw_body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookParseError("webhook body is not JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise WebhookParseError('webhook body has no "data" object')
    data = doc["data"]
    event_type = data.get("event_type")
    if not isinstance(event_type, str) or not event_type:
        raise WebhookParseError('webhook "data" has no "event_type"')
    payload = data.get("payload")
    meta = doc.get("meta")
    return WebhookEvent(
        event_type=event_type,
        id=_opt_str(data.get("id")),
        occurred_at=_opt_str(data.get("occurred_at")),
        payload=payload if isinstance(payload, dict) else {},
        record_type=_opt_str(data.get("record_type")),
        meta=meta if isinstance(meta, dict) else {},
        raw=doc,
    )
