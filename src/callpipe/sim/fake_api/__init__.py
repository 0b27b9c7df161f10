"""A fake Telnyx REST API (FastAPI) that answers with Telnyx's wire shapes.

Tests point :class:`callpipe.telnyx.api.TelnyxClient` at it (served by a real uvicorn via
:class:`callpipe.server.background.BackgroundServer`) and then inspect
``app.state.telnyx`` (:class:`FakeTelnyxState`): every request is recorded, calls are kept
in a registry, and faults (429/5xx/slow/garbage) can be injected per path.

Implemented, all under ``/v2``:

* ``POST /calls`` (Call Control dial)
* ``POST /texml/Accounts/{account_sid}/Calls`` (TeXML outbound call)
* ``POST /calls/{call_control_id}/actions/{hangup,transfer,send_dtmf}``
* ``.../actions/{speak,playback_start,playback_stop,bridge,streaming_stop,record_start,
  record_stop,suppression_start,suppression_stop}`` (``actions.py``)

Listeners registered with :meth:`FakeTelnyxState.add_listener` receive a
:class:`FakeCallEvent` for every state change made by the REST handlers.

Optionally (``create_fake_telnyx_app(simulate_calls=True)``), a :class:`FakeTelnyxSimulator`
listens and makes calls behave like Telnyx's: the dialled party answers, a
:class:`~callpipe.sim.caller.SimulatedCaller` connects to the call's ``stream_url`` (or the
``<Stream>`` of the TeXML fetched from a TeXML call's ``Url``) and plays the callee, and
signed webhooks are POSTed as the call progresses:

* Call Control calls (``POST /v2/calls``): JSON events ``call.initiated``,
  ``call.answered``, ``streaming.started`` (``streaming.failed``), ``streaming.stopped``,
  ``call.hangup`` to the dial's ``webhook_url`` or the simulator's, in Telnyx's envelope.
* TeXML calls: form-encoded status callbacks to ``StatusCallback`` (for the events in
  ``StatusCallbackEvent``) and stream callbacks to the ``<Stream statusCallback>``.

Simulated transfer agents (``simulator.agents[number] = FakeAgent(...)``), inbound
callers (``simulator.place_inbound_call(texml_url)``) and what the call actions do to
calls (bridged legs stay up until a party hangs up) are in ``agent.py``.

A hang-up through the API makes the simulated callee's stream ``stop`` and close, the bot
closing its socket ends the call, and every call is bounded by ``max_call_secs``.
:func:`serve_fake_telnyx` runs it all standalone (``callpipe fake-telnyx``).

What answers a dialled number is :class:`~callpipe.sim.fake_api.callees.Callees`
(``callpipe fake-telnyx --callee NUMBER=KIND``): a person, a voicemail box (greeting,
beep, recording), a call screener, a busy line or one that rings out; dials with
``answering_machine_detection`` get Telnyx's ``call.machine.*`` webhooks.

Where Telnyx's public docs are silent, the behaviour chosen is marked "Assumption:".
"""

from callpipe.sim.fake_api.app import create_fake_telnyx_app, serve_fake_telnyx
from callpipe.sim.fake_api.callees import CALLEE_KINDS, Callees, voicemail_message
from callpipe.sim.fake_api.session import (
    DEFAULT_MAX_CALL_SECS,
    CalleeScript,
    FakeCallSession,
    WebhookDelivery,
)
from callpipe.sim.fake_api.simulator import FakeTelnyxSimulator
from callpipe.sim.fake_api.state import FakeCall, FakeCallEvent, FakeTelnyxState, Fault, RecordedRequest

__all__ = [
    "CALLEE_KINDS",
    "DEFAULT_MAX_CALL_SECS",
    "CalleeScript",
    "Callees",
    "FakeCall",
    "FakeCallEvent",
    "FakeCallSession",
    "FakeTelnyxSimulator",
    "FakeTelnyxState",
    "Fault",
    "RecordedRequest",
    "WebhookDelivery",
    "create_fake_telnyx_app",
    "serve_fake_telnyx",
    "voicemail_message",
]
