"""The call store: durable call records and the little shared state instances coordinate by.

SQLite in a data directory by default, PostgreSQL with ``DATABASE_URL``. See
:class:`callpipe.store.base.CallStore` for what it offers.
"""

from callpipe.store.base import CallFilter, CallPage, CallStore

__all__ = ["CallFilter", "CallPage", "CallStore"]
