"""Helpers the ``callpipe`` sub-commands share: WAV input, loopback checks, argument types."""

from __future__ import annotations

import argparse
import wave
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_CALLER_WAV = "caller_8k.wav"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def read_wav(path: str | Path) -> tuple[bytes, int]:
    """PCM16 mono and rate of a WAV file (stereo is mixed down), with a clear error."""
    try:
        with wave.open(str(path), "rb") as wav:
            if wav.getsampwidth() != 2:
                raise SystemExit(f"{path}: only 16-bit PCM WAV files are supported")
            rate, channels = wav.getframerate(), wav.getnchannels()
            pcm = wav.readframes(wav.getnframes())
    except (OSError, wave.Error) as exc:
        raise SystemExit(f"cannot read {path}: {exc}") from None
    if channels != 1:
        import numpy as np

        samples = np.frombuffer(pcm, dtype=np.int16).reshape(-1, channels).mean(axis=1)
        pcm = samples.astype(np.int16).tobytes()
    return pcm, rate


def default_caller_audio() -> tuple[bytes, int]:
    """The built-in caller sentence that ``call`` and ``load`` say when given nothing else."""
    with resources.as_file(resources.files("callpipe.sim") / "data" / DEFAULT_CALLER_WAV) as path:
        return read_wav(path)


def require_loopback(url: str, allow_remote: bool, what: str) -> None:
    """Simulated traffic goes to this machine unless the user explicitly says otherwise."""
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    if not loopback and not allow_remote:
        raise SystemExit(
            f"{what} only targets this machine (127.0.0.1/localhost) unless you pass --allow-remote"
        )


def parse_params(items: Sequence[str]) -> dict[str, str]:
    """``--param NAME=VALUE`` items as a dict, with a clear error for a malformed one."""
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--param takes NAME=VALUE, got {item!r}")
        params[key] = value
    return params


def fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction from 0 to 1")
    return value


def settings_from(args: argparse.Namespace) -> Any:
    """The server's settings from the environment, with ``--public-url`` applied if given."""
    from callpipe.server.settings import ServerSettings, SettingsError

    overrides: dict[str, Any] = {}
    if getattr(args, "public_url", None):
        overrides["public_url"] = args.public_url
    try:
        return ServerSettings(**overrides)
    except (ValueError, SettingsError) as exc:
        raise SystemExit(f"invalid settings: {exc}") from None
