"""Telnyx webhook signatures (Ed25519) and event parsing."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from callpipe.telnyx.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookFailure,
    WebhookParseError,
    WebhookVerificationError,
    generate_webhook_keypair,
    load_public_key,
    parse_webhook_event,
    sign_webhook,
    verify_webhook,
    verify_webhook_headers,
)

NOW = 1_700_000_000.0
TS = str(int(NOW))
CCID = "v3:MdI91X4lWFEs7IgbBEOT9M4AigoY08M0WWZFISt1Yw2axZ_IiE4pqg"
BODY = json.dumps(
    {
        "data": {
            "event_type": "call.hangup",
            "id": "0ccc7b54-4df3-4bca-a65a-3da1ecc777f0",
            "occurred_at": "2024-05-01T12:00:00.000000Z",
            "payload": {
                "call_control_id": CCID,
                "call_leg_id": "2dc6fc34-f9e0-11ea-b68e-02420a0f7768",
                "call_session_id": "2dc1b3c8-f9e0-11ea-bc5a-02420a0f7768",
                "client_state": base64.b64encode(b'{"agent":"sales"}').decode(),
                "hangup_cause": "normal_clearing",
                "hangup_source": "callee",
            },
            "record_type": "event",
        },
        "meta": {"attempt": 1, "delivered_to": "https://agent.example/webhooks"},
    }
).encode()


@pytest.fixture(scope="module")
def keypair() -> tuple[Ed25519PrivateKey, str]:
    return generate_webhook_keypair()


def _reason(exc: pytest.ExceptionInfo[WebhookVerificationError]) -> WebhookFailure:
    return exc.value.reason


# --------------------------------------------------------------------------- happy paths


def test_sign_then_verify(keypair: tuple[Ed25519PrivateKey, str]) -> None:
    private, public_b64 = keypair
    headers = sign_webhook(BODY, private, timestamp=TS)
    assert set(headers) == {SIGNATURE_HEADER, TIMESTAMP_HEADER}
    assert headers[TIMESTAMP_HEADER] == TS
    assert len(base64.b64decode(headers[SIGNATURE_HEADER])) == 64
    verify_webhook(BODY, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER], public_b64, now=NOW)


def test_signed_message_is_timestamp_pipe_raw_body(keypair: tuple[Ed25519PrivateKey, str]) -> None:
    # Check the message format independently of our own verify: Telnyx signs "{ts}|{body}".
    private, public_b64 = keypair
    headers = sign_webhook(BODY, private, timestamp=TS)
    signature = base64.b64decode(headers[SIGNATURE_HEADER])
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64))
    public.verify(signature, f"{TS}|".encode() + BODY)
    # ...and a signature made directly with cryptography over that message verifies.
    direct = base64.b64encode(private.sign(f"{TS}|".encode() + BODY)).decode()
    verify_webhook(BODY, direct, TS, public_b64, now=NOW)


def test_sign_defaults_timestamp_to_now(keypair: tuple[Ed25519PrivateKey, str]) -> None:
    private, public_b64 = keypair
    headers = sign_webhook(BODY, private)
    verify_webhook(BODY, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER], public_b64)


def test_sign_accepts_base64_and_pem_private_keys(keypair: tuple[Ed25519PrivateKey, str]) -> None:
    private = keypair[0]
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    expected = sign_webhook(BODY, private, TS)
    assert sign_webhook(BODY, base64.b64encode(seed).decode(), TS) == expected
    assert sign_webhook(BODY, pem, TS) == expected
    assert sign_webhook(BODY, seed, TS) == expected


def test_headers_are_read_case_insensitively(keypair: tuple[Ed25519PrivateKey, str]) -> None:
    private, public_b64 = keypair
    signed = sign_webhook(BODY, private, timestamp=TS)
    headers = {
        "Telnyx-Signature-Ed25519": signed[SIGNATURE_HEADER],
        "TELNYX-TIMESTAMP": signed[TIMESTAMP_HEADER],
        "Content-Type": "application/json",
    }
    verify_webhook_headers(BODY, headers, public_b64, now=NOW)


@pytest.mark.parametrize(
    "form", ["base64", "base64-unpadded", "pem-str", "pem-bytes", "raw", "object", "der-b64"]
)
def test_public_key_formats(keypair: tuple[Ed25519PrivateKey, str], form: str) -> None:
    private, public_b64 = keypair
    public = private.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    forms: dict[str, str | bytes | Ed25519PublicKey] = {
        "base64": public_b64,
        "base64-unpadded": public_b64.rstrip("="),
        "pem-str": pem.decode(),
        "pem-bytes": pem,
        "raw": base64.b64decode(public_b64),
        "object": public,
        "der-b64": base64.b64encode(der).decode(),
    }
    key = forms[form]
    headers = sign_webhook(BODY, private, timestamp=TS)
    verify_webhook_headers(BODY, headers, key, now=NOW)
    assert load_public_key(key).public_bytes_raw() == base64.b64decode(public_b64)


def test_tolerance_none_disables_freshness_check(keypair: tuple[Ed25519PrivateKey, str]) -> None:
    private, public_b64 = keypair
    headers = sign_webhook(BODY, private, timestamp="1000")
    verify_webhook_headers(BODY, headers, public_b64, now=NOW, tolerance=None)


# --------------------------------------------------------------------------- rejections


def test_tampered_body_is_rejected(keypair: tuple[Ed25519PrivateKey, str]) -> None:
    private, public_b64 = keypair
    headers = sign_webhook(BODY, private, timestamp=TS)
    tampered = BODY.replace(b"normal_clearing", b"normal_clearinG")
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook_headers(tampered, headers, public_b64, now=NOW)
    assert _reason(info) is WebhookFailure.SIGNATURE_MISMATCH


def test_tampered_timestamp_is_rejected(keypair: tuple[Ed25519PrivateKey, str]) -> None:
    private, public_b64 = keypair
    headers = sign_webhook(BODY, private, timestamp=TS)
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook(BODY, headers[SIGNATURE_HEADER], str(int(NOW) + 1), public_b64, now=NOW)
    assert _reason(info) is WebhookFailure.SIGNATURE_MISMATCH


def test_wrong_key_is_rejected(keypair: tuple[Ed25519PrivateKey, str]) -> None:
    private, _ = keypair
    _, other_public = generate_webhook_keypair()
    headers = sign_webhook(BODY, private, timestamp=TS)
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook_headers(BODY, headers, other_public, now=NOW)
    assert _reason(info) is WebhookFailure.SIGNATURE_MISMATCH
    assert "signature_mismatch" in str(info.value)


@pytest.mark.parametrize(
    "signature",
    ["not base64!!", "YWJj", base64.b64encode(b"\x00" * 63).decode()],
    ids=["invalid-chars", "too-short", "63-bytes"],
)
def test_bad_signature_encoding(keypair: tuple[Ed25519PrivateKey, str], signature: str) -> None:
    _, public_b64 = keypair
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook(BODY, signature, TS, public_b64, now=NOW)
    assert _reason(info) is WebhookFailure.BAD_SIGNATURE_ENCODING


def test_missing_headers(keypair: tuple[Ed25519PrivateKey, str]) -> None:
    private, public_b64 = keypair
    signed = sign_webhook(BODY, private, timestamp=TS)
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook_headers(BODY, {TIMESTAMP_HEADER: TS}, public_b64, now=NOW)
    assert _reason(info) is WebhookFailure.MISSING_SIGNATURE
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook_headers(BODY, {SIGNATURE_HEADER: signed[SIGNATURE_HEADER]}, public_b64, now=NOW)
    assert _reason(info) is WebhookFailure.MISSING_TIMESTAMP
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook(BODY, "", TS, public_b64, now=NOW)
    assert _reason(info) is WebhookFailure.MISSING_SIGNATURE


@pytest.mark.parametrize("timestamp", ["abc", "nan", "inf", "12:00"])
def test_timestamp_not_a_number(keypair: tuple[Ed25519PrivateKey, str], timestamp: str) -> None:
    private, public_b64 = keypair
    headers = sign_webhook(BODY, private, timestamp=timestamp)  # validly signed, still rejected
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook_headers(BODY, headers, public_b64, now=NOW)
    assert _reason(info) is WebhookFailure.BAD_TIMESTAMP


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        (-301, WebhookFailure.TIMESTAMP_TOO_OLD),
        (-3600, WebhookFailure.TIMESTAMP_TOO_OLD),
        (301, WebhookFailure.TIMESTAMP_IN_FUTURE),
    ],
)
def test_stale_and_future_timestamps(
    keypair: tuple[Ed25519PrivateKey, str], offset: int, reason: WebhookFailure
) -> None:
    private, public_b64 = keypair
    headers = sign_webhook(BODY, private, timestamp=int(NOW) + offset)
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook_headers(BODY, headers, public_b64, now=NOW)
    assert _reason(info) is reason


@pytest.mark.parametrize("offset", [-299, -300, 0, 299, 300])
def test_timestamps_within_tolerance_pass(keypair: tuple[Ed25519PrivateKey, str], offset: int) -> None:
    private, public_b64 = keypair
    headers = sign_webhook(BODY, private, timestamp=int(NOW) + offset)
    verify_webhook_headers(BODY, headers, public_b64, now=NOW)


def test_custom_tolerance(keypair: tuple[Ed25519PrivateKey, str]) -> None:
    private, public_b64 = keypair
    headers = sign_webhook(BODY, private, timestamp=int(NOW) - 20)
    with pytest.raises(WebhookVerificationError) as info:
        verify_webhook_headers(BODY, headers, public_b64, now=NOW, tolerance=10)
    assert _reason(info) is WebhookFailure.TIMESTAMP_TOO_OLD


def test_bad_public_keys(keypair: tuple[Ed25519PrivateKey, str]) -> None:
    private, _ = keypair
    headers = sign_webhook(BODY, private, timestamp=TS)
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    bad_keys: list[str | bytes] = ["not a key", base64.b64encode(b"short").decode(), "", ec_pem]
    for bad in bad_keys:
        with pytest.raises(WebhookVerificationError) as info:
            verify_webhook_headers(BODY, headers, bad, now=NOW)
        assert _reason(info) is WebhookFailure.BAD_PUBLIC_KEY, bad


# --------------------------------------------------------------------------- events


def test_parse_webhook_event() -> None:
    event = parse_webhook_event(BODY)
    assert event.event_type == "call.hangup"
    assert event.id == "0ccc7b54-4df3-4bca-a65a-3da1ecc777f0"
    assert event.occurred_at == "2024-05-01T12:00:00.000000Z"
    assert event.record_type == "event"
    assert event.meta == {"attempt": 1, "delivered_to": "https://agent.example/webhooks"}
    assert event.payload["hangup_cause"] == "normal_clearing"
    assert event.call_control_id == CCID
    assert event.call_leg_id == "2dc6fc34-f9e0-11ea-b68e-02420a0f7768"
    assert event.call_session_id == "2dc1b3c8-f9e0-11ea-bc5a-02420a0f7768"
    assert event.client_state == base64.b64encode(b'{"agent":"sales"}').decode()
    assert event.client_state_bytes() == b'{"agent":"sales"}'
    assert event.client_state_json() == {"agent": "sales"}
    assert parse_webhook_event(BODY.decode()).event_type == "call.hangup"


def test_parse_event_without_client_state() -> None:
    doc = {"data": {"event_type": "call.initiated", "id": "x", "payload": {}}}
    event = parse_webhook_event(json.dumps(doc).encode())
    assert event.client_state is None
    assert event.client_state_bytes() is None
    assert event.client_state_json() is None
    assert event.call_control_id is None
    assert event.occurred_at is None


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"meta": {}}', b'{"data": []}', b'{"data": {"payload": {}}}', b"\xff\xfe"],
)
def test_parse_malformed_events(body: bytes) -> None:
    with pytest.raises(WebhookParseError):
        parse_webhook_event(body)
