"""Call records: what every call leaves behind (the shape, the sink it is written through).

``model`` is the record's shape, shared by the code that observes a call
(``callpipe.records.observer``), the store that keeps it (``callpipe.store``) and the
API that serves it. ``sink`` is the small interface between the first two: observers
mutate a :class:`~callpipe.records.model.CallRecord` in their call's task and *touch* it;
the store writes the latest state in batches, off the audio path.
"""

from callpipe.records.model import (
    END_REASONS,
    CallEvent,
    CallRecord,
    Latency,
    ToolCall,
    Turn,
    Usage,
)
from callpipe.records.sink import NullSink, RecordSink

__all__ = [
    "END_REASONS",
    "CallEvent",
    "CallRecord",
    "Latency",
    "NullSink",
    "RecordSink",
    "ToolCall",
    "Turn",
    "Usage",
]
