"""Which failures retry the batch (transient) and which dead-letter the message."""

from __future__ import annotations

import asyncpg
import pytest
import sqlalchemy as sa

from shared.runtime.transient import ConcurrentUpdate, is_transient


def wrapped(inner: BaseException, outer: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


class AdaptedDBAPIError(Exception):
    """Like SQLAlchemy's adapted asyncpg DBAPI errors: raised ``from`` asyncpg's own."""


@pytest.mark.parametrize(
    "error",
    [
        ConcurrentUpdate("meter changed"),
        ConnectionResetError(104, "reset"),
        TimeoutError(),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.exceptions.SerializationError("could not serialize access"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        # BEGIN sent on the driver connection of a database that restarted: not wrapped by SQLAlchemy
        wrapped(asyncpg.exceptions.InterfaceError("connection is closed"), AdaptedDBAPIError("connection is closed")),
        sa.exc.OperationalError("select 1", {}, Exception("server closed the connection")),
        sa.exc.DBAPIError(
            "select 1", {}, wrapped(asyncpg.exceptions.AdminShutdownError("shutdown"), AdaptedDBAPIError("x"))
        ),
    ],
)
def test_a_database_or_network_hiccup_retries_the_batch(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("a handler bug"),
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.InterfaceError("the server expects 3 arguments for this query, 2 were passed"),
        sa.exc.DBAPIError(
            "insert", {}, wrapped(asyncpg.exceptions.NotNullViolationError("null"), AdaptedDBAPIError("x"))
        ),
    ],
)
def test_a_failure_that_would_fail_again_is_not_retried(error: BaseException) -> None:
    assert not is_transient(error)
