"""A scripted assistant behind the LLM interface: the offline default "LLM".

No small model that fits in a pip package holds a believable phone call (Gemma-3-270M and
SmolLM2-135M were near chance here), so the offline default is a deterministic dialog
engine that speaks through exactly the same interface as a real LLM: it reads the
conversation context, streams its reply as text, and calls the same tools (``end_call``).
The script is a dental-office receptionist: it greets a known caller by name, answers
questions about opening hours and location, books an appointment (service, day and
time), confirms it, and says goodbye and hangs up.

With ``OPENAI_API_KEY`` (or an OpenAI-compatible ``OPENAI_BASE_URL``) the built-in
assistant runs the same prompt and tools on a real model instead.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from callpipe.pipeline.frames import Frame, SpeculativeTranscriptionFrame, TTSPrefetchFrame
from callpipe.pipeline.processor import FrameDirection
from callpipe.services.llm import LLMChunk, LLMContext, LLMService, ToolCall
from callpipe.services.tts import _SENTENCE_END

_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NUMBERS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12,
}  # fmt: skip
_SERVICES = {
    "cleaning": "a cleaning",
    "checkup": "a checkup",
    "check-up": "a checkup",
    "check up": "a checkup",
    "whitening": "a whitening",
    "filling": "a filling",
    "exam": "an exam",
}


@dataclass(kw_only=True)
class OfficeInfo:
    """What the receptionist knows about the office."""

    business: str = "Bright Smile Dental"
    assistant_name: str = "Ava"
    weekday_hours: str = "Monday to Friday from 8 AM to 6 PM"
    saturday_hours: str = "Saturdays from 9 AM to 1 PM"
    sunday_hours: str = "We're closed on Sundays"
    address: str = "42 Maple Street in Springfield, right next to the post office"
    callers: dict[str, str] = field(default_factory=dict)  # phone number -> first name


@dataclass
class _Booking:
    service: str | None = None
    day: str | None = None
    time: str | None = None
    confirmed: bool = False


def _find_day(text: str) -> str | None:
    for day in _DAYS:
        if day in text:
            return day.capitalize()
    if "tomorrow" in text:
        return "tomorrow"
    return None


_TIME = re.compile(
    r"\b(\d{1,2}|" + "|".join(_NUMBERS) + r")(?::(\d{2}))?\s*(a\.?\s?m\.?|p\.?\s?m\.?|o'?clock)?"
)


def _find_time(text: str) -> str | None:
    """A time of day in ``text``: "3 pm", "3 p.m.", "3:30", "ten am", "at 3", "noon"."""
    if "noon" in text:
        return "12 PM"
    for match in _TIME.finditer(text):
        hour_text, minutes, suffix = match.group(1), match.group(2), match.group(3)
        hour = int(hour_text) if hour_text.isdigit() else _NUMBERS[hour_text]
        preceded_by_at = text[: match.start()].rstrip().endswith("at")
        if not (1 <= hour <= 12 and (suffix or minutes or preceded_by_at)):
            continue
        if suffix and suffix.startswith("a"):
            half = "AM"
        elif suffix and suffix.startswith("p"):
            half = "PM"
        else:
            half = "AM" if 8 <= hour <= 11 else "PM"  # office hours decide
        return f"{hour}:{minutes} {half}" if minutes else f"{hour} {half}"
    return None


def _find_service(text: str) -> str | None:
    for keyword, service in _SERVICES.items():
        if keyword in text:
            return service
    return None


class ScriptedLLMService(LLMService):
    """The dental receptionist script, streamed like an LLM reply (see the module docstring)."""

    def __init__(
        self,
        *,
        office: OfficeInfo | None = None,
        caller_number: str = "",
        outbound: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(model="scripted-receptionist", name=name)
        self.office = office or OfficeInfo()
        self.caller_name = self.office.callers.get(caller_number, "")
        self.outbound = outbound
        self._booking = _Booking()
        self._said_goodbye = False

    def reply_to(self, context: LLMContext) -> tuple[str, bool]:
        """The next reply for ``context`` and whether to hang up after it."""
        messages = context.get_messages()
        last = messages[-1] if messages else {}
        if last.get("role") == "tool":
            return "", False  # a tool ran (hang-up); nothing more to say
        users = [m for m in messages if m.get("role") == "user"]
        if not users:
            return self._greeting(), False
        text = str(users[-1].get("content") or "").lower()
        return self._answer(text)

    def preview(self, text: str) -> str:
        """The reply the caller's ``text`` would get now, without changing the conversation."""
        booking, said_goodbye = self._booking, self._said_goodbye
        self._booking = dataclasses.replace(booking)
        try:
            return self._answer(text.lower())[0]
        finally:
            self._booking, self._said_goodbye = booking, said_goodbye

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """A speculative transcript: have the TTS synthesize the reply's first sentence ahead.

        Safe because the script is deterministic and :meth:`preview` has no side effects;
        if the caller goes on speaking, the prefetched audio is simply never used.
        """
        if isinstance(frame, SpeculativeTranscriptionFrame) and direction is FrameDirection.DOWNSTREAM:
            first = _SENTENCE_END.split(self.preview(frame.text).strip(), maxsplit=1)[0]
            if first:
                await self.push_frame(TTSPrefetchFrame(text=first))
        await super().process_frame(frame, direction)

    def _greeting(self) -> str:
        office = self.office
        if self.outbound:
            hello = f"Hi {self.caller_name}" if self.caller_name else "Hi there"
            return (
                f"{hello}, this is {office.assistant_name} from {office.business}."
                " I'm calling to help you book your next visit. Would you like to schedule one?"
            )
        hello = f"Hi {self.caller_name}, thanks" if self.caller_name else "Thanks"
        return f"{hello} for calling {office.business}, this is {office.assistant_name}. How can I help you today?"

    def _answer(self, text: str) -> tuple[str, bool]:
        office, booking = self.office, self._booking
        if re.search(
            r"\b(bye|goodbye|that's all|that is all|that's it|nothing else|no,? thanks?|no thank you)\b", text
        ):
            self._said_goodbye = True
            name = f", {self.caller_name}" if self.caller_name else ""
            return f"Thanks for calling {office.business}{name}. Have a great day, goodbye!", True
        if "pressed the" in text:
            key = re.search(r"pressed the (\S+) key", text)
            return f"You pressed {key.group(1) if key else 'a key'}. How can I help you?", False
        parts: list[str] = []
        wants_booking = bool(re.search(r"\b(book|appointment|schedule|come in|see the dentist)\b", text))
        service, day, time = _find_service(text), _find_day(text), _find_time(text)
        if service:
            booking.service = service
        if day:
            booking.day = day
        if time:
            booking.time = time
        asked_hours = bool(re.search(r"\b(hours|open|close|closing|opening)\b", text))
        asked_where = bool(re.search(r"\b(where|address|located|location|directions)\b", text))
        if asked_hours:
            if "saturday" in text:
                parts.append(f"We're open {office.saturday_hours}.")
            elif "sunday" in text:
                parts.append(f"{office.sunday_hours}.")
            else:
                parts.append(f"We're open {office.weekday_hours}, and {office.saturday_hours}.")
        if asked_where:
            parts.append(f"We're at {office.address}.")
        booking_in_play = wants_booking or service or ((day or time) and not asked_hours)
        if booking_in_play and not booking.confirmed:
            booking.service = booking.service or "a visit"
            if booking.day and booking.time:
                booking.confirmed = True
                parts.append(
                    f"You're booked for {booking.service} on {booking.day} at {booking.time}. "
                    "We'll send you a reminder the day before."
                )
            elif booking.day:
                parts.append(f"Sure, what time on {booking.day} works for you?")
            elif booking.time:
                parts.append(f"Sure, which day would you like to come in at {booking.time}?")
            else:
                parts.append(f"I'd be happy to book {booking.service} for you. What day and time work best?")
        elif booking_in_play and booking.confirmed and (day or time):
            booking.day, booking.time = day or booking.day, time or booking.time
            parts.append(f"No problem, I've moved you to {booking.day} at {booking.time}.")
        if not parts:
            parts.append(
                "I can book an appointment, or tell you our hours and where we are. What would you like?"
            )
        elif asked_hours or asked_where or booking.confirmed:
            parts.append("Is there anything else I can help you with?")
        return " ".join(parts), False

    async def run_llm(self, context: LLMContext) -> AsyncIterator[LLMChunk]:
        """Stream the scripted reply word by word, then call ``end_call`` if it is a goodbye."""
        reply, hang_up = self.reply_to(context)
        words = reply.split(" ")
        for index, word in enumerate(words):
            yield word if index == len(words) - 1 else word + " "
        if hang_up:
            yield ToolCall(id=f"call_{uuid.uuid4().hex[:12]}", name="end_call", arguments="{}")
