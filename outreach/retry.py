"""Retry policy as plain data: how long to wait before the next try, and when to stop.

Kept apart from the dispatcher loop so it is unit-tested alone; tenacity consumes it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import RetryCallState

from channels.base import Transient


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential back-off within one claim; the far side's Retry-After wins."""

    base: float = 1.0
    cap: float = 30.0
    jitter: float = 1.0
    retry_after_cap: float = 300.0

    def delay(self, try_number: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return max(0.0, min(retry_after, self.retry_after_cap))
        return float(
            min(self.cap, self.base * 2.0 ** (try_number - 1)) + random.uniform(0, self.jitter)
        )

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after if isinstance(exc, Transient) else None
        return self.delay(state.attempt_number, retry_after)


def parse_duration(text: str) -> float:
    """ "30s", "15m", "2h", "1d" -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(text[:-1]) * units[text[-1]]


#: PostgreSQL SQLSTATEs after which the whole transaction may simply be run again:
#: serialization_failure, deadlock_detected, lock_not_available.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "55P03"})


def db_retryable(exc: BaseException) -> bool:
    """Whether a failed database transaction can be run again as it is.

    Deadlocks and serialization failures on PostgreSQL, and "database is locked" on SQLite
    (another process held the writer lock past the busy timeout), roll the transaction back
    and leave nothing behind; anything else (a constraint violation, a lost server) is a
    real error and must surface.
    """
    orig = getattr(exc, "orig", None)
    if orig is None:
        return False
    if getattr(orig, "sqlstate", None) in _RETRYABLE_SQLSTATES:
        return True
    return type(orig).__name__ == "OperationalError" and "database is locked" in str(orig)


T = TypeVar("T")
log = logging.getLogger(__name__)
DB_TRIES = 5  # runs of one transaction that hit a deadlock or a busy database


def in_transaction(sessions: sessionmaker[Session], work: Callable[[Session], T]) -> T:
    """Run ``work`` in one transaction; run it again after a deadlock or a busy database.

    Everything ``work`` does must be inside the transaction (a retry starts from scratch):
    true of the dispatcher's claims and outcome records and of a ladder pass. Blocking (it
    sleeps between runs), so call it from a thread when on an event loop.
    """
    for run in range(1, DB_TRIES + 1):
        try:
            with sessions.begin() as s:
                return work(s)
        except DBAPIError as exc:
            if run == DB_TRIES or not db_retryable(exc):
                raise
            log.warning("transaction rolled back (%s); running it again", exc.orig)
            time.sleep(random.uniform(0.005, 0.05) * run)
    raise AssertionError("unreachable")
