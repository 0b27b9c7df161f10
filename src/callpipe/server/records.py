"""How ``callpipe serve`` gives every call a record: the observer's creation and its end.

``run_bot`` (:mod:`callpipe.server.routes.media`) calls :func:`open_record` before the bot
runs (it sets the observer in the call's context, where the pipeline's parts find it, and
on ``runner_args.record``) and :func:`close_record` when the bot is done, with what ended it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from callpipe.log import mask_number
from callpipe.records.model import CallEvent, CallRecord
from callpipe.records.observer import CallObserver, current_observer
from callpipe.records.sink import NullSink, RecordSink
from callpipe.runner import RunnerArguments

if TYPE_CHECKING:
    from callpipe.server.settings import ServerSettings
    from callpipe.server.state import ServerState

__all__ = ["close_record", "open_record", "record_unanswered", "recording_dir"]

logger = logging.getLogger("callpipe.server")

DEFAULT_DATA_DIR = "./callpipe-data"

# What ``run_bot`` saw end the bot -> (end_reason, hangup_by) when nothing more precise
# was noted during the call (a ``stop`` from Telnyx, ``end_call``, a transfer, ...).
_OUTCOMES: dict[str, tuple[str, str | None]] = {
    "completed": ("bot_ended", "bot"),
    "max_duration": ("max_duration", "server"),
    "ended_by_server": ("shutdown", "server"),
    "error": ("error", "server"),
}


def recording_dir(settings: ServerSettings) -> Path | None:
    """Where recordings go (``RECORDING_DIR``, else ``<DATA_DIR>/recordings``); ``None`` if off."""
    if not settings.recording:
        return None
    # Absolute: the record keeps the path, and whoever serves or deletes the file later
    # (the API, retention, another process on this host) may run from another directory.
    if settings.recording_dir:
        return Path(settings.recording_dir).absolute()
    return (Path(settings.data_dir or DEFAULT_DATA_DIR) / "recordings").absolute()


def _sink_of(state: ServerState) -> RecordSink:
    if state.record_sink is not None:
        return state.record_sink
    return state.store.sink if state.store is not None else NullSink()


def open_record(state: ServerState, runner_args: RunnerArguments, ccid: str) -> CallObserver:
    """Create the call's record and observer and make them the call's current ones."""
    settings = state.settings
    data = runner_args.call_data
    keep_params = settings.record_call_params
    record = CallRecord(
        call_control_id=ccid,
        direction="outbound" if runner_args.direction == "outbound" else "inbound",
        from_=_text(data.get("from")),
        to=_text(data.get("to")),
        call_session_id=_text(data.get("call_session_id")),
        stream_id=_text(data.get("stream_id")),
        codec=_text(data.get("outbound_encoding")),
        sample_rate=data.get("sample_rate") if isinstance(data.get("sample_rate"), int) else None,
        instance=state.store.instance_id if state.store is not None else None,
        started_at=time.time(),
        body=dict(runner_args.body) if keep_params and runner_args.body else None,
        query_params=dict(data.get("query_params") or {}) if keep_params else None,
    )
    # A stream only exists on an answered call.
    record.answered_at = record.started_at
    observer = CallObserver(record, _sink_of(state), recording_dir=recording_dir(settings))
    current_observer.set(observer)
    runner_args.record = observer.fields
    observer.touch()
    logger.info(
        "call started: %s from %s to %s", record.direction, mask_number(record.from_), mask_number(record.to)
    )
    return observer


async def close_record(observer: CallObserver, outcome: str, error: BaseException | None = None) -> None:
    """The bot is done (``outcome`` as ``run_bot`` saw it): finish the record."""
    if error is not None:
        observer.error("bot_exception", f"{type(error).__name__}: {error}")
        if outcome == "error":
            observer.note_end("error", "server")
    if outcome == "max_duration":
        observer.note_end("max_duration", "server")  # before what the cancellation caused
    reason, by = _OUTCOMES.get(outcome, ("bot_ended", "bot"))
    try:
        await observer.finish(reason, by)
    except Exception:
        logger.exception("could not finish the call's record")


# Telnyx hangup causes of a dial that was never answered -> the record's end_reason.
# Assumption: "no_answer" as well as "timeout" may name a dial that rang out.
UNANSWERED_CAUSES = {
    "user_busy": "busy",
    "timeout": "no_answer",
    "no_answer": "no_answer",
}


def _wall(value: Any, default: float) -> float:
    import datetime as dt

    if isinstance(value, str) and value:
        try:
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return default


def record_unanswered(state: ServerState, ccid: str, payload: dict[str, Any]) -> bool:
    """A ``call.hangup`` for an outbound dial that never answered (no stream, so no bot): record it.

    Returns whether a record was written (``end_reason`` ``busy`` or ``no_answer``).
    """
    reason = UNANSWERED_CAUSES.get(str(payload.get("hangup_cause", "")))
    if (
        reason is None
        or not ccid
        or str(payload.get("direction", "outgoing")) not in ("outgoing", "outbound")
    ):
        return False
    now = time.time()
    ended = _wall(payload.get("end_time"), now)
    record = CallRecord(
        call_control_id=ccid,
        direction="outbound",
        from_=_text(payload.get("from")),
        to=_text(payload.get("to")),
        call_session_id=_text(payload.get("call_session_id")),
        instance=state.store.instance_id if state.store is not None else None,
        started_at=_wall(payload.get("start_time"), ended),
        ended_at=ended,
        end_reason=reason,
        hangup_by=_text(payload.get("hangup_source")) or "callee",
        events=[CallEvent(type="webhook", at=now, name="call.hangup", data=dict(payload))],
    )
    _sink_of(state).finish(record)
    logger.info("dial-out %s never answered: %s", ccid, reason)
    return True


def record_stream_failed(state: ServerState, ccid: str, payload: dict[str, Any]) -> None:
    """A ``streaming.failed`` for a call no bot holds (its stream never connected): record it.

    ``end_reason="error"``, the failure reason in an ``error`` event, the webhook kept.
    """
    if not ccid:
        return
    now = time.time()
    reason = str(payload.get("failure_reason") or "unknown")
    direction = str(payload.get("direction", "outgoing"))
    record = CallRecord(
        call_control_id=ccid,
        direction="inbound" if direction in ("incoming", "inbound") else "outbound",
        from_=_text(payload.get("from")),
        to=_text(payload.get("to")),
        call_session_id=_text(payload.get("call_session_id")),
        stream_id=_text(payload.get("stream_id")),
        instance=state.store.instance_id if state.store is not None else None,
        started_at=now,
        ended_at=now,
        end_reason="error",
        hangup_by="server",
        events=[
            CallEvent(type="webhook", at=now, name="streaming.failed", data=dict(payload)),
            CallEvent(type="error", at=now, name="streaming_failed", data={"reason": reason[:500]}),
        ],
    )
    _sink_of(state).finish(record)
    logger.warning("the stream of %s failed before any bot ran: %s", ccid, reason)


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)
