"""The ``outreach`` command. Thin: every command is a few lines over ``outreach.app``.

Exit codes: 0 ok, 1 a problem was found (a broken chain, a failed send), 2 usage or config error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from sqlalchemy import func, select

from outreach import __version__, clock
from outreach.app import App
from outreach.case_warnings import case_warnings
from outreach.config import ConfigError, config_path
from outreach.db_helper import HelperFailed
from outreach.ladder import case_ladder, describe, step_due
from outreach.output import emit, table
from outreach.proof import verify_chains
from outreach.runtime import tune_gc
from outreach.store import Attempt, Case, Event, Notice, find_case, no_case

F = TypeVar("F", bound=Callable[..., Any])


class Ctx:
    def __init__(self, config: str | None) -> None:
        self.path = config_path(config)
        self._app: App | None = None

    def app(self) -> App:
        if self._app is None:
            try:
                self._app = App.open(self.path)
            except ConfigError as exc:
                click.echo(str(exc), err=True)
                click.echo(
                    f"{len(exc.problems)} problem(s) in the config; nothing was written.", err=True
                )
                sys.exit(2)
        return self._app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


def _at_option(f: F) -> F:
    return click.option(
        "--at",
        "at",
        type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M"]),
        default=None,
        help="Pretend it is this moment (Beijing time), e.g. 2026-12-01.",
    )(f)


def _to_utc(at: datetime | None) -> datetime | None:
    if at is None:
        return None
    return at.replace(tzinfo=clock.CST).astimezone(UTC)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "-c",
    "--config",
    metavar="PATH",
    default=None,
    help="Config file (default: $OUTREACH_CONFIG or ./outreach.toml).",
)
@click.version_option(__version__, prog_name="outreach")
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """Contact the agent and acquirer of a POS terminal on every channel, escalate on a
    schedule, and keep tamper-evident proof of every attempt.

    \b
    Five-minute tour:
      outreach -c config.example.toml run            # sync, discover, plan, send
      outreach -c config.example.toml status         # where every case stands
      outreach -c config.example.toml audit log      # the hash-chained events
      outreach -c config.example.toml audit verify   # recompute every hash
    """
    c = Ctx(config)
    ctx.obj = c
    ctx.call_on_close(c.close)


# ---------------------------------------------------------------------------- db


@main.group()
def db() -> None:
    """Database schema (migrations run automatically on first use)."""


@db.command("upgrade")
@click.pass_obj
def db_upgrade(c: Ctx) -> None:
    """Apply pending migrations now (e.g. before starting new workers)."""
    from outreach.migrate import current_revision, head_revision

    app = c.app()
    click.echo(f"schema at {current_revision(app.engine)} (head {head_revision()})")


@db.command("current")
@click.pass_obj
def db_current(c: Ctx) -> None:
    """Show the schema revision without changing anything."""
    from outreach.migrate import current_revision, head_revision
    from outreach.store import make_engine

    try:
        from outreach import registry
        from outreach.config import load

        cfg = load(c.path, registry.channel_kinds(), registry.channel_settings_models())
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    engine = make_engine(cfg.database_url())
    click.echo(f"current {current_revision(engine)}, head {head_revision()}")
    engine.dispose()


# ---------------------------------------------------------------------------- sync / discover


def _print_sync(report: Any) -> None:
    for label, items in (
        ("added", report.added),
        ("changed", report.changed),
        ("inactive", report.deactivated),
    ):
        for item in items:
            click.echo(f"  {label:8} {item}")
    if report.empty:
        click.echo("  nothing changed")


@main.command("sync")
@click.pass_obj
def sync_cmd(c: Ctx) -> None:
    """Bring the database in line with the config. Idempotent; never deletes history."""
    report = c.app().sync()
    click.echo("sync:")
    _print_sync(report)


@main.command("discover")
@click.option("--party", default=None, help="Only this party key.")
@click.option("--offline", is_flag=True, help="Do not fetch anything over the network.")
@click.pass_obj
def discover_cmd(c: Ctx, party: str | None, offline: bool) -> None:
    """Look up every party's contact channels in its configured sources."""
    app = c.app()
    app.sync()
    report = _discover(app, party=party, offline=offline, progress=True)
    click.echo(
        f"discovered for {report.parties} parties: {len(report.added)} new, "
        f"{len(report.unlisted)} no longer listed, {len(report.failures)} source failures"
    )
    for item in report.added:
        click.echo(f"  new       {item}")
    for item in report.unlisted:
        click.echo(f"  unlisted  {item}")
    for item in report.relisted:
        click.echo(f"  relisted  {item}")
    for notice in report.notices:
        click.echo(
            f"  {notice.kind:9} {notice.party}: {notice.message}"
            + (f" — {notice.advice}" if notice.advice else "")
        )
    for item in report.failures:
        click.echo(f"  failed    {item}")
    for item in report.skipped:
        click.echo(f"  skipped   {item}")


