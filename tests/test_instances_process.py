"""Several real ``callpipe serve`` processes on one database.

* two instances on PostgreSQL: a signed ``call.hangup`` sent to the instance that does
  not hold the call ends it in under 500 ms (from the POST to the WebSocket close the
  simulated caller sees); an operator's hang-up through the other instance too; the
  dial-out rate limit is shared;
* ``--workers 2`` on the default SQLite store: webhooks reach the worker that holds
  the call, whichever worker receives them;
* one process with ``MAX_CALLS=1``: the next stream is refused with 1013 and ``/readyz``
  answers 503 while the limit is reached.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from callpipe.server.background import BackgroundServer
from callpipe.server.recordings import SERVED_BY_HEADER as SERVED_BY
from callpipe.sim.caller import CallResult, SimulatedCaller
from callpipe.sim.fake_api import create_fake_telnyx_app
from callpipe.telnyx.webhooks import generate_webhook_keypair, sign_webhook
from tests.serving import API_KEY, Served, callpipe_serve, several, webhook_body

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups"),
]

FORWARD_BUDGET_SECS = 0.5
TELNYX_KEY = "KEY-instances-Qm29"


@pytest.fixture()
def webhook_keys() -> tuple[Any, str]:
    return generate_webhook_keypair()


@pytest.fixture()
def pg_url(postgres_server: Any) -> str:
    url: str = postgres_server.new_database()
    return url


class Call:
    """A simulated call held open (a short greeting, then the bot waits for the caller) on one server."""

    def __init__(self, served: Served, greeting_secs: float = 0.2, hang_up_after_secs: float = 60) -> None:
        self.ccid = f"v3:i-{uuid.uuid4().hex[:12]}"
        self.caller = SimulatedCaller(
            served.stream_url(self.ccid, greeting_secs=greeting_secs),
            call_control_id=self.ccid,
            max_call_secs=40,
        )
        self.run: asyncio.Future[CallResult] = asyncio.ensure_future(
            self.caller.run([], hang_up_after_secs=hang_up_after_secs)
        )
        self.served = served

    async def started(self) -> Call:
        for _ in range(300):
            if self.served.served_by(self.ccid) is not None:
                return self
            if self.run.done():
                raise AssertionError(f"call ended early: {self.run.result()}\n{self.served.output()}")
            await asyncio.sleep(0.02)
        raise AssertionError(f"no bot took {self.ccid}:\n{self.served.output()}")

    async def ended(self, timeout: float = 5.0) -> CallResult:
        return await asyncio.wait_for(self.run, timeout)

    async def hang_up(self) -> None:
        if not self.run.done():
            await self.caller.hang_up()
            await asyncio.wait({self.run}, timeout=10)


async def _known_to(served: Served, ccid: str, timeout: float = 10.0) -> None:
    """Wait until ``served`` can see the call's record in the shared store (in progress)."""
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {API_KEY}"}
    while time.monotonic() < deadline:
        response = await served.get(f"/api/calls/{ccid}", headers=headers)
        if response.status_code == 200 and response.json().get("end_reason") == "in_progress":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{ccid} never reached the shared store")


async def _post_webhook(http: httpx.AsyncClient, url: str, body: bytes, private: Any) -> httpx.Response:
    return await http.post(
        url, content=body, headers={**sign_webhook(body, private), "content-type": "application/json"}
    )


def _env(db: str, public_key: str, **more: str) -> dict[str, str]:
    return {"DATABASE_URL": db, "TELNYX_PUBLIC_KEY": public_key, **more}


# --------------------------------------------------------------------------- two instances


