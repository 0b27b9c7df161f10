"""The start-up heap freeze: only process-level servers freeze, and what they freeze stays frozen."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from callpipe.server.app import create_app
from callpipe.server.heap import freeze_startup_heap
from callpipe.server.serve import build_server
from callpipe.server.settings import ServerSettings


@pytest.fixture()
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # other tests' objects must stay collectable


async def _bot(runner_args: object) -> None:
    return None


def test_freezing_moves_the_heap_out_of_collections(unfrozen: None) -> None:
    assert gc.get_freeze_count() == 0
    frozen = freeze_startup_heap()
    assert frozen > 1000 and gc.get_freeze_count() == frozen
    # Full collections now walk only what came after.
    assert sum(gc.get_count()) < frozen


def test_only_the_process_level_server_asks_for_it() -> None:
    settings = ServerSettings(  # type: ignore[call-arg]
        _env_file=None, public_url="https://bot.example", callpipe_insecure_streams=True, records=False
    )
    assert create_app(_bot, settings).state.callpipe.freeze_heap is False
    state = build_server(_bot, settings=settings, port=0).current_state()
    assert state is not None and state.freeze_heap is True
