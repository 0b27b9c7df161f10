"""Pipecat's per-frame costs through its TelnyxFrameSerializer (run in Pipecat's venv)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipecat.frames.frames import OutputAudioRawFrame
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.serializers.telnyx import TelnyxFrameSerializer

from micro_common import media_message, pcm_frame, time_async, ulaw_frame


def serializer(in_rate: int) -> TelnyxFrameSerializer:
    s = TelnyxFrameSerializer(
        stream_id="s",
        outbound_encoding="PCMU",
        inbound_encoding="PCMU",
        params=TelnyxFrameSerializer.InputParams(auto_hang_up=False),
    )
    setup = FrameProcessorSetup.__new__(FrameProcessorSetup)
    setup.audio_in_sample_rate = in_rate  # type: ignore[attr-defined]
    setup.audio_out_sample_rate = in_rate  # type: ignore[attr-defined]
    asyncio.run(s.setup(setup))
    return s


def main() -> None:
    message = media_message(ulaw_frame())
    s8, s16 = serializer(8000), serializer(16000)
    out8 = OutputAudioRawFrame(audio=pcm_frame(8000), sample_rate=8000, num_channels=1)
    out24 = OutputAudioRawFrame(audio=pcm_frame(24000), sample_rate=24000, num_channels=1)
    results = {
        "parse + decode (PCMU -> 8 kHz)": time_async(lambda: s8.deserialize(message)),
        "parse + decode + resample (PCMU -> 16 kHz)": time_async(lambda: s16.deserialize(message)),
        "encode + build (8 kHz -> PCMU media)": time_async(lambda: s8.serialize(out8)),
        "resample + encode + build (24 kHz -> PCMU media)": time_async(lambda: s8.serialize(out24)),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
