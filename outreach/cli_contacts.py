"""CLI commands: contacts. Attached to the `outreach` group defined in :mod:`outreach.cli`.

``outreach contacts [PARTY]`` (in :mod:`outreach.cli`) lists; this module adds what a human
does with contacts: add one found by hand, mark one good or bad, see what changed, and work
through the lookups only a human can do (the company registry). Each is a few lines over
:mod:`outreach.discovery`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click
from sqlalchemy import select

from outreach import clock
from outreach.app import App
from outreach.cli import Ctx, _to_utc, contacts_cmd, json_option
from outreach.contacts import (
    MANUAL_KINDS,
    ContactChange,
    ContactError,
    add_contact,
    close_task,
    contact_changes,
    mark_contact,
    open_tasks,
)
from outreach.models_contacts import LookupTask
from outreach.output import emit
from outreach.store import Party


def _fail(message: str) -> None:
    click.echo(message, err=True)
    sys.exit(2)


def _ensure_party(app: App, key: str) -> None:
    """A party in the config but not yet in the database is synced first; else exit 2."""
    with app.sessions() as s:
        known = s.scalars(select(Party.id).where(Party.key == key)).first() is not None
    if known:
        return
    if key not in app.config.parties:
        names = ", ".join(sorted(app.config.parties)) or "none defined"
        _fail(f"no party {key!r} in the config (expected one of: {names})")
    app.sync()


def _print_change(change: ContactChange, source: str | None = None) -> None:
    what = {
        "added": "added",
        "relisted": "listed again",
        "source added": "added a source to",
        "source relisted": "listed again by its source",
        "unchanged": "already recorded:",
        "status": "status changed:",
    }[change.change]
    click.echo(
        f"{what} {change.party} {change.kind} {change.value}" + (f" ({source})" if source else "")
    )
    for item in change.answered:
        click.echo(f"  answered task {item}")
    for item in change.closed:
        click.echo(f"  closed task {item}: every field it asked for is answered")
    for warning in change.warnings:
        click.echo(f"warning: {warning}", err=True)


@contacts_cmd.command("add")
@click.argument("party")
@click.option(
    "--kind",
    type=click.Choice(MANUAL_KINDS),
    required=True,
    help="What the value is: email, phone (voice), sms (a mobile), postal, web_form, "
    "webhook or website.",
)
@click.option("--value", required=True, help="The value as written, e.g. 0755-86013388.")
@click.option("--label", default="", help="What the source calls it, e.g. 企业联系电话.")
@click.option(
    "--source",
    "source_text",
    required=True,
    help='Where you read it, e.g. "annual report 2025"; recorded as "manual: <text>".',
)
@click.option("--url", default=None, help="The page you read it on (http/https).")
@json_option
@click.pass_obj
def contacts_add(
    c: Ctx,
    party: str,
    kind: str,
    value: str,
    label: str,
    source_text: str,
    url: str | None,
    as_json: bool,
) -> None:
    """Record a contact you found yourself (an annual report, a letterhead), with its source.

    The value is normalised (phones to E.164, e-mail checked) and refused with exit 2, writing
    nothing, when it is not valid. The addition is chained on the party's evidence chain and
    answers the party's open lookup tasks that asked for this kind (`outreach contacts tasks`).

    \b
    Example:
      outreach contacts add shenzhen-agent --kind phone --value 0755-86013388 \\
        --label 企业联系电话 --source "annual report 2025" --url https://www.gsxt.gov.cn/...
    """
    app = c.app()
    _ensure_party(app, party)
    try:
        with app.sessions.begin() as s:
            change = add_contact(
                s, party, kind, value, source=source_text, label=label, url=url, at=clock.now()
            )
    except ContactError as exc:
        _fail(f"nothing recorded: {exc}")
        return
    if as_json:
        emit([vars(change)], as_json=True)
    else:
        _print_change(change)


@contacts_cmd.command("mark")
@click.argument("party")
@click.argument("value")
@click.option(
    "--status",
    type=click.Choice(["good", "bad", "unknown"]),
    required=True,
    help="good: it answered; bad: dead, wrong or refused (never used again); unknown: reset.",
)
@click.option("--reason", required=True, help="Why, in a few words; it goes into the evidence.")
@click.option(
    "--kind",
    type=click.Choice(MANUAL_KINDS),
    default=None,
    help="Needed only when the value is recorded under two kinds (a mobile as phone and sms).",
)
@click.pass_obj
def contacts_mark(
    c: Ctx, party: str, value: str, status: str, reason: str, kind: str | None
) -> None:
    """Mark a contact good or bad by hand, e.g. after a call; chained with the reason.

    VALUE may be written as it is listed (+8675586013388) or as you have it (0755-86013388).
    A bad contact is never used by the ladder again until marked good.
    """
    app = c.app()
    _ensure_party(app, party)
    try:
        with app.sessions.begin() as s:
            change = mark_contact(s, party, value, status, reason, kind=kind, at=clock.now())
    except ContactError as exc:
        _fail(f"nothing changed: {exc}")
        return
    if change.change == "unchanged":
        click.echo(f"{change.party} {change.kind} {change.value} is already {status}")
    else:
        click.echo(f"{change.party} {change.kind} {change.value} is now {status}: {reason}")


@contacts_cmd.command("diff")
@click.option(
    "--since",
    type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M"]),
    default=None,
    help="Only changes from this moment on (Beijing time), e.g. 2026-11-01. Default: all.",
)
@click.option("--party", default=None, help="Only this party key.")
@json_option
@click.pass_obj
def contacts_diff(c: Ctx, since: datetime | None, party: str | None, as_json: bool) -> None:
    """What changed: contacts added, no longer listed, listed again, sources gained or lost,
    and status changes (by hand or after a permanent delivery failure), oldest first.

    Read from the hash-chained events, so it is the same history `outreach audit verify`
    checks.
    """
    app = c.app()
    if party is not None and party not in app.config.parties:
        with app.sessions() as s:
            if s.scalars(select(Party.id).where(Party.key == party)).first() is None:
                _fail(f"no party {party!r} in the config")
    with app.sessions() as s:
        rows = contact_changes(s, since=_to_utc(since), party=party)
    if as_json:
        emit(rows, as_json=True)
        return
    for row in rows:
        row["at"] = _local(row["at"])
    emit(
        rows, as_json=False, columns=["at", "party", "change", "kind", "value", "source", "detail"]
    )


def _local(stamp: str) -> str:
    """An event's RFC 3339 UTC stamp as Beijing time to the minute, the way users read it."""
    moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return moment.astimezone(clock.CST).strftime("%Y-%m-%d %H:%M")


