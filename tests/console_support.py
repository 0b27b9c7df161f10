"""Shared by the console tests: a headless Chromium (Playwright), sign-in, sample records."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import math
import shutil
import subprocess
import tempfile
import threading
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from callpipe.records.model import CallEvent, CallRecord, Latency, ToolCall, Turn, Usage

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "console-pass-Tt61"


class _SharedChromium:
    """One headless Chromium for the whole test session, reached over its DevTools port.

    Launching Chromium costs about a second on a loaded box; tests without launch
    arguments of their own share this one, each in fresh browser contexts (cookies and
    storage are per context, so nothing leaks between tests). Stopped at exit.
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoint = ""
        self.profile: str | None = None

    def start(self) -> str:
        if self.process is not None and self.process.poll() is None:
            return self.endpoint
        self.profile = tempfile.mkdtemp(prefix="callpipe-chromium-")
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                *CHROMIUM_ARGS,
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self.process.stderr is not None
        deadline = time.monotonic() + 30
        for raw in self.process.stderr:  # Chromium prints its endpoint once it listens
            line = raw.decode(errors="replace").strip()
            if line.startswith("DevTools listening on "):
                self.endpoint = line.removeprefix("DevTools listening on ")
                break
            if time.monotonic() > deadline:
                break
        if not self.endpoint:
            self.stop()
            raise RuntimeError("Chromium did not report its DevTools endpoint")
        # Keep reading stderr so Chromium never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        atexit.register(self.stop)
        return self.endpoint

    def _drain(self) -> None:
        process = self.process
        if process is not None and process.stderr is not None:
            for _ in process.stderr:
                pass

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None
        if self.profile:
            shutil.rmtree(self.profile, ignore_errors=True)
            self.profile = None


_shared = _SharedChromium()


@contextlib.asynccontextmanager
async def chromium(*extra_args: str) -> AsyncIterator[Any]:
    """A real headless Chromium (Debian's), driven by Playwright; never downloads a browser.

    Without ``extra_args`` it is the session's shared browser (pages and contexts made
    through it are closed afterwards); with them (a fake microphone...) a browser of its own.
    """
    import os

    import pytest

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/system-deps.sh")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        if extra_args:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])
        else:
            endpoint = await asyncio.to_thread(_shared.start)
            browser = await pw.chromium.connect_over_cdp(endpoint)
        try:
            yield browser
        finally:
            # Over CDP this closes the contexts this test made and disconnects; the shared
            # browser itself goes on for the next test.
            await browser.close()


async def sign_in(page: Any, base_url: str, password: str = PASSWORD, next_path: str = "/dashboard") -> None:
    """Sign in through the real form."""
    from urllib.parse import quote

    await page.goto(f"{base_url}/login?next={quote(next_path, safe='')}")
    await page.fill("#password", password)
    async with page.expect_navigation():
        await page.click("#sign-in")


def stereo_wav(path: Path, secs: float, rate: int = 8000) -> None:
    """A stereo WAV: a tone burst on the left for the caller, on the right for the bot."""
    t = np.arange(int(secs * rate)) / rate
    left = np.where((t % 4.0) < 1.5, 0.3 * np.sin(2 * math.pi * 300 * t), 0.0)
    right = np.where((t % 4.0) >= 2.0, 0.3 * np.sin(2 * math.pi * 500 * t), 0.0)
    pcm = (np.stack([left, right], axis=1) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())


def sample_record(ccid: str, *, started_at: float, recording: Path | None = None) -> CallRecord:
    """A finished call with every kind of thing the call page shows (interruption, tool, DTMF)."""
    t0 = started_at
    latency = Latency(
        vad_stop_ms=200,
        stt_final_ms=310,
        llm_first_token_ms=520,
        tts_first_audio_ms=640,
        first_audio_sent_ms=660,
        heard_ms=700,
    )
    return CallRecord(
        call_control_id=ccid,
        direction="inbound",
        from_="+15550001234",
        to="+15550009876",
        codec="PCMU",
        sample_rate=8000,
        instance="test-1",
        started_at=t0,
        answered_at=t0,
        ended_at=t0 + 12.0,
        end_reason="caller_hangup",
        hangup_by="caller",
        turns=[
            Turn(
                speaker="bot",
                text="Hello, Bright Smile Dental.",
                started_at=t0 + 0.5,
                ended_at=t0 + 1.8,
                heard_text="Hello, Bright Smile Dental.",
                latency=Latency(first_audio_sent_ms=120, heard_ms=160),
            ),
            Turn(
                speaker="caller", text="I'd like to book a cleaning.", started_at=t0 + 2.0, ended_at=t0 + 3.5
            ),
            Turn(
                speaker="bot",
                text="Sure, which day works for you this week?",
                started_at=t0 + 4.2,
                ended_at=t0 + 5.0,
                heard_text="Sure, which day",
                interrupted=True,
                latency=latency,
                tool_calls=[ToolCall(name="find_slot", arguments={"day": "thu"}, result="3pm", at=t0 + 4.0)],
            ),
            Turn(speaker="caller", text="Thursday at three.", started_at=t0 + 5.1, ended_at=t0 + 6.3),
            Turn(
                speaker="bot",
                text="Booked for Thursday at 3 pm.",
                started_at=t0 + 7.0,
                ended_at=t0 + 8.5,
                heard_text="Booked for Thursday at 3 pm.",
                latency=Latency(
                    vad_stop_ms=200,
                    stt_final_ms=280,
                    llm_first_token_ms=450,
                    tts_first_audio_ms=590,
                    first_audio_sent_ms=600,
                    heard_ms=650,
                ),
            ),
        ],
        events=[
            CallEvent(type="dtmf", at=t0 + 9.0, name="5"),
            CallEvent(
                type="webhook", at=t0 + 12.0, name="call.hangup", data={"hangup_cause": "normal_clearing"}
            ),
        ],
        usage=Usage(
            stt_audio_secs={"deepgram": 12.0},
            llm_prompt_tokens={"openai": 900},
            llm_completion_tokens={"openai": 60},
            tts_characters={"cartesia": 95},
        ),
        custom={"outcome": "booked"},
        recording_path=str(recording) if recording else None,
    )


async def wait_js(page: Any, expression: str, timeout: float = 10.0) -> Any:
    """Poll a JS expression until truthy (the pages' CSP forbids Playwright's eval-based waits)."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = await page.evaluate(f"() => ({expression})")
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{expression} not true within {timeout}s")
        await asyncio.sleep(0.1)
