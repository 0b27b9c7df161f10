"""The start-up heap freeze: only process-level servers freeze (never an app built in tests)."""

from __future__ import annotations

import os
from unittest import mock

from callpipe.server.app import create_app
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
