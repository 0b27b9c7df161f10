"""Server settings, from the environment and a ``.env`` file (see ``.env.example``)."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ServerSettings", "SettingsError"]


class SettingsError(ValueError):
    """A required setting is missing or wrong; the message names it and what it is for."""


class ServerSettings(BaseSettings):
    """Everything ``callpipe serve`` reads from its environment.

    Secrets are :class:`~pydantic.SecretStr`, so they never appear in logs or reprs.
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Telnyx account and application.
    telnyx_api_key: SecretStr | None = None
    telnyx_public_key: str | None = None
    telnyx_account_sid: str | None = None
    telnyx_application_sid: str | None = None
    telnyx_connection_id: str | None = None
    telnyx_phone_number: str | None = None
    telnyx_api_base_url: str = "https://api.telnyx.com/v2"

    # This server.
    public_url: str | None = None
    callpipe_secret: SecretStr | None = None
    callpipe_api_key: SecretStr | None = None
    callpipe_insecure_streams: bool = False
    callpipe_insecure_webhooks: bool = False
    callpipe_api_docs: bool = False
    texml_path_secret: SecretStr | None = None
    stream_codec: str = "PCMU"  # what Telnyx takes back (bidirectionalCodec); it may send another
    stream_sample_rate: int = 8000
    stream_track: str = "inbound_track"  # Call Control dials: inbound_track, outbound_track, both_tracks
    stream_target_legs: str | None = (
        None  # Call Control dials: self, opposite, both (unset: Telnyx's default)
    )
    stream_token_ttl_secs: float = Field(default=600.0, gt=0)
    unbound_token_ttl_secs: float = Field(default=90.0, gt=0)
    answer_url_ttl_secs: float = Field(default=300.0, gt=0)
    dial_mode: str = "texml"  # "texml" (TeXML Calls API) or "call_control" (dial with stream_url)
    dial_rate_per_sec: float = Field(default=10.0, gt=0)
    max_call_secs: float = Field(default=1800.0, gt=0)
    idle_timeout_secs: float = Field(default=300.0, gt=0)
    shutdown_grace_secs: float = Field(default=30.0, ge=0)
    max_body_bytes: int = Field(default=8192, gt=0)
    max_webhook_bytes: int = Field(default=65536, gt=0)
    idempotency_ttl_secs: float = Field(default=86400.0, gt=0)
    transfer_allowed_numbers: str | None = None
    # Telnyx-side actions at the start of every call (services/telnyx_call.py).
    telnyx_recording: str = "off"  # off | wav | mp3: Telnyx's record_start
    telnyx_recording_channels: str = "single"  # single | dual (one channel per leg)
    telnyx_noise_suppression: str = "off"  # off | inbound | outbound | both: suppression_start

    # Several instances and workers (see docs/architecture.md, "Several instances").
    max_calls: int = Field(default=0, ge=0)  # live calls per process; 0 = no limit

    # Call records (see README "Call records"): recordings and what a record keeps.
    recording: bool = True  # RECORDING=off: no stereo recording of calls
    recording_dir: str | None = None  # default <DATA_DIR>/recordings
    record_call_params: bool = True  # RECORD_CALL_PARAMS=off: no dial-out body / stream query params
    internal_host: str = "127.0.0.1"  # the control listener other instances forward to
    internal_port: int = Field(default=0, ge=0, le=65535)  # 0 = an ephemeral port
    internal_url: str | None = None  # how other instances reach it; "{port}" = the bound port
    metrics_port: int | None = Field(default=None, ge=0, le=65535)  # /metrics there, unauthenticated
    metrics_host: str = "127.0.0.1"
    forward_timeout_secs: float = Field(default=2.0, gt=0)
    # Call records (the store: see callpipe.store).
    records: bool = True  # RECORDS=off keeps no records (and no shared state between instances)
    database_url: SecretStr | None = None  # unset: SQLite in DATA_DIR; postgresql://... for several instances
    data_dir: str = "./callpipe-data"
    retention_days: float = Field(default=30.0, ge=0)  # 0 keeps records and recordings forever
    call_webhook_url: str | None = None
    call_webhook_secret: SecretStr | None = None  # unset: CALLPIPE_SECRET signs the webhook

    # Web console (/dashboard, /phone): its password (default: CALLPIPE_API_KEY), how long a
    # sign-in lasts, and the per-unit prices (USD) of the call pages' cost estimate.
    console_password: SecretStr | None = None
    console_session_hours: float = Field(default=12.0, gt=0)
    price_telephony_per_min: float = Field(default=0.0, ge=0)
    price_stt_per_min: float = Field(default=0.0, ge=0)
    price_llm_prompt_per_million: float = Field(default=0.0, ge=0)
    price_llm_completion_per_million: float = Field(default=0.0, ge=0)
    price_tts_per_million_chars: float = Field(default=0.0, ge=0)

    # Providers (used by the built-in assistant).
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    deepgram_api_key: SecretStr | None = None
    deepgram_base_url: str | None = None
    cartesia_api_key: SecretStr | None = None
    cartesia_base_url: str | None = None

    def secret(self, name: str) -> str | None:
        """The plain value of a secret setting, or ``None``."""
        value = getattr(self, name)
        return value.get_secret_value() if isinstance(value, SecretStr) else value

    def require(self, *names: str, purpose: str) -> None:
        """Raise :class:`SettingsError` naming every missing setting and what it is for."""
        missing = [name.upper() for name in names if not self.secret(name)]
        if missing:
            raise SettingsError(f"missing setting {', '.join(missing)}: needed {purpose} (see .env.example)")

    def check_for_serving(self) -> None:
        """Fail at start-up, with a clear message, on settings ``callpipe serve`` cannot run without."""
        self.require(
            "public_url", purpose="to tell Telnyx where to stream calls (e.g. https://bot.example.com)"
        )
        if not self.callpipe_insecure_streams:
            self.require(
                "callpipe_secret",
                purpose="to sign stream URLs so only Telnyx can open calls (or set CALLPIPE_INSECURE_STREAMS=1 for local development)",
            )
        path_secret = self.secret("texml_path_secret")
        if path_secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{16,}", path_secret):
            raise SettingsError(
                "TEXML_PATH_SECRET must be at least 16 URL-safe characters (A-Z a-z 0-9 _ -), e.g. "
                'python -c "import secrets; print(secrets.token_urlsafe(24))"'
            )
        if self.call_webhook_url and self.records:
            if not (self.secret("call_webhook_secret") or self.secret("callpipe_secret")):
                raise SettingsError(
                    "missing setting CALL_WEBHOOK_SECRET (or CALLPIPE_SECRET): needed to sign the post-call "
                    "webhooks sent to CALL_WEBHOOK_URL (see .env.example)"
                )
            if not self.call_webhook_url.startswith(("http://", "https://")):
                raise SettingsError("CALL_WEBHOOK_URL must be an http:// or https:// URL")
        if self.transfer_allowed_numbers:
            from callpipe.services.call_policy import TransferPolicy

            try:
                TransferPolicy.parse(self.transfer_allowed_numbers)
            except ValueError as exc:  # a typo fails start-up, not the first transfer
                raise SettingsError(str(exc)) from None
        from callpipe.server.stream_options import from_settings

        try:
            from_settings(self)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if self.dial_mode not in ("texml", "call_control"):
            raise SettingsError(f"DIAL_MODE must be 'texml' or 'call_control', not {self.dial_mode!r}")
        for name, allowed in (
            ("telnyx_recording", ("off", "wav", "mp3")),
            ("telnyx_recording_channels", ("single", "dual")),
            ("telnyx_noise_suppression", ("off", "inbound", "outbound", "both")),
        ):
            if getattr(self, name) not in allowed:
                raise SettingsError(
                    f"{name.upper()} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}"
                )
        if (self.telnyx_recording != "off" or self.telnyx_noise_suppression != "off") and not self.secret(
            "telnyx_api_key"
        ):
            raise SettingsError(
                "TELNYX_RECORDING / TELNYX_NOISE_SUPPRESSION need TELNYX_API_KEY (see .env.example)"
            )

    def check_for_dial_out(self) -> None:
        """Settings that ``POST /start`` needs (checked at start-up when dial-out is on)."""
        self.require("telnyx_api_key", purpose="to place outbound calls through Telnyx's API")
        self.require("telnyx_phone_number", purpose="as the caller id of outbound calls")
        self.require("callpipe_api_key", purpose="to authenticate POST /start requests")
        if self.dial_mode == "texml":
            self.require(
                "telnyx_account_sid",
                "telnyx_application_sid",
                purpose="to place outbound calls with the TeXML Calls API",
            )
        else:
            self.require("telnyx_connection_id", purpose="to dial outbound calls with Call Control")

    @property
    def dial_out_configured(self) -> bool:
        """Whether the settings for dial-out are present."""
        try:
            self.check_for_dial_out()
        except SettingsError:
            return False
        return True
