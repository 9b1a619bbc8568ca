"""The database: SQLAlchemy 2 models, engine set-up, and automatic migration on first use.

One schema serves SQLite (embedded default, WAL, one writer) and PostgreSQL (psycopg 3, many
workers). ``events`` is append-only and enforced so by triggers on both engines (created by
the migrations, not by ``create_all``), because the proof must not depend on every code path
behaving. Timestamps are stored as naive UTC and handed out timezone-aware.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from outreach import writer_lock


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Naive UTC in the database, aware UTC in Python, identical on SQLite and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Merchant(Base):
    """特约商户: the merchant whose terminals are to be cancelled."""

    __tablename__ = "merchants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    merchant_no: Mapped[str] = mapped_column(String(32))  # 商户编号
    contact_name: Mapped[str | None] = mapped_column(String(100))
    phone: Mapped[str | None] = mapped_column(String(40))
    email: Mapped[str | None] = mapped_column(String(254))
    address: Mapped[str | None] = mapped_column(String(400))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    terminals: Mapped[list[Terminal]] = relationship(back_populates="merchant")


class Party(Base):
    """Anyone we may contact: the agent (代理商), the acquirer (收单机构), PCAC, the PBOC."""

    __tablename__ = "parties"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    legal_name: Mapped[str | None] = mapped_column(String(200))
    uscc: Mapped[str | None] = mapped_column(String(18))  # 统一社会信用代码
    licence_no: Mapped[str | None] = mapped_column(String(14))  # 支付业务许可证编号
    website: Mapped[str | None] = mapped_column(String(400))
    sources: Mapped[list[str]] = mapped_column(JSON, default=list)
    hints: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    contacts: Mapped[list[ContactPoint]] = relationship(back_populates="party")


class Terminal(Base):
    """A POS terminal: 终端号 and 机身序列号 (SN), its acquirer and the agent who placed it."""

    __tablename__ = "terminals"
    __table_args__ = (UniqueConstraint("merchant_id", "terminal_no"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    merchant_id: Mapped[int] = mapped_column(ForeignKey("merchants.id"))
    terminal_no: Mapped[str] = mapped_column(String(32))
    sn: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(100))
    acquirer_id: Mapped[int] = mapped_column(ForeignKey("parties.id"))
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("parties.id"))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    merchant: Mapped[Merchant] = relationship(back_populates="terminals")
    acquirer: Mapped[Party] = relationship(foreign_keys=[acquirer_id])
    agent: Mapped[Party | None] = relationship(foreign_keys=[agent_id])


class ContactPoint(Base):
    """One way to reach a party, merged across every source that reported it."""

    __tablename__ = "contact_points"
    __table_args__ = (UniqueConstraint("party_id", "kind", "value"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    party_id: Mapped[int] = mapped_column(ForeignKey("parties.id"))
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(400))
    label: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(8), default="unknown")  # good | bad | unknown
    status_reason: Mapped[str | None] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(Float, default=0.5)
    listed: Mapped[bool] = mapped_column(Boolean, default=True)  # still seen by some source
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    party: Mapped[Party] = relationship(back_populates="contacts")
    provenance: Mapped[list[Provenance]] = relationship(back_populates="contact")


class Provenance(Base):
    """Where and when one source saw one contact point; every source keeps its own row."""

    __tablename__ = "provenance"
    __table_args__ = (UniqueConstraint("contact_point_id", "source", "url"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    contact_point_id: Mapped[int] = mapped_column(ForeignKey("contact_points.id"))
    source: Mapped[str] = mapped_column(String(100))
    url: Mapped[str] = mapped_column(String(800), default="")
    label: Mapped[str] = mapped_column(String(200), default="")
    confidence: Mapped[float] = mapped_column(Float, default=0.5)
    evidence_sha256: Mapped[str | None] = mapped_column(String(64))
    as_of: Mapped[str | None] = mapped_column(String(32))
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    listed: Mapped[bool] = mapped_column(Boolean, default=True)
    contact: Mapped[ContactPoint] = relationship(back_populates="provenance")


class Case(Base):
    """One merchant's request (cancel, refund, reinstate) and where its ladder stands."""

    __tablename__ = "cases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    reference: Mapped[str] = mapped_column(String(32), unique=True)  # OUT-2026-000123
    merchant_id: Mapped[int] = mapped_column(ForeignKey("merchants.id"))
    goal: Mapped[str] = mapped_column(String(32))
    plan: Mapped[str] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(8), default="zh-CN")
    statement: Mapped[str | None] = mapped_column(Text)
    deposit: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="open")  # open|paused|resolved|stopped
    opened_on: Mapped[date] = mapped_column(Date)
    next_step: Mapped[int] = mapped_column(Integer, default=0)
    last_step_on: Mapped[date | None] = mapped_column(Date)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    merchant: Mapped[Merchant] = relationship()
    terminals: Mapped[list[Terminal]] = relationship(secondary="case_terminals")

    @property
    def chain(self) -> str:
        return f"case:{self.reference}"


class CaseTerminal(Base):
    __tablename__ = "case_terminals"
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), primary_key=True)
    terminal_id: Mapped[int] = mapped_column(ForeignKey("terminals.id"), primary_key=True)


