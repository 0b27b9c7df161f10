"""Logging with the call id on every line.

Each call runs in its own tree of asyncio tasks; :data:`call_id` is a context variable
set when the call starts, so every task created for the call inherits it and every log
line it writes carries it (via :class:`CallIdFilter`), without passing ids around.
"""

from __future__ import annotations

import contextvars
import logging

call_id: contextvars.ContextVar[str] = contextvars.ContextVar("callpipe_call_id", default="-")

logger = logging.getLogger("callpipe")


def mask_number(number: object) -> str:
    """A phone number for logs: ``+15551234567`` -> ``+1555•••4567`` (personal data stays in the record).

    Anything with fewer than 8 digits shows only its last two; ``None``/empty is ``-``.
    """
    text = "" if number is None else str(number)
    if not text:
        return "-"
    if len(text) >= 9:
        return f"{text[:5]}•••{text[-4:]}"
    return f"•••{text[-2:]}"


class CallIdFilter(logging.Filter):
    """Adds ``record.call_id`` from the current context to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach the call id; never drops a record."""
        if not hasattr(record, "call_id"):
            record.call_id = call_id.get()
        return True


def configure_logging(level: int | str = logging.INFO) -> None:
    """Log to stderr as ``time level [call-id] logger: message`` (used by the CLI)."""
    handler = logging.StreamHandler()
    handler.addFilter(CallIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(call_id)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
