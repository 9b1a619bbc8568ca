"""The escalation ladder: which step of which case is due, to whom, by which channels.

A step is planned once: the case's ``next_step`` pointer and the unique (case, step, party)
constraint on notices move in the same transaction, so neither a second run nor a second
worker can plan it again (on PostgreSQL the whole pass also holds an advisory lock, so two
workers never even race for it). Planning renders the notice (its text is hashed and
chained) and queues one outbox attempt per chosen contact point; dispatch sends them.

One pass (:func:`plan_due`) makes three kinds of decision, each chained on the case:

1. **Stop.** Cases that are replied, resolved, paused or stopped get nothing new, and their
   attempts that have not left yet are cancelled (``attempt_cancelled``).
2. **Fall back.** When every attempt of a notice on one route ended ``failed``/``bounced``
   on contacts now marked bad, the notice goes to the party's next usable contact of that
   kind — or, for a step in mode ``first``, of the next kind (``fallback``), as MuckRock-style
   systems do. With nothing left the route is a dead end (``no_channel``): it is reported
   once, shown by :func:`outreach.case_warnings.case_warnings`, and the ladder moves on at its own pace.
3. **Plan.** The next step of each open case, once due in working days (``step_due``, then
   ``step_planned`` or ``step_skipped``).

With ``dry_run`` the same decisions are computed and reported but nothing is written, which
is what ``outreach plan --at`` shows.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import exists, select, text
from sqlalchemy.orm import Session

from outreach import clock
from outreach.config import Config, PlanConfig, StepConfig
from outreach.models_schedule import ExhaustedRoute
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

# A case in one of these states gets no new step and no fallback.
STOP_STATES = ("replied", "resolved", "paused", "stopped")
# Attempts that have not left yet. ``unknown`` is included: it is due for a re-send, and a
# re-send after the merchant has been answered is exactly what stopping must prevent.
CANCELLABLE_STATES = ("queued", "retry", "unknown")
# How an attempt ends when its contact point may be at fault.
ENDED_BAD_STATES = ("failed", "bounced")
REACHED_STATES = ("sent", "pending", "delivered")

# pg_advisory_xact_lock key for planning: "outreach" in ASCII, as a signed 64-bit integer.
PLANNING_LOCK_KEY = 0x6F75747265616368

_OVERRIDABLE = ("after", "since", "to", "via", "mode", "template", "channels")


# ------------------------------------------------------------------------ reports


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
class Decision:
    """One decision of a pass other than planning a step (kept for ``plan`` and the log)."""

    case: str
    step: int | None
    kind: str  # cancelled | fallback | no_channel | skipped
    party: str = ""
    note: str = ""


@dataclass
class PlanReport:
    planned: list[PlannedStep] = field(default_factory=list)
    waiting: list[tuple[str, int, date]] = field(default_factory=list)  # (case, step, due)
    decisions: list[Decision] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(1 for d in self.decisions if d.kind == kind)


# ------------------------------------------------------------------------ per-case ladders


@dataclass(frozen=True)
class CaseLadder:
    """A case's plan with its overrides applied. Indexes stay those of the plan, so the
    ``next_step`` pointer and the notices' ``step`` mean the same with or without them."""

    plan: PlanConfig
    skip: frozenset[int] = frozenset()
    overridden: Mapping[int, tuple[str, ...]] = field(default_factory=dict)

    @property
    def steps(self) -> list[StepConfig]:
        return self.plan.steps


def apply_overrides(plan: PlanConfig, overrides: Iterable[Mapping[str, Any]]) -> CaseLadder:
    """Apply per-case overrides, given as plain data.

    Each override is a mapping with ``step`` (1-based, as users count) and any of ``after``,
    ``since``, ``to``, ``via``, ``mode``, ``template``, ``channels`` (replacing the plan's
    value), or ``skip = true``. Raises :class:`ValueError` naming the override at fault.
    """
    steps = list(plan.steps)
    skip: set[int] = set()
    overridden: dict[int, tuple[str, ...]] = {}
    for n, raw in enumerate(overrides):
        item = {k: v for k, v in dict(raw).items() if v is not None}
        number = item.pop("step", None)
        if not isinstance(number, int) or isinstance(number, bool):
            raise ValueError(f"override {n + 1}: 'step' must be a step number (1-based)")
        if not 1 <= number <= len(steps):
            raise ValueError(
                f"override {n + 1}: step {number} is not in the plan (it has {len(steps)} steps)"
            )
        index = number - 1
        if item.pop("skip", False) is True:
            skip.add(index)
        unknown = sorted(set(item) - set(_OVERRIDABLE))
        if unknown:
            raise ValueError(
                f"override of step {number}: cannot override {', '.join(unknown)} "
                f"(allowed: {', '.join(_OVERRIDABLE)}, skip)"
            )
        if item:
            try:
                steps[index] = StepConfig.model_validate({**steps[index].model_dump(), **item})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"override of step {number}: {where}: {first['msg']}") from None
            overridden[index] = tuple(sorted(set(overridden.get(index, ())) | set(item)))
        if index in skip:
            overridden[index] = tuple(sorted({*overridden.get(index, ()), "skip"}))
    return CaseLadder(plan.model_copy(update={"steps": steps}), frozenset(skip), overridden)