class Notice(Base):
    """The rendered text of one ladder step for one party. Unique per (case, step, party):
    the database itself refuses to plan a step twice."""

    __tablename__ = "notices"
    __table_args__ = (UniqueConstraint("case_id", "step", "party_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"))
    step: Mapped[int] = mapped_column(Integer)
    party_id: Mapped[int] = mapped_column(ForeignKey("parties.id"))
    template: Mapped[str] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(8))
    subject: Mapped[str] = mapped_column(String(400))
    body: Mapped[str] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    sms_params: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    sha256: Mapped[str] = mapped_column(String(64))
    deadline: Mapped[date] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    case: Mapped[Case] = relationship()
    party: Mapped[Party] = relationship()


class Attempt(Base):
    """The outbox: one notice to one contact point, with its delivery state and lease."""

    __tablename__ = "attempts"
    __table_args__ = (
        UniqueConstraint("notice_id", "contact_point_id"),
        Index("ix_attempts_due", "state", "next_try_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    notice_id: Mapped[int] = mapped_column(ForeignKey("notices.id"))
    contact_point_id: Mapped[int] = mapped_column(ForeignKey("contact_points.id"))
    channel: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    recipient: Mapped[str] = mapped_column(String(400))
    # queued | sending | sent | pending | failed | unknown | delivered | bounced | cancelled
    state: Mapped[str] = mapped_column(String(16), default="queued")
    tries: Mapped[int] = mapped_column(Integer, default=0)
    claims: Mapped[int] = mapped_column(Integer, default=0)
    next_try_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    message_id: Mapped[str | None] = mapped_column(String(400))
    provider_id: Mapped[str | None] = mapped_column(String(200))
    payload_sha256: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    notice: Mapped[Notice] = relationship()
    contact: Mapped[ContactPoint] = relationship()


class Chain(Base):
    """Head of one hash chain. Appends lock this row, so a chain never forks."""

    __tablename__ = "chains"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    head_seq: Mapped[int] = mapped_column(Integer, default=0)
    head_hash: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Event(Base):
    """Append-only, hash-chained record of everything that happened (see docs/proof-format.md).

    ``body`` is the canonical JSON that was hashed; the other columns repeat parts of it for
    querying and are checked against it by ``audit verify``.
    """

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("chain", "seq"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    chain: Mapped[str] = mapped_column(String(100))
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[str] = mapped_column(String(32))  # RFC 3339 UTC, microseconds, "Z"
    kind: Mapped[str] = mapped_column(String(40))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True)
    attempt_id: Mapped[int | None] = mapped_column(ForeignKey("attempts.id"), index=True)
    body: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Blob(Base):
    """Content-addressed exact bytes: notices as sent, server replies, fetched pages, evidence."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    media_type: Mapped[str] = mapped_column(String(100))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Send(Base):
    """One send to one recipient through one channel: what per-recipient caps count.

    Kept apart from events so a rate check is one indexed count, and so it survives restarts
    (an SMS gateway's daily cap does not reset because our worker did).
    """

    __tablename__ = "sends"
    __table_args__ = (Index("ix_sends_channel_recipient_at", "channel", "recipient", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(64))
    recipient: Mapped[str] = mapped_column(String(400))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempt_id: Mapped[int] = mapped_column(ForeignKey("attempts.id"))


class Anchor(Base):
    """An RFC 3161 token over the Merkle root of chain heads at one moment."""

    __tablename__ = "anchors"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    root: Mapped[str] = mapped_column(String(64))
    leaves: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # [{chain, seq, hash}] in tree order
    tsa_url: Mapped[str | None] = mapped_column(String(400))
    token: Mapped[bytes | None] = mapped_column(LargeBinary)  # DER TimeStampResp
    gen_time: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))  # ok | failed
    error: Mapped[str | None] = mapped_column(Text)


def find_case(session: Session, ref: str) -> Case | None:
    """The case a person named on the command line: by reference or by its config key."""
    return session.scalars(
        select(Case).where((Case.reference == ref) | (Case.key == ref))
    ).one_or_none()


def no_case(ref: str) -> str:
    """What to say when :func:`find_case` finds nothing."""
    return f"no case {ref!r} (use its reference, e.g. OUT-2026-000001, or its config key)"


# --------------------------------------------------------------------------- engine


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create an engine tuned for the dialect: WAL and a real write lock on SQLite."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        args: dict[str, Any] = {"timeout": 30}
        if path and path != ":memory:":
            args["factory"] = writer_lock.connection_class(Path(path))
        engine = create_engine(url, echo=echo, connect_args=args)
        _sqlite_pragmas(engine)
        return engine
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return create_engine(url, echo=echo, pool_pre_ping=True)


def _sqlite_pragmas(engine: Engine) -> None:
    # pysqlite's default transaction handling defers BEGIN until the first write, which turns
    # a read-then-write into a lock upgrade that can deadlock two processes. We issue
    # BEGIN IMMEDIATE ourselves so the writer lock is taken up front.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # FULL, not WAL's usual NORMAL: with NORMAL a commit that has returned can still roll
        # back after a power cut or an OS crash, and the dispatcher sends right after
        # committing `try_started` - a notice would leave with no record of it. FULL fsyncs the
        # log at each commit; the dispatcher's group commits keep that to one fsync per batch.
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        if isinstance(dbapi, writer_lock.LockedConnection):
            dbapi.acquire()
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            if isinstance(dbapi, writer_lock.LockedConnection):
                dbapi.release()
            raise


def session_factory(engine: Engine) -> sessionmaker[Any]:
    return sessionmaker(engine, expire_on_commit=False)


# Models owned by other modules; imported here so one metadata describes the whole schema.
from outreach import (  # noqa: E402, F401
    models_contacts,
    models_inbound,
    models_receipts,
    models_schedule,
    models_tasks,
)