async def test_a_hangup_webhook_at_the_other_instance_ends_the_call_within_500ms(
    tmp_path: Path, pg_url: str, webhook_keys: tuple[Any, str]
) -> None:
    private, public = webhook_keys
    with several(tmp_path, 2, env=_env(pg_url, public)) as (holder, other):
        await asyncio.gather(holder.wait_ready(), other.wait_ready())
        latencies: list[float] = []
        async with httpx.AsyncClient(timeout=5) as http:
            for _ in range(3):
                call = await Call(holder).started()
                try:
                    await _known_to(other, call.ccid)
                    body = webhook_body("call.hangup", call.ccid, hangup_cause="normal_clearing")
                    posted = time.monotonic()
                    response = await _post_webhook(http, f"{other.base}/webhooks/telnyx", body, private)
                    assert response.status_code == 200, response.text
                    result = await call.ended()
                finally:
                    await call.hang_up()
                assert result.closed_by == "bot" and result.closed_at is not None
                latencies.append(result.closed_at - posted)
        print(f"forwarded call.hangup -> caller saw the close: {[f'{x * 1000:.0f} ms' for x in latencies]}")
        assert max(latencies) < FORWARD_BUDGET_SECS, latencies
        assert "forwarded call.hangup" in other.output()
        metrics = await holder.metrics()
        assert metrics['callpipe_forwarded_events_total{direction="received",result="delivered"}'] == 3


async def test_amd_and_an_operator_hang_up_reach_the_call_through_the_other_instance(
    tmp_path: Path, pg_url: str, webhook_keys: tuple[Any, str]
) -> None:
    private, public = webhook_keys
    with several(tmp_path, 2, env=_env(pg_url, public)) as (holder, other):
        await asyncio.gather(holder.wait_ready(), other.wait_ready())
        call = await Call(holder).started()
        try:
            await _known_to(other, call.ccid)
            headers = {"Authorization": f"Bearer {API_KEY}"}
            async with httpx.AsyncClient(base_url=other.base, timeout=5) as http:
                # An answering-machine result reaches the holder's call (its record says so).
                amd = webhook_body("call.machine.detection.ended", call.ccid, result="machine")
                assert (
                    await _post_webhook(http, f"{other.base}/webhooks/telnyx", amd, private)
                ).status_code == 200
                for _ in range(100):
                    record = (await http.get(f"/api/calls/{call.ccid}", headers=headers)).json()
                    if record.get("amd"):
                        break
                    await asyncio.sleep(0.05)
                assert record["amd"] == {"event": "call.machine.detection.ended", "result": "machine"}, record
                assert "forwarded call.machine.detection.ended" in other.output()

                assert (await http.post(f"/api/calls/{call.ccid}/hangup")).status_code == 401
                posted = time.monotonic()
                response = await http.post(f"/api/calls/{call.ccid}/hangup", headers=headers)
                assert response.status_code == 200 and response.json()["handled"] == "forwarded", (
                    response.text
                )
                result = await call.ended()
                assert result.closed_at is not None and result.closed_at - posted < FORWARD_BUDGET_SECS
                # Once the bot has finished and its record is final, the call is gone
                # everywhere: a second hang-up finds nothing.
                for _ in range(60):
                    again = await http.post(f"/api/calls/{call.ccid}/hangup", headers=headers)
                    if again.status_code == 404:
                        break
                    await asyncio.sleep(0.05)
                assert again.status_code == 404, again.text
        finally:
            await call.hang_up()


@pytest.fixture()
def fake_telnyx_api() -> Iterator[tuple[str, Any]]:
    app = create_fake_telnyx_app(TELNYX_KEY)
    with BackgroundServer(app) as server:
        yield server.base_url + "/v2", app.state.telnyx


async def test_the_dial_out_rate_limit_is_shared_by_instances(
    tmp_path: Path, pg_url: str, webhook_keys: tuple[Any, str], fake_telnyx_api: tuple[str, Any]
) -> None:
    base_url, fake = fake_telnyx_api
    _, public = webhook_keys
    # One dial every 5 s (below 1/s: the old bucket never let one through). Alone, each
    # instance would allow one dial now; sharing one bucket, the two allow one together.
    env = _env(
        pg_url,
        public,
        DIAL_RATE_PER_SEC="0.2",
        TELNYX_API_KEY=TELNYX_KEY,
        TELNYX_API_BASE_URL=base_url,
        TELNYX_PHONE_NUMBER="+15550002222",
        TELNYX_ACCOUNT_SID="acct-1",
        TELNYX_APPLICATION_SID="app-1",
    )
    with several(tmp_path, 2, env=env) as servers:
        await asyncio.gather(*(s.wait_ready() for s in servers))
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(timeout=10) as http:

            async def start(served: Served) -> int:
                response = await http.post(
                    f"{served.base}/start", json={"phone_number": "+15551234567"}, headers=headers
                )
                return response.status_code

            codes = await asyncio.gather(*(start(servers[i % 2]) for i in range(6)))
        assert sorted(codes) == [200, 429, 429, 429, 429, 429], codes
        assert len(fake.requests_to("/v2/texml/Accounts/*/Calls")) == 1