def config_overrides(cfg: Config, case_key: str) -> list[Mapping[str, Any]]:
    """The case's ``[[cases.steps_override]]`` tables from the config, as plain mappings.

    Read with ``getattr`` so the ladder works both before and after the config model grows
    the field; entries may be pydantic models or mappings.
    """
    cc = next((c for c in cfg.cases if c.key == case_key), None)
    raw = getattr(cc, "steps_override", None) or ()
    out: list[Mapping[str, Any]] = []
    for item in raw:
        dump = getattr(item, "model_dump", None)
        out.append(dump(exclude_none=True) if callable(dump) else dict(item))
    return out


Overrides = Mapping[str, Sequence[Mapping[str, Any]]]


def case_ladder(cfg: Config, case: Case, overrides: Overrides | None = None) -> CaseLadder | None:
    """The effective ladder of ``case``; None when its plan is not in the config.

    ``overrides`` maps case keys to override lists and, when given, replaces what the config
    says (for callers and tests that hold overrides as plain data).
    """
    plan = cfg.plans.get(case.plan)
    if plan is None:
        return None
    items = (
        overrides.get(case.key, ()) if overrides is not None else config_overrides(cfg, case.key)
    )
    return apply_overrides(plan, items) if items else CaseLadder(plan)


# ------------------------------------------------------------------------ dates


def step_due(case: Case, plan: PlanConfig, index: int) -> date:
    step = plan.steps[index]
    base = (
        case.opened_on
        if (index == 0 or step.since == "opening" or case.last_step_on is None)
        else case.last_step_on
    )
    return add_working_days(base, step.after)


def next_deadline(
    case: Case, plan: PlanConfig, index: int, today: date, skip: frozenset[int] = frozenset()
) -> date:
    """The date printed as the reply deadline: when the next step would go out.

    Skipped steps are passed over at their own due date, so the next real step is counted
    through them; after the last real step the deadline is ``reply_days`` working days.
    """
    base_day = today
    for j in range(index + 1, len(plan.steps)):
        nxt = plan.steps[j]
        due = add_working_days(case.opened_on if nxt.since == "opening" else base_day, nxt.after)
        if j not in skip:
            return max(due, add_working_days(today, 1))
        base_day = max(due, base_day)
    return add_working_days(today, plan.reply_days)


def projected_end(case: Case, ladder: CaseLadder, today: date) -> date:
    """The last day the ladder can reach from where it stands (for calendar warnings)."""
    day = today
    for j in range(case.next_step, len(ladder.steps)):
        step = ladder.steps[j]
        if j == case.next_step:
            due = step_due(case, ladder.plan, j)
        else:
            due = add_working_days(case.opened_on if step.since == "opening" else day, step.after)
        day = max(due, today)
    return add_working_days(day, ladder.plan.reply_days)


# ------------------------------------------------------------------------ parties, contacts


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


# ------------------------------------------------------------------------ rendering


