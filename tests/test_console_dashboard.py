"""/dashboard and the call page in a real headless Chromium, over the real call store (SQLite).

Records are written through the store's own sink (as a call's observer writes them), the
server reads them back; the browser signs in through the form, searches the call list,
opens a call page and checks the transcript, the player, the waveform, the timeline and
the latency waterfall, and saves a screenshot (a test artifact, under the test's tmp dir).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from callpipe.records.model import CallRecord, Turn
from callpipe.server.app import create_app
from callpipe.server.background import BackgroundServer, free_port
from callpipe.server.settings import ServerSettings
from tests.console_support import PASSWORD, chromium, sample_record, sign_in, stereo_wav, wait_js

pytestmark = pytest.mark.slow


async def _idle_bot(runner_args: Any) -> None:
    await asyncio.sleep(3600)


def _settings(port: int, data_dir: Path) -> ServerSettings:
    return ServerSettings(
        public_url=f"http://127.0.0.1:{port}",
        callpipe_secret="dashboard-test-secret-Kk40",  # type: ignore[arg-type]
        callpipe_api_key=PASSWORD,  # type: ignore[arg-type]
        data_dir=str(data_dir),
        price_telephony_per_min=0.01,
        price_stt_per_min=0.006,
        _env_file=None,  # type: ignore[call-arg]
    )


async def _write(data_dir: Path, records: list[CallRecord]) -> None:
    """Write records through the store's sink, as observers do, and flush them."""
    from callpipe.store.sql import SqlCallStore

    store = SqlCallStore(None, data_dir=data_dir)
    await store.start()
    try:
        for record in records:
            store.sink.finish(record)
    finally:
        await store.close()


@pytest.fixture()
def records_server(tmp_path: Path) -> Iterator[tuple[BackgroundServer, Path]]:
    wav = tmp_path / "call-0.wav"
    stereo_wav(wav, 12.0)
    now = time.time()
    records = [
        sample_record(f"v3:call-{i}", started_at=now - 3600 - 86400 * (i % 4) - i * 60, recording=wav)
        for i in range(6)
    ]
    other = sample_record("v3:call-outbound", started_at=now - 600)
    other.direction = "outbound"
    other.from_, other.to = "+15557770000", "+15558880000"
    other.turns = [Turn(speaker="caller", text="Is the pharmacy open on Sunday?", started_at=now - 598)]
    other.end_reason = "error"
    records.append(other)
    asyncio.run(_write(tmp_path / "data", records))
    port = free_port()
    app = create_app(_idle_bot, _settings(port, tmp_path / "data"))
    with BackgroundServer(app, port=port) as server:
        yield server, tmp_path


