"""Telephony behaviour for bots: answering machines, voicemail, call screening.

* :mod:`callpipe.telephony.amd`: :class:`AmdPolicy`, the pure state machine.
* :mod:`callpipe.telephony.voicemail`: :class:`VoicemailPolicy`, the pipeline processor.
"""

from callpipe.telephony.amd import Act, AmdConfig, AmdPolicy, AmdState, is_screening_question
from callpipe.telephony.voicemail import VoicemailPolicy

__all__ = ["Act", "AmdConfig", "AmdPolicy", "AmdState", "VoicemailPolicy", "is_screening_question"]