async def test_an_operator_transfer_is_sent_to_telnyx_by_the_instance_holding_the_call(
    tmp_path: Path, pg_url: str, webhook_keys: tuple[Any, str], fake_telnyx_api: tuple[str, Any]
) -> None:
    base_url, fake = fake_telnyx_api
    _, public = webhook_keys
    env = _env(
        pg_url,
        public,
        TELNYX_API_KEY=TELNYX_KEY,
        TELNYX_API_BASE_URL=base_url,
        TRANSFER_ALLOWED_NUMBERS="+1555765*",  # operator transfers obey the allowlist too
    )
    with several(tmp_path, 2, env=env) as (holder, other):
        await asyncio.gather(holder.wait_ready(), other.wait_ready())
        call = await Call(holder).started()
        try:
            await _known_to(other, call.ccid)
            headers = {"Authorization": f"Bearer {API_KEY}"}
            async with httpx.AsyncClient(base_url=other.base, timeout=5) as http:
                response = await http.post(
                    f"/api/calls/{call.ccid}/transfer", headers=headers, json={"to": "+15557654321"}
                )
        finally:
            await call.hang_up()
        [sent] = fake.requests_to(f"/v2/calls/{call.ccid}/actions/transfer")
        assert sent.json["to"] == "+15557654321"
        assert f"call {call.ccid} transferred by an operator" in holder.output()
        assert "transferred by an operator" not in other.output()
        # This fake Telnyx never placed the simulated call, so it answers "call ended";
        # the operator hears that Telnyx refused, not that the owner was unreachable.
        assert response.status_code == 502 and response.json()["error"]["code"] == "telnyx_error", (
            response.text
        )


async def _finished(served: Served, ccid: str, timeout: float = 10.0) -> dict[str, Any]:
    """The call's final record as ``served`` reads it from the shared store."""
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {API_KEY}"}
    while time.monotonic() < deadline:
        response = await served.get(f"/api/calls/{ccid}", headers=headers)
        if response.status_code == 200 and response.json()["end_reason"] != "in_progress":
            data: dict[str, Any] = response.json()
            return data
        await asyncio.sleep(0.05)
    raise AssertionError(f"{ccid} was not finished in the shared store")


async def test_a_recording_is_served_by_any_instance(
    tmp_path: Path, pg_url: str, webhook_keys: tuple[Any, str]
) -> None:
    """Holder and other keep recordings on their own disks; shared mounts the holder's directory."""
    _, public = webhook_keys
    disks = {name: tmp_path / f"recordings-{name}" for name in ("holder", "other")}
    with ExitStack() as stack:
        holder, other, shared = (
            stack.enter_context(
                callpipe_serve(tmp_path, name=name, env=_env(pg_url, public, RECORDING_DIR=str(disk)))
            )
            for name, disk in (*disks.items(), ("shared", disks["holder"]))
        )
        await asyncio.gather(holder.wait_ready(), other.wait_ready(), shared.wait_ready())
        # The caller hangs up once the one-second greeting has played.
        call = await Call(holder, greeting_secs=1.0, hang_up_after_secs=0.3).started()
        assert (await call.ended(timeout=20)).bot_audio_secs >= 0.9
        record = await _finished(other, call.ccid)
        [wav] = disks["holder"].glob("**/*.wav")
        content = wav.read_bytes()
        assert content[:4] == b"RIFF" and len(content) > 8000
        assert not list(disks["other"].glob("**/*.wav"))
        url, auth = record["recording_url"], {"Authorization": f"Bearer {API_KEY}"}

        # Not on its disk: streamed from the holder, whole and by range.
        whole = await other.get(url, headers=auth)
        assert whole.status_code == 200, whole.text
        assert whole.content == content and whole.headers["content-type"] == "audio/wav"
        assert whole.headers[SERVED_BY] == record["instance"]
        part = await other.get(url, headers={**auth, "Range": "bytes=100-1099"})
        assert part.status_code == 206 and part.content == content[100:1100]
        assert part.headers["content-range"] == f"bytes 100-1099/{len(content)}"
        assert (await other.get(url)).status_code == 401
        # On a shared RECORDING_DIR any instance reads it from the disk itself.
        local = await shared.get(url, headers={**auth, "Range": "bytes=0-43"})
        assert local.status_code == 206 and local.content == content[:44]
        assert local.headers[SERVED_BY] not in ("", record["instance"])

        # Its instance gone: a disk that still sees the file serves it, else a clear answer
        # that says where the file is.
        holder.terminate()
        assert await holder.wait_exit(20) == 0
        assert (await shared.get(url, headers=auth)).content == content
        assert (await other.get(url, headers=auth)).content == content  # (one box: it sees the file)
        wav.unlink()
        gone = await other.get(url, headers=auth)
        assert gone.status_code == 404, gone.text
        error = gone.json()["error"]
        assert error["code"] == "recording_unreachable" and error["instance"] == record["instance"]
        assert record["instance"] in error["detail"] and "RECORDING_DIR" in error["detail"]


