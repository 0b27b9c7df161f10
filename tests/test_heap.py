"""The start-up heap freeze: only process-level servers freeze (never an app built in tests)."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from unittest import mock

from starlette.testclient import TestClient

from callpipe.server.app import create_app
from callpipe.server.heap import FULL_COLLECTION_AFTER
from callpipe.server.serve import build_server
from callpipe.server.settings import ServerSettings


async def _bot(runner_args: object) -> None:
    return None


def test_only_the_process_level_server_asks_for_it() -> None:
    settings = ServerSettings(  # type: ignore[call-arg]
        _env_file=None, public_url="https://bot.example", callpipe_insecure_streams=True, records=False
    )
    assert create_app(_bot, settings).state.callpipe.freeze_heap is False
    with mock.patch.dict(os.environ):  # build_server exports the bot's settings to os.environ
        state = build_server(_bot, settings=settings, port=0).current_state()
    assert state is not None and state.freeze_heap is True


def test_a_freezing_server_spaces_out_full_collections(tmp_path: Path) -> None:
    """Its finished calls are freed by reference counting: full collections (40-90 ms at
    240 calls, every live call's audio stopped) are considered ten times less often."""
    settings = ServerSettings(  # type: ignore[call-arg]
        _env_file=None,
        public_url="https://bot.example",
        callpipe_insecure_streams=True,
        data_dir=str(tmp_path),
    )
    app = create_app(_bot, settings)
    app.state.callpipe.freeze_heap = True
    before = gc.get_threshold()
    assert before[2] != FULL_COLLECTION_AFTER
    try:
        # Not this test process's heap: only the thresholds are the point here.
        with mock.patch("callpipe.server.lifespan.freeze_startup_heap") as freeze, TestClient(app):
            assert gc.get_threshold() == (before[0], before[1], FULL_COLLECTION_AFTER)
        freeze.assert_called()
    finally:
        gc.set_threshold(*before)
