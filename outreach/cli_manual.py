"""CLI commands: letters to post and calls to make (``outreach letter …``, ``outreach manual …``).

Thin over :mod:`outreach.manual`: parse and read every input first (tracking number, evidence
files), then one transaction records the event; any :class:`ManualError` exits 2 with one
line and nothing written.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from outreach import clock
from outreach.cli import Ctx, _to_utc, json_option, main
from outreach.manual import (
    CARRIERS,
    OUTCOMES,
    VIAS,
    EvidenceFile,
    ManualError,
    Recorded,
    Task,
    parse_tracking,
    pending_tasks,
    read_evidence,
    record_letter_posted,
    record_manual_contact,
)
from outreach.output import emit

F = TypeVar("F", bound=Callable[..., Any])


def _fail(exc: Exception) -> NoReturn:
    click.echo(f"error: {exc}; nothing was written", err=True)
    sys.exit(2)


def _when_option(help_text: str) -> Callable[[F], F]:
    def wrap(f: F) -> F:
        return click.option(
            "--at",
            "at",
            type=click.DateTime(["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"]),
            default=None,
            help=help_text,
        )(f)

    return wrap


def _stamp(moment: datetime | None) -> str:
    return moment.astimezone(clock.CST).strftime("%Y-%m-%d %H:%M") if moment else ""


def _report(r: Recorded, what: str) -> None:
    task = f"; attempt {r.attempt} is now {r.attempt_state}" if r.attempt is not None else ""
    click.echo(f"recorded {what} as {r.chain} #{r.seq} ({r.hash[:16]}){task}")
    for note in r.notes:
        click.echo(f"note: {note}", err=True)


def _task_query(c: Ctx, kind: str, case_ref: str | None) -> list[Task]:
    app = c.app()
    try:
        with app.sessions() as s:
            return pending_tasks(s, kind, case_ref)
    except ManualError as exc:
        _fail(exc)


# ---------------------------------------------------------------------------- letters


@main.group("letter")
def letter_cmd() -> None:
    """Printed letters: which wait to be posted, and recording the courier's tracking number.

    The letter channel writes a printable letter per attempt and leaves the attempt pending;
    it counts as sent only once `outreach letter sent` records the tracking number.
    """


@letter_cmd.command("list")
@click.option("--case", "case_ref", default=None, help="Only this case (reference or key).")
@json_option
@click.pass_obj
def letter_list(c: Ctx, case_ref: str | None, as_json: bool) -> None:
    """Letters waiting to be posted, with the printable file of each."""
    tasks = _task_query(c, "postal", case_ref)
    rows = [
        {
            "attempt": t.attempt,
            "case": t.case,
            "party": t.party,
            "to": t.party_name,
            "address": t.recipient,
            "step": t.step,
            "template": t.template,
            "since": _stamp(t.pending_since),
            "file": t.file or "",
        }
        for t in tasks
    ]
    if as_json:
        emit(rows, as_json=True)
        return
    emit(rows, as_json=False, columns=["attempt", "case", "party", "address", "since", "file"])
    if rows:
        click.echo(
            "\nAfter posting: outreach letter sent CASE --tracking NUMBER "
            "[--carrier EMS] [--receipt PHOTO]"
        )


@letter_cmd.command("sent")
@click.argument("case_ref", metavar="CASE")
@click.option(
    "--tracking", required=True, help="The courier's tracking number, e.g. EA473124829CN."
)
@click.option(
    "--carrier",
    type=click.Choice(list(CARRIERS), case_sensitive=False),
    default=None,
    help="Courier; guessed from the number's shape (S10 E… = EMS, SF…, JD…, YT…) when left out.",
)
@click.option(
    "--attempt",
    "attempt_id",
    type=int,
    default=None,
    help="The letter's attempt id (outreach letter list) when the case has several waiting.",
)
@click.option(
    "--receipt",
    "receipt_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A photo or scan of the courier's receipt/waybill; hashed and kept as evidence.",
)
@_when_option("When you handed it to the courier (Beijing time, e.g. 2026-11-24T10:30).")
@click.pass_obj
def letter_sent(
    c: Ctx,
    case_ref: str,
    tracking: str,
    carrier: str | None,
    attempt_id: int | None,
    receipt_path: Path | None,
    at: datetime | None,
) -> None:
    """Record that CASE's letter was posted: the attempt becomes sent and a `letter_posted`
    event with the carrier, tracking number and receipt hash joins the case's hash chain.

    S10 numbers (EMS, China Post: two letters, nine digits, CN) must carry a valid check
    digit; a mistyped number exits 2 and nothing is written.
    """
    try:
        parsed = parse_tracking(tracking, carrier)
        receipt = read_evidence(receipt_path) if receipt_path is not None else None
    except ManualError as exc:
        _fail(exc)
    app = c.app()
    try:
        with app.sessions.begin() as s:
            result = record_letter_posted(
                s,
                case_ref,
                parsed,
                attempt_id=attempt_id,
                receipt=receipt,
                posted_at=_to_utc(at),
            )
    except ManualError as exc:
        _fail(exc)
    _report(result, f"{parsed.carrier} {parsed.number}")


# ---------------------------------------------------------------------------- calls / visits


@main.group("manual")
def manual_cmd() -> None:
    """Phone calls and visits: pending call tasks, and logging what happened as evidence."""


@manual_cmd.command("list")
@click.option("--case", "case_ref", default=None, help="Only this case (reference or key).")
@json_option
@click.pass_obj
def manual_list(c: Ctx, case_ref: str | None, as_json: bool) -> None:
    """Call tasks waiting to be made, with the number, the script file and when to call."""
    tasks = _task_query(c, "phone", case_ref)
    rows = [
        {
            "attempt": t.attempt,
            "case": t.case,
            "party": t.party,
            "to": t.party_name,
            "number": t.recipient,
            "step": t.step,
            "template": t.template,
            "since": _stamp(t.pending_since),
            "no_answers": t.no_answers,
            "call_from": _stamp(t.due),
            "script": t.file or "",
            "command": (
                f"outreach manual log {t.case} --party {t.party} --via phone --number "
                f'{t.recipient} --outcome reached|promised|refused|no-answer --note "…"'
            ),
        }
        for t in tasks
    ]
    if as_json:
        emit(rows, as_json=True)
        return
    emit(
        rows,
        as_json=False,
        columns=["attempt", "case", "party", "number", "no_answers", "call_from", "script"],
    )
    if rows:
        click.echo(
            "\nAfter a call: outreach manual log CASE --party P --via phone "
            '--outcome reached|promised|refused|no-answer --note "…" [--evidence FILE]'
        )


@manual_cmd.command("log")
@click.argument("case_ref", metavar="CASE")
@click.option("--party", required=True, help="Key of the party you called or visited.")
@click.option("--via", type=click.Choice(VIAS), required=True, help="How you contacted them.")
@click.option(
    "--outcome",
    type=click.Choice(OUTCOMES),
    required=True,
    help="no-answer, refused, promised (to act) or reached (spoke to them).",
)
@click.option("--note", required=True, help="Who you spoke to and what they said.")
@click.option("--number", default=None, help="The number you called (default: the task's).")
@click.option(
    "--evidence",
    "evidence_paths",
    type=click.Path(path_type=Path, dir_okay=False),
    multiple=True,
    help="A recording, photo or screenshot; repeat for several. Each is hashed and kept.",
)
@click.option(
    "--attempt",
    "attempt_id",
    type=int,
    default=None,
    help="The call task's attempt id, when several are pending (or to attach a visit to it).",
)
@_when_option("When the call or visit happened (Beijing time, e.g. 2026-11-24T15:05).")
@click.pass_obj
def manual_log(
    c: Ctx,
    case_ref: str,
    party: str,
    via: str,
    outcome: str,
    note: str,
    number: str | None,
    evidence_paths: tuple[Path, ...],
    attempt_id: int | None,
    at: datetime | None,
) -> None:
    """Log a call or visit to a party of CASE as a `manual_contact` event on its hash chain.

    Every --evidence file is stored and its SHA-256 goes into the event. A pending call task
    for that party (and number) is completed: reached, promised and refused make it sent;
    no-answer keeps it pending until the next working day, and the third no-answer fails it.
    """
    files: list[EvidenceFile] = []
    try:
        for path in evidence_paths:
            files.append(read_evidence(path))
    except ManualError as exc:
        _fail(exc)
    app = c.app()
    try:
        with app.sessions.begin() as s:
            result = record_manual_contact(
                s,
                case_ref,
                party=party,
                via=via,
                outcome=outcome,
                note=note,
                number=number,
                evidence=files,
                attempt_id=attempt_id,
                contacted_at=_to_utc(at),
            )
    except ManualError as exc:
        _fail(exc)
    _report(result, f"{via} {outcome} ({len(files)} evidence file(s))")
