"""Speech and language services, one module per provider, behind small interfaces.

* :mod:`callpipe.services.stt` - :class:`STTService` (streaming), :class:`SegmentedSTTService`
* :mod:`callpipe.services.llm` - :class:`LLMService`, :class:`LLMContext`, the context aggregators
* :mod:`callpipe.services.tts` - :class:`TTSService`

Providers: ``deepgram`` (STT), ``openai`` (LLM, any OpenAI-compatible server),
``cartesia`` (TTS), and the embedded offline defaults ``whisper`` (faster-whisper STT),
``piper`` (Piper TTS, GPL - optional extra) and ``scripted`` (a deterministic assistant
behind the LLM interface).
"""

from callpipe.services.llm import (
    FunctionCallParams,
    FunctionSchema,
    LLMContext,
    LLMContextAggregatorPair,
    LLMService,
    TelephonyTools,
)
from callpipe.services.stt import SegmentedSTTService, STTService
from callpipe.services.tts import TTSService

__all__ = [
    "FunctionCallParams",
    "FunctionSchema",
    "LLMContext",
    "LLMContextAggregatorPair",
    "LLMService",
    "STTService",
    "SegmentedSTTService",
    "TTSService",
    "TelephonyTools",
]
