"""Where the VAD runs: Pipecat >= 1.0 hands it to the user aggregator, callpipe runs it in the input.

Pipecat 1.x bots write ``LLMContextAggregatorPair(context,
user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer()))`` and give the
transport no VAD. callpipe runs the VAD where the audio arrives (the input transport feeds
it the decoded PCM and the shared batcher answers there), so before a pipeline starts
:func:`place_vad` moves an aggregator's analyzer into the input transport that has none.
The rest (speaking frames, interruptions, latency) is then the same as with the VAD on
the transport.

Duck-typed so this layer does not import the transports or services: an input transport
has ``vad_analyzer`` and ``use_vad_analyzer(analyzer)``; a processor that needs a VAD to
end turns (the user aggregator) has ``needs_vad = True`` and an optional ``vad_analyzer``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger("callpipe.pipeline")

__all__ = ["NO_VAD_WARNING", "place_vad"]

NO_VAD_WARNING = (
    "this pipeline has a user context aggregator but no VAD anywhere: the caller's turns will "
    "never end and the bot will never answer. Give the aggregator one "
    "(LLMContextAggregatorPair(context, user_params=LLMUserAggregatorParams("
    "vad_analyzer=SileroVADAnalyzer()))) or the transport one "
    "(FastAPIWebsocketParams(vad_analyzer=SileroVADAnalyzer()))"
)


def place_vad(processors: Sequence[Any]) -> None:
    """Move aggregators' VADs into input transports without one; warn if turns cannot end."""
    inputs = [p for p in processors if hasattr(p, "use_vad_analyzer")]
    needy = [p for p in processors if getattr(p, "needs_vad", False)]
    for processor in needy:
        analyzer = getattr(processor, "vad_analyzer", None)
        if analyzer is None or any(i.vad_analyzer is analyzer for i in inputs):
            continue
        target = next((i for i in inputs if i.vad_analyzer is None), None)
        if target is not None:
            target.use_vad_analyzer(analyzer)
            logger.debug("running %s's VAD in %s", processor.name, target.name)
        elif inputs:
            logger.info(
                "%s has a VAD but the transport runs its own: the transport's is used", processor.name
            )
    transport_vad = any(i.vad_analyzer is not None for i in inputs)
    aggregator_vad = any(getattr(p, "vad_analyzer", None) is not None for p in needy)
    if needy and not transport_vad and not aggregator_vad:
        logger.warning(NO_VAD_WARNING)
