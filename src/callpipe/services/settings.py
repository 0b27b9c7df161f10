"""Pipecat's service ``Settings`` objects: ``OpenAILLMService.Settings(system_instruction=...)``.

Pipecat >= 0.0.105 configures services with a settings object instead of keyword
arguments (``settings=CartesiaTTSService.Settings(voice=...)``). These are the fields the
callpipe services use; a field left ``None`` keeps the service's own default, and a value
given both ways (``model=`` and ``settings.model``) is taken from ``settings``.
Also: :func:`base_url_from_env`, the provider base URL a ported bot gets without an edit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DeepgramSTTSettings",
    "LLMSettings",
    "STTSettings",
    "ServiceSettings",
    "TTSSettings",
    "base_url_from_env",
    "pick",
]


@dataclass(kw_only=True)
class ServiceSettings:
    """Fields every service has: ``model``; ``extra`` (provider options, kept for the record)."""

    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class LLMSettings(ServiceSettings):
    """An LLM's settings; ``system_instruction`` is sent as the first (system) message."""

    system_instruction: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass(kw_only=True)
class TTSSettings(ServiceSettings):
    """A voice's settings: ``voice`` (``voice_id`` is Pipecat's alias of it) and ``language``."""

    voice: str | None = None
    voice_id: str | None = None
    language: str | None = None

    def __post_init__(self) -> None:
        self.voice = pick(self.voice, self.voice_id)


@dataclass(kw_only=True)
class STTSettings(ServiceSettings):
    """A speech recogniser's settings."""

    language: str | None = None


@dataclass(kw_only=True)
class DeepgramSTTSettings(STTSettings):
    """Deepgram's live options as Pipecat's ``DeepgramSTTService.Settings`` names them.

    ``endpointing``: milliseconds of silence that end an utterance, or ``False`` for none.
    The other options become query parameters of the stream (``extra`` too).
    """

    endpointing: int | bool | None = None
    smart_format: bool | None = None
    punctuate: bool | None = None
    numerals: bool | None = None
    profanity_filter: bool | None = None
    diarize: bool | None = None
    utterance_end_ms: int | None = None

    def query_params(self) -> dict[str, str]:
        """The options that were set, as Deepgram query parameters."""
        options = {
            "smart_format": self.smart_format,
            "punctuate": self.punctuate,
            "numerals": self.numerals,
            "profanity_filter": self.profanity_filter,
            "diarize": self.diarize,
            "utterance_end_ms": self.utterance_end_ms,
            **self.extra,
        }
        return {
            k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items() if v is not None
        }


def pick(*values: Any) -> Any:
    """The first value that is not ``None`` (settings first, then keywords, then the default)."""
    return next((v for v in values if v is not None), None)


def base_url_from_env(variable: str, given: str | None, default: str) -> str:
    """``given`` if the bot passed one, else ``$variable`` if set, else ``default``.

    So a ported bot that passes no URL reaches a proxy, a self-hosted model or a test
    fake when ``OPENAI_BASE_URL`` / ``DEEPGRAM_BASE_URL`` / ``CARTESIA_BASE_URL`` is set.
    """
    return (given or os.environ.get(variable) or default).rstrip("/")
