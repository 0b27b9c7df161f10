"""The dial request's ``answering_machine_detection`` against the fake Telnyx API."""

from __future__ import annotations

from typing import Any

import pytest

from callpipe.telnyx.api import TelnyxClient, TelnyxValidationError


async def test_fake_telnyx_takes_the_documented_amd_values_and_refuses_others(
    fake_telnyx: tuple[str, Any],
) -> None:
    api_base, state = fake_telnyx
    async with TelnyxClient("test-key", base_url=api_base) as client:
        for amd in ("premium", "detect", "detect_beep", "detect_words", "greeting_end", "disabled"):
            data = await client.dial(
                to="+15550002222", from_="+15550001111", connection_id="c", answering_machine_detection=amd
            )
            assert data["call_control_id"]
        with pytest.raises(TelnyxValidationError, match="answering_machine_detection"):
            await client.dial(
                to="+15550002222",
                from_="+15550001111",
                connection_id="c",
                answering_machine_detection="maybe",
            )
    sent = [r.json["answering_machine_detection"] for r in state.requests_to("/v2/calls", "POST")]
    assert sent[:6] == ["premium", "detect", "detect_beep", "detect_words", "greeting_end", "disabled"]
