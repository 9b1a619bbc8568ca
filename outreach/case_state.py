"""A person's decisions about a case: pause, resume, resolve, stop (``outreach case …``).

Each is a transition of the case's state, chained on the case with who decided and why.
Pause, resolve and stop cancel what has not been sent (the ladder's cancellation, so the
events are the same as when a reply stops a case); resume sends the cancelled notices again
if their deadline is still ahead. The transitions allowed are :data:`TRANSITIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from outreach import clock
from outreach.ladder import STOP_STATES, cancel_case_attempts, take_planning_lock
from outreach.proof import record_event
from outreach.store import Attempt, Case, Notice, Party

# Contact-point kinds that can carry each ``via`` kind.


@dataclass(frozen=True)
class _Transition:
    sources: frozenset[str]
    target: str
    event: str


TRANSITIONS = {
    "pause": _Transition(frozenset({"open", "replied"}), "paused", "case_paused"),
    "resume": _Transition(frozenset({"paused", "replied"}), "open", "case_resumed"),
    "resolve": _Transition(
        frozenset({"open", "paused", "replied", "stopped"}), "resolved", "case_resolved"
    ),
    "stop": _Transition(frozenset({"open", "paused", "replied"}), "stopped", "case_stopped"),
}


class CaseStateError(Exception):
    """The case cannot make this transition from where it stands."""


@dataclass
class StateChange:
    reference: str
    before: str
    after: str
    changed: bool
    cancelled: int = 0
    requeued: int = 0
    stale: int = 0  # cancelled attempts left cancelled on resume: their deadline has passed


def change_case_state(
    session: Session, case: Case, action: str, note: str | None, *, at: datetime | None = None
) -> StateChange:
    """Pause, resume, resolve or stop ``case``, chaining the change and its consequences.

    Pausing, resolving and stopping cancel what has not left yet. Resuming re-queues the
    attempts a stop cancelled whose notice deadline is still ahead (a notice whose deadline
    has passed would ask for an answer by a day already gone); the ladder then continues
    from its pointer, a step overdue during the pause going out at the next pass.
    Asking for the state the case is already in changes nothing.
    """
    now = at or clock.now()
    rule = TRANSITIONS[action]
    before = case.state
    if before == rule.target:
        return StateChange(case.reference, before, before, changed=False)
    if before not in rule.sources:
        allowed = ", ".join(sorted(rule.sources))
        raise CaseStateError(
            f"{case.reference} is {before}; {action} applies to a case that is {allowed}"
        )
    take_planning_lock(session)
    change = StateChange(case.reference, before, rule.target, changed=True)
    record_event(
        session,
        case.chain,
        rule.event,
        {"from": before, "to": rule.target, "note": note or ""},
        case_id=case.id,
        at=now,
    )
    case.state = rule.target
    case.updated_at = now
    if rule.target in STOP_STATES:
        change.cancelled = cancel_case_attempts(session, case, f"case {rule.target}", at=now)
    elif action == "resume":
        change.requeued, change.stale = _requeue(session, case, now)
    session.flush()
    return change


def _requeue(session: Session, case: Case, now: datetime) -> tuple[int, int]:
    today = clock.today(now)
    rows = session.execute(
        select(Attempt, Notice, Party)
        .join(Notice, Attempt.notice_id == Notice.id)
        .join(Party, Notice.party_id == Party.id)
        .where(Notice.case_id == case.id, Attempt.state == "cancelled")
        .order_by(Attempt.id)
    ).all()
    requeued = stale = 0
    for a, notice, party in rows:
        if notice.deadline < today:
            stale += 1
            continue
        record_event(
            session,
            case.chain,
            "attempt_requeued",
            {
                "attempt": a.id,
                "step": notice.step,
                "party": party.key,
                "recipient": a.recipient,
                "reason": "case resumed",
                "deadline": notice.deadline.isoformat(),
            },
            case_id=case.id,
            attempt_id=a.id,
            at=now,
        )
        a.state = "queued"
        a.last_error = None
        a.next_try_at = now
        a.updated_at = now
        requeued += 1
    return requeued, stale
