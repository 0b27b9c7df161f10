"""Dial-in bot in the style of Pipecat 1.4's Telnyx guide, on callpipe (the imports are the only difference).

Serve it with ``callpipe serve examples/pipecat_style/inbound_bot.py`` or, as a Pipecat user
would, ``python inbound_bot.py -t telnyx --proxy YOUR_HOST``. It answers the phone for a
bicycle repair shop: Deepgram hears the caller, an OpenAI model answers, Cartesia speaks.
"""

import logging
import os

from callpipe.audio.vad.silero import SileroVADAnalyzer
from callpipe.frames.frames import LLMRunFrame
from callpipe.pipeline.pipeline import Pipeline
from callpipe.pipeline.worker import PipelineParams, PipelineWorker
from callpipe.processors.aggregators.llm_context import LLMContext
from callpipe.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from callpipe.runner.types import RunnerArguments
from callpipe.runner.utils import create_transport
from callpipe.services.cartesia.tts import CartesiaTTSService
from callpipe.services.deepgram.stt import DeepgramSTTService
from callpipe.services.openai.llm import OpenAILLMService
from callpipe.transports.base_transport import BaseTransport
from callpipe.transports.websocket.fastapi import FastAPIWebsocketParams
from callpipe.workers.runner import WorkerRunner

logger = logging.getLogger("inbound_bot")

SHOP_PROMPT = (
    "You take phone calls for Spoke & Chain, a bicycle repair shop open 9 to 6, Tuesday to Saturday. "
    "Answer in one or two short spoken sentences, with no lists, symbols or markup."
)
VOICE = "a0e99841-438c-4a64-b679-ae501e7d6091"


async def run_bot(transport: BaseTransport, handle_sigint: bool) -> None:
    """The conversation: speech in, an answer out, until the caller hangs up."""
    stt = DeepgramSTTService(api_key=os.getenv("DEEPGRAM_API_KEY"))
    llm = OpenAILLMService(
        api_key=os.getenv("OPENAI_API_KEY"),
        settings=OpenAILLMService.Settings(system_instruction=SHOP_PROMPT),
    )
    tts = CartesiaTTSService(
        api_key=os.getenv("CARTESIA_API_KEY"),
        settings=CartesiaTTSService.Settings(voice=VOICE),
    )

    context = LLMContext()
    # Pipecat >= 1.0 gives the VAD to the user aggregator (the transport has none).
    user_aggregator, assistant_aggregator = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    )

    pipeline = Pipeline(
        [
            transport.input(),
            stt,
            user_aggregator,
            llm,
            tts,
            transport.output(),
            assistant_aggregator,
        ]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000, enable_metrics=True),
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(transport, client):
        # Greet first: the model speaks before the caller says anything.
        context.add_message({"role": "developer", "content": "Greet the caller and offer your help."})
        await worker.queue_frames([LLMRunFrame()])

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=handle_sigint)
    await runner.add_workers(worker)
    await runner.run()


async def bot(runner_args: RunnerArguments):
    """Entry point: one call."""
    transport = await create_transport(
        runner_args,
        {"telnyx": lambda: FastAPIWebsocketParams(audio_in_enabled=True, audio_out_enabled=True)},
    )
    if runner_args.call_data:
        logger.info("call to %s", runner_args.call_data.to_number)
    await run_bot(transport, runner_args.handle_sigint)


if __name__ == "__main__":
    from callpipe.runner.run import main

    main()