def _discover(
    app: App, *, party: str | None = None, offline: bool = False, progress: bool = False
) -> Any:
    say = (lambda msg: click.echo(f"  … {msg}", err=True)) if progress else None
    fetcher, documents = _fetcher(app, offline, say)
    return app.discover(party=party, fetcher=fetcher, progress=say, documents=documents)


def _fetcher(app: App, offline: bool, progress: Callable[[str], None] | None = None) -> Any:
    """One polite fetcher per run; ETag/Last-Modified are kept in the database between runs."""
    from outreach.discovery import make_fetcher

    return make_fetcher(app.sessions, offline=offline, progress=progress)


class PartyOrCommandGroup(click.Group):
    """A group with an optional PARTY argument that does not swallow its subcommands' names.

    A plain click group parses ``outreach contacts add lakala`` as "list party ``add``, then
    run command ``lakala``", and ``outreach contacts lakala --json`` as "run command
    ``--json``". Here a first word that names a subcommand is that subcommand (so a party
    called ``add``, ``mark``, ``diff`` or ``tasks`` is listed with ``outreach contacts --json``
    and a filter), and flags after a PARTY are the group's own flags.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for i, arg in enumerate(args):
            if arg == "--":
                break
            if arg.startswith("-"):
                continue
            if arg in self.commands:
                # An empty PARTY in front: the group callback ignores it once a subcommand runs.
                args = [*args[:i], "", *args[i:]]
            elif all(rest.startswith("-") for rest in args[i + 1 :]):
                # PARTY followed only by flags (--json, --help): the flags are the group's.
                args = [*args[:i], *args[i + 1 :], arg]
            break
        return super().parse_args(ctx, args)


@main.group("contacts", cls=PartyOrCommandGroup, invoke_without_command=True)
@click.argument("party", required=False)
@json_option
@click.pass_context
def contacts_cmd(ctx: click.Context, party: str | None, as_json: bool) -> None:
    """List contact channels with their sources, dates, confidence and status."""
    if ctx.invoked_subcommand is not None:
        return
    from outreach.store import ContactPoint, Party

    app = ctx.obj.app()
    rows = []
    with app.sessions() as s:
        stmt = (
            select(ContactPoint, Party)
            .join(Party)
            .order_by(Party.key, ContactPoint.kind, ContactPoint.id)
        )
        if party:
            stmt = stmt.where(Party.key == party)
        for cp, p in s.execute(stmt):
            for prov in sorted(cp.provenance, key=lambda pr: pr.first_seen):
                rows.append(
                    {
                        "party": p.key,
                        "kind": cp.kind,
                        "value": cp.value,
                        "label": prov.label or cp.label,
                        "status": cp.status + ("" if cp.listed else " (unlisted)"),
                        "confidence": f"{cp.confidence:.2f}",
                        "source": prov.source,
                        "url": prov.url,
                        "as_of": prov.as_of or "",
                        "first_seen": prov.first_seen.date().isoformat(),
                        "last_seen": prov.last_seen.date().isoformat(),
                    }
                )
    if party and not rows and party not in app.config.parties:
        click.echo(f"no party {party!r} in the config", err=True)
        sys.exit(2)
    emit(
        rows,
        as_json=as_json,
        columns=None
        if as_json
        else [
            "party",
            "kind",
            "value",
            "label",
            "status",
            "confidence",
            "source",
            "as_of",
            "last_seen",
        ],
    )


@main.group("directory")
def directory_cmd() -> None:
    """The bundled directory of acquirers and escalation bodies."""


@directory_cmd.command("check")
@click.option(
    "--max-age",
    "max_age",
    type=click.IntRange(1),
    default=365,
    show_default=True,
    help="Days before a row counts as stale.",
)
@click.option(
    "--today", type=click.DateTime(["%Y-%m-%d"]), default=None, help="Check as of this date."
)
def directory_check(max_age: int, today: datetime | None) -> None:
    """Report rows whose facts were last checked more than --max-age days ago (exit 1 if any)."""
    from sources.directory import DirectoryError, check_staleness

    day = today.date() if today else clock.today()
    try:
        stale = check_staleness(day, max_age_days=max_age)
    except DirectoryError as exc:
        click.echo(f"the bundled directory is invalid: {exc}", err=True)
        sys.exit(2)
    for row in stale:
        click.echo(row.describe())
    click.echo(f"{len(stale)} stale row(s) as of {day} (older than {max_age} days)")
    if stale:
        sys.exit(1)


# ---------------------------------------------------------------------------- plan / run


@main.command("plan")
@_at_option
@json_option
@click.pass_obj
def plan_cmd(c: Ctx, at: datetime | None, as_json: bool) -> None:
    """Show what would be sent at a moment and why, writing nothing."""
    app = c.app()
    report = app.plan(at=_to_utc(at), dry_run=True)
    emit(describe(report), as_json=as_json)


@main.command("run")
@_at_option
@click.option("--offline", is_flag=True, help="Discover from config and bundled data only.")
@json_option
@click.pass_obj
def run_cmd(c: Ctx, at: datetime | None, offline: bool, as_json: bool) -> None:
    """One full pass: sync, discover, plan the due ladder steps, send, and summarise.

    Safe to run again at once (or from cron): a ladder step is never sent twice.
    """
    app = c.app()
    tune_gc()
    when = _to_utc(at)
    synced = app.sync(at=when)
    discovered = _discover(app, offline=offline)
    planned = app.plan(at=when)
    dispatched = _dispatch(app, when)
    rows = [
        {
            "stage": "sync",
            "result": f"{len(synced.added)} added, {len(synced.changed)} changed, {len(synced.deactivated)} inactive",
        },
        {
            "stage": "discover",
            "result": f"{len(discovered.added)} new contacts, {len(discovered.failures)} source failures",
        },
        {
            "stage": "plan",
            "result": f"{len(planned.planned)} steps planned, {sum(p.attempts for p in planned.planned)} attempts queued, {len(planned.waiting)} cases waiting",
        },
        {
            "stage": "send",
            "result": f"{dispatched.sent} sent, {dispatched.pending} awaiting you, {dispatched.failed} failed, {dispatched.unknown} unknown, {dispatched.rescheduled} retry later, {dispatched.deferred} rate-limited",
        },
    ]
    if as_json:
        emit(rows, as_json=True)
    else:
        click.echo(table(rows))
        for p in planned.planned:
            for note in p.missing:
                click.echo(f"warning: {p.case} step {p.step + 1}: {note}", err=True)
    if dispatched.failed:
        sys.exit(1)


def _dispatch(app: App, when: datetime | None) -> Any:
    try:
        channels = app.build_channels(os.environ)
    except ValueError as exc:
        click.echo(f"{app.config.source_path}: channels: {exc}", err=True)
        sys.exit(2)
    now = (lambda: when) if when is not None else clock.now
    try:
        dispatcher = app.dispatcher(channels, now=now)
    except HelperFailed as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)

    async def go() -> Any:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, dispatcher.request_stop)
        try:
            return await dispatcher.run_once()
        finally:
            await dispatcher.aclose()

    return asyncio.run(go())


# ---------------------------------------------------------------------------- status


@main.command("status")
@json_option
@click.pass_obj
def status_cmd(c: Ctx, as_json: bool) -> None:
    """Every case: its state, the ladder step it is on, and when the next one is due."""
    app = c.app()
    rows = []
    notes: list[str] = []
    with app.sessions() as s:
        for case in s.scalars(select(Case).order_by(Case.id)):
            ladder = case_ladder(app.config, case)  # the plan with this case's overrides
            plan = ladder.plan if ladder else None
            total = len(plan.steps) if plan else 0
            counts = dict(
                s.execute(
                    select(Attempt.state, func.count())
                    .join(Notice, Attempt.notice_id == Notice.id)
                    .where(Notice.case_id == case.id)
                    .group_by(Attempt.state)
                ).all()
            )
            if plan and case.next_step < total and case.state == "open":
                nxt = f"step {case.next_step + 1}/{total} {plan.steps[case.next_step].template} on {step_due(case, plan, case.next_step)}"
            elif case.state != "open":
                nxt = "-"
            else:
                nxt = f"ladder done ({total} steps); waiting for an answer"
            warnings = case_warnings(s, app.config, case)
            notes += [f"warning: {case.reference}: {w}" for w in warnings]
            rows.append(
                {
                    "case": case.reference,
                    "key": case.key,
                    "merchant": case.merchant.name,
                    "goal": case.goal,
                    "state": case.state if case.active else f"{case.state} (inactive)",
                    "steps_done": f"{case.next_step}/{total}",
                    "next": nxt,
                    "attempts": ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-",
                    **({"warnings": warnings} if as_json else {}),
                }
            )
    emit(rows, as_json=as_json)
    if not as_json:
        for note in notes:
            click.echo(note)


# ---------------------------------------------------------------------------- audit


@main.group()
def audit() -> None:
    """The evidence: the event log and its verification."""


def _case_chain(app: App, ref: str) -> tuple[Case, str]:
    with app.sessions() as s:
        case = find_case(s, ref)
    if case is None:
        click.echo(no_case(ref), err=True)
        sys.exit(2)
    return case, case.chain


@audit.command("log")
@click.option("--case", "case_ref", default=None, help="Only this case (reference or key).")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the last N events.")
@json_option
@click.pass_obj
def audit_log(c: Ctx, case_ref: str | None, limit: int | None, as_json: bool) -> None:
    """The append-only event log with timestamps and hashes."""
    app = c.app()
    stmt = select(Event).order_by(Event.id)
    if case_ref:
        _case, chain = _case_chain(app, case_ref)
        stmt = select(Event).where(Event.chain == chain).order_by(Event.seq)
    with app.sessions() as s:
        events = list(s.scalars(stmt))
    if limit:
        events = events[-limit:]
    if as_json:
        import json

        emit(
            [{**json.loads(e.body), "prev_hash": e.prev_hash, "hash": e.hash} for e in events],
            as_json=True,
        )
        return
    rows = [
        {
            "at": e.at,
            "chain": e.chain,
            "seq": e.seq,
            "kind": e.kind,
            "summary": _summary(e),
            "hash": e.hash[:16],
        }
        for e in events
    ]
    emit(rows, as_json=False)


def _summary(e: Event) -> str:
    import json

    data = json.loads(e.body)["data"]
    keys = (
        "recipient",
        "channel",
        "template",
        "party",
        "value",
        "error",
        "reason",
        "provider_id",
        "reference",
        "tracking",
        "outcome",
    )
    parts = [
        f"{k}={data[k]}" for k in keys if isinstance(data, dict) and data.get(k) not in (None, "")
    ]
    return " ".join(parts)


@audit.command("verify")
@click.option("--case", "case_ref", default=None, help="Only this case (reference or key).")
@json_option
@click.pass_obj
def audit_verify(c: Ctx, case_ref: str | None, as_json: bool) -> None:
    """Recompute every hash chain and timestamp anchor; exit 1 naming the first problem."""
    from outreach.anchor import verify_anchors

    app = c.app()
    ca = app.config.proof.tsa_ca_file
    roots = app.config.resolve_path(ca).read_bytes() if ca else None
    with app.sessions() as s:
        chains = [_case_chain(app, case_ref)[1]] if case_ref else None
        reports = verify_chains(s, chains)
        anchors = verify_anchors(s, roots, chains=chains)
    problems: list[Any] = [r.problem for r in reports if r.problem is not None]
    problems += anchors.problems
    total = sum(r.events for r in reports)
    if as_json:
        emit(
            [
                {
                    "chain": r.chain,
                    "events": r.events,
                    "head": r.head_hash,
                    "problem": str(r.problem) if r.problem else None,
                }
                for r in reports
            ],
            as_json=True,
        )
    elif problems:
        for p in problems:
            click.echo(f"BROKEN {p}")
    else:
        anchored = f"; {anchors.anchors} timestamp anchors checked" if anchors.anchors else ""
        click.echo(f"OK: {len(reports)} chains, {total} events, every hash recomputed{anchored}")
    if not as_json:
        if anchors.failed_anchors:
            click.echo(
                f"note: {anchors.failed_anchors} anchoring attempt(s) failed (TSA unreachable); "
                "a later successful anchor covers those heads"
            )
        for note in anchors.notes:
            click.echo(f"note: {note}")
    if problems:
        sys.exit(1)


@audit.command("anchor")
@click.pass_obj
def audit_anchor(c: Ctx) -> None:
    """Time-stamp the heads of every chain that changed, now (RFC 3161, [proof] tsa_urls)."""
    import httpx

    from outreach.anchor import anchor_now

    app = c.app()
    urls = app.config.proof.tsa_urls
    if not urls:
        click.echo(
            f"{app.config.source_path}: proof.tsa_urls: no time-stamping authority configured",
            err=True,
        )
        sys.exit(2)

    async def go() -> Any:
        async with httpx.AsyncClient() as client:
            return await anchor_now(app.sessions, list(urls), client)

    report = asyncio.run(go())
    if report.anchored == 0:
        click.echo("nothing to anchor: no chain changed since the last anchor")
    elif report.error:
        click.echo(
            f"anchoring {report.anchored} chain heads failed; will retry at the next anchor:\n{report.error}",
            err=True,
        )
        sys.exit(1)
    else:
        click.echo(
            f"anchored {report.anchored} chain heads: root {report.root} timestamped {report.gen_time} by {report.tsa_url}"
        )


# Command groups that live in their own modules (imported for their side effect of attaching).
from outreach import (  # noqa: E402, F401
    cli_contacts,
    cli_evidence,
    cli_inbound,
    cli_manual,
    cli_receipts,
    cli_schedule,
)
