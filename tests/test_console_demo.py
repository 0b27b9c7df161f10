"""``callpipe demo --serve``: after the call the console keeps serving, with the call's page."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from pathlib import Path

import httpx
import pytest

from callpipe.server.background import free_port
from tests.console_support import chromium, sign_in

pytestmark = pytest.mark.slow
pytest.importorskip("faster_whisper", reason="needs callpipe[local] (the test command installs it)")

PASSWORD = "demo-console-pass-Ww28"


async def _wait_for_call(base_url: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base_url) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.post("/login", data={"password": PASSWORD})).status_code == 303:
                    calls = (await client.get("/console/api/calls")).json()["calls"]
                    if calls and calls[0]["end_reason"] != "in_progress":
                        return str(calls[0]["call_control_id"])
            if time.monotonic() > deadline:
                raise AssertionError("the console did not serve the demo call in time")
            await asyncio.sleep(0.5)


async def test_demo_serve_prints_the_call_page_and_serves_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from callpipe.demo import run_demo_calls

    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CONSOLE_PASSWORD", PASSWORD)
    port = free_port()
    lines = ["Hi, I'd like to book a cleaning.", "No, that's all, thanks."]
    demo = asyncio.ensure_future(
        run_demo_calls(
            1,
            lines=lines,
            record=str(tmp_path / "c.wav"),
            transcript=str(tmp_path / "c.json"),
            serve_port=port,
        )
    )
    try:
        ccid = await _wait_for_call(f"http://127.0.0.1:{port}", timeout=180)
        printed = capsys.readouterr().out
        match = re.search(r"this call:\s+(\S+)", printed)
        assert match, printed
        assert match.group(1) == f"http://127.0.0.1:{port}/dashboard/calls/{ccid}"
        assert f"password:   {PASSWORD}" in printed
        async with chromium() as browser:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await sign_in(
                page,
                f"http://127.0.0.1:{port}",
                PASSWORD,
                next_path=match.group(1)[len(f"http://127.0.0.1:{port}") :],
            )
            await page.wait_for_selector("#waveform[data-drawn]")
            transcript = await page.inner_text("#transcript")
            assert "cleaning" in transcript.lower()
            assert await page.locator("#waterfall .waterfall-row").count() >= 2
            # Each reply's latency says how much of it was waiting for the shared Whisper and
            # Piper workers (the record's queue_wait_ms, from the models' own queue waits).
            waits = await page.eval_on_selector_all(
                "#transcript .flag.v2v", "els => els.map((e) => e.dataset.queueWaitMs)"
            )
            assert len(waits) >= 2 and all(w and float(w) >= 0 for w in waits), waits
            await page.screenshot(path=str(tmp_path / "demo-call.png"), full_page=True)
            print(f"screenshot: {tmp_path / 'demo-call.png'}")
        assert not demo.done()  # still serving
    finally:
        demo.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(demo, 10)
    assert (await asyncio.to_thread(os.path.getsize, tmp_path / "c.wav")) > 1000
