"""A warm transfer whose agent-leg webhooks reach another ``callpipe serve`` process.

Two real processes share one SQLite store. The caller's call runs on the holder; the
agent is dialled with the *other* instance's ``/webhooks/telnyx`` as its webhook URL, so
every agent-leg event (answered, speak ended, the key press) arrives at the process that
does not hold the call and must be forwarded (by its ``client_state``) to the holder.
"""

from __future__ import annotations

import asyncio
import re
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from callpipe.server.background import BackgroundServer
from callpipe.sim.fake_api import FakeTelnyxSimulator, create_fake_telnyx_app
from callpipe.sim.fake_api.agent import FakeAgent
from tests.serving import API_KEY, several
from tests.sim_support import on_fake_loop, probe_loop

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and process groups"),
]

TELNYX_KEY = "KEY-xfer-instances"
TEXML_SECRET = "texml-path-secret-xfer-instances"
AGENT = "+15550200009"

BOT = textwrap.dedent(
    """
    import asyncio
    import os
    from pathlib import Path

    import numpy as np

    from callpipe.pipeline.pipeline import Pipeline
    from callpipe.pipeline.task import PipelineParams, PipelineRunner, PipelineTask
    from callpipe.runner import create_telnyx_transport
    from callpipe.services.telnyx_call import TelnyxCall
    from callpipe.services.warm_transfer import WarmTransferConfig
    from callpipe.sim.bots import CannedReplyProcessor


    def tone(secs, rate=8000):
        t = np.arange(int(secs * rate)) / rate
        return (np.sin(2 * np.pi * 440 * t) * 0.25 * 32767).astype(np.int16).tobytes()


    async def bot(runner_args):
        pids = Path(os.environ["PID_DIR"])
        ccid = runner_args.call_data["call_control_id"]
        (pids / ccid.replace(":", "_")).write_text(str(os.getpid()))
        transport = create_telnyx_transport(runner_args, vad=False)
        greeter = CannedReplyProcessor(tone(0.2), 8000, greeting=tone(0.3), hang_up_digit=None)
        task = PipelineTask(
            Pipeline([transport.input(), greeter, transport.output()]),
            params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
        )

        async def transfer():
            await asyncio.sleep(0.3)
            # The agent's webhooks go to the other instance (the test wrote its URL here).
            hooks = (pids / "agent_webhooks").read_text()
            config = WarmTransferConfig.from_env(webhook_url=hooks, decision_secs=0.3)
            async with TelnyxCall.of(runner_args) as call:
                result = await call.warm_transfer(os.environ["AGENT"], "A caller wants a refund.", config=config)
            runner_args.record.set(outcome=result.outcome)

        job = asyncio.create_task(transfer())
        try:
            await PipelineRunner().run(task)
        finally:
            job.cancel()
    """
)


async def test_agent_leg_webhooks_at_the_other_instance_reach_the_transfer(tmp_path: Path) -> None:
    (tmp_path / "bot.py").write_text(BOT)
    sim = FakeTelnyxSimulator(callee_silence_secs=30.0, max_call_secs=30.0)
    sim.agents[AGENT] = agent = FakeAgent(press="1", hang_up_after_bridge_secs=1.0)
    fake_app = create_fake_telnyx_app(TELNYX_KEY, simulator=sim)
    probe_loop(fake_app)
    with BackgroundServer(fake_app) as fake:
        env = {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}",
            "TELNYX_PUBLIC_KEY": sim.webhook_public_key,
            "TELNYX_API_KEY": TELNYX_KEY,
            "TELNYX_API_BASE_URL": fake.base_url + "/v2",
            "TELNYX_CONNECTION_ID": "conn-xfer",
            "TELNYX_PHONE_NUMBER": "+15550100000",
            "TEXML_PATH_SECRET": TEXML_SECRET,
            "TRANSFER_ALLOWED_NUMBERS": AGENT,
            "AGENT": AGENT,
            "RECORDING": "off",
        }
        with several(tmp_path, 2, env=env) as (holder, other):
            await asyncio.gather(holder.wait_ready(), other.wait_ready())
            (tmp_path / "pids" / "agent_webhooks").write_text(f"{other.base}/webhooks/telnyx")
            sim.webhook_url = f"{holder.base}/webhooks/telnyx"  # the caller leg's own events
            call = await on_fake_loop(fake, sim.place_inbound_call(f"{holder.base}/texml/{TEXML_SECRET}"))
            ccid = call.call_control_id
            headers = {"Authorization": f"Bearer {API_KEY}"}
            record: dict[str, object] = {}
            async with httpx.AsyncClient(base_url=holder.base, timeout=5) as http:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    response = await http.get(f"/api/calls/{ccid}", headers=headers)
                    if response.status_code == 200 and response.json()["end_reason"] != "in_progress":
                        record = response.json()
                        break
                    await asyncio.sleep(0.1)
            assert record, f"no final record:\n{holder.output()}\n{other.output()}"
            transfer = record["transfer"]
            assert isinstance(transfer, dict) and transfer["outcome"] == "bridged", (transfer, other.output())
            assert record["end_reason"] == "transferred" and record["custom"] == {"outcome": "bridged"}
            assert agent.heard and agent.heard[0].startswith("A caller wants a refund.")
            # Every agent-leg event went to the other instance and was forwarded to the holder.
            forwarded = re.findall(
                r"forwarded agent-leg (call\.[a-z.]+) for \S+ to its instance in (\d+) ms", other.output()
            )
            kinds = {kind for kind, _ in forwarded}
            assert {"call.answered", "call.speak.ended", "call.dtmf.received"} <= kinds, other.output()
            print(f"agent-leg webhooks forwarded: {[(k, f'{ms} ms') for k, ms in forwarded]}")
            assert call.is_alive  # with the agent, the bot gone
            deadline = time.monotonic() + 10
            while call.is_alive and time.monotonic() < deadline:  # noqa: ASYNC110 - on the fake's thread
                await asyncio.sleep(0.05)
            assert not call.is_alive