@contacts_cmd.group("tasks", invoke_without_command=True)
@click.option("--party", default=None, help="Only this party key.")
@click.option("--all", "include_closed", is_flag=True, help="Closed tasks too.")
@json_option
@click.pass_context
def contacts_tasks(
    ctx: click.Context, party: str | None, include_closed: bool, as_json: bool
) -> None:
    """Lookups only a human can do, with the exact page, what to search and what to copy.

    Discovery raises each task once (e.g. the company registry's annual report, which blocks
    automated lookups) and shows it on every run until it is answered with
    `outreach contacts add` or closed with `outreach contacts tasks close ID --reason …`.
    """
    if ctx.invoked_subcommand is not None:
        return
    app = ctx.obj.app()
    with app.sessions() as s:
        tasks = [_task_row(t) for t in open_tasks(s, party=party, include_closed=include_closed)]
    if as_json:
        emit(tasks, as_json=True)
        return
    if not tasks:
        click.echo("no open lookup tasks" if not include_closed else "no lookup tasks")
        return
    for row in tasks:
        _print_task(row)


def _task_row(task: LookupTask) -> dict[str, Any]:
    wants = dict(task.wants or {})
    answered = list(task.answered or [])
    return {
        "id": task.id,
        "party": task.party.key,
        "source": task.source,
        "key": task.key,
        "state": task.state,
        "opened": _local_dt(task.opened_at),
        "closed": _local_dt(task.closed_at) if task.closed_at else None,
        "close_reason": task.close_reason,
        "title": task.title,
        "url": task.url,
        "fields": list(task.fields or []),
        "still_wanted": {k: v for k, v in wants.items() if k not in answered},
        "answered": answered,
        "advice": task.advice,
    }


def _local_dt(moment: datetime) -> str:
    return moment.astimezone(clock.CST).strftime("%Y-%m-%d %H:%M")


def _print_task(row: dict[str, Any]) -> None:
    state = f"open since {row['opened']}"
    if row["state"] != "open":
        state = f"closed {row['closed']}: {row['close_reason']}"
    click.echo(f"#{row['id']}  {row['party']}  ({row['source']}, {state})")
    click.echo(f"    {row['title']}")
    if row["url"]:
        click.echo(f"    open:  {row['url']}")
    if row["fields"]:
        click.echo(f"    copy:  {', '.join(row['fields'])}")
    if row["answered"]:
        still: Sequence[str] = list(row["still_wanted"].values())
        click.echo(
            f"    answered: {', '.join(row['answered'])}; still wanted: {', '.join(still) or '-'}"
        )
    for line in (row["advice"] or "").splitlines():
        click.echo(f"    {line}")
    if row["state"] == "open":
        click.echo(f'    close: outreach contacts tasks close {row["id"]} --reason "…"')
    click.echo("")


@contacts_tasks.command("close")
@click.argument("task_id", type=int)
@click.option("--reason", required=True, help='Why, e.g. "no e-mail in the 2025 report".')
@click.pass_obj
def contacts_tasks_close(c: Ctx, task_id: int, reason: str) -> None:
    """Close a lookup task that cannot be answered in full; chained with the reason."""
    app = c.app()
    try:
        with app.sessions.begin() as s:
            task, closed_now = close_task(s, task_id, reason, at=clock.now())
            party = task.party.key
    except ContactError as exc:
        _fail(f"nothing changed: {exc}")
        return
    if not closed_now:
        click.echo(f"task #{task_id} ({party}) was already closed: {task.close_reason}")
    else:
        click.echo(f"closed task #{task_id} ({party}): {reason}")
