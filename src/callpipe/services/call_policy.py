"""What the LLM's phone tools may do: transfer only to allowed numbers, sane DTMF only.

A caller talks to the model, and the model calls ``transfer_call`` with whatever number it
was talked into: a premium-rate or international destination is toll fraud billed to the
operator. So a transfer goes only to a number on the allowlist (``TRANSFER_ALLOWED_NUMBERS``:
exact E.164 numbers, or prefixes ending in ``*`` such as ``+1555*``) or one the bot's own
code passed explicitly; anything else is refused and the model is told why. DTMF is
limited in length and to the keys Telnyx plays (``0-9 A-D * #`` and ``w``/``W`` pauses).
Pure logic, no I/O.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["MAX_DTMF_DIGITS", "PolicyError", "TransferPolicy", "check_dtmf"]

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_PREFIX = re.compile(r"^\+\d{1,14}\*$")
_DTMF = re.compile(r"^[0-9A-Da-d*#wW]+$")
MAX_DTMF_DIGITS = 32


class PolicyError(ValueError):
    """A tool call the policy refuses; the message is what the model is told."""


def _entries(text: str | Iterable[str] | None) -> list[str]:
    if text is None:
        return []
    parts = text.split(",") if isinstance(text, str) else list(text)
    return [part.strip().replace(" ", "") for part in parts if part.strip()]


@dataclass(frozen=True, slots=True)
class TransferPolicy:
    """Exact numbers and ``+prefix*`` patterns a transfer may go to (empty: none at all)."""

    numbers: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    @classmethod
    def parse(cls, allowed: str | Iterable[str] | None) -> TransferPolicy:
        """From ``"+15550100,+1555*"`` or a list of such entries; ValueError naming a bad one."""
        numbers: set[str] = set()
        prefixes: list[str] = []
        for entry in _entries(allowed):
            if E164.match(entry):
                numbers.add(entry)
            elif _PREFIX.match(entry):
                prefixes.append(entry[:-1])
            else:
                raise ValueError(
                    f"TRANSFER_ALLOWED_NUMBERS: {entry!r} is neither an E.164 number (+15551234567) "
                    "nor a prefix ending in * (+1555*)"
                )
        return cls(frozenset(numbers), tuple(prefixes))

    @classmethod
    def from_env(cls, extra: Iterable[str] = ()) -> TransferPolicy:
        """``TRANSFER_ALLOWED_NUMBERS`` from the environment plus ``extra`` (the bot's own)."""
        return cls.parse([*_entries(os.environ.get("TRANSFER_ALLOWED_NUMBERS")), *extra])

    def check(self, number: str) -> str:
        """The number, normalised, if a transfer may go there; else :class:`PolicyError`."""
        normalised = number.strip().replace(" ", "").replace("-", "")
        if not E164.match(normalised):
            raise PolicyError(f"{number!r} is not an E.164 phone number; the transfer was not made")
        if normalised in self.numbers or any(normalised.startswith(p) for p in self.prefixes):
            return normalised
        raise PolicyError(
            f"transfers to {normalised} are not allowed on this line; the transfer was not made. "
            "Offer the caller another way to reach the person."
        )


def check_dtmf(digits: str) -> str:
    """``digits`` if Telnyx may play them (at most :data:`MAX_DTMF_DIGITS` keys); else PolicyError."""
    if not digits or len(digits) > MAX_DTMF_DIGITS:
        raise PolicyError(f"send between 1 and {MAX_DTMF_DIGITS} keys at a time")
    if not _DTMF.match(digits):
        raise PolicyError("DTMF keys are 0-9, A-D, * and #, with w or W for a pause")
    return digits
