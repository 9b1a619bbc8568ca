"""``outreach worker``: the passes of ``outreach run``, on a schedule, unattended.

Each tick, in this order (each stage's failure is logged and counted; the next still runs):

1. **inbound** — poll the mailbox when ``[inbound]`` is configured, first, so a reply that
   arrived since the last tick stops its case before anything else is sent;
2. **discover** — only parties whose sources were last asked longer ago than
   ``discover_every`` (a registry is not asked every quarter of an hour);
3. **ladder** — stop, fall back and plan (:func:`outreach.ladder.plan_due`);
4. **send** — dispatch everything due (``FOR UPDATE SKIP LOCKED`` on PostgreSQL);
5. **anchor** — time-stamp the chain heads when ``[proof]`` says one is due.

Then one log line with the counts. SIGINT/SIGTERM stop claiming at once; sends already in
flight finish and are recorded, attempts claimed but not yet started are released, and the
worker exits 0.

**One worker on SQLite, many on PostgreSQL.** SQLite has one writer and needs every process
on one host (WAL uses shared memory), so a second worker could only queue behind the first:
:class:`WorkerLock` refuses to start it. The lock is ``flock`` on a file next to the database
rather than a row with a heartbeat: the kernel drops it the instant its holder dies — even by
SIGKILL or OOM — so there is no expiry to tune, no stale window, and no heartbeat write
competing with the worker's own transactions for SQLite's single write lock. On PostgreSQL
any number of workers cooperate: planning runs under a transaction-level advisory lock,
dispatch claims with ``SKIP LOCKED``, and the (case, step, party) unique key on notices is
the last word, so no step is sent twice.

**Time.** Unbounded, the worker waits for each scheduled moment on the wall clock; with a
tick count it runs the ticks back to back (``--ticks N`` is for tests and catch-ups). ``at``
simulates: the worker starts at that moment and each tick jumps to the next
scheduled moment without waiting. It exists for tests and rehearsals (a month of ticks in
seconds) and needs a tick count; without it the worker follows the wall clock.

``$OUTREACH_FAKE_CLOCK_FILE`` (tests only) names a file holding an ISO 8601 moment that is
the worker's "now"; the worker waits until the file reaches its next scheduled tick. Several
workers reading one file share one clock, so a test can advance a month tick by tick while
they run concurrently, as real workers with synchronised clocks do. (Workers on free-running
simulated clocks would drift apart, and one days "ahead" would rightly treat the other's
live lease as expired.)
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib
import inspect
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from channels.base import Channel
from outreach import clock
from outreach.app import App
from outreach.config import ScheduleConfig
from outreach.dispatch import Dispatcher, DispatchReport
from outreach.ladder import PLANNING_LOCK_KEY, PlanReport, take_planning_lock
from outreach.models_schedule import PartyDiscovery
from outreach.retry import parse_duration
from outreach.store import Party
from outreach.sync import sync

log = logging.getLogger("outreach.worker")

DEFAULT_DISCOVER_EVERY = "1d"


# ------------------------------------------------------------------------ schedule


@dataclass(frozen=True)
class Schedule:
    """When ticks happen: every ``interval`` seconds, or at each ``cron`` match in ``tz``."""

    interval: float | None
    cron: str | None
    tz: ZoneInfo

    @classmethod
    def from_config(cls, sc: ScheduleConfig) -> Schedule:
        """Raises ValueError naming the key at fault (``schedule.cron: …``)."""
        try:
            tz = ZoneInfo(sc.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"schedule.timezone: unknown time zone {sc.timezone!r} (e.g. Asia/Shanghai)"
            ) from None
        if sc.cron is not None:
            if not croniter.is_valid(sc.cron):
                raise ValueError(
                    f'schedule.cron: {sc.cron!r} is not a cron expression (e.g. "*/15 8-20 * * *")'
                )
            return cls(None, sc.cron, tz)
        if sc.interval is None:
            raise ValueError('schedule: set interval (e.g. "15m") or cron')
        seconds = parse_duration(sc.interval)
        if seconds <= 0:
            raise ValueError("schedule.interval: must be longer than 0s")
        return cls(seconds, None, tz)

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment`` (for an interval: ``moment`` + interval)."""
        if self.cron is not None:
            it = croniter(self.cron, moment.astimezone(self.tz))
            nxt: datetime = it.get_next(datetime)
            return nxt.astimezone(UTC)
        assert self.interval is not None
        return moment + timedelta(seconds=self.interval)

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron!r} ({self.tz.key})"
        return f"every {self.interval:g}s"


