"""Dial-out bot in the style of Pipecat 1.4's Telnyx guide, on callpipe.

``outbound_server.py`` places the call and runs this bot on the answered call's stream
(or ``callpipe serve examples/pipecat_style/outbound_bot.py`` with ``callpipe dial``). The
person who answers speaks first; the bot then reminds them of their bike's service.
"""

import logging
import os

from callpipe.audio.vad.silero import SileroVADAnalyzer
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

logger = logging.getLogger("outbound_bot")

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
    worker = PipelineWorker(
        pipeline, params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000)
    )

    @transport.event_handler("on_client_connected")
    async def on_client_connected(transport, client):
        logger.info("call answered: waiting for the callee to speak")

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, client):
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=handle_sigint)
    await runner.add_workers(worker)
    await runner.run()


async def bot(runner_args: RunnerArguments):
    """Entry point: one answered call; ``runner_args.body`` is what ``/start`` was given."""
    transport = await create_transport(
        runner_args,
        {"telnyx": lambda: FastAPIWebsocketParams(audio_in_enabled=True, audio_out_enabled=True)},
    )
    logger.info("dial-out body: %s", sorted(runner_args.body))
    await run_bot(transport, runner_args.handle_sigint)


if __name__ == "__main__":
    from callpipe.runner.run import main

    main()
