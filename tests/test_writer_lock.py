"""outreach.writer_lock: SQLite writers queue on a file lock instead of SQLite's busy polling.

The proof that a writer waited in the queue and not in SQLite's busy handler: the waiting
engine runs with ``busy_timeout=0``, so had it reached ``BEGIN IMMEDIATE`` while the other
held SQLite's write lock it would have failed at once with "database is locked".
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from outreach.store import make_engine
from outreach.writer_lock import LockedConnection


def _engine(path: Path, *, busy_timeout_ms: int | None = None) -> Engine:
    engine = make_engine(f"sqlite:///{path}")
    if busy_timeout_ms is not None:

        @sa.event.listens_for(engine, "connect")
        def _no_wait(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")

    return engine


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "outreach.db"
    engine = _engine(path)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (v INTEGER)")
    engine.dispose()
    return path


def _lock_is_free(db: Path) -> bool:
    fd = os.open(f"{db}-writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the lock if we took it
    return True


def _write_in_thread(engine: Engine, value: int, errors: list[BaseException]) -> threading.Thread:
    def work() -> None:
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO t VALUES (?)", (value,))
        except Exception as exc:  # noqa: BLE001 - reported to the test thread
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def _values(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [v for (v,) in conn.exec_driver_sql("SELECT v FROM t ORDER BY v")]


def test_a_second_writer_queues_until_the_first_commits(db: Path) -> None:
    first, second = _engine(db), _engine(db, busy_timeout_ms=0)
    errors: list[BaseException] = []
    try:
        conn = first.connect()
        tx = conn.begin()
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        waiting = _write_in_thread(second, 2, errors)
        waiting.join(0.3)
        assert waiting.is_alive(), "the second writer should wait for the first"
        tx.commit()
        conn.close()
        waiting.join(10)
        assert not waiting.is_alive()
        assert errors == []
        assert _values(first) == [1, 2]
        assert _lock_is_free(db)
    finally:
        first.dispose()
        second.dispose()


def test_rollback_and_a_failed_begin_let_the_lock_go(db: Path) -> None:
    engine = _engine(db, busy_timeout_ms=0)
    try:
        with pytest.raises(RuntimeError), engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            raise RuntimeError("abandon")
        assert _lock_is_free(db)
        assert _values(engine) == []

        # A writer that does not queue (the sqlite3 shell, say) holds SQLite's own lock: our
        # BEGIN IMMEDIATE fails (busy_timeout 0), and must not keep the queue's lock.
        outsider = __import__("sqlite3").connect(db, isolation_level=None)
        outsider.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(sa.exc.OperationalError, match="locked"), engine.begin():
                pass
            assert _lock_is_free(db)
        finally:
            outsider.execute("ROLLBACK")
            outsider.close()
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (3)")
        assert _values(engine) == [3]
    finally:
        engine.dispose()


_HOLDER = """
import sys
from outreach.store import make_engine
engine = make_engine(sys.argv[1])
with engine.begin() as conn:
    conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    print("holding", flush=True)
    sys.stdin.readline()
engine.dispose()
"""


def test_writers_in_two_processes_take_turns(db: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, f"sqlite:///{db}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    engine = _engine(db, busy_timeout_ms=0)
    errors: list[BaseException] = []
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "holding"
        waiting = _write_in_thread(engine, 2, errors)
        waiting.join(0.3)
        assert waiting.is_alive(), "a writer in another process holds the lock"
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.wait(30) == 0
        waiting.join(10)
        assert not waiting.is_alive()
        assert errors == []
        assert _values(engine) == [1, 2]
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        engine.dispose()


def test_an_in_memory_database_has_no_lock_file(tmp_path: Path) -> None:
    engine = make_engine("sqlite://")
    try:
        with engine.begin() as conn:
            raw = conn.connection.dbapi_connection
            assert not isinstance(raw, LockedConnection)
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    finally:
        engine.dispose()
