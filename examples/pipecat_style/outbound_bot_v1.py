"""Dial-out bot in the style of Pipecat 1.0's Telnyx guide (the bot builds its own serializer)."""

import logging
import os

from callpipe.audio.vad.silero import SileroVADAnalyzer
from callpipe.pipeline.pipeline import Pipeline
from callpipe.pipeline.runner import PipelineRunner
from callpipe.pipeline.task import PipelineParams, PipelineTask
from callpipe.processors.aggregators.llm_context import LLMContext
from callpipe.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from callpipe.runner.types import RunnerArguments
from callpipe.runner.utils import parse_telephony_websocket
from callpipe.serializers.telnyx import TelnyxFrameSerializer
from callpipe.services.cartesia.tts import CartesiaTTSService
from callpipe.services.deepgram.stt import DeepgramSTTService
from callpipe.services.openai.llm import OpenAILLMService
from callpipe.transports.base_transport import BaseTransport
from callpipe.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)

logger = logging.getLogger("outbound_bot_v1")

REMINDER_PROMPT = (
    "You are calling on behalf of Spoke & Chain bicycle repair to say the customer's bike is ready "
    "for pick-up. Keep every answer to one or two short spoken sentences without symbols."
)


async def run_bot(transport: BaseTransport, handle_sigint: bool) -> None:
    """Wait for the callee's hello, then talk."""
    stt = DeepgramSTTService(api_key=os.getenv("DEEPGRAM_API_KEY"), audio_passthrough=True)
    llm = OpenAILLMService(
        api_key=os.getenv("OPENAI_API_KEY"),
        settings=OpenAILLMService.Settings(system_instruction=REMINDER_PROMPT),
    )
    tts = CartesiaTTSService(
        api_key=os.getenv("CARTESIA_API_KEY"),
        settings=CartesiaTTSService.Settings(voice="a0e99841-438c-4a64-b679-ae501e7d6091"),
    )
    context = LLMContext()
    user_aggregator, assistant_aggregator = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    )
    pipeline = Pipeline(
        [transport.input(), stt, user_aggregator, llm, tts, transport.output(), assistant_aggregator]
    )
    task = PipelineTask(
        pipeline, params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000)
    )

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        await task.cancel()

    await PipelineRunner(handle_sigint=handle_sigint).run(task)


async def bot(runner_args: RunnerArguments):
    """Entry point: one answered call."""
    transport_type, call_data = await parse_telephony_websocket(runner_args.websocket)
    logger.info("%s call answered by %s", transport_type, call_data.to_number)
    serializer = TelnyxFrameSerializer(
        stream_id=call_data["stream_id"],
        outbound_encoding=call_data["outbound_encoding"],
        inbound_encoding="PCMU",
        call_control_id=call_data["call_control_id"],
        api_key=os.getenv("TELNYX_API_KEY"),
    )
    transport = FastAPIWebsocketTransport(
        websocket=runner_args.websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, serializer=serializer
        ),
    )
    await run_bot(transport, runner_args.handle_sigint)