# ------------------------------------------------------------------------ the lock


class WorkerLockHeld(Exception):
    """Another worker holds the lock; the message says who."""


def lock_path_for(database_url: str) -> Path | None:
    """``<database>.worker.lock`` for a SQLite file; None where several workers may run."""
    prefix = "sqlite:///"
    if not database_url.startswith(prefix) or ":memory:" in database_url:
        return None
    return Path(database_url[len(prefix) :] + ".worker.lock")


class WorkerLock:
    """An exclusive ``flock`` on a file, held for the life of the worker (see module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 400, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise WorkerLockHeld(
                f"another worker is running on this database ({holder}); "
                f"SQLite takes one worker at a time (lock {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# ------------------------------------------------------------------------ discovery


def stale_parties(session: Session, now: datetime, every: float) -> list[str]:
    """Active parties whose sources were last asked before ``now - every`` (or never)."""
    cutoff = now - timedelta(seconds=every)
    rows = session.execute(
        select(Party.key, PartyDiscovery.discovered_at)
        .outerjoin(PartyDiscovery, PartyDiscovery.party_id == Party.id)
        .where(Party.active.is_(True))
        .order_by(Party.key)
    ).all()
    return [key for key, seen in rows if seen is None or seen <= cutoff]


def mark_discovered(session: Session, keys: list[str], now: datetime) -> None:
    """Record that these parties' sources were asked at ``now`` (in the caller's transaction)."""
    ids = dict(session.execute(select(Party.key, Party.id).where(Party.key.in_(keys))).all())
    for key in keys:
        row = session.get(PartyDiscovery, ids[key])
        if row is None:
            session.add(PartyDiscovery(party_id=ids[key], discovered_at=now))
        else:
            row.discovered_at = now


def claim_stale_parties(session: Session, now: datetime, every: float) -> list[str]:
    """Mark the stale parties as discovered now and return them, in the caller's transaction.

    The caller holds :func:`planning_excluded`, so no other worker claims them too. A lookup
    that then fails is retried after ``every``, like one that succeeded.
    """
    keys = stale_parties(session, now, every)
    if keys:
        mark_discovered(session, keys, now)
    return keys


@contextlib.contextmanager
def planning_excluded(engine: Engine) -> Iterator[None]:
    """Hold the planning lock across several transactions (PostgreSQL; a no-op on SQLite).

    Discovery spans a claim, network lookups and a write. Holding the lock that planning
    takes (a session-level advisory lock on a connection of its own, released when the
    block ends or the connection drops with a crashed worker) means no worker plans a step
    while a party's contacts are half-refreshed — above all a party seen for the first time,
    whose step would otherwise be planned with no contact at all.
    """
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": PLANNING_LOCK_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": PLANNING_LOCK_KEY})
            conn.commit()


# ------------------------------------------------------------------------ ticks


def read_clock_file(path: Path) -> datetime:
    """The moment written in ``path`` (ISO 8601 with an offset; naive means Beijing time)."""
    moment = datetime.fromisoformat(path.read_text(encoding="utf-8").strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=clock.CST)
    return moment.astimezone(UTC)


@dataclass
class TickReport:
    number: int
    at: datetime
    discovered: int = 0
    new_contacts: int = 0
    plan: PlanReport | None = None
    dispatch: DispatchReport | None = None
    anchored: str = "-"
    inbound: str = "-"
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        p = self.plan or PlanReport()
        d = self.dispatch or DispatchReport()
        missing = sum(len(s.missing) for s in p.planned)
        return (
            f"tick {self.number} at {self.at.astimezone(clock.CST):%Y-%m-%d %H:%M} CST: "
            f"inbound {self.inbound}; "
            f"discovered {self.discovered} parties ({self.new_contacts} new contacts); "
            f"planned {len(p.planned)} steps ({sum(s.attempts for s in p.planned)} attempts), "
            f"skipped {p.count('skipped')}, fallback {p.count('fallback')}, "
            f"no channel {p.count('no_channel') + missing}, cancelled {p.count('cancelled')}; "
            f"sent {d.sent}, pending {d.pending}, failed {d.failed}, unknown {d.unknown}, "
            f"retry {d.rescheduled}, deferred {d.deferred}, released {d.released}; "
            f"anchor {self.anchored}; errors {len(self.errors)}; {self.seconds:.2f}s"
        )


def _optional(module: str, name: str) -> Callable[..., Any] | None:
    """A function another part of outreach may not ship yet; None when it is missing."""
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return fn if callable(fn) else None


async def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Await a coroutine function; run a plain one in a thread so signals stay responsive."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    result = await asyncio.to_thread(fn, *args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result


def _summarise(result: Any) -> str:
    """A few words for the tick line from whatever report a stage returned."""
    if result is None:
        return "not due"
    names = ("anchored", "fetched", "replies", "bounces", "held")
    parts = [
        f"{n} {getattr(result, n)}" for n in names if isinstance(getattr(result, n, None), int)
    ]
    if getattr(result, "error", None):
        parts.append("failed (recorded; retried next time)")
    return ", ".join(parts) or type(result).__name__


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class Worker:
    """The loop behind ``outreach worker``; a Python user can drive it the same way.

    Channels are built once and closed at the end, so connection pools and per-channel
    concurrency survive from tick to tick; everything else is read fresh from the database
    each tick, which is what lets several workers share one.
    """

    def __init__(
        self,
        app: App,
        *,
        env: Mapping[str, str],
        offline: bool = False,
        discover_every: float = parse_duration(DEFAULT_DISCOVER_EVERY),
        start_at: datetime | None = None,
        clock_file: Path | None = None,
    ) -> None:
        self.app = app
        self.env = env
        self.offline = offline
        self.discover_every = discover_every
        self.schedule = Schedule.from_config(app.config.schedule)
        self.clock_file = clock_file
        self.simulated = start_at is not None or clock_file is not None
        self._sim_now = start_at
        self._stop = asyncio.Event()
        self._dispatcher: Dispatcher | None = None
        try:
            self._channels: dict[str, Channel] = dict(app.build_channels(env))
        except ValueError as exc:  # a missing secret, a setting the adapter refuses
            raise ValueError(f"channels: {exc}") from exc
        self._noted: set[str] = set()
        self.errors = 0

    # ---------------------------------------------------------------- control

    def now(self) -> datetime:
        if self.clock_file is not None:
            return read_clock_file(self.clock_file)
        return self._sim_now if self._sim_now is not None else clock.now()

    def request_stop(self) -> None:
        """Stop after the sends in flight; safe to call from a signal handler."""
        if not self._stop.is_set():
            log.info("stopping: finishing the sends in flight")
        self._stop.set()
        if self._dispatcher is not None:
            self._dispatcher.request_stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _note_once(self, key: str, message: str) -> None:
        if key not in self._noted:
            self._noted.add(key)
            log.info(message)

    # ---------------------------------------------------------------- loop

    async def run(self, ticks: int | None = None) -> int:
        """Tick until stopped, or ``ticks`` times back to back. Returns 1 when a stage failed.

        A bounded run does not wait for the wall clock between ticks (it is for tests and
        one-off catch-ups); with a simulated clock each tick still happens at its scheduled
        moment.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        mode = "simulated clock" if self.simulated else "wall clock"
        log.info(
            "worker %s started: %s, %s, database %s",
            os.getpid(),
            self.schedule.describe(),
            mode,
            self.app.engine.dialect.name,
        )
        try:
            await asyncio.to_thread(self._sync, self.now())
            number = 0
            while not self.stopping and (ticks is None or number < ticks):
                number += 1
                started = self.now()
                report = await self.tick(number)
                log.info(report.line())
                if self.stopping or (ticks is not None and number >= ticks):
                    break
                if ticks is None or self.simulated:
                    await self._wait_for_next(started)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            for channel in self._channels.values():
                try:
                    await channel.aclose()
                except Exception:
                    log.exception("closing channel %s", channel.name)
        log.info("worker %s stopped", os.getpid())
        return 1 if self.errors else 0

    async def _wait_for_next(self, started: datetime) -> None:
        nxt = self.schedule.next_after(started)
        if self.clock_file is not None:
            while not self.stopping and self.now() < nxt:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=0.01)
            return
        if self.simulated:
            self._sim_now = nxt
            await asyncio.sleep(0)
            return
        now = clock.now()
        if nxt <= now and self.schedule.cron is not None:
            nxt = self.schedule.next_after(now)  # an overrun skips missed cron times
        delay = max(0.0, (nxt - now).total_seconds())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=delay)

    def _sync(self, now: datetime) -> None:
        """Config to database, once at start, under the planning lock: workers started
        together on a fresh PostgreSQL database must not both insert the same case."""
        with self.app.sessions.begin() as s:
            take_planning_lock(s)
            sync(s, self.app.config, at=now)

    async def tick(self, number: int = 1) -> TickReport:
        now = self.now()
        report = TickReport(number, now)
        began = time.monotonic()
        stages: list[tuple[str, Callable[[TickReport], Any]]] = [
            ("inbound", self._inbound),
            ("discover", self._discover),
            ("ladder", self._ladder),
            ("send", self._send),
            ("anchor", self._anchor),
        ]
        for name, stage in stages:
            if self.stopping:
                break
            try:
                await stage(report)
            except Exception as exc:
                self.errors += 1
                report.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                log.exception("tick %s: %s failed", number, name)
        report.seconds = time.monotonic() - began
        return report

    # ---------------------------------------------------------------- stages

    async def _inbound(self, report: TickReport) -> None:
        if self.app.config.inbound is None:
            report.inbound = "off"
            return
        poll = _optional("outreach.inbound", "poll")
        if poll is None:
            report.inbound = "missing"
            self._note_once("inbound", "inbound polling skipped: outreach.inbound.poll is missing")
            return
        at = report.at
        extra: dict[str, Any] = {}
        if self.simulated and _accepts(poll, "now"):
            extra["now"] = lambda: at
        result = await _call(poll, self.app.sessions, self.app.config, env=self.env, **extra)
        report.inbound = _summarise(result)

    async def _discover(self, report: TickReport) -> None:
        now = report.at
        with self.app.sessions() as s:
            if not stale_parties(s, now, self.discover_every):
                return  # the usual tick: nothing to look up, no lock taken
        found = await asyncio.to_thread(self._discover_stale, now)
        report.discovered, report.new_contacts = found

    def _discover_stale(self, now: datetime) -> tuple[int, int]:
        """Claim and look up the stale parties with planning excluded (in a worker thread)."""
        with planning_excluded(self.app.engine):
            with self.app.sessions.begin() as s:
                keys = claim_stale_parties(s, now, self.discover_every)
            if not keys:
                return 0, 0
            known = [k for k in keys if k in self.app.config.parties]
            every_party = set(keys) >= set(self.app.config.parties)
            added = 0
            for key in [None] if every_party else known:
                added += len(self._discover_one(key, now).added)
            return len(keys), added

    def _discover_one(self, party: str | None, now: datetime) -> Any:
        """One discovery run with its own HTTP client (runs in a worker thread)."""
        if self.offline:
            return self.app.discover(party=party, at=now)
        import httpx

        from outreach.fetch import PoliteFetcher

        # No keep-alive: App.discover runs its own event loop, so no connection may outlive it.
        client = httpx.AsyncClient(
            timeout=20.0,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        fetcher = PoliteFetcher(client)
        try:
            return self.app.discover(
                party=party, fetcher=fetcher, at=now, documents=lambda: list(fetcher.documents)
            )
        finally:
            asyncio.run(client.aclose())

    async def _ladder(self, report: TickReport) -> None:
        report.plan = await asyncio.to_thread(self.app.plan, at=report.at)

    async def _send(self, report: TickReport) -> None:
        at = report.at
        now: Callable[[], datetime] = (lambda: at) if self.simulated else clock.now
        # (in a thread: with [dispatch] db_process the first call starts the helper, ~1 s)
        dispatcher = await asyncio.to_thread(self.app.dispatcher, self._channels, now=now)
        self._dispatcher = dispatcher
        if self.stopping:
            dispatcher.request_stop()
        try:
            report.dispatch = await dispatcher.run_once()
        finally:
            self._dispatcher = None

    async def _anchor(self, report: TickReport) -> None:
        proof = self.app.config.proof
        if not proof.tsa_urls:
            report.anchored = "off"
            return
        anchor_due = _optional("outreach.anchor", "anchor_due")
        if anchor_due is None:
            report.anchored = "missing"
            self._note_once("anchor", "anchoring skipped: outreach.anchor.anchor_due is missing")
            return
        import httpx

        async with httpx.AsyncClient(timeout=30.0) as client:
            result = await _call(anchor_due, self.app.sessions, proof, client, now=report.at)
        report.anchored = _summarise(result)
