"""Many rows in one statement, without SQLAlchemy's per-row work: the dispatcher's hot writes.

Two costs, both measured with ``bench/sms_pipeline.py``:

- A Core ``session.execute(stmt, rows)`` builds a parameter dictionary per row and runs every
  value through generic processing: about a tenth of the CPU of sending an SMS, where each
  notice writes about ten rows (event, chain head, blob, attempt, send, twice over). Here the
  statement is compiled once per dialect, each column's own bind processor (the one
  SQLAlchemy would apply: ``UTCDateTime`` to naive UTC, then the dialect's datetime format) is
  looked up once, and the driver gets the values straight through ``exec_driver_sql``.
- ``sqlite3``'s ``executemany`` releases the GIL around every row's step and must win it back
  from the event loop's thread to bind the next row: a convoy. 200 rows took 2.5 ms alone and
  over a second beside a thread busy in Python (``bench/RESULTS.md``). On SQLite the rows
  therefore go as one multi-row statement per chunk - ``INSERT ... VALUES (...), (...)`` and
  ``UPDATE ... FROM (VALUES ...)`` (SQLite 3.33+) - one step, one hand-over. PostgreSQL keeps
  psycopg's pipelined ``executemany``.

The SQL is SQLAlchemy's own, compiled once; the multi-row forms are built from it by
repeating its VALUES group or moving its SET values into a VALUES list. ``tests/test_bulk.py``
checks that rows written these ways read back identical to rows written through Core.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from itertools import chain
from operator import itemgetter
from typing import Any, TypeVar

from sqlalchemy import Table, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert, Update, ValuesBase
from sqlalchemy.types import TypeDecorator, TypeEngine

from outreach.store import Base

__all__ = ["IN_CHUNK", "executemany", "in_chunks", "insert_ignoring_conflicts", "table_of"]

T = TypeVar("T")
IN_CHUNK = 500  # ids per IN (...) list


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    names: tuple[str, ...]  # bind names, in statement order
    # (position, processor, memoise) for each bind that has a processor; ``memoise`` for
    # datetimes, where nearly every row of a batch carries the same instant
    processors: tuple[tuple[int, Callable[[Any], Any], bool], ...]
    positional: bool
    # SQLite: (head, group, tail) with "head + group*n joined by ', ' + tail" taking n rows
    many: tuple[str, str, str] | None = None
    key_index: int | None = None  # UPDATE ... FROM: where each row's key is, to spot repeats


#: Most host parameters one SQLite statement takes (SQLITE_MAX_VARIABLE_NUMBER): 32,766 since
#: 3.32.0, 999 before.
_SQLITE_MAX_PARAMS = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
_SQLITE_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)
_INSERT_VALUES = re.compile(r"^(INSERT INTO .+?\) VALUES )(\((?:\?, )*\?\))(.*)$", re.S)
_UPDATE_BY_KEY = re.compile(r"^UPDATE (\w+) SET (.+) WHERE (\w+)\.(\w+) = \?$", re.S)


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
    processors = []
    for i, name in enumerate(names):
        type_ = compiled.binds[name].type
        proc = type_.dialect_impl(dialect).bind_processor(dialect)
        if proc is not None:
            processors.append((i, proc, _instants(type_)))
    sql = compiled.string
    many, key_index = None, None
    if dialect.name == "sqlite":
        many, key_index = _sqlite_many(sql, len(names))
    plan = _Plan(sql, names, tuple(processors), positional, many, key_index)
    _plans[cache_key] = (stmt, plan)  # the statement is kept alive, so its id stays its own
    return plan


def _instants(type_: TypeEngine[Any]) -> bool:
    """Whether a column holds dates or datetimes (immutable, hashable: safe to memoise)."""
    base = type_.impl_instance if isinstance(type_, TypeDecorator) else type_
    try:
        return base.python_type in (datetime, date)
    except NotImplementedError:
        return False


def _sqlite_many(sql: str, params: int) -> tuple[tuple[str, str, str] | None, int | None]:
    """The multi-row form of a one-row SQLite INSERT or UPDATE-by-key, or (None, None)."""
    m = _INSERT_VALUES.match(sql)
    if m and m[2].count("?") == params:
        return (m[1], m[2], m[3]), None
    m = _UPDATE_BY_KEY.match(sql) if _SQLITE_UPDATE_FROM else None
    if m is None:
        return None, None
    table, sets, key_table, key = m[1], m[2].split(", "), m[3], m[4]
    columns = [c.split("=", 1) for c in sets]
    if key_table != table or any(v != "?" for _c, v in columns) or len(columns) + 1 != params:
        return None, None
    assigned = ", ".join(f"{c}=v.column{i}" for i, (c, _v) in enumerate(columns, 1))
    # Identifiers from SQLAlchemy's own compiled statement; every value stays a parameter.
    head = f"UPDATE {table} SET {assigned} FROM (VALUES "  # noqa: S608
    group = "(" + ", ".join(["?"] * params) + ")"
    tail = f") AS v WHERE {table}.{key} = v.column{params}"
    return (head, group, tail), params - 1


def executemany(session: Session, stmt: Insert | Update, rows: Sequence[Mapping[str, Any]]) -> None:
    """Run ``stmt`` once per row in the session's transaction; every row has the same keys.

    ``stmt`` must be a module-level (long-lived) statement: plans are cached by its identity.
    Keys are column names for an INSERT and bind parameter names for an UPDATE.
    """
    if not rows:
        return
    conn = session.connection()
    plan = _plan(stmt, conn.dialect, tuple(rows[0]))
    values = _values(plan, rows)
    params: list[Any] = (
        values if plan.positional else [dict(zip(plan.names, row, strict=True)) for row in values]
    )
    many = plan.many
    if many is not None and plan.key_index is not None:
        keys = [row[plan.key_index] for row in params]
        if len(set(keys)) != len(keys):
            many = None  # UPDATE ... FROM would apply only one of a key's rows
    if many is None:
        conn.exec_driver_sql(plan.sql, params)
        return
    head, group, tail = many
    per = max(1, _SQLITE_MAX_PARAMS // len(plan.names))
    for start in range(0, len(params), per):
        chunk = params[start : start + per]
        sql = head + ", ".join([group] * len(chunk)) + tail
        conn.exec_driver_sql(sql, tuple(chain.from_iterable(chunk)))


def _values(plan: _Plan, rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """Each row's values in statement order, through the processors SQLAlchemy would apply.

    Taken out with one ``itemgetter`` call per row, processed column by column; datetime
    processors (time zone, then the dialect's text format: the costliest values of a row)
    run once per distinct instant of the batch.
    """
    names = plan.names
    get = itemgetter(*names)
    out = [(get(row),) for row in rows] if len(names) == 1 else [get(row) for row in rows]
    if not plan.processors:
        return out
    columns = [list(col) for col in zip(*out, strict=True)]
    for i, proc, memoise in plan.processors:
        col = columns[i]
        if memoise:
            seen: dict[Any, Any] = {}
            for j, v in enumerate(col):
                if v is not None:
                    p = seen.get(v, _MISSING)
                    if p is _MISSING:
                        p = seen[v] = proc(v)
                    col[j] = p
        else:
            columns[i] = [None if v is None else proc(v) for v in col]
    return list(zip(*columns, strict=True))


_MISSING = object()