# --------------------------------------------------------------------------- workers


async def test_webhooks_reach_the_worker_holding_the_call(
    tmp_path: Path, webhook_keys: tuple[Any, str]
) -> None:
    private, public = webhook_keys
    with callpipe_serve(tmp_path, workers=2, env={"TELNYX_PUBLIC_KEY": public}) as served:
        await served.wait_workers(2)
        calls: list[Call] = []
        try:
            while len({served.served_by(c.ccid) for c in calls}) < 2:
                assert len(calls) < 16, "every call went to one worker"
                calls.append(await Call(served).started())
            for call in calls:
                await _known_to(served, call.ccid)
            before = await served.metrics()
            # One kept-alive connection: every webhook reaches the same worker, so those for
            # the other worker's calls must be forwarded there.
            latencies = []
            async with httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_connections=1)) as http:
                for call in calls:
                    body = webhook_body("call.hangup", call.ccid, hangup_cause="normal_clearing")
                    posted = time.monotonic()
                    response = await _post_webhook(http, f"{served.base}/webhooks/telnyx", body, private)
                    assert response.status_code == 200
                    result = await call.ended()
                    assert result.closed_by == "bot" and result.closed_at is not None
                    latencies.append(result.closed_at - posted)
        finally:
            for call in calls:
                await call.hang_up()
        print(
            f"workers: webhook -> close {statistics.median(latencies) * 1000:.0f} ms median, {max(latencies) * 1000:.0f} ms max"
        )
        assert max(latencies) < FORWARD_BUDGET_SECS, latencies
        after = await served.metrics()
        key = 'callpipe_forwarded_events_total{direction="sent",result="delivered"}'
        forwarded = after.get(key, 0) - before.get(key, 0)
        by_pid = [
            sum(1 for c in calls if served.served_by(c.ccid) == pid)
            for pid in {served.served_by(c.ccid) for c in calls}
        ]
        assert forwarded in by_pid, (forwarded, by_pid)  # exactly the other worker's calls
        assert forwarded >= 1


# --------------------------------------------------------------------------- capacity


async def test_max_calls_refuses_with_1013_and_readiness_503(tmp_path: Path) -> None:
    with callpipe_serve(tmp_path, env={"MAX_CALLS": "1"}) as served:
        await served.wait_ready()
        call = await Call(served).started()
        try:
            ready = await served.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "at_capacity"
            assert (await served.get("/livez")).status_code == 200
            refused = await SimulatedCaller(served.stream_url("v3:one-too-many"), max_call_secs=5).run([])
            assert refused.close_code == 1013 and "MAX_CALLS" in refused.close_reason
            assert served.served_by("v3:one-too-many") is None
        finally:
            await call.hang_up()
        for _ in range(100):
            if (await served.get("/readyz")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        assert (await served.get("/readyz")).status_code == 200
