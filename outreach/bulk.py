"""Many rows in one statement, without SQLAlchemy's per-row work: the dispatcher's hot writes.

A Core ``session.execute(stmt, rows)`` builds a parameter dictionary per row and runs every
value through generic processing; for the dispatcher that was about a tenth of the CPU of
sending an SMS (py-spy, ``bench/sms_pipeline.py``): each notice writes about ten rows (event,
chain head, blob, attempt, send, twice over). Here the statement is compiled once per dialect,
each column's own bind processor (the same one SQLAlchemy would apply: ``UTCDateTime`` to naive
UTC, then the dialect's datetime format) is looked up once, and the driver gets tuples or
dictionaries straight through ``exec_driver_sql``. The SQL text is SQLAlchemy's own, so both
engines get exactly the statements they got before; ``tests/test_bulk.py`` checks that rows
written both ways read back identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Table, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert, Update, ValuesBase

from outreach.store import Base

__all__ = ["IN_CHUNK", "executemany", "in_chunks", "insert_ignoring_conflicts", "table_of"]

T = TypeVar("T")
IN_CHUNK = 500  # ids per IN (...) list


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    names: tuple[str, ...]  # bind names, in statement order
    processors: tuple[Callable[[Any], Any] | None, ...]
    positional: bool


_plans: dict[tuple[int, str, tuple[str, ...]], tuple[ValuesBase, _Plan]] = {}


_IGNORING: dict[tuple[str, str], Insert] = {}


def insert_ignoring_conflicts(session: Session, table: Table) -> Insert:
    """INSERT that leaves an existing row with the same key alone (both engines): another
    worker may store the same blob or create the same chain head at the same moment. Built
    once per table and dialect, which also makes it a long-lived statement for
    :func:`executemany`."""
    dialect = session.get_bind().dialect.name
    stmt = _IGNORING.get((dialect, table.name))
    if stmt is None:
        if dialect == "postgresql":
            stmt = postgresql.insert(table).on_conflict_do_nothing()
        elif dialect == "sqlite":
            stmt = sqlite.insert(table).on_conflict_do_nothing()
        else:
            stmt = insert(table)
        _IGNORING[(dialect, table.name)] = stmt
    return stmt


def table_of(model: type[Base]) -> Table:
    """The Core table of a model, typed as one (``Model.__table__`` is typed loosely)."""
    return model.metadata.tables[str(model.__tablename__)]


def in_chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterable[Sequence[T]]:
    """Slices short enough for one ``IN (...)`` list on either engine."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _plan(stmt: ValuesBase, dialect: Dialect, keys: tuple[str, ...]) -> _Plan:
    cache_key = (id(stmt), dialect.name, keys)
    cached = _plans.get(cache_key)
    if cached is not None and cached[0] is stmt:
        return cached[1]
    # inline(): no RETURNING of generated keys, which PostgreSQL would otherwise be asked for.
    target = stmt.inline() if isinstance(stmt, Insert) else stmt
    compiled = target.compile(dialect=dialect, column_keys=list(keys))
    positional = bool(compiled.positional)
    names = tuple(compiled.positiontup or ()) if positional else tuple(compiled.binds)
    # dialect_impl(): the processor of the dialect's own type (SQLite's DATETIME writes its
    # text format), which is what SQLAlchemy applies, not the generic type's.
    processors = tuple(
        compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
    )
    plan = _Plan(compiled.string, names, processors, positional)
    _plans[cache_key] = (stmt, plan)  # the statement is kept alive, so its id stays its own
    return plan


def executemany(session: Session, stmt: Insert | Update, rows: Sequence[Mapping[str, Any]]) -> None:
    """Run ``stmt`` once per row in the session's transaction; every row has the same keys.

    ``stmt`` must be a module-level (long-lived) statement: plans are cached by its identity.
    Keys are column names for an INSERT and bind parameter names for an UPDATE.
    """
    if not rows:
        return
    conn = session.connection()
    plan = _plan(stmt, conn.dialect, tuple(rows[0]))
    names, processors = plan.names, plan.processors
    if plan.positional:
        params: list[Any] = [
            tuple(
                value if proc is None or value is None else proc(value)
                for value, proc in zip((row[n] for n in names), processors, strict=True)
            )
            for row in rows
        ]
    else:
        params = [
            {
                n: (row[n] if proc is None or row[n] is None else proc(row[n]))
                for n, proc in zip(names, processors, strict=True)
            }
            for row in rows
        ]
    conn.exec_driver_sql(plan.sql, params)
