"""A queue in front of SQLite's write lock, so writers from several processes take turns.

SQLite lets one writer in at a time and makes the others poll: its busy handler sleeps 1, 2,
5, 10, … up to 100 ms between tries. Two dispatcher processes on one file spent much of a run
asleep in that handler while the lock was already free. An ``flock`` on a file beside the
database wakes the next writer the moment the lock is let go. Every connection opens its own
descriptor, so connections of one process queue the same way as other processes do; SQLite's
own locking is unchanged underneath (a writer that does not use this — the ``sqlite3`` shell —
still meets the busy timeout).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Any


class LockedConnection(sqlite3.Connection):
    lock_path: str = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fd = -1
        self._held = False

    def acquire(self) -> None:
        if self._held:
            return
        if self._fd < 0:
            self._fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.release()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.release()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.release()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def connection_class(database: Path) -> type[LockedConnection]:
    """A connection class whose writers queue on ``<database>-writer.lock``."""
    return type("LockedConnection", (LockedConnection,), {"lock_path": f"{database}-writer.lock"})