async def test_call_list_search_and_call_page_render(
    records_server: tuple[BackgroundServer, Path], tmp_path: Path
) -> None:
    server, _ = records_server
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await sign_in(page, server.base_url)
        await page.wait_for_selector("#calls tr.call-row")
        assert await page.locator("#calls tr.call-row").count() == 7
        first = page.locator("#calls tr.call-row").first
        assert "+1••••••0000" in await first.inner_text()  # numbers are masked in the list
        assert "650 ms" in await page.locator('#calls tr[data-id="v3:call-0"]').inner_text()  # p50 v2v
        # Search the transcripts; then filter by end reason.
        await page.fill('#filters input[name="q"]', "pharmacy")
        await page.click('#filters button[type="submit"]')
        await wait_js(page, "document.querySelectorAll('#calls tr.call-row').length === 1")
        assert await page.get_attribute("#calls tr.call-row", "data-id") == "v3:call-outbound"
        await page.fill('#filters input[name="q"]', "")
        await page.select_option('#filters select[name="end_reason"]', "caller_hangup")
        await wait_js(page, "document.querySelectorAll('#calls tr.call-row').length === 6")
        await page.select_option('#filters select[name="direction"]', "outbound")
        await wait_js(page, "document.getElementById('list-status').textContent === 'No calls match.'")

        # The call page: facts, transcript at its times, timeline, waveform, player, waterfall, cost.
        await page.goto(f"{server.base_url}/dashboard/calls/v3:call-0")
        await page.wait_for_selector("body[data-loaded]")
        await page.wait_for_selector("#waveform[data-drawn]")
        await wait_js(page, "document.getElementById('player').readyState >= 1")
        lines = page.locator("#transcript li.line")
        texts = [await lines.nth(i).inner_text() for i in range(await lines.count())]
        assert any("I'd like to book a cleaning." in t and "Caller" in t for t in texts)
        interrupted = page.locator("#transcript li.bot .unheard")
        assert await interrupted.count() == 1
        assert (await interrupted.inner_text()).strip() == "works for you this week?"  # meant, not heard
        assert any("tool find_slot" in t for t in texts) and any("dtmf" in t for t in texts)
        assert await page.locator("#timeline .event-mark").count() == 3  # tool call, DTMF, webhook
        assert await page.locator("#waterfall .waterfall-row").count() == 3
        assert await page.locator("#waterfall .waterfall-row").nth(1).locator("rect.segment").count() == 6
        assert "Estimated cost: $0.0032" in await page.inner_text("#cost")  # 12 s: 0.002 + 0.0012
        duration = await page.evaluate("() => document.getElementById('player').duration")
        assert duration == pytest.approx(12.0, abs=0.05)
        # Click a line: the player seeks there and the line is highlighted as it plays.
        caller_line = page.locator("#transcript li.caller").first
        await caller_line.click()
        at = float(await caller_line.get_attribute("data-at") or "0")
        await wait_js(page, f"Math.abs(document.getElementById('player').currentTime - {at}) < 0.6")
        await wait_js(page, "document.querySelector('#transcript li.caller.playing') !== null")
        await page.evaluate("() => document.getElementById('player').pause()")
        shot = tmp_path / "call-page.png"
        print(f"screenshot: {shot}")
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        # Downloads: the JSON and the recording, with the session cookie.
        json_href = await page.get_attribute("#download-json", "href")
        wav_href = await page.get_attribute("#download-recording", "href")
        cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
        async with httpx.AsyncClient(base_url=server.base_url, cookies=cookies) as client:
            data = (await client.get(json_href or "")).json()
            assert data["call_control_id"] == "v3:call-0" and len(data["turns"]) == 5
            wav = await client.get(wav_href or "")
            assert wav.status_code == 200 and wav.content[:4] == b"RIFF"

        # The overview draws its charts.
        await page.goto(f"{server.base_url}/dashboard/overview")
        await page.wait_for_selector("#chart-calls svg rect.bar", state="attached")
        assert await page.locator("#chart-calls rect.bar").count() == 14
        assert await page.locator("#chart-v2v path.line").count() == 2
        assert await page.locator("#chart-reasons rect.bar").count() == 2  # caller_hangup, error
        assert "7 calls" in await page.inner_text("#totals")
        assert errors == []


async def test_call_page_reads_on_a_phone_screen(records_server: tuple[BackgroundServer, Path]) -> None:
    server, tmp_path = records_server
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        await sign_in(page, server.base_url, next_path="/dashboard/calls/v3:call-1")
        await page.wait_for_selector("#waveform[data-drawn]")
        # Nothing wider than the screen: the layout stacks instead of scrolling sideways.
        overflow = await page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1
        await page.screenshot(path=str(tmp_path / "call-page-phone.png"), full_page=True)
        await page.goto(f"{server.base_url}/dashboard")
        await page.wait_for_selector("#calls tr.call-row")


def test_console_list_api_pages_and_filters(records_server: tuple[BackgroundServer, Path]) -> None:
    server, _ = records_server
    with httpx.Client(base_url=server.base_url) as client:
        client.post("/login", data={"password": PASSWORD})
        seen: list[str] = []
        cursor = ""
        for _ in range(5):
            page = client.get("/console/api/calls", params={"limit": 3, "cursor": cursor}).json()
            seen += [row["call_control_id"] for row in page["calls"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert len(seen) == len(set(seen)) == 7  # every call once, newest first
        assert seen[0] == "v3:call-outbound"
        by_number = client.get("/console/api/calls", params={"q": "+1 555 777 0000"}).json()["calls"]
        assert [row["call_control_id"] for row in by_number] == ["v3:call-outbound"]
        assert by_number[0]["from_masked"] == "+1••••••0000"
        today = time.strftime("%Y-%m-%d", time.gmtime())
        recent = client.get("/console/api/calls", params={"since": today, "until": today}).json()["calls"]
        assert {row["call_control_id"] for row in recent} >= {"v3:call-outbound"}
        assert all(row["started_at"].startswith(today) for row in recent)
        assert client.get("/console/api/calls", params={"direction": "sideways"}).status_code == 422
        assert client.get("/console/api/calls", params={"since": "yesterday"}).status_code == 422
        assert client.get("/console/api/calls", params={"cursor": "not-a-cursor"}).status_code == 400
        assert client.get("/console/api/calls/v3:nope").status_code == 404
        assert client.get("/console/api/calls/v3:call-outbound/recording").status_code == 404
