"""The post-call webhook: signed, retried with backoff from the durable outbox, to a real local receiver."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from callpipe.server.background import BackgroundServer
from callpipe.server.settings import ServerSettings, SettingsError
from callpipe.store.schema import webhook_outbox
from callpipe.store.sql import SqlCallStore
from callpipe.store.webhook import SIGNATURE_HEADER, WebhookConfig, sign, verify_signature
from tests.store_helpers import full_record, started_store

SECRET = "webhook-secret-for-tests"


@dataclass
class Receiver:
    """A CRM stand-in: answers 500 to the first ``fail_first`` deliveries, then 200."""

    fail_first: int = 0
    requests: list[tuple[float, bytes, str | None, bool]] = field(default_factory=list)

    @property
    def accepted(self) -> list[bytes]:
        return [body for _, body, _, ok in self.requests if ok]


@pytest.fixture()
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        body = await request.body()
        ok = len(state.requests) >= state.fail_first
        state.requests.append((time.monotonic(), body, request.headers.get(SIGNATURE_HEADER), ok))
        return JSONResponse({"ok": ok}, status_code=200 if ok else 500)

    with BackgroundServer(app) as server:
        yield state, server.base_url + "/hook"


async def _eventually(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _config(url: str, **kw: float) -> WebhookConfig:
    return WebhookConfig(url=url, secret=SECRET, backoff_base_secs=kw.pop("base", 0.2), **kw)  # type: ignore[arg-type]


async def _outbox(store: SqlCallStore) -> list[sa.Row[tuple[object, ...]]]:
    async with store.engine.connect() as conn:
        return list((await conn.execute(sa.select(webhook_outbox))).all())


async def test_finished_record_is_posted_signed_and_retried_until_accepted(
    db_url: str, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    state.fail_first = 2
    record = full_record()
    async with started_store(db_url, webhook=_config(url)) as store:
        store.sink.touch(full_record("live-call", end_reason="in_progress"))  # live: no webhook
        store.sink.finish(record)
        await store.writer.flush()
        await _eventually(lambda: state.accepted, 15, "the webhook to be accepted")

        async def outbox_empty() -> bool:
            return await _outbox(store) == []

        await _eventually(outbox_empty, 5, "the delivered row to leave the outbox")
    assert len(state.requests) == 3
    times = [t for t, _, _, _ in state.requests]
    assert times[1] - times[0] >= 0.2 * 0.9 and times[2] - times[1] >= 0.4 * 0.9  # exponential backoff
    for _, body, header, _ in state.requests:
        assert verify_signature(SECRET, body, header)
        assert json.loads(body) == record.to_json() | {"instance": store.instance_id}
    body, header = state.requests[-1][1], state.requests[-1][2]
    assert not verify_signature("another-secret", body, header)
    assert not verify_signature(SECRET, body.replace(b"booked", b"bookeD"), header)


async def test_undelivered_webhooks_survive_a_restart(db_url: str, receiver: tuple[Receiver, str]) -> None:
    state, url = receiver
    state.fail_first = 1
    async with started_store(db_url, webhook=_config(url, base=30)) as store:
        store.sink.finish(full_record())
        await store.writer.flush()
        await _eventually(lambda: state.requests, 10, "the first attempt")
    # The next attempt is 30 s away and the process stops; time passes (the row falls due).
    async with started_store(db_url, background=False) as reader:
        rows = await _outbox(reader)
        assert len(rows) == 1 and rows[0].attempts == 1
        async with reader.engine.begin() as conn:
            await conn.execute(webhook_outbox.update().values(next_attempt_at=time.time()))
    # The next start delivers it from the outbox.
    async with started_store(db_url, webhook=_config(url)) as store:
        await _eventually(lambda: state.accepted, 15, "delivery after the restart")

        async def outbox_empty() -> bool:
            return await _outbox(store) == []

        await _eventually(outbox_empty, 5, "the delivered row to leave the outbox")
    assert len(state.accepted) == 1


async def test_gives_up_after_the_last_attempt_and_keeps_the_row(
    db_url: str, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    state.fail_first = 1000
    async with started_store(db_url, webhook=_config(url, base=0.05, max_attempts=3)) as store:
        store.sink.finish(full_record())
        await store.writer.flush()
        await _eventually(lambda: len(state.requests) >= 3, 15, "three attempts")

        async def given_up() -> bool:
            rows = await _outbox(store)
            return bool(rows) and rows[0].next_attempt_at is None

        await _eventually(given_up, 5, "the row to be given up")
        rows = await _outbox(store)
        assert rows[0].attempts == 3 and rows[0].last_error == "HTTP 500"
        await asyncio.sleep(0.3)
    assert len(state.requests) == 3


def test_signature_helpers() -> None:
    body = b'{"call_control_id": "x"}'
    header = sign(SECRET, body)
    assert header.startswith("t=") and ",v1=" in header
    assert verify_signature(SECRET, body, header)
    stale = sign(SECRET, body, timestamp=int(time.time()) - 3600)
    assert not verify_signature(SECRET, body, stale)
    assert verify_signature(SECRET, body, stale, tolerance_secs=7200)
    for bad in (None, "", "garbage", "t=x,v1=00", "v1=abc"):
        assert not verify_signature(SECRET, body, bad)


def test_webhook_settings() -> None:
    base = {"public_url": "https://bot.example", "callpipe_insecure_streams": True, "_env_file": None}
    with pytest.raises(SettingsError, match="CALL_WEBHOOK_SECRET"):
        ServerSettings(call_webhook_url="https://crm.example/hook", **base).check_for_serving()  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="http"):
        ServerSettings(
            call_webhook_url="ftp://crm.example",
            call_webhook_secret="s",
            **base,  # type: ignore[arg-type]
        ).check_for_serving()
    settings = ServerSettings(call_webhook_url="https://crm.example/hook", callpipe_secret="fallback", **base)  # type: ignore[arg-type]
    settings.check_for_serving()
    store = SqlCallStore.from_settings(settings)
    assert store.webhook is not None and store.webhook.secret == "fallback"
    settings = ServerSettings(
        call_webhook_url="https://crm.example/hook",
        callpipe_secret="fallback",
        call_webhook_secret="own",
        **base,  # type: ignore[arg-type]
    )
    store = SqlCallStore.from_settings(settings)
    assert store.webhook is not None and store.webhook.secret == "own"
