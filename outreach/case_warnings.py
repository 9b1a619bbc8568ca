"""What a person should know about a case before trusting its schedule (``outreach status``).

A route with no usable contact left, a next step whose party has no contact of the kind it
needs, a ladder running past the years the working-day calendar knows: each is a warning, so
the operator hears of it before a deadline passes silently.
"""

from __future__ import annotations

from datetime import datetime
from importlib.metadata import PackageNotFoundError, version

from sqlalchemy import select
from sqlalchemy.orm import Session

from outreach import clock
from outreach.config import Config
from outreach.ladder import (
    REACHED_STATES,
    CaseLadder,
    Overrides,
    case_ladder,
    projected_end,
    target_parties,
    usable_contacts,
)
from outreach.models_schedule import ExhaustedRoute
from outreach.store import Attempt, Case, ContactPoint, Notice, Party
from outreach.workdays import calendar_gaps

# Contact-point kinds that can carry each ``via`` kind.


def _calendar_version() -> str:
    try:
        return version("chinesecalendar")
    except PackageNotFoundError:  # pragma: no cover - it is a dependency
        return "?"


def case_warnings(
    session: Session,
    config: Config,
    case: Case,
    *,
    at: datetime | None = None,
    overrides: Overrides | None = None,
) -> list[str]:
    """What a user must know about ``case`` that its state alone does not say.

    Dead ends (no good channel left), failures that are not a contact's fault, a next step
    that has no one or nothing to go to, and years whose holiday calendar is not published
    yet (working days there are counted Monday–Friday). Meant for ``outreach status``.
    """
    today = clock.today(at)
    ladder = case_ladder(config, case, overrides)
    if ladder is None:
        return [f"plan {case.plan!r} is not in the config: the ladder cannot move"]
    out: list[str] = []
    dead = session.execute(
        select(ExhaustedRoute, Notice, Party)
        .join(Notice, ExhaustedRoute.notice_id == Notice.id)
        .join(Party, Notice.party_id == Party.id)
        .where(Notice.case_id == case.id)
        .order_by(Notice.step, Party.key, ExhaustedRoute.route)
    ).all()
    for route, notice, party in dead:
        reached = sorted(
            set(
                session.scalars(
                    select(Attempt.kind).where(
                        Attempt.notice_id == notice.id, Attempt.state.in_(REACHED_STATES)
                    )
                )
            )
        )
        what = f"step {notice.step + 1} ({notice.template}) to {party.key}"
        if reached:
            out.append(f"{what}: {route.reason}; reached by {', '.join(reached)} only")
        else:
            out.append(f"{what}: no good channel left ({route.reason}); the ladder moved on")
    failed = session.execute(
        select(Attempt, Notice, Party, ContactPoint)
        .join(Notice, Attempt.notice_id == Notice.id)
        .join(Party, Notice.party_id == Party.id)
        .join(ContactPoint, Attempt.contact_point_id == ContactPoint.id)
        .where(Notice.case_id == case.id, Attempt.state == "failed", ContactPoint.status != "bad")
        .order_by(Attempt.id)
    ).all()
    for a, notice, party, _cp in failed:
        out.append(
            f"step {notice.step + 1} to {party.key} via {a.kind} ({a.recipient}) failed: "
            f"{a.last_error or 'no detail'} — not the contact's fault; check channel {a.channel!r}"
        )
    if case.state == "open" and case.active and case.next_step < len(ladder.steps):
        out += _next_step_warnings(session, config, case, ladder)
    years = calendar_gaps(min(case.opened_on, today), projected_end(case, ladder, today))
    for year in years:
        out.append(
            f"no official holiday calendar for {year} in chinesecalendar {_calendar_version()}: "
            f"working days in {year} are counted Monday–Friday until the package is updated"
        )
    return out


def _next_step_warnings(
    session: Session, config: Config, case: Case, ladder: CaseLadder
) -> list[str]:
    index = case.next_step
    step = ladder.steps[index]
    what = f"next step {index + 1} ({step.template})"
    if index in ladder.skip:
        return [f"{what} is skipped for this case (override)"]
    parties = target_parties(session, case, step)
    if not parties:
        return [f"{what}: no active party for {step.to!r}; it will be skipped"]
    out: list[str] = []
    for party in parties:
        if not any(usable_contacts(session, party, via) for via in step.via):
            out.append(
                f"{what} to {party.key}: no usable contact for {', '.join(step.via)} "
                "(run discovery or add one under [parties])"
            )
    return out
