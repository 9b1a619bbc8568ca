"""The escalation ladder: which step of which case is due, to whom, by which channels.

A step is planned once: the case's ``next_step`` pointer and the unique (case, step, party)
constraint on notices move in the same transaction, so neither a second run nor a second
worker can plan it again. Planning renders the notice (its text is hashed and chained) and
queues one outbox attempt per chosen contact point; dispatch sends them.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from outreach import clock
from outreach.config import Config, PlanConfig, StepConfig
from outreach.notices import VIA_NAMES, NoticeContext, render
from outreach.proof import record_event, store_blob
from outreach.store import Attempt, Case, ContactPoint, Notice, Party
from outreach.workdays import add_working_days
from sources.normalize import is_mobile

# Contact-point kinds that can carry each ``via`` kind.
VIA_CONTACT_KINDS = {
    "email": ("email",),
    "sms": ("sms", "phone"),
    "webhook": ("webhook",),
    "postal": ("postal",),
    "phone": ("phone",),
}


@dataclass
class PlannedStep:
    case: str
    step: int
    template: str
    parties: list[str]
    attempts: int
    missing: list[str] = field(default_factory=list)  # "party: no usable sms contact"
    due: date | None = None


@dataclass
class PlanReport:
    planned: list[PlannedStep] = field(default_factory=list)
    waiting: list[tuple[str, int, date]] = field(default_factory=list)  # (case, step, due)


def step_due(case: Case, plan: PlanConfig, index: int) -> date:
    step = plan.steps[index]
    base = (
        case.opened_on
        if (index == 0 or step.since == "opening" or case.last_step_on is None)
        else case.last_step_on
    )
    return add_working_days(base, step.after)


def next_deadline(case: Case, plan: PlanConfig, index: int, today: date) -> date:
    """The date printed as the reply deadline: when the next step would go out."""
    if index + 1 < len(plan.steps):
        nxt = plan.steps[index + 1]
        base = case.opened_on if nxt.since == "opening" else today
        return max(add_working_days(base, nxt.after), add_working_days(today, 1))
    return add_working_days(today, plan.reply_days)


def target_parties(session: Session, case: Case, step: StepConfig) -> list[Party]:
    if step.to not in ("agent", "acquirer", "association", "regulator"):
        party = session.scalars(select(Party).where(Party.key == step.to)).one_or_none()
        return [party] if party is not None and party.active else []
    if step.to == "agent":
        found = {
            t.agent.id: t.agent for t in case.terminals if t.agent is not None and t.agent.active
        }
        return sorted(found.values(), key=lambda p: p.key)
    if step.to == "acquirer":
        found = {t.acquirer.id: t.acquirer for t in case.terminals if t.acquirer.active}
        return sorted(found.values(), key=lambda p: p.key)
    return list(
        session.scalars(
            select(Party).where(Party.role == step.to, Party.active.is_(True)).order_by(Party.key)
        )
    )


def usable_contacts(session: Session, party: Party, via: str) -> list[ContactPoint]:
    """Contact points that can carry ``via``, best first: good before unknown, then confidence."""
    kinds = VIA_CONTACT_KINDS[via]
    rows = session.scalars(
        select(ContactPoint).where(
            ContactPoint.party_id == party.id,
            ContactPoint.kind.in_(kinds),
            ContactPoint.status != "bad",
        )
    ).all()
    usable = [cp for cp in rows if via != "sms" or cp.kind == "sms" or is_mobile(cp.value)]
    rank = {"good": 0, "unknown": 1}
    return sorted(
        usable, key=lambda cp: (rank.get(cp.status, 2), not cp.listed, -cp.confidence, cp.id)
    )


def channel_for(
    cfg: Config, kinds: Mapping[str, frozenset[str]], step: StepConfig, via: str
) -> str | None:
    if via in step.channels:
        return step.channels[via]
    for name, settings in cfg.channels.items():
        if via in kinds.get(str(settings.get("adapter")), frozenset()):
            return name
    return None


def _previous(session: Session, case: Case, language: str) -> list[dict[str, str]]:
    rows = session.execute(
        select(Attempt, Notice, Party)
        .join(Notice, Attempt.notice_id == Notice.id)
        .join(Party, Notice.party_id == Party.id)
        .where(
            Notice.case_id == case.id,
            Attempt.state.in_(("sent", "delivered", "pending", "unknown")),
        )
        .order_by(Attempt.created_at, Attempt.id)
    ).all()
    names = VIA_NAMES[language]
    return [
        {
            "date": clock.today(a.updated_at).isoformat(),
            "via": names.get(a.kind, a.kind),
            "recipient": a.recipient,
            "party": p.legal_name or p.name,
        }
        for a, _n, p in rows
    ]


def _context(
    session: Session, cfg: Config, case: Case, party: Party, today: date, deadline: date
) -> NoticeContext:
    m = case.merchant
    terms = sorted(case.terminals, key=lambda t: t.terminal_no)
    acquirers = {t.acquirer.id: t.acquirer for t in terms}
    agents = sorted({(t.agent.legal_name or t.agent.name) for t in terms if t.agent})
    return NoticeContext(
        reference=case.reference,
        goal=case.goal,
        language=case.language,
        today=today,
        deadline=deadline,
        sender=cfg.sender.model_dump(),
        merchant={"name": m.name, "merchant_no": m.merchant_no, "contact_name": m.contact_name},
        party={
            "name": party.name,
            "legal_name": party.legal_name,
            "licence_no": party.licence_no,
            "role": party.role,
        },
        terminals=[
            {
                "terminal_no": t.terminal_no,
                "sn": t.sn,
                "model": t.model,
                "acquirer": t.acquirer.legal_name or t.acquirer.name,
                "agent": (t.agent.legal_name or t.agent.name) if t.agent else None,
            }
            for t in terms
        ],
        acquirers=[
            {"name": a.name, "legal_name": a.legal_name, "licence_no": a.licence_no}
            for a in acquirers.values()
        ],
        agents=agents,
        previous=_previous(session, case, case.language),
        statement=case.statement,
        deposit=case.deposit,
    )


def plan_due(
    session: Session,
    cfg: Config,
    channel_kinds: Mapping[str, frozenset[str]],
    *,
    at: datetime | None = None,
    dry_run: bool = False,
) -> PlanReport:
    """Plan every step that is due at ``at`` (default now). With ``dry_run`` nothing is written."""
    now = at or clock.now()
    today = clock.today(now)
    report = PlanReport()
    cases = session.scalars(
        select(Case).where(Case.active.is_(True), Case.state == "open").order_by(Case.id)
    ).all()
    for case in cases:
        plan = cfg.plans.get(case.plan)
        if plan is None:
            continue
        # One step per case per pass: the next step's clock starts when this one went out.
        if case.next_step >= len(plan.steps):
            continue
        index = case.next_step
        due = step_due(case, plan, index)
        if due > today:
            report.waiting.append((case.reference, index, due))
            continue
        step = plan.steps[index]
        deadline = next_deadline(case, plan, index, today)
        planned = PlannedStep(case.reference, index, step.template, [], 0, due=due)
        parties = target_parties(session, case, step)
        if not parties:
            planned.missing.append(f"no active party for '{step.to}'")
        for party in parties:
            planned.parties.append(party.key)
            choices = _choose(session, cfg, channel_kinds, party, step, planned)
            planned.attempts += len(choices)
            if dry_run:
                continue
            _write_notice(session, cfg, case, party, index, step, today, deadline, choices, now)
        report.planned.append(planned)
        if dry_run:
            continue
        record_event(
            session,
            case.chain,
            "step_planned",
            {
                "step": index,
                "template": step.template,
                "to": step.to,
                "parties": planned.parties,
                "attempts": planned.attempts,
                "missing": planned.missing,
                "due": due.isoformat(),
                "deadline": deadline.isoformat(),
            },
            case_id=case.id,
            at=now,
        )
        case.next_step = index + 1
        case.last_step_on = today
        case.updated_at = now
    if not dry_run:
        session.flush()
    return report


def _choose(
    session: Session,
    cfg: Config,
    channel_kinds: Mapping[str, frozenset[str]],
    party: Party,
    step: StepConfig,
    planned: PlannedStep,
) -> list[tuple[str, ContactPoint, str]]:
    """(via, contact point, channel) for each attempt this step makes to ``party``."""
    choices: list[tuple[str, ContactPoint, str]] = []
    for via in step.via:
        contacts = usable_contacts(session, party, via)
        channel = channel_for(cfg, channel_kinds, step, via)
        if not contacts or channel is None:
            why = "no usable contact" if not contacts else "no channel configured"
            planned.missing.append(f"{party.key}: {why} for {via}")
            continue
        choices.append((via, contacts[0], channel))
        if step.mode == "first":
            break
    return choices


def _write_notice(
    session: Session,
    cfg: Config,
    case: Case,
    party: Party,
    index: int,
    step: StepConfig,
    today: date,
    deadline: date,
    choices: list[tuple[str, ContactPoint, str]],
    now: datetime,
) -> None:
    rendered = render(step.template, _context(session, cfg, case, party, today, deadline))
    body_sha = store_blob(session, rendered.body.encode("utf-8"), "text/plain; charset=utf-8")
    html_sha = store_blob(session, rendered.html.encode("utf-8"), "text/html; charset=utf-8")
    notice = Notice(
        case_id=case.id,
        step=index,
        party_id=party.id,
        template=step.template,
        language=rendered.language,
        subject=rendered.subject,
        body=rendered.body,
        html=rendered.html,
        sms_params=rendered.sms_params,
        sha256=body_sha,
        deadline=deadline,
        created_at=now,
    )
    session.add(notice)
    session.flush()
    record_event(
        session,
        case.chain,
        "notice_rendered",
        {
            "step": index,
            "party": party.key,
            "party_name": party.legal_name or party.name,
            "template": step.template,
            "language": rendered.language,
            "subject": rendered.subject,
            "body_sha256": body_sha,
            "html_sha256": html_sha,
            "deadline": deadline.isoformat(),
            "sms_params": rendered.sms_params,
        },
        case_id=case.id,
        at=now,
    )
    for via, cp, channel in choices:
        attempt = Attempt(
            notice_id=notice.id,
            contact_point_id=cp.id,
            channel=channel,
            kind=via,
            recipient=cp.value,
            state="queued",
            tries=0,
            claims=0,
            next_try_at=now,
            idempotency_key=secrets.token_hex(8),
            created_at=now,
            updated_at=now,
        )
        session.add(attempt)
        session.flush()
        record_event(
            session,
            case.chain,
            "attempt_queued",
            {
                "attempt": attempt.id,
                "step": index,
                "party": party.key,
                "via": via,
                "channel": channel,
                "recipient": cp.value,
                "idempotency_key": attempt.idempotency_key,
            },
            case_id=case.id,
            attempt_id=attempt.id,
            at=now,
        )


def describe(report: PlanReport) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {
            "case": p.case,
            "step": p.step + 1,
            "template": p.template,
            "parties": ", ".join(p.parties),
            "attempts": p.attempts,
            "due": p.due.isoformat() if p.due else "",
            "note": "; ".join(p.missing),
        }
        for p in report.planned
    ]
    rows += [
        {
            "case": c,
            "step": s + 1,
            "template": "",
            "parties": "",
            "attempts": 0,
            "due": d.isoformat(),
            "note": "waiting",
        }
        for c, s, d in report.waiting
    ]
    return rows
