"""The simulator's webhooks: Call Control JSON events and TeXML form callbacks, signed, in order."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from callpipe.sim.fake_api.session import (
    _WEBHOOK_USER_AGENT,
    FakeCallSession,
    WebhookDelivery,
    _iso,
    _iso_now,
)
from callpipe.telnyx.webhooks import (
    sign_webhook,
)

logger = logging.getLogger("callpipe.sim")


class SimulatorWebhooks:
    """The webhook half of :class:`~callpipe.sim.fake_api.simulator.FakeTelnyxSimulator`.

    A mixin: the simulator provides the signing key, the target URL, the HTTP client and
    the list of deliveries; these methods build each event in Telnyx's shape and send one
    call's webhooks in order on a task of that call.
    """

    _signing_key: Ed25519PrivateKey
    webhook_url: str | None
    webhook_timeout_secs: float
    webhooks: list[WebhookDelivery]

    def _client(self) -> httpx.AsyncClient:
        raise NotImplementedError

    def _stream_event(self, session: FakeCallSession, *, started: bool) -> None:
        if session.call.kind == "texml":
            self._texml_stream_callback(session, "stream-started" if started else "stream-stopped")
        else:
            name = "streaming.started" if started else "streaming.stopped"
            self._call_control_event(session, name, stream_url=session.stream_url)

    def _stream_stopped(self, session: FakeCallSession) -> None:
        if session.stream_started and not session.stream_stopped:
            session.stream_stopped = True
            self._stream_event(session, started=False)

    def _stream_failed(self, session: FakeCallSession, reason: str) -> None:
        if session.call.kind == "texml":
            self._texml_stream_callback(session, "stream-error", error=reason)
            return
        self._call_control_event(
            session,
            "streaming.failed",
            failure_reason=reason,
            stream_id=session.stream_id,
            stream_params={
                "stream_url": session.stream_url,
                "track": session.call.params.get("stream_track"),
            },
            stream_type="websocket",
        )

    def _call_ended_webhooks(self, session: FakeCallSession) -> None:
        call = session.call
        if call.kind == "texml":
            self._texml_status(session, "completed")
            return
        self._call_control_event(
            session,
            "call.hangup",
            state="hangup",
            start_time=_iso(call.created_at),
            end_time=_iso(call.ended_at),
            hangup_cause=call.hangup_cause or "normal_clearing",
            hangup_source=call.hangup_source or "unknown",
            # Assumption: sip_hangup_cause and call_quality_stats are left out; the fake
            # has no SIP signalling or RTP statistics to report.
        )

    def _call_control_event(self, session: FakeCallSession, event_type: str, **fields: Any) -> None:
        """Queue a Call Control JSON event, in Telnyx's envelope, for this call's webhook URL."""
        call = session.call
        target = call.params.get("webhook_url") or self.webhook_url
        if not isinstance(target, str) or not target:
            return
        payload: dict[str, Any] = {
            "call_control_id": call.call_control_id,
            "call_leg_id": call.call_leg_id,
            "call_session_id": call.call_session_id,
            "connection_id": call.connection_id,
            # Assumption: an absent client_state is sent as null.
            "client_state": call.client_state,
        }
        if event_type.startswith("call."):
            payload.update({"from": call.from_, "to": call.to_number, "direction": "outgoing"})
            payload["start_time"] = _iso(call.created_at)
        payload.update(fields)
        envelope = {
            "data": {
                "record_type": "event",
                "event_type": event_type,
                "id": str(uuid.uuid4()),
                "occurred_at": _iso_now(),
                "payload": payload,
            },
            "meta": {"attempt": 1, "delivered_to": target},
        }
        body = json.dumps(envelope, separators=(",", ":")).encode()
        self._enqueue(
            session,
            WebhookDelivery(
                url=target,
                method="POST",
                kind="call_control",
                event_type=event_type,
                call_control_id=call.call_control_id,
                body=body,
                headers={"content-type": "application/json"},
            ),
        )

    def _texml_form(self, session: FakeCallSession) -> dict[str, str]:
        call = session.call
        session._sequence += 1
        return {
            "AccountSid": str(call.params.get("account_sid", "")),
            "CallSid": call.call_control_id,
            "CallSidLegacy": call.call_control_id,
            "ConnectionId": call.connection_id or "",
            "From": call.from_,
            "To": call.to_number,
            "Timestamp": _iso_now(),
            "SequenceNumber": str(session._sequence - 1),
        }

    def _texml_status(self, session: FakeCallSession, event: str) -> None:
        """Queue a TeXML status callback if the call asked for ``event``.

        Assumption: as in Twilio's API, ``StatusCallbackEvent`` lists events separated by
        spaces (``initiated ringing answered completed``) and defaults to ``completed``.
        """
        call = session.call
        target = call.params.get("StatusCallback")
        if not isinstance(target, str) or not target:
            return
        wanted = call.params.get("StatusCallbackEvent") or "completed"
        events = wanted.replace(",", " ").split() if isinstance(wanted, str) else list(wanted)
        if event not in events:
            return
        status = {"answered": "in-progress"}.get(event, event)
        form = self._texml_form(session)
        form.update({"CallStatus": status, "CallbackSource": "call-progress-events"})
        if event == "completed":
            answered = call.answered_at
            ended = call.ended_at or time.time()
            form.update(
                {
                    "CallDuration": str(int(ended - answered)) if answered is not None else "0",
                    "CallControlId": call.call_control_id,
                    "CallLegId": call.call_leg_id,
                    "CallSessionId": call.call_session_id,
                    "HangupCause": call.hangup_cause or "normal_clearing",
                    "HangupSource": call.hangup_source or "unknown",
                }
            )
        method = call.params.get("StatusCallbackMethod")
        self._enqueue_form(session, target, method, f"texml.{status}", form)

    def _texml_stream_callback(self, session: FakeCallSession, event: str, error: str | None = None) -> None:
        stream = session.texml.stream if session.texml is not None else None
        if stream is None or not stream.status_callback:
            return
        form = self._texml_form(session)
        form.update({"StreamEvent": event, "StreamName": stream.name or "", "StreamSid": session.stream_id})
        if error is not None:
            form["StreamError"] = error
        self._enqueue_form(
            session, stream.status_callback, stream.status_callback_method, f"texml.{event}", form
        )

    def _enqueue_form(
        self, session: FakeCallSession, url: str, method: Any, event_type: str, form: dict[str, str]
    ) -> None:
        verb = method.upper() if isinstance(method, str) and method.upper() in ("GET", "POST") else "POST"
        encoded = urlencode(form)
        if verb == "GET":
            url = f"{url}{'&' if '?' in url else '?'}{encoded}"
            body = b""
            headers: dict[str, str] = {}
        else:
            body = encoded.encode()
            headers = {"content-type": "application/x-www-form-urlencoded"}
        self._enqueue(
            session,
            WebhookDelivery(
                url=url,
                method=verb,
                kind="texml",
                event_type=event_type,
                call_control_id=session.call.call_control_id,
                body=body,
                headers=headers,
            ),
        )

    def _enqueue(self, session: FakeCallSession, delivery: WebhookDelivery) -> None:
        session._outbox.put_nowait(delivery)
        if session._sender is None:
            session._sender = asyncio.create_task(self._deliver(session))

    async def _deliver(self, session: FakeCallSession) -> None:
        """Send this call's webhooks one at a time, in order (``None`` ends the queue)."""
        while True:
            delivery = await session._outbox.get()
            if delivery is None:
                return
            # Signed when sent, like Telnyx: the timestamp is the delivery time. Assumption:
            # a GET callback signs the empty body.
            delivery.headers.update(sign_webhook(delivery.body, self._signing_key))
            delivery.headers["user-agent"] = _WEBHOOK_USER_AGENT
            delivery.sent_at = time.time()
            self.webhooks.append(delivery)
            try:
                response = await self._client().request(
                    delivery.method,
                    delivery.url,
                    content=delivery.body or None,
                    headers=delivery.headers,
                    timeout=self.webhook_timeout_secs,
                )
                delivery.status_code = response.status_code
            except httpx.HTTPError as exc:
                # Assumption: no retries (Telnyx retries to a failover URL, if configured).
                delivery.error = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "webhook %s to %s failed: %s", delivery.event_type, delivery.url, delivery.error
                )

    async def _flush(self, session: FakeCallSession) -> None:
        """Wait (bounded) until every queued webhook of the call was sent."""
        sender = session._sender
        if sender is None:
            return
        session._outbox.put_nowait(None)
        await asyncio.wait({sender}, timeout=self.webhook_timeout_secs * max(1, session._outbox.qsize()) + 1)