def _previous(session: Session, case: Case, language: str) -> list[dict[str, str]]:
    rows = session.execute(
        select(Attempt, Notice, Party)
        .join(Notice, Attempt.notice_id == Notice.id)
        .join(Party, Notice.party_id == Party.id)
        .where(
            Notice.case_id == case.id,
            # Only what left us: a letter waiting for its tracking number or a call not yet
            # made ("pending") must never be cited to the next recipient as already sent.
            Attempt.state.in_(("sent", "delivered", "undelivered", "bounced", "unknown")),
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


# ------------------------------------------------------------------------ the pass


def take_planning_lock(session: Session) -> None:
    """On PostgreSQL, serialise planning passes across workers until this transaction ends.

    A transaction-level advisory lock is released by commit, rollback or a dropped
    connection, so a crashed worker never leaves it held. SQLite needs nothing: every write
    transaction starts with ``BEGIN IMMEDIATE`` and so already excludes the others.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PLANNING_LOCK_KEY})


def plan_due(
    session: Session,
    cfg: Config,
    channel_kinds: Mapping[str, frozenset[str]],
    *,
    at: datetime | None = None,
    dry_run: bool = False,
    overrides: Overrides | None = None,
) -> PlanReport:
    """Stop, fall back and plan everything due at ``at`` (default now), as one pass.

    With ``dry_run`` the decisions are computed and reported, and nothing is written or
    locked: the session is left exactly as it was given.
    """
    now = at or clock.now()
    today = clock.today(now)
    report = PlanReport()
    if not dry_run:
        take_planning_lock(session)
    cancel_stopped(session, at=now, dry_run=dry_run, report=report)
    fall_back(
        session, cfg, channel_kinds, at=now, dry_run=dry_run, report=report, overrides=overrides
    )
    cases = session.scalars(
        select(Case).where(Case.active.is_(True), Case.state == "open").order_by(Case.id)
    ).all()
    for case in cases:
        ladder = case_ladder(cfg, case, overrides)
        if ladder is None:
            continue
        # One step per case per pass: the next step's clock starts when this one went out.
        if case.next_step >= len(ladder.steps):
            continue
        index = case.next_step
        due = step_due(case, ladder.plan, index)
        if due > today:
            report.waiting.append((case.reference, index, due))
            continue
        _take_step(session, cfg, channel_kinds, case, ladder, index, due, now, dry_run, report)
    if not dry_run:
        session.flush()
    return report


def _take_step(
    session: Session,
    cfg: Config,
    channel_kinds: Mapping[str, frozenset[str]],
    case: Case,
    ladder: CaseLadder,
    index: int,
    due: date,
    now: datetime,
    dry_run: bool,
    report: PlanReport,
) -> None:
    today = clock.today(now)
    step = ladder.steps[index]
    overridden = list(ladder.overridden.get(index, ()))
    if not dry_run:
        record_event(
            session,
            case.chain,
            "step_due",
            {
                "step": index,
                "template": step.template,
                "to": step.to,
                "via": list(step.via),
                "mode": step.mode,
                "due": due.isoformat(),
                "overridden": overridden,
            },
            case_id=case.id,
            at=now,
        )
    parties = [] if index in ladder.skip else target_parties(session, case, step)
    if index in ladder.skip or not parties:
        reason = (
            "this case's override skips it"
            if index in ladder.skip
            else f"no active party for {step.to!r}"
        )
        report.decisions.append(Decision(case.reference, index, "skipped", "", reason))
        if dry_run:
            return
        record_event(
            session,
            case.chain,
            "step_skipped",
            {"step": index, "template": step.template, "to": step.to, "reason": reason},
            case_id=case.id,
            at=now,
        )
        _advance(case, index, today, now)
        return
    deadline = next_deadline(case, ladder.plan, index, today, ladder.skip)
    planned = PlannedStep(case.reference, index, step.template, [], 0, due=due)
    for party in parties:
        planned.parties.append(party.key)
        choices, dead = _choose(session, cfg, channel_kinds, party, step)
        planned.missing += [f"{party.key}: {why}" for _route, why in dead]
        planned.attempts += len(choices)
        if dry_run:
            continue
        notice = _write_notice(
            session, cfg, case, party, index, step, today, deadline, choices, now
        )
        for route, why in dead:
            _mark_exhausted(session, case, notice, party, route, why, [], now)
    report.planned.append(planned)
    if dry_run:
        return
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
            "overridden": overridden,
        },
        case_id=case.id,
        at=now,
    )
    _advance(case, index, today, now)


def _advance(case: Case, index: int, today: date, now: datetime) -> None:
    case.next_step = index + 1
    case.last_step_on = today
    case.updated_at = now


def _routes(step: StepConfig) -> list[tuple[str, tuple[str, ...]]]:
    """The independent routes of a step: one per kind in mode ``all``, one in mode ``first``."""
    if step.mode == "first":
        return [("first", tuple(step.via))]
    return [(via, (via,)) for via in step.via]


def _choose(
    session: Session,
    cfg: Config,
    channel_kinds: Mapping[str, frozenset[str]],
    party: Party,
    step: StepConfig,
) -> tuple[list[tuple[str, ContactPoint, str]], list[tuple[str, str]]]:
    """(via, contact point, channel) for each attempt this step makes to ``party``, and the
    routes that have nothing usable as (route, reason)."""
    choices: list[tuple[str, ContactPoint, str]] = []
    dead: list[tuple[str, str]] = []
    taken: set[int] = set()
    for route, vias in _routes(step):
        why: list[str] = []
        for via in vias:
            contacts = [cp for cp in usable_contacts(session, party, via) if cp.id not in taken]
            channel = channel_for(cfg, channel_kinds, step, via)
            if not contacts or channel is None:
                why.append(
                    f"no usable contact for {via}"
                    if not contacts
                    else f"no channel configured for {via}"
                )
                continue
            choices.append((via, contacts[0], channel))
            taken.add(contacts[0].id)
            break
        else:
            dead.append((route, "; ".join(why)))
    return choices, dead


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
) -> Notice:
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
        _queue_attempt(
            session, case, notice, party, via, cp, channel, now, "attempt_queued", {"step": index}
        )
    return notice


def _queue_attempt(
    session: Session,
    case: Case,
    notice: Notice,
    party: Party,
    via: str,
    cp: ContactPoint,
    channel: str,
    now: datetime,
    event: str,
    extra: Mapping[str, Any],
) -> Attempt:
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
        event,
        {
            "attempt": attempt.id,
            **extra,
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
    return attempt


def _mark_exhausted(
    session: Session,
    case: Case,
    notice: Notice,
    party: Party,
    route: str,
    reason: str,
    tried: list[str],
    now: datetime,
) -> None:
    session.add(ExhaustedRoute(notice_id=notice.id, route=route, reason=reason, created_at=now))
    record_event(
        session,
        case.chain,
        "no_channel",
        {
            "step": notice.step,
            "party": party.key,
            "route": route,
            "tried": tried,
            "reason": reason,
        },
        case_id=case.id,
        at=now,
    )


# ------------------------------------------------------------------------ stop


def cancel_case_attempts(session: Session, case: Case, reason: str, *, at: datetime) -> int:
    """Cancel the attempts of ``case`` that have not left yet; chain ``attempt_cancelled``.

    Attempts being sent right now (``sending``) are left to finish: their outcome is recorded
    as usual. On PostgreSQL rows a dispatcher is claiming at this instant are skipped rather
    than waited for; they are in flight by the time this commits.
    """
    return len(_cancel(session, [case.id], reason_for={case.id: reason}, at=at, dry_run=False))


def cancel_stopped(
    session: Session, *, at: datetime, dry_run: bool = False, report: PlanReport | None = None
) -> int:
    """Cancel not-yet-sent attempts of every case in a stop state (a reply, a resolve, …)."""
    rows = session.execute(
        select(Case.id, Case.state).where(Case.state.in_(STOP_STATES)).order_by(Case.id)
    ).all()
    if not rows:
        return 0
    reasons = {cid: f"case {state}" for cid, state in rows}
    done = _cancel(session, list(reasons), reason_for=reasons, at=at, dry_run=dry_run)
    if report is not None:
        report.decisions += done
    return len(done)


def _cancel(
    session: Session,
    case_ids: list[int],
    *,
    reason_for: Mapping[int, str],
    at: datetime,
    dry_run: bool,
) -> list[Decision]:
    stmt = (
        select(Attempt, Notice, Case, Party)
        .join(Notice, Attempt.notice_id == Notice.id)
        .join(Case, Notice.case_id == Case.id)
        .join(Party, Notice.party_id == Party.id)
        .where(Notice.case_id.in_(case_ids), Attempt.state.in_(CANCELLABLE_STATES))
        .order_by(Attempt.id)
    )
    if not dry_run and session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True, of=Attempt)
    out: list[Decision] = []
    for a, notice, case, party in session.execute(stmt).all():
        reason = reason_for[case.id]
        out.append(
            Decision(
                case.reference, notice.step, "cancelled", party.key, f"{a.recipient}: {reason}"
            )
        )
        if dry_run:
            continue
        record_event(
            session,
            case.chain,
            "attempt_cancelled",
            {
                "attempt": a.id,
                "step": notice.step,
                "party": party.key,
                "channel": a.channel,
                "recipient": a.recipient,
                "was": a.state,
                "reason": reason,
            },
            case_id=case.id,
            attempt_id=a.id,
            at=at,
        )
        a.state = "cancelled"
        a.last_error = f"cancelled: {reason}"
        a.updated_at = at
    return out


# ------------------------------------------------------------------------ fallback


def fall_back(
    session: Session,
    cfg: Config,
    channel_kinds: Mapping[str, frozenset[str]],
    *,
    at: datetime,
    dry_run: bool = False,
    report: PlanReport | None = None,
    overrides: Overrides | None = None,
) -> list[Decision]:
    """Re-route notices whose contacts turned bad; report dead ends once.

    Data-driven, so it is safe to run every tick: a route is looked at only while every
    attempt on it ended ``failed``/``bounced`` on a contact now marked bad, and either gets
    a new attempt (which makes it live again) or an :class:`ExhaustedRoute` row (which makes
    it settled). A failure that is not the contact's fault (an unapproved template, a
    channel misconfiguration) is not re-routed — the next contact would fail the same way —
    and is shown by :func:`outreach.case_warnings.case_warnings` instead.
    """
    done: list[Decision] = []
    notices = session.scalars(
        select(Notice)
        .join(Case, Notice.case_id == Case.id)
        .where(
            Case.state == "open",
            Case.active.is_(True),
            exists().where(Attempt.notice_id == Notice.id, Attempt.state.in_(ENDED_BAD_STATES)),
        )
        .order_by(Notice.id)
    ).all()
    for notice in notices:
        case = notice.case
        ladder = case_ladder(cfg, case, overrides)
        if ladder is None or notice.step >= len(ladder.steps):
            continue
        step = ladder.steps[notice.step]
        attempts = list(
            session.scalars(
                select(Attempt).where(Attempt.notice_id == notice.id).order_by(Attempt.id)
            )
        )
        settled = set(
            session.scalars(
                select(ExhaustedRoute.route).where(ExhaustedRoute.notice_id == notice.id)
            )
        )
        tried_ids = {a.contact_point_id for a in attempts}
        for route, vias in _routes(step):
            mine = [a for a in attempts if a.kind in vias]
            if not mine or route in settled:
                continue
            if any(a.state not in ENDED_BAD_STATES for a in mine):
                continue
            if not all(a.contact.status == "bad" for a in mine):
                continue
            last = mine[-1]
            decision = _reroute(
                session,
                cfg,
                channel_kinds,
                case,
                notice,
                step,
                route,
                vias,
                last,
                mine,
                tried_ids,
                at,
                dry_run,
            )
            done.append(decision)
    if report is not None:
        report.decisions += done
    return done


def _reroute(
    session: Session,
    cfg: Config,
    channel_kinds: Mapping[str, frozenset[str]],
    case: Case,
    notice: Notice,
    step: StepConfig,
    route: str,
    vias: tuple[str, ...],
    last: Attempt,
    mine: list[Attempt],
    tried_ids: set[int],
    at: datetime,
    dry_run: bool,
) -> Decision:
    party = notice.party
    order = [last.kind, *(v for v in vias if v != last.kind)]
    for via in order:
        channel = channel_for(cfg, channel_kinds, step, via)
        candidates = [cp for cp in usable_contacts(session, party, via) if cp.id not in tried_ids]
        if channel is None or not candidates:
            continue
        cp = candidates[0]
        note = f"{last.kind} {last.recipient} → {via} {cp.value}"
        if not dry_run:
            _queue_attempt(
                session,
                case,
                notice,
                party,
                via,
                cp,
                channel,
                at,
                "fallback",
                {
                    "step": notice.step,
                    "from_attempt": last.id,
                    "from_via": last.kind,
                    "from_recipient": last.recipient,
                    "from_state": last.state,
                    "reason": last.last_error
                    or f"contact marked bad ({last.contact.status_reason})",
                },
            )
            tried_ids.add(cp.id)
        return Decision(case.reference, notice.step, "fallback", party.key, note)
    tried = [a.recipient for a in mine]
    kinds = ", ".join(order)
    reason = f"no good {kinds} contact left after {', '.join(tried)} turned bad"
    if not dry_run:
        _mark_exhausted(session, case, notice, party, route, reason, tried, at)
    return Decision(case.reference, notice.step, "no_channel", party.key, reason)


# ------------------------------------------------------------------------ display


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
            "case": d.case,
            "step": d.step + 1 if d.step is not None else "",
            "template": "",
            "parties": d.party,
            "attempts": 1 if d.kind == "fallback" else 0,
            "due": "",
            "note": f"{d.kind.replace('_', ' ')}: {d.note}",
        }
        for d in report.decisions
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
