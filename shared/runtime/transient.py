"""Which failures go away by themselves: the batch is retried rather than dead-lettered."""

from __future__ import annotations

import asyncpg
import sqlalchemy as sa


class ConcurrentUpdate(Exception):
    """A handler found that state it read was changed by another transaction before it wrote
    (optimistic concurrency): the batch is rolled back and retried like a transient failure."""


TRANSIENT_SQLSTATES = ("08", "40", "53", "57P")  # connection, rollback (serialization, deadlock), resources, shutdown


def is_transient(exc: BaseException) -> bool:
    """Failures that go away by themselves: retry the same batch rather than dead-letter it.

    The error may come wrapped (SQLAlchemy's ``DBAPIError`` around its adapted DBAPI error around
    asyncpg's), or bare from a statement sent on the driver connection: each link of the chain
    is looked at until one decides.
    """
    error: BaseException | None = exc
    for _ in range(5):
        if error is None:
            return False
        verdict = _transient(error)
        if verdict is not None:
            return verdict
        error = getattr(error, "orig", None) or error.__cause__
    return False


def _transient(error: BaseException) -> bool | None:
    """True or False when this error decides; None to look at what it wraps."""
    if isinstance(error, ConcurrentUpdate):
        return True
    if isinstance(error, sa.exc.DBAPIError):
        if error.connection_invalidated or isinstance(error, sa.exc.InterfaceError | sa.exc.OperationalError):
            return True
        return None
    if isinstance(error, asyncpg.PostgresError):
        return str(error.sqlstate or "").startswith(TRANSIENT_SQLSTATES)
    if isinstance(error, asyncpg.InterfaceError) and "connection is closed" in str(error):
        return True
    if isinstance(error, OSError | ConnectionError | TimeoutError | sa.exc.TimeoutError):
        return True
    return None
