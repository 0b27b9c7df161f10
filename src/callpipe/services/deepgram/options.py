"""The Deepgram service's constructor arguments: Pipecat's ``settings=`` merged in, and checked.

Pure functions, apart from the service so its connection logic reads on its own.
"""

from __future__ import annotations

from collections.abc import Mapping

from callpipe.services.settings import DeepgramSTTSettings, STTSettings, pick

__all__ = ["apply_settings", "check_arguments"]


def apply_settings(
    settings: STTSettings,
    *,
    language: str,
    model: str,
    endpointing_ms: int | None,
    params: Mapping[str, str] | None,
) -> tuple[str, str, int | None, Mapping[str, str] | None]:
    """Pipecat's ``settings=``: its fields win over the keywords (language, model, endpointing, query)."""
    language = pick(settings.language, language)
    model = pick(settings.model, model)
    if isinstance(settings, DeepgramSTTSettings):
        if settings.endpointing is not None and settings.endpointing is not True:
            endpointing_ms = None if settings.endpointing is False else int(settings.endpointing)
        params = {**settings.query_params(), **(params or {})}
    return language, model, endpointing_ms, params


def check_arguments(
    encoding: str, sample_rate: int | None, api_key: str, keepalive_secs: float, reconnect_attempts: int
) -> None:
    """A clear ``ValueError`` for a constructor argument Deepgram or the service cannot use."""
    if encoding not in ("linear16", "mulaw"):
        raise ValueError(f"encoding must be 'linear16' or 'mulaw', got {encoding!r}")
    if sample_rate is not None and sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not api_key:
        raise ValueError("a Deepgram API key is required")
    if keepalive_secs <= 0 or reconnect_attempts < 0:
        raise ValueError("keepalive_secs must be positive and reconnect_attempts not negative")
