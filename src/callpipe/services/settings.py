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
    """A voice's settings: ``voice`` (Pipecat's older ``voice_id``) and ``language``."""

    voice: str | None = None
    language: str | None = None


@dataclass(kw_only=True)
class STTSettings(ServiceSettings):
    """A speech recogniser's settings."""

    language: str | None = None


def pick(*values: Any) -> Any:
    """The first value that is not ``None`` (settings first, then keywords, then the default)."""
    return next((v for v in values if v is not None), None)


def base_url_from_env(variable: str, given: str | None, default: str) -> str:
    """``given`` if the bot passed one, else ``$variable`` if set, else ``default``.

    So a ported bot that passes no URL reaches a proxy, a self-hosted model or a test
    fake when ``OPENAI_BASE_URL`` / ``DEEPGRAM_BASE_URL`` / ``CARTESIA_BASE_URL`` is set.
    """
    return (given or os.environ.get(variable) or default).rstrip("/")
