"""The simulator: makes the fake API's calls behave like Telnyx's (callee, stream, webhooks)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from callpipe.sim.caller import CallerTurn, CallResult, SimulatedCaller
from callpipe.sim.fake_api.actions import ACTIONS
from callpipe.sim.fake_api.agent import AgentCallees, FakeAgent, _AgentLeg
from callpipe.sim.fake_api.callees import Callees
from callpipe.sim.fake_api.media import StreamMedia, call_control_media, texml_media
from callpipe.sim.fake_api.session import (
    DEFAULT_MAX_CALL_SECS,
    CalleeScript,
    FakeCallSession,
    WebhookDelivery,
)
from callpipe.sim.fake_api.state import FakeCall, FakeCallEvent, FakeTelnyxState
from callpipe.sim.fake_api.webhooks import SimulatorWebhooks
from callpipe.sim.texml import TeXMLError, TeXMLFetchError, fetch_texml
from callpipe.telnyx.webhooks import (
    generate_webhook_keypair,
    load_private_key,
    public_key_b64,
)

logger = logging.getLogger("callpipe.sim")


class FakeTelnyxSimulator(SimulatorWebhooks, AgentCallees):
    """Makes the fake's calls behave like real ones; attach with :meth:`attach` (a listener).

    For each dialled call (Call Control with ``stream_url``, or TeXML with a ``Url`` whose
    document has a ``<Stream>``) a :class:`SimulatedCaller` plays the callee: it answers
    after ``answer_after_secs``, connects to the stream with the call's ``call_control_id``,
    codec (the callee sends ``callee_codec``, default the stream's, and decodes the
    bidirectional one: ``media.py``), ``client_state`` (Call Control) or ``<Parameter>`` values (TeXML), says
    ``callee_script(call)`` (default: nothing) and hangs up once the bot has been quiet for
    ``callee_silence_secs`` after its last turn.

    How a call ends (``hangup_source`` from the dialling application's point of view):

    * hang-up through the API: ``"caller"``; the callee's stream gets ``stop`` and closes.
    * the callee's script ends: ``"callee"``.
    * the bot closes its WebSocket: for Call Control, the call stays up (as on Telnyx,
      closing the stream does not hang up) and the callee, hearing silence, hangs up after
      ``stream_end_hangup_secs`` unless the bot hangs up through the API first; for TeXML,
      ``<Connect><Stream>`` is done and the document ends, so the call ends at once with
      ``"caller"`` (assumption: verbs after the stream are recorded, not executed).
    * ``max_call_secs`` passed: ``"unknown"`` with ``hangup_cause="time_limit"``.

    Webhooks of one call are delivered in order by one task per call, never blocking the
    call itself. Everything runs on the fake server's event loop; :meth:`aclose` (run by the
    app's lifespan) cancels the calls still running: their callees' sockets close, the calls
    end with ``hangup_source="unknown"`` and no further webhooks are sent.
    """

    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        webhook_private_key: str | bytes | Ed25519PrivateKey | None = None,
        callee_script: CalleeScript | None = None,
        callee_silence_secs: float = 5.0,
        answer_after_secs: float = 0.0,
        max_call_secs: float = DEFAULT_MAX_CALL_SECS,
        stream_end_hangup_secs: float = 1.0,
        webhook_timeout_secs: float = 5.0,
        http_client: httpx.AsyncClient | None = None,
        callees: Callees | None = None,
        callee_codec: str | None = None,
        callee_sample_rate: int | None = None,
    ) -> None:
        if max_call_secs <= 0:
            raise ValueError("max_call_secs must be positive")
        if webhook_private_key is None:
            self._signing_key, self.webhook_public_key = generate_webhook_keypair()
        else:
            self._signing_key = load_private_key(webhook_private_key)
            self.webhook_public_key = public_key_b64(self._signing_key)
        self.webhook_url = webhook_url
        self.callee_script = callee_script
        self.callee_silence_secs = callee_silence_secs
        self.answer_after_secs = answer_after_secs
        self.max_call_secs = max_call_secs
        self.stream_end_hangup_secs = stream_end_hangup_secs
        self.webhook_timeout_secs = webhook_timeout_secs
        # Who answers each dialled number (callees.py): a person by default.
        self.callees = callees if callees is not None else Callees()
        # The callee's own codec: what Telnyx streams to the bot (media.py); None: the
        # codec the stream takes back.
        self.callee_codec = callee_codec
        self.callee_sample_rate = callee_sample_rate
        self.sessions: dict[str, FakeCallSession] = {}
        #: Simulated transfer agents by number (``agent.py``).
        self.agents: dict[str, FakeAgent] = {}
        self._legs: dict[str, _AgentLeg] = {}
        self.webhooks: list[WebhookDelivery] = []
        self._state: FakeTelnyxState | None = None
        self._http = http_client
        self._owns_http = http_client is None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # ------------------------------------------------------------------ public API

    def attach(self, state: FakeTelnyxState) -> None:
        """Listen to ``state``'s call events and publish the public key on it."""
        self._state = state
        state.simulator = self
        state.webhook_public_key = self.webhook_public_key
        state.add_listener(self.on_event)

    @property
    def active_calls(self) -> int:
        """Simulated calls still running."""
        return len(self._tasks)

    def webhooks_for(self, call_control_id: str) -> list[WebhookDelivery]:
        """The webhooks sent for one call, in the order they were sent."""
        return [w for w in list(self.webhooks) if w.call_control_id == call_control_id]

    async def on_event(self, event: FakeCallEvent) -> None:
        """The listener: start a simulated call on dial, end it on hang-up."""
        if self._closed:
            return
        self._loop = asyncio.get_running_loop()
        call = event.call
        if event.kind in ("dial", "texml_call"):
            session = FakeCallSession(call)
            session.callee = self.callees.plan(call, human_silence_secs=self.callee_silence_secs)
            self.sessions[call.call_control_id] = session
            task = asyncio.create_task(self._run(session), name=f"fake-call:{call.call_control_id[:16]}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif event.kind == "hangup":
            found = self.sessions.get(call.call_control_id)
            if found is not None:
                if call.answered_at is None:
                    # Hung up while still ringing: the caller cancelled the call.
                    call.hangup_cause = "originator_cancel"
                await self._request_end(found)
        elif event.kind in ACTIONS or event.kind == "bridge":
            self.on_action(event)
        elif event.kind == "transfer":
            await self.on_transfer(event)  # to a simulated agent (agent.py); else only recorded
        # Assumption: send_dtmf is only recorded; the simulated callee does not hear the tones.

    def notify_ended(self, call: FakeCall) -> None:
        """The call was ended outside the API (``FakeTelnyxState.end_call``): stop its callee.

        Thread-safe; a no-op for calls the simulator does not run.
        """
        session = self.sessions.get(call.call_control_id)
        loop = self._loop
        if session is None or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(self._request_end(session))
        else:
            asyncio.run_coroutine_threadsafe(self._request_end(session), loop)

    async def aclose(self) -> None:
        """Cancel running calls (their callees' sockets close) and release the HTTP client."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None and self._owns_http:
            await self._http.aclose()
            self._http = None

    # ------------------------------------------------------------------ call flow

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(follow_redirects=True)
        return self._http

    def _end(self, session: FakeCallSession, source: str, cause: str = "normal_clearing") -> None:
        call = session.call
        if self._state is not None:
            self._state._end(call, source, cause)
        elif call.is_alive:
            call.state, call.ended_at, call.hangup_source, call.hangup_cause = (
                "ended",
                time.time(),
                source,
                cause,
            )
        session._ended.set()

    async def _request_end(self, session: FakeCallSession) -> None:
        session._ended.set()
        if session.caller is not None:
            await session.caller.hang_up()

    async def _wait_ended(self, session: FakeCallSession, timeout: float | None) -> bool:
        """Wait until the call is ended by someone else; ``True`` if it was."""
        if not session.call.is_alive:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(session._ended.wait(), timeout)
        return not session.call.is_alive

    async def _run(self, session: FakeCallSession) -> None:
        call = session.call
        try:
            deadline = asyncio.timeout(self.max_call_secs)
            try:
                async with deadline:
                    if call.kind == "texml":
                        await self._texml_flow(session)
                    else:
                        await self._call_control_flow(session)
            except TimeoutError:
                if not deadline.expired():
                    raise
                session.errors.append(f"call exceeded max_call_secs={self.max_call_secs}")
                self._end(session, "unknown", "time_limit")
            await self._stop_callee(session)
            self._stream_stopped(session)  # if a time limit cut the stream short
            # Assumption: a flow that returns with the call still up (cannot happen in the
            # flows below) is ended by the network.
            self._end(session, "unknown", "unspecified")
            self._end_bridged_peer(session)
            self._call_ended_webhooks(session)
            await self._flush(session)
        except Exception as exc:
            logger.exception("simulated call %s failed", call.call_control_id)
            session.errors.append(f"simulator error: {type(exc).__name__}: {exc}")
            self._end(session, "unknown", "unspecified")
        finally:
            await self._cleanup(session)
            session.finished.set()

    async def _ring(self, session: FakeCallSession) -> bool:
        """Ring for ``answer_after_secs``, then answer; ``False`` if the call ended first."""
        plan = session.callee
        if plan is not None and not plan.answers:
            # Busy or no answer: it rings, then the network ends the call with the cause.
            ring, cause = plan.never_answered(session.call)
            if not await self._wait_ended(session, ring):
                self._end(session, "callee", cause)
            return False
        if self.answer_after_secs > 0 and await self._wait_ended(session, self.answer_after_secs):
            return False
        call = session.call
        if not call.is_alive:
            return False
        call.state = "answered"
        call.answered_at = time.time()
        return True

    async def _call_control_flow(self, session: FakeCallSession) -> None:
        call = session.call
        agent = self.agent_for(call)
        if agent is not None:
            await self._agent_flow(session, agent)
            return
        self._call_control_event(session, "call.initiated", direction="outgoing", state="bridging")
        if not await self._ring(session):
            return
        self._call_control_event(session, "call.answered", state="answered")
        if call.stream_url is None:
            # No media stream: the callee stays on the line until someone hangs up.
            await self._wait_ended(session, None)
            return
        closed_by = await self._stream(
            session,
            call.stream_url,
            media=call_control_media(
                call.params, callee_codec=self.callee_codec, callee_sample_rate=self.callee_sample_rate
            ),
            custom_parameters={},
            client_state=call.client_state,
        )
        if not call.is_alive:
            return
        if closed_by == "caller":
            self._end(session, "callee")  # the callee's script ended: it hung up
            return
        # The bot closed its stream (or it never connected): the call is still up and the
        # callee hears silence. Give the bot time to hang up through the API first.
        if await self._stays_up(session):  # bridged, or the stream was stopped by the API
            return
        if not await self._wait_ended(session, self.stream_end_hangup_secs):
            self._end(session, "callee")

    async def _texml_flow(self, session: FakeCallSession) -> None:
        call = session.call
        self._texml_status(session, "initiated")
        if not await self._ring(session):
            return
        self._texml_status(session, "answered")
        url = call.params.get("Url")
        if not isinstance(url, str) or not url:
            # Assumption: without Url, Telnyx uses the TeXML application's configured URL,
            # which the fake does not know.
            session.errors.append("TeXML call has no Url; the fake cannot look up the application's URL")
            self._end(session, "unknown", "unspecified")
            return
        method = call.params.get("UrlMethod")
        try:
            texml = await fetch_texml(
                url,
                call_sid=call.call_control_id,
                account_sid=str(call.params.get("account_sid", "")),
                from_number=call.from_,
                to_number=call.to_number,
                # Assumption: Twilio-style direction for calls placed through the API.
                direction=str(call.params.get("Direction") or "outbound-api"),
                call_status="in-progress",
                connection_id=call.connection_id,
                http=self._client(),
                method=method.upper() if isinstance(method, str) and method else "POST",
                signing_key=self._signing_key,  # Telnyx signs TeXML fetches like webhooks
            )
        except TeXMLFetchError as exc:
            session.errors.append(str(exc))
            self._end(session, "unknown", "unspecified")
            return
        except TeXMLError as exc:
            # A document without a stream (e.g. just <Hangup/>) ends the call from our side.
            session.errors.append(str(exc))
            self._end(session, "caller")
            return
        session.texml = texml
        closed_by = await self._stream(
            session,
            texml.stream.url,
            media=texml_media(
                texml.stream, callee_codec=self.callee_codec, callee_sample_rate=self.callee_sample_rate
            ),
            custom_parameters=texml.custom_parameters,
            client_state=None,
        )
        # A bridged (transferred) call is no longer the document's: it ends with its parties.
        if call.is_alive and not await self._stays_up(session):
            self._end(session, "callee" if closed_by == "caller" else "caller")

    async def _callee_turns(
        self, session: FakeCallSession, caller: SimulatedCaller
    ) -> tuple[list[CallerTurn], float]:
        """What the callee says and how long it waits before hanging up (its plan may listen to ``caller``)."""
        call = session.call
        if "sim_turns" in call.params:  # an inbound caller's own script (place_inbound_call)
            return list(call.params["sim_turns"]), self.callee_silence_secs
        turns = list(self.callee_script(call)) if self.callee_script is not None else []
        plan = session.callee
        if plan is None:
            return turns, self.callee_silence_secs
        await plan.prepare(call, turns)
        caller.on_event = plan.on_caller_event
        return plan.turns, plan.hang_up_after_secs

    async def _stream(
        self,
        session: FakeCallSession,
        url: str,
        *,
        media: StreamMedia,
        custom_parameters: dict[str, str],
        client_state: str | None,
    ) -> str:
        """Run the simulated callee on ``url``; returns ``CallResult.closed_by`` ("" if it never ran)."""
        call = session.call
        session.stream_url = url
        try:
            caller = SimulatedCaller(
                url,
                **media.caller_options(),
                # Assumption: the stream's start.from/to are the call's, as dialled.
                from_number=call.from_,
                to_number=call.to_number,
                custom_parameters=custom_parameters,
                client_state=client_state,
                call_control_id=call.call_control_id,
                stream_id=session.stream_id,
                # The session enforces max_call_secs; this is only a backstop.
                max_call_secs=self.max_call_secs + 5.0,
            )
        except ValueError as exc:
            session.errors.append(f"cannot simulate the stream: {exc}")
            self._stream_failed(session, "unsupported_codec")
            return ""
        session.caller = caller
        plan = session.callee
        turns, hang_up_after = await self._callee_turns(session, caller)
        run = asyncio.ensure_future(caller.run(turns, hang_up_after_secs=hang_up_after))
        session._run_task = run
        # streaming.started once the WebSocket is up (SimulatedCaller sets .result then).
        while caller.result is None and not run.done():  # noqa: ASYNC110 - no connect hook in SimulatedCaller
            await asyncio.sleep(0.005)
        if caller.result is not None:
            session.stream_started = True
            self._stream_event(session, started=True)
            if plan is not None and call.kind == "call_control":
                plan.started(
                    caller, lambda event, result: self._call_control_event(session, event, result=result)
                )
        await asyncio.wait({run})  # wait without cancelling the callee if we are cancelled
        if plan is not None:
            plan.stopped()
        return self._stream_outcome(session, url, caller, run)

    def _stream_outcome(
        self, session: FakeCallSession, url: str, caller: SimulatedCaller, run: asyncio.Future[CallResult]
    ) -> str:
        """Record how the finished stream went; its ``closed_by`` ("" if it failed)."""
        try:
            result = run.result()
        except Exception as exc:
            session.errors.append(f"stream to {url} failed: {type(exc).__name__}: {exc}")
            session.result = caller.result
            if session.stream_started:
                self._stream_stopped(session)
            else:
                self._stream_failed(session, "connection_failed")
            return ""
        session.result = result
        self._stream_stopped(session)
        return result.closed_by

    async def _stop_callee(self, session: FakeCallSession) -> None:
        """Make sure the callee has hung up (after a time limit or an early return)."""
        run = session._run_task
        if run is None or run.done():
            return
        if session.caller is not None:
            await session.caller.hang_up()
        await asyncio.wait({run}, timeout=5.0)
        if not run.done():
            run.cancel()
            await asyncio.wait({run})
        if not run.cancelled() and run.exception() is None:
            session.result = run.result()

    async def _cleanup(self, session: FakeCallSession) -> None:
        """Cancel whatever of the call still runs (shutdown or a simulator error)."""
        pending: list[asyncio.Future[Any]] = []
        if session._run_task is not None and not session._run_task.done():
            session._run_task.cancel()
            pending.append(session._run_task)
        if session._sender is not None and not session._sender.done():
            session._sender.cancel()
            pending.append(session._sender)
        if pending:
            # Shield: if we are being cancelled ourselves, still let these finish unwinding.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(asyncio.gather(*pending, return_exceptions=True))
        if session.call.is_alive:
            self._end(session, "unknown", "unspecified")
