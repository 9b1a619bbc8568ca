"""CLI commands: schedule. Attached to the `outreach` group defined in :mod:`outreach.cli`.

``outreach worker`` runs the passes on the ``[schedule]``; ``outreach case …`` records the
decisions only a person can make (resolved, paused, resumed, stopped), each chained as
evidence with the note that explains it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from datetime import datetime
from pathlib import Path

import click

from outreach.case_state import CaseStateError, change_case_state
from outreach.cli import Ctx, _at_option, _to_utc, main
from outreach.retry import parse_duration
from outreach.runtime import tune_gc
from outreach.scheduler import (
    DEFAULT_DISCOVER_EVERY,
    Worker,
    WorkerLock,
    WorkerLockHeld,
    lock_path_for,
)
from outreach.store import find_case, no_case

_DURATION = r"^\d+[smhd]$"


def _duration(value: str, what: str) -> float:
    if not re.fullmatch(_DURATION, value):
        raise click.BadParameter(
            f"{value!r}: expected a duration such as 30m, 6h or 1d", param_hint=what
        )
    return parse_duration(value)


# ---------------------------------------------------------------------------- worker


@main.command("worker")
@click.option("--once", is_flag=True, help="Run a single tick and exit (same as --ticks 1).")
@click.option(
    "--ticks",
    type=click.IntRange(1),
    default=None,
    help="Run N ticks back to back (no waiting between them) and exit: for tests and catch-ups.",
)
@click.option("--offline", is_flag=True, help="Discover from config and bundled data only.")
@click.option(
    "--discover-every",
    "discover_every",
    default=None,
    metavar="DURATION",
    help=f"Re-ask a party's sources only when last asked longer ago than this "
    f"(default [schedule] discover_every, else {DEFAULT_DISCOVER_EVERY}).",
)
@click.option(
    "--at",
    "at",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M"]),
    default=None,
    help="Simulate from this moment (Beijing time): each tick jumps to the next scheduled "
    "time without waiting. For tests and rehearsals; needs --ticks or --once. "
    "Channels are real: use outbox channels to rehearse.",
)
@click.pass_obj
def worker_cmd(
    c: Ctx,
    once: bool,
    ticks: int | None,
    offline: bool,
    discover_every: str | None,
    at: datetime | None,
) -> None:
    """Run unattended: each tick polls replies, re-discovers stale contacts, stops, falls
    back and plans the ladder, sends, and anchors proof. One log line per tick (stderr).

    Ticks follow [schedule] (interval, or cron in [schedule] timezone); the first tick runs
    at once. SIGINT/SIGTERM finish the sends in flight, then exit 0. On SQLite one worker
    runs at a time (a second exits 1 naming the first); on PostgreSQL run as many as you
    like. Exit 1 also when a stage of some tick failed (see the log).
    """
    if once:
        if ticks not in (None, 1):
            raise click.UsageError("--once and --ticks N contradict each other")
        ticks = 1
    if at is not None and ticks is None:
        raise click.UsageError("--at simulates without waiting: give --ticks N or --once")
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    app = c.app()
    tune_gc()
    configured = getattr(app.config.schedule, "discover_every", None)
    every = _duration(discover_every or configured or DEFAULT_DISCOVER_EVERY, "--discover-every")
    try:
        fake = os.environ.get("OUTREACH_FAKE_CLOCK_FILE")  # tests only: see outreach.scheduler
        worker = Worker(
            app,
            env=os.environ,
            offline=offline,
            discover_every=every,
            start_at=_to_utc(at),
            clock_file=Path(fake) if fake else None,
        )
    except ValueError as exc:
        click.echo(f"{app.config.source_path}: {exc}", err=True)
        sys.exit(2)
    lock_path = lock_path_for(app.config.database_url())
    lock = WorkerLock(lock_path) if lock_path is not None else None
    if lock is not None:
        try:
            lock.acquire()
        except WorkerLockHeld as exc:
            click.echo(str(exc), err=True)
            sys.exit(1)
    try:
        code = asyncio.run(worker.run(ticks))
    except Exception as exc:  # the database went away at start, …: one line, the log has more
        logging.getLogger("outreach.worker").debug("worker failed", exc_info=True)
        click.echo(f"worker stopped: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)
    finally:
        if lock is not None:
            lock.release()
    sys.exit(code)


# ---------------------------------------------------------------------------- case


@main.group("case")
def case_cmd() -> None:
    """Decisions about one case: resolve, pause, resume, stop. Each is chained as evidence."""


def _change(c: Ctx, ref: str, action: str, note: str | None, at: datetime | None) -> None:
    app = c.app()
    try:
        with app.sessions.begin() as s:
            case = find_case(s, ref)
            if case is None:
                click.echo(no_case(ref), err=True)
                sys.exit(2)
            change = change_case_state(s, case, action, note, at=_to_utc(at))
    except CaseStateError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    if not change.changed:
        click.echo(f"{change.reference} is already {change.after}; nothing changed")
        return
    parts = [f"{change.reference}: {change.before} → {change.after}"]
    if change.cancelled:
        parts.append(f"{change.cancelled} unsent attempt(s) cancelled")
    if change.requeued:
        parts.append(f"{change.requeued} cancelled attempt(s) queued again")
    if change.stale:
        parts.append(f"{change.stale} left cancelled (their deadline has passed)")
    click.echo("; ".join(parts))


_NOTE = click.option(
    "--note", required=True, help="Why, in your words (kept in the evidence chain)."
)


@case_cmd.command("resolve", short_help="Settled: stop the ladder for good.")
@click.argument("case")
@_NOTE
@_at_option
@click.pass_obj
def case_resolve(c: Ctx, case: str, note: str, at: datetime | None) -> None:
    """The matter is settled (terminal cancelled, deposit refunded): stop the ladder for good
    and cancel what has not been sent."""
    _change(c, case, "resolve", note, at)


@case_cmd.command("pause", short_help="Hold the ladder until resumed.")
@click.argument("case")
@_NOTE
@_at_option
@click.pass_obj
def case_pause(c: Ctx, case: str, note: str, at: datetime | None) -> None:
    """Hold the ladder (e.g. while the agent says it is dealing with it); cancels what has
    not been sent. `outreach case resume` picks up again."""
    _change(c, case, "pause", note, at)


@case_cmd.command("resume", short_help="Continue a paused or replied case.")
@click.argument("case")
@click.option("--note", default=None, help="Why (kept in the evidence chain).")
@_at_option
@click.pass_obj
def case_resume(c: Ctx, case: str, note: str | None, at: datetime | None) -> None:
    """Continue a paused or replied case: notices cancelled by the pause go out again while
    their deadline is ahead, and a step that fell due meanwhile goes out at the next pass."""
    _change(c, case, "resume", note, at)


@case_cmd.command("stop", short_help="Give up without a resolution.")
@click.argument("case")
@_NOTE
@_at_option
@click.pass_obj
def case_stop(c: Ctx, case: str, note: str, at: datetime | None) -> None:
    """Give up on this case without it being resolved (e.g. the merchant withdrew); cancels
    what has not been sent. A stopped case can still be marked resolved later."""
    _change(c, case, "stop", note, at)
