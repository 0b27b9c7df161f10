"""`run_load` against a real canned bot: the generator defers its own full collections."""

from __future__ import annotations

import gc

from callpipe.server.background import BackgroundServer
from callpipe.sim.bots import CannedBotConfig, create_canned_bot_app
from callpipe.sim.caller import SimulatedCaller
from callpipe.sim.load import LoadConfig, run_load
from tests.conftest import tone


async def test_full_collections_wait_until_the_run_is_over(speech_8k: bytes) -> None:
    # A full collection in the generator stops every simulated caller's clock at once;
    # the callers would then record gaps in audio the bot sent in time.
    app, _ = create_canned_bot_app(CannedBotConfig(reply=tone(0.3), greeting=tone(0.3)))
    before = gc.get_threshold()
    during: list[tuple[int, ...]] = []

    def caller(index: int) -> SimulatedCaller:
        during.append(gc.get_threshold())
        return SimulatedCaller(url, record=False, max_call_secs=20)

    with BackgroundServer(app) as server:
        url = server.ws_url + "/ws"
        config = LoadConfig(url=url, calls=2, duration=1.0, ramp=0.2, turn_audio=speech_8k)
        report = await run_load(config, caller_factory=caller)
    assert report.ok == 2, report.failures
    assert len(during) == 2
    assert all(t[:2] == before[:2] and t[2] >= 1_000_000 for t in during), during
    assert gc.get_threshold() == before
