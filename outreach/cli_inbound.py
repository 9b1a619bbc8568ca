"""CLI commands: inbound. Attached to the `outreach` group defined in :mod:`outreach.cli`.

``outreach inbox`` is the review desk for the answers mailbox: what matched no case waits
here until a person assigns it to a case or dismisses it. Every command is a few lines over
:mod:`outreach.inbound`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import asdict
from typing import Any

import click
from sqlalchemy import select

from outreach import clock
from outreach.cli import Ctx, json_option, main
from outreach.inbound import (
    InboundConfigError,
    InboundError,
    InboxError,
    assign_message,
    dismiss_message,
    find_message,
    message_bytes,
    poll,
)
from outreach.mailparse import parse_mail
from outreach.models_inbound import InboundMessage
from outreach.output import emit
from outreach.store import Case


def _when(moment: Any) -> str:
    return "" if moment is None else moment.astimezone(clock.CST).strftime("%Y-%m-%d %H:%M")


def _row(m: InboundMessage, cases: dict[int, str], *, full: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": m.id,
        "received": _when(m.mailbox_date or m.received_at),
        "status": m.status,
        "kind": m.kind,
        "from": m.from_address or "",
        "subject": m.subject,
        "case": cases.get(m.case_id, "") if m.case_id is not None else "",
        "matched_by": m.matched_by or "",
        "note": m.note or "",
    }
    if full:
        row.update(
            message_id=m.message_id,
            from_name=m.from_name,
            sha256=m.sha256,
            mailbox=m.mailbox,
            uid=m.uid,
            sent_at=m.sent_at.isoformat() if m.sent_at else None,
            received_at=m.received_at.isoformat(),
            details=m.details,
        )
    return row


@main.group("inbox", invoke_without_command=True)
@click.option(
    "--all", "show_all", is_flag=True, help="List every message, not only held and recent ones."
)
@click.option(
    "--limit",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="How many recent messages to list after the held ones.",
)
@json_option
@click.pass_context
def inbox_cmd(ctx: click.Context, show_all: bool, limit: int, as_json: bool) -> None:
    """Mail from the answers mailbox: first what is HELD for review, then the most recent.

    A message is held when it answers none of our notices and cites no known case reference
    (or cites several). Nothing is ever dropped. Read one with `outreach inbox show ID`, then
    attach it to its case with `outreach inbox assign ID CASE` (the same effect as a match: a
    person's answer stops that case's ladder) or `outreach inbox dismiss ID --note "why"`.
    `outreach inbox poll` fetches new mail now.
    """
    if ctx.invoked_subcommand is not None:
        return
    app = ctx.obj.app()
    with app.sessions() as s:
        cases = {cid: ref for cid, ref in s.execute(select(Case.id, Case.reference))}
        if show_all:
            rows = list(s.scalars(select(InboundMessage).order_by(InboundMessage.id)))
        else:
            held = list(
                s.scalars(
                    select(InboundMessage)
                    .where(InboundMessage.status == "held")
                    .order_by(InboundMessage.id)
                )
            )
            recent = list(
                s.scalars(
                    select(InboundMessage)
                    .where(InboundMessage.status != "held")
                    .order_by(InboundMessage.id.desc())
                    .limit(limit)
                )
            )
            rows = held + recent
    emit(
        [_row(m, cases, full=as_json) for m in rows],
        as_json=as_json,
        columns=None
        if as_json
        else ["id", "received", "status", "kind", "from", "subject", "case", "note"],
    )


@inbox_cmd.command("poll")
@json_option
@click.pass_obj
def inbox_poll(c: Ctx, as_json: bool) -> None:
    """Fetch the [inbound] IMAP mailbox once now, match what arrived, and print the counts.

    Exit 1 when the server cannot be reached or refuses the login; 2 when [inbound] is
    missing or unusable (e.g. its password variable is not set).
    """
    app = c.app()
    inbound = app.config.inbound
    if inbound is None:
        click.echo(
            f"{app.config.source_path}: inbound: no [inbound] section; add one to poll a mailbox",
            err=True,
        )
        sys.exit(2)
    click.echo(f"  … polling {inbound.imap_host} {inbound.mailbox}", err=True)
    try:
        report = asyncio.run(poll(app.sessions, app.config, env=os.environ))
    except InboundConfigError as exc:
        click.echo(f"{app.config.source_path}: {exc}", err=True)
        sys.exit(2)
    except InboundError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    if as_json:
        emit([asdict(report)], as_json=True)
    else:
        click.echo(report.summary())


@inbox_cmd.command("show")
@click.argument("msg_id")
@click.option("--raw", is_flag=True, help="Write the exact bytes as received (an .eml).")
@click.pass_obj
def inbox_show(c: Ctx, msg_id: str, raw: bool) -> None:
    """Show one message (by inbox id or Message-ID): headers, status and its text."""
    app = c.app()
    with app.sessions() as s:
        try:
            row = find_message(s, msg_id)
        except InboxError as exc:
            click.echo(str(exc), err=True)
            sys.exit(2)
        data = message_bytes(s, row)
        case = s.get(Case, row.case_id) if row.case_id is not None else None
    if raw:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    parsed = parse_mail(data, reference_prefix=app.config.sender.reference_prefix)
    lines = [
        f"id:         {row.id} ({row.status}, {row.kind})",
        f"from:       {parsed.from_name} <{parsed.from_address or ''}>",
        f"subject:    {parsed.subject}",
        f"date:       {_when(parsed.date)}",
        f"received:   {_when(row.mailbox_date or row.received_at)}",
        f"message-id: {row.message_id or ''}",
        f"sha256:     {row.sha256}",
        f"case:       {case.reference if case else ''}"
        + (f" (by {row.matched_by})" if row.matched_by else ""),
    ]
    if row.note:
        lines.append(f"note:       {row.note}")
    click.echo("\n".join(lines) + "\n\n" + parsed.text.rstrip())


@inbox_cmd.command("assign")
@click.argument("msg_id")
@click.argument("case_ref", metavar="CASE")
@click.option("--note", default=None, help="Why this message belongs to the case.")
@click.pass_obj
def inbox_assign(c: Ctx, msg_id: str, case_ref: str, note: str | None) -> None:
    """Attach a held message to CASE (reference or key), with the effects of a match.

    A person's answer stops the case's ladder and marks the contact good; a delivery report
    marks the attempt and contact; an auto-reply is recorded only. Everything is chained.
    """
    app = c.app()
    try:
        with app.sessions.begin() as s:
            done = assign_message(
                s,
                msg_id,
                case_ref,
                note=note,
                reference_prefix=app.config.sender.reference_prefix,
            )
            state = s.scalars(select(Case.state).where(Case.reference == done.case)).one()
    except InboxError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    click.echo(
        f"message {done.message} assigned to {done.case}: {', '.join(done.effects) or 'recorded'}"
        f"; case is {state}"
    )


@inbox_cmd.command("dismiss")
@click.argument("msg_id")
@click.option("--note", required=True, help="Why it needs nothing (kept with the message).")
@click.pass_obj
def inbox_dismiss(c: Ctx, msg_id: str, note: str) -> None:
    """Mark a held message as reviewed and of no consequence (spam, a newsletter). It is
    kept, with your note, and can still be assigned later."""
    app = c.app()
    try:
        with app.sessions.begin() as s:
            done = dismiss_message(s, msg_id, note)
    except InboxError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    click.echo(f"message {done.message} dismissed")
