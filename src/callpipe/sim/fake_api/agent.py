"""Simulated transfer agents, inbound callers, and what the call actions do to calls.

A mixin of :class:`~callpipe.sim.fake_api.simulator.FakeTelnyxSimulator`:

* **Agents** (``simulator.agents[number] = FakeAgent(...)``): a Call Control dial without
  a media stream to that number rings, then answers (or never does: the dial's
  ``timeout_secs`` ends it, ``hangup_cause="timeout"``), reports answering machine
  detection if the dial asked for it, hears what ``actions/speak`` says (``heard``), may
  press a key afterwards (``call.dtmf.received``), and once bridged stays on the line
  until it hangs up (``hang_up_after_bridge_secs``) or someone ends the call.
* **Inbound callers** (:meth:`place_inbound_call`): a call to the bot's TeXML URL, as
  Telnyx places a call to a number: the fake fetches the TeXML (signed) and a
  :class:`~callpipe.sim.caller.SimulatedCaller` streams to its ``<Stream>``; the call is
  in the fake's registry, so Call Control actions on it (bridge, streaming_stop) work.
* **Actions**: ``speak`` sends ``call.speak.started``/``ended``; ``bridge`` sends
  ``call.bridged`` for both legs; ``streaming_stop`` stops the leg's stream (the
  callee's socket gets ``stop`` and closes) and the call stays up; ``record_stop`` sends
  ``call.recording.saved``; ``playback_*`` send ``call.playback.started``/``ended``.
* **Bridged legs**: when one leg ends, the other is hung up too (Telnyx's default
  without ``park_after_unbridge``); a bridged or stream-stopped call is no longer ended
  by its stream ending: it stays up until a party hangs up.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from callpipe.sim.caller import CallerTurn
from callpipe.sim.fake_api.session import FakeCallSession
from callpipe.sim.fake_api.state import FakeCall, FakeCallEvent, FakeTelnyxState

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

__all__ = ["AgentCallees", "FakeAgent"]

#: How long the fake's text-to-speech "speaks" a ``speak`` payload, per character.
SPEAK_SECS_PER_CHAR = 0.004


@dataclass(kw_only=True)
class FakeAgent:
    """How a simulated agent answers a transfer (see the module docstring)."""

    answer: bool = True
    answer_after_secs: float = 0.1
    press: str = ""  # a key pressed after the summary was spoken ("1" accept, "2" decline)
    press_after_secs: float = 0.1
    machine: bool = False  # answering machine detection says "machine"
    hang_up_after_bridge_secs: float | None = None
    heard: list[str] = field(default_factory=list)  # what speak said on its leg
    call_control_ids: list[str] = field(default_factory=list)

    KINDS = ("accept", "decline", "listen", "no-answer", "machine")

    @classmethod
    def parse(cls, entries: Sequence[str]) -> dict[str, FakeAgent]:
        """``["+15550100=accept", ...]`` (``fake-telnyx --agent``): by number; ValueError naming a bad one.

        ``accept`` presses 1 after the summary, ``decline`` 2, ``listen`` nothing (the
        transfer goes through after the decision window), ``no-answer`` never answers,
        ``machine`` is an answering machine.
        """
        agents: dict[str, FakeAgent] = {}
        for entry in entries:
            number, _, kind = entry.partition("=")
            if not number.startswith("+") or kind not in cls.KINDS:
                raise ValueError(f"--agent {entry!r}: use NUMBER=" + "|".join(cls.KINDS))
            agents[number] = cls(
                answer=kind != "no-answer",
                press={"accept": "1", "decline": "2"}.get(kind, ""),
                machine=kind == "machine",
            )
        return agents


@dataclass(eq=False)
class _AgentLeg:
    agent: FakeAgent
    spoken: asyncio.Event = field(default_factory=asyncio.Event)
    bridged: asyncio.Event = field(default_factory=asyncio.Event)


class AgentCallees:
    """The agent, inbound-call and call-action half of the simulator (a mixin)."""

    agents: dict[str, FakeAgent]
    sessions: dict[str, FakeCallSession]
    _state: FakeTelnyxState | None
    _legs: dict[str, _AgentLeg]

    # Provided by the simulator and its webhook mixin.
    _call_control_event: Callable[..., None]
    _wait_ended: Callable[[FakeCallSession, float | None], Coroutine[Any, Any, bool]]
    _end: Callable[..., None]
    on_event: Callable[[FakeCallEvent], Coroutine[Any, Any, None]]

    # ------------------------------------------------------------------ inbound calls

    async def place_inbound_call(
        self,
        texml_url: str,
        *,
        from_number: str = "+15550001111",
        to_number: str = "+15550002222",
        turns: Sequence[CallerTurn] = (),
        webhook_url: str | None = None,
    ) -> FakeCall:
        """A caller rings the bot's number: fetch ``texml_url``, stream, say ``turns``.

        The call's Call Control webhooks (``call.bridged``, ``call.hangup``...) go to
        ``webhook_url`` (default: the simulator's).
        """
        call = FakeCall(
            call_control_id="v3:" + secrets.token_urlsafe(40),
            call_leg_id=str(uuid.uuid4()),
            call_session_id=str(uuid.uuid4()),
            kind="texml",
            to=to_number,
            from_=from_number,
            connection_id="sim-texml-app",
            params={
                "Url": texml_url,
                "account_sid": "sim-account",
                "Direction": "inbound",
                "sim_turns": list(turns),
                "webhook_url": webhook_url,
            },
            created_at=time.time(),
        )
        if self._state is not None:
            with self._state._lock:
                self._state.calls[call.call_control_id] = call
        await self.on_event(FakeCallEvent("texml_call", call, {}))
        return call

    # ------------------------------------------------------------------ agents

    def agent_for(self, call: FakeCall) -> FakeAgent | None:
        """The simulated agent a streamless Call Control dial reaches, if any."""
        if call.kind != "call_control" or call.stream_url is not None:
            return None
        return self.agents.get(call.to_number)

    async def _agent_flow(self, session: FakeCallSession, agent: FakeAgent) -> None:
        call = session.call
        leg = self._legs[call.call_control_id] = _AgentLeg(agent)
        agent.call_control_ids.append(call.call_control_id)
        self._call_control_event(session, "call.initiated", direction="outgoing", state="bridging")
        if not agent.answer:
            timeout = call.params.get("timeout_secs")
            ring = float(timeout) if isinstance(timeout, int | float) and timeout > 0 else 30.0
            if not await self._wait_ended(session, ring):
                self._end(session, "callee", "timeout")
            return
        if await self._wait_ended(session, agent.answer_after_secs):
            return
        call.state, call.answered_at = "answered", time.time()
        self._call_control_event(session, "call.answered", state="answered")
        amd = call.params.get("answering_machine_detection")
        if isinstance(amd, str) and amd != "disabled":
            result = "machine" if agent.machine else "human"
            self._call_control_event(session, "call.machine.detection.ended", result=result)
        transfer_of = call.params.get("sim_transfer_of")
        if isinstance(transfer_of, str):
            self._complete_transfer(session, transfer_of)
        if agent.press:
            await self._wait_event_or_end(session, leg.spoken)
            if call.is_alive and not await self._wait_ended(session, agent.press_after_secs):
                for digit in agent.press:
                    self._call_control_event(session, "call.dtmf.received", digit=digit)
        await self._wait_event_or_end(session, leg.bridged)
        after = agent.hang_up_after_bridge_secs
        if leg.bridged.is_set() and after is not None:
            if not await self._wait_ended(session, after):
                self._end(session, "callee")
            return
        await self._wait_ended(session, None)

    async def _wait_event_or_end(self, session: FakeCallSession, event: asyncio.Event) -> None:
        waiter = asyncio.ensure_future(event.wait())
        ended = asyncio.ensure_future(self._wait_ended(session, None))
        try:
            await asyncio.wait({waiter, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, ended):
                task.cancel()

    # ------------------------------------------------------------------ transfers

    async def on_transfer(self, event: FakeCallEvent) -> None:
        """``actions/transfer`` to a simulated agent: dial leg B; once it answers, bridge A to it.

        Assumption: as Telnyx documents for Call Control transfers, the original leg (A)
        stays up and is connected to B; its media stream stops (the bot hears ``stop``),
        and A ends when B hangs up. A transfer to any other number is only recorded.
        """
        to = str(event.params.get("to", ""))
        state = self._state
        if to not in self.agents or state is None:
            return
        a_leg = event.call
        b_leg = FakeCall(
            call_control_id="v3:" + secrets.token_urlsafe(40),
            call_leg_id=str(uuid.uuid4()),
            call_session_id=a_leg.call_session_id,
            kind="call_control",
            to=to,
            from_=str(event.params.get("from") or a_leg.to_number),
            connection_id=a_leg.connection_id,
            params={"to": to, "sim_transfer_of": a_leg.call_control_id},
            created_at=time.time(),
        )
        with state._lock:
            state.calls[b_leg.call_control_id] = b_leg
        await self.on_event(FakeCallEvent("dial", b_leg, {}))

    def _complete_transfer(self, b_session: FakeCallSession, a_id: str) -> None:
        a_session = self.sessions.get(a_id)
        state = self._state
        if a_session is None or state is None or not a_session.call.is_alive:
            return
        with state._lock:
            a_session.call.bridged_with = b_session.call.call_control_id
            b_session.call.bridged_with = a_id
        self._bridged(b_session, a_id)
        self._stop_stream(a_session)

    def _stop_stream(self, session: FakeCallSession) -> None:
        # Telnyx stops the stream (the bot's socket gets "stop"); the call stays up.
        session.call.params["sim_stream_stopped"] = True
        if session.caller is not None:
            asyncio.get_running_loop().create_task(session.caller.hang_up())

    # ------------------------------------------------------------------ actions

    def on_action(self, event: FakeCallEvent) -> None:
        """A call action was accepted by the REST API: make the call behave accordingly."""
        session = self.sessions.get(event.call.call_control_id)
        if session is None:
            return
        kind, params = event.kind, event.params
        if kind == "speak":
            leg = self._legs.get(event.call.call_control_id)
            if leg is not None:
                leg.agent.heard.append(str(params.get("payload", "")))
            self._call_control_event(session, "call.speak.started")
            secs = SPEAK_SECS_PER_CHAR * len(str(params.get("payload", "")))
            asyncio.get_running_loop().call_later(secs, self._speak_ended, session, leg)
        elif kind == "bridge":
            self._bridged(session, str(params.get("call_control_id", "")))
        elif kind == "streaming_stop":
            self._stop_stream(session)
        elif kind == "record_stop":
            self._recording_saved(session)
        elif kind in ("playback_start", "playback_stop"):
            name = "call.playback.started" if kind == "playback_start" else "call.playback.ended"
            self._call_control_event(session, name, media_url=params.get("audio_url"))

    def _speak_ended(self, session: FakeCallSession, leg: _AgentLeg | None) -> None:
        if not session.call.is_alive:
            return
        self._call_control_event(session, "call.speak.ended", status="completed")
        if leg is not None:
            leg.spoken.set()

    def _bridged(self, session: FakeCallSession, other_id: str) -> None:
        other = self.sessions.get(other_id)
        for one in (session, other):
            if one is None:
                continue
            self._call_control_event(one, "call.bridged", state="bridged")
            leg = self._legs.get(one.call.call_control_id)
            if leg is not None:
                leg.bridged.set()

    def _recording_saved(self, session: FakeCallSession) -> None:
        call = session.call
        fmt = (call.recording or {}).get("format", "wav")
        url = f"https://fake-telnyx.invalid/recordings/{call.call_leg_id}.{fmt}"
        self._call_control_event(
            session,
            "call.recording.saved",
            channels=(call.recording or {}).get("channels", "single"),
            recording_started_at=None,
            recording_urls={fmt: url},
            public_recording_urls={fmt: url},
        )

    # ------------------------------------------------------------------ staying up

    async def _stays_up(self, session: FakeCallSession) -> bool:
        """A bridged or stream-stopped call outlives its stream: wait until a party hangs up."""
        call = session.call
        if not call.is_alive or not (call.bridged_with or call.params.get("sim_stream_stopped")):
            return False
        await self._wait_ended(session, None)
        return True

    def _end_bridged_peer(self, session: FakeCallSession) -> None:
        """One bridged leg ended: hang up the other (no ``park_after_unbridge``)."""
        peer_id = session.call.bridged_with
        state = self._state
        if not peer_id or state is None:
            return
        peer = state.calls.get(peer_id)
        if peer is not None and peer.is_alive:
            with contextlib.suppress(KeyError):
                state.end_call(peer_id, source=session.call.hangup_source or "callee")
