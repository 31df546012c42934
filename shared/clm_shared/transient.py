"""Which failures are outages (the database or broker is away) rather than faults of the records.

Every consumer loop retries an outage for as long as it lasts and never dead-letters its batch;
any other failure is the records' fault and, after retries, ends in the dead-letter topic.
"""

from __future__ import annotations

import asyncpg
import sqlalchemy.exc

from clm_shared.kafka.producer import PublishUnavailable


class TransientError(Exception):
    """Raised by toolkit code for a failure that a retry of the same batch resolves."""


_TRANSIENT = (
    TransientError,
    PublishUnavailable,
    OSError,
    TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    # A connection cut mid-statement (a restart during a COPY) leaves asyncpg's protocol mid-operation,
    # and the rollback then fails with this: the connection is dropped (``transaction``), a retry gets another.
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.LockNotAvailableError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    """True for failures of the database or broker, not of the records: retry them, never dead-letter."""
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, _TRANSIENT):
        return True
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        # SQLAlchemy wraps the driver's error (an adapter whose cause is asyncpg's own exception).
        orig = exc.orig
        return orig is not None and (isinstance(orig, _TRANSIENT) or isinstance(orig.__cause__, _TRANSIENT))
    return False
